//! The errors of loading the configuration.

use std::path::PathBuf;

/// Why the configuration could not be loaded. Each variant names the key and where the
/// offending value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("unknown config key `{key}` in {origin}; known keys: {known}")]
    UnknownKey {
        key: String,
        origin: String,
        known: String,
    },
    #[error("config key `{key}` in {origin} must be {expected}, not {found}")]
    WrongType {
        key: String,
        origin: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid value for `{key}` in {origin}: {message}")]
    BadValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("--set expects section.key=value (e.g. --set http.listen=127.0.0.1:7001), got `{0}`")]
    BadSet(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "`{old}` ({old_origin}) and `{new}` ({new_origin}) are the same setting and disagree; \
         `{old}` is the deprecated name: remove it and keep `{new}`"
    )]
    RenamedConflict {
        old: &'static str,
        old_origin: String,
        new: &'static str,
        new_origin: String,
    },
}

impl ConfigError {
    /// A value the types allow but the checks refuse.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}
