//! Private channels: which channels only a subscribe token opens ([`config`], the patterns
//! of [`chatup_wire::private`]), and the tokens themselves ([`token`]).
//!
//! The patterns live in one place, `[private] channels`: the chat host sends them to each of
//! its nginx workers when it connects (`Policy`), the workers send every request for a
//! private channel to the chat host (`Admit`, with the token) before answering it, and the
//! dispatcher keeps their users out of its public lists. [`PrivateChannels::check`] is the
//! token half of an admission; the chat host adds the bans (`host/viewers.rs`).

pub mod config;
pub mod token;

use chatup_wire::private::Policy;

use crate::jwt::{warn_example_key, AuthError, KeySetupError};

pub use config::PrivateConfig;
pub use token::{Grant, SubscribeVerifier};

/// Why a viewer is not admitted, with the HTTP status its request is refused with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token came with a request for a private channel.
    #[error(
        "channel {0:?} is private: subscribe with a subscribe token (?token=<jwt>, or \
         Authorization: Bearer <jwt>)"
    )]
    NoToken(String),
    /// The token is malformed, forged, of another key or algorithm, or expired.
    #[error("subscribe token refused: {0}")]
    Token(AuthError),
    /// The token is good but does not open this channel.
    #[error("the subscribe token does not open channel {0:?}")]
    NotOpened(String),
    /// The token's user is banned from the channel.
    #[error("banned from channel {channel:?}")]
    Banned { channel: String, until: Option<u64> },
    /// What the admission needs (the ban store) cannot be reached.
    #[error("cannot check the subscription now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The HTTP status of the refused request.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken(_) | Self::Token(_) => 401,
            Self::NotOpened(_) | Self::Banned { .. } => 403,
            Self::Unavailable(_) => 503,
        }
    }

    /// The code a client acts on (as publishers' error codes are written).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoToken(_) => "token_required",
            Self::Token(e) => e.code(),
            Self::NotOpened(_) => "forbidden",
            Self::Banned { .. } => "banned",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// The private channels and the verifier of their tokens.
pub struct PrivateChannels {
    policy: Policy,
    /// `None` when no channel is private: the key is then not read.
    verifier: Option<SubscribeVerifier>,
}

impl PrivateChannels {
    /// Reads `[private]` (the key only when some channel is private).
    pub fn from_config(cfg: &PrivateConfig) -> Result<Self, PrivateSetupError> {
        let policy = cfg.policy().map_err(PrivateSetupError::Config)?;
        let verifier = if policy.is_empty() {
            None
        } else {
            let verifier = SubscribeVerifier::from_config(cfg)?;
            if verifier.uses_example_key() {
                warn_example_key(
                    "private.public_key_file",
                    &cfg.public_key_file,
                    "watch any private channel",
                );
            }
            Some(verifier)
        };
        Ok(Self { policy, verifier })
    }

    /// Every channel public (tests, and hosts without `[private]`).
    pub fn none() -> Self {
        Self {
            policy: Policy::default(),
            verifier: None,
        }
    }

    /// From parts already built (tests).
    pub fn with_verifier(policy: Policy, verifier: SubscribeVerifier) -> Self {
        Self {
            policy,
            verifier: Some(verifier),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks that `token` opens every one of `channels` (the private ones of a request).
    pub fn check(&self, token: &str, channels: &[String]) -> Result<Grant, Refusal> {
        let first = channels.first().cloned().unwrap_or_default();
        if token.trim().is_empty() {
            return Err(Refusal::NoToken(first));
        }
        let Some(verifier) = &self.verifier else {
            // No channel is private here: a worker asking is out of date.
            return Err(Refusal::Unavailable(
                "no channel is private on this host (its configuration changed); reconnect".into(),
            ));
        };
        let grant = verifier.verify(token).map_err(Refusal::Token)?;
        if let Some(closed) = channels.iter().find(|c| !grant.opens(&self.policy, c)) {
            return Err(Refusal::NotOpened(closed.clone()));
        }
        Ok(grant)
    }
}

/// Why `[private]` cannot be used at startup.
#[derive(Debug, thiserror::Error)]
pub enum PrivateSetupError {
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error("{0}")]
    Key(#[from] KeySetupError),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::{now, sign, sign_subscribe, subscribe_channels};

    fn channels(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn a_token_opens_what_it_names_and_its_own_channel() {
        let private = subscribe_channels(&["user.{sub}", "members-*"]);
        let token = sign_subscribe(&json!({
            "sub": "alice", "exp": now() + 60, "channels": ["members-club"],
            "_public": {"name": "Alice"}
        }));
        let grant = private
            .check(&token, &channels(&["user.alice", "members-club"]))
            .unwrap();
        assert_eq!(grant.identity.sub.as_deref(), Some("alice"));
        assert_eq!(&*grant.identity.user, r#"{"name":"Alice"}"#);
        assert_eq!(
            private.check(&token, &channels(&["user.bob"])),
            Err(Refusal::NotOpened("user.bob".into()))
        );
        assert_eq!(
            private.check(&token, &channels(&["members-other"])),
            Err(Refusal::NotOpened("members-other".into()))
        );
        // A pattern in the token does not open someone else's own channel.
        let wide = sign_subscribe(&json!({"sub": "mod", "exp": now() + 60, "channels": ["*"]}));
        assert!(private.check(&wide, &channels(&["members-other"])).is_ok());
        assert_eq!(
            private.check(&wide, &channels(&["user.alice"])),
            Err(Refusal::NotOpened("user.alice".into()))
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason_and_status() {
        let private = subscribe_channels(&["user.{sub}"]);
        let mine = channels(&["user.alice"]);
        let refused = |token: &str| private.check(token, &mine).unwrap_err();

        let missing = refused("");
        assert_eq!((missing.status(), missing.code()), (401, "token_required"));
        assert!(missing.to_string().contains("?token="), "{missing}");

        let expired = refused(&sign_subscribe(
            &json!({"sub": "alice", "exp": now() - 3600}),
        ));
        assert_eq!((expired.status(), expired.code()), (401, "token_expired"));

        // Signed with the publishers' key: a publisher token is not a subscribe token.
        let wrong_key = refused(&sign(&json!({"sub": "alice", "exp": now() + 60})));
        assert_eq!(wrong_key.status(), 401);
        assert!(wrong_key.to_string().contains("signature"), "{wrong_key}");

        let forged = {
            let good = sign_subscribe(&json!({"sub": "alice", "exp": now() + 60}));
            let mut parts: Vec<&str> = good.split('.').collect();
            let other = sign_subscribe(&json!({"sub": "bob", "exp": now() + 60}));
            parts[1] = other.split('.').nth(1).unwrap();
            parts.join(".")
        };
        assert!(refused(&forged).to_string().contains("signature"));

        let no_exp = refused(&sign_subscribe(&json!({"sub": "alice"})));
        assert!(no_exp.to_string().contains("exp"), "{no_exp}");
        let no_sub = refused(&sign_subscribe(&json!({"exp": now() + 60})));
        assert!(no_sub.to_string().contains("sub"), "{no_sub}");
        let bad_channels = refused(&sign_subscribe(
            &json!({"sub": "alice", "exp": now() + 60, "channels": "user.alice"}),
        ));
        assert!(bad_channels.to_string().contains("array"), "{bad_channels}");
        assert!(refused("not-a-jwt").to_string().contains("not a JWT"));
    }
}
