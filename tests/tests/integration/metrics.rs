//! `GET /metrics` against real nginx workers and a real sidecar: connections, publishes,
//! refusals, deliveries counted by the nginx module, broker latency, and counters that do
//! not go back when the workers are replaced.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chatup_tests::http::{build_request, request};
use chatup_tests::token::token;
use chatup_tests::{Chatup, Options, Publisher, RedisServer, Subscriber, WAIT};
use serde_json::json;

/// The workers report about once a second; give them a few reports.
const REPORTS: Duration = Duration::from_secs(5);

/// One scrape, checked to be valid Prometheus text: every line is `# HELP name text`,
/// `# TYPE name type` or a sample `name{label="value",...} value` whose family had its
/// HELP and TYPE first.
pub(crate) struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    #[track_caller]
    fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad HELP line {line:?}"));
                assert!(!help.trim().is_empty(), "empty HELP: {line:?}");
                helped.insert(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                assert!(helped.contains(name), "TYPE without HELP first: {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown type: {line:?}"
                );
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line:?}");
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not `name value`: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, Some(labels)),
                None => (series, None),
            };
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            if let Some(labels) = labels {
                let inner = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for pair in inner.split(',') {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    assert!(
                        !key.is_empty()
                            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name in {line:?}"
                    );
                    assert!(
                        value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                        "unquoted label value in {line:?}"
                    );
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            assert!(
                types.contains_key(family),
                "sample before its HELP and TYPE: {line:?}"
            );
            samples.insert(series.to_owned(), value);
        }
        Self { samples, types }
    }

    /// A sample's value; 0 when the series is not there yet (a label value never counted).
    pub(crate) fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// Scrapes the sidecar directly, without a token.
pub(crate) async fn scrape(env: &Chatup) -> Scrape {
    let resp = request(
        env.sidecar_addr(),
        &build_request("GET", "/metrics", &[], None),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "Content-Type {content_type:?}"
    );
    Scrape::parse(&resp.text())
}

