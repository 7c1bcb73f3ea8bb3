//! Subscribe tokens: JWTs the operator's backend signs with its own key, naming the private
//! channels they open. Checked with the publishers' rules ([`crate::jwt::verify`]): pinned
//! algorithms, `exp` required, `nbf` honoured.
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600, "channels": ["members-club", "mod-*"],
//!  "_public": {"name": "Alice"}}
//! ```
//!
//! `sub` is required: it is who watches (for bans, and the operator's list of viewers), and
//! it alone opens the user's own channel (`user.{sub}` in `private.channels`: `user.alice`
//! only for `alice`, whatever `channels` says). `channels` lists other private channels, by
//! name or `prefix*`. `_public`, when present, is shown in the operator's list of viewers.

use std::path::Path;

use chatup_wire::private::{grant_opens, Policy};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::config::PrivateConfig;
use crate::jwt::keys::same_pem;
use crate::jwt::LoadedKey;
use crate::jwt::{describe, json_kind, precheck, AuthError, Identity, KeyFamily, KeySetupError};

/// The config key naming the subscribe key.
const KEY_SETTING: &str = "private.public_key_file";

/// The public half of the example subscribe key (its private half is in the sources).
pub const EXAMPLE_SUBSCRIBE_KEY: &str =
    include_str!("../../../nginx-conf/example-keys/subscribe-public.pem");

/// Most entries a token's `channels` may list.
pub const MAX_GRANTS: usize = 256;

/// What a verified subscribe token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who watches: `sub`, `_public` (or `{}`), and `exp`.
    pub identity: Identity,
    /// The `channels` claim: names and `prefix*` patterns.
    pub channels: Vec<String>,
}

impl Grant {
    /// Whether the token opens the private `channel`: a user's own channel only for that
    /// user, any other when `channels` names it.
    pub fn opens(&self, policy: &Policy, channel: &str) -> bool {
        match policy.owner(channel) {
            Some(owner) => self.identity.sub.as_deref() == Some(owner),
            None => self.channels.iter().any(|g| grant_opens(g, channel)),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    channels: Option<Value>,
    #[serde(default, rename = "_public")]
    public: Option<Value>,
}

/// Checks subscribe tokens against `private.public_key_file`.
pub struct SubscribeVerifier {
    key: DecodingKey,
    validation: Validation,
    /// Accepted algorithm names, to refuse others with a clear message.
    algorithm_names: Vec<String>,
    /// Whether the key is the repository's example key (logged loudly at startup).
    example_key: bool,
}

impl SubscribeVerifier {
    /// Loads the key of `[private]`.
    pub fn from_config(cfg: &PrivateConfig) -> Result<Self, KeySetupError> {
        let (loaded, bytes) = LoadedKey::read(KEY_SETTING, &cfg.public_key_file, &cfg.algorithms)?;
        Ok(Self::new(cfg, loaded, &bytes))
    }

    /// From a key already read (tests).
    pub fn from_key_bytes(
        cfg: &PrivateConfig,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Self, KeySetupError> {
        let loaded = LoadedKey::from_bytes(KEY_SETTING, path, bytes, &cfg.algorithms)?;
        Ok(Self::new(cfg, loaded, bytes))
    }

    fn new(cfg: &PrivateConfig, loaded: LoadedKey, bytes: &[u8]) -> Self {
        let mut validation = Validation::new(cfg.algorithms[0]);
        validation.algorithms = cfg.algorithms.clone();
        validation.leeway = cfg.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: loaded.key,
            validation,
            algorithm_names: cfg.algorithms.iter().map(|a| format!("{a:?}")).collect(),
            example_key: loaded.family != KeyFamily::Hmac && same_pem(bytes, EXAMPLE_SUBSCRIBE_KEY),
        }
    }

    /// Whether the configured key is the repository's example key.
    pub fn uses_example_key(&self) -> bool {
        self.example_key
    }

    /// Verifies `token` and reads what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let bad = |m: String| AuthError::BadToken(m);
        let token = token.trim();
        precheck(token, &self.algorithm_names)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| describe(e.into_kind()))?
            .claims;
        let expires_at = match &claims.exp {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            _ => None,
        }
        .ok_or_else(|| bad("the \"exp\" claim must be a number of seconds".into()))?;
        let sub = match claims.sub {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(_)) => return Err(bad("the \"sub\" claim is empty".into())),
            other => {
                return Err(bad(format!(
                    "the \"sub\" claim must be a string, not {}",
                    other.as_ref().map_or("missing", json_kind)
                )))
            }
        };
        let channels = match claims.channels {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) if list.len() <= MAX_GRANTS => list
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(bad(format!(
                        "each entry of the \"channels\" claim must be a string, not {}",
                        json_kind(&other)
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(list)) => {
                return Err(bad(format!(
                    "the \"channels\" claim lists {} entries; at most {MAX_GRANTS}",
                    list.len()
                )))
            }
            Some(other) => {
                return Err(bad(format!(
                    "the \"channels\" claim must be an array of channel names, not {}",
                    json_kind(&other)
                )))
            }
        };
        let user = match claims.public {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(other) => {
                return Err(bad(format!(
                    "the \"_public\" claim must be a JSON object, not {}",
                    json_kind(&other)
                )))
            }
        };
        Ok(Grant {
            identity: Identity {
                sub: Some(sub),
                user: user.into(),
                events: false,
                expires_at,
            },
            channels,
        })
    }
}
