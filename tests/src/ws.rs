//! WebSocket subscribers (`/sub/...`) and publishers (`/pub`), with tokio-tungstenite.
//! Pings from the server are answered automatically while reading.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::http::HttpResponse;
use crate::{brief, brief_all, Chatup, WAIT};

/// What arrived on a WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame (raw, as sent).
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code and reason (None for an empty close frame).
    Close(Option<(u16, String)>),
    /// The connection ended (or failed) without a close frame.
    End(String),
}

type Ws = WebSocketStream<TcpStream>;

async fn connect_ws(
    addr: SocketAddr,
    path: &str,
) -> Result<(Ws, u16), Result<HttpResponse, String>> {
    let deadline = Instant::now() + WAIT;
    let stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Err("connect timed out".to_owned()))?
        .map_err(|e| Err(format!("connect: {e}")))?;
    let local_port = stream.local_addr().map_err(|e| Err(e.to_string()))?.port();
    let url = format!("ws://{addr}{path}");
    match timeout_at(
        deadline,
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    {
        Err(_) => Err(Err(format!(
            "no handshake answer for {path} within {WAIT:?}"
        ))),
        Ok(Ok((ws, _resp))) => Ok((ws, local_port)),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(Ok(HttpResponse {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: resp.body().clone().unwrap_or_default(),
        })),
        Ok(Err(e)) => Err(Err(format!("handshake for {path}: {e}"))),
    }
}

async fn next_event(ws: &mut Ws, timeout: Duration) -> Option<Event> {
    let msg = match tokio::time::timeout(timeout, ws.next()).await {
        Err(_) => return None,
        Ok(None) => return Some(Event::End("stream ended".into())),
        Ok(Some(Err(e))) => return Some(Event::End(e.to_string())),
        Ok(Some(Ok(msg))) => msg,
    };
    Some(match msg {
        Message::Text(t) => Event::Text(t.as_str().to_owned()),
        Message::Binary(b) => Event::Binary(b.to_vec()),
        Message::Ping(p) => Event::Ping(p.to_vec()),
        Message::Pong(p) => Event::Pong(p.to_vec()),
        Message::Close(frame) => {
            Event::Close(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
        }
        Message::Frame(_) => Event::End("unexpected raw frame".into()),
    })
}

/// The next text frame within `within`, skipping pings and pongs (recording text in `raw`
/// when given). `Err(Some(event))` is anything else that came, `Err(None)` a timeout.
async fn next_text(
    ws: &mut Ws,
    mut raw: Option<&mut Vec<String>>,
    within: Duration,
) -> Result<String, Option<Event>> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(ws, left).await {
            Some(Event::Text(t)) => {
                if let Some(raw) = raw.as_deref_mut() {
                    raw.push(t.clone());
                }
                return Ok(t);
            }
            Some(Event::Ping(_) | Event::Pong(_)) => continue,
            other => return Err(other),
        }
    }
}

