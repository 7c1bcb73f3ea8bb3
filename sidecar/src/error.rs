//! The errors that stop the sidecar, each naming what to fix.

use crate::auth::KeySetupError;
use crate::config::ConfigError;
use crate::demo::DemoSetupError;
use crate::http::HttpBindError;
use crate::logging::LogError;
use crate::metrics::MetricsError;
use crate::plugins::PluginSetupError;
use crate::redis::RedisError;
use crate::relay::RelayError;
use crate::token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeySetupError),
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
