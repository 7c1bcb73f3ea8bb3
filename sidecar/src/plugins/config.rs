//! `[plugins]`: which plugins run, in which order. Each plugin's own section lives beside
//! it (`rate_limit_config.rs`, `blacklist_config.rs`, ...).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The plugins `plugins.chain` may name.
pub const PLUGIN_NAMES: &[&str] = &["ban", "rate_limit", "blacklist", "webhook", "publish_hook"];

/// The moderation plugins every publish goes through, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The chain, run in this order; a plugin not listed is off. Known names: `ban`,
    /// `rate_limit`, `blacklist`, `webhook`, `publish_hook`.
    pub chain: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            chain: vec!["ban".into(), "rate_limit".into(), "blacklist".into()],
        }
    }
}

impl PluginsConfig {
    /// Whether the plugin named `name` is in the chain.
    pub fn has(&self, name: &str) -> bool {
        self.chain.iter().any(|n| n == name)
    }

    /// Checks the chain's names.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut seen = Vec::new();
        for name in &self.chain {
            if !PLUGIN_NAMES.contains(&name.as_str()) {
                return Err(ConfigError::invalid(
                    "plugins.chain",
                    format!(
                        "unknown plugin {name:?}; known: {}",
                        PLUGIN_NAMES.join(", ")
                    ),
                ));
            }
            if seen.contains(&name) {
                return Err(ConfigError::invalid(
                    "plugins.chain",
                    format!("{name:?} is listed twice"),
                ));
            }
            seen.push(name);
        }
        Ok(())
    }
}

/// Checks the URL of a plugin that posts to the operator's endpoint.
pub(crate) fn check_http_url(key: &str, url: &str, plugin: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else if url.is_empty() {
        Err(ConfigError::invalid(
            key,
            format!("{plugin} is in plugins.chain, so {key} must be set"),
        ))
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{url:?} must start with http:// or https://"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, load_sets};

    #[test]
    fn the_chain_is_checked() {
        assert_refused(&[
            (&["plugins.chain=ban,spam"], "unknown plugin \"spam\""),
            (&["plugins.chain=ban,ban"], "listed twice"),
        ]);
        load_sets(&["plugins.chain="]).unwrap();
    }
}
