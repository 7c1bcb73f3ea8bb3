//! Who may call the admin API: holders of a token signed with the admin key.
//!
//! Two forms are accepted, both checked against `admin.public_key_file`, which must not be
//! the publishers' key:
//!
//! * `Authorization: Bearer <JWT>` with a JSON request body. The token's payload is an
//!   object with an `exp` and the claim `"scope": "chatup:admin"` (space-separated scopes);
//!   a publisher token has neither the key nor the scope.
//! * A request body that *is* a JWT whose payload is a JSON array: the payload is the
//!   request (`[{"channel": .., "msg": ..}]` for `/post`, `[{"name": .., "channel": ..}]`
//!   for `/ban`). This is the format the original system's operators already produce. It has
//!   no expiry, so `admin.array_tokens = false` turns it off.

use std::path::Path;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{AdminError, AdminState};
use crate::config::{AdminConfig, AuthConfig};
use crate::http::content_type::reads_as_json;
use crate::jwt::{describe, json_kind, precheck, AuthError, KeySetupError, LoadedKey, ADMIN_SCOPE};

/// The public key shipped in `nginx-conf/example-keys/` for admin tokens.
pub const EXAMPLE_ADMIN_KEY: &str =
    include_str!("../../../nginx-conf/example-keys/admin-public.pem");

/// The config key naming the admin key file.
const KEY_SETTING: &str = "admin.public_key_file";

impl crate::jwt::OperatorTokens for AdminVerifier {
    fn is_operator(&self, token: &str) -> bool {
        self.verify_bearer(token).is_ok()
    }
}

/// Checks admin tokens.
pub struct AdminVerifier {
    /// The admin key.
    key: DecodingKey,
    /// Algorithms, leeway and required `exp` for Bearer tokens.
    validation: Validation,
    /// Accepted algorithm names, to refuse others with a clear message before verifying.
    algorithm_names: Vec<String>,
    /// Whether bodies that are array-payload JWTs are accepted.
    array_tokens: bool,
    /// Whether the key is the repository's example admin key (logged loudly at startup).
    example_key: bool,
}

impl AdminVerifier {
    /// Loads `admin.public_key_file`; refuses the publishers' key.
    pub fn from_config(admin: &AdminConfig, auth: &AuthConfig) -> Result<Self, KeySetupError> {
        let (loaded, bytes) =
            LoadedKey::read(KEY_SETTING, &admin.public_key_file, &admin.algorithms)?;
        if let Ok(publisher_key) = std::fs::read(&auth.public_key_file) {
            if publisher_key.trim_ascii() == bytes.trim_ascii() {
                return Err(KeySetupError::NotAKey {
                    setting: KEY_SETTING,
                    path: admin.public_key_file.clone(),
                    family: loaded.family,
                    algorithms: format!("{:?}", admin.algorithms),
                    reason: "it is the same key as auth.public_key_file; admin tokens need a key \
                             of their own so that no publisher token can pass as one"
                        .into(),
                });
            }
        }
        Ok(Self::new(loaded, admin, &bytes))
    }

