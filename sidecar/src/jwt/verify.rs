//! Publisher authentication: JSON Web Tokens checked against one configured key.
//!
//! The accepted algorithms are pinned by configuration and must all belong to the key's
//! family, so a token cannot pick its own algorithm: `alg: none` and the classic "HS256 signed
//! with the RSA public key as secret" forgery are refused before any signature check.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::AuthConfig;

use super::keys::{same_pem, KeyFamily, KeySetupError, LoadedKey, EXAMPLE_PUBLIC_KEY};

/// Why a token was refused. The message is shown to the publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, badly signed, wrong algorithm, wrong issuer or audience, bad claims.
    #[error("{0}")]
    BadToken(String),
    /// Expired, or not valid yet: a fresh token fixes it.
    #[error("{0}")]
    Expired(String),
}

impl AuthError {
    /// The error code sent to publishers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadToken(_) => "bad_token",
            Self::Expired(_) => "token_expired",
        }
    }

    /// The WebSocket close code that goes with it.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::BadToken(_) => chatup_wire::close::BAD_TOKEN,
            Self::Expired(_) => chatup_wire::close::TOKEN_EXPIRED,
        }
    }
}

/// Who a verified token says the publisher is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim, the user's id, for logs (and bans).
    pub sub: Option<String>,
    /// The `_public` claim encoded once as a JSON object; copied into every message as `user`.
    pub user: Arc<str>,
    /// Whether the token allows publishing events (`_events: true`).
    pub events: bool,
    /// The `exp` claim (seconds since the Unix epoch): a long-lived publisher connection
    /// stops publishing once it passes, until it sends a fresh token.
    pub expires_at: u64,
}

impl Identity {
    /// The id rate limits know the user by: the token's `sub`, or, when it has none,
    /// `_public.name`. A token with neither has no such id: the rate limit counts it by its
    /// `_public` text instead, as presence does. Bans match [`user_id`](Self::user_id) or
    /// [`public_name`](Self::public_name), as each ban says.
    pub fn moderation_id(&self) -> Option<String> {
        self.user_id().or_else(|| self.public_name())
    }

    /// The token's `sub`, when it is there and not empty: what a ban by user matches.
    pub fn user_id(&self) -> Option<String> {
        self.sub.clone().filter(|s| !s.is_empty())
    }

    /// The token's `_public.name`, when it is a non-empty string: what a ban by name
    /// matches (the original system's bans).
    pub fn public_name(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Name<'a> {
            #[serde(borrow, default)]
            name: Option<std::borrow::Cow<'a, str>>,
        }
        let name = serde_json::from_str::<Name<'_>>(&self.user).ok()?.name?;
        (!name.is_empty()).then(|| name.into_owned())
    }
}

/// The claims this server reads; the rest of the payload is ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default, rename = "_public")]
    public: Option<Value>,
    #[serde(default, rename = "_events")]
    events: Option<Value>,
}

/// The config key naming the publishers' key file.
const KEY_SETTING: &str = "auth.public_key_file";

/// Tokens remembered as verified. A publisher posting over HTTP sends its token with every
/// message; checking an RSA signature each time cost more than the rest of the publish.
/// 10,000 tokens of about 600 bytes: some 6 MB at most.
const VERIFIED_TOKENS: u64 = 10_000;

/// A remembered token unused this long is forgotten, so a token without `exp` (with
/// `auth.require_exp = false`) does not stay for good.
const VERIFIED_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Checks tokens against the configured key and rules.
pub struct Verifier {
    /// The key, of the family of every accepted algorithm.
    key: DecodingKey,
    /// The rules handed to `jsonwebtoken`: algorithms, leeway, `exp`, `nbf`, `iss`, `aud`.
    validation: Validation,
    /// Accepted algorithm names, to refuse others with a clear message before verifying.
    algorithm_names: Vec<String>,
    /// Kept to check `exp` again on every publish of a long-lived connection.
    leeway: u64,
    /// Whether the key is the example key from the repository (logged loudly at startup).
    example_key: bool,
    /// `auth.require_exp`: without it a token without `exp` never expires.
    require_exp: bool,
    /// Tokens verified earlier and what they said, until their `exp` (plus the leeway): the
    /// same token is not checked again. Keyed by the whole token, so only that exact text
    /// hits; the key and the rules are fixed for the process's life.
    verified: moka::sync::Cache<Arc<str>, Identity>,
}

