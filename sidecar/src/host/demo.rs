//! `POST /demo/token`: publisher tokens for whoever asks, so that the example page of
//! `scripts/run` can chat without a backend of its own. Demo only: anyone who can reach the
//! endpoint publishes under any name, so it exists only when `demo.private_key_file` is set
//! (chat-host role), and the sidecar says so loudly at startup.
//!
//! ```json
//! POST /demo/token   {"name":"alice"}
//! 200 {"token":"eyJ…","name":"alice","expiresAt":1763770000000}
//! ```
//!
//! With `demo.subscribe_key_file` (and a `{sub}` pattern in `private.channels`), every
//! demo user also gets an id ([`demo_user_id`]: the name, lower-cased, with what a channel
//! name cannot hold turned into `-`), put in the publisher token's `_public.id`, and a
//! subscribe token for that `sub` which opens the user's own channel, for the example
//! page's direct messages:
//!
//! ```json
//! 200 {"token":"eyJ…","name":"Alice","expiresAt":…,"id":"alice",
//!      "subscribeToken":"eyJ…","ownChannel":"user.alice"}
//! ```
//!
//! The token is what a site's backend would mint: `_public: {"name": <name>}`, `iat`, `exp`
//! (`demo.ttl_seconds` ahead; `expiresAt` is it in ms), `iss`/`aud` from `auth.issuer` and
//! `auth.audience` when set, no `_events`, and no `sub`, so that rate limits go by the name
//! and such users are banned by name (`names` in `POST /ban`). It is signed with the first of `auth.algorithms` by the token code of
//! [`crate::jwt::mint`]; at startup a test token must pass the sidecar's own verifier, so a key
//! that is not the private half of `auth.public_key_file` stops the start.
//!
//! The name is trimmed and must then be 1 to [`MAX_NAME_CHARS`] characters without control
//! characters. Errors are `{"error":{"code":..,"message":..}}`: 400 `bad_request` (malformed
//! JSON, no name, a name not allowed), 415 `unsupported_media_type` (a body that is not
//! JSON).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::info;

use chatup_wire::private::Policy;
use serde_json::json;

use crate::config::{AuthConfig, DemoConfig, PrivateConfig};
use crate::http::content_type::reads_as_json;
use crate::http::error::ApiError;
use crate::jwt::mint::{PublisherClaims, SigningKey, SigningKeyError};
use crate::jwt::{warn_boxed, Verifier};
use crate::private::SubscribeVerifier;

/// The config key naming the key file.
pub const KEY_SETTING: &str = "demo.private_key_file";

/// The config key naming the subscribe key file.
pub const SUBSCRIBE_KEY_SETTING: &str = "demo.subscribe_key_file";

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Largest request body read: a name (the route's body limit).
pub const MAX_BODY: usize = 4096;

/// Why demo tokens cannot be served; stops the start.
#[derive(Debug, thiserror::Error)]
pub enum DemoSetupError {
    #[error(transparent)]
    Key(#[from] SigningKeyError),
    #[error(
        "{KEY_SETTING} {path} signs tokens that auth.public_key_file {public} refuses \
         ({reason}); set {KEY_SETTING} to the private half of that key pair, or leave it \
         empty to turn demo tokens off"
    )]
    Mismatch {
        path: PathBuf,
        public: PathBuf,
        reason: String,
    },
    #[error("cannot sign a token with {KEY_SETTING} {path}: {reason}")]
    Sign { path: PathBuf, reason: String },
    #[error("{SUBSCRIBE_KEY_SETTING} {path} cannot sign the demo's subscribe tokens: {reason}")]
    Subscribe { path: PathBuf, reason: String },
}

/// Why a demo token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemoError {
    /// Malformed JSON, no name, or a name not allowed; the message says what is allowed.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Internal(String),
}

impl DemoError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DemoError> for ApiError {
    fn from(e: DemoError) -> Self {
        ApiError::new(e.status(), e.code(), e.to_string())
    }
}

impl IntoResponse for DemoError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Mints demo tokens.
pub struct DemoTokens {
    /// `demo.private_key_file`, with the first of `auth.algorithms`.
    key: SigningKey,
    /// `demo.subscribe_key_file`, with the first of `private.algorithms`, and the private
    /// channel policy whose `{sub}` pattern names a user's own channel.
    subscribe: Option<(SigningKey, Policy)>,
    /// `demo.ttl_seconds`.
    ttl: u64,
    /// `auth.issuer` and `auth.audience`, when set: the verifier requires them.
    issuer: Option<String>,
    audience: Option<String>,
}

