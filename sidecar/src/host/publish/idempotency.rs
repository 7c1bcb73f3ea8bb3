//! Idempotency keys: a publisher names a publish (`"key"` in a `/pub` frame, the
//! `Idempotency-Key` header of `POST /pub/<ch>`) so that retrying it after an answer that
//! left the outcome unknown (`unavailable`, a timeout, a dropped connection) cannot publish
//! it twice. A retry with the same key, by the same user, in the same channel, within
//! `limits.idempotency_window_seconds` of the publish, gets the first message's `id` and
//! `ep` with `"duplicate": true`, and publishes nothing (see [`crate::broker::Once`]).

use base64::Engine as _;
use ring::digest;

use super::{ErrorCode, PublishError};
use crate::jwt::Identity;

/// Longest idempotency key, in bytes (a UUID is 36).
pub const MAX_KEY_LEN: usize = 64;

/// Checks a publisher's key: 1 to [`MAX_KEY_LEN`] of `A-Z a-z 0-9 _ . : -`.
pub fn check_key(key: &str) -> Result<(), PublishError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(allowed) {
        return Err(PublishError::new(
            ErrorCode::BadIdempotencyKey,
            format!(
                "an idempotency key is 1 to {MAX_KEY_LEN} characters of A-Z a-z 0-9 _ . : - \
                 (a UUID fits)"
            ),
        ));
    }
    Ok(())
}

/// The name the broker keeps `key` under: the key scoped to its user, so users cannot
/// collide or probe each other's keys. The user is the token's `sub`, or its `_public`
/// text when it has none. A digest keeps the name short and safe in a Redis key whatever
/// the user's id holds.
pub fn scoped(identity: &Identity, key: &str) -> String {
    let user = identity
        .sub
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(&identity.user);
    let mut context = digest::Context::new(&digest::SHA256);
    // The length first, so that no (user, key) pair reads as another.
    context.update(&(user.len() as u64).to_be_bytes());
    context.update(user.as_bytes());
    context.update(key.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn who(sub: Option<&str>, user: &str) -> Identity {
        Identity {
            sub: sub.map(str::to_owned),
            user: Arc::from(user),
            events: false,
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn keys_are_checked() {
        for good in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "order:42.retry_1",
            &"k".repeat(MAX_KEY_LEN),
        ] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "{x}",
            "a\n",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            let e = check_key(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadIdempotencyKey, "{bad:?}");
            assert!(e.message.contains("64"), "{}", e.message);
        }
    }

    #[test]
    fn scoped_keys_depend_on_user_and_key() {
        let alice = who(Some("u1"), r#"{"name":"alice"}"#);
        let same_sub = who(Some("u1"), r#"{"name":"alice (new name)"}"#);
        let bob = who(Some("u2"), r#"{"name":"alice"}"#);
        let anonymous = who(None, r#"{"name":"alice"}"#);
        let k = scoped(&alice, "k");
        assert_eq!(k, scoped(&same_sub, "k"));
        assert_ne!(k, scoped(&alice, "k2"));
        assert_ne!(k, scoped(&bob, "k"));
        assert_ne!(k, scoped(&anonymous, "k"));
        // The length prefix keeps ("u1", "2k") and ("u12", "k") apart.
        assert_ne!(
            scoped(&who(Some("u1"), "{}"), "2k"),
            scoped(&who(Some("u12"), "{}"), "k")
        );
        assert!(
            k.len() <= 43
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
