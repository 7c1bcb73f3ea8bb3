//! `[host]`: how this host announces itself to the dispatcher ([`crate::cluster::registry`]).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How this host announces itself to the dispatcher (through Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name among hosts; must be unique. Empty: the machine's hostname and the
    /// HTTP port (`chat1:7001`).
    pub id: String,
    /// Base URL at which clients reach this host's nginx, e.g. `https://chat1.example.com`.
    /// Empty means "the origin the client used for the dispatcher", which suits one host.
    pub public_url: String,
    /// Where nginx mounts the subscriber and publisher endpoints under `public_url`.
    pub sub_path: String,
    pub pub_path: String,
    /// How often this host writes its load and channel counts.
    pub report_interval_ms: u64,
    /// A host that has not reported for this long is dead to the dispatcher.
    pub ttl_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            public_url: String::new(),
            sub_path: "/sub/".into(),
            pub_path: "/pub".into(),
            report_interval_ms: 1000,
            ttl_ms: 3000,
        }
    }
}

impl HostConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.public_url.is_empty()
            && !["http://", "https://"]
                .iter()
                .any(|s| self.public_url.starts_with(s))
        {
            return Err(ConfigError::invalid(
                "host.public_url",
                format!(
                    "{:?} must start with http:// or https:// (the WebSocket URLs are derived from it)",
                    self.public_url
                ),
            ));
        }
        if let Some(bad) = self
            .id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(ConfigError::invalid(
                "host.id",
                format!(
                    "{:?} has {bad:?}; a host id may use ASCII letters, digits, '_', '-', '.' \
                     and ':' (it becomes part of Redis key names)",
                    self.id
                ),
            ));
        }
        if self.id.len() > 128 {
            return Err(ConfigError::invalid(
                "host.id",
                "must be at most 128 characters",
            ));
        }
        for (key, path) in [
            ("host.sub_path", &self.sub_path),
            ("host.pub_path", &self.pub_path),
        ] {
            if !path.starts_with('/') {
                return Err(ConfigError::invalid(
                    key,
                    format!("{path:?} must start with /"),
                ));
            }
        }
        if self.report_interval_ms == 0 || self.ttl_ms <= self.report_interval_ms {
            return Err(ConfigError::invalid(
                "host.ttl_ms",
                "must be larger than host.report_interval_ms (which must be at least 1), so a \
                 live host never looks dead between two reports",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn host_settings_are_checked() {
        assert_refused(&[
            (&["host.id=chat 1"][..], "host.id"),
            (&["host.id=a{b}"], "host.id"),
            (
                &["host.public_url=chat1.example.com"],
                "http:// or https://",
            ),
            (&["host.sub_path=sub"], "must start with /"),
            (&["host.ttl_ms=1000"], "larger than host.report_interval_ms"),
        ]);
    }
}