    fn new(loaded: LoadedKey, admin: &AdminConfig, bytes: &[u8]) -> Self {
        let first = admin
            .algorithms
            .first()
            .copied()
            .unwrap_or(Algorithm::RS256);
        let mut validation = Validation::new(first);
        validation.algorithms = admin.algorithms.clone();
        validation.leeway = admin.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: loaded.key,
            validation,
            algorithm_names: admin.algorithms.iter().map(|a| format!("{a:?}")).collect(),
            array_tokens: admin.array_tokens,
            example_key: crate::jwt::keys::same_pem(bytes, EXAMPLE_ADMIN_KEY),
        }
    }

    /// Whether the configured key is the repository's example admin key.
    pub fn uses_example_key(&self) -> bool {
        self.example_key
    }

    /// Checks a Bearer admin token.
    pub fn verify_bearer(&self, token: &str) -> Result<(), AdminError> {
        let token = token.trim();
        precheck(token, &self.algorithm_names).map_err(AdminError::from)?;
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|e| AdminError::from(describe(e.into_kind())))?;
        let scopes = data
            .claims
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !scopes.split_whitespace().any(|s| s == ADMIN_SCOPE) {
            return Err(AdminError::BadToken(format!(
                "not an admin token: its \"scope\" claim must include {ADMIN_SCOPE:?}"
            )));
        }
        Ok(())
    }

    /// Checks a body-token and returns its payload, which must be a JSON array.
    pub fn verify_array_token(&self, token: &str) -> Result<Value, AdminError> {
        if !self.array_tokens {
            return Err(AdminError::MissingToken(
                "send \"Authorization: Bearer <admin token>\" (tokens in the body are turned off \
                 by admin.array_tokens = false)"
                    .into(),
            ));
        }
        let token = token.trim();
        precheck(token, &self.algorithm_names).map_err(AdminError::from)?;
        let bad = |m: &str| AdminError::BadToken(m.to_owned());
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| bad("the token is not a JWT"))?;
        let (header, payload) = message
            .split_once('.')
            .ok_or_else(|| bad("the token is not a JWT"))?;
        let header: jsonwebtoken::Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| bad("the token header is not base64url-encoded JSON"))?;
        let signed =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.key, header.alg)
                .map_err(|e| AdminError::from(describe(e.into_kind())))?;
        if !signed {
            return Err(bad("the token's signature does not match the admin key"));
        }
        let payload: Value = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| bad("the token payload is not base64url-encoded JSON"))?;
        match payload {
            Value::Array(_) => Ok(payload),
            other => Err(AdminError::BadRequest(format!(
                "a token sent as the request body must have a JSON array as payload, not {}; \
                 for other requests send \"Authorization: Bearer <admin token>\" and a JSON body",
                json_kind(&other)
            ))),
        }
    }
}

impl From<AuthError> for AdminError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadToken(m) => Self::BadToken(m),
            AuthError::Expired(m) => Self::TokenExpired(m),
        }
    }
}

/// The bearer token of `headers`: `None` without an `Authorization` header, an error when
/// it is not `Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AdminError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let not_bearer = || {
        AdminError::MissingToken("the Authorization header must be \"Bearer <admin token>\"".into())
    };
    let value = value.to_str().map_err(|_| not_bearer())?.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(not_bearer()),
    }
}

fn verifier(state: &AdminState) -> Result<&AdminVerifier, AdminError> {
    state.verifier.as_deref().ok_or(AdminError::Disabled)
}

/// A request made with an admin Bearer token (for requests without a body).
pub struct AdminAuth;

impl FromRequestParts<std::sync::Arc<AdminState>> for AdminAuth {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        let verifier = verifier(state)?;
        let token = bearer(&parts.headers)?.ok_or_else(|| {
            AdminError::MissingToken("missing \"Authorization: Bearer <admin token>\"".into())
        })?;
        verifier.verify_bearer(token)?;
        Ok(Self)
    }
}

/// The verified JSON request of an admin call: the JSON body of a Bearer-authenticated
/// request, or the array payload of a body-token.
pub struct AdminBody(pub Value);

impl FromRequest<std::sync::Arc<AdminState>> for AdminBody {
    type Rejection = AdminError;

    async fn from_request(
        request: Request,
        state: &std::sync::Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        let verifier = verifier(state)?;
        let token = bearer(request.headers())?.map(str::to_owned);
        let json_type = reads_as_json(request.headers());
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| AdminError::BadRequest(format!("cannot read the request body: {e}")))?;
        match token {
            Some(token) => {
                verifier.verify_bearer(&token)?;
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Err(AdminError::BadRequest(
                        "the request body is empty; send a JSON object".into(),
                    ));
                }
                if !json_type {
                    return Err(AdminError::UnsupportedMediaType);
                }
                serde_json::from_slice(&body)
                    .map(AdminBody)
                    .map_err(|e| AdminError::BadRequest(format!("the body is not valid JSON: {e}")))
            }
            None => {
                let text = std::str::from_utf8(&body).unwrap_or("").trim();
                if text.is_empty() {
                    return Err(AdminError::MissingToken(
                        "missing \"Authorization: Bearer <admin token>\" (or a body that is an \
                         admin JWT whose payload is a JSON array)"
                            .into(),
                    ));
                }
                if text.starts_with(['{', '[']) {
                    return Err(AdminError::MissingToken(
                        "a JSON body needs \"Authorization: Bearer <admin token>\"".into(),
                    ));
                }
                verifier.verify_array_token(text).map(AdminBody)
            }
        }
    }
}

