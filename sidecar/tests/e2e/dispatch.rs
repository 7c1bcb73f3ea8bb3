//! `POST /join/<ch>`, the dispatcher: this host with its counts and history, exclusions,
//! CORS, and hosts found through Redis.

use std::time::Duration;

use chatup_sidecar::host::publish::WsSettings;
use chatup_wire::{ToSidecar, ToWorker};
use futures_util::SinkExt;
use serde_json::json;

use crate::support::*;

async fn join(s: &Running, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http(s.addr, "POST", path, headers, body).await
}

fn allowed_origin(r: &HttpResponse) -> Option<&str> {
    r.headers
        .get("access-control-allow-origin")
        .map(String::as_str)
}

/// Sends worker `Stats` and waits until the sidecar has read them.
async fn report_stats(w: &mut Worker, counts: &[(&str, u32)]) {
    let channels: Vec<chatup_wire::ChannelCount> = counts
        .iter()
        .map(|(channel, subscribers)| chatup_wire::ChannelCount {
            channel: channel.to_string(),
            subscribers: *subscribers,
        })
        .collect();
    w.send(ToSidecar::Stats {
        subscribers: counts.iter().map(|(_, n)| n).sum(),
        totals: Default::default(),
        channels,
    })
    .await
    .unwrap();
    // Frames are handled in order: the answer to this Subscribe comes after the Stats.
    w.send(ToSidecar::Subscribe {
        channel: "sync".into(),
        want: 0,
        since: None,
    })
    .await
    .unwrap();
    assert!(matches!(next_frame(w).await, ToWorker::Backlog { .. }));
}

