//! Publishing reaches every subscriber, on every worker, exactly once and in order.

use chatup_tests::token::{events_token, token};
use chatup_tests::{assert_key_order, assert_message, Chatup, Publisher, Subscriber};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn post_and_ws_publish_reach_subscribers_on_both_workers_once_in_order() {
    let env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/lobby").await;
    let owners: std::collections::HashSet<u32> = subs.iter().map(|(_, w)| *w).collect();
    assert_eq!(owners.len(), 2, "subscribers on both workers");

    let mut epoch = None;
    for i in 1..=5u64 {
        let ack = env.publish("lobby", &format!("post {i}")).await;
        assert_eq!(ack["ch"], "lobby", "{ack}");
        assert_eq!(ack["id"], i, "POST answer {ack}");
        let ep = ack["ep"].as_u64().expect("ep in the POST answer");
        assert_eq!(*epoch.get_or_insert(ep), ep, "epoch stays the same");
    }
    let mut publisher = Publisher::connect_ok(&env, &token("bob")).await;
    for i in 6..=10u64 {
        let ack = publisher.publish("lobby", &format!("ws {i}")).await;
        assert_eq!(ack["id"], i, "ack {ack}");
        assert_eq!(ack["ep"].as_u64(), epoch, "ack {ack}");
    }

    for (sub, worker) in &mut subs {
        let msgs = sub.recv_n(10).await;
        for (i, m) in msgs.iter().enumerate() {
            let id = i as u64 + 1;
            let (text, name) = if id <= 5 {
                (format!("post {id}"), "alice")
            } else {
                (format!("ws {id}"), "bob")
            };
            let ep = assert_message(m, "lobby", id, &text);
            assert_eq!(Some(ep), epoch, "epoch of {m} (worker {worker})");
            assert_eq!(m["user"]["name"], name, "user of {m}");
            assert!(m["t"].is_u64(), "t in {m}");
            assert!(m.get("ev").is_none(), "a message has no ev: {m}");
        }
        for raw in &sub.raw {
            assert_key_order(raw);
        }
        sub.expect_no_message(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn one_socket_receives_every_channel_it_names() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/red/green").await;
    let mut other = Subscriber::connect(&env, "/sub/blue").await;
    env.publish("red", "r1").await;
    env.publish("blue", "b1").await;
    env.publish("green", "g1").await;
    env.publish("red", "r2").await;
    let got = sub.recv_n(3).await;
    let mut red: Vec<_> = got.iter().filter(|m| m["ch"] == "red").collect();
    let green: Vec<_> = got.iter().filter(|m| m["ch"] == "green").collect();
    assert_eq!(green.len(), 1, "{got:?}");
    assert_message(green[0], "green", 1, "g1");
    // red 1 arrived among the first three; red 2 may be the third or the fourth.
    let more = if red.len() < 2 {
        sub.recv_n(1).await
    } else {
        vec![]
    };
    red.extend(more.iter());
    assert_message(red[0], "red", 1, "r1");
    assert_message(red[1], "red", 2, "r2");
    sub.expect_no_message(Duration::from_millis(300)).await;
    let b = other.recv().await;
    assert_message(&b, "blue", 1, "b1");
    other.expect_no_message(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn events_reach_subscribers_with_their_data() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/ev").await;
    let resp = env
        .post_json(
            "ev",
            &events_token("carol"),
            &json!({"ev": "typing", "data": {"on": true}}),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut publisher = Publisher::connect_ok(&env, &events_token("carol")).await;
    let ack = publisher.request(json!({"ch": "ev", "ev": "wave"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let msgs = sub.recv_n(2).await;
    assert_eq!(msgs[0]["ev"], "typing", "{}", msgs[0]);
    assert_eq!(msgs[0]["data"], json!({"on": true}));
    assert_eq!(msgs[0]["id"], 1);
    assert!(
        msgs[0].get("msg").is_none(),
        "an event has no msg: {}",
        msgs[0]
    );
    assert_eq!(msgs[1]["ev"], "wave");
    assert_eq!(msgs[1]["id"], 2);
    assert_key_order(&sub.raw[0]);
}

#[tokio::test]
async fn messages_published_right_after_subscribing_are_not_lost() {
    // A subscriber whose upgrade succeeded gets every message published afterwards, even a
    // burst larger than the cache that starts at once.
    let env = Chatup::start_with(chatup_tests::Options::default().cache_messages(5));
    let mut sub = Subscriber::connect(&env, "/sub/burst").await;
    let mut publisher = Publisher::connect_ok(&env, &token("bob")).await;
    for i in 1..=30u64 {
        let ack = publisher.publish("burst", &format!("b{i}")).await;
        assert_eq!(ack["id"], i);
    }
    let msgs = sub.recv_n(30).await;
    for (m, id) in msgs.iter().zip(1u64..) {
        assert_message(m, "burst", id, &format!("b{id}"));
    }
}
