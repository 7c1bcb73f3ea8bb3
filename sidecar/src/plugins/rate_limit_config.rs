//! `[rate_limit]`: the settings of the [`rate_limit`](super::rate_limit) plugin.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `rate_limit` plugin: at most `messages` per `per_seconds` per user per channel,
/// counted across hosts through Redis (in process with the memory broker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub messages: u32,
    pub per_seconds: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            messages: 10,
            per_seconds: 10,
        }
    }
}

impl RateLimitConfig {
    /// Checks the settings; only when the plugin is in `plugins.chain`.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.messages == 0 || self.per_seconds == 0 {
            return Err(ConfigError::invalid(
                "rate_limit",
                "rate_limit.messages and rate_limit.per_seconds must be at least 1 (or take \
                 rate_limit out of plugins.chain)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, load_sets};

    #[test]
    fn rate_limit_settings_are_checked_when_it_is_on() {
        assert_refused(&[(&["rate_limit.messages=0"], "rate_limit.messages")]);
        // A plugin that is off needs no settings.
        load_sets(&["rate_limit.messages=0", "plugins.chain=ban"]).unwrap();
    }
}
