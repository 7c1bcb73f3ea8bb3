//! Demo tokens, `POST /demo/token` through nginx: minted for a name, they publish under it
//! (with no `sub`, so a ban by name applies); bad names and bodies are refused; the route
//! exists only with `demo.private_key_file`, and a key that cannot be used stops the start.

use chatup_tests::token::{
    example_admin_private_key, example_private_key, example_public_key, now, payload,
};
use chatup_tests::{Chatup, HttpResponse, Options, Subscriber};
use serde_json::{json, Value};

use crate::sidecar_cli::{base_config, failing_start};

fn with_demo_key() -> Options {
    Options::default().sidecar_set(&format!(
        "demo.private_key_file={}",
        example_private_key().display()
    ))
}

async fn mint(env: &Chatup, content_type: &str, body: &[u8]) -> HttpResponse {
    env.post("/demo/token", &[("Content-Type", content_type)], body)
        .await
}

#[tokio::test]
async fn a_demo_token_publishes_under_its_name() {
    let env = Chatup::start_with(with_demo_key().sidecar_set("demo.ttl_seconds=120"));
    assert!(
        env.sidecar_log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("POST /demo/token mints")),
        "no loud warning about demo tokens:\n{}",
        env.sidecar_log()
    );
    let mut viewer = Subscriber::connect(&env, "/sub/demo").await;

    let resp = mint(&env, "application/json", br#"{"name":"  alice  "}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let minted = resp.json();
    assert_eq!(minted["name"], "alice", "{minted}");
    let token = minted["token"].as_str().expect("a token").to_owned();
    let claims = payload(&token);
    assert_eq!(claims["_public"], json!({"name": "alice"}), "{claims}");
    assert!(claims.get("sub").is_none(), "{claims}");
    assert!(claims.get("_events").is_none(), "{claims}");
    let exp = claims["exp"].as_i64().expect("exp");
    assert!((exp - now() - 120).abs() < 30, "ttl 120: {claims}");
    assert_eq!(minted["expiresAt"], json!(exp * 1000), "{minted}");

    let resp = env.post_text("demo", &token, b"hello from the demo").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let msg = viewer.recv().await;
    assert_eq!(msg["user"], json!({"name": "alice"}), "{msg}");
    assert_eq!(msg["msg"], "hello from the demo", "{msg}");

    // No sub: a ban by name (the `_public.name` the page shows) holds for demo tokens.
    let body = json!({"channel": "demo", "names": ["alice"]});
    let resp = env.admin("POST", "/ban", Some(&body)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let again = mint(&env, "application/json", br#"{"name":"alice"}"#).await;
    let again = again.json()["token"].as_str().expect("a token").to_owned();
    let resp = env.post_text("demo", &again, b"still here?").await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("banned"));
    // Another name is not banned; no Content-Type is read as JSON, as curl --data sends.
    let resp = env.post("/demo/token", &[], br#"{"name":"bob"}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let bob = resp.json()["token"].as_str().expect("a token").to_owned();
    let resp = env.post_text("demo", &bob, b"hi").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn bad_names_and_bodies_are_refused_with_what_is_allowed() {
    let env = Chatup::start_with(with_demo_key());
    let long = "x".repeat(33);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": ""}), "1 to 32 characters"),
        (json!({"name": "   "}), "1 to 32 characters"),
        (json!({"name": long}), "1 to 32 characters"),
        (json!({"name": "al\nice"}), "control characters"),
        (json!({"name": "al\u{7}ice"}), "control characters"),
        (json!({"name": 42}), "must be a string"),
        (json!({"nick": "alice"}), "missing \"name\""),
    ];
    for (body, says) in cases {
        let resp = mint(&env, "application/json", body.to_string().as_bytes()).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("bad_request"), "{body}");
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(message.contains(says), "{body}: {message}");
    }
    // 32 characters (not bytes) are fine.
    let name = "é".repeat(32);
    let resp = mint(
        &env,
        "application/json",
        json!({"name": name}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["name"], json!(name));

    let resp = mint(&env, "application/json", b"{\"name\":").await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("bad_request"));
    let resp = mint(&env, "application/xml", b"<name>alice</name>").await;
    assert_eq!(resp.status, 415, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("unsupported_media_type"));
    assert!(resp.text().contains("application/json"), "{}", resp.text());
}

#[tokio::test]
async fn without_a_demo_key_there_is_no_demo_token() {
    let env = Chatup::start();
    let resp = mint(&env, "application/json", br#"{"name":"alice"}"#).await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("not_found"));
    assert!(
        !env.sidecar_log().contains("/demo/token mints"),
        "{}",
        env.sidecar_log()
    );
}

#[test]
fn a_demo_key_that_cannot_be_used_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp folder");
    let base = base_config(dir.path());
    let set = |path: &std::path::Path| format!("demo.private_key_file={}", path.display());

    let missing = dir.path().join("no-such-demo-key.pem");
    let err = failing_start(&base, &["--set", &set(&missing)]);
    assert!(
        err.contains("demo.private_key_file") && err.contains("no-such-demo-key.pem"),
        "the unreadable key is not named:\n{err}"
    );
    // The public key, not its private half.
    let err = failing_start(&base, &["--set", &set(&example_public_key())]);
    assert!(
        err.contains("demo.private_key_file") && err.contains("not an RSA private key"),
        "a public key is not refused as such:\n{err}"
    );
    // A private key, but of another pair: its tokens would all be refused.
    let err = failing_start(&base, &["--set", &set(&example_admin_private_key())]);
    assert!(
        err.contains("auth.public_key_file") && err.contains("private half"),
        "a key of another pair is not refused as such:\n{err}"
    );
}
