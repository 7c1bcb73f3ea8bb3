//! Publishers on the real path: WebSocket `/pub` through nginx to the sidecar, each message
//! answered by an ack with its id, or `POST /pub/<channel>` on keep-alive HTTP/1.1
//! connections (pipelined), the token sent with every request. Paced (a fixed rate, for
//! delivery scenarios) or flooding (a window of messages in flight, for the publish scenario).
//!
//! Publishers outlive a sidecar that goes away (a restart): a WebSocket publisher opens
//! another socket, an HTTP one another connection, and a gateway answer (502, 503, 504:
//! nginx found no sidecar) pauses it briefly. A message whose answer never came is counted
//! (`connection_closed`) and not sent again: whether it was published is the viewers' to
//! tell, and the bench counts it lost only if it was acked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{new_histogram, IdRuns};
use crate::payload::{message_text, now_ns};
use crate::BenchError;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A token valid for a day, signed RS256 with `private_key`, as the bench's user.
pub fn mint_token(private_key: &Path) -> Result<String, BenchError> {
    let now = now_ns() / 1_000_000_000;
    let claims = serde_json::json!({
        "sub": "chatup-bench",
        "iat": now,
        "exp": now + 86_400,
        "_public": {"name": "bench"},
    });
    sign(private_key, &claims)
}

/// A subscribe token for every private channel (`"channels": ["*"]`), for a day, signed
/// with `private_key` (RS256). Every viewer of a run shares it: the server verifies it
/// anew at each connect all the same.
pub fn mint_subscribe_token(private_key: &Path) -> Result<String, BenchError> {
    let now = now_ns() / 1_000_000_000;
    let claims = serde_json::json!({
        "sub": "chatup-bench",
        "iat": now,
        "exp": now + 86_400,
        "channels": ["*"],
    });
    sign(private_key, &claims)
}

fn sign(private_key: &Path, claims: &serde_json::Value) -> Result<String, BenchError> {
    let pem = std::fs::read(private_key)
        .map_err(|e| BenchError::Setup(format!("read {}: {e}", private_key.display())))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
        BenchError::Setup(format!(
            "{} is not an RSA private key: {e}",
            private_key.display()
        ))
    })?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &key,
    )
    .map_err(|e| BenchError::Setup(format!("sign the bench token: {e}")))
}

/// What publishing achieved.
#[derive(Debug)]
pub struct PublishStats {
    pub sent: u64,
    pub acked: u64,
    /// Error codes the sidecar answered, and how often.
    pub errors: BTreeMap<String, u64>,
    /// Channel → (first acked id, last acked id).
    pub published: BTreeMap<String, (u64, u64)>,
    /// The acked ids of each channel: what every viewer must get, and, against
    /// `published`, ids that were published without an ack reaching the bench.
    pub acked_ids: BTreeMap<String, IdRuns>,
    /// Send-to-ack latency in µs.
    pub ack_latency: Histogram<u64>,
    /// Sockets (or HTTP connections) opened again after the server closed or broke one
    /// under a publisher: the sidecar went away.
    pub reconnects: u64,
    /// Attempts to open one that failed (the sidecar not back yet).
    pub failed_reconnects: u64,
    pub elapsed: Duration,
}

