//! Metrics for Prometheus, served by the admin API as `GET /metrics` (text format 0.0.4).
//!
//! One [`Metrics`] is made at start ([`crate::server`]) and handed to what counts:
//!
//! * the [`Publisher`](crate::host::publish::Publisher) counts messages published (`msg`,
//!   `event`), withheld and refused (by error code, including the token refusals of the
//!   publisher endpoints);
//! * every user of the broker gets its own [`Metrics::metered`] handle, which times broker
//!   calls and, for presence events and the admin API, counts what they publish;
//! * what already exists elsewhere is read at scrape time rather than copied: its owner
//!   registers it with [`Metrics::read_gauge`], [`Metrics::read_counter`] or
//!   [`Metrics::read_counters`] (the chat host's subscriber counts, delivery totals and
//!   relay traffic as the nginx workers report them, in `host/relay/nginx_workers.rs`;
//!   its publisher sessions, in `host/presence.rs`), and the Redis pub/sub disconnects
//!   come through [`Metrics::watch_redis`]. Nothing has to be kept in sync by hand.
//!
//! Every metric is listed in the README ("Metrics"); a test checks that the two agree.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chatup_wire::Position;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::broker::{
    Backlog, Broker, BrokerError, Guard, Guarded, History, Once, Publication, Published, Stopped,
    Subscriber, SubscriberId,
};
use crate::message::Tail;
use crate::publish_error::ErrorCode;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Upper bounds of the broker latency buckets, in seconds: the memory broker answers in
/// microseconds, Redis in a fraction of a millisecond, a failing Redis after its timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What published a message, the `kind` label of `chatup_messages_published_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedKind {
    /// A publisher's chat message.
    Msg,
    /// A publisher's event.
    Event,
    /// A presence `join` or `leave` event.
    Presence,
    /// A message or event posted through the admin API.
    Admin,
}

