//! The dispatcher: `POST /join/<ch>` picks the chat host a client should use for a channel.
//!
//! The optional JSON body names hosts to avoid, typically one the client just failed to
//! reach: `{"exclude": ["chat1:7001", ..]}` (a single string works too, and `failed` is an
//! alias of `exclude`). Among the live hosts of the [`Directory`] that are not excluded, the
//! one with the lowest score `subscribers + dispatch.publisher_weight × publishers` wins;
//! equal scores are broken at random, so idle hosts share new clients.
//!
//! Hosts report their load only every `host.report_interval_ms`, so between two reports
//! every client would go to the same host. To spread them, the dispatcher adds to each
//! host's score the clients it has sent there since the report it is looking at (one viewer
//! each); a newer report replaces that guess with the truth.
//!
//! The answer:
//!
//! ```json
//! {"host":{"id":"chat1:7001","url":"https://chat1.example.com",
//!          "sub":"wss://chat1.example.com/sub/","pub":"wss://chat1.example.com/pub",
//!          "post":"https://chat1.example.com/pub/"},
//!  "channel":"lobby","subCount":120,"pubCount":4,
//!  "history":[{"ch":"lobby","id":41,..},{"ch":"lobby","id":42,..}]}
//! ```
//!
//! `sub`, `pub` and `post` are where to append the channel (`sub`, `post`) or connect
//! (`pub`). When the host has no `public_url`, `url` is `""` and the three are bare paths,
//! to resolve against the dispatcher's own origin. `history` holds the channel's last
//! `dispatch.history` messages, oldest first, exactly as subscribers receive them; for a
//! private channel (`[private] channels`) it is always empty: its messages are for the
//! viewers the chat host admits.
//!
//! Errors are `{"error":{"code":..,"message":..}}`: 400 `bad_channel`, 400 `bad_request`
//! (malformed body), 503 `no_host` (no live host left after exclusions), 503 `unavailable`
//! (Redis or the broker cannot be reached); 503s carry `Retry-After: 1`.
//!
//! CORS (`dispatch.cors_origins`, [`crate::http::cors`]): empty sends no CORS header; `*`
//! allows any origin; otherwise a listed `Origin` is echoed, always with `Vary: Origin`.
//! `OPTIONS` answers the preflight of a POST with `Content-Type: application/json`.
//!
//! The same role serves the public channel counts and user lists browsers poll
//! (`GET /channels/<ch>`, [`crate::dispatcher::channels`]), with the same CORS rule.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chatup_wire::private::Policy;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, Instrument};

use crate::broker::{Broker, BrokerError};
use crate::cluster::registry::{ChannelCounts, Directory, HostEntry, RegistryError};
use crate::config::DispatchConfig;
use crate::dispatcher::channels::ChannelInfo;
use crate::http::channel::{BadChannelPath, ChannelPath};
use crate::http::error::ApiError;
use crate::jwt::OperatorTokens;

/// Largest request body read: a list of host ids (the route's body limit).
pub const MAX_BODY: usize = 16 * 1024;

/// `host.report_interval_ms`'s default, until [`Dispatcher::with_report_interval`] says.
const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Why a join could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The channel name breaks the shared rule.
    #[error("{0}")]
    BadChannel(String),
    /// The body is not what `/join` takes.
    #[error("{0}")]
    BadRequest(String),
    /// No live host is left once the excluded ones are taken out.
    #[error("{0}")]
    NoHost(String),
    /// The registry or the broker cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
    /// The channel is private and the caller is not the operator.
    #[error("{0}")]
    Private(String),
}