/// Reads until a close frame; returns its code and the text frames before it. Panics on
/// timeout or when `what`'s connection ends without a close frame.
async fn read_until_close(
    ws: &mut Ws,
    timeout: Duration,
    what: &str,
) -> (Option<u16>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut before: Vec<String> = Vec::new();
    let listed = |texts: &[String]| {
        let parts: Vec<String> = texts.iter().map(|t| brief(t)).collect();
        format!("[{}]", parts.join(", "))
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(ws, left).await {
            Some(Event::Text(t)) => before.push(t),
            Some(Event::Close(c)) => return (c.map(|(code, _)| code), before),
            Some(Event::Ping(_) | Event::Pong(_) | Event::Binary(_)) => continue,
            Some(Event::End(why)) => panic!(
                "{what} ended without a close frame ({why}); got {}",
                listed(&before)
            ),
            None => panic!(
                "no close frame on {what} within {timeout:?}; got {}",
                listed(&before)
            ),
        }
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {}", brief(text)))
}

/// A subscriber on `/sub/...`.
pub struct Subscriber {
    ws: Ws,
    /// The client's local port (see [`Chatup::worker_of`]).
    pub local_port: u16,
    /// Raw text of every message received, in order.
    pub raw: Vec<String>,
}

impl Event {
    /// A short form for failure messages.
    pub fn brief(&self) -> String {
        match self {
            Event::Text(t) => format!("Text({})", brief(t)),
            Event::Binary(b) => format!("Binary({} bytes)", b.len()),
            other => format!("{other:?}"),
        }
    }
}

impl Subscriber {
    /// Subscribes to `path` (e.g. `/sub/room` or `/sub/a/b?since=a:1:2`); panics unless
    /// the upgrade succeeds.
    pub async fn connect(env: &Chatup, path: &str) -> Self {
        match Self::try_connect(env, path).await {
            Ok(s) => s,
            Err(Ok(resp)) => panic!(
                "subscribe to {path} refused: {} {}\n{}",
                resp.status,
                resp.text(),
                env.error_log()
            ),
            Err(Err(e)) => panic!("subscribe to {path} failed: {e}\n{}", env.error_log()),
        }
    }

    /// Like [`Subscriber::connect`], returning a refusal (the HTTP response) or failure.
    pub async fn try_connect(
        env: &Chatup,
        path: &str,
    ) -> Result<Self, Result<HttpResponse, String>> {
        let (ws, local_port) = connect_ws(env.nginx_addr(), path).await?;
        Ok(Self {
            ws,
            local_port,
            raw: Vec::new(),
        })
    }

    /// Subscribes to `path` on the nginx at `addr` (one the harness did not start); panics
    /// unless the upgrade succeeds.
    pub async fn connect_to(addr: SocketAddr, path: &str) -> Self {
        match connect_ws(addr, path).await {
            Ok((ws, local_port)) => Self {
                ws,
                local_port,
                raw: Vec::new(),
            },
            Err(Ok(resp)) => panic!(
                "subscribe to {path} refused: {} {}",
                resp.status,
                resp.text()
            ),
            Err(Err(e)) => panic!("subscribe to {path} failed: {e}"),
        }
    }

    /// The next event within `timeout`, or None.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let ev = next_event(&mut self.ws, timeout).await;
        if let Some(Event::Text(t)) = &ev {
            self.raw.push(t.clone());
        }
        ev
    }

    /// The next text frame as JSON (pings and pongs skipped); panics on anything else or
    /// after `WAIT`.
    #[track_caller]
    pub fn recv(&mut self) -> impl std::future::Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match next_text(&mut self.ws, Some(&mut self.raw), WAIT).await {
                Ok(t) => parse_json(&t),
                Err(Some(other)) => {
                    panic!("{caller}: expected a message, got {}", other.brief())
                }
                Err(None) => panic!("{caller}: no message within {WAIT:?}"),
            }
        }
    }

    /// The next `n` messages.
    pub async fn recv_n(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match next_text(&mut self.ws, Some(&mut self.raw), WAIT).await {
                Ok(t) => out.push(parse_json(&t)),
                Err(Some(other)) => panic!(
                    "expected message {} of {n}, got {} after {}",
                    i + 1,
                    other.brief(),
                    brief_all(&out)
                ),
                Err(None) => panic!(
                    "message {} of {n} did not arrive within {WAIT:?}; got {}",
                    i + 1,
                    brief_all(&out)
                ),
            }
        }
        out
    }

    /// Asserts that no message arrives for `quiet` (pings are fine).
    pub async fn expect_no_message(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left).await {
                None => return,
                Some(Event::Ping(_) | Event::Pong(_)) => continue,
                Some(other) => panic!("expected no message, got {}", other.brief()),
            }
        }
    }

    /// Reads until a close frame; returns its code and the messages before it. Panics on
    /// timeout or when the connection ends without a close frame.
    pub async fn expect_close(&mut self, timeout: Duration) -> (Option<u16>, Vec<Value>) {
        let (code, texts) = read_until_close(&mut self.ws, timeout, "the subscriber").await;
        self.raw.extend(texts.iter().cloned());
        (code, texts.iter().map(|t| parse_json(t)).collect())
    }

    /// Sends a close frame with `code`.
    pub async fn close(&mut self, code: u16) {
        let frame = Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(WAIT, self.ws.send(frame)).await;
    }

    pub async fn send(&mut self, msg: Message) {
        tokio::time::timeout(WAIT, self.ws.send(msg))
            .await
            .expect("send on the WebSocket timed out")
            .expect("send on the WebSocket");
    }

    /// The `since` value resuming after the last message received on `ch`.
    pub fn since_of(&self, ch: &str) -> Option<String> {
        self.raw.iter().rev().find_map(|t| {
            let v: Value = serde_json::from_str(t).ok()?;
            if v["ch"] != ch {
                return None;
            }
            Some(format!("{ch}:{}:{}", v["ep"].as_u64()?, v["id"].as_u64()?))
        })
    }
}