impl Verifier {
    /// Loads the key file and builds the rules from `[auth]`.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, KeySetupError> {
        let path = &cfg.public_key_file;
        let bytes = std::fs::read(path).map_err(|source| KeySetupError::Read {
            setting: KEY_SETTING,
            path: path.clone(),
            source,
        })?;
        Self::from_key_bytes(cfg, path, &bytes)
    }

    pub(crate) fn from_key_bytes(
        cfg: &AuthConfig,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Self, KeySetupError> {
        let LoadedKey { key, family } =
            LoadedKey::from_bytes(KEY_SETTING, path, bytes, &cfg.algorithms)?;
        let first = &cfg.algorithms[0];
        let mut validation = Validation::new(*first);
        validation.algorithms = cfg.algorithms.clone();
        validation.leeway = cfg.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `exp` is still checked when present (validate_exp) if it is not required.
        let mut required = if cfg.require_exp { vec!["exp"] } else { vec![] };
        if cfg.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&cfg.issuer]);
            required.push("iss");
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
            validation.aud = None;
        } else {
            validation.set_audience(&[&cfg.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            key,
            validation,
            algorithm_names: cfg.algorithms.iter().map(|a| format!("{a:?}")).collect(),
            leeway: cfg.leeway_seconds,
            example_key: family != KeyFamily::Hmac && same_pem(bytes, EXAMPLE_PUBLIC_KEY),
            require_exp: cfg.require_exp,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_idle(VERIFIED_IDLE)
                .build(),
        })
    }

    /// Whether the configured key is the repository's example key.
    pub fn uses_example_key(&self) -> bool {
        self.example_key
    }

    /// Verifies `token` and extracts the publisher's identity; a token verified before is
    /// only checked for expiry.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// [`verify`](Self::verify) at `now_secs`, for the remembered tokens' expiry.
    fn verify_at(&self, token: &str, now_secs: u64) -> Result<Identity, AuthError> {
        let token = token.trim();
        if let Some(identity) = self.verified.get(token) {
            if !self.expired(&identity, now_secs) {
                return Ok(identity);
            }
            self.verified.invalidate(token);
            return Err(describe(ErrorKind::ExpiredSignature));
        }
        let identity = self.check(token)?;
        self.verified.insert(Arc::from(token), identity.clone());
        Ok(identity)
    }

    /// Checks `token`'s signature and claims.
    fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let bad = |m: &str| AuthError::BadToken(m.to_owned());
        precheck(token, &self.algorithm_names)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| describe(e.into_kind()))?;
        let claims = data.claims;

        let expires_at = match &claims.exp {
            None | Some(Value::Null) if !self.require_exp => Some(u64::MAX),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            _ => None,
        }
        .ok_or_else(|| bad("the \"exp\" claim must be a number of seconds"))?;

        let user = match claims.public {
            None | Some(Value::Null) => return Err(bad("the token has no \"_public\" claim")),
            Some(v @ Value::Object(_)) => serde_json::to_string(&v)
                .map_err(|_| bad("the \"_public\" claim cannot be encoded"))?,
            Some(other) => {
                return Err(AuthError::BadToken(format!(
                    "the \"_public\" claim must be a JSON object, not {}",
                    json_kind(&other)
                )))
            }
        };
        let sub = match claims.sub {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(AuthError::BadToken(format!(
                    "the \"sub\" claim must be a string, not {}",
                    json_kind(&other)
                )))
            }
        };
        Ok(Identity {
            sub,
            user: user.into(),
            events: claims.events == Some(Value::Bool(true)),
            expires_at,
        })
    }

    /// Whether an identity verified earlier has expired since (with the configured leeway).
    pub fn expired(&self, identity: &Identity, now_secs: u64) -> bool {
        identity.expires_at.saturating_add(self.leeway) < now_secs
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks that `token` is shaped like a JWT and signed with one of the `accepted` algorithms,
/// so that `none` and unknown names get a clear answer instead of a parse error.
pub fn precheck(token: &str, accepted: &[String]) -> Result<(), AuthError> {
    let bad = |m: &str| AuthError::BadToken(m.to_owned());
    if token.is_empty() {
        return Err(bad("the token is empty"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "the token is not a JWT (expected three base64url parts separated by '.')",
        ));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
        .ok_or_else(|| bad("the token header is not base64url-encoded JSON"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the token header has no \"alg\""))?;
    if !accepted.iter().any(|a| a == alg) {
        return Err(AuthError::BadToken(format!(
            "the token is signed with {alg:?}; this server accepts only {}",
            accepted.join(", ")
        )));
    }
    Ok(())
}

pub fn describe(kind: ErrorKind) -> AuthError {
    let bad = |m: &str| AuthError::BadToken(m.to_owned());
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired("the token has expired".into()),
        ErrorKind::ImmatureSignature => {
            AuthError::Expired("the token is not valid yet (its \"nbf\" is in the future)".into())
        }
        ErrorKind::InvalidSignature => {
            bad("the token's signature does not match the configured key")
        }
        ErrorKind::InvalidAlgorithm => bad("the token's algorithm is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::BadToken(format!("the token has no {c:?} claim"))
        }
        ErrorKind::InvalidIssuer => bad("the token's \"iss\" is not the expected issuer"),
        ErrorKind::InvalidAudience => bad("the token's \"aud\" is not the expected audience"),
        ErrorKind::Base64(_) => bad("the token is not valid base64url"),
        ErrorKind::Json(e) => AuthError::BadToken(format!("the token's claims are malformed: {e}")),
        ErrorKind::Utf8(_) => bad("the token's claims are not UTF-8"),
        other => AuthError::BadToken(format!("the token is invalid: {other:?}")),
    }
}

pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{good_claims, now, sign, verifier};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn accepts_a_good_token() {
        let id = verifier().verify(&sign(&good_claims())).unwrap();
        assert_eq!(id.sub.as_deref(), Some("u1"));
        assert_eq!(&*id.user, r#"{"color":"red","name":"ann"}"#);
        assert!(!id.events);
        let mut c = good_claims();
        c["_events"] = json!(true);
        c["sub"] = json!(42);
        let id = verifier().verify(&sign(&c)).unwrap();
        assert!(id.events);
        assert_eq!(id.sub.as_deref(), Some("42"));
    }

    #[test]
    fn the_moderation_id_is_sub_else_public_name() {
        let id = |sub: Option<&str>, user: &str| Identity {
            sub: sub.map(str::to_owned),
            user: user.into(),
            events: false,
            expires_at: u64::MAX,
        };
        assert_eq!(
            id(Some("u1"), r#"{"name":"ann"}"#)
                .moderation_id()
                .as_deref(),
            Some("u1")
        );
        assert_eq!(
            id(None, r#"{"name":"ann","color":"red"}"#)
                .moderation_id()
                .as_deref(),
            Some("ann")
        );
        // An escaped name is read as its text.
        assert_eq!(
            id(None, r#"{"name":"a\"b\u00e9"}"#)
                .moderation_id()
                .as_deref(),
            Some("a\"bé")
        );
        assert_eq!(
            id(Some(""), r#"{"name":"ann"}"#).moderation_id().as_deref(),
            Some("ann")
        );
        for user in [
            r#"{}"#,
            r#"{"name":""}"#,
            r#"{"name":7}"#,
            r#"{"nick":"ann"}"#,
        ] {
            assert_eq!(id(None, user).moderation_id(), None, "{user}");
        }
        // Straight from a verified token.
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("sub");
        let verified = verifier().verify(&sign(&c)).unwrap();
        assert_eq!(verified.moderation_id().as_deref(), Some("ann"));
    }

    #[test]
    fn example_key_is_recognised_with_other_line_endings() {
        assert!(verifier().uses_example_key());
        let crlf = EXAMPLE_PUBLIC_KEY.replace('\n', "\r\n");
        assert!(same_pem(crlf.as_bytes(), EXAMPLE_PUBLIC_KEY));
        assert!(!same_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n",
            EXAMPLE_PUBLIC_KEY
        ));
    }

    #[test]
    fn refuses_a_bad_signature() {
        let token = sign(&good_claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        let forged = format!("{head}.{}", String::from_utf8(sig).unwrap());
        let err = verifier().verify(&forged).unwrap_err();
        assert_eq!(err.code(), "bad_token");
        assert!(err.to_string().contains("signature"), "{err}");

        // Claims changed after signing.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = good_claims();
        c["_public"]["name"] = json!("mallory");
        parts[1] = b64(&c);
        assert_eq!(
            verifier().verify(&parts.join(".")).unwrap_err().code(),
            "bad_token"
        );
    }

    #[test]
    fn refuses_expired_and_not_yet_valid() {
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        let err = verifier().verify(&sign(&c)).unwrap_err();
        assert_eq!(err.code(), "token_expired");
        assert_eq!(err.close_code(), 4501);

        // Within the leeway it still passes.
        c["exp"] = json!(now() - 2);
        assert!(verifier().verify(&sign(&c)).is_ok());

        let mut c = good_claims();
        c["nbf"] = json!(now() + 120);
        let err = verifier().verify(&sign(&c)).unwrap_err();
        assert_eq!(err.code(), "token_expired");
        assert!(err.to_string().contains("nbf"), "{err}");
        c["nbf"] = json!(now() - 1);
        assert!(verifier().verify(&sign(&c)).is_ok());

        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        let err = verifier().verify(&sign(&c)).unwrap_err();
        assert_eq!(err.code(), "bad_token");
        assert!(err.to_string().contains("exp"), "{err}");
    }

    #[test]
    fn tokens_without_exp_pass_only_when_exp_is_not_required() {
        let lenient = Verifier::from_key_bytes(
            &AuthConfig {
                require_exp: false,
                ..AuthConfig::default()
            },
            Path::new("jwt-public.pem"),
            EXAMPLE_PUBLIC_KEY.as_bytes(),
        )
        .unwrap();
        // The original system's shape: `_public` and no `exp`.
        let original = json!({"_public": {"name": "zoe"}});
        let identity = lenient.verify(&sign(&original)).unwrap();
        assert_eq!(identity.expires_at, u64::MAX);
        assert!(!lenient.expired(&identity, now() + 10 * 365 * 86_400));
        assert_eq!(
            verifier().verify(&sign(&original)).unwrap_err().code(),
            "bad_token"
        );
        // An `exp` that is there is still checked.
        let mut c = good_claims();
        c["exp"] = json!(now() - 60);
        assert_eq!(
            lenient.verify(&sign(&c)).unwrap_err().code(),
            "token_expired"
        );
    }

    #[test]
    fn refuses_alg_none() {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good_claims())
        );
        let err = verifier().verify(&token).unwrap_err();
        assert_eq!(err.code(), "bad_token");
        assert!(err.to_string().contains("\"none\""), "{err}");
        assert_eq!(err.close_code(), 4500);
    }

    #[test]
    fn refuses_hs256_signed_with_the_public_key() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(EXAMPLE_PUBLIC_KEY.as_bytes()),
        )
        .unwrap();
        let err = verifier().verify(&token).unwrap_err();
        assert_eq!(err.code(), "bad_token");
        assert!(err.to_string().contains("HS256"), "{err}");
    }

    #[test]
    fn refuses_missing_or_non_object_public() {
        for (public, expect) in [
            (None, "no \"_public\""),
            (Some(json!(null)), "no \"_public\""),
            (Some(json!("ann")), "not a string"),
            (Some(json!(["ann"])), "not an array"),
            (Some(json!(7)), "not a number"),
        ] {
            let mut c = good_claims();
            match public {
                None => {
                    c.as_object_mut().unwrap().remove("_public");
                }
                Some(p) => c["_public"] = p,
            }
            let err = verifier().verify(&sign(&c)).unwrap_err();
            assert_eq!(err.code(), "bad_token");
            assert!(err.to_string().contains(expect), "{err} / {expect}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for token in ["", "abc", "a.b", "a.b.c.d", "!!.x.y"] {
            assert_eq!(verifier().verify(token).unwrap_err().code(), "bad_token");
        }
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let cfg = AuthConfig {
            issuer: "https://id.example".into(),
            audience: "chat".into(),
            ..AuthConfig::default()
        };
        let v =
            Verifier::from_key_bytes(&cfg, Path::new("k"), EXAMPLE_PUBLIC_KEY.as_bytes()).unwrap();
        assert!(v.verify(&sign(&good_claims())).is_err());
        let mut c = good_claims();
        c["iss"] = json!("https://id.example");
        c["aud"] = json!("chat");
        assert!(v.verify(&sign(&c)).is_ok());
        c["aud"] = json!("other");
        assert!(v.verify(&sign(&c)).unwrap_err().to_string().contains("aud"));
        // Without configured audience, a token's aud is not a reason to refuse it.
        assert!(verifier().verify(&sign(&c)).is_ok());
    }

    #[test]
    fn key_setup_errors_are_clear() {
        let cfg = AuthConfig {
            public_key_file: "/nonexistent/key.pem".into(),
            ..AuthConfig::default()
        };
        let msg = Verifier::from_config(&cfg).err().unwrap().to_string();
        assert!(
            msg.contains("/nonexistent/key.pem") && msg.contains("auth.public_key_file"),
            "{msg}"
        );

        let msg = Verifier::from_key_bytes(&AuthConfig::default(), Path::new("k"), b"hello")
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("RSA public key") && msg.contains("RS256"),
            "{msg}"
        );

        let hs = AuthConfig {
            algorithms: vec![Algorithm::HS256],
            ..AuthConfig::default()
        };
        let msg = Verifier::from_key_bytes(&hs, Path::new("k"), EXAMPLE_PUBLIC_KEY.as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("PEM key"), "{msg}");
    }

    #[test]
    fn hmac_secrets_work_without_their_trailing_newline() {
        let hs = AuthConfig {
            algorithms: vec![Algorithm::HS256],
            ..AuthConfig::default()
        };
        let secret = "a-long-random-secret-of-at-least-32-bytes";
        let v = Verifier::from_key_bytes(&hs, Path::new("k"), format!("{secret}\n").as_bytes())
            .unwrap();
        assert!(!v.uses_example_key());
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&token).is_ok());
        // An RS256 token is refused by an HS256 server.
        assert_eq!(
            v.verify(&sign(&good_claims())).unwrap_err().code(),
            "bad_token"
        );
    }

    #[test]
    fn expiry_is_rechecked_for_long_sessions() {
        let v = verifier();
        let id = v.verify(&sign(&good_claims())).unwrap();
        assert!(!v.expired(&id, now()));
        assert!(v.expired(&id, id.expires_at + 6));
        assert!(!v.expired(&id, id.expires_at + 5));
    }

    #[test]
    fn a_token_verified_once_is_remembered_until_it_expires() {
        let v = verifier();
        let mut c = good_claims();
        c["exp"] = json!(now() + 60);
        let token = sign(&c);
        let first = v.verify(&token).unwrap();
        // Remembered: the same identity, without another signature check (a token whose
        // signature no longer matched could not pass otherwise).
        assert_eq!(v.verify_at(&format!(" {token} "), now()).unwrap(), first);
        v.verified.run_pending_tasks();
        assert_eq!(v.verified.entry_count(), 1);
        // Past its exp and the leeway, the remembered token is refused as expired.
        let later = now() + 60 + v.leeway + 1;
        assert_eq!(
            v.verify_at(&token, later).unwrap_err().code(),
            "token_expired"
        );
        assert!(v.verified.get(token.as_str()).is_none(), "and forgotten");
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let v = verifier();
        let token = sign(&good_claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_payload = b64(&json!({"_public": {"name": "mallory"}, "exp": now() + 60}));
        parts[1] = &forged_payload;
        let forged = parts.join(".");
        for _ in 0..2 {
            assert_eq!(v.verify(&forged).unwrap_err().code(), "bad_token");
        }
        v.verified.run_pending_tasks();
        assert_eq!(v.verified.entry_count(), 0);
    }
}
