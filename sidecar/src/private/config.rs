//! `[private]`: which channels only a subscribe token opens, and how those tokens are
//! verified.

use std::path::PathBuf;

use chatup_wire::private::Policy;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::jwt::config::check_algorithms;

/// Private channels and their subscribe tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivateConfig {
    /// The private channel patterns (`name`, `prefix*`, `prefix{sub}`), sent to every nginx
    /// worker so that both sides agree. Empty: every channel is public, and nothing else
    /// here is read.
    pub channels: Vec<String>,
    /// PEM public key (RSA, EC or Ed25519) or, for HS* algorithms, the secret file that
    /// verifies subscribe tokens. Its own key, not the publishers': a subscribe token only
    /// lets its holder watch, and a publisher token must not do that.
    pub public_key_file: PathBuf,
    /// Algorithms a subscribe token may be signed with, pinned as `auth.algorithms`.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        Self {
            channels: Vec::new(),
            public_key_file: PathBuf::from("/etc/chatup/subscribe-public.pem"),
            algorithms: vec![Algorithm::RS256],
            leeway_seconds: 5,
        }
    }
}

impl PrivateConfig {
    /// Checks the patterns and the algorithms.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.policy()?;
        check_algorithms("private.algorithms", &self.algorithms)
    }

    /// The patterns, checked.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        Policy::parse(&self.channels)
            .map_err(|e| ConfigError::invalid("private.channels", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::env;
    use crate::config::Config;

    #[test]
    fn bad_patterns_are_refused_with_the_key_and_reason() {
        let msg = Config::load(None, env(&[]), &["private.channels=user:{sub}".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("private.channels") && msg.contains("user:{sub}"),
            "{msg}"
        );
        let msg = Config::load(None, env(&[("CHATUP_PRIVATE_CHANNELS", "a*b")]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("may only end a pattern"), "{msg}");
        let loaded = Config::load(
            None,
            env(&[("CHATUP_PRIVATE_CHANNELS", "user.{sub},members-*")]),
            &[],
        )
        .unwrap();
        let policy = loaded.config.private.policy().unwrap();
        assert!(policy.is_private("members-x") && policy.is_private("user.bob"));
    }
}
