//! `[demo]`: demo publisher tokens ([`crate::host::demo`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Demo publisher tokens, `POST /demo/token` (chat-host role), for the example page of
/// `scripts/run`. Anyone who can reach the endpoint can publish under any name: never in
/// production.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// The private half of the publishers' key pair (PEM), or the HS* secret file, signing
    /// with the first of `auth.algorithms`. Empty (the default): no `/demo/token`.
    pub private_key_file: PathBuf,
    /// How long a demo token is valid, in seconds.
    pub ttl_seconds: u64,
    /// The private half of `private.public_key_file`'s pair (PEM), signing with the first
    /// of `private.algorithms`: `/demo/token` then also answers a subscribe token that
    /// opens the user's own channel (the first `{sub}` pattern of `private.channels`, e.g.
    /// `user.<id>`), for the example page's direct messages. Empty (the default): none.
    pub subscribe_key_file: PathBuf,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            private_key_file: PathBuf::new(),
            ttl_seconds: 3600,
            subscribe_key_file: PathBuf::new(),
        }
    }
}

impl DemoConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.ttl_seconds == 0 {
            return Err(ConfigError::invalid(
                "demo.ttl_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::testing::env;
    use crate::config::Config;

    #[test]
    fn demo_tokens_are_off_by_default_and_their_ttl_is_checked() {
        let c = Config::load(None, env(&[]), &[]).unwrap().config;
        assert_eq!(c.demo.private_key_file, PathBuf::new());
        assert_eq!(c.demo.ttl_seconds, 3600);
        let c = Config::load(
            None,
            env(&[("CHATUP_DEMO_PRIVATE_KEY_FILE", "/keys/jwt-private.pem")]),
            &["demo.ttl_seconds=60".into()],
        )
        .unwrap()
        .config;
        assert_eq!(
            c.demo.private_key_file,
            PathBuf::from("/keys/jwt-private.pem")
        );
        assert_eq!(c.demo.ttl_seconds, 60);
        let msg = Config::load(None, env(&[]), &["demo.ttl_seconds=0".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("demo.ttl_seconds"), "{msg}");
    }
}
