//! Bans: kicks of the banned user's sessions, refusals, expiry, and kicks across hosts
//! through Redis.

use std::time::Duration;

use chatup_sidecar::host::publish::WsSettings;
use chatup_sidecar::moderation::Who;
use serde_json::json;

use crate::support::*;

/// Bans by user id (`sub`).
fn users(subs: &[&str]) -> Vec<Who> {
    subs.iter().map(|n| Who::User(n.to_string())).collect()
}

#[tokio::test]
async fn a_ban_kicks_the_users_sessions_in_the_channel_and_refuses_the_rest() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut joined = ws_joined(s.addr, ann(), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");
    let mut published = ws_as(s.addr, ann()).await;
    ws_publish(&mut published, "room", "hi").await;
    assert_eq!(relay_json(&mut w).await["msg"], "hi");
    let mut elsewhere = ws_joined(s.addr, ann(), "hall").await;
    // Banned by `_public.name` (no sub).
    let mut bo = ws_joined(s.addr, user_token(None, "bo", false), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");
    let mut cy = ws_joined(s.addr, user_token(Some("u-cy"), "cy", false), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");

    s.moderation
        .ban(
            "room",
            &[Who::User("u-ann".into()), Who::Name("bo".into())],
            None,
        )
        .await
        .unwrap();
    // Told why and until when (for ever: null), then closed.
    let (texts, close) = ws_frames_until_close(&mut joined).await;
    assert_eq!(close, (4502, "banned from room".to_string()));
    assert_eq!(
        texts.last().unwrap(),
        &json!({"type": "error", "code": "banned", "ch": "room", "until": null,
                "message": "you are banned from this channel permanently"})
    );
    for ws in [&mut published, &mut bo] {
        assert_eq!(
            ws_close_frame(ws).await,
            (4502, "banned from room".to_string())
        );
    }
    // The channel hears the removals (no `user`), and the kicked users leave.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = relay_json(&mut w).await;
        seen.push(format!(
            "{}:{}",
            m["ev"].as_str().unwrap(),
            m["data"].as_str().unwrap_or("")
        ));
        if m["ev"] == "rmUserMsg" {
            assert!(m.get("user").is_none(), "{m}");
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["leave:", "leave:", "rmUserMsg:bo", "rmUserMsg:u-ann"]
    );

    // Ann's session elsewhere stays, but cannot publish to the room nor join it.
    let err = ws_refused(
        &mut elsewhere,
        json!({"ref": 1, "ch": "room", "msg": "x"}),
        "banned",
    )
    .await;
    assert_eq!(err["ref"], 1);
    assert_eq!(
        err["message"],
        "you are banned from this channel permanently"
    );
    ws_refused(&mut elsewhere, json!({"ref": 2, "join": "room"}), "banned").await;
    ws_publish(&mut elsewhere, "hall", "ok").await;
    // And the refused join made no `join` event: the next thing the room hears is cy.
    ws_publish(&mut cy, "room", "cy here").await;
    assert_eq!(relay_json(&mut w).await["msg"], "cy here");
    let r = post(s.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "banned");

    // Unbanned: all works again.
    s.moderation
        .unban("room", &users(&["u-ann"]))
        .await
        .unwrap();
    ws_publish(&mut elsewhere, "room", "back").await;
    assert_eq!(relay_json(&mut w).await["msg"], "back");
    let r = post(s.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_ban_with_an_expiry_lapses_by_itself() {
    let s = start().await;
    let ann = user_token(Some("u-ann"), "ann", false);
    let started = std::time::Instant::now();
    let ban = s
        .moderation
        .ban("room", &users(&["u-ann"]), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(ban.until.is_some());
    let mut ws = ws_as(s.addr, ann).await;
    let err = ws_refused(
        &mut ws,
        json!({"ref": 1, "ch": "room", "msg": "x"}),
        "banned",
    )
    .await;
    let message = err["message"].as_str().unwrap();
    assert!(
        message.starts_with("you are banned from this channel until 20"),
        "{message}"
    );
    loop {
        ws_send(&mut ws, json!({"ref": 2, "ch": "room", "msg": "x"})).await;
        let reply = ws_json(&mut ws).await;
        if reply["type"] == "ack" {
            break;
        }
        assert_eq!(reply["code"], "banned", "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ban did not lapse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(950));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_ban_plugin_bans_kick_but_do_not_refuse() {
    let s = start_configured(WsSettings::default(), &["plugins.chain=rate_limit"]).await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut joined = ws_joined(s.addr, ann(), "room").await;
    s.moderation
        .ban("room", &users(&["u-ann"]), None)
        .await
        .unwrap();
    assert_eq!(ws_close_frame(&mut joined).await.0, 4502);
    let mut again = ws_joined(s.addr, ann(), "room").await;
    ws_publish(&mut again, "room", "still").await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_for_a_banned_user_closes_the_session() {
    let s = start().await;
    let mut ws = ws_joined(s.addr, user_token(Some("u-bo"), "bo", false), "room").await;
    s.moderation
        .ban("room", &users(&["u-ann"]), None)
        .await
        .unwrap();
    // Bo's session is untouched; the same user's fresh token is fine.
    ws_send(
        &mut ws,
        json!({"ref": 1, "token": user_token(Some("u-bo"), "bo", false)}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "auth");
    // Becoming ann, banned from a channel the session is in: refused and closed.
    ws_send(
        &mut ws,
        json!({"ref": 2, "token": user_token(Some("u-ann"), "ann", false)}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), &reply["ref"]),
        (Some("banned"), &json!(2)),
        "{reply}"
    );
    assert_eq!(
        ws_close_frame(&mut ws).await,
        (4502, "banned from room".to_string())
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_ban_made_on_one_host_kicks_the_session_on_another() {
    let redis = chatup_tests::RedisServer::start();
    let url = format!("redis.url={}", redis.url());
    let a = start_configured(WsSettings::default(), &[&url, "host.id=a"]).await;
    let b = start_configured(WsSettings::default(), &[&url, "host.id=b"]).await;
    let mut w = worker(&a.socket, "room").await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut on_b = ws_joined(b.addr, ann(), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");

    // B's control subscription comes up asynchronously after start: wait for the first kick
    // to land, banning again (which is safe) until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        a.moderation
            .ban("room", &users(&["u-ann"]), None)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), ws_close_frame(&mut on_b)).await {
            Ok(frame) => {
                assert_eq!(frame, (4502, "banned from room".to_string()));
                break;
            }
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "B's session was not kicked"
            ),
        }
    }
    // The event reached the channel through Redis; B refuses ann from now on.
    let mut events = Vec::new();
    for _ in 0..2 {
        events.push(relay_json(&mut w).await);
    }
    assert!(
        events
            .iter()
            .any(|e| e["ev"] == "rmUserMsg" && e["data"] == "u-ann"),
        "{events:?}"
    );
    let r = post(b.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("banned"))
    );
    let mut again = ws_as(b.addr, ann()).await;
    ws_refused(&mut again, json!({"ref": 1, "join": "room"}), "banned").await;
    // Lifted on A, lifted on B.
    a.moderation
        .unban("room", &users(&["u-ann"]))
        .await
        .unwrap();
    ws_send(&mut again, json!({"ref": 2, "join": "room"})).await;
    assert_eq!(ws_json(&mut again).await["type"], "joined");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