/// A publisher on `/pub` (through nginx), authenticated with a token.
pub struct Publisher {
    ws: Ws,
    next_ref: u64,
}

impl Publisher {
    /// Opens `/pub` and sends `token`; returns the publisher and the server's answer to the
    /// token (`{"type":"auth",...}` or an error).
    pub async fn connect(env: &Chatup, token: &str) -> (Self, Value) {
        let (ws, _) = match connect_ws(env.nginx_addr(), "/pub").await {
            Ok(ok) => ok,
            Err(Ok(resp)) => panic!("/pub refused: {} {}", resp.status, resp.text()),
            Err(Err(e)) => panic!("/pub failed: {e}"),
        };
        let mut p = Self { ws, next_ref: 1 };
        p.send_text(token).await;
        let reply = p.recv().await;
        (p, reply)
    }

    /// Connects with `token` and panics unless it is accepted.
    pub async fn connect_ok(env: &Chatup, token: &str) -> Self {
        let (p, reply) = Self::connect(env, token).await;
        assert_eq!(reply["type"], "auth", "token refused on /pub: {reply}");
        p
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text.to_owned())))
            .await
            .expect("send on /pub timed out")
            .expect("send on /pub");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes.to_vec())))
            .await
            .expect("send on /pub timed out")
            .expect("send on /pub");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        next_event(&mut self.ws, timeout).await
    }

    /// The next text frame as JSON; panics otherwise.
    pub async fn recv(&mut self) -> Value {
        match next_text(&mut self.ws, None, WAIT).await {
            Ok(t) => parse_json(&t),
            Err(Some(other)) => panic!("expected a reply on /pub, got {}", other.brief()),
            Err(None) => panic!("no reply on /pub within {WAIT:?}"),
        }
    }

    /// Sends `frame` (a JSON object; a fresh numeric `ref` is added when it has none) and
    /// returns the reply carrying that ref.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        if frame.get("ref").is_none() {
            frame["ref"] = json!(self.next_ref);
            self.next_ref += 1;
        }
        let r = frame["ref"].clone();
        self.send_json(&frame).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.recv().await;
            if reply["ref"] == r {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "no reply with ref {r} within {WAIT:?} (last: {})",
                brief(&reply.to_string())
            );
        }
    }

    /// Publishes `msg` on `ch` and returns the ack; panics on an error reply.
    pub async fn publish(&mut self, ch: &str, msg: &str) -> Value {
        let reply = self.request(json!({"ch": ch, "msg": msg})).await;
        assert_eq!(reply["type"], "ack", "publish on {ch} failed: {reply}");
        reply
    }

    /// A publisher authenticated as `name` (an example-key token) and joined to `channel`.
    pub async fn joined(env: &Chatup, name: &str, channel: &str) -> Self {
        let mut publisher = Self::connect_ok(env, &crate::token::token(name)).await;
        publisher.join(channel).await;
        publisher
    }

    /// Joins `channel` (presence) and checks the answer.
    pub async fn join(&mut self, channel: &str) {
        let reply = self.request(json!({"join": channel})).await;
        assert_eq!(reply["type"], "joined", "join {channel} failed: {reply}");
    }

    /// Reads until a close frame; returns its code and the text frames before it.
    pub async fn expect_close(&mut self, timeout: Duration) -> (Option<u16>, Vec<Value>) {
        let (code, texts) = read_until_close(&mut self.ws, timeout, "/pub").await;
        (code, texts.iter().map(|t| parse_json(t)).collect())
    }
}

