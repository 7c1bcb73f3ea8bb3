//! `[publish_hook]`: the settings of the [`publish_hook`](super::publish_hook) plugin.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

use super::config::check_http_url;

/// The `publish_hook` plugin: the operator's backend accepts, rejects or rewrites each
/// message before it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishHookConfig {
    /// Where to POST each message.
    pub url: String,
    /// How long the backend has to answer.
    pub timeout_ms: u64,
    /// When the backend fails or does not answer in time: `true` publishes the message
    /// anyway, `false` refuses it (`hook_unavailable`).
    pub fail_open: bool,
}

impl Default for PublishHookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout_ms: 500,
            fail_open: false,
        }
    }
}

impl PublishHookConfig {
    /// Checks the settings; only when the plugin is in `plugins.chain`.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_http_url("publish_hook.url", &self.url, "publish_hook")?;
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "publish_hook.timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn publish_hook_settings_are_checked_when_it_is_on() {
        assert_refused(&[
            (&["plugins.chain=publish_hook"], "publish_hook.url"),
            (
                &[
                    "plugins.chain=publish_hook",
                    "publish_hook.url=http://x",
                    "publish_hook.timeout_ms=0",
                ],
                "publish_hook.timeout_ms",
            ),
        ]);
    }
}
