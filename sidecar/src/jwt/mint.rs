//! `chatup-sidecar token`: mints a publisher token, an admin token (`--admin`), a subscribe
//! token for private channels (`--subscribe`) or a signed admin request body (`--payload`),
//! for tests, demos and scripts.
//!
//! Production tokens come from the site's own backend, which holds the private key; this
//! command signs the same claims so that anything can be tried end to end from a shell.
//! [`SigningKey`] and [`PublisherClaims`] are shared with the demo tokens of
//! [`crate::host::demo`].

use std::path::{Path, PathBuf};

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use crate::jwt::KeyFamily;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Private key in PEM form (RSA, EC or Ed25519), or the shared-secret file for HS*.
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
    /// Display name, put in `_public` as "name" (publisher tokens).
    #[arg(long, required_unless_present_any = ["admin", "payload", "subscribe"])]
    pub name: Option<String>,
    /// Mint an admin API token (`"scope": "chatup:admin"`) instead of a publisher token;
    /// sign it with the admin key.
    #[arg(long, conflicts_with_all = ["name", "public", "events", "payload"])]
    pub admin: bool,
    /// Mint a subscribe token, which opens private channels to a viewer: `--sub` (whose own
    /// channel it opens) and each `--channel`; sign it with the subscribe key
    /// (`private.public_key_file`'s pair).
    #[arg(long, requires = "sub", conflicts_with_all = ["admin", "payload", "events", "iss", "aud"])]
    pub subscribe: bool,
    /// A private channel the subscribe token opens, by name or `prefix*`; repeat for more.
    #[arg(long = "channel", value_name = "CHANNEL", requires = "subscribe")]
    pub channels: Vec<String>,
    /// Sign exactly this JSON as the payload, e.g. an array of admin requests to send as
    /// the body of POST /post or /ban (no expiry is added).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["name", "public", "events", "sub", "iss", "aud"])]
    pub payload: Option<String>,
    /// User id (`sub`).
    #[arg(long)]
    pub sub: Option<String>,
    /// Lifetime in seconds (`exp` = now + ttl).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub ttl: u64,
    /// More public fields, a JSON object merged into `_public` (its keys win over --name).
    #[arg(long, value_name = "JSON")]
    pub public: Option<String>,
    /// Allow the token to publish events (`_events: true`).
    #[arg(long)]
    pub events: bool,
    /// Signing algorithm; must match the key and the sidecar's auth.algorithms.
    #[arg(long, default_value = "RS256", value_parser = parse_algorithm)]
    pub alg: Algorithm,
    /// Issuer (`iss`), for sidecars configured with auth.issuer.
    #[arg(long)]
    pub iss: Option<String>,
    /// Audience (`aud`), for sidecars configured with auth.audience.
    #[arg(long)]
    pub aud: Option<String>,
}

/// Why a private key cannot sign. `setting` names where its path was given (`--key`,
/// `demo.private_key_file`), `alg_setting` where the algorithm was (`--alg`, ...).
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{setting} {path} is not an {family} private key in PEM form, as {alg:?} \
         ({alg_setting}) needs: {reason}"
    )]
    Key {
        setting: &'static str,
        path: PathBuf,
        family: KeyFamily,
        alg: Algorithm,
        alg_setting: &'static str,
        reason: String,
    },
    #[error("{setting} {path} holds a PEM key, but {alg:?} ({alg_setting}) needs a shared secret")]
    PemAsSecret {
        setting: &'static str,
        path: PathBuf,
        alg: Algorithm,
        alg_setting: &'static str,
    },
    #[error("{setting} {path} is empty, but {alg:?} ({alg_setting}) needs a shared secret")]
    Empty {
        setting: &'static str,
        path: PathBuf,
        alg: Algorithm,
        alg_setting: &'static str,
    },
}

/// A private key and the algorithm it signs with.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
}