impl PublishedKind {
    const ALL: [Self; 4] = [Self::Msg, Self::Event, Self::Presence, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Msg => "msg",
            Self::Event => "event",
            Self::Presence => "presence",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metric {name}: {source}")]
    Setup {
        name: &'static str,
        source: prometheus::Error,
    },
    #[error("cannot encode the metrics: {0}")]
    Encode(prometheus::Error),
}

/// The sidecar's metrics: the registry a scrape reads, and the collectors that are counted
/// as things happen.
pub struct Metrics {
    /// Every collector, event-counted or read at scrape time.
    registry: Registry,
    /// `chatup_messages_published_total{kind}`: messages that got an id and went out.
    published: IntCounterVec,
    /// `chatup_messages_withheld_total`: accepted, but kept from the channel by a plugin.
    withheld: IntCounter,
    /// `chatup_publishes_rejected_total{reason}`: refused publishes by error code.
    rejected: IntCounterVec,
    /// `chatup_broker_publish_seconds{broker}`: how long `Broker::publish` took.
    broker_publish: HistogramVec,
    /// `chatup_broker_read_seconds{broker,op}`: how long history reads took (`history` for
    /// pages, `subscribe` for a relay subscription and its backlog).
    broker_read: HistogramVec,
}

impl Metrics {
    /// The metrics counted as things happen; the ones read from live state are added with
    /// the `read_*` and `watch_*` methods once their sources exist.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let published = IntCounterVec::new(
            Opts::new(
                "chatup_messages_published_total",
                "Messages published (given an id and broadcast) through this sidecar, by \
                 what published them: msg, event, presence, admin.",
            ),
            &["kind"],
        );
        let published = register(&registry, "chatup_messages_published_total", published)?;
        for kind in PublishedKind::ALL {
            published.with_label_values(&[kind.as_str()]);
        }
        let withheld = IntCounter::new(
            "chatup_messages_withheld_total",
            "Messages accepted but kept from their channel by a plugin.",
        );
        let withheld = register(&registry, "chatup_messages_withheld_total", withheld)?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "chatup_publishes_rejected_total",
                "Publishes refused, by the error code the publisher got (bad_token, too_long, \
                 banned, rate_limited, unavailable, ...).",
            ),
            &["reason"],
        );
        let rejected = register(&registry, "chatup_publishes_rejected_total", rejected)?;
        let broker_publish = HistogramVec::new(
            HistogramOpts::new(
                "chatup_broker_publish_seconds",
                "Time the broker took to publish a message (id, history and fan-out).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["broker"],
        );
        let broker_publish = register(&registry, "chatup_broker_publish_seconds", broker_publish)?;
        let broker_read = HistogramVec::new(
            HistogramOpts::new(
                "chatup_broker_read_seconds",
                "Time the broker took to read history: op=history for pages (dispatcher, \
                 admin API), op=subscribe for a relay subscription and its backlog.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["broker", "op"],
        );
        let broker_read = register(&registry, "chatup_broker_read_seconds", broker_read)?;
        Ok(Self {
            registry,
            published,
            withheld,
            rejected,
            broker_publish,
            broker_read,
        })
    }

    /// Counts a message published by `kind`.
    pub fn published(&self, kind: PublishedKind) {
        self.published.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts a message a plugin withheld.
    pub fn withheld(&self) {
        self.withheld.inc();
    }

    /// Counts a refused publish.
    pub fn rejected(&self, code: ErrorCode) {
        self.rejected.with_label_values(&[code.as_str()]).inc();
    }

    /// `broker` as seen by one of its users: every call is timed, and with `kind` every
    /// successful publish is counted as published by that kind.
    pub fn metered(
        self: &Arc<Self>,
        broker: Arc<dyn Broker>,
        kind: Option<PublishedKind>,
    ) -> Arc<dyn Broker> {
        let name = broker.name();
        Arc::new(Metered {
            publish_seconds: self.broker_publish.with_label_values(&[name]),
            history_seconds: self.broker_read.with_label_values(&[name, "history"]),
            subscribe_seconds: self.broker_read.with_label_values(&[name, "subscribe"]),
            inner: broker,
            metrics: self.clone(),
            kind,
        })
    }

    /// Adds a gauge that `read` gives at each scrape, for a value its owner keeps anyway.
    pub fn read_gauge(
        &self,
        name: &'static str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        self.add(Pulled::single(name, help, MetricType::GAUGE, read))
    }

    /// Adds a counter that `read` gives at each scrape, for a count its owner keeps anyway.
    pub fn read_counter(
        &self,
        name: &'static str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        self.add(Pulled::single(name, help, MetricType::COUNTER, read))
    }

    /// Adds a counter with one label, whose samples (label value, count) `read` gives at
    /// each scrape.
    pub fn read_counters(
        &self,
        name: &'static str,
        help: &str,
        label: &'static str,
        read: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        self.add(Pulled::labelled(
            name,
            help,
            MetricType::COUNTER,
            label,
            read,
        ))
    }

    /// Adds the Redis broker's pub/sub disconnects, as `pubsub_disconnects` reads them
    /// (from [`RedisBroker::pubsub_disconnects`](crate::broker::redis::RedisBroker)).
    pub fn watch_redis(
        &self,
        pubsub_disconnects: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        self.add(Pulled::single(
            "chatup_redis_pubsub_disconnects_total",
            "Times the Redis pub/sub connection was lost (it reconnects and catches up from \
             history).",
            MetricType::COUNTER,
            pubsub_disconnects,
        ))
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }

    fn add(&self, pulled: Result<Pulled, MetricsError>) -> Result<(), MetricsError> {
        let pulled = pulled?;
        let name = pulled.name;
        self.registry
            .register(Box::new(pulled))
            .map_err(|source| MetricsError::Setup { name, source })
    }
}

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    collector: prometheus::Result<C>,
) -> Result<C, MetricsError> {
    let setup = |source| MetricsError::Setup { name, source };
    let collector = collector.map_err(setup)?;
    registry
        .register(Box::new(collector.clone()))
        .map_err(setup)?;
    Ok(collector)
}

/// A metric family read from state kept elsewhere, at each scrape.
struct Pulled {
    name: &'static str,
    desc: Desc,
    kind: MetricType,
    /// The one variable label, if any.
    label: Option<&'static str>,
    /// The samples: label value (ignored without a label) and value.
    read: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>,
}