impl DispatchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadChannel(_) => "bad_channel",
            Self::BadRequest(_) => "bad_request",
            Self::NoHost(_) => "no_host",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::Private(_) => "private_channel",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadChannel(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoHost(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Private(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl From<DispatchError> for ApiError {
    /// A 503 says to retry in a second.
    fn from(e: DispatchError) -> Self {
        let error = ApiError::new(e.status(), e.code(), e.to_string());
        if e.status() == StatusCode::SERVICE_UNAVAILABLE {
            error.retry_after(1)
        } else {
            error
        }
    }
}

impl IntoResponse for DispatchError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<BadChannelPath> for DispatchError {
    fn from(e: BadChannelPath) -> Self {
        Self::BadChannel(match e {
            BadChannelPath::Unreadable(e) => format!("bad channel in the URL: {e}"),
            BadChannelPath::Invalid { channel, reason } => format!("channel {channel:?}: {reason}"),
        })
    }
}

impl From<RegistryError> for DispatchError {
    fn from(e: RegistryError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<BrokerError> for DispatchError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(_) => Self::Unavailable(e.to_string()),
            BrokerError::Internal(_) => Self::Internal(e.to_string()),
        }
    }
}

/// The clients this dispatcher sent to a host since the host's report it last scored.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// `written_ms` of that report.
    written_ms: u64,
    /// Clients sent since.
    clients: u64,
}

/// What `/join` needs.
pub struct Dispatcher {
    /// The live hosts and the channel counts.
    directory: Arc<dyn Directory>,
    /// The channel history for the answer.
    broker: Arc<dyn Broker>,
    /// `[dispatch]`: CORS origins, publisher weight, history length.
    config: DispatchConfig,
    /// Per host id, clients sent since its last report: spreads clients between reports.
    pending: Mutex<HashMap<String, Pending>>,
    /// The cached answers of `GET /channels/<ch>` and `/users`.
    channel_info: Arc<ChannelInfo>,
    /// Private channels: `/join` sends no history of them, and only the operator sees their
    /// users.
    private: Policy,
    /// Tells the operator's token, for the users of private channels.
    operators: Option<Arc<dyn OperatorTokens>>,
}

impl Dispatcher {
    pub fn new(
        directory: Arc<dyn Directory>,
        broker: Arc<dyn Broker>,
        config: DispatchConfig,
    ) -> Self {
        Self {
            channel_info: ChannelInfo::new(directory.clone(), DEFAULT_REPORT_INTERVAL),
            directory,
            broker,
            config,
            pending: Mutex::default(),
            private: Policy::default(),
            operators: None,
        }
    }

    /// Keeps private channels private: no history in `/join`, users only for `operators`.
    pub fn with_private(
        mut self,
        private: Policy,
        operators: Option<Arc<dyn OperatorTokens>>,
    ) -> Self {
        self.private = private;
        self.operators = operators;
        self
    }

    /// Whether `channel` is private.
    pub fn is_private(&self, channel: &str) -> bool {
        self.private.is_private(channel)
    }

    /// Whether `token` is the operator's.
    pub fn is_operator(&self, token: &str) -> bool {
        self.operators
            .as_ref()
            .is_some_and(|o| o.is_operator(token))
    }

    /// The directory (for the operator's uncached answers).
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    /// Serves the public channel answers fresh for `interval` (`host.report_interval_ms`):
    /// the counts they come from change no faster.
    pub fn with_report_interval(mut self, interval: Duration) -> Self {
        self.channel_info = ChannelInfo::new(self.directory.clone(), interval);
        self
    }

    /// The cached answers of the public channel endpoints.
    pub fn channel_info(&self) -> &Arc<ChannelInfo> {
        &self.channel_info
    }

    /// The directory's name, for the startup log.
    pub fn directory_name(&self) -> &'static str {
        self.directory.name()
    }

    /// Picks a host for a client among `hosts`, not one of `excluded`, and counts the
    /// client against it until its next report.
    fn pick(&self, hosts: &[HostEntry], excluded: &HashSet<String>) -> Option<HostEntry> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget hosts that are gone, so the map stays as small as the host list.
        pending.retain(|id, _| hosts.iter().any(|h| &h.id == id));
        let extra = |h: &HostEntry| {
            pending
                .get(&h.id)
                .filter(|p| p.written_ms == h.written_ms)
                .map_or(0, |p| p.clients)
        };
        let chosen = choose(hosts, excluded, self.config.publisher_weight, extra, |n| {
            use rand::Rng as _;
            rand::rng().random_range(0..n)
        })?
        .clone();
        let slot = pending.entry(chosen.id.clone()).or_insert(Pending {
            written_ms: chosen.written_ms,
            clients: 0,
        });
        if slot.written_ms != chosen.written_ms {
            *slot = Pending {
                written_ms: chosen.written_ms,
                clients: 0,
            };
        }
        slot.clients += 1;
        Some(chosen)
    }

    /// The whole answer to a join, as JSON bytes.
    async fn join(&self, channel: &str, body: &[u8]) -> Result<Vec<u8>, DispatchError> {
        chatup_wire::channel::validate(channel.as_bytes())
            .map_err(|e| DispatchError::BadChannel(e.to_string()))?;
        let excluded = parse_exclusions(body)?;
        let hosts = self.directory.hosts().await?;
        let Some(host) = self.pick(&hosts, &excluded) else {
            let message = if hosts.is_empty() {
                "no live chat host; try again shortly".to_owned()
            } else {
                format!(
                    "no live chat host other than the excluded ones ({} live, all excluded); \
                     try again shortly",
                    hosts.len()
                )
            };
            return Err(DispatchError::NoHost(message));
        };
        let history = async {
            // A private channel's messages are for admitted viewers only.
            if self.config.history == 0 || self.private.is_private(channel) {
                return Ok(Vec::new());
            }
            self.broker
                .history(channel, None, self.config.history)
                .await
                .map(|h| h.messages)
        };
        let (counts, history) =
            tokio::join!(self.directory.channel_counts(channel, &hosts), history);
        let (counts, history) = (counts?, history?);
        debug!(
            host = host.id,
            subscribers = host.subscribers,
            publishers = host.publishers,
            excluded = excluded.len(),
            "dispatched"
        );
        let payloads = history.iter().map(|e| e.payload.as_slice());
        answer(&host, channel, counts, payloads)
            .map_err(|e| DispatchError::Internal(format!("cannot encode the answer: {e}")))
    }

    /// `dispatch.cors_origins`, for the CORS layer of the routes.
    pub fn cors_origins(&self) -> &[String] {
        &self.config.cors_origins
    }
}

