//! Channel names are checked on subscribe (400 with the reason) and on publish.

use chatup_tests::token::token;
use chatup_tests::{Chatup, Options, Publisher, RawWs};
use chatup_wire::channel::validate;
use serde_json::json;

async fn refused(env: &Chatup, path: &str) -> chatup_tests::HttpResponse {
    let key = chatup_tests::raw::random_key();
    match RawWs::handshake(
        env.nginx_addr(),
        &chatup_tests::raw::upgrade_request(path, &key),
        None,
    )
    .await
    {
        Ok(_) => panic!("{path}: the upgrade was accepted"),
        Err(Ok(resp)) => resp,
        Err(Err(e)) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn bad_channel_names_on_subscribe_get_400_with_the_reason() {
    let env = Chatup::start();
    let long = "a".repeat(65);
    let cases: Vec<(String, &[u8])> = vec![
        ("/sub/a:b".into(), b"a:b"),
        ("/sub/a,b".into(), b"a,b"),
        ("/sub/ok/a$b".into(), b"a$b"),
        (format!("/sub/{long}"), long.as_bytes()),
    ];
    let mut failures = Vec::new();
    for (path, name) in &cases {
        let reason = validate(name).expect_err("a bad name").to_string();
        let resp = refused(&env, path).await;
        if resp.status != 400 || !resp.text().contains(&reason) {
            failures.push(format!(
                "{path}: expected 400 with {reason:?}, got {} {:?}",
                resp.status,
                resp.text()
            ));
        }
        if resp.status == 400
            && !resp
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/plain"))
        {
            failures.push(format!(
                "{path}: 400 body should be text/plain, got {:?}",
                resp.header("content-type")
            ));
        }
    }
    // A non-ASCII name (percent-encoded in the URL).
    let resp = refused(&env, "/sub/r%C3%A9union").await;
    if resp.status != 400 || !resp.text().contains("channel name") {
        failures.push(format!(
            "/sub/r%C3%A9union: expected 400 naming the channel problem, got {} {:?}",
            resp.status,
            resp.text()
        ));
    }
    // No channel at all.
    let resp = refused(&env, "/sub/").await;
    if resp.status != 400 || resp.text().is_empty() {
        failures.push(format!(
            "/sub/: expected 400 saying why, got {} {:?}",
            resp.status,
            resp.text()
        ));
    }
    // The same channel twice.
    let resp = refused(&env, "/sub/twice/twice").await;
    if resp.status != 400 {
        failures.push(format!(
            "/sub/twice/twice: expected 400, got {}",
            resp.status
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The longest valid name works.
    let ok = "b".repeat(64);
    RawWs::connect(env.nginx_addr(), &format!("/sub/{ok}")).await;
}

#[tokio::test]
async fn max_channels_is_enforced() {
    let env = Chatup::start();
    let names: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    let resp = refused(&env, &format!("/sub/{}", names.join("/"))).await;
    assert_eq!(
        resp.status,
        400,
        "17 channels with the default limit of 16: {}",
        resp.text()
    );
    RawWs::connect(env.nginx_addr(), &format!("/sub/{}", names[..16].join("/"))).await;

    let env = Chatup::start_with(Options::default().sub_location("chatup_max_channels 2;"));
    let resp = refused(&env, "/sub/a/b/c").await;
    assert_eq!(
        resp.status,
        400,
        "3 channels with a limit of 2: {}",
        resp.text()
    );
    RawWs::connect(env.nginx_addr(), "/sub/a/b").await;
}

#[tokio::test]
async fn bad_channel_names_on_publish_are_refused() {
    let env = Chatup::start();
    let alice = token("alice");
    let mut failures = Vec::new();
    for ch in ["a:b", "a%20b", &"a".repeat(65), "a%2Cb"] {
        let resp = env.post_text(ch, &alice, b"hi").await;
        if resp.status != 400 || resp.error_code().as_deref() != Some("bad_channel") {
            failures.push(format!(
                "POST /pub/{ch}: expected 400 bad_channel, got {} {}",
                resp.status,
                resp.text()
            ));
        }
    }
    let mut p = Publisher::connect_ok(&env, &alice).await;
    for ch in ["a:b", "", &"a".repeat(65), "é"] {
        let reply = p.request(json!({"ch": ch, "msg": "hi"})).await;
        if reply["type"] != "error" || reply["code"] != "bad_channel" {
            failures.push(format!("/pub ch {ch:?}: expected bad_channel, got {reply}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
