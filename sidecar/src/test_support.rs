//! What the unit tests of every part need to act as a publisher or an operator: tokens
//! signed with the example keys (`nginx-conf/example-keys/`), the verifiers that accept
//! them, identities as a verified token gives them.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::admin::auth::AdminVerifier;
use crate::config::AuthConfig;
use crate::jwt::{Identity, Verifier, EXAMPLE_PUBLIC_KEY};

/// The private half of the example publisher key.
pub const PRIVATE: &str = include_str!("../../nginx-conf/example-keys/jwt-private.pem");

/// The private half of the example subscribe key.
pub const SUBSCRIBE_PRIVATE: &str =
    include_str!("../../nginx-conf/example-keys/subscribe-private.pem");

/// The private half of the example admin key.
pub const ADMIN_PRIVATE: &str = include_str!("../../nginx-conf/example-keys/admin-private.pem");

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An identity as a verified token would give it: `sub` (optional) and the `_public`
/// JSON text, never expiring, no events.
pub fn identity_of(sub: Option<&str>, user: &str) -> Identity {
    Identity {
        sub: sub.map(str::to_owned),
        user: user.into(),
        events: false,
        expires_at: u64::MAX,
    }
}

fn sign_with(private_pem: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A publisher token with `claims`, signed with the example key.
pub fn sign(claims: &Value) -> String {
    sign_with(PRIVATE, claims)
}

/// An admin token with `claims`, signed with the example admin key.
pub fn sign_admin(claims: &Value) -> String {
    sign_with(ADMIN_PRIVATE, claims)
}

/// A subscribe token with `claims`, signed with the example subscribe key.
pub fn sign_subscribe(claims: &Value) -> String {
    sign_with(SUBSCRIBE_PRIVATE, claims)
}

/// Private channels matching `patterns`, their tokens checked with the example subscribe
/// key and the default settings.
pub fn subscribe_channels(patterns: &[&str]) -> crate::private::PrivateChannels {
    let cfg = crate::private::PrivateConfig {
        channels: patterns.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    let verifier = crate::private::SubscribeVerifier::from_key_bytes(
        &cfg,
        Path::new("subscribe-public.pem"),
        crate::private::token::EXAMPLE_SUBSCRIBE_KEY.as_bytes(),
    )
    .unwrap();
    crate::private::PrivateChannels::with_verifier(cfg.policy().unwrap(), verifier)
}

/// The claims of a valid publisher token: user `u1`, named ann, ten minutes left.
pub fn good_claims() -> Value {
    json!({"exp": now() + 600, "sub": "u1", "_public": {"name": "ann", "color": "red"}})
}

/// A verifier of publisher tokens with the default settings and the example key.
pub fn verifier() -> Verifier {
    Verifier::from_key_bytes(
        &AuthConfig::default(),
        Path::new("jwt-public.pem"),
        EXAMPLE_PUBLIC_KEY.as_bytes(),
    )
    .unwrap()
}

/// A verifier of admin tokens with the example admin key.
pub fn admin_verifier(array_tokens: bool) -> AdminVerifier {
    AdminVerifier::with_example_key(array_tokens)
}

/// Limits small enough that a test reaches them with a few characters: 5 per message,
/// 10 bytes of event data.
pub const TIGHT_LIMITS: crate::message::Limits = crate::message::Limits {
    max_message_chars: 5,
    max_event_bytes: 10,
    idempotency_window: std::time::Duration::from_secs(300),
};
