//! Replay of the cache on connect, and resume with `since`.

use chatup_tests::{assert_message, assert_resync, Chatup, Options, Subscriber};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn new_subscribers_get_the_cached_messages() {
    let env = Chatup::start();
    env.publish_n("hist", 1, 5).await;
    // Every worker replays them (each has its own cache), so try a few connections.
    env.expect_on_every_worker("/sub/hist", "hist", 1..=5, QUIET)
        .await;
}

#[tokio::test]
async fn cache_messages_bounds_the_replay() {
    let env = Chatup::start_with(Options::default().cache_messages(3));
    env.publish_n("small", 1, 10).await;
    let mut sub = Subscriber::connect(&env, "/sub/small").await;
    let msgs = sub.recv_n(3).await;
    for (m, id) in msgs.iter().zip(8..) {
        assert_message(m, "small", id, &format!("m{id}"));
    }
    sub.expect_no_message(QUIET).await;
    // Live messages still arrive, and a later subscriber gets the newest 3.
    env.publish_n("small", 11, 12).await;
    let live = sub.recv_n(2).await;
    assert_message(&live[0], "small", 11, "m11");
    assert_message(&live[1], "small", 12, "m12");
    let mut later = Subscriber::connect(&env, "/sub/small").await;
    let msgs = later.recv_n(3).await;
    for (m, id) in msgs.iter().zip(10..) {
        assert_message(m, "small", id, &format!("m{id}"));
    }
    later.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn cache_messages_zero_replays_nothing() {
    let env = Chatup::start_with(Options::default().cache_messages(0));
    env.publish_n("none", 1, 3).await;
    let mut sub = Subscriber::connect(&env, "/sub/none").await;
    // Publish until one arrives (the worker's subscription may still be on its way).
    let mut first = None;
    for i in 4..40u64 {
        env.publish("none", &format!("m{i}")).await;
        if let Some(chatup_tests::Event::Text(t)) = sub.next(Duration::from_millis(100)).await {
            first = Some(serde_json::from_str::<serde_json::Value>(&t).expect("JSON"));
            break;
        }
    }
    let first = first.expect("a live message arrives");
    assert!(
        first["id"].as_u64() > Some(3),
        "nothing published before subscribing is replayed: {first}"
    );
}

#[tokio::test]
async fn resume_after_reconnect_loses_nothing_and_duplicates_nothing() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/res").await;
    env.publish_n("res", 1, 3).await;
    let msgs = sub.recv_n(3).await;
    assert_message(&msgs[2], "res", 3, "m3");
    let since = sub.since_of("res").expect("a position");
    sub.close(1000).await;
    drop(sub);

    env.publish_n("res", 4, 6).await;
    let mut again = Subscriber::connect(&env, &format!("/sub/res?since={since}")).await;
    let msgs = again.recv_n(3).await;
    for (m, id) in msgs.iter().zip(4..) {
        assert_message(m, "res", id, &format!("m{id}"));
    }
    again.expect_no_message(QUIET).await;
    env.publish_n("res", 7, 7).await;
    assert_message(&again.recv().await, "res", 7, "m7");
    again.expect_no_message(QUIET).await;

    // Resuming from the newest id gives nothing old, then the live messages.
    let since = again.since_of("res").expect("a position");
    let mut up_to_date = Subscriber::connect(&env, &format!("/sub/res?since={since}")).await;
    up_to_date.expect_no_message(QUIET).await;
    env.publish_n("res", 8, 8).await;
    assert_message(&up_to_date.recv().await, "res", 8, "m8");
}

#[tokio::test]
async fn resume_on_every_worker() {
    // Each worker has its own cache: resuming must work whichever worker takes the socket.
    let env = Chatup::start();
    let ep = env.publish_n("every", 1, 6).await;
    env.expect_on_every_worker(
        &format!("/sub/every?since=every:{ep}:4"),
        "every",
        5..=6,
        QUIET,
    )
    .await;
}

