//! Idempotency keys: a retry gets the first answer, on the WebSocket and on POST alike.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_on_both_endpoints() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let alice = user_token(Some("u1"), "alice", false);
    let post_keyed = |token: String, key: &'static str, text: &'static str| {
        let addr = s.addr;
        async move {
            let auth = format!("Bearer {token}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "text/plain"),
                ("Idempotency-Key", key),
            ];
            http(addr, "POST", "/pub/room", &headers, text.as_bytes()).await
        }
    };

    let first = post_keyed(alice.clone(), "k-1", "one").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first.get("duplicate"), None, "{first}");
    let ep = first["ep"].clone();
    // The retry, even with another text: the first answer, marked, and nothing published.
    let again = post_keyed(alice.clone(), "k-1", "one again").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.json(),
        json!({"ch": "room", "id": 1, "ep": ep, "duplicate": true})
    );
    // Same key over the WebSocket, same user and channel: the same publish.
    let mut ws = ws_as(s.addr, alice.clone()).await;
    ws_send(
        &mut ws,
        json!({"ref": 7, "ch": "room", "msg": "one", "key": "k-1"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": 7, "id": 1, "ep": ep, "duplicate": true})
    );
    // Another key, another channel, or another user: a new message each.
    ws_send(
        &mut ws,
        json!({"ref": 8, "ch": "room", "msg": "two", "key": "k-2"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": 8, "id": 2, "ep": ep})
    );
    ws_send(
        &mut ws,
        json!({"ref": 9, "ch": "other", "msg": "x", "key": "k-1"}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["id"], 1);
    let bob = post_keyed(user_token(Some("u2"), "alice", false), "k-1", "three").await;
    assert_eq!((bob.status, bob.json()["id"].clone()), (200, json!(3)));
    // A null key is no key.
    ws_send(
        &mut ws,
        json!({"ref": 10, "ch": "room", "msg": "four", "key": null}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["id"], 4);

    // Bad keys are refused before anything is published.
    expect_errors(
        &mut ws,
        [
            (
                json!({"ref": 11, "ch": "room", "msg": "x", "key": ""}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 12, "ch": "room", "msg": "x", "key": 5}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 13, "ch": "room", "msg": "x", "key": "a b"}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 14, "ch": "room", "msg": "x", "key": "k".repeat(65)}),
                "bad_idempotency_key",
            ),
        ],
    )
    .await;
    for bad in ["has space", "{tag}", "k/1"] {
        let r = post_keyed(alice.clone(), bad, "x").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_idempotency_key", "{bad}");
    }

    // The relay got each message once.
    let texts: Vec<Value> = [
        relay_json(&mut w).await,
        relay_json(&mut w).await,
        relay_json(&mut w).await,
        relay_json(&mut w).await,
    ]
    .iter()
    .map(|m| json!([m["id"], m["msg"]]))
    .collect();
    assert_eq!(
        texts,
        [
            json!([1, "one"]),
            json!([2, "two"]),
            json!([3, "three"]),
            json!([4, "four"])
        ]
    );
    ws_close(ws).await;
    s.stop().await.unwrap();
}