impl PublishStats {
    fn new() -> Self {
        Self {
            sent: 0,
            acked: 0,
            errors: BTreeMap::new(),
            published: BTreeMap::new(),
            acked_ids: BTreeMap::new(),
            ack_latency: new_histogram(),
            reconnects: 0,
            failed_reconnects: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Channel → runs of acked ids, for the viewers' report.
    pub fn acked_runs(&self) -> BTreeMap<String, Vec<(u64, u64)>> {
        self.acked_ids
            .iter()
            .map(|(ch, ids)| (ch.clone(), ids.runs().to_vec()))
            .collect()
    }

    /// Counts `n` messages sent on a connection that ended before their answer came.
    fn unanswered(&mut self, n: u64) {
        if n > 0 {
            *self.errors.entry("connection_closed".into()).or_default() += n;
        }
    }

    /// Counts the sidecar's answer to a message sent at `sent` to `channel`.
    fn record(&mut self, reply: &Value, sent: Instant, channel: &str) {
        match (reply["type"].as_str(), reply["id"].as_u64()) {
            (Some("ack"), Some(id)) => {
                self.acked += 1;
                let us = sent.elapsed().as_micros() as u64;
                self.ack_latency.saturating_record(us.max(1));
                let range = self.published.entry(channel.to_owned()).or_insert((id, id));
                range.0 = range.0.min(id);
                range.1 = range.1.max(id);
                self.acked_ids
                    .entry(channel.to_owned())
                    .or_default()
                    .insert(id);
            }
            _ => {
                let code = reply["code"].as_str().unwrap_or("unknown").to_owned();
                *self.errors.entry(code).or_default() += 1;
            }
        }
    }
}

/// How a publisher socket sends.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many messages per second.
    Rate(f64),
    /// As fast as acks come back, with this many in flight.
    Window(usize),
}

/// How publishers reach the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// WebSocket `/pub`: the token is sent once per socket.
    Ws,
    /// `POST /pub/<channel>` on keep-alive HTTP/1.1 connections (as many requests pipelined
    /// as the window allows), the token sent with every request.
    Http,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Ws => "ws",
            Via::Http => "http",
        }
    }
}

/// What every publisher socket shares.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// WebSocket `/pub`, or `POST /pub/<channel>` on the same host and path.
    pub via: Via,
    /// `ws://host:port/pub` of each chat host publishers use; socket k uses the
    /// (k mod n)-th.
    pub urls: Vec<String>,
    pub token: String,
    pub channels: Vec<String>,
    pub size: usize,
    pub sockets: usize,
    pub pace: Pace,
    pub duration: Duration,
}