impl SigningKey {
    /// Reads the key file `path` (given as `setting`) for `alg` (given as `alg_setting`).
    pub fn read(
        setting: &'static str,
        path: &Path,
        alg: Algorithm,
        alg_setting: &'static str,
    ) -> Result<Self, SigningKeyError> {
        let bytes = std::fs::read(path).map_err(|source| SigningKeyError::Read {
            setting,
            path: path.to_owned(),
            source,
        })?;
        let family = KeyFamily::of(alg);
        let bad = |e: jsonwebtoken::errors::Error| SigningKeyError::Key {
            setting,
            path: path.to_owned(),
            family,
            alg,
            alg_setting,
            reason: e.to_string(),
        };
        let key = match family {
            KeyFamily::Hmac => {
                // Same rule as the sidecar: trailing whitespace is not part of the secret.
                let secret = bytes.trim_ascii_end();
                if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
                    return Err(SigningKeyError::PemAsSecret {
                        setting,
                        path: path.to_owned(),
                        alg,
                        alg_setting,
                    });
                }
                if secret.is_empty() {
                    return Err(SigningKeyError::Empty {
                        setting,
                        path: path.to_owned(),
                        alg,
                        alg_setting,
                    });
                }
                EncodingKey::from_secret(secret)
            }
            KeyFamily::Rsa => EncodingKey::from_rsa_pem(&bytes).map_err(bad)?,
            KeyFamily::Ec => EncodingKey::from_ec_pem(&bytes).map_err(bad)?,
            KeyFamily::Ed => EncodingKey::from_ed_pem(&bytes).map_err(bad)?,
        };
        // The PEM readers take any key of the family (a public one too); only signing
        // shows that it is a private key, so sign once now rather than fail on first use.
        let key = Self { key, alg };
        key.sign(&json!({})).map_err(bad)?;
        Ok(key)
    }

    /// The JWT of `claims`, signed.
    pub fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key)
    }
}

/// What a publisher token says (see the README, "Publishing").
#[derive(Debug, Clone, Default)]
pub struct PublisherClaims<'a> {
    /// `_public`: copied into every message as `user`.
    pub public: Map<String, Value>,
    /// `sub`, the user's id; without it bans go by `_public.name`.
    pub sub: Option<&'a str>,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Seconds from `iat` to `exp`.
    pub ttl: u64,
    /// `_events: true` lets the token publish events.
    pub events: bool,
    /// `iss` and `aud`, for sidecars that check them.
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

