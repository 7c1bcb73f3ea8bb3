//! Bad JWTs are refused on POST /pub/<ch> and on the /pub WebSocket.

use chatup_tests::token::{
    alg_none, claims, hs256_with_public_key, now, sign, token, token_signed_by_other_key,
};
use chatup_tests::{Chatup, Options, Publisher, Subscriber};
use serde_json::{json, Value};
use std::time::Duration;

/// Each bad token, with the error code and WebSocket close code it must get.
fn bad_tokens() -> Vec<(&'static str, String, &'static str, u16)> {
    let expired = {
        let mut c = claims("eve");
        c["exp"] = json!(now() - 3600);
        sign(&c)
    };
    let not_yet = {
        let mut c = claims("eve");
        c["nbf"] = json!(now() + 3600);
        sign(&c)
    };
    let no_public = {
        let mut c = claims("eve");
        c.as_object_mut().expect("object").remove("_public");
        sign(&c)
    };
    let public_not_object = {
        let mut c = claims("eve");
        c["_public"] = json!("eve");
        sign(&c)
    };
    let public_array = {
        let mut c = claims("eve");
        c["_public"] = json!(["eve"]);
        sign(&c)
    };
    let no_exp = {
        let mut c = claims("eve");
        c.as_object_mut().expect("object").remove("exp");
        sign(&c)
    };
    let tampered = {
        // A valid token whose payload was swapped after signing.
        let good = token("eve");
        let mut parts: Vec<&str> = good.split('.').collect();
        let other = token("mallory");
        let other_payload = other.split('.').nth(1).expect("payload").to_owned();
        parts[1] = &other_payload;
        parts.join(".")
    };
    vec![
        (
            "signed with another RSA key",
            token_signed_by_other_key(&claims("eve")),
            "bad_token",
            4500,
        ),
        ("expired", expired, "token_expired", 4501),
        // close::TOKEN_EXPIRED: "The token has expired (or is not valid yet)".
        ("nbf in the future", not_yet, "token_expired", 4501),
        ("alg none", alg_none(&claims("eve")), "bad_token", 4500),
        (
            "HS256 with the RSA public key as secret",
            hs256_with_public_key(&claims("eve")),
            "bad_token",
            4500,
        ),
        ("no _public", no_public, "bad_token", 4500),
        ("_public is a string", public_not_object, "bad_token", 4500),
        ("_public is an array", public_array, "bad_token", 4500),
        ("no exp", no_exp, "bad_token", 4500),
        ("payload swapped", tampered, "bad_token", 4500),
        ("not a JWT", "not-a-token".to_owned(), "bad_token", 4500),
    ]
}

#[tokio::test]
async fn bad_tokens_are_refused_on_post() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/guarded").await;
    let mut failures = Vec::new();
    for (what, jwt, code, _) in bad_tokens() {
        let resp = env.post_text("guarded", &jwt, b"should not pass").await;
        let got_code = resp.error_code();
        if resp.status != 401 || got_code.as_deref() != Some(code) {
            failures.push(format!(
                "{what}: expected 401 {code}, got {} {}",
                resp.status,
                resp.text()
            ));
        } else if !resp
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
        {
            failures.push(format!("{what}: 401 without WWW-Authenticate: Bearer"));
        }
    }
    // No Authorization header at all.
    let resp = env
        .post("/pub/guarded", &[("Content-Type", "text/plain")], b"x")
        .await;
    if resp.status != 401 || resp.error_code().as_deref() != Some("bad_token") {
        failures.push(format!(
            "no Authorization: expected 401 bad_token, got {} {}",
            resp.status,
            resp.text()
        ));
    }
    // Not a Bearer scheme.
    let resp = env
        .post(
            "/pub/guarded",
            &[
                ("Authorization", "Basic YWxpY2U6c2VjcmV0"),
                ("Content-Type", "text/plain"),
            ],
            b"x",
        )
        .await;
    if resp.status != 401 {
        failures.push(format!(
            "Basic auth: expected 401, got {} {}",
            resp.status,
            resp.text()
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    sub.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_tokens_are_refused_on_the_publisher_websocket() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/guarded").await;
    let mut failures = Vec::new();
    for (what, jwt, code, close) in bad_tokens() {
        let (mut p, reply) = Publisher::connect(&env, &jwt).await;
        if reply["type"] != "error" || reply["code"] != code {
            failures.push(format!("{what}: expected error {code}, got {reply}"));
            continue;
        }
        let (got, _) = p.expect_close(Duration::from_secs(5)).await;
        if got != Some(close) {
            failures.push(format!("{what}: expected close {close}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    sub.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publisher_reauthenticates_with_a_token_frame() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/reauth").await;
    let (mut p, reply) = Publisher::connect(&env, &token("alice")).await;
    assert_eq!(reply["type"], "auth", "{reply}");
    assert_eq!(reply["user"], json!({"name": "alice"}));
    p.publish("reauth", "as alice").await;
    p.send_json(&json!({"token": token("bob")})).await;
    let reply: Value = p.recv().await;
    assert_eq!(reply["type"], "auth", "{reply}");
    assert_eq!(reply["user"], json!({"name": "bob"}));
    p.publish("reauth", "as bob").await;
    let msgs = sub.recv_n(2).await;
    assert_eq!(msgs[0]["user"]["name"], "alice");
    assert_eq!(msgs[1]["user"]["name"], "bob");
}

#[tokio::test]
async fn publisher_without_a_token_is_closed_with_4503() {
    let env = Chatup::start();
    // A plain WebSocket client on /pub that never sends the token.
    let mut ws = Subscriber::try_connect(&env, "/pub")
        .await
        .unwrap_or_else(|e| panic!("/pub upgrade: {e:?}"));
    let started = std::time::Instant::now();
    let (code, _) = ws.expect_close(Duration::from_secs(15)).await;
    assert_eq!(code, Some(4503), "no token within 10 s");
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "closed after {:?}, before the 10 s allowed",
        started.elapsed()
    );
}

#[tokio::test]
async fn expired_token_on_post_says_token_expired_and_valid_one_passes() {
    let env = Chatup::start();
    // Within the leeway (5 s): still accepted.
    let mut c = claims("lee");
    c["exp"] = json!(now() - 2);
    let resp = env.post_text("lee", &sign(&c), b"in leeway").await;
    assert_eq!(
        resp.status,
        200,
        "exp 2 s ago is within the 5 s leeway: {}",
        resp.text()
    );
    let body = resp.json();
    assert_eq!(body["ch"], "lee");
    assert_eq!(body["id"], 1);
    assert!(
        body["ep"]
            .as_u64()
            .is_some_and(|ep| (1..1 << 53).contains(&ep)),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_of_the_original_system_without_exp_publish_only_when_exp_is_not_required() {
    // The original system's tokens: `_public`, no `exp`.
    let original = sign(&json!({"_public": {"name": "zoe"}}));
    let strict = Chatup::start();
    let resp = strict.post_text("lobby", &original, b"hi").await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(resp.text().contains("exp"), "{}", resp.text());

    let lenient = Chatup::start_with(Options::default().sidecar_set("auth.require_exp=false"));
    let mut viewer = Subscriber::connect(&lenient, "/sub/lobby").await;
    let resp = lenient.post_text("lobby", &original, b"hi").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let msg = viewer.recv().await;
    assert_eq!(
        (&msg["msg"], &msg["user"]["name"]),
        (&"hi".into(), &"zoe".into())
    );
    assert!(
        lenient.sidecar_log().contains("NEVER"),
        "the start warns that such tokens never expire"
    );
    assert!(!strict.sidecar_log().contains("require_exp"));
}
