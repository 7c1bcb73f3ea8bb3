//! The errors that stop the sidecar, each naming what to fix.

use crate::cluster::redis::RedisError;
use crate::config::ConfigError;
use crate::host::demo::DemoSetupError;
use crate::host::relay::RelayError;
use crate::http::HttpBindError;
use crate::jwt::mint::TokenError;
use crate::jwt::KeySetupError;
use crate::logging::LogError;
use crate::metrics::MetricsError;
use crate::plugins::PluginSetupError;
use crate::private::PrivateSetupError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeySetupError),
    #[error(transparent)]
    Private(#[from] PrivateSetupError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error(transparent)]
    Http(#[from] HttpBindError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Plugin(#[from] PluginSetupError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Demo(#[from] DemoSetupError),
    #[error("{0} (the sidecar needs Redis to start when [redis] is configured)")]
    Redis(#[from] RedisError),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}
