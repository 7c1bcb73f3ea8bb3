//! `GET /pub`, the WebSocket publisher: token first, then acked publishes in order, errors
//! with their codes, re-authentication, pings and close codes.

use std::time::Duration;

use chatup_sidecar::host::publish::WsSettings;
use chatup_wire::ToWorker;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn websocket_publish_reaches_the_relay_with_acks_in_order() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let mut ws = ws_authed(s.addr, false).await;

    ws_send(&mut ws, json!({"ref": 1, "ch": "room", "msg": "hi"})).await;
    let ack = ws_json(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], 1);
    assert_eq!(ack["id"], 1);
    let ep = ack["ep"].as_u64().unwrap();
    assert!((1..1 << 53).contains(&ep));

    ws_send(&mut ws, json!({"ref": "b", "ch": "room", "msg": "again"})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": "b", "id": 2, "ep": ep})
    );

    // The relay carries exactly the message bytes, in order.
    for (id, text) in [(1, "hi"), (2, "again")] {
        match next_frame(&mut w).await {
            ToWorker::Message {
                channel,
                epoch,
                id: got,
                payload,
            } => {
                assert_eq!((channel.as_str(), epoch, got), ("room", ep, id));
                let payload = String::from_utf8(payload).unwrap();
                let prefix = format!(r#"{{"ch":"room","id":{id},"ep":{ep},"t":"#);
                assert!(payload.starts_with(&prefix), "{payload}");
                assert!(
                    payload.ends_with(&format!(
                        r#","user":{{"color":"red","name":"ann"}},"msg":"{text}"}}"#
                    )),
                    "{payload}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_errors_carry_ref_code_and_reason() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    let cases = [
        (
            json!({"ref": 1, "ch": "bad name", "msg": "x"}),
            "bad_channel",
        ),
        (json!({"ref": 2, "ch": "room", "msg": "   "}), "empty"),
        (
            json!({"ref": 3, "ch": "room", "msg": "12345678901"}),
            "too_long",
        ),
        (json!({"ref": 4, "ch": "room"}), "bad_request"),
        (json!({"ref": 5, "msg": "x"}), "bad_request"),
        (
            json!({"ref": 6, "ch": "room", "ev": "typing"}),
            "events_not_allowed",
        ),
    ];
    expect_errors(&mut ws, cases).await;

    ws_send(&mut ws, json!({"ref": 1, "ch": "a:b", "msg": "x"})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        reply["message"],
        chatup_wire::channel::validate(b"a:b")
            .unwrap_err()
            .to_string()
    );
    ws_send(
        &mut ws,
        json!({"ref": 1, "ch": "room", "msg": "😀😀😀😀😀😀😀😀😀😀😀"}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], "too_long");
    assert!(
        reply["message"].as_str().unwrap().contains("11 characters")
            && reply["message"].as_str().unwrap().contains("10"),
        "{reply}"
    );

    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(ws_json(&mut ws).await["code"], "bad_request");
    ws.send(Message::Binary(vec![0xff, 0xfe].into()))
        .await
        .unwrap();
    assert_eq!(ws_json(&mut ws).await["code"], "invalid_utf8");
    // A UTF-8 binary frame is read like text.
    ws.send(Message::Binary(
        json!({"ref": 9, "ch": "room", "msg": "bin"})
            .to_string()
            .into_bytes()
            .into(),
    ))
    .await
    .unwrap();
    let ack = ws_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_u64()),
        (Some("ack"), Some(1))
    );
    // A frame far over any allowed message closes with 1009.
    ws.send(Message::text("x".repeat(1 << 20))).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, 1009);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_refuses_bad_and_expired_tokens_with_close_codes() {
    let s = start().await;
    for (token, code, close) in [
        ("garbage".to_string(), "bad_token", 4500),
        (expired_token(), "token_expired", 4501),
    ] {
        let mut ws = ws_connect(s.addr).await;
        ws.send(Message::text(token)).await.unwrap();
        let reply = ws_json(&mut ws).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], code);
        assert_eq!(ws_close_code(&mut ws).await, close);
    }
    // The token may also come as {"token": ..}.
    let mut ws = ws_connect(s.addr).await;
    ws_send(&mut ws, json!({"token": token(false)})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "auth", "user": {"color": "red", "name": "ann"}})
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_first_frame_that_is_not_a_token_is_closed_4503() {
    let s = start().await;
    for frame in [
        json!({"ref": 1, "ch": "room", "msg": "too early"}),
        json!({"token": 7}),
    ] {
        let mut ws = ws_connect(s.addr).await;
        ws_send(&mut ws, frame.clone()).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame}: {reply}"
        );
        assert_eq!(ws_close_code(&mut ws).await, 4503, "{frame}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_without_token_is_closed_4503() {
    let s = start_with(WsSettings {
        auth_timeout: Duration::from_millis(200),
        ..WsSettings::default()
    })
    .await;
    let mut ws = ws_connect(s.addr).await;
    assert_eq!(ws_close_code(&mut ws).await, 4503);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_reauthentication() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    ws_send(&mut ws, json!({"ref": 1, "ch": "r", "ev": "typing"})).await;
    assert_eq!(ws_json(&mut ws).await["code"], "events_not_allowed");
    ws_send(&mut ws, json!({"token": token(true)})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "auth");
    ws_send(
        &mut ws,
        json!({"ref": 2, "ch": "r", "ev": "typing", "data": {"on": true}}),
    )
    .await;
    let ack = ws_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(2))
    );
    // Event data over limits.max_event_bytes.
    ws_send(
        &mut ws,
        json!({"ref": 3, "ch": "r", "ev": "t", "data": "x".repeat(40)}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "too_long");
    // A bad token later ends the session like a bad first token.
    ws_send(&mut ws, json!({"token": expired_token()})).await;
    assert_eq!(ws_json(&mut ws).await["code"], "token_expired");
    assert_eq!(ws_close_code(&mut ws).await, 4501);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_pings_and_closes_silent_clients_4001() {
    let s = start_with(WsSettings {
        ping_interval: Duration::from_millis(150),
        ..WsSettings::default()
    })
    .await;
    let mut ws = ws_authed(s.addr, false).await;
    // Not reading: no pong goes back, so the server hears nothing after its ping.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut saw_ping = false;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_ping);
    assert_eq!(code, 4001);

    // A client that reads (and so answers pings) stays connected.
    let mut ws = ws_authed(s.addr, false).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(pings >= 2, "{pings}");
    ws_send(&mut ws, json!({"ref": 1, "ch": "r", "msg": "still here"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    s.stop().await.unwrap();
}
