//! `[admin]`: the admin API's authentication.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::jwt::config::check_algorithms;

/// The admin API's authentication. Admin tokens are signed with their own key, never the
/// publishers' one, so a publisher token can never act as an admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// PEM public key (or HS* shared-secret file) that admin tokens are checked against.
    /// Must differ from `auth.public_key_file`. Empty: the admin API answers every call
    /// that needs a token with 503 `admin_disabled` (`/health` and `/metrics` still work).
    pub public_key_file: PathBuf,
    /// Algorithms an admin token may be signed with; all must fit the key.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf` of `Authorization: Bearer` admin tokens.
    pub leeway_seconds: u64,
    /// Accept request bodies that are a JWT whose payload is a JSON array (the format of
    /// the original system's admin calls). Such tokens carry no expiry: anyone holding one
    /// can replay it, so turn this off when nothing produces them.
    pub array_tokens: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            public_key_file: PathBuf::new(),
            algorithms: vec![Algorithm::RS256],
            leeway_seconds: 5,
            array_tokens: true,
        }
    }
}

impl AdminConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_algorithms("admin.algorithms", &self.algorithms)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn admin_algorithms_are_of_one_family() {
        assert_refused(&[(&["admin.algorithms=RS256,HS256"], "admin.algorithms")]);
    }
}
