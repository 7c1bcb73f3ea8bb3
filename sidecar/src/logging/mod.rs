//! Logging with `tracing` to stderr, as text or JSON lines.

pub mod config;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use self::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log.level {level:?}: {message}")]
    Filter { level: String, message: String },
    #[error("invalid RUST_LOG: {0}")]
    Env(String),
    #[error("logging is already set up: {0}")]
    Init(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
pub fn init(cfg: &LogConfig) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| LogError::Env(e.to_string()))?
        }
        _ => EnvFilter::try_new(&cfg.level).map_err(|e| LogError::Filter {
            level: cfg.level.clone(),
            message: e.to_string(),
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| LogError::Init(e.to_string()))
}