impl Pulled {
    fn single(
        name: &'static str,
        help: &str,
        kind: MetricType,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<Self, MetricsError> {
        Self::new(name, help, kind, None, Box::new(move || vec![("", read())]))
    }

    fn labelled(
        name: &'static str,
        help: &str,
        kind: MetricType,
        label: &'static str,
        read: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) -> Result<Self, MetricsError> {
        Self::new(name, help, kind, Some(label), Box::new(read))
    }

    fn new(
        name: &'static str,
        help: &str,
        kind: MetricType,
        label: Option<&'static str>,
        read: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>,
    ) -> Result<Self, MetricsError> {
        let labels = label.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels, HashMap::new())
            .map_err(|source| MetricsError::Setup { name, source })?;
        Ok(Self {
            name,
            desc,
            kind,
            label,
            read,
        })
    }
}

impl Collector for Pulled {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics = (self.read)()
            .into_iter()
            .map(|(label_value, value)| {
                let mut metric = proto::Metric::default();
                if let Some(label) = self.label {
                    let mut pair = LabelPair::default();
                    pair.set_name(label.into());
                    pair.set_value(label_value.into());
                    metric.set_label(vec![pair]);
                }
                // Counts stay far below 2^53, where f64 is still exact.
                let value = value as f64;
                match self.kind {
                    MetricType::COUNTER => {
                        let mut counter = proto::Counter::default();
                        counter.set_value(value);
                        metric.set_counter(counter);
                    }
                    _ => {
                        let mut gauge = proto::Gauge::default();
                        gauge.set_value(value);
                        metric.set_gauge(gauge);
                    }
                }
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family.set_metric(metrics);
        vec![family]
    }
}

/// A broker handle that times every call and may count what it publishes.
struct Metered {
    /// The broker itself.
    inner: Arc<dyn Broker>,
    /// For the published count.
    metrics: Arc<Metrics>,
    /// What a successful publish through this handle counts as; `None` when the caller
    /// counts (the publisher knows msg from event) or never publishes (the relay).
    kind: Option<PublishedKind>,
    /// The histograms of this broker, labels resolved once.
    publish_seconds: Histogram,
    history_seconds: Histogram,
    subscribe_seconds: Histogram,
}

#[async_trait]
impl Broker for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn publish(&self, channel: &str, tail: &Tail) -> Result<Published, BrokerError> {
        let started = Instant::now();
        let result = self.inner.publish(channel, tail).await;
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Ok(_), Some(kind)) = (&result, self.kind) {
            self.metrics.published(kind);
        }
        result
    }

    async fn publish_once(
        &self,
        channel: &str,
        tail: &Tail,
        once: &Once,
    ) -> Result<Publication, BrokerError> {
        let started = Instant::now();
        let result = self.inner.publish_once(channel, tail, once).await;
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Ok(Publication::New(_)), Some(kind)) = (&result, self.kind) {
            self.metrics.published(kind);
        }
        result
    }

    fn applies_guards(&self) -> bool {
        self.inner.applies_guards()
    }

    async fn publish_guarded(
        &self,
        channel: &str,
        tail: &Tail,
        once: Option<&Once>,
        guards: &[Guard],
    ) -> Result<Guarded, BrokerError> {
        let started = Instant::now();
        let result = self
            .inner
            .publish_guarded(channel, tail, once, guards)
            .await;
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Ok(Guarded::Passed(Publication::New(_))), Some(kind)) = (&result, self.kind) {
            self.metrics.published(kind);
        }
        result
    }

    /// Not timed: no message is published.
    async fn check_guards(
        &self,
        channel: &str,
        guards: &[Guard],
    ) -> Result<Option<Stopped>, BrokerError> {
        self.inner.check_guards(channel, guards).await
    }

    async fn subscribe(
        &self,
        channel: &str,
        want: u32,
        since: Option<Position>,
        subscriber: &Subscriber,
    ) -> Result<Backlog, BrokerError> {
        let started = Instant::now();
        let result = self.inner.subscribe(channel, want, since, subscriber).await;
        self.subscribe_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn unsubscribe(&self, channel: &str, subscriber: SubscriberId) {
        self.inner.unsubscribe(channel, subscriber).await
    }

    async fn history(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let started = Instant::now();
        let result = self.inner.history(channel, before, limit).await;
        self.history_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::host::presence::{Presence, Session};
    use crate::host::publish::Publisher;
    use crate::host::relay::NginxWorkers;
    use crate::jwt::Identity;
    use crate::message::Body;
    use crate::plugins::Chain;
    use crate::test_support::{good_claims, sign, verifier};

    /// A scrape, checked line by line: every line is `# HELP name text`, `# TYPE name type`
    /// or a sample `name{label="value",...} number` of a family whose HELP and TYPE came
    /// before it.
    struct Scrape {
        /// Sample values by `name{labels}` as written.
        samples: HashMap<String, f64>,
        /// Family name → type.
        types: HashMap<String, String>,
    }

    impl Scrape {
        fn parse(text: &str) -> Self {
            let mut samples = HashMap::new();
            let mut types = HashMap::new();
            let mut helped = BTreeSet::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').expect("HELP name text");
                    assert!(!help.is_empty(), "empty HELP for {name}");
                    helped.insert(name.to_owned());
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                    assert!(helped.contains(name), "TYPE before HELP: {line}");
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    types.insert(name.to_owned(), kind.to_owned());
                } else {
                    let (series, value) = line.rsplit_once(' ').expect("name value");
                    let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                    let name = series.split('{').next().unwrap();
                    assert!(
                        name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                        "{line}"
                    );
                    if let Some(labels) = series.strip_prefix(name) {
                        if !labels.is_empty() {
                            let inner = labels
                                .strip_prefix('{')
                                .and_then(|l| l.strip_suffix('}'))
                                .unwrap_or_else(|| panic!("labels of {line}"));
                            for pair in inner.split(',') {
                                let (key, value) = pair.split_once('=').unwrap();
                                assert!(key.chars().all(|c| c.is_ascii_lowercase()), "{line}");
                                assert!(value.starts_with('"') && value.ends_with('"'), "{line}");
                            }
                        }
                    }
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| {
                            let base = name.strip_suffix(suffix)?;
                            (types.get(base)? == "histogram").then_some(base)
                        })
                        .unwrap_or(name);
                    assert!(types.contains_key(family), "no TYPE before {line}");
                    samples.insert(series.to_owned(), value);
                }
            }
            Self { samples, types }
        }

        #[track_caller]
        fn value(&self, series: &str) -> f64 {
            *self
                .samples
                .get(series)
                .unwrap_or_else(|| panic!("no sample {series}"))
        }
    }

    fn identity(events: bool) -> Identity {
        let mut claims = good_claims();
        claims["_events"] = json!(events);
        verifier().verify(&sign(&claims)).unwrap()
    }

    fn memory() -> Arc<dyn Broker> {
        MemoryBroker::new(MemoryOptions {
            history_size: 10,
            ttl: Duration::from_secs(60),
        })
    }

    /// Metrics with every source attached and one of everything counted; the session keeps
    /// a publisher connected.
    async fn everything() -> (Arc<Metrics>, Session) {
        let metrics = Arc::new(Metrics::new().unwrap());
        Arc::new(NginxWorkers::default())
            .register_metrics(&metrics)
            .unwrap();
        let (presence, _) = Presence::new(false);
        presence.register_metrics(&metrics).unwrap();
        metrics.watch_redis(|| 3).unwrap();
        let session = presence.connect(&identity(false));

        let admin = metrics.metered(memory(), Some(PublishedKind::Admin));
        let tail = Tail::encode(1, "{}", &Body::Text("hi".into())).unwrap();
        admin.publish("room", &tail).await.unwrap();
        admin.history("room", None, 10).await.unwrap();
        metrics.rejected(ErrorCode::TooLong);
        metrics.withheld();
        (metrics, session)
    }

    #[tokio::test]
    async fn every_metric_has_help_type_and_its_labels() {
        let (metrics, _session) = everything().await;
        let scrape = Scrape::parse(&metrics.render().unwrap());
        let types = |kind: &str| {
            let mut names: Vec<&str> = scrape
                .types
                .iter()
                .filter(|(_, t)| *t == kind)
                .map(|(n, _)| n.as_str())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            types("gauge"),
            [
                "chatup_publisher_sessions",
                "chatup_relay_workers",
                "chatup_subscribers"
            ]
        );
        assert_eq!(
            types("histogram"),
            [
                "chatup_broker_publish_seconds",
                "chatup_broker_read_seconds"
            ]
        );
        assert!(types("counter").iter().all(|n| n.ends_with("_total")));

        assert_eq!(
            scrape.value(r#"chatup_messages_published_total{kind="admin"}"#),
            1.0
        );
        for kind in ["msg", "event", "presence"] {
            let series = format!(r#"chatup_messages_published_total{{kind="{kind}"}}"#);
            assert_eq!(
                scrape.value(&series),
                0.0,
                "{kind} is there before it counts"
            );
        }
        assert_eq!(
            scrape.value(r#"chatup_publishes_rejected_total{reason="too_long"}"#),
            1.0
        );
        assert_eq!(scrape.value("chatup_messages_withheld_total"), 1.0);
        assert_eq!(scrape.value("chatup_publisher_sessions"), 1.0);
        assert_eq!(scrape.value("chatup_subscribers"), 0.0);
        assert_eq!(scrape.value("chatup_relay_workers"), 0.0);
        for source in ["live", "replay"] {
            let series = format!(r#"chatup_messages_delivered_total{{source="{source}"}}"#);
            assert_eq!(scrape.value(&series), 0.0);
        }
        assert_eq!(scrape.value("chatup_slow_subscriber_closes_total"), 0.0);
        assert_eq!(
            scrape.value(r#"chatup_relay_disconnects_total{reason="overflow"}"#),
            0.0
        );
        assert_eq!(
            scrape.value(r#"chatup_relay_messages_sent_total{via="backlog"}"#),
            0.0
        );
        assert_eq!(scrape.value("chatup_redis_pubsub_disconnects_total"), 3.0);
        assert_eq!(
            scrape.value(r#"chatup_broker_publish_seconds_count{broker="memory"}"#),
            1.0
        );
        assert_eq!(
            scrape.value(r#"chatup_broker_publish_seconds_bucket{broker="memory",le="+Inf"}"#),
            1.0
        );
        assert_eq!(
            scrape.value(r#"chatup_broker_read_seconds_count{broker="memory",op="history"}"#),
            1.0
        );
        assert_eq!(
            scrape.value(r#"chatup_broker_read_seconds_count{broker="memory",op="subscribe"}"#),
            0.0
        );
    }

    #[tokio::test]
    async fn the_publisher_counts_what_it_publishes_and_refuses() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let publisher = Publisher::new(
            metrics.metered(memory(), None),
            Arc::new(verifier()),
            crate::test_support::TIGHT_LIMITS,
            Chain::default(),
        )
        .with_metrics(metrics.clone());
        let id = identity(true);
        for text in ["a", "b", "toolong"] {
            let _ = publisher.publish(&id, "r", Body::Text(text.into())).await;
        }
        let event = Body::Event {
            name: "typing".into(),
            data: None,
        };
        publisher.publish(&id, "r", event).await.unwrap();
        let _ = publisher
            .publish(&id, "bad name", Body::Text("x".into()))
            .await;
        publisher.count_refusal(ErrorCode::BadToken);

        let scrape = Scrape::parse(&metrics.render().unwrap());
        let published = |kind: &str| {
            scrape.value(&format!(
                r#"chatup_messages_published_total{{kind="{kind}"}}"#
            ))
        };
        assert_eq!(published("msg"), 2.0);
        assert_eq!(published("event"), 1.0);
        assert_eq!(
            published("admin"),
            0.0,
            "the publisher's broker counts nothing itself"
        );
        let rejected = |reason: &str| {
            scrape.value(&format!(
                r#"chatup_publishes_rejected_total{{reason="{reason}"}}"#
            ))
        };
        assert_eq!(rejected("too_long"), 1.0);
        assert_eq!(rejected("bad_channel"), 1.0);
        assert_eq!(rejected("bad_token"), 1.0);
        assert_eq!(
            scrape.value(r#"chatup_broker_publish_seconds_count{broker="memory"}"#),
            3.0,
            "only publishes that passed the checks reach the broker"
        );
    }

    #[tokio::test]
    async fn the_readme_lists_exactly_the_metrics_there_are() {
        let (metrics, _session) = everything().await;
        let scrape = Scrape::parse(&metrics.render().unwrap());
        let registered: BTreeSet<&str> = scrape.types.keys().map(String::as_str).collect();

        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let start = readme
            .find("\n### Metrics\n")
            .expect("README.md has a \"### Metrics\" section");
        let section = &readme[start + 1..];
        let end = section[4..].find("\n#").map_or(section.len(), |at| at + 4);
        let section = &section[..end];
        let listed: BTreeSet<&str> = section
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|code| {
                let name = code.split(['{', ' ']).next()?;
                name.starts_with("chatup_").then_some(name)
            })
            .collect();
        assert_eq!(
            listed, registered,
            "README.md's Metrics section and the code differ"
        );
    }
}
