//! A subscriber that stops reading is closed with 4000; the others get everything.

use chatup_tests::token::token;
use chatup_tests::{Chatup, Options, Publisher, RawWs, Subscriber};
use std::time::Duration;

fn slow_setup() -> Options {
    // Small socket buffers so that a client that stops reading pushes back quickly; the
    // slow client uses /slow/ with a small chatup_max_unsent, the normal one /sub/ with
    // the default (1m).
    Options::default()
        .listen("sndbuf=4k")
        .server("location /slow/ {\n    chatup_subscribe;\n    chatup_max_unsent 16k;\n}")
}

async fn publish_many(env: &Chatup, ch: &str, from: u64, n: u64) {
    let mut p = Publisher::connect_ok(env, &token("fast")).await;
    let text = "m".repeat(900);
    for i in from..=n {
        let ack = p.publish(ch, &format!("{i} {text}")).await;
        assert_eq!(ack["id"], i);
    }
}

#[tokio::test]
async fn slow_subscriber_is_closed_with_4000_others_get_everything() {
    let env = Chatup::start_with(slow_setup());
    let mut normal = Subscriber::connect(&env, "/sub/busy").await;
    let mut slow = RawWs::connect_with_rcvbuf(env.nginx_addr(), "/slow/busy", Some(4096)).await;

    // Both are subscribed once each has its first message.
    publish_many(&env, "busy", 1, 1).await;
    assert_eq!(normal.recv().await["id"], 1);
    assert_eq!(slow.expect_json(Duration::from_secs(5)).await["id"], 1);

    publish_many(&env, "busy", 2, 300).await;
    let mut msgs = vec![serde_json::json!({"id": 1})];
    msgs.extend(normal.recv_n(299).await);
    for (m, id) in msgs.iter().zip(1u64..) {
        assert_eq!(m["id"], id, "normal subscriber in order");
    }
    normal.expect_no_message(Duration::from_millis(200)).await;

    // Now read the slow one: a prefix of the messages, in order, then close 4000.
    let (close, before) = slow.expect_close(Duration::from_secs(15)).await;
    assert_eq!(
        close.close_code(),
        Some(4000),
        "slow consumer close: {close:?}"
    );
    let mut ids: Vec<u64> = vec![1];
    ids.extend(
        before
            .iter()
            .filter(|f| f.opcode == chatup_tests::raw::OP_TEXT)
            .map(|f| {
                serde_json::from_slice::<serde_json::Value>(&f.payload).expect("JSON")["id"]
                    .as_u64()
                    .expect("id")
            }),
    );
    assert!(
        ids.len() < 300,
        "the slow subscriber was cut off before the end"
    );
    assert!(
        ids.iter().zip(1u64..).all(|(a, b)| *a == b),
        "what it got is a gapless prefix: {ids:?}"
    );
}

#[tokio::test]
async fn slow_subscriber_that_never_drains_is_dropped() {
    let env = Chatup::start_with(slow_setup());
    let slow = RawWs::connect_with_rcvbuf(env.nginx_addr(), "/slow/stuck", Some(4096)).await;
    let worker = env.worker_of(slow.local_port).expect("a worker owns it");
    publish_many(&env, "stuck", 1, 100).await;
    // The close cannot be sent; within 10 s (plus slack) the worker lets go of the socket.
    let deadline = std::time::Instant::now() + Duration::from_secs(16);
    while env.worker_of(slow.local_port).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "worker {worker} still holds the stuck subscriber after 16 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
}