impl Chatup {
    /// Subscribes to `path` again and again until every nginx worker holds at least one of
    /// the subscribers (connections are spread over the workers by `reuseport`). Returns all
    /// of them, each paired with the pid of its worker.
    pub async fn subscribers_on_every_worker(&self, path: &str) -> Vec<(Subscriber, u32)> {
        let workers = self.worker_pids();
        let mut subs: Vec<(Subscriber, u32)> = Vec::new();
        for _ in 0..40 {
            let sub = Subscriber::connect(self, path).await;
            let owner = self.worker_of(sub.local_port).unwrap_or_else(|| {
                panic!(
                    "no nginx worker owns the connection from port {}",
                    sub.local_port
                )
            });
            assert!(
                workers.contains(&owner),
                "connection owned by {owner}, not one of the workers {workers:?}"
            );
            subs.push((sub, owner));
            if workers
                .iter()
                .all(|w| subs.iter().any(|(_, owner)| owner == w))
            {
                return subs;
            }
        }
        panic!("40 connections did not reach every worker of {workers:?}");
    }

    /// Connects to `path` on every worker ([`Self::subscribers_on_every_worker`]) and checks
    /// that each connection gets the messages `ids` of `ch`, in order, each with the text
    /// "m<id>", then nothing for `quiet`.
    pub async fn expect_on_every_worker(
        &self,
        path: &str,
        ch: &str,
        ids: RangeInclusive<u64>,
        quiet: Duration,
    ) {
        let n = ids.clone().count();
        for (mut sub, _) in self.subscribers_on_every_worker(path).await {
            let msgs = sub.recv_n(n).await;
            for (m, id) in msgs.iter().zip(ids.clone()) {
                crate::assert_message(m, ch, id, &format!("m{id}"));
            }
            sub.expect_no_message(quiet).await;
        }
    }

    /// Publishes `texts` on `ch`, a channel that has had none yet, and checks that each of
    /// `subs` gets them all, the last with its id and text. Returns the epoch of the last ack.
    pub async fn publish_to_all(
        &self,
        subs: &mut [(Subscriber, u32)],
        ch: &str,
        texts: &[String],
    ) -> u64 {
        let mut ep = 0;
        for text in texts {
            ep = self.publish(ch, text).await["ep"].as_u64().expect("ep");
        }
        let last = texts.last().expect("something to publish");
        for (sub, _) in subs.iter_mut() {
            let msgs = sub.recv_n(texts.len()).await;
            crate::assert_message(&msgs[texts.len() - 1], ch, texts.len() as u64, last);
        }
        ep
    }
}

/// The people that two-host tests count in "room": three viewers (two on `a`, one on `b`),
/// and publisher sessions: alice on both hosts, bob on `a` and carol on `b` in "room", dave
/// on `b` in "other". They stay connected while the returned values live.
pub async fn two_host_room(a: &Chatup, b: &Chatup) -> ([Subscriber; 3], Vec<Publisher>) {
    let viewers = [
        Subscriber::connect(a, "/sub/room").await,
        Subscriber::connect(a, "/sub/room").await,
        Subscriber::connect(b, "/sub/room").await,
    ];
    let mut sessions = Vec::new();
    for (env, name, channel) in [
        (a, "alice", "room"),
        (b, "alice", "room"),
        (a, "bob", "room"),
        (b, "carol", "room"),
        (b, "dave", "other"),
    ] {
        sessions.push(Publisher::joined(env, name, channel).await);
    }
    (viewers, sessions)
}
