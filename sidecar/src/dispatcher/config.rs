//! `[dispatch]`: the dispatcher's choices.

use serde::{Deserialize, Serialize};

/// The dispatcher's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Origins allowed to call the dispatcher from a browser (`*` for any). Empty: no CORS
    /// headers, so only same-origin pages can read the answer.
    pub cors_origins: Vec<String>,
    /// In a host's load score one publisher weighs as much as this many viewers (a
    /// publisher costs JWT checks, plugins and a socket on the sidecar).
    pub publisher_weight: u64,
    /// Recent messages of the channel returned by `/join`.
    pub history: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            publisher_weight: 10,
            history: 20,
        }
    }
}