/// `POST /join/{channel}`.
pub async fn join(
    State(dispatcher): State<Arc<Dispatcher>>,
    channel: Result<ChannelPath<DispatchError>, DispatchError>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!("join", channel = tracing::field::Empty);
    if let Ok(ChannelPath(channel, ..)) = &channel {
        span.record("channel", channel.as_str());
    }
    let result = async {
        let body = body.map_err(|_| {
            DispatchError::BadRequest(format!("the request body is larger than {MAX_BODY} bytes"))
        })?;
        // After the body, as the name check of `Dispatcher::join` always was.
        let ChannelPath(channel, ..) = channel?;
        dispatcher.join(&channel, &body).await
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            span.in_scope(|| debug!(code = e.code(), "join refused: {e}"));
            e.into_response()
        }
    }
}

/// `OPTIONS /join/{channel}`, the CORS preflight: the CORS layer around the route
/// ([`crate::http::cors`]) answers it before this is reached; listed so the route shows it.
pub async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The host ids named in `{"exclude": ..}` / `{"failed": ..}`; an empty body names none.
pub fn parse_exclusions(body: &[u8]) -> Result<HashSet<String>, DispatchError> {
    let bad = |m: String| DispatchError::BadRequest(m);
    let mut excluded = HashSet::new();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(excluded);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not JSON ({e}); send {{\"exclude\": [\"<host id>\"]}} or nothing"
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(bad(
            "the body must be a JSON object like {\"exclude\": [\"<host id>\"]}".into(),
        ));
    };
    for key in ["exclude", "failed"] {
        match object.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) => {
                excluded.insert(id.clone());
            }
            Some(Value::Array(ids)) => {
                for id in ids {
                    let Value::String(id) = id else {
                        return Err(bad(format!("\"{key}\" must list host ids as strings")));
                    };
                    excluded.insert(id.clone());
                }
            }
            Some(_) => {
                return Err(bad(format!(
                    "\"{key}\" must be a host id or a list of host ids"
                )))
            }
        }
    }
    Ok(excluded)
}

