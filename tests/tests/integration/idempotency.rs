//! Publishing through a Redis stall: an `unavailable` answer leaves the outcome unknown (the
//! command still waits in the connection and runs once Redis answers again), and a retry
//! with the same idempotency key gets the first attempt's id instead of publishing twice.

use std::time::Duration;

use chatup_tests::http::{build_request, try_request};
use chatup_tests::token::token;
use chatup_tests::{Chatup, Options, Publisher, RedisServer, Subscriber, WAIT};
use serde_json::{json, Value};

/// How long Redis stays frozen: several times `redis.timeout_ms`, so attempts time out
/// again and again before it comes back.
const FROZEN: Duration = Duration::from_secs(5);

/// One host on `redis`, no plugins (the `ban` check would also wait on Redis and answer
/// before the publish is tried), publishes timing out after 1 s.
fn host(redis: &RedisServer) -> Chatup {
    Chatup::start_with(
        Options::default()
            .redis(&redis.url())
            .plugins(&[])
            .sidecar_set("redis.timeout_ms=1000"),
    )
}

/// Subscribes to `ch` and waits until a message published now reaches it, so the
/// subscription is in place in Redis before the test goes on.
async fn subscribed(env: &Chatup, ch: &str) -> Subscriber {
    let mut sub = Subscriber::connect(env, &format!("/sub/{ch}")).await;
    let ack = env.publish(ch, "ready").await;
    let first = sub.recv().await;
    assert_eq!((&first["id"], &first["msg"]), (&ack["id"], &json!("ready")));
    sub
}

/// The chat messages `sub` receives up to and including the one saying `last`.
async fn messages_until(sub: &mut Subscriber, last: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let m = sub.recv().await;
        if m.get("msg").is_none() {
            continue; // A resync or presence event.
        }
        let done = m["msg"] == last;
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn post_publish_retried_with_its_key_through_a_redis_freeze_is_delivered_once() {
    const N: usize = 4;
    let redis = RedisServer::start();
    let env = host(&redis);
    let mut sub = subscribed(&env, "frozen").await;
    let bearer = format!("Bearer {}", token("alice"));

    let frozen = redis.freeze();
    let thaw = tokio::spawn(async move {
        tokio::time::sleep(FROZEN).await;
        frozen.thaw();
    });

    // Each message is retried, with its key, on every 503 and every timeout until it is
    // answered 200; then the next one goes.
    let mut answers: Vec<Value> = Vec::new();
    let mut unknown = 0;
    for i in 1..=N {
        let key = format!("3f2b8c1e-{i:04}-4c1a-9a57-idem-test");
        let text = format!("m{i}");
        let request = build_request(
            "POST",
            "/pub/frozen",
            &[
                ("Authorization", bearer.as_str()),
                ("Content-Type", "text/plain"),
                ("Idempotency-Key", key.as_str()),
            ],
            Some(text.as_bytes()),
        );
        let deadline = tokio::time::Instant::now() + FROZEN + WAIT * 2;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text} was never answered 200"
            );
            match try_request(env.nginx_addr(), &request, WAIT).await {
                Ok(resp) if resp.status == 200 => {
                    answers.push(resp.json());
                    break;
                }
                Ok(resp) => {
                    assert_eq!(resp.status, 503, "{text}: {}", resp.text());
                    assert_eq!(resp.error_code().as_deref(), Some("unavailable"));
                    unknown += 1;
                }
                Err(_) => unknown += 1, // Timed out: the outcome is unknown too.
            }
        }
    }
    thaw.await.expect("the thaw task");
    assert!(unknown > 0, "Redis was frozen, yet no publish failed");
    // The first attempt of m1 waited in the connection and ran when Redis came back: the
    // answered retry is that message's, marked as a repeat.
    assert!(
        answers.iter().any(|a| a["duplicate"] == true),
        "no answer was a repeat: {answers:?}"
    );

    // A message without a key after them: anything published twice would come before it.
    env.publish("frozen", "end").await;
    let got = messages_until(&mut sub, "end").await;
    let texts: Vec<&str> = got.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    expected.push("end".into());
    assert_eq!(texts, expected, "each message once, in order");
    for (answer, delivered) in answers.iter().zip(&got) {
        assert_eq!(
            (&answer["id"], &answer["ep"]),
            (&delivered["id"], &delivered["ep"]),
            "the answer names the delivered message: {answer} {delivered}"
        );
    }
    // One key per message, on the channel's hash tag, expiring within the window (300 s).
    let keys = redis.keys("chatup:{frozen}:once:*");
    assert_eq!(keys.len(), N, "{keys:?}");
    for key in &keys {
        let ttl: i64 = redis.cli(&["TTL", key]).trim().parse().expect("a TTL");
        assert!((1..=300).contains(&ttl), "{key} expires in {ttl} s");
    }
}

#[tokio::test]
async fn websocket_publish_retried_with_its_key_after_unavailable_is_delivered_once() {
    let redis = RedisServer::start();
    let env = host(&redis);
    let mut sub = subscribed(&env, "wsfrozen").await;
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    let frame = |r: u64| json!({"ref": r, "ch": "wsfrozen", "msg": "w1", "key": "ws-key.1"});

    let frozen = redis.freeze();
    let refused = publisher.request(frame(1)).await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("unavailable")),
        "{refused}"
    );
    frozen.thaw();

    let ack = publisher.request(frame(2)).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["duplicate"], true, "the first attempt ran late: {ack}");
    // Another key is another message.
    let other = publisher
        .request(json!({"ref": 3, "ch": "wsfrozen", "msg": "w2", "key": "ws-key.2"}))
        .await;
    assert_eq!(
        (&other["type"], other.get("duplicate")),
        (&json!("ack"), None),
        "{other}"
    );

    let got = messages_until(&mut sub, "w2").await;
    let texts: Vec<&str> = got.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(texts, ["w1", "w2"]);
    assert_eq!((&ack["id"], &ack["ep"]), (&got[0]["id"], &got[0]["ep"]));
    assert_eq!(other["id"], got[1]["id"]);

    // A bad key is refused with its own code, and nothing is published.
    let bad = publisher
        .request(json!({"ref": 4, "ch": "wsfrozen", "msg": "x", "key": "not a key"}))
        .await;
    assert_eq!(bad["code"], "bad_idempotency_key", "{bad}");
}

#[tokio::test]
async fn post_publish_refuses_a_bad_idempotency_key_through_nginx() {
    let env = Chatup::start();
    let bearer = format!("Bearer {}", token("alice"));
    for bad in ["", "with space", &"k".repeat(65), "{tag}"] {
        let resp = env
            .post(
                "/pub/room",
                &[("Authorization", bearer.as_str()), ("Idempotency-Key", bad)],
                b"hi",
            )
            .await;
        assert_eq!(resp.status, 400, "{bad:?}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("bad_idempotency_key"));
    }
    // A good key on the memory broker: the retry is a repeat too.
    let post = |text: &'static str| {
        let bearer = bearer.clone();
        let env = &env;
        async move {
            env.post(
                "/pub/room",
                &[
                    ("Authorization", bearer.as_str()),
                    ("Idempotency-Key", "order-42"),
                ],
                text.as_bytes(),
            )
            .await
            .json()
        }
    };
    let first = post("hi").await;
    let again = post("hi").await;
    assert_eq!(first.get("duplicate"), None, "{first}");
    assert_eq!(
        again,
        json!({"ch": "room", "id": first["id"], "ep": first["ep"], "duplicate": true})
    );
}