/// Opens a publisher socket and authenticates it.
async fn open(url: &str, token: &str) -> Result<Ws, BenchError> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| BenchError::Setup(format!("publisher connect to {url}: no answer in 10 s")))?
    .map_err(|e| BenchError::Setup(format!("publisher connect to {url}: {e}")))?;
    ws.send(Message::text(token)).await.map_err(ws_err)?;
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| BenchError::Setup("no answer to the publisher's token".into()))?;
    match reply {
        Some(Ok(Message::Text(text))) if text.contains("\"auth\"") => Ok(ws),
        other => Err(BenchError::Setup(format!(
            "the publisher's token was refused: {other:?}"
        ))),
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> BenchError {
    BenchError::Protocol(format!("publisher: {e}"))
}

/// Publishes in a burst this large to find out whether the host limits publishes per user.
const PROBE_BURST: usize = 20;

/// Whether the host at `url` limits the publishes of `token`'s user: a burst of
/// [`PROBE_BURST`] messages on a channel of their own (`channel`); `Some` with what was
/// seen when one was refused `rate_limited`.
pub async fn probe_rate_limit(
    url: &str,
    token: &str,
    channel: &str,
) -> Result<Option<String>, BenchError> {
    let mut ws = open(url, token).await?;
    for r in 0..PROBE_BURST {
        let frame = serde_json::json!({"ref": r, "ch": channel, "msg": "bench probe"});
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(ws_err)?;
    }
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..PROBE_BURST {
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| BenchError::Protocol("no answer to a probe publish".into()))?;
        let Some(Ok(Message::Text(text))) = reply else {
            return Err(BenchError::Protocol(format!(
                "unexpected answer to a probe publish: {reply:?}"
            )));
        };
        let reply: Value = serde_json::from_str(&text).unwrap_or_default();
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (_, Some("rate_limited")) => limited += 1,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok((limited > 0).then(|| {
        format!(
            "of {PROBE_BURST} messages sent at once by the bench's user, {acked} were published \
             and {limited} refused rate_limited"
        )
    }))
}

/// Publishes per `plan` and waits (up to 10 s) for the last acks.
pub async fn run(plan: &PublishPlan) -> Result<PublishStats, BenchError> {
    if plan.urls.is_empty() {
        return Err(BenchError::Setup("no publisher URL".into()));
    }
    let stats = Arc::new(Mutex::new(PublishStats::new()));
    if plan.via == Via::Http {
        return run_http(plan, stats).await;
    }
    // The first sockets must open: a wrong address or token fails the run at once.
    let mut sockets = Vec::with_capacity(plan.sockets);
    for k in 0..plan.sockets.max(1) {
        sockets.push(open(&plan.urls[k % plan.urls.len()], &plan.token).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    let n = sockets.len();
    for (k, ws) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(run_socket(
            ws,
            k,
            n,
            plan.clone(),
            stats.clone(),
            start,
        )));
    }
    gather(tasks, &stats, start).await
}

/// Waits for every publisher task and takes what they counted.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<(), BenchError>>>,
    stats: &Mutex<PublishStats>,
    start: Instant,
) -> Result<PublishStats, BenchError> {
    for task in tasks {
        task.await
            .map_err(|e| BenchError::Protocol(format!("publisher task: {e}")))??;
    }
    let mut stats = match stats.lock() {
        Ok(mut st) => std::mem::replace(&mut *st, PublishStats::new()),
        Err(_) => return Err(BenchError::Protocol("publisher stats poisoned".into())),
    };
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// How one of `publishers` paces its sends: the messages it may have in flight, and its
/// share of the rate (None: as fast as answers come back).
fn pacing(plan: &PublishPlan, publishers: usize) -> (usize, Option<f64>) {
    match plan.pace {
        Pace::Window(w) => (w.max(1), None),
        Pace::Rate(r) => (usize::MAX >> 4, Some(r / publishers as f64)),
    }
}

/// With a rate, sleeps until send number `turn` is due and says so (the caller checks the
/// run's end again); false when a send is due now.
async fn wait_for_turn(rate: Option<f64>, turn: u64, start: Instant, duration: Duration) -> bool {
    let Some(rate) = rate else { return false };
    let due = (start.elapsed().as_secs_f64() * rate) as u64;
    if turn < due {
        return false;
    }
    let next = Duration::from_secs_f64((turn + 1) as f64 / rate);
    tokio::time::sleep_until((start + next.min(duration)).into()).await;
    true
}

/// The first wait before opening a connection again, doubled after each failure up to
/// [`RECONNECT_MAX`]: a restarted sidecar answers within a second or so.
const RECONNECT_FIRST: Duration = Duration::from_millis(25);
const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// Waits `backoff`, then doubles it (up to [`RECONNECT_MAX`]).
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(RECONNECT_MAX);
}

/// Opens a publisher socket again after the last one ended, until one opens or the run is
/// over (`None`).
async fn reopen(
    url: &str,
    token: &str,
    start: Instant,
    duration: Duration,
    stats: &Mutex<PublishStats>,
) -> Option<Ws> {
    let mut backoff = RECONNECT_FIRST;
    while start.elapsed() < duration {
        match open(url, token).await {
            Ok(ws) => {
                if let Ok(mut st) = stats.lock() {
                    st.reconnects += 1;
                }
                return Some(ws);
            }
            Err(_) => {
                if let Ok(mut st) = stats.lock() {
                    st.failed_reconnects += 1;
                }
                back_off(&mut backoff).await;
            }
        }
    }
    None
}

/// Where one publisher stands across its sockets.
struct Sender {
    /// This publisher's number, and how many share the rate.
    k: usize,
    publishers: usize,
    /// Messages sent so far: the next one's `ref`, and its channel in turn.
    sent: u64,
    /// With a rate, the sends due so far: after a break it jumps to the present, so the
    /// turns missed while the sidecar was away are skipped rather than sent in a burst.
    turn: u64,
}