/// A host's load score: viewers plus `weight` per publisher.
pub fn score(host: &HostEntry, publisher_weight: u64) -> u64 {
    host.subscribers
        .saturating_add(host.publishers.saturating_mul(publisher_weight))
}

/// The host with the lowest score plus `extra` among those not `excluded`; `tie` picks an
/// index below its argument among the equally good ones.
pub fn choose<'a>(
    hosts: &'a [HostEntry],
    excluded: &HashSet<String>,
    publisher_weight: u64,
    extra: impl Fn(&HostEntry) -> u64,
    tie: impl FnOnce(usize) -> usize,
) -> Option<&'a HostEntry> {
    let scored: Vec<(u64, &HostEntry)> = hosts
        .iter()
        .filter(|h| !excluded.contains(&h.id))
        .map(|h| (score(h, publisher_weight).saturating_add(extra(h)), h))
        .collect();
    let best = scored.iter().map(|(s, _)| *s).min()?;
    let mut ties: Vec<&HostEntry> = scored
        .into_iter()
        .filter(|(s, _)| *s == best)
        .map(|(_, h)| h)
        .collect();
    // Sorted, so that the same `tie` answer means the same host whatever the input order.
    ties.sort_by(|a, b| a.id.cmp(&b.id));
    let index = tie(ties.len()).min(ties.len() - 1);
    Some(ties[index])
}

/// Where a client reaches a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostUrls {
    pub id: String,
    /// `host.public_url`, or `""`.
    pub url: String,
    /// WebSocket URL of the subscriber endpoint; the channels follow it.
    pub sub: String,
    /// WebSocket URL of the publisher endpoint.
    #[serde(rename = "pub")]
    pub publish: String,
    /// HTTP URL to which `<ch>` is appended for `POST /pub/<ch>`.
    pub post: String,
}

impl HostUrls {
    pub fn of(host: &HostEntry) -> Self {
        let base = host.public_url.trim_end_matches('/');
        let post_path = format!("{}/", host.pub_path.trim_end_matches('/'));
        if base.is_empty() {
            return Self {
                id: host.id.clone(),
                url: String::new(),
                sub: host.sub_path.clone(),
                publish: host.pub_path.clone(),
                post: post_path,
            };
        }
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        Self {
            id: host.id.clone(),
            url: host.public_url.clone(),
            sub: format!("{ws_base}{}", host.sub_path),
            publish: format!("{ws_base}{}", host.pub_path),
            post: format!("{base}{post_path}"),
        }
    }
}

/// The answer without its history.
#[derive(Serialize)]
struct AnswerHead<'a> {
    host: HostUrls,
    channel: &'a str,
    #[serde(rename = "subCount")]
    sub_count: u64,
    #[serde(rename = "pubCount")]
    pub_count: u64,
}

