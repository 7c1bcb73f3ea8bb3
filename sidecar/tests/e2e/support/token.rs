//! Publisher tokens, signed with the example key by the workspace's test harness.

use chatup_tests::token::{now, sign};
use serde_json::{json, Value};

/// User `u1`, shown as `{"name": "ann", "color": "red"}`, for ten minutes.
pub fn good_claims() -> Value {
    json!({"exp": now() + 600, "sub": "u1", "_public": {"name": "ann", "color": "red"}})
}

pub fn token(events: bool) -> String {
    let mut c = good_claims();
    if events {
        c["_events"] = json!(true);
    }
    sign(&c)
}

pub fn expired_token() -> String {
    let mut c = good_claims();
    c["exp"] = json!(now() - 3600);
    sign(&c)
}

/// A token for user `sub` whose `_public` is `{"name": name}`.
pub fn user_token(sub: Option<&str>, name: &str, events: bool) -> String {
    let mut c = json!({"exp": now() + 600, "_public": {"name": name}});
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    if events {
        c["_events"] = json!(true);
    }
    sign(&c)
}
