//! Message limits and body formats, on POST and on the /pub WebSocket.

use chatup_tests::token::{events_token, token};
use chatup_tests::{Chatup, Publisher, Subscriber};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn post_limits() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/lim").await;
    let alice = token("alice");
    let auth = format!("Bearer {alice}");
    let mut failures = Vec::new();
    let mut check =
        |what: &str, resp: chatup_tests::HttpResponse, status: u16, code: Option<&str>| {
            if resp.status != status || (code.is_some() && resp.error_code().as_deref() != code) {
                failures.push(format!(
                    "{what}: expected {status} {code:?}, got {} {}",
                    resp.status,
                    resp.text()
                ));
            }
        };

    check(
        "empty",
        env.post_text("lim", &alice, b"").await,
        400,
        Some("empty"),
    );
    check(
        "1001 chars",
        env.post_text("lim", &alice, "x".repeat(1001).as_bytes())
            .await,
        413,
        Some("too_long"),
    );
    check(
        "invalid UTF-8",
        env.post_text("lim", &alice, b"caf\xe9 \xff").await,
        400,
        Some("invalid_utf8"),
    );
    check(
        "event without _events",
        env.post_json("lim", &alice, &json!({"ev": "typing"})).await,
        403,
        Some("events_not_allowed"),
    );
    check(
        "JSON that is not an object",
        env.post_json("lim", &alice, &json!(["hi"])).await,
        400,
        Some("bad_request"),
    );
    check(
        "broken JSON",
        env.post(
            "/pub/lim",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            b"{\"msg\":",
        )
        .await,
        400,
        Some("bad_request"),
    );
    check(
        "JSON without msg or ev",
        env.post_json("lim", &alice, &json!({"text": "hi"})).await,
        400,
        Some("bad_request"),
    );
    check(
        "JSON msg too long",
        env.post_json("lim", &alice, &json!({"msg": "y".repeat(1001)}))
            .await,
        413,
        Some("too_long"),
    );
    check(
        "JSON msg empty",
        env.post_json("lim", &alice, &json!({"msg": ""})).await,
        400,
        Some("empty"),
    );
    check(
        "unsupported content type",
        env.post(
            "/pub/lim",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/xml"),
            ],
            b"<msg>hi</msg>",
        )
        .await,
        415,
        None,
    );
    check(
        "event data too big",
        env.post_json(
            "lim",
            &events_token("ev"),
            &json!({"ev": "big", "data": {"blob": "z".repeat(5000)}}),
        )
        .await,
        413,
        Some("too_long"),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    sub.expect_no_message(Duration::from_millis(300)).await;

    // The limit counts characters, not bytes: 1000 two-byte characters pass.
    let text = "é".repeat(1000);
    let resp = env.post_text("lim", &alice, text.as_bytes()).await;
    assert_eq!(resp.status, 200, "1000 characters: {}", resp.text());
    let resp = env
        .post_json("lim", &alice, &json!({"msg": "json body"}))
        .await;
    assert_eq!(resp.status, 200, "JSON msg: {}", resp.text());
    let msgs = sub.recv_n(2).await;
    assert_eq!(msgs[0]["msg"], text.as_str());
    assert_eq!(msgs[1]["msg"], "json body");
    assert_eq!(msgs[1]["id"], 2, "refused messages take no id");
}

#[tokio::test]
async fn websocket_publisher_limits() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/wlim").await;
    let mut p = Publisher::connect_ok(&env, &token("alice")).await;
    let mut failures = Vec::new();
    let cases = [
        (
            "empty",
            json!({"ref": "a", "ch": "wlim", "msg": ""}),
            "empty",
        ),
        (
            "too long",
            json!({"ref": 2, "ch": "wlim", "msg": "x".repeat(1001)}),
            "too_long",
        ),
        ("no channel", json!({"ref": 3, "msg": "hi"}), "bad_request"),
        (
            "no msg nor ev",
            json!({"ref": 4, "ch": "wlim"}),
            "bad_request",
        ),
        (
            "bad channel",
            json!({"ref": 5, "ch": "a b", "msg": "hi"}),
            "bad_channel",
        ),
        (
            "event without _events",
            json!({"ref": 6, "ch": "wlim", "ev": "typing"}),
            "events_not_allowed",
        ),
    ];
    for (what, frame, code) in cases {
        let reply = p.request(frame.clone()).await;
        if reply["type"] != "error" || reply["code"] != code || reply["ref"] != frame["ref"] {
            failures.push(format!(
                "{what}: expected error {code} with ref {}, got {reply}",
                frame["ref"]
            ));
        }
    }
    p.send_text("not json").await;
    let reply = p.recv().await;
    if reply["type"] != "error" || reply["code"] != "bad_request" {
        failures.push(format!("not JSON: expected error bad_request, got {reply}"));
    }
    p.send_binary(b"{\"ref\":9,\"ch\":\"wlim\",\"msg\":\"\xff\"}")
        .await;
    let reply = p.recv().await;
    if reply["type"] != "error" || reply["code"] != "invalid_utf8" {
        failures.push(format!(
            "binary frame not UTF-8: expected error invalid_utf8, got {reply}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The connection still works, and refused messages took no id.
    let ack = p.publish("wlim", "fine").await;
    assert_eq!(ack["id"], 1, "{ack}");
    let got = sub.recv().await;
    assert_eq!(got["msg"], "fine");

    // With _events, events pass.
    let mut e = Publisher::connect_ok(&env, &events_token("evy")).await;
    let ack = e
        .request(json!({"ref": "x", "ch": "wlim", "ev": "typing", "data": {"n": 1}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "x");
}