/// One publisher socket for the whole run: when the server closes it or it breaks (the
/// sidecar went away), another is opened, and what was in flight on the old one is counted
/// as unanswered.
async fn run_socket(
    ws: Ws,
    k: usize,
    sockets: usize,
    plan: PublishPlan,
    stats: Arc<Mutex<PublishStats>>,
    start: Instant,
) -> Result<(), BenchError> {
    let url = &plan.urls[k % plan.urls.len()];
    let (_, rate) = pacing(&plan, sockets);
    let mut sender = Sender {
        k,
        publishers: sockets,
        sent: 0,
        turn: 0,
    };
    let mut next = Some(ws);
    while start.elapsed() < plan.duration {
        let ws = match next.take() {
            Some(ws) => ws,
            None => match reopen(url, &plan.token, start, plan.duration, &stats).await {
                Some(ws) => ws,
                None => break,
            },
        };
        if let Some(rate) = rate {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            sender.turn = sender.turn.max(due);
        }
        send_on(ws, &mut sender, &plan, &stats, start).await?;
    }
    if let Ok(mut st) = stats.lock() {
        st.sent += sender.sent;
    }
    Ok(())
}

/// Sends on one socket until the run's end (then waits up to 10 s for the last acks) or
/// until the socket ends.
async fn send_on(
    ws: Ws,
    sender: &mut Sender,
    plan: &PublishPlan,
    stats: &Arc<Mutex<PublishStats>>,
    start: Instant,
) -> Result<(), BenchError> {
    let (mut sink, mut stream) = ws.split();
    // ref → (sent at, channel index)
    let in_flight: Arc<Mutex<HashMap<u64, (Instant, usize)>>> = Arc::default();
    let (window, rate) = pacing(plan, sender.publishers);
    let permits = Arc::new(Semaphore::new(window));

    let mut reader = {
        let in_flight = in_flight.clone();
        let stats = stats.clone();
        let permits = permits.clone();
        let channels = plan.channels.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(reply) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(r) = reply["ref"].as_u64() else {
                    continue;
                };
                let Some((sent, ch)) = in_flight.lock().ok().and_then(|mut m| m.remove(&r)) else {
                    continue;
                };
                permits.add_permits(1);
                let Ok(mut st) = stats.lock() else { return };
                st.record(&reply, sent, &channels[ch]);
            }
            // The socket ended: a sender waiting for a permit learns it at once.
            permits.close();
        })
    };

    let mut ended = false;
    while start.elapsed() < plan.duration {
        let waited = tokio::select! {
            _ = &mut reader => {
                ended = true;
                break;
            }
            waited = wait_for_turn(rate, sender.turn, start, plan.duration) => waited,
        };
        if waited {
            continue;
        }
        let permit = match tokio::time::timeout(Duration::from_secs(5), permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                ended = true;
                break;
            }
            Err(_) => {
                return Err(BenchError::Protocol(
                    "the sidecar stopped acking (5 s without an ack)".into(),
                ))
            }
        };
        permit.forget();
        let ch = (sender.sent as usize * sender.publishers + sender.k) % plan.channels.len();
        let r = sender.sent;
        let text = message_text(now_ns(), plan.size);
        let frame = format!(
            r#"{{"ref":{r},"ch":"{}","msg":"{text}"}}"#,
            plan.channels[ch]
        );
        if let Ok(mut m) = in_flight.lock() {
            m.insert(r, (Instant::now(), ch));
        }
        sender.sent += 1;
        sender.turn += 1;
        if sink.send(Message::text(frame)).await.is_err() {
            ended = true;
            break;
        }
    }
    if !ended {
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_flight.lock().map(|m| !m.is_empty()).unwrap_or(false)
            && !reader.is_finished()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    reader.abort();
    let unanswered = in_flight.lock().map(|m| m.len() as u64).unwrap_or(0);
    if let Ok(mut st) = stats.lock() {
        st.unanswered(unanswered);
    }
    Ok(())
}

