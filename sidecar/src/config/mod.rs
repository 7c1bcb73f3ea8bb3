//! Configuration: the [`Config`] of every section, loaded by [`load`] in layers (defaults <
//! file < `CHATUP_*` environment < `--set`).
//!
//! Each section's struct, defaults and checks live beside what it configures (e.g.
//! [`RelayConfig`] in `host/relay/config.rs`); they are re-exported here. [`Config::validate`]
//! runs each section's check, then the checks that span sections.

mod error;
pub mod load;

use serde::{Deserialize, Serialize};

pub use self::error::ConfigError;
pub use self::load::{keys_help, Loaded, CONFIG_FILE_ENV, ENV_PREFIX, RENAMED_KEYS};
pub use crate::admin::config::AdminConfig;
pub use crate::broker::config::HistoryConfig;
pub use crate::cluster::redis_config::RedisConfig;
pub use crate::cluster::registry_config::HostConfig;
pub use crate::dispatcher::config::DispatchConfig;
pub use crate::host::demo_config::DemoConfig;
pub use crate::host::presence_config::{PresenceConfig, MAX_LEAVE_GRACE_MS};
pub use crate::host::relay::config::{RelayConfig, SocketMode};
pub use crate::http::config::HttpConfig;
pub use crate::jwt::config::AuthConfig;
pub use crate::logging::config::{LogConfig, LogFormat};
pub use crate::message::limits_config::{LimitsConfig, MAX_IDEMPOTENCY_WINDOW_SECONDS};
pub use crate::plugins::blacklist_config::BlacklistConfig;
pub use crate::plugins::config::{PluginName, PluginsConfig};
pub use crate::plugins::publish_hook_config::PublishHookConfig;
pub use crate::plugins::rate_limit_config::RateLimitConfig;
pub use crate::plugins::webhook_config::WebhookConfig;
pub use crate::private::config::PrivateConfig;

/// The sidecar's whole configuration. Every key is optional; see the field docs for why each
/// exists and its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub relay: RelayConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub private: PrivateConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub redis: RedisConfig,
    pub host: HostConfig,
    pub roles: RolesConfig,
    pub dispatch: DispatchConfig,
    pub presence: PresenceConfig,
    pub admin: AdminConfig,
    pub plugins: PluginsConfig,
    pub rate_limit: RateLimitConfig,
    pub blacklist: BlacklistConfig,
    pub webhook: WebhookConfig,
    pub publish_hook: PublishHookConfig,
    pub demo: DemoConfig,
    pub log: LogConfig,
}

/// Which roles this process plays. A single-host install runs them all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesConfig {
    /// The chat host: relay for the local nginx workers, publisher endpoints, load reports.
    /// Formerly `roles.worker`, still read (see [`RENAMED_KEYS`]).
    pub chat_host: bool,
    /// `POST /join/<channel>`: picks a chat host for a client.
    pub dispatcher: bool,
    /// The admin API: post, ban, history, stats, blacklist, metrics.
    pub admin: bool,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            chat_host: true,
            dispatcher: true,
            admin: true,
        }
    }
}

impl RolesConfig {
    /// Checks the roles, and that a host without the chat-host role can reach the others.
    pub fn check(&self, redis: &RedisConfig) -> Result<(), ConfigError> {
        if !self.chat_host && !self.dispatcher && !self.admin {
            return Err(ConfigError::invalid(
                "roles",
                "at least one of roles.chat_host, roles.dispatcher and roles.admin must be true",
            ));
        }
        if !self.chat_host && !redis.enabled() {
            return Err(ConfigError::invalid(
                "roles.chat_host",
                "a dispatcher or admin API without the chat-host role needs Redis (redis.url or \
                 redis.cluster_nodes) to reach the chat hosts",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Checks what the types alone cannot: each section, in file order; a plugin's settings
    /// only when it is in `plugins.chain`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth.check()?;
        self.private.check()?;
        self.admin.check()?;
        self.relay.check()?;
        self.limits.check()?;
        self.history.check()?;
        self.redis.check()?;
        self.host.check()?;
        self.presence.check()?;
        self.roles.check(&self.redis)?;
        self.plugins.check()?;
        if self.plugins.has(PluginName::RateLimit) {
            self.rate_limit.check()?;
        }
        self.blacklist.check()?;
        if self.plugins.has(PluginName::Webhook) {
            self.webhook.check()?;
        }
        if self.plugins.has(PluginName::PublishHook) {
            self.publish_hook.check()?;
        }
        self.demo.check()?;
        self.log.check()?;
        Ok(())
    }

    /// The configuration as TOML, e.g. for `chatup-sidecar config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// Helpers for the tests of each section's checks.
#[cfg(test)]
pub(crate) mod testing {
    use std::ffi::OsString;

    use super::{Config, ConfigError};

    /// An environment of these variables only.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    /// The defaults with these `--set` assignments (no file, no environment).
    pub(crate) fn load_sets(sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, env(&[]), &sets).map(|l| l.config)
    }

    /// Each set of assignments is refused with an error that contains its needle.
    pub(crate) fn assert_refused(cases: &[(&[&str], &str)]) {
        for &(sets, needle) in cases {
            let err = load_sets(sets).expect_err(&format!("{sets:?} must be refused"));
            assert!(err.to_string().contains(needle), "{sets:?}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::assert_refused;

    #[test]
    fn roles_are_checked() {
        assert_refused(&[
            (
                &[
                    "roles.chat_host=false",
                    "roles.dispatcher=false",
                    "roles.admin=false",
                ],
                "at least one",
            ),
            (&["roles.chat_host=false"], "needs Redis"),
        ]);
    }
}
