//! The admin API in process: off without its key, posting and reading back, and refusing
//! the publishers' key as its own.

use chatup_sidecar::config::Config;
use chatup_sidecar::host::publish::WsSettings;
use chatup_sidecar::server::Sidecar;
use chatup_tests::token::now;
use serde_json::{json, Value};

use crate::support::*;

fn admin_bearer() -> String {
    let claims = json!({"exp": now() + 600, "scope": "chatup:admin"});
    format!("Bearer {}", chatup_tests::token::sign_admin(&claims))
}

#[tokio::test]
async fn the_admin_api_is_off_without_its_key() {
    let s = start().await;
    let bearer = admin_bearer();
    let calls: [(&str, &str, &[u8]); 4] = [
        ("POST", "/post", br#"{"channel":"a","msg":"x"}"#),
        ("GET", "/messages/a", b""),
        ("GET", "/stats/a", b""),
        ("GET", "/stats", b""),
    ];
    for (method, path, body) in calls {
        let r = http(
            s.addr,
            method,
            path,
            &[("Authorization", bearer.as_str())],
            body,
        )
        .await;
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body);
        let error = &r.json()["error"];
        assert_eq!(error["code"], "admin_disabled", "{method} {path}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin.public_key_file")),
            "{error}"
        );
    }
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").await.status, 200);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_posts_and_reads_back_in_process() {
    let admin_key = format!("admin.public_key_file={}", example_key("admin-public.pem"));
    let s = start_configured(WsSettings::default(), &[&admin_key]).await;
    let bearer = admin_bearer();
    let auth = [("Authorization", bearer.as_str())];
    let r = http(
        s.addr,
        "POST",
        "/post",
        &auth,
        br#"[{"channel":"a","msg":"one"},{"channels":["a","b"],"ev":"poll","data":{"q":1},"user":{"name":"op"}}]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let published = r.json()["published"].clone();
    let placed: Vec<(String, u64)> = published
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["ch"].as_str().unwrap().to_owned(),
                p["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(placed, [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]);
    let r = http(s.addr, "GET", "/messages/a?limit=1", &auth, b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The stored bytes, as subscribers get them: no user field without "user".
    let raw = &r.body;
    assert!(
        raw.contains(r#","user":{"name":"op"},"ev":"poll","data":{"q":1}}"#),
        "{raw}"
    );
    let page = r.json();
    assert_eq!(page["next"], 2);
    assert_eq!(page["epoch"], published[0]["ep"]);
    let r = http(s.addr, "GET", "/messages/a?before=2", &auth, b"").await;
    let page = r.json();
    assert_eq!(page["next"], Value::Null);
    let first = page["messages"][0].clone();
    assert_eq!(first["msg"], "one");
    assert!(first.get("user").is_none(), "{first}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_key_must_not_be_the_publishers_key() {
    let dir = tempfile::tempdir().unwrap();
    let sets = vec![
        format!("relay.socket={}", dir.path().join("relay.sock").display()),
        "http.listen=127.0.0.1:0".to_string(),
        format!("auth.public_key_file={}", example_key("jwt-public.pem")),
        format!("admin.public_key_file={}", example_key("jwt-public.pem")),
    ];
    let config = Config::load(None, Vec::new(), &sets).unwrap().config;
    let Err(e) = Sidecar::start(&config, WsSettings::default()).await else {
        panic!("the sidecar started with the publishers' key as admin key");
    };
    let message = e.to_string();
    assert!(
        message.contains("admin.public_key_file") && message.contains("same key"),
        "{message}"
    );
}
