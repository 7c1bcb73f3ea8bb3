//! JWTs for the publisher endpoints: valid ones signed with the example key, and every
//! kind of bad one.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::env::{example_keys, sidecar_bin};

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn example_private_key() -> PathBuf {
    example_keys().join("jwt-private.pem")
}

pub fn example_public_key() -> PathBuf {
    example_keys().join("jwt-public.pem")
}

/// Standard claims for user `name`: valid for an hour, `_public = {"name": name}`.
pub fn claims(name: &str) -> Value {
    json!({
        "sub": format!("user-{name}"),
        "exp": now() + 3600,
        "iat": now(),
        "_public": {"name": name},
    })
}

/// Signs `claims` with `alg` using a PEM private key.
pub fn sign_with_pem(claims: &Value, alg: Algorithm, pem: &[u8]) -> String {
    let key = EncodingKey::from_rsa_pem(pem).expect("an RSA private key in PEM");
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign a JWT")
}

/// Signs `claims` with RS256 and the example private key.
pub fn sign(claims: &Value) -> String {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let pem = KEY.get_or_init(|| {
        std::fs::read(example_private_key()).expect("read the example private key")
    });
    sign_with_pem(claims, Algorithm::RS256, pem)
}

pub fn example_admin_private_key() -> PathBuf {
    example_keys().join("admin-private.pem")
}

pub fn example_admin_public_key() -> PathBuf {
    example_keys().join("admin-public.pem")
}

/// Signs `payload` (any JSON, arrays too) with RS256 and the example admin key.
pub fn sign_admin(payload: &Value) -> String {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let pem = KEY.get_or_init(|| {
        std::fs::read(example_admin_private_key()).expect("read the example admin key")
    });
    sign_with_pem(payload, Algorithm::RS256, pem)
}

pub fn example_subscribe_private_key() -> PathBuf {
    example_keys().join("subscribe-private.pem")
}

pub fn example_subscribe_public_key() -> PathBuf {
    example_keys().join("subscribe-public.pem")
}

/// Signs `claims` with RS256 and the example subscribe key.
pub fn sign_subscribe(claims: &Value) -> String {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let pem = KEY.get_or_init(|| {
        std::fs::read(example_subscribe_private_key()).expect("read the example subscribe key")
    });
    sign_with_pem(claims, Algorithm::RS256, pem)
}

/// A subscribe token for `sub` opening `channels`, valid for `ttl` seconds.
pub fn subscribe_token(sub: &str, channels: &[&str], ttl: i64) -> String {
    sign_subscribe(&json!({
        "sub": sub,
        "exp": now() + ttl,
        "channels": channels,
        "_public": {"name": sub},
    }))
}

/// A valid admin Bearer token (an hour, `"scope": "chatup:admin"`).
pub fn admin_token() -> String {
    sign_admin(&json!({"exp": now() + 3600, "iat": now(), "scope": "chatup:admin"}))
}

/// A valid token for `name`.
pub fn token(name: &str) -> String {
    sign(&claims(name))
}

/// A valid token for `name` that may publish events (`_events: true`).
pub fn events_token(name: &str) -> String {
    let mut c = claims(name);
    c["_events"] = json!(true);
    sign(&c)
}

/// RS256-signed with an RSA key that is not the example one.
pub fn token_signed_by_other_key(claims: &Value) -> String {
    sign_with_pem(claims, Algorithm::RS256, other_rsa_key())
}

/// HS256 with `secret` as the HMAC key.
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign a JWT")
}

/// HS256 using the example *public* key PEM as the HMAC secret (the classic algorithm
/// confusion attack).
pub fn hs256_with_public_key(claims: &Value) -> String {
    let pem = std::fs::read(example_public_key()).expect("read the example public key");
    hs256(claims, &pem)
}

/// `{"alg":"none"}` with an empty signature.
pub fn alg_none(claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// A second RSA private key (PEM), made once per test process with openssl.
pub fn other_rsa_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run openssl genpkey (install openssl)");
        assert!(
            out.status.success(),
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    })
}

/// Runs `chatup-sidecar token --key <example private key> <args>` and returns the token.
pub fn cli_token(args: &[&str]) -> String {
    let out = Command::new(sidecar_bin())
        .arg("token")
        .arg("--key")
        .arg(example_private_key())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run chatup-sidecar token");
    assert!(
        out.status.success(),
        "chatup-sidecar token {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("token output is UTF-8");
    token.trim().to_owned()
}

/// The payload of a JWT, decoded without checking anything.
pub fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}