#[tokio::test]
async fn resume_with_another_epoch_gets_resync_epoch_changed() {
    let env = Chatup::start();
    let ep = env.publish_n("epo", 1, 3).await;
    let wrong = if ep > 1 { ep - 1 } else { ep + 1 };
    let mut sub = Subscriber::connect(&env, &format!("/sub/epo?since=epo:{wrong}:2")).await;
    let first = sub.recv().await;
    assert_eq!(assert_resync(&first, "epo", "epoch_changed"), ep);
    let msgs = sub.recv_n(3).await;
    for (m, id) in msgs.iter().zip(1..) {
        assert_message(m, "epo", id, &format!("m{id}"));
    }
    sub.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn resume_from_before_the_cache_gets_resync_history_truncated() {
    let env = Chatup::start_with(Options::default().cache_messages(3));
    let ep = env.publish_n("trunc", 1, 10).await;
    let mut sub = Subscriber::connect(&env, &format!("/sub/trunc?since=trunc:{ep}:2")).await;
    let first = sub.recv().await;
    assert_eq!(assert_resync(&first, "trunc", "history_truncated"), ep);
    let msgs = sub.recv_n(3).await;
    for (m, id) in msgs.iter().zip(8..) {
        assert_message(m, "trunc", id, &format!("m{id}"));
    }
    sub.expect_no_message(QUIET).await;

    // Within the cache: no resync.
    let mut ok = Subscriber::connect(&env, &format!("/sub/trunc?since=trunc:{ep}:8")).await;
    let msgs = ok.recv_n(2).await;
    assert_message(&msgs[0], "trunc", 9, "m9");
    assert_message(&msgs[1], "trunc", 10, "m10");
    ok.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn since_applies_per_channel() {
    let env = Chatup::start();
    let ep = env.publish_n("one", 1, 4).await;
    env.publish_n("two", 1, 2).await;
    let mut sub = Subscriber::connect(&env, &format!("/sub/one/two?since=one:{ep}:3")).await;
    let got = sub.recv_n(3).await;
    let one: Vec<_> = got.iter().filter(|m| m["ch"] == "one").collect();
    let two: Vec<_> = got.iter().filter(|m| m["ch"] == "two").collect();
    assert_eq!(one.len(), 1, "{got:?}");
    assert_message(one[0], "one", 4, "m4");
    assert_eq!(two.len(), 2, "{got:?}");
    assert_message(two[0], "two", 1, "m1");
    assert_message(two[1], "two", 2, "m2");
    sub.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn a_channel_left_by_every_subscriber_is_fresh_when_joined_again() {
    // When its last subscriber leaves, a worker stops receiving the channel; what it
    // cached must not be served stale to the next subscriber.
    let env = Chatup::start();
    let mut first = env.subscribers_on_every_worker("/sub/again").await;
    let ep = env.publish_n("again", 1, 2).await;
    for (sub, _) in &mut first {
        let msgs = sub.recv_n(2).await;
        assert_message(&msgs[1], "again", 2, "m2");
        sub.close(1000).await;
    }
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.publish_n("again", 3, 4).await;
    env.expect_on_every_worker("/sub/again", "again", 1..=4, QUIET)
        .await;
    env.expect_on_every_worker(
        &format!("/sub/again?since=again:{ep}:2"),
        "again",
        3..=4,
        QUIET,
    )
    .await;
}

#[tokio::test]
async fn subscribers_leaving_do_not_disturb_the_others() {
    let env = Chatup::start();
    let mut stay = env.subscribers_on_every_worker("/sub/share").await;
    let mut leave = env.subscribers_on_every_worker("/sub/share").await;
    env.publish_n("share", 1, 1).await;
    for (sub, _) in leave.iter_mut().chain(stay.iter_mut()) {
        assert_message(&sub.recv().await, "share", 1, "m1");
    }
    for (sub, _) in &mut leave {
        sub.close(1000).await;
    }
    drop(leave);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.publish_n("share", 2, 3).await;
    for (sub, _) in &mut stay {
        let msgs = sub.recv_n(2).await;
        assert_message(&msgs[0], "share", 2, "m2");
        assert_message(&msgs[1], "share", 3, "m3");
    }
}

#[tokio::test]
async fn cache_bytes_bounds_the_replay_and_resume_says_so() {
    // ~390-byte frames: two fit in 1k, three do not.
    let env = Chatup::start_with(Options::default().http("chatup_cache_bytes 1k;"));
    let text = |i: u64| format!("{i:03}{}", "x".repeat(297));
    let mut ep = 0;
    for i in 1..=10 {
        let ack = env.publish("bulky", &text(i)).await;
        ep = ack["ep"].as_u64().expect("ep");
    }
    let mut sub = Subscriber::connect(&env, "/sub/bulky").await;
    let msgs = sub.recv_n(2).await;
    assert_message(&msgs[0], "bulky", 9, &text(9));
    assert_message(&msgs[1], "bulky", 10, &text(10));
    sub.expect_no_message(QUIET).await;

    // Resuming from before what the bytes bound kept is flagged, then gets what there is.
    let mut resumed = Subscriber::connect(&env, &format!("/sub/bulky?since=bulky:{ep}:7")).await;
    let msgs = resumed.recv_n(3).await;
    assert_resync(&msgs[0], "bulky", "history_truncated");
    assert_message(&msgs[1], "bulky", 9, &text(9));
    assert_message(&msgs[2], "bulky", 10, &text(10));
    resumed.expect_no_message(QUIET).await;
}