/// Scrapes until `done` accepts one, or fails saying `what` after `within`.
async fn scrape_until(
    env: &Chatup,
    within: Duration,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(env).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}; last scrape:\n{:#?}",
            s.samples
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PUBLISHED_MSG: &str = r#"chatup_messages_published_total{kind="msg"}"#;
const DELIVERED_LIVE: &str = r#"chatup_messages_delivered_total{source="live"}"#;
const REJECTED_TOO_LONG: &str = r#"chatup_publishes_rejected_total{reason="too_long"}"#;
const REJECTED_BAD_TOKEN: &str = r#"chatup_publishes_rejected_total{reason="bad_token"}"#;
const PUBLISH_LATENCY_COUNT: &str = r#"chatup_broker_publish_seconds_count{broker="memory"}"#;

#[tokio::test]
async fn metrics_count_connections_publishes_deliveries_and_refusals() {
    let env = Chatup::start();
    let before = scrape(&env).await;
    for (name, kind) in [
        ("chatup_subscribers", "gauge"),
        ("chatup_publisher_sessions", "gauge"),
        ("chatup_relay_workers", "gauge"),
        ("chatup_messages_published_total", "counter"),
        ("chatup_messages_delivered_total", "counter"),
        ("chatup_broker_publish_seconds", "histogram"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name} is not a {kind}"
        );
    }
    assert_eq!(before.get("chatup_subscribers"), 0.0);
    assert_eq!(before.get("chatup_publisher_sessions"), 0.0);
    // Both nginx workers are connected to the relay.
    scrape_until(&env, WAIT, "2 relay workers", |s| {
        s.get("chatup_relay_workers") == 2.0
    })
    .await;

    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(Subscriber::connect(&env, "/sub/metered").await);
    }
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    let connected = scrape_until(&env, REPORTS, "3 subscribers and 1 publisher", |s| {
        s.get("chatup_subscribers") == 3.0 && s.get("chatup_publisher_sessions") == 1.0
    })
    .await;

    for i in 1..=5 {
        publisher.publish("metered", &format!("m{i}")).await;
    }
    let too_long = publisher
        .request(json!({"ch": "metered", "msg": "x".repeat(1001)}))
        .await;
    assert_eq!(too_long["code"], "too_long", "{too_long}");
    let refused = env.post_text("metered", "not-a-token", b"hello").await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("bad_token"));
    for sub in &mut subs {
        let got = sub.recv_n(5).await;
        assert_eq!(got[4]["msg"], "m5");
    }

    let base = connected.get(DELIVERED_LIVE);
    let after = scrape_until(&env, REPORTS, "15 deliveries reported", |s| {
        s.get(DELIVERED_LIVE) - base >= 15.0
    })
    .await;
    let delta = |series: &str| after.get(series) - before.get(series);
    assert_eq!(delta(PUBLISHED_MSG), 5.0);
    assert_eq!(delta(DELIVERED_LIVE), 15.0, "5 messages × 3 subscribers");
    assert_eq!(
        delta(r#"chatup_messages_delivered_total{source="replay"}"#),
        0.0,
        "the channel was empty when they subscribed"
    );
    assert_eq!(delta(REJECTED_TOO_LONG), 1.0);
    assert_eq!(delta(REJECTED_BAD_TOKEN), 1.0);
    assert!(
        delta(PUBLISH_LATENCY_COUNT) >= 5.0,
        "broker publishes timed: {}",
        delta(PUBLISH_LATENCY_COUNT)
    );
    assert!(
        delta(r#"chatup_relay_messages_sent_total{via="live"}"#) >= 5.0,
        "the relay sent the messages to the workers"
    );
    assert_eq!(after.get("chatup_subscribers"), 3.0);
    assert_eq!(after.get("chatup_publisher_sessions"), 1.0);

    // A late subscriber gets the 5 from its worker's cache, or from the sidecar's history
    // when its worker had none of them: replayed either way.
    let mut late = Subscriber::connect(&env, "/sub/metered").await;
    assert_eq!(late.recv_n(5).await.len(), 5);
    let replay = r#"chatup_messages_delivered_total{source="replay"}"#;
    scrape_until(&env, REPORTS, "5 replays reported", |s| {
        s.get(replay) - before.get(replay) == 5.0
    })
    .await;

    // Everyone leaves: the gauges go back to zero, the counters stay.
    drop(subs);
    drop(late);
    drop(publisher);
    let gone = scrape_until(&env, REPORTS, "no connections left", |s| {
        s.get("chatup_subscribers") == 0.0 && s.get("chatup_publisher_sessions") == 0.0
    })
    .await;
    assert_eq!(gone.get(DELIVERED_LIVE), after.get(DELIVERED_LIVE));
}

#[tokio::test]
async fn deliveries_stay_counted_when_the_workers_are_replaced() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/reload").await;
    // The worker subscribes to the channel after the upgrade: messages published before the
    // sidecar has that subscription reach the viewer as the backlog (replay), not live.
    scrape_until(&env, REPORTS, "the worker's subscription", |s| {
        s.get(r#"chatup_broker_read_seconds_count{broker="memory",op="subscribe"}"#) >= 1.0
    })
    .await;
    for i in 1..=4 {
        env.publish("reload", &format!("m{i}")).await;
    }
    assert_eq!(sub.recv_n(4).await.len(), 4);
    let counted = scrape_until(&env, REPORTS, "4 deliveries reported", |s| {
        s.get(DELIVERED_LIVE) == 4.0
    })
    .await;
    assert_eq!(counted.get(PUBLISHED_MSG), 4.0);

    // New workers replace the old ones, which exit and close their relay connections.
    let old = env.reload();
    assert!(env.wait_gone(&old, WAIT * 2), "old workers did not exit");
    let replaced = scrape_until(&env, REPORTS, "2 new relay workers", |s| {
        s.get("chatup_relay_workers") == 2.0
    })
    .await;
    assert!(
        replaced.get(r#"chatup_relay_disconnects_total{reason="closed"}"#) >= 2.0,
        "the old workers' connections ended"
    );
    assert_eq!(
        replaced.get(DELIVERED_LIVE),
        4.0,
        "what the old workers reported is still counted"
    );

    // The subscriber was told to move (1001); the new workers count from there on.
    let (code, _) = sub.expect_close(WAIT).await;
    assert_eq!(code, Some(1001));
    let mut sub = Subscriber::connect(&env, "/sub/reload").await;
    sub.recv_n(4).await;
    env.publish("reload", "m5").await;
    sub.recv_n(1).await;
    scrape_until(&env, REPORTS, "the new worker's delivery", |s| {
        s.get(DELIVERED_LIVE) == 5.0
    })
    .await;
}

#[tokio::test]
async fn with_redis_the_broker_is_timed_and_lost_pubsub_connections_are_counted() {
    let mut redis = RedisServer::start();
    let env = Chatup::start_with(Options::default().redis(&redis.url()));
    // A viewer makes the sidecar subscribe in Redis, so it holds a pub/sub connection.
    let mut sub = Subscriber::connect(&env, "/sub/redis").await;
    env.publish("redis", "one").await;
    sub.recv_n(1).await;
    let before = scrape(&env).await;
    assert!(before.get(r#"chatup_broker_publish_seconds_count{broker="redis"}"#) >= 1.0);
    assert!(
        before.get(r#"chatup_broker_read_seconds_count{broker="redis",op="subscribe"}"#) >= 1.0
    );
    assert_eq!(
        before.get(r#"chatup_broker_publish_seconds_count{broker="memory"}"#),
        0.0
    );
    assert_eq!(before.get("chatup_redis_pubsub_disconnects_total"), 0.0);

    redis.restart();
    scrape_until(&env, WAIT * 2, "the lost pub/sub connection counted", |s| {
        s.get("chatup_redis_pubsub_disconnects_total") >= 1.0
    })
    .await;
}