/// A minted token, as `/demo/token` answers it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minted {
    pub token: String,
    /// The name as put in the token (trimmed).
    pub name: String,
    /// The token's `exp`, in ms since the Unix epoch.
    pub expires_at: u64,
    /// With subscribe tokens: the demo user's id (`_public.id`, the subscribe token's `sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// With subscribe tokens: one that opens the user's own channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_token: Option<String>,
    /// With subscribe tokens: the user's own channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_channel: Option<String>,
}

/// A demo user's id from its name: lower-cased ASCII letters and digits, `_` and `-` kept,
/// anything else `-`. Two names may share one (`Zoé` and `Zo-`): demo only.
pub fn demo_user_id(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

impl DemoTokens {
    /// Demo tokens as `[demo]` configures them, or `None` when `demo.private_key_file` is
    /// empty. A key that cannot be read, does not fit the algorithm, or signs tokens that
    /// `verifier` (of `auth`) refuses is an error.
    pub fn from_config(
        demo: &DemoConfig,
        auth: &AuthConfig,
        verifier: &Verifier,
        private: &PrivateConfig,
    ) -> Result<Option<Self>, DemoSetupError> {
        let path = &demo.private_key_file;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        // The configuration check makes sure there is one.
        let Some(&alg) = auth.algorithms.first() else {
            return Err(DemoSetupError::Sign {
                path: path.clone(),
                reason: "auth.algorithms is empty".into(),
            });
        };
        let key = SigningKey::read(KEY_SETTING, path, alg, "the first of auth.algorithms")?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let subscribe = Self::subscribe_key(demo, private)?;
        let tokens = Self {
            key,
            subscribe,
            ttl: demo.ttl_seconds,
            issuer: non_empty(&auth.issuer),
            audience: non_empty(&auth.audience),
        };
        let probe = tokens
            .mint("startup check", jsonwebtoken::get_current_timestamp())
            .map_err(|e| DemoSetupError::Sign {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        verifier
            .verify(&probe.token)
            .map_err(|e| DemoSetupError::Mismatch {
                path: path.clone(),
                public: auth.public_key_file.clone(),
                reason: e.to_string(),
            })?;
        Ok(Some(tokens))
    }

    /// The subscribe key of `demo.subscribe_key_file`, checked against `[private]`.
    fn subscribe_key(
        demo: &DemoConfig,
        private: &PrivateConfig,
    ) -> Result<Option<(SigningKey, Policy)>, DemoSetupError> {
        let path = &demo.subscribe_key_file;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let mismatch = |reason: String| DemoSetupError::Subscribe {
            path: path.clone(),
            reason,
        };
        let policy = private.policy().map_err(|e| mismatch(e.to_string()))?;
        let Some(channel) = policy.own_channel("startup-check") else {
            return Err(mismatch(
                "private.channels has no user's own channel (a \"user.{sub}\" pattern) for \
                 the demo's direct messages"
                    .into(),
            ));
        };
        let Some(&alg) = private.algorithms.first() else {
            return Err(mismatch("private.algorithms is empty".into()));
        };
        let key = SigningKey::read(
            SUBSCRIBE_KEY_SETTING,
            path,
            alg,
            "the first of private.algorithms",
        )?;
        let verifier =
            SubscribeVerifier::from_config(private).map_err(|e| mismatch(e.to_string()))?;
        let now = jsonwebtoken::get_current_timestamp();
        let probe = key
            .sign(&json!({"sub": "startup-check", "iat": now, "exp": now + 60}))
            .map_err(|e| mismatch(e.to_string()))?;
        let grant = verifier.verify(&probe).map_err(|e| {
            mismatch(format!(
                "private.public_key_file {} refuses its tokens ({e})",
                private.public_key_file.display()
            ))
        })?;
        if !grant.opens(&policy, &channel) {
            return Err(mismatch(format!("its token does not open {channel}")));
        }
        Ok(Some((key, policy)))
    }

    /// A token for `name` (already checked), issued at `now` (seconds since the Unix epoch).
    pub fn mint(&self, name: &str, now: u64) -> Result<Minted, DemoError> {
        let mut public = Map::new();
        public.insert("name".into(), Value::String(name.to_owned()));
        let id = self.subscribe.as_ref().map(|_| demo_user_id(name));
        if let Some(id) = &id {
            public.insert("id".into(), Value::String(id.clone()));
        }
        let claims = PublisherClaims {
            public,
            issued_at: now,
            ttl: self.ttl,
            issuer: self.issuer.as_deref(),
            audience: self.audience.as_deref(),
            ..PublisherClaims::default()
        };
        let token = self
            .key
            .sign(&claims.to_json())
            .map_err(|e| DemoError::Internal(format!("cannot sign the token: {e}")))?;
        let (subscribe_token, own_channel) = match (&self.subscribe, &id) {
            (Some((key, policy)), Some(id)) => {
                let subscribe = key
                    .sign(&json!({"sub": id, "iat": now, "exp": claims.expires_at(),
                                   "_public": {"name": name}}))
                    .map_err(|e| DemoError::Internal(format!("cannot sign the token: {e}")))?;
                (Some(subscribe), policy.own_channel(id))
            }
            _ => (None, None),
        };
        Ok(Minted {
            token,
            name: name.to_owned(),
            expires_at: claims.expires_at().saturating_mul(1000),
            id,
            subscribe_token,
            own_channel,
        })
    }
}

/// The name of a request body `{"name": ".."}`, trimmed and checked.
pub fn name_of(body: &[u8]) -> Result<String, DemoError> {
    let bad = |m: String| DemoError::BadRequest(m);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not JSON ({e}); send {{\"name\": \"<display name>\"}}"
        ))
    })?;
    let name = match value.get("name") {
        Some(Value::String(name)) => name.trim(),
        Some(_) => return Err(bad("\"name\" must be a string".into())),
        None => {
            return Err(bad(
                "missing \"name\": send a JSON object like {\"name\": \"alice\"}".into(),
            ))
        }
    };
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(bad(format!(
            "the name must be 1 to {MAX_NAME_CHARS} characters (spaces around it do not \
             count), not {chars}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(
            "the name must not contain control characters (line breaks, tabs, ...)".into(),
        ));
    }
    Ok(name.to_owned())
}

/// The startup warning that demo tokens are on.
pub fn warn_open_minting(path: &std::path::Path) {
    let texts = [
        format!("INSECURE: {KEY_SETTING} is set: POST /demo/token mints"),
        "publisher tokens for anyone who asks. ANYONE who can reach it can".to_owned(),
        "publish under ANY name. Fine for a demo, NEVER for production:".to_owned(),
        format!("leave {KEY_SETTING} empty (the default) there."),
    ];
    warn_boxed(&path.display().to_string(), &texts);
}

/// `POST /demo/token`.
pub async fn mint(
    State(tokens): State<Arc<DemoTokens>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Minted>, DemoError> {
    if !reads_as_json(&headers) {
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unreadable");
        return Err(DemoError::UnsupportedMediaType(format!(
            "send the body as application/json, like {{\"name\": \"alice\"}}, not {given}"
        )));
    }
    let bytes = body.map_err(|_| {
        DemoError::BadRequest(format!("the request body is larger than {MAX_BODY} bytes"))
    })?;
    let name = name_of(&bytes)?;
    let minted = tokens.mint(&name, jsonwebtoken::get_current_timestamp())?;
    info!(name = minted.name, "demo token minted");
    Ok(Json(minted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::now;

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../nginx-conf/example-keys");

    fn auth() -> AuthConfig {
        AuthConfig {
            public_key_file: format!("{KEYS}/jwt-public.pem").into(),
            ..AuthConfig::default()
        }
    }

    fn demo(key: &str) -> DemoConfig {
        DemoConfig {
            private_key_file: format!("{KEYS}/{key}").into(),
            ttl_seconds: 600,
            ..DemoConfig::default()
        }
    }

    #[test]
    fn tokens_carry_the_name_and_no_sub_and_verify() {
        let auth = AuthConfig {
            issuer: "https://site.example".into(),
            audience: "chat".into(),
            ..auth()
        };
        let verifier = Verifier::from_config(&auth).unwrap();
        let tokens = DemoTokens::from_config(
            &demo("jwt-private.pem"),
            &auth,
            &verifier,
            &PrivateConfig::default(),
        )
        .unwrap()
        .unwrap();
        let minted = tokens.mint("Ann B.", now()).unwrap();
        assert_eq!(minted.name, "Ann B.");
        assert_eq!(minted.expires_at, (now() + 600) * 1000);
        let id = verifier.verify(&minted.token).unwrap();
        assert_eq!(&*id.user, r#"{"name":"Ann B."}"#);
        assert_eq!(id.sub, None);
        assert!(!id.events);
        assert_eq!(id.moderation_id().as_deref(), Some("Ann B."));
        assert_eq!(id.public_name().as_deref(), Some("Ann B."));
    }

    #[test]
    fn with_a_subscribe_key_each_user_gets_an_id_and_a_token_for_their_own_channel() {
        let verifier = Verifier::from_config(&auth()).unwrap();
        let private = PrivateConfig {
            channels: vec!["user.{sub}".into()],
            public_key_file: format!("{KEYS}/subscribe-public.pem").into(),
            ..PrivateConfig::default()
        };
        let config = DemoConfig {
            subscribe_key_file: format!("{KEYS}/subscribe-private.pem").into(),
            ..demo("jwt-private.pem")
        };
        let tokens = DemoTokens::from_config(&config, &auth(), &verifier, &private)
            .unwrap()
            .unwrap();
        let minted = tokens.mint("Zoé B", now()).unwrap();
        assert_eq!(minted.id.as_deref(), Some("zo--b"));
        assert_eq!(minted.own_channel.as_deref(), Some("user.zo--b"));
        let id = verifier.verify(&minted.token).unwrap();
        assert_eq!(&*id.user, r#"{"id":"zo--b","name":"Zoé B"}"#);
        let channels = crate::test_support::subscribe_channels(&["user.{sub}"]);
        let grant = channels
            .check(
                minted.subscribe_token.as_deref().unwrap(),
                &["user.zo--b".to_owned()],
            )
            .unwrap();
        assert_eq!(grant.identity.sub.as_deref(), Some("zo--b"));
        assert!(channels
            .check(
                minted.subscribe_token.as_deref().unwrap(),
                &["user.ann".to_owned()]
            )
            .is_err());

        // A subscribe key that is not the pair of private.public_key_file, or no own
        // channel pattern: the start stops, saying why.
        let wrong = DemoConfig {
            subscribe_key_file: format!("{KEYS}/jwt-private.pem").into(),
            ..config.clone()
        };
        let err = DemoTokens::from_config(&wrong, &auth(), &verifier, &private)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("demo.subscribe_key_file") && err.contains("refuses"),
            "{err}"
        );
        let no_own = PrivateConfig {
            channels: vec!["members-*".into()],
            ..private
        };
        let err = DemoTokens::from_config(&config, &auth(), &verifier, &no_own)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("user.{sub}"), "{err}");
    }

    /// Why `demo` cannot start, with the example publisher key and no private channels.
    fn setup_error(demo: &DemoConfig) -> String {
        let verifier = Verifier::from_config(&auth()).unwrap();
        DemoTokens::from_config(demo, &auth(), &verifier, &PrivateConfig::default())
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn no_key_no_tokens_and_a_wrong_key_stops_the_start() {
        let verifier = Verifier::from_config(&auth()).unwrap();
        let off = DemoConfig::default();
        assert!(
            DemoTokens::from_config(&off, &auth(), &verifier, &PrivateConfig::default())
                .unwrap()
                .is_none()
        );
        // The admin key pair's private half: a valid key, but not the publishers' one.
        let err = setup_error(&demo("admin-private.pem"));
        assert!(
            err.contains("admin-private.pem") && err.contains("private half"),
            "{err}"
        );
        let err = setup_error(&demo("missing.pem"));
        assert!(
            err.contains("demo.private_key_file") && err.contains("missing.pem"),
            "{err}"
        );
        // A public key is not a private key.
        let err = setup_error(&demo("jwt-public.pem"));
        assert!(err.contains("not an RSA private key"), "{err}");
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(name_of(br#"{"name":"  alice "}"#).unwrap(), "alice");
        assert_eq!(
            name_of(&serde_json::to_vec(&serde_json::json!({"name": "é".repeat(32)})).unwrap())
                .unwrap()
                .chars()
                .count(),
            32
        );
        for (body, says) in [
            (&br#"{"name":""}"#[..], "1 to 32 characters"),
            (br#"{"name":"   "}"#, "1 to 32 characters"),
            (br#"{"name":"123456789012345678901234567890123"}"#, "not 33"),
            (br#"{"name":"a\nb"}"#, "control characters"),
            (br#"{"name":"a\u0007"}"#, "control characters"),
            (br#"{"name":7}"#, "must be a string"),
            (br#"{"nom":"a"}"#, "missing \"name\""),
            (br#"["a"]"#, "missing \"name\""),
            (b"{", "not JSON"),
            (b"", "not JSON"),
        ] {
            let err = name_of(body).unwrap_err();
            assert_eq!(err.code(), "bad_request");
            assert!(err.to_string().contains(says), "{body:?}: {err}");
        }
    }
}
