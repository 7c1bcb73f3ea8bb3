//! `[limits]`: what publishers may send.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Limits on what publishers may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest chat message, in characters (Unicode scalar values), not bytes.
    pub max_message_chars: usize,
    /// Largest serialized `data` of an event, in bytes.
    pub max_event_bytes: usize,
    /// How long a publish's idempotency key is remembered: a retry with the same key (same
    /// user, same channel) within it gets the first answer and publishes nothing. Long
    /// enough to cover a client's retries through an outage, short enough that keys take
    /// little room.
    pub idempotency_window_seconds: u64,
}

/// Longest `limits.idempotency_window_seconds`: a day.
pub const MAX_IDEMPOTENCY_WINDOW_SECONDS: u64 = 86_400;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_chars: 1000,
            max_event_bytes: 4096,
            idempotency_window_seconds: 300,
        }
    }
}

impl LimitsConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_message_chars == 0 {
            return Err(ConfigError::invalid(
                "limits.max_message_chars",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_IDEMPOTENCY_WINDOW_SECONDS).contains(&self.idempotency_window_seconds) {
            return Err(ConfigError::invalid(
                "limits.idempotency_window_seconds",
                format!("must be from 1 to {MAX_IDEMPOTENCY_WINDOW_SECONDS} (a day)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn limits_are_checked() {
        assert_refused(&[
            (
                &["limits.idempotency_window_seconds=0"],
                "limits.idempotency_window_seconds",
            ),
            (
                &["limits.idempotency_window_seconds=86401"],
                "from 1 to 86400",
            ),
        ]);
    }
}