/// [`run`] over HTTP: one keep-alive connection at a time per publisher.
async fn run_http(
    plan: &PublishPlan,
    stats: Arc<Mutex<PublishStats>>,
) -> Result<PublishStats, BenchError> {
    let start = Instant::now();
    let n = plan.sockets.max(1);
    let mut tasks = Vec::new();
    for k in 0..n {
        let (host, path) = http_target(&plan.urls[k % plan.urls.len()])?;
        tasks.push(tokio::spawn(run_publisher(
            HttpTarget { host, path },
            k,
            n,
            plan.clone(),
            stats.clone(),
            start,
        )));
    }
    gather(tasks, &stats, start).await
}

/// Where a publisher's requests go: `host:port` and the `/pub` path.
struct HttpTarget {
    host: String,
    path: String,
}

/// `ws://host:port/pub` → (`host:port`, `/pub`).
fn http_target(ws_url: &str) -> Result<(String, String), BenchError> {
    let rest = ws_url.strip_prefix("ws://").ok_or_else(|| {
        BenchError::Setup(format!("HTTP publishing needs a ws:// URL, not {ws_url}"))
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "pub"));
    Ok((host.to_owned(), format!("/{}", path.trim_end_matches('/'))))
}

/// Requests sent on one connection before it is closed and another opened: nginx's
/// default `keepalive_requests` (it closes the connection after that many, dropping what
/// was pipelined behind the last).
const REQUESTS_PER_CONNECTION: u64 = 1000;

/// How long an HTTP publisher pauses after a gateway answer (502, 503, 504: nginx found
/// no sidecar) before its next request, so that an outage is not a flood of refusals.
const GATEWAY_PAUSE: Duration = Duration::from_millis(50);

/// One publisher: connections one after the other until the run's end. The first must
/// open (a wrong address fails the run at once); a later one that fails is tried again.
async fn run_publisher(
    target: HttpTarget,
    k: usize,
    publishers: usize,
    plan: PublishPlan,
    stats: Arc<Mutex<PublishStats>>,
    start: Instant,
) -> Result<(), BenchError> {
    let mut sent: u64 = 0;
    let mut connections: u64 = 0;
    let mut backoff = RECONNECT_FIRST;
    // Whether the server closed the last connection under its requests: the next one
    // opened is a reconnect, as for a WebSocket publisher.
    let mut closed_early = false;
    while start.elapsed() < plan.duration {
        let stream = match tokio::net::TcpStream::connect(&target.host).await {
            Ok(stream) => stream,
            Err(e) if connections == 0 => {
                return Err(BenchError::Setup(format!(
                    "publisher connect to {}: {e}",
                    target.host
                )))
            }
            Err(_) => {
                if let Ok(mut st) = stats.lock() {
                    st.failed_reconnects += 1;
                }
                back_off(&mut backoff).await;
                continue;
            }
        };
        backoff = RECONNECT_FIRST;
        connections += 1;
        if closed_early {
            if let Ok(mut st) = stats.lock() {
                st.reconnects += 1;
            }
        }
        let _ = stream.set_nodelay(true);
        (sent, closed_early) =
            run_connection(stream, &target, k, publishers, &plan, &stats, start, sent).await?;
    }
    if let Ok(mut st) = stats.lock() {
        st.sent += sent;
    }
    Ok(())
}

