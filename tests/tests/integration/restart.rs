//! The sidecar restarts while subscribers stay connected to nginx.

use chatup_tests::token::token;
use chatup_tests::{assert_message, assert_resync, Chatup, Event, Subscriber, WAIT};
use std::time::Duration;

#[tokio::test]
async fn subscribers_survive_a_sidecar_restart() {
    let mut env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/live").await;
    let texts: Vec<String> = (1..=3).map(|i| format!("before {i}")).collect();
    let old_ep = env.publish_to_all(&mut subs, "live", &texts).await;

    let status = env.stop_sidecar();
    assert!(
        status.success(),
        "the sidecar exits 0 on SIGTERM, got {status}"
    );
    assert!(
        !env.relay_socket().exists(),
        "the sidecar removes its relay socket when it stops"
    );

    // Publishing fails while the sidecar is away (nginx cannot reach it).
    let resp = env.post_text("live", &token("alice"), b"lost").await;
    assert!(
        resp.status >= 500,
        "POST while the sidecar is down: expected a 5xx, got {} {}",
        resp.status,
        resp.text()
    );
    let refused = Subscriber::try_connect(&env, "/pub").await;
    assert!(
        refused.is_err(),
        "/pub upgrade while the sidecar is down must fail"
    );

    // Subscribers stay connected: no close, no message.
    for (sub, worker) in &mut subs {
        match sub.next(Duration::from_millis(300)).await {
            None | Some(Event::Ping(_)) => {}
            Some(other) => {
                panic!("subscriber on worker {worker} got {other:?} while the sidecar was down")
            }
        }
    }

    env.start_sidecar();
    let mut new_ep = 0;
    for i in 1..=3u64 {
        let ack = env.publish("live", &format!("after {i}")).await;
        assert_eq!(
            ack["id"], i,
            "a new memory broker starts the channel again: {ack}"
        );
        new_ep = ack["ep"].as_u64().expect("ep");
    }
    assert_ne!(
        new_ep, old_ep,
        "the restarted broker lost history: a new epoch"
    );

    for (sub, worker) in &mut subs {
        // The worker resubscribes with its old position: the subscriber is told the epoch
        // changed, then gets every new message once, in order.
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        let mut resync = None;
        let mut got = Vec::new();
        while got.len() < 3 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match sub.next(left).await {
                Some(Event::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                    if v["ev"] == "resync" {
                        assert!(resync.is_none(), "one resync only (worker {worker}): {v}");
                        assert!(got.is_empty(), "resync before the new messages: {v}");
                        resync = Some(v);
                    } else {
                        got.push(v);
                    }
                }
                Some(Event::Ping(_)) => {}
                other => panic!(
                    "worker {worker}: expected the new messages, got {other:?} after {got:?}\n{}",
                    env.error_log()
                ),
            }
        }
        let resync =
            resync.unwrap_or_else(|| panic!("worker {worker}: no resync event before {got:?}"));
        assert_eq!(assert_resync(&resync, "live", "epoch_changed"), new_ep);
        for (m, id) in got.iter().zip(1..) {
            let ep = assert_message(m, "live", id, &format!("after {id}"));
            assert_eq!(ep, new_ep);
        }
        sub.expect_no_message(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn publishers_get_1001_when_the_sidecar_stops() {
    let mut env = Chatup::start();
    let mut p = chatup_tests::Publisher::connect_ok(&env, &token("pub")).await;
    p.publish("bye", "hello").await;
    let status = env.stop_sidecar();
    assert!(status.success(), "exit status {status}");
    let (code, _) = p.expect_close(Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(1001),
        "publisher close code when the sidecar stops"
    );
}

#[tokio::test]
async fn an_expired_history_changes_the_epoch_and_subscribers_are_told() {
    // history.ttl_seconds=1: a channel idle for a second may lose its history. Whenever
    // the epoch a subscriber sees changes, a resync event must come first, and no message
    // may be lost.
    let env =
        Chatup::start_with(chatup_tests::Options::default().sidecar_set("history.ttl_seconds=1"));
    let mut sub = Subscriber::connect(&env, "/sub/ttl").await;
    let ep1 = env.publish("ttl", "first").await["ep"]
        .as_u64()
        .expect("ep");
    assert_message(&sub.recv().await, "ttl", 1, "first");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ack = env.publish("ttl", "second").await;
    let ep2 = ack["ep"].as_u64().expect("ep");
    let next = sub.recv().await;
    eprintln!("epoch before {ep1}, after {ep2}");
    if ep2 == ep1 {
        assert_eq!(ack["id"], 2, "{ack}");
        assert_message(&next, "ttl", 2, "second");
    } else {
        assert_eq!(ack["id"], 1, "a new epoch starts at id 1: {ack}");
        assert_eq!(
            assert_resync(&next, "ttl", "epoch_changed"),
            ep2,
            "resync before the first message of the new epoch"
        );
        assert_message(&sub.recv().await, "ttl", 1, "second");
    }
    sub.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resuming_after_the_history_expired_gets_resync() {
    // No subscriber and no message for history.ttl_seconds: the channel's history is gone
    // and it starts a new epoch; a subscriber resuming from the old one is told.
    let env =
        Chatup::start_with(chatup_tests::Options::default().sidecar_set("history.ttl_seconds=1"));
    let mut sub = Subscriber::connect(&env, "/sub/gone").await;
    let ep1 = env.publish("gone", "old").await["ep"].as_u64().expect("ep");
    assert_message(&sub.recv().await, "gone", 1, "old");
    sub.close(1000).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let ack = env.publish("gone", "new").await;
    let ep2 = ack["ep"].as_u64().expect("ep");
    assert_ne!(ep2, ep1, "an expired channel starts a new epoch");
    assert_eq!(ack["id"], 1, "{ack}");
    let mut again = Subscriber::connect(&env, &format!("/sub/gone?since=gone:{ep1}:1")).await;
    assert_eq!(
        assert_resync(&again.recv().await, "gone", "epoch_changed"),
        ep2
    );
    assert_message(&again.recv().await, "gone", 1, "new");
    again.expect_no_message(Duration::from_millis(300)).await;
}
