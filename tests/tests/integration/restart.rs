//! The sidecar restarts while subscribers stay connected to nginx.

use chatup_tests::token::token;
use chatup_tests::{assert_message, assert_resync, Chatup, Event, Subscriber, WAIT};
use std::time::Duration;

#[tokio::test]
async fn subscribers_survive_a_sidecar_restart() {
    let mut env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/live").await;
    let mut old_ep = 0;
    for i in 1..=3u64 {
        old_ep = env.publish("live", &format!("before {i}")).await["ep"]
            .as_u64()
            .expect("ep");
    }
    for (sub, _) in &mut subs {
        let msgs = sub.recv_n(3).await;
        assert_message(&msgs[2], "live", 3, "before 3");
    }

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