/// The answer's JSON, with the history messages spliced in as the bytes they are.
fn answer<'a>(
    host: &HostEntry,
    channel: &str,
    counts: ChannelCounts,
    history: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, serde_json::Error> {
    let head = AnswerHead {
        host: HostUrls::of(host),
        channel,
        sub_count: counts.subscribers,
        pub_count: counts.publishers,
    };
    let mut out = serde_json::to_vec(&head)?;
    // Replace the closing brace with the history array.
    out.pop();
    out.extend_from_slice(b",\"history\":[");
    for (i, message) in history.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(id: &str, subscribers: u64, publishers: u64) -> HostEntry {
        HostEntry {
            id: id.into(),
            public_url: String::new(),
            sub_path: "/sub/".into(),
            pub_path: "/pub".into(),
            subscribers,
            publishers,
            written_ms: 1,
            instance: String::new(),
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn score_weighs_publishers() {
        assert_eq!(score(&host("a", 5, 2), 10), 25);
        assert_eq!(score(&host("a", 5, 2), 0), 5);
        assert_eq!(score(&host("a", u64::MAX, 2), 10), u64::MAX);
        assert_eq!(score(&host("a", 1, u64::MAX), 10), u64::MAX);
    }

    #[test]
    fn choose_takes_the_lowest_score_and_skips_the_excluded() {
        let hosts = [host("a", 100, 0), host("b", 30, 5), host("c", 60, 0)];
        // b: 30 + 50 = 80 > c: 60 with weight 10; b wins with weight 1.
        let pick = |excluded: &HashSet<String>, weight| {
            choose(&hosts, excluded, weight, |_| 0, |_| 0).map(|h| h.id.as_str())
        };
        assert_eq!(pick(&none(), 10), Some("c"));
        assert_eq!(pick(&none(), 1), Some("b"));
        assert_eq!(pick(&ids(&["c"]), 10), Some("b"));
        assert_eq!(pick(&ids(&["b", "c", "zz"]), 10), Some("a"));
        assert_eq!(pick(&ids(&["a", "b", "c"]), 10), None);
        assert_eq!(choose(&[], &none(), 10, |_| 0, |_| 0), None);
        // Extra load (clients sent since the last report) counts like viewers.
        let extra = |h: &HostEntry| if h.id == "c" { 50 } else { 0 };
        assert_eq!(
            choose(&hosts, &none(), 10, extra, |_| 0).map(|h| h.id.as_str()),
            Some("b")
        );
    }

    #[test]
    fn ties_are_among_the_equal_best_sorted_by_id() {
        let hosts = [host("c", 1, 0), host("a", 1, 0), host("b", 2, 0)];
        let mut offered = 0;
        let first = choose(
            &hosts,
            &none(),
            10,
            |_| 0,
            |n| {
                offered = n;
                0
            },
        );
        assert_eq!(offered, 2);
        assert_eq!(first.map(|h| h.id.as_str()), Some("a"));
        let second = choose(&hosts, &none(), 10, |_| 0, |_| 1);
        assert_eq!(second.map(|h| h.id.as_str()), Some("c"));
        // An out-of-range answer cannot panic.
        let clamped = choose(&hosts, &none(), 10, |_| 0, |_| 99);
        assert_eq!(clamped.map(|h| h.id.as_str()), Some("c"));
    }

    #[test]
    fn pending_clients_spread_joins_until_the_next_report() {
        struct Nothing;
        #[async_trait::async_trait]
        impl Directory for Nothing {
            fn name(&self) -> &'static str {
                "none"
            }
            async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
                Ok(Vec::new())
            }
            async fn channel_counts(
                &self,
                _: &str,
                _: &[HostEntry],
            ) -> Result<ChannelCounts, RegistryError> {
                Ok(ChannelCounts::default())
            }
        }
        let broker =
            crate::broker::memory::MemoryBroker::new(crate::broker::memory::MemoryOptions {
                history_size: 1,
                ttl: std::time::Duration::from_secs(1),
            });
        let d = Dispatcher::new(Arc::new(Nothing), broker, DispatchConfig::default());
        let mut hosts = vec![host("a", 0, 0), host("b", 10, 0)];
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..30 {
            let h = d.pick(&hosts, &none()).unwrap();
            *counts.entry(h.id).or_default() += 1;
        }
        // a gets 10 to catch up with b, then they alternate: 20 and 10.
        assert_eq!(counts["a"], 20, "{counts:?}");
        assert_eq!(counts["b"], 10, "{counts:?}");
        // A fresh report of a replaces the guess.
        hosts[0].written_ms = 2;
        hosts[0].subscribers = 0;
        assert_eq!(d.pick(&hosts, &none()).unwrap().id, "a");
        // Hosts that vanished are forgotten.
        d.pick(&hosts[..1], &none());
        assert_eq!(d.pending.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_unavailable() {
        struct Down;
        #[async_trait::async_trait]
        impl Directory for Down {
            fn name(&self) -> &'static str {
                "down"
            }
            async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
                Err(RegistryError::Unavailable("connection refused".into()))
            }
            async fn channel_counts(
                &self,
                _: &str,
                _: &[HostEntry],
            ) -> Result<ChannelCounts, RegistryError> {
                Err(RegistryError::Unavailable("connection refused".into()))
            }
        }
        let broker =
            crate::broker::memory::MemoryBroker::new(crate::broker::memory::MemoryOptions {
                history_size: 1,
                ttl: std::time::Duration::from_secs(1),
            });
        let d = Dispatcher::new(Arc::new(Down), broker, DispatchConfig::default());
        let err = d.join("room", b"").await.unwrap_err();
        assert_eq!(
            (err.code(), err.status()),
            ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(err.to_string().contains("connection refused"), "{err}");
        // The channel and body are checked first.
        assert_eq!(d.join("a b", b"").await.unwrap_err().code(), "bad_channel");
        assert_eq!(
            d.join("room", b"[").await.unwrap_err().code(),
            "bad_request"
        );
    }

    #[test]
    fn exclusions_accept_lists_strings_and_the_failed_alias() {
        assert_eq!(parse_exclusions(b"").unwrap(), none());
        assert_eq!(parse_exclusions(b" \n").unwrap(), none());
        assert_eq!(parse_exclusions(b"{}").unwrap(), none());
        assert_eq!(
            parse_exclusions(br#"{"exclude":["a","b"]}"#).unwrap(),
            ids(&["a", "b"])
        );
        assert_eq!(
            parse_exclusions(br#"{"exclude":"a"}"#).unwrap(),
            ids(&["a"])
        );
        assert_eq!(
            parse_exclusions(br#"{"failed":"a","exclude":["b"],"other":1}"#).unwrap(),
            ids(&["a", "b"])
        );
        assert_eq!(parse_exclusions(br#"{"exclude":null}"#).unwrap(), none());
        for bad in [
            &b"{"[..],
            b"[\"a\"]",
            b"\"a\"",
            br#"{"exclude":1}"#,
            br#"{"exclude":[1]}"#,
            br#"{"failed":{"a":1}}"#,
        ] {
            let err = parse_exclusions(bad).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{bad:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn urls_follow_the_public_url_or_stay_paths() {
        let mut h = host("chat1:7001", 0, 0);
        assert_eq!(
            serde_json::to_value(HostUrls::of(&h)).unwrap(),
            json!({"id":"chat1:7001","url":"","sub":"/sub/","pub":"/pub","post":"/pub/"})
        );
        h.public_url = "https://chat1.example.com/".into();
        assert_eq!(
            serde_json::to_value(HostUrls::of(&h)).unwrap(),
            json!({"id":"chat1:7001","url":"https://chat1.example.com/",
                   "sub":"wss://chat1.example.com/sub/","pub":"wss://chat1.example.com/pub",
                   "post":"https://chat1.example.com/pub/"})
        );
        h.public_url = "http://10.0.0.2:8080".into();
        h.pub_path = "/chat/pub/".into();
        let urls = HostUrls::of(&h);
        assert_eq!(urls.sub, "ws://10.0.0.2:8080/sub/");
        assert_eq!(urls.publish, "ws://10.0.0.2:8080/chat/pub/");
        assert_eq!(urls.post, "http://10.0.0.2:8080/chat/pub/");
    }

    #[test]
    fn the_answer_splices_history_bytes() {
        let counts = ChannelCounts {
            subscribers: 3,
            publishers: 1,
        };
        let messages: [&[u8]; 2] = [br#"{"ch":"r","id":1}"#, br#"{"ch":"r","id":2}"#];
        let bytes = answer(&host("h", 0, 0), "r", counts, messages.into_iter()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.ends_with(r#","channel":"r","subCount":3,"pubCount":1,"history":[{"ch":"r","id":1},{"ch":"r","id":2}]}"#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["host"]["id"], "h");
        let empty = answer(&host("h", 0, 0), "r", counts, std::iter::empty()).unwrap();
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["history"], json!([]));
    }
}
