//! `[history]`: the message history kept by the memory broker.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Message history kept by the memory broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per channel, for replay and resume.
    pub size: usize,
    /// A channel without subscribers and without messages for this long is forgotten (its
    /// next use starts a new epoch), so abandoned channels do not hold memory forever.
    pub ttl_seconds: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl_seconds: 86_400,
        }
    }
}

impl HistoryConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.ttl_seconds == 0 {
            return Err(ConfigError::invalid(
                "history.ttl_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
