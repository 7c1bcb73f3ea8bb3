//! A raw WebSocket client over TCP: sends any bytes, hand-made (also invalid) frames, and
//! parses the server's frames itself. Nothing is answered automatically (no pong).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::http::{self, HttpResponse};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame as the server sent it (or as a test builds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// The three RSV bits, in the low bits.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(payload: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_TEXT, payload)
    }

    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
        }
    }

    pub fn close(code: u16, reason: &[u8]) -> Self {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        Self::new(OP_CLOSE, payload)
    }

    /// The close code of a close frame (None for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }

    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The bytes on the wire (masked with a fixed key when `masked`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(((self.fin as u8) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 0x0f));
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// What reading a frame gave instead of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Timeout,
    /// The server closed the TCP connection.
    Eof,
    Io(String),
    /// The server sent bytes that are not a valid server frame.
    Protocol(String),
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn random_key() -> String {
    let mut bytes = [0u8; 16];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(7);
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` value for `key` (RFC 6455), as tungstenite computes it; the
/// bench checks its handshakes with it too. The module keeps its own (ngx-module/core), as it
/// runs in nginx without tungstenite.
pub fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A correct upgrade request for `path`, with `key`.
pub fn upgrade_request(path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
    .into_bytes()
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The client's local port (for [`crate::Chatup::worker_of`]).
    pub local_port: u16,
    /// The 101 response.
    pub response: HttpResponse,
}

impl RawWs {
    /// Upgrades `path` on `addr`; panics unless the answer is a valid 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::connect_with_rcvbuf(addr, path, None).await
    }

    /// Like [`RawWs::connect`], with a small receive buffer (set before connecting) so that
    /// a client that stops reading pushes back on the server quickly.
    pub async fn connect_with_rcvbuf(addr: SocketAddr, path: &str, rcvbuf: Option<u32>) -> Self {
        let key = random_key();
        match Self::handshake(addr, &upgrade_request(path, &key), rcvbuf).await {
            Ok(ws) => {
                assert_eq!(
                    ws.response.header("sec-websocket-accept"),
                    Some(accept_for(&key).as_str()),
                    "Sec-WebSocket-Accept of {:?}",
                    ws.response
                );
                ws
            }
            Err(Ok(resp)) => panic!(
                "upgrade of {path} refused: {} {:?} {}",
                resp.status,
                resp.headers,
                resp.text()
            ),
            Err(Err(e)) => panic!("upgrade of {path} failed: {e}"),
        }
    }

    /// Sends `request` (a whole upgrade request, possibly broken on purpose). Ok with a
    /// 101; otherwise the non-101 response (`Err(Ok)`) or the failure (`Err(Err)`).
    /// Bounded by [`crate::WAIT`].
    pub async fn handshake(
        addr: SocketAddr,
        request: &[u8],
        rcvbuf: Option<u32>,
    ) -> Result<Self, Result<HttpResponse, String>> {
        let deadline = Instant::now() + crate::WAIT;
        let (mut stream, mut buf, end) = http::send_and_read_head(addr, request, rcvbuf, deadline)
            .await
            .map_err(Err)?;
        let local_port = stream.local_addr().map_err(|e| Err(e.to_string()))?.port();
        let (status, _) = http::parse_head(&buf[..end]).map_err(Err)?;
        if status != 101 {
            // Read the rest of the error response (body).
            return Err(http::read_response(&mut stream, buf, deadline).await);
        }
        let (status, headers) = http::parse_head(&buf[..end]).map_err(Err)?;
        let rest = buf.split_off(end);
        Ok(Self {
            stream,
            buf: rest,
            local_port,
            response: HttpResponse {
                status,
                headers,
                body: Vec::new(),
            },
        })
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_raw(&frame.encode()).await;
    }

    /// Writes `bytes` as they are; write errors (the server may have closed) are ignored.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(crate::WAIT, self.stream.write_all(bytes)).await;
    }

    /// Reads one server frame within `timeout`.
    pub async fn read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Err(e)) => return Err(ReadError::Io(e.to_string())),
                Ok(Ok(0)) => return Err(ReadError::Eof),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until a close frame (returned with the frames before it). Panics on
    /// timeout or when the connection ends without a close frame.
    pub async fn expect_close(&mut self, timeout: Duration) -> (Frame, Vec<Frame>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Ok(f) if f.opcode == OP_CLOSE => return (f, before),
                Ok(f) => before.push(f),
                Err(e) => panic!(
                    "expected a close frame within {timeout:?}, got {e:?} after {} frames: {:?}",
                    before.len(),
                    before
                        .iter()
                        .map(|f| crate::brief(&f.payload_text()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Reads frames until a close frame and returns its code.
    pub async fn expect_close_code(&mut self, timeout: Duration) -> Option<u16> {
        self.expect_close(timeout).await.0.close_code()
    }

    /// Reads frames until a text frame; returns it parsed as JSON. Panics otherwise.
    pub async fn expect_json(&mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Ok(f) if f.opcode == OP_TEXT => {
                    return serde_json::from_slice(&f.payload).unwrap_or_else(|e| {
                        panic!(
                            "text frame is not JSON ({e}): {}",
                            crate::brief(&f.payload_text())
                        )
                    })
                }
                Ok(f) if f.opcode == OP_PING || f.opcode == OP_PONG => continue,
                Ok(f) => panic!(
                    "expected a text frame, got opcode {} {}",
                    f.opcode,
                    crate::brief(&f.payload_text())
                ),
                Err(e) => panic!("expected a text frame, got {e:?}"),
            }
        }
    }

    /// Whether the server closed the TCP connection within `timeout` (reading and
    /// dropping whatever comes before).
    pub async fn wait_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Ok(_) => {}
                Err(ReadError::Protocol(_)) => self.buf.clear(),
                Err(ReadError::Eof) | Err(ReadError::Io(_)) => return true,
                Err(ReadError::Timeout) => return false,
            }
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Parses a server frame at the start of `buf`: Ok(None) when more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ReadError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > 64 << 20 {
        return Err(ReadError::Protocol(format!("frame of {len} bytes")));
    }
    let mut key = None;
    if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        key = Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        at += 4;
    }
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(key) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some((
        Frame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        },
        at + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_for_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
