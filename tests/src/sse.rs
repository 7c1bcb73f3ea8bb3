//! Viewers without WebSocket: a raw SSE client (an HTTP/1.1 GET read as an event stream,
//! chunked or not) and long-poll requests, for the tests of the module's HTTP transports.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::http::{self, HttpResponse};

/// One block of an event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `event:`; `None` for a plain message.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// `retry:`, when the block set it.
    pub retry: Option<u64>,
    /// The block held only comment lines (a ping).
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// An open event stream.
pub struct SseStream {
    stream: TcpStream,
    /// The response head (its body is the stream).
    pub response: HttpResponse,
    chunked: bool,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// Stream text not yet parsed into events.
    text: Vec<u8>,
    /// The last chunk, or the connection's end, was seen.
    ended: bool,
}

/// The request an `EventSource` makes, with `extra` header lines (`"Name: value"`).
pub fn sse_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: chatup.test\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

impl SseStream {
    /// Opens `path` as an event stream; panics unless the answer is a 200 stream.
    pub async fn open(addr: SocketAddr, path: &str, extra: &[&str]) -> Self {
        match Self::try_open(addr, &sse_request(path, extra), None).await {
            Ok(s) => s,
            Err(Ok(resp)) => panic!(
                "SSE {path}: {} {:?} {}",
                resp.status,
                resp.headers,
                resp.text()
            ),
            Err(Err(e)) => panic!("SSE {path}: {e}"),
        }
    }

    /// Sends `request`; Ok with a 200 `text/event-stream`, otherwise the other response
    /// (`Err(Ok)`) or the failure (`Err(Err)`). `rcvbuf` shrinks the socket's receive buffer
    /// (set before connecting), so that a client that stops reading pushes back at once.
    pub async fn try_open(
        addr: SocketAddr,
        request: &[u8],
        rcvbuf: Option<u32>,
    ) -> Result<Self, Result<HttpResponse, String>> {
        let deadline = Instant::now() + crate::WAIT;
        let (mut stream, mut buf, end) = http::send_and_read_head(addr, request, rcvbuf, deadline)
            .await
            .map_err(Err)?;
        let (status, headers) = http::parse_head(&buf[..end]).map_err(Err)?;
        let response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let is_stream = response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if status != 200 || !is_stream {
            return Err(http::read_response(&mut stream, buf, deadline).await);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let raw = buf.split_off(end);
        let mut s = Self {
            stream,
            response,
            chunked,
            raw,
            text: Vec::new(),
            ended: false,
        };
        s.dechunk();
        Ok(s)
    }

    /// Moves complete chunks (or everything, when not chunked) from `raw` to `text`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.text.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .unwrap_or_else(|| panic!("bad chunk size line {:?}", &self.raw[..line_end]));
            let total = line_end + 2 + size + 2;
            if self.raw.len() < total {
                return;
            }
            assert_eq!(
                &self.raw[total - 2..total],
                b"\r\n",
                "chunk not ended by CRLF"
            );
            if size == 0 {
                self.ended = true;
            }
            self.text
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..total);
        }
    }

    /// The next complete block from `text`, if there is one.
    fn parse_one(&mut self) -> Option<SseEvent> {
        let end = self.text.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.text.drain(..end + 2).collect();
        let block = String::from_utf8(block).expect("UTF-8 stream");
        let mut event = SseEvent::default();
        let mut data: Vec<&str> = Vec::new();
        let mut fields = 0;
        for line in block.lines().filter(|l| !l.is_empty()) {
            if line.starts_with(':') {
                continue;
            }
            fields += 1;
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = Some(value.to_owned()),
                "data" => data.push(value),
                "retry" => event.retry = value.parse().ok(),
                other => panic!("unknown SSE field {other:?} in {block:?}"),
            }
        }
        event.comment = fields == 0;
        event.data = data.join("\n");
        Some(event)
    }

    /// The next block (comments included) within `wait`; `None` at the stream's end or
    /// when nothing came.
    pub async fn next_block(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut chunk = [0u8; 16384];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                    return None;
                }
                Ok(Ok(n)) => {
                    self.raw.extend_from_slice(&chunk[..n]);
                    self.dechunk();
                }
                Err(_) => return None,
            }
        }
    }

    /// The next event that carries data (skipping pings and the `retry` block).
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next_block(left).await?;
            if !event.comment && (event.event.is_some() || !event.data.is_empty()) {
                return Some(event);
            }
        }
    }

    /// The next data event, which must come within [`crate::WAIT`].
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next_event(crate::WAIT)
            .await
            .expect("an SSE event within the wait")
    }

    /// `n` message events, checked to be plain messages.
    pub async fn expect_messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let event = self.expect_event().await;
            assert_eq!(event.event, None, "a message event: {event:?}");
            out.push(event);
        }
        out
    }

    /// No data event within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Some(event) = self.next_event(wait).await {
            panic!("unexpected SSE event {event:?}");
        }
    }

    /// Whether the stream ended (the last chunk, or the connection's end) within `wait`;
    /// events before the end are returned.
    pub async fn read_to_end(&mut self, wait: Duration) -> (bool, Vec<SseEvent>) {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_block(left).await {
                Some(event) => events.push(event),
                None => return (self.ended, events),
            }
        }
    }
}

/// `GET path` as a long poll; the answer within `wait`.
pub async fn poll(addr: SocketAddr, path: &str, wait: Duration) -> HttpResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: chatup.test\r\nConnection: close\r\n\r\n");
    http::request(addr, req.as_bytes(), wait).await
}
