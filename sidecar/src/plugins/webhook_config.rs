//! `[webhook]`: the settings of the [`webhook`](super::webhook) plugin.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

use super::config::check_http_url;

/// The `webhook` plugin: messages containing a trigger are posted, in Slack's
/// incoming-webhook format, to `url`, in the background with retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (a Slack incoming-webhook URL, or any endpoint taking that JSON).
    pub url: String,
    /// Words or phrases that trigger the webhook (whole words, case-insensitive).
    pub triggers: Vec<String>,
    /// Whether a triggering message is still broadcast to the channel.
    pub broadcast: bool,
    /// How long one POST may take.
    pub timeout_ms: u64,
    /// Attempts after the first failure, with growing delays.
    pub retries: u32,
    /// Posts waiting to be sent; past it new ones are dropped (and logged), so a dead
    /// endpoint never holds memory or slows publishing.
    pub queue_size: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            triggers: Vec::new(),
            broadcast: true,
            timeout_ms: 5000,
            retries: 3,
            queue_size: 1000,
        }
    }
}

impl WebhookConfig {
    /// Checks the settings; only when the plugin is in `plugins.chain`.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_http_url("webhook.url", &self.url, "webhook")?;
        if self.triggers.iter().all(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "webhook.triggers",
                "webhook is in plugins.chain, so at least one trigger is needed",
            ));
        }
        if self.timeout_ms == 0 || self.queue_size == 0 {
            return Err(ConfigError::invalid(
                "webhook",
                "webhook.timeout_ms and webhook.queue_size must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn webhook_settings_are_checked_when_it_is_on() {
        assert_refused(&[
            (&["plugins.chain=webhook"], "webhook.url must be set"),
            (
                &["plugins.chain=webhook", "webhook.url=ftp://x"],
                "http:// or https://",
            ),
            (
                &["plugins.chain=webhook", "webhook.url=http://x"],
                "at least one trigger",
            ),
        ]);
    }
}
