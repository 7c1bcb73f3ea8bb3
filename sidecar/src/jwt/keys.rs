//! The keys tokens are checked with: their family (the algorithms a key allows), loading
//! one from a file, and the warnings about keys that must not go unnoticed.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

/// The public key shipped in `nginx-conf/example-keys/`, whose private half is public
/// knowledge. Running with it is allowed (examples, tests) but never quietly.
pub const EXAMPLE_PUBLIC_KEY: &str =
    include_str!("../../../nginx-conf/example-keys/jwt-public.pem");

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl KeyFamily {
    pub fn of(alg: Algorithm) -> Self {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Self::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Self::Rsa,
            ES256 | ES384 => Self::Ec,
            EdDSA => Self::Ed,
        }
    }
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac => "HMAC",
            Self::Rsa => "RSA",
            Self::Ec => "EC",
            Self::Ed => "Ed25519",
        })
    }
}

/// Why the configured key cannot be used. Reported at startup. `setting` names the config
/// key (`auth.public_key_file` or `admin.public_key_file`).
#[derive(Debug, thiserror::Error)]
pub enum KeySetupError {
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{setting} {path} is not an {family} public key in PEM form ({reason}); \
         the configured algorithms {algorithms} need one"
    )]
    NotAKey {
        setting: &'static str,
        path: PathBuf,
        family: KeyFamily,
        algorithms: String,
        reason: String,
    },
    #[error(
        "the configured algorithms {algorithms} use a shared secret, but {setting} {path} \
         holds a PEM key; using a public key as an HMAC secret would let anyone forge tokens"
    )]
    PemAsSecret {
        setting: &'static str,
        path: PathBuf,
        algorithms: String,
    },
    #[error("{setting} {path} is empty")]
    Empty {
        setting: &'static str,
        path: PathBuf,
    },
}

/// A verification key loaded from a file.
pub struct LoadedKey {
    pub key: DecodingKey,
    pub family: KeyFamily,
}

impl LoadedKey {
    /// Reads the key file named by the config key `setting` for `algorithms` (non-empty, of
    /// one family: checked by the configuration).
    pub fn read(
        setting: &'static str,
        path: &Path,
        algorithms: &[Algorithm],
    ) -> Result<(Self, Vec<u8>), KeySetupError> {
        let bytes = std::fs::read(path).map_err(|source| KeySetupError::Read {
            setting,
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::from_bytes(setting, path, &bytes, algorithms)?, bytes))
    }

    pub fn from_bytes(
        setting: &'static str,
        path: &Path,
        bytes: &[u8],
        algorithms: &[Algorithm],
    ) -> Result<Self, KeySetupError> {
        let names = format!("{algorithms:?}");
        let Some(first) = algorithms.first() else {
            return Err(KeySetupError::NotAKey {
                setting,
                path: path.to_owned(),
                family: KeyFamily::Rsa,
                algorithms: names,
                reason: "no algorithm is configured".into(),
            });
        };
        let family = KeyFamily::of(*first);
        let not_a_key = |e: jsonwebtoken::errors::Error| KeySetupError::NotAKey {
            setting,
            path: path.to_owned(),
            family,
            algorithms: names.clone(),
            reason: e.to_string(),
        };
        let key = match family {
            KeyFamily::Hmac => {
                let secret = bytes.trim_ascii_end();
                if secret.is_empty() {
                    return Err(KeySetupError::Empty {
                        setting,
                        path: path.to_owned(),
                    });
                }
                if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
                    return Err(KeySetupError::PemAsSecret {
                        setting,
                        path: path.to_owned(),
                        algorithms: names,
                    });
                }
                if secret.len() < 32 {
                    tracing::warn!(
                        setting,
                        path = %path.display(),
                        bytes = secret.len(),
                        "the HMAC secret is shorter than 32 bytes; use a long random secret"
                    );
                }
                DecodingKey::from_secret(secret)
            }
            KeyFamily::Rsa => DecodingKey::from_rsa_pem(bytes).map_err(not_a_key)?,
            KeyFamily::Ec => DecodingKey::from_ec_pem(bytes).map_err(not_a_key)?,
            KeyFamily::Ed => DecodingKey::from_ed_pem(bytes).map_err(not_a_key)?,
        };
        Ok(Self { key, family })
    }
}

/// Whether two PEM texts hold the same data, whatever their line breaks.
pub(crate) fn same_pem(a: &[u8], b: &str) -> bool {
    fn body(pem: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(pem);
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.bytes())
            .filter(|b| !b.is_ascii_whitespace())
            .collect()
    }
    let a = body(a);
    !a.is_empty() && a == body(b.as_bytes())
}

/// Logs, at WARN and impossible to miss, that tokens without `exp` are accepted.
pub fn warn_no_exp() {
    let texts = [
        "auth.require_exp = false: tokens WITHOUT \"exp\" are accepted and NEVER".to_owned(),
        "expire. A leaked token publishes until the key is changed. Meant for a".to_owned(),
        "migration from tokens without expiry; give your tokens an exp and".to_owned(),
        "remove the setting.".to_owned(),
    ];
    warn_boxed("-", &texts);
}

/// Logs, at WARN and impossible to miss, that an example key is in use; `setting` is the
/// config key naming it, `power` what its private half lets anyone do.
pub fn warn_example_key(setting: &str, path: &Path, power: &str) {
    let path = path.display().to_string();
    let texts = [
        format!("INSECURE: {setting} is an EXAMPLE key from chatup's sources."),
        "Its private key is published: ANYONE can mint tokens this sidecar".to_owned(),
        format!("accepts and {power}. Fine for a demo, NEVER for production."),
        "Make your own pair (see nginx-conf/example-keys/README.md) and point".to_owned(),
        format!("{setting} at the new public key."),
    ];
    warn_boxed(&path, &texts);
}

/// Logs `texts` as WARN lines framed by asterisks, each with `key_file`: a warning about a
/// key that must not go unnoticed in a startup log.
pub fn warn_boxed(key_file: &str, texts: &[String]) {
    let width = texts.iter().map(|t| t.chars().count()).max().unwrap_or(0);
    let rule = "*".repeat(width + 6);
    tracing::warn!(key_file = %key_file, "{rule}");
    for text in texts {
        let pad = " ".repeat(width - text.chars().count());
        tracing::warn!(key_file = %key_file, "*  {text}{pad}  *");
    }
    tracing::warn!(key_file = %key_file, "{rule}");
}
