//! The dispatcher against real hosts: load-based choice, dead and excluded hosts, counts
//! across hosts, and presence events crossing hosts.

use std::time::{Duration, Instant};

use chatup_tests::token::token;
use chatup_tests::{Chatup, Dispatcher, Event, Options, Publisher, RedisServer, Subscriber};
use chatup_tests::{HttpResponse, WAIT};
use serde_json::{json, Value};

fn host(address: &str, id: &str, redis: &str) -> Chatup {
    Chatup::start_with(Options::host_on_redis(address, id, redis))
}

/// Asks until `check` accepts the answer, or fails after `within`.
async fn join_until(
    dispatcher: &Dispatcher,
    channel: &str,
    body: Option<&Value>,
    within: Duration,
    what: &str,
    check: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = Instant::now() + within;
    loop {
        let resp = dispatcher.join(channel, body).await;
        if check(&resp) {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {} {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn host_id(resp: &HttpResponse) -> String {
    resp.json()["host"]["id"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn joins_go_to_the_less_loaded_host_and_a_dead_host_drops_out() {
    let redis = RedisServer::start();
    let mut a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let dispatcher = Dispatcher::start(&redis.url());

    // 30 viewers on A: every join goes to B once A's load is reported.
    let mut viewers = Vec::new();
    for _ in 0..30 {
        viewers.push(Subscriber::connect(&a, "/sub/room").await);
    }
    let resp = join_until(&dispatcher, "room", None, WAIT, "B, the empty host", |r| {
        r.status == 200 && host_id(r) == "b" && r.json()["subCount"] == 30
    })
    .await;
    let body = resp.json();
    assert_eq!(body["host"]["url"], b.public_url());
    assert_eq!(
        body["host"]["sub"],
        format!("{}/sub/", b.public_url().replace("http://", "ws://"))
    );
    assert_eq!(body["channel"], "room");
    for _ in 0..5 {
        let resp = dispatcher.join("other", None).await;
        assert_eq!(host_id(&resp), "b", "{}", resp.text());
    }

    // Excluding B leaves A.
    let resp = dispatcher
        .join("room", Some(&json!({"exclude": ["b"]})))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(host_id(&resp), "a");
    // A client that could not reach A is sent to B.
    let resp = dispatcher.join("room", Some(&json!({"failed": "a"}))).await;
    assert_eq!(host_id(&resp), "b", "{}", resp.text());

    // A host killed without a word is gone within its expiry (3 s) plus a report.
    a.kill_host();
    let killed = Instant::now();
    join_until(
        &dispatcher,
        "room",
        Some(&json!({"exclude": "b"})),
        Duration::from_secs(5),
        "A must drop out after its death",
        |r| r.status == 503,
    )
    .await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= Duration::from_secs(4),
        "a dead host lingered {gone_after:?}"
    );
    let resp = dispatcher
        .join("room", Some(&json!({"exclude": "b"})))
        .await;
    assert_eq!(resp.json()["error"]["code"], "no_host", "{}", resp.text());
    // Without the exclusion B still answers, and the dead host's viewers no longer count.
    let resp = dispatcher.join("room", None).await;
    assert_eq!(host_id(&resp), "b");
    assert_eq!(resp.json()["subCount"], 0, "{}", resp.text());
    drop(viewers);
}

#[tokio::test]
async fn a_cleanly_stopped_host_leaves_at_once_and_no_host_is_a_clear_503() {
    let redis = RedisServer::start();
    let mut a = host("127.0.0.2", "a", &redis.url());
    let dispatcher = Dispatcher::start(&redis.url());
    join_until(&dispatcher, "room", None, WAIT, "A reported", |r| {
        r.status == 200 && host_id(r) == "a"
    })
    .await;
    a.stop_host();
    let stopped = Instant::now();
    let resp = join_until(
        &dispatcher,
        "room",
        None,
        Duration::from_secs(5),
        "A leaves",
        |r| r.status == 503,
    )
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "a clean stop removes the host at once, not after its expiry: {:?}",
        stopped.elapsed()
    );
    assert_eq!(resp.header("retry-after"), Some("1"));
    let err = &resp.json()["error"];
    assert_eq!(err["code"], "no_host");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("no live chat host"),
        "{err}"
    );
}

#[tokio::test]
async fn counts_and_history_span_hosts_and_presence_events_cross_them() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let dispatcher = Dispatcher::start(&redis.url());

    let mut viewer_b = Subscriber::connect(&b, "/sub/hall").await;
    let _viewer_a = Subscriber::connect(&a, "/sub/hall").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Alice joins on A (two tabs), Bob on B; Carol never joins.
    let mut alice1 = Publisher::connect_ok(&a, &token("alice")).await;
    let mut alice2 = Publisher::connect_ok(&a, &token("alice")).await;
    let mut bob = Publisher::connect_ok(&b, &token("bob")).await;
    let _carol = Publisher::connect_ok(&b, &token("carol")).await;
    for p in [&mut alice1, &mut alice2, &mut bob] {
        let reply = p.request(json!({"join": "hall"})).await;
        assert_eq!(reply["type"], "joined", "{reply}");
    }
    let said = alice1.publish("hall", "hello from A").await;

    // The viewer on B sees alice join once (two tabs, one user), bob join, then the text.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 3 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match viewer_b.next(left).await {
            Some(Event::Text(t)) => seen.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Event::Ping(_)) => {}
            other => panic!("viewer on B: {other:?} after {seen:?}"),
        }
    }
    let joins: Vec<&Value> = seen.iter().filter(|m| m["ev"] == "join").collect();
    assert_eq!(joins.len(), 2, "{seen:?}");
    let mut joined: Vec<&str> = joins
        .iter()
        .map(|m| m["user"]["name"].as_str().unwrap_or(""))
        .collect();
    joined.sort();
    assert_eq!(joined, ["alice", "bob"]);
    let position = |wanted: &dyn Fn(&Value) -> bool| seen.iter().position(wanted);
    let alice_joined = position(&|m| m["ev"] == "join" && m["user"]["name"] == "alice");
    let alice_said = position(&|m| m["msg"] == "hello from A");
    assert!(
        alice_joined < alice_said && alice_said.is_some(),
        "alice's join comes before what she says after joining: {seen:?}"
    );

    let resp = join_until(
        &dispatcher,
        "hall",
        None,
        WAIT,
        "counts over both hosts",
        |r| r.status == 200 && r.json()["subCount"] == 2 && r.json()["pubCount"] == 2,
    )
    .await;
    let history = resp.json()["history"].clone();
    let history = history.as_array().expect("history is a list");
    assert_eq!(
        history.last().map(|m| m["id"].clone()),
        Some(said["id"].clone()),
        "the history ends with the newest message: {history:?}"
    );
    assert!(history
        .windows(2)
        .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()));

    // Alice's first tab leaving is not a leave; the second is.
    drop(alice1);
    viewer_b.expect_no_message(Duration::from_millis(400)).await;
    drop(alice2);
    let leave = viewer_b.recv().await;
    assert_eq!(leave["ev"], "leave", "{leave}");
    assert_eq!(leave["user"]["name"], "alice");
    join_until(
        &dispatcher,
        "hall",
        None,
        WAIT,
        "alice gone from pubCount",
        |r| r.status == 200 && r.json()["pubCount"] == 1,
    )
    .await;
}
