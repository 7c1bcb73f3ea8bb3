//! `[auth]`: how publisher tokens are verified, and the algorithm check the admin keys
//! share.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::jwt::KeyFamily;

/// How publisher tokens (JWT) are verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// PEM public key (RSA, EC or Ed25519) or, for HS* algorithms, the file holding the
    /// shared secret (trailing whitespace is not part of the secret).
    pub public_key_file: PathBuf,
    /// Algorithms a token may be signed with. Pinned so a token cannot choose its own
    /// (e.g. `none`, or HS256 with the public key as secret); all must fit the key.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Required `iss` claim; empty means not checked.
    pub issuer: String,
    /// Required `aud` claim; empty means not checked.
    pub audience: String,
    /// Refuse tokens without an `exp` claim. The original system's tokens had none:
    /// `false` accepts them, for a migration, and such a token never expires (a leaked one
    /// works until the key is changed), so every start then logs a warning.
    pub require_exp: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key_file: PathBuf::from("/etc/chatup/jwt-public.pem"),
            algorithms: vec![Algorithm::RS256],
            leeway_seconds: 5,
            issuer: String::new(),
            audience: String::new(),
            require_exp: true,
        }
    }
}

impl AuthConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_algorithms("auth.algorithms", &self.algorithms)
    }
}

/// Checks that `algorithms` is non-empty and of one key family.
pub fn check_algorithms(key: &str, algorithms: &[Algorithm]) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let Some(first) = algorithms.first() else {
        return Err(invalid(
            "at least one algorithm is needed (e.g. [\"RS256\"])".into(),
        ));
    };
    let family = KeyFamily::of(*first);
    if let Some(other) = algorithms.iter().find(|a| KeyFamily::of(**a) != family) {
        return Err(invalid(format!(
            "{first:?} ({family}) and {other:?} ({}) need different kinds of key; \
             one key file serves one family, so list algorithms of one family only",
            KeyFamily::of(*other)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::env;
    use crate::config::Config;

    #[test]
    fn mixed_algorithm_families_are_refused() {
        let msg = Config::load(None, env(&[("CHATUP_AUTH_ALGORITHMS", "RS256,ES256")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("auth.algorithms") && msg.contains("ES256"),
            "{msg}"
        );
        let msg = Config::load(None, env(&[]), &["auth.algorithms=RS256,HS256".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("HS256"), "{msg}");
        let msg = Config::load(None, env(&[]), &["auth.algorithms=".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at least one"), "{msg}");
    }
}
