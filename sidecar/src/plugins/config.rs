//! `[plugins]`: which plugins run, in which order. Each plugin's own section lives beside
//! it (`rate_limit_config.rs`, `blacklist_config.rs`, ...).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::ConfigError;

/// A plugin `plugins.chain` may name. Matched exhaustively where the chain is built, so a
/// new plugin cannot be named without being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum PluginName {
    Ban,
    RateLimit,
    Blacklist,
    Webhook,
    PublishHook,
}

impl PluginName {
    /// Every plugin, in the order the help texts list them.
    pub const ALL: [PluginName; 5] = [
        PluginName::Ban,
        PluginName::RateLimit,
        PluginName::Blacklist,
        PluginName::Webhook,
        PluginName::PublishHook,
    ];

    /// The name as written in `plugins.chain`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginName::Ban => "ban",
            PluginName::RateLimit => "rate_limit",
            PluginName::Blacklist => "blacklist",
            PluginName::Webhook => "webhook",
            PluginName::PublishHook => "publish_hook",
        }
    }

    /// The known names, comma-separated, for error and help texts.
    pub fn known() -> String {
        PluginName::ALL.map(PluginName::as_str).join(", ")
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name in `plugins.chain` that is no plugin.
#[derive(Debug, thiserror::Error)]
#[error("unknown plugin {name:?}; known: {known}", known = PluginName::known())]
pub struct UnknownPlugin {
    name: String,
}

impl TryFrom<String> for PluginName {
    type Error = UnknownPlugin;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        PluginName::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or(UnknownPlugin { name })
    }
}

/// The moderation plugins every publish goes through, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The chain, run in this order; a plugin not listed is off. Known names: `ban`,
    /// `rate_limit`, `blacklist`, `webhook`, `publish_hook`.
    #[serde(deserialize_with = "chain_names")]
    pub chain: Vec<PluginName>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            chain: vec![
                PluginName::Ban,
                PluginName::RateLimit,
                PluginName::Blacklist,
            ],
        }
    }
}

impl PluginsConfig {
    /// Whether `plugin` is in the chain.
    pub fn has(&self, plugin: PluginName) -> bool {
        self.chain.contains(&plugin)
    }

    /// Checks the chain (its names are checked when it is read).
    pub fn check(&self) -> Result<(), ConfigError> {
        for (i, name) in self.chain.iter().enumerate() {
            if self.chain[..i].contains(name) {
                return Err(ConfigError::invalid(
                    "plugins.chain",
                    format!("{:?} is listed twice", name.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// Reads the chain's names one by one, so that an unknown one is reported against
/// `plugins.chain` itself, as users know the message.
fn chain_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PluginName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|name| PluginName::try_from(name).map_err(serde::de::Error::custom))
        .collect()
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
    use super::*;
    use crate::config::testing::{assert_refused, load_sets};

    #[test]
    fn the_chain_is_checked() {
        assert_refused(&[
            (&["plugins.chain=ban,spam"], "unknown plugin \"spam\""),
            (
                &["plugins.chain=ban,spam"],
                "invalid value for `plugins.chain`: unknown plugin \"spam\"; known: ban, \
                 rate_limit, blacklist, webhook, publish_hook",
            ),
            (&["plugins.chain=ban,ban"], "listed twice"),
        ]);
        load_sets(&["plugins.chain="]).unwrap();
    }

    #[test]
    fn every_plugin_reads_back_under_its_name() {
        let all = PluginName::known().replace(", ", ",");
        let config = load_sets(&[
            &format!("plugins.chain={all}"),
            "webhook.url=http://x",
            "webhook.triggers=alert",
            "publish_hook.url=http://x",
        ])
        .unwrap();
        assert_eq!(config.plugins.chain, PluginName::ALL);
        for plugin in PluginName::ALL {
            assert_eq!(
                toml::Value::try_from(plugin).unwrap().as_str(),
                Some(plugin.as_str())
            );
        }
    }
}