/// Sends on `stream` until [`REQUESTS_PER_CONNECTION`] or the run's end, waits for the
/// answers, and returns the publisher's count of requests sent so far (from `sent`), and
/// whether the server closed the connection before that.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    stream: tokio::net::TcpStream,
    target: &HttpTarget,
    k: usize,
    publishers: usize,
    plan: &PublishPlan,
    stats: &Arc<Mutex<PublishStats>>,
    start: Instant,
    mut sent: u64,
) -> Result<(u64, bool), BenchError> {
    let (read, mut write) = stream.into_split();
    // Requests sent and not answered yet, in order: (sent at, channel index).
    let in_flight: Arc<Mutex<VecDeque<(Instant, usize)>>> = Arc::default();
    let (window, rate) = pacing(plan, publishers);
    let permits = Arc::new(Semaphore::new(window));
    // Set by the reader on a gateway answer: the sender pauses before its next request.
    let sidecar_away = Arc::new(AtomicBool::new(false));
    let reader = {
        let in_flight = in_flight.clone();
        let stats = stats.clone();
        let permits = permits.clone();
        let channels = plan.channels.clone();
        let sidecar_away = sidecar_away.clone();
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            while let Ok((status, body)) = read_response(&mut read).await {
                let Some((sent, ch)) = in_flight.lock().ok().and_then(|mut q| q.pop_front()) else {
                    break;
                };
                permits.add_permits(1);
                let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                let reply = match (status, body["error"]["code"].as_str()) {
                    (200, _) => serde_json::json!({"type": "ack", "id": body["id"]}),
                    (_, Some(code)) => serde_json::json!({"code": code}),
                    // Not the sidecar's answer (nginx's own page): named by its status.
                    (status, None) => serde_json::json!({"code": format!("http_{status}")}),
                };
                if matches!(status, 502..=504) {
                    sidecar_away.store(true, Ordering::Relaxed);
                }
                let Ok(mut st) = stats.lock() else { break };
                st.record(&reply, sent, &channels[ch]);
            }
            // Closed (or a bad answer): what is still in flight will not be answered here.
            permits.close();
        })
    };

    let mut on_this = 0;
    let mut closed_early = false;
    while start.elapsed() < plan.duration && on_this < REQUESTS_PER_CONNECTION {
        if wait_for_turn(rate, sent, start, plan.duration).await {
            continue;
        }
        if sidecar_away.swap(false, Ordering::Relaxed) {
            tokio::time::sleep(GATEWAY_PAUSE).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), permits.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            // The server closed the connection: open another.
            Ok(Err(_)) => {
                closed_early = true;
                break;
            }
            Err(_) => {
                return Err(BenchError::Protocol(
                    "the sidecar stopped answering (5 s without an answer)".into(),
                ))
            }
        }
        let ch = (sent as usize * publishers + k) % plan.channels.len();
        let text = message_text(now_ns(), plan.size);
        let request = format!(
            "POST {}/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            target.path,
            plan.channels[ch],
            target.host,
            plan.token,
            text.len()
        );
        if let Ok(mut q) = in_flight.lock() {
            q.push_back((Instant::now(), ch));
        }
        sent += 1;
        on_this += 1;
        if write.write_all(request.as_bytes()).await.is_err() {
            closed_early = true;
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight.lock().map(|q| !q.is_empty()).unwrap_or(false)
        && !reader.is_finished()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = write.shutdown().await;
    reader.abort();
    // Sent on this connection and never answered: the server closed it first.
    let unanswered = in_flight.lock().map(|q| q.len() as u64).unwrap_or(0);
    if let Ok(mut st) = stats.lock() {
        st.unanswered(unanswered);
    }
    Ok((sent, closed_early))
}

/// Reads one HTTP/1.1 response: its status and body (`Content-Length` or chunked).
pub async fn read_response<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<(u16, Vec<u8>), BenchError> {
    let bad = |what: &str| BenchError::Protocol(format!("HTTP publisher: {what}"));
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(bad("the connection closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("not a status line: {line:?}")))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(bad("the connection closed in a response head"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| bad("a bad Content-Length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("a bad chunk size"))?;
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            line.clear();
            r.read_line(&mut line).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body).await?;
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_are_read_with_a_length_or_in_chunks() {
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"id\":1}\
HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        let mut r = BufReader::new(wire);
        assert_eq!(
            read_response(&mut r).await.unwrap(),
            (200, b"{\"id\":1}".to_vec())
        );
        assert_eq!(
            read_response(&mut r).await.unwrap(),
            (429, b"{\"a\":1}".to_vec())
        );
        assert!(read_response(&mut r).await.is_err(), "then the end");
    }

    #[test]
    fn the_http_target_comes_from_the_ws_url() {
        let (host, path) = http_target("ws://127.0.0.1:8080/pub").unwrap();
        assert_eq!((host.as_str(), path.as_str()), ("127.0.0.1:8080", "/pub"));
        assert!(http_target("wss://x/pub").is_err());
    }
}