impl PublisherClaims<'_> {
    /// `exp`, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(self.ttl)
    }

    /// The token's payload.
    pub fn to_json(&self) -> Value {
        let mut claims = json!({
            "iat": self.issued_at,
            "exp": self.expires_at(),
            "_public": self.public,
        });
        if let Some(sub) = self.sub {
            claims["sub"] = json!(sub);
        }
        if self.events {
            claims["_events"] = json!(true);
        }
        if let Some(iss) = self.issuer {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = self.audience {
            claims["aud"] = json!(aud);
        }
        claims
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Key(#[from] SigningKeyError),
    #[error("--public must be a JSON object like '{{\"color\":\"red\"}}': {0}")]
    Public(String),
    #[error("--payload must be JSON, e.g. '[{{\"channel\":\"room\",\"msg\":\"hi\"}}]': {0}")]
    Payload(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|_| {
        format!(
            "unknown algorithm {s:?}; one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA"
        )
    })
}

/// Builds and signs the token; `now` is in seconds since the Unix epoch.
pub fn make_token(args: &TokenArgs, now: u64) -> Result<String, TokenError> {
    let key = SigningKey::read("--key", &args.key, args.alg, "--alg")?;
    let sign = |claims: &Value| {
        key.sign(claims)
            .map_err(|e| TokenError::Sign(e.to_string()))
    };

    if let Some(payload) = &args.payload {
        let payload: Value =
            serde_json::from_str(payload).map_err(|e| TokenError::Payload(e.to_string()))?;
        return sign(&payload);
    }
    if args.admin {
        let mut claims = json!({
            "iat": now,
            "exp": now.saturating_add(args.ttl),
            "scope": super::ADMIN_SCOPE,
        });
        if let Some(sub) = &args.sub {
            claims["sub"] = json!(sub);
        }
        return sign(&claims);
    }

    let mut public = Map::new();
    let public_of = |public: &mut Map<String, Value>| -> Result<(), TokenError> {
        if let Some(name) = &args.name {
            public.insert("name".into(), Value::String(name.clone()));
        }
        if let Some(extra) = &args.public {
            match serde_json::from_str::<Value>(extra) {
                Ok(Value::Object(extra)) => public.extend(extra),
                Ok(other) => return Err(TokenError::Public(format!("got {other}"))),
                Err(e) => return Err(TokenError::Public(e.to_string())),
            }
        }
        Ok(())
    };
    if args.subscribe {
        public_of(&mut public)?;
        let mut claims = json!({
            "sub": args.sub,
            "iat": now,
            "exp": now.saturating_add(args.ttl),
            "channels": args.channels,
        });
        if !public.is_empty() {
            claims["_public"] = Value::Object(public);
        }
        return sign(&claims);
    }
    public_of(&mut public)?;
    let claims = PublisherClaims {
        public,
        sub: args.sub.as_deref(),
        issued_at: now,
        ttl: args.ttl,
        events: args.events,
        issuer: args.iss.as_deref(),
        audience: args.aud.as_deref(),
    };
    sign(&claims.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{now, verifier};

    fn args() -> TokenArgs {
        TokenArgs {
            key: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../nginx-conf/example-keys/jwt-private.pem"
            )),
            name: Some("ann".into()),
            admin: false,
            subscribe: false,
            channels: Vec::new(),
            payload: None,
            sub: None,
            ttl: 3600,
            public: None,
            events: false,
            alg: Algorithm::RS256,
            iss: None,
            aud: None,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let token = make_token(&args(), now()).unwrap();
        let id = verifier().verify(&token).unwrap();
        assert_eq!(&*id.user, r#"{"name":"ann"}"#);
        assert_eq!(id.sub, None);
        assert!(!id.events);

        let a = TokenArgs {
            sub: Some("u7".into()),
            public: Some(r#"{"color":"red","name":"Ann B."}"#.into()),
            events: true,
            ..args()
        };
        let id = verifier().verify(&make_token(&a, now()).unwrap()).unwrap();
        assert_eq!(&*id.user, r#"{"color":"red","name":"Ann B."}"#);
        assert_eq!(id.sub.as_deref(), Some("u7"));
        assert!(id.events);
        assert_eq!(id.expires_at, now() + 3600);
    }

    #[test]
    fn admin_tokens_and_payloads_verify_with_the_admin_key() {
        let admin_key = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../nginx-conf/example-keys/admin-private.pem"
        ));
        let verifier = crate::test_support::admin_verifier(true);
        let a = TokenArgs {
            key: admin_key.clone(),
            name: None,
            admin: true,
            ..args()
        };
        verifier
            .verify_bearer(&make_token(&a, now()).unwrap())
            .unwrap();
        let a = TokenArgs {
            key: admin_key,
            name: None,
            payload: Some(r#"[{"channel":"r","msg":"hi"}]"#.into()),
            ..args()
        };
        let body = verifier
            .verify_array_token(&make_token(&a, now()).unwrap())
            .unwrap();
        assert_eq!(body, serde_json::json!([{"channel": "r", "msg": "hi"}]));
        let a = TokenArgs {
            payload: Some("[1,".into()),
            ..a
        };
        assert!(matches!(make_token(&a, now()), Err(TokenError::Payload(_))));
        // A publisher token is not an admin token.
        assert!(verifier
            .verify_bearer(&make_token(&args(), now()).unwrap())
            .is_err());
    }

    #[test]
    fn subscribe_tokens_open_their_channels_and_the_own_channel() {
        let a = TokenArgs {
            key: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../nginx-conf/example-keys/subscribe-private.pem"
            )),
            name: None,
            subscribe: true,
            sub: Some("alice".into()),
            channels: vec!["members-*".into()],
            ..args()
        };
        let token = make_token(&a, now()).unwrap();
        let private = crate::test_support::subscribe_channels(&["user.{sub}", "members-*"]);
        let wanted = ["user.alice".to_owned(), "members-club".to_owned()];
        let grant = private.check(&token, &wanted).unwrap();
        assert_eq!(grant.identity.sub.as_deref(), Some("alice"));
        assert_eq!(&*grant.identity.user, "{}");
        assert!(private.check(&token, &["user.bob".to_owned()]).is_err());
        // Signed with the publishers' key, it opens nothing.
        let wrong = make_token(
            &TokenArgs {
                key: args().key,
                ..a
            },
            now(),
        )
        .unwrap();
        assert_eq!(private.check(&wrong, &wanted).unwrap_err().status(), 401);
    }

    #[test]
    fn ttl_is_honoured() {
        let token = make_token(&args(), now() - 7200).unwrap();
        assert_eq!(
            verifier().verify(&token).unwrap_err().code(),
            "token_expired"
        );
    }

    #[test]
    fn bad_inputs_are_explained() {
        let a = TokenArgs {
            public: Some("[1]".into()),
            ..args()
        };
        assert!(make_token(&a, now())
            .unwrap_err()
            .to_string()
            .contains("--public"));
        let a = TokenArgs {
            key: "/nonexistent.pem".into(),
            ..args()
        };
        assert!(make_token(&a, now())
            .unwrap_err()
            .to_string()
            .contains("/nonexistent.pem"));
        let a = TokenArgs {
            alg: Algorithm::ES256,
            ..args()
        };
        let msg = make_token(&a, now()).unwrap_err().to_string();
        assert!(msg.contains("EC") && msg.contains("ES256"), "{msg}");
        let a = TokenArgs {
            alg: Algorithm::HS256,
            ..args()
        };
        assert!(matches!(
            make_token(&a, now()),
            Err(TokenError::Key(SigningKeyError::PemAsSecret { .. }))
        ));
        let empty = tempfile::NamedTempFile::new().unwrap();
        let a = TokenArgs {
            key: empty.path().to_owned(),
            alg: Algorithm::HS256,
            ..args()
        };
        let msg = make_token(&a, now()).unwrap_err().to_string();
        assert!(msg.contains("is empty") && msg.contains("--key"), "{msg}");
        assert!(parse_algorithm("none").is_err());
    }
}
