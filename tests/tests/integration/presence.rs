//! Presence's leave grace (`presence.leave_grace_ms`): a publisher whose connection drops
//! and comes back within it (a page reload) makes neither a `leave` nor a `join`; one that
//! does not come back leaves when it ends; an explicit leave is announced at once.

use std::time::Duration;

use chatup_tests::{Chatup, Options, Publisher, Subscriber, WAIT};
use serde_json::{json, Value};

const GRACE_MS: u64 = 1500;

fn with_grace() -> Chatup {
    Chatup::start_with(Options::default().leave_grace_ms(GRACE_MS))
}

/// What `viewer` gets up to and with the message `text`.
async fn until_message(viewer: &mut Subscriber, text: &str) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while got.last().is_none_or(|m| m["msg"] != text) {
        got.push(viewer.recv().await);
    }
    got
}

fn presence_of(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|m| m["ev"] == "join" || m["ev"] == "leave")
        .map(|m| {
            format!(
                "{} {}",
                m["user"]["name"].as_str().unwrap_or("?"),
                m["ev"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `GET /channels/room` until its `pubCount` is `n`.
async fn wait_pub_count(env: &Chatup, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = env.get("/channels/room", &[]).await.json();
        if answer["pubCount"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pubCount never {n}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_publisher_back_within_the_grace_neither_leaves_nor_joins() {
    let env = with_grace();
    let mut viewer = Subscriber::connect(&env, "/sub/room").await;
    let alice = Publisher::joined(&env, "alice", "room").await;
    let mut bob = Publisher::joined(&env, "bob", "room").await;
    bob.publish("room", "both here").await;
    assert_eq!(
        presence_of(&until_message(&mut viewer, "both here").await),
        ["alice join", "bob join"]
    );

    // Alice's page reloads: the connection drops and a new one joins.
    drop(alice);
    let _alice = Publisher::joined(&env, "alice", "room").await;
    // Past the first connection's grace, nothing was said about alice.
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 500)).await;
    bob.publish("room", "after the grace").await;
    let said = until_message(&mut viewer, "after the grace").await;
    assert_eq!(presence_of(&said), Vec::<String>::new(), "{said:?}");
    wait_pub_count(&env, 2).await;
}

#[tokio::test]
async fn a_publisher_not_back_leaves_when_the_grace_ends() {
    let env = with_grace();
    let mut viewer = Subscriber::connect(&env, "/sub/room").await;
    let alice = Publisher::joined(&env, "alice", "room").await;
    let mut bob = Publisher::joined(&env, "bob", "room").await;
    wait_pub_count(&env, 2).await;

    drop(alice);
    bob.publish("room", "right after").await;
    // The leave waits out the grace: the message sent right after the drop comes first,
    // and alice is still counted until the leave.
    let said = until_message(&mut viewer, "right after").await;
    assert_eq!(presence_of(&said), ["alice join", "bob join"], "{said:?}");
    let leave = viewer.recv().await;
    assert_eq!(
        (&leave["ev"], &leave["user"]["name"]),
        (&json!("leave"), &json!("alice")),
        "{leave}"
    );
    assert!(
        leave["t"].as_u64().is_some_and(|t| t > 0),
        "a leave has a time: {leave}"
    );
    wait_pub_count(&env, 1).await;
}

#[tokio::test]
async fn an_explicit_leave_is_announced_at_once_despite_the_grace() {
    let env = with_grace();
    let mut viewer = Subscriber::connect(&env, "/sub/room").await;
    let mut alice = Publisher::joined(&env, "alice", "room").await;
    let mut bob = Publisher::joined(&env, "bob", "room").await;
    let left = alice.request(json!({"leave": "room"})).await;
    assert_eq!(left["type"], "left", "{left}");
    bob.publish("room", "after the leave").await;
    let said = until_message(&mut viewer, "after the leave").await;
    assert_eq!(
        presence_of(&said),
        ["alice join", "bob join", "alice leave"],
        "{said:?}"
    );
}

#[test]
fn a_grace_over_a_minute_is_refused() {
    let out = std::process::Command::new(chatup_tests::env::sidecar_bin())
        .args(["--set", "presence.leave_grace_ms=60001", "config"])
        .output()
        .expect("run chatup-sidecar");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("`presence.leave_grace_ms`: must be from 0 to 60000"),
        "{text}"
    );
}