/// The example admin key's file, for the startup warning.
pub fn warn_example_admin_key(path: &Path) {
    crate::jwt::warn_example_key(KEY_SETTING, path, "call the admin API (post, ban, ...)");
}

/// The example admin key's verifier, for tests.
#[cfg(test)]
impl AdminVerifier {
    pub(crate) fn with_example_key(array_tokens: bool) -> Self {
        let config = AdminConfig {
            array_tokens,
            ..AdminConfig::default()
        };
        let loaded = LoadedKey::from_bytes(
            KEY_SETTING,
            Path::new("admin-public.pem"),
            EXAMPLE_ADMIN_KEY.as_bytes(),
            &config.algorithms,
        )
        .unwrap();
        Self::new(loaded, &config, EXAMPLE_ADMIN_KEY.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{admin_verifier, good_claims, now, sign, sign_admin};
    use serde_json::json;

    #[test]
    fn bearer_tokens_need_the_admin_scope_and_an_expiry() {
        let v = admin_verifier(true);
        assert!(v.uses_example_key());
        v.verify_bearer(&sign_admin(
            &json!({"exp": now() + 60, "scope": "chatup:admin"}),
        ))
        .unwrap();
        v.verify_bearer(&sign_admin(
            &json!({"exp": now() + 60, "scope": "read chatup:admin"}),
        ))
        .unwrap();
        let no_scope = v
            .verify_bearer(&sign_admin(&json!({"exp": now() + 60})))
            .unwrap_err();
        assert!(
            matches!(no_scope, AdminError::BadToken(ref m) if m.contains("scope")),
            "{no_scope:?}"
        );
        let no_exp = v
            .verify_bearer(&sign_admin(&json!({"scope": "chatup:admin"})))
            .unwrap_err();
        assert!(
            matches!(no_exp, AdminError::BadToken(ref m) if m.contains("exp")),
            "{no_exp:?}"
        );
        let expired = v
            .verify_bearer(&sign_admin(
                &json!({"exp": now() - 600, "scope": "chatup:admin"}),
            ))
            .unwrap_err();
        assert!(
            matches!(expired, AdminError::TokenExpired(_)),
            "{expired:?}"
        );
    }

    #[test]
    fn publisher_tokens_are_not_admin_tokens() {
        let v = admin_verifier(true);
        // Signed with the publishers' key, even with the admin scope.
        let mut claims = good_claims();
        claims["scope"] = json!("chatup:admin");
        let err = v.verify_bearer(&sign(&claims)).unwrap_err();
        assert!(
            matches!(err, AdminError::BadToken(ref m) if m.contains("signature")),
            "{err:?}"
        );
        let array = sign(&json!([{"channel": "r", "msg": "x"}]));
        assert!(matches!(
            v.verify_array_token(&array).unwrap_err(),
            AdminError::BadToken(_)
        ));
    }

    #[test]
    fn array_tokens_carry_the_request() {
        let v = admin_verifier(true);
        let request = json!([{"channel": "r", "msg": "hello"}]);
        let token = sign_admin(&request);
        assert_eq!(v.verify_array_token(&token).unwrap(), request);
        let object = sign_admin(&json!({"channel": "r"}));
        assert!(matches!(
            v.verify_array_token(&object).unwrap_err(),
            AdminError::BadRequest(ref m) if m.contains("array")
        ));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 3, 'A');
        assert!(v.verify_array_token(&tampered).is_err());
        assert!(matches!(
            v.verify_array_token("not-a-jwt").unwrap_err(),
            AdminError::BadToken(_)
        ));
        let off = admin_verifier(false);
        assert!(matches!(
            off.verify_array_token(&token).unwrap_err(),
            AdminError::MissingToken(_)
        ));
    }
}