#[tokio::test]
async fn join_names_this_host_with_counts_and_history() {
    let s = start_configured(
        WsSettings::default(),
        &[
            "host.id=chat-test",
            "host.public_url=https://chat.example",
            "dispatch.history=2",
        ],
    )
    .await;
    let mut w1 = worker(&s.socket, "room").await;
    let mut w2 = worker(&s.socket, "elsewhere").await;
    report_stats(&mut w1, &[("room", 3), ("other", 5)]).await;
    report_stats(&mut w2, &[("room", 2)]).await;
    let t = token(false);
    for text in ["one", "two", "three"] {
        let r = post(s.addr, "/pub/room", Some(&t), "text/plain", text.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut ann = ws_as(s.addr, user_token(Some("a"), "ann", false)).await;
    let mut ann_again = ws_as(s.addr, user_token(Some("a"), "ann", false)).await;
    let mut bo = ws_as(s.addr, user_token(Some("b"), "bo", false)).await;
    for ws in [&mut ann, &mut ann_again, &mut bo] {
        ws_send(ws, json!({"join": "room"})).await;
        assert_eq!(ws_json(ws).await["type"], "joined");
    }

    let r = join(&s, "/join/room", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let v = r.json();
    assert_eq!(
        v["host"],
        json!({"id": "chat-test", "url": "https://chat.example",
               "sub": "wss://chat.example/sub/", "pub": "wss://chat.example/pub",
               "post": "https://chat.example/pub/"})
    );
    assert_eq!(v["channel"], "room");
    assert_eq!(v["subCount"], 5);
    assert_eq!(v["pubCount"], 2);
    // The last two messages, oldest first, as published: here the join events of ann and
    // bo came after "three".
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{v}");
    let ids: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [4, 5]);
    assert_eq!(history[0]["ev"], "join");
    assert_eq!(history[1]["user"], json!({"name": "bo"}));
    // The bytes are the very ones subscribers got.
    let mut from_relay = Vec::new();
    for _ in 0..5 {
        match next_frame(&mut w1).await {
            ToWorker::Message { payload, .. } => {
                from_relay.push(String::from_utf8(payload).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        r.body.contains(&from_relay[3]) && r.body.contains(&from_relay[4]),
        "{}",
        r.body
    );

    // Another channel: no messages, counts of its own.
    let v = join(&s, "/join/other", &[], b"").await.json();
    assert_eq!(
        (v["subCount"].as_u64(), v["pubCount"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(v["history"], json!([]));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_errors_and_exclusions() {
    let s = start().await;
    // Without host.id: the machine's name and the HTTP port; without public_url: paths.
    let v = join(&s, "/join/room", &[], b"").await.json();
    let id = v["host"]["id"].as_str().unwrap().to_owned();
    assert!(id.ends_with(&format!(":{}", s.addr.port())), "{id}");
    assert_eq!(
        v["host"],
        json!({"id": id, "url": "", "sub": "/sub/", "pub": "/pub", "post": "/pub/"})
    );

    let other = json!({"exclude": ["not-this-one"]}).to_string();
    let r = join(
        &s,
        "/join/room",
        &[("Content-Type", "application/json")],
        other.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["host"]["id"].as_str()),
        (200, Some(id.as_str()))
    );

    for body in [
        json!({"exclude": [id]}),
        json!({"exclude": id}),
        json!({"failed": id}),
        json!({"failed": ["x", id]}),
    ] {
        let r = join(
            &s,
            "/join/room",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 503, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "no_host");
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no live chat host"));
        assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    }
    for body in [
        &b"{"[..],
        b"[1]",
        br#"{"exclude": 5}"#,
        br#"{"exclude": [true]}"#,
    ] {
        let r = join(
            &s,
            "/join/room",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    let r = join(&s, "/join/a:b", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_channel"))
    );
    let r = join(&s, "/join/room", &[], &vec![b' '; 20_000]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // Only POST (and the preflight).
    let r = http(s.addr, "GET", "/join/room", &[], b"").await;
    assert_eq!(r.status, 405);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_is_not_served_without_the_dispatcher_role() {
    let s = start_configured(WsSettings::default(), &["roles.dispatcher=false"]).await;
    let r = join(&s, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = post(
        s.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_cors_follows_the_configured_origins() {
    let preflight_headers = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    // Off by default: no CORS header at all.
    let s = start().await;
    let r = join(&s, "/join/room", &[("Origin", "https://app.example")], b"").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert!(!r.headers.contains_key("access-control-allow-methods"));
    s.stop().await.unwrap();

    // Any origin.
    let s = start_configured(WsSettings::default(), &["dispatch.cors_origins=*"]).await;
    let r = join(&s, "/join/room", &[("Origin", "https://x.example")], b"").await;
    assert_eq!(allowed_origin(&r), Some("*"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(allowed_origin(&r), Some("*"));
    s.stop().await.unwrap();

    // A list: listed origins are echoed, others get nothing; the answer varies by Origin.
    let s = start_configured(
        WsSettings::default(),
        &["dispatch.cors_origins=https://app.example,https://other.example"],
    )
    .await;
    let r = join(&s, "/join/room", &[("Origin", "https://app.example")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(allowed_origin(&r), Some("https://app.example"));
    assert_eq!(r.headers.get("vary").map(String::as_str), Some("origin"));
    let r = join(&s, "/join/room", &[("Origin", "https://evil.example")], b"").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert_eq!(r.headers.get("vary").map(String::as_str), Some("origin"));
    // Errors carry the headers too, so the page can read them.
    let r = join(&s, "/join/a:b", &[("Origin", "https://other.example")], b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(allowed_origin(&r), Some("https://other.example"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(allowed_origin(&r), Some("https://app.example"));
    assert_eq!(
        r.headers
            .get("access-control-allow-methods")
            .map(String::as_str),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        r.headers
            .get("access-control-allow-headers")
            .map(String::as_str),
        Some("content-type")
    );
    assert!(r.headers.contains_key("access-control-max-age"));
    let r = http(
        s.addr,
        "OPTIONS",
        "/join/room",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_dispatcher_alone_finds_the_hosts_reporting_to_redis() {
    let redis = chatup_tests::RedisServer::start();
    let url = format!("redis.url={}", redis.url());
    let host = start_configured(
        WsSettings::default(),
        &[
            &url,
            "host.id=chat-a",
            "host.public_url=http://a.example",
            "host.report_interval_ms=100",
            "host.ttl_ms=400",
            "roles.dispatcher=false",
        ],
    )
    .await;
    let dispatcher = start_configured(
        WsSettings::default(),
        &[
            &url,
            "roles.chat_host=false",
            "dispatch.history=5",
            // Without the chat-host role no publisher token is checked: no key is read.
            "auth.public_key_file=/nonexistent/jwt-public.pem",
        ],
    )
    .await;
    // No relay socket, no publisher endpoints.
    assert!(!dispatcher.socket.exists());
    assert_eq!(
        http(dispatcher.addr, "GET", "/pub", &[], b"").await.status,
        404
    );
    let r = post(
        dispatcher.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"x",
    )
    .await;
    assert_eq!(r.status, 404);
    // And the worker alone does not dispatch.
    assert_eq!(join(&host, "/join/room", &[], b"").await.status, 404);

    let mut w = worker(&host.socket, "room").await;
    report_stats(&mut w, &[("room", 6)]).await;
    let r = post(
        host.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"hello",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Within a report interval or two the dispatcher sees the host and its counts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let r = join(&dispatcher, "/join/room", &[], b"").await;
        if r.status == 200 && r.json()["subCount"] == 6 {
            break r.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        v["host"],
        json!({"id": "chat-a", "url": "http://a.example", "sub": "ws://a.example/sub/",
               "pub": "ws://a.example/pub", "post": "http://a.example/pub/"})
    );
    assert_eq!(v["history"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["history"][0]["msg"], "hello");

    let r = join(&dispatcher, "/join/room", &[], br#"{"failed":"chat-a"}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("no_host"))
    );

    // A host that stops leaves the registry at once.
    host.stop().await.unwrap();
    let r = join(&dispatcher, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("no_host"))
    );
    dispatcher.stop().await.unwrap();

    // With Redis gone, the dispatcher says so.
    let dispatcher =
        start_configured(WsSettings::default(), &[&url, "roles.chat_host=false"]).await;
    drop(redis);
    let r = join(&dispatcher, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    dispatcher.stop().await.unwrap();
}
