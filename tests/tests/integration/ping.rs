//! Server pings, and the 4001 close for a client that never answers.

use chatup_tests::raw::{Frame, OP_PING, OP_PONG};
use chatup_tests::{Chatup, Event, Options, RawWs, Subscriber};
use std::time::{Duration, Instant};

fn with_ping(interval: &str) -> Options {
    Options::default().http(&format!("chatup_ping_interval {interval};"))
}

#[tokio::test]
async fn server_pings_and_closes_a_silent_client_with_4001() {
    let env = Chatup::start_with(with_ping("1s"));
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/ping").await;
    let started = Instant::now();
    let ping = ws
        .read_frame(Duration::from_secs(4))
        .await
        .expect("a server ping within 4 s with chatup_ping_interval 1s");
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert!(ping.payload.is_empty(), "server pings are empty: {ping:?}");
    assert!(!ping.masked);

    // Never answer: closed with 4001 after the next interval.
    let (close, before) = ws.expect_close(Duration::from_secs(5)).await;
    assert_eq!(close.close_code(), Some(4001), "{close:?} after {before:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let env = Chatup::start_with(with_ping("1s"));
    // tungstenite answers pings while reading.
    let mut sub = Subscriber::connect(&env, "/sub/alive").await;
    let mut raw = RawWs::connect(env.nginx_addr(), "/sub/alive").await;
    let deadline = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while Instant::now() < deadline {
        match sub.next(Duration::from_millis(100)).await {
            None | Some(Event::Pong(_)) => {}
            Some(Event::Ping(_)) => pings += 1,
            Some(other) => panic!("unexpected {other:?}"),
        }
        // The raw client answers each ping with a pong carrying the same payload.
        if let Ok(f) = raw.read_frame(Duration::from_millis(10)).await {
            if f.opcode == OP_PING {
                raw.send(&Frame::new(OP_PONG, f.payload)).await;
            } else {
                panic!("raw client got {f:?}");
            }
        }
    }
    assert!(pings >= 2, "{pings} pings in 3.5 s with an interval of 1 s");
    env.publish("alive", "still here").await;
    assert_eq!(sub.recv().await["msg"], "still here");
    assert_eq!(
        raw.expect_json(Duration::from_secs(5)).await["msg"],
        "still here"
    );
}

#[tokio::test]
async fn ping_interval_off_sends_no_ping() {
    let env = Chatup::start_with(with_ping("off"));
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/quiet").await;
    match ws.read_frame(Duration::from_millis(2500)).await {
        Err(chatup_tests::raw::ReadError::Timeout) => {}
        other => panic!("expected nothing with chatup_ping_interval off, got {other:?}"),
    }
}
