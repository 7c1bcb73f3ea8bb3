//! Join and leave: the frames' answers, and the events subscribers get once per user.

use chatup_sidecar::host::publish::WsSettings;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn join_and_leave_frames_are_answered_with_their_ref() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    let exchanges = [
        (
            json!({"ref": 1, "join": "room"}),
            json!({"type": "joined", "ref": 1, "ch": "room"}),
        ),
        // Again: still joined, not an error.
        (
            json!({"ref": "x", "join": "room"}),
            json!({"type": "joined", "ref": "x", "ch": "room"}),
        ),
        (
            json!({"ref": 2, "leave": "room"}),
            json!({"type": "left", "ref": 2, "ch": "room"}),
        ),
        (
            json!({"ref": 3, "leave": "room"}),
            json!({"type": "left", "ref": 3, "ch": "room"}),
        ),
        // No ref: none in the answer.
        (
            json!({"join": "other"}),
            json!({"type": "joined", "ch": "other"}),
        ),
    ];
    for (frame, answer) in exchanges {
        ws_send(&mut ws, frame).await;
        assert_eq!(ws_json(&mut ws).await, answer);
    }
    let errors = [
        (json!({"ref": 4, "join": "bad name"}), "bad_channel"),
        (json!({"ref": 5, "leave": "a:b"}), "bad_channel"),
        (json!({"ref": 6, "join": ""}), "bad_channel"),
        (json!({"ref": 7, "join": 1}), "bad_request"),
        (json!({"ref": 8, "join": "a", "leave": "b"}), "bad_request"),
        (
            json!({"ref": 9, "join": "a", "ch": "a", "msg": "x"}),
            "bad_request",
        ),
    ];
    expect_errors(&mut ws, errors).await;
    ws_send(&mut ws, json!({"ref": 10, "join": "a:b"})).await;
    assert_eq!(
        ws_json(&mut ws).await["message"],
        chatup_wire::channel::validate(b"a:b")
            .unwrap_err()
            .to_string()
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_and_leave_events_reach_subscribers_once_per_user() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let ann1 = ws_as(s.addr, user_token(Some("u-ann"), "ann", false)).await;
    let mut ann2 = ws_as(s.addr, user_token(Some("u-ann"), "ann", false)).await;
    let mut ann1 = ann1;

    ws_send(&mut ann1, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ann1).await["type"], "joined");
    let join = relay_json(&mut w).await;
    assert_eq!(join["ev"], "join", "{join}");
    assert_eq!(join["user"], json!({"name": "ann"}));
    assert_eq!(
        (join["ch"].as_str(), join["id"].as_u64()),
        (Some("room"), Some(1))
    );
    assert!(join.get("data").is_none(), "{join}");

    // The same user's second session: no second join. A marker proves nothing came between.
    ws_send(&mut ann2, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ann2).await["type"], "joined");
    ws_publish(&mut ann2, "room", "mark1").await;
    assert_eq!(relay_json(&mut w).await["msg"], "mark1");

    // The first session closes: the user is still there through the second.
    ws_close(ann1).await;
    ws_publish(&mut ann2, "room", "mark2").await;
    assert_eq!(relay_json(&mut w).await["msg"], "mark2");

    // Another user (no sub: told apart by _public) joins and leaves by frame.
    let mut bo = ws_as(s.addr, user_token(None, "bo", false)).await;
    ws_send(&mut bo, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut bo).await["type"], "joined");
    let join = relay_json(&mut w).await;
    assert_eq!(
        (join["ev"].as_str(), &join["user"]),
        (Some("join"), &json!({"name": "bo"}))
    );
    ws_send(&mut bo, json!({"ref": 2, "leave": "room"})).await;
    assert_eq!(ws_json(&mut bo).await["type"], "left");
    let leave = relay_json(&mut w).await;
    assert_eq!(
        (leave["ev"].as_str(), &leave["user"]),
        (Some("leave"), &json!({"name": "bo"}))
    );

    // The last session of ann closes: one leave.
    ws_close(ann2).await;
    let leave = relay_json(&mut w).await;
    assert_eq!(
        (leave["ev"].as_str(), &leave["user"]),
        (Some("leave"), &json!({"name": "ann"}))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn presence_events_can_be_turned_off() {
    let s = start_configured(WsSettings::default(), &["presence.events=false"]).await;
    let mut w = worker(&s.socket, "room").await;
    let mut ws = ws_authed(s.addr, false).await;
    ws_send(&mut ws, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "joined");
    ws_publish(&mut ws, "room", "first").await;
    let first = relay_json(&mut w).await;
    assert_eq!(
        (first["id"].as_u64(), first["msg"].as_str()),
        (Some(1), Some("first"))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn publishers_cannot_send_reserved_events() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, true).await;
    for name in ["join", "leave", "resync"] {
        ws_send(&mut ws, json!({"ref": name, "ch": "room", "ev": name})).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_str()),
            (Some("bad_request"), Some(name)),
            "{reply}"
        );
        let body = json!({"ev": name}).to_string();
        let r = post(
            s.addr,
            "/pub/room",
            Some(&token(true)),
            "application/json",
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    s.stop().await.unwrap();
}
