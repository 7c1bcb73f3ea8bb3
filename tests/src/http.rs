//! A small HTTP/1.1 client: enough to publish with POST, call /health, and read the
//! responses to deliberately broken WebSocket handshakes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
    }
}

/// Where a response head ends (the index after `\r\n\r\n`).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a response head; returns status and headers.
pub fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let text = std::str::from_utf8(head).map_err(|e| format!("head is not UTF-8: {e}"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok((status, headers))
}

/// Sends `request` (complete, with `Connection: close`) to `addr` and reads the whole
/// response. Panics when no complete response arrives within `timeout`.
pub async fn request(addr: SocketAddr, request: &[u8], timeout: Duration) -> HttpResponse {
    try_request(addr, request, timeout)
        .await
        .unwrap_or_else(|e| panic!("HTTP request to {addr} failed: {e}"))
}

/// Like [`request`] but returns the failure.
pub async fn try_request(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    timeout_at(deadline, stream.write_all(request))
        .await
        .map_err(|_| "write timed out".to_owned())?
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut stream, Vec::new(), deadline).await
}

/// Reads one response from `stream` (`buf` holds bytes already read).
pub async fn read_response(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<HttpResponse, String> {
    let mut eof = false;
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if eof {
            return Err(format!(
                "connection closed before a full response head: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        eof = read_more(stream, &mut buf, deadline).await? == 0;
    };
    let (status, headers) = parse_head(&buf[..end])?;
    let mut rest = buf.split_off(end);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if read_more(stream, &mut rest, deadline).await? == 0 {
                    return Err("connection closed inside a chunked body".into());
                }
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                if read_more(stream, &mut rest, deadline).await? == 0 {
                    return Err("connection closed inside a chunk".into());
                }
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        while rest.len() < len {
            if read_more(stream, &mut rest, deadline).await? == 0 {
                return Err("connection closed inside the body".into());
            }
        }
        rest.truncate(len);
        rest
    } else {
        while read_more(stream, &mut rest, deadline).await? > 0 {}
        rest
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = timeout_at(deadline, stream.read(&mut chunk))
        .await
        .map_err(|_| {
            format!(
                "timed out waiting for the response (have {:?})",
                String::from_utf8_lossy(buf)
            )
        })?
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Builds a request with `Host` and `Connection: close`, `headers` and `body`
/// (Content-Length added when a body is given).
pub fn build_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

impl crate::Chatup {
    /// `POST <path>` through nginx with `headers` and `body`.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        request(
            self.nginx_addr(),
            &build_request("POST", path, headers, Some(body)),
            crate::WAIT,
        )
        .await
    }

    /// `GET <path>` through nginx.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        request(
            self.nginx_addr(),
            &build_request("GET", path, headers, None),
            crate::WAIT,
        )
        .await
    }

    /// `method path` through nginx with a valid admin token (Bearer) and `body` as JSON.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> HttpResponse {
        let auth = format!("Bearer {}", crate::token::admin_token());
        let body = body.map(serde_json::Value::to_string);
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        request(
            self.nginx_addr(),
            &build_request(method, path, &headers, body.as_deref().map(str::as_bytes)),
            crate::WAIT,
        )
        .await
    }

    /// `POST /pub/<ch>` with a bearer token and a `text/plain` body.
    pub async fn post_text(&self, ch: &str, token: &str, text: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {token}");
        self.post(
            &format!("/pub/{ch}"),
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
            text,
        )
        .await
    }

    /// `POST /pub/<ch>` with a bearer token and a JSON body.
    pub async fn post_json(&self, ch: &str, token: &str, body: &serde_json::Value) -> HttpResponse {
        let auth = format!("Bearer {token}");
        self.post(
            &format!("/pub/{ch}"),
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Publishes `text` on `ch` with POST (as "alice"); panics unless it is accepted.
    /// Returns the answer `{"ch","id","ep"}`.
    pub async fn publish(&self, ch: &str, text: &str) -> serde_json::Value {
        let resp = self
            .post_text(ch, &crate::token::token("alice"), text.as_bytes())
            .await;
        assert_eq!(
            resp.status,
            200,
            "POST /pub/{ch} failed: {} {}",
            resp.status,
            resp.text()
        );
        resp.json()
    }

    /// Publishes `m<from>` to `m<to>` on `ch`, checking each gets the id of its number;
    /// returns the channel's epoch.
    pub async fn publish_n(&self, ch: &str, from: u64, to: u64) -> u64 {
        let mut ep = 0;
        for i in from..=to {
            let ack = self.publish(ch, &format!("m{i}")).await;
            assert_eq!(ack["id"], i, "{ack}");
            ep = ack["ep"].as_u64().expect("ep");
        }
        ep
    }
}

/// Connects to `addr` (with a receive buffer of `rcvbuf` bytes when given, set before
/// connecting so that a client that stops reading pushes back at once), sends `request` and
/// reads up to the end of the response head: the stream, the bytes read (the head and what
/// followed it) and where the head ends.
pub async fn send_and_read_head(
    addr: SocketAddr,
    request: &[u8],
    rcvbuf: Option<u32>,
    deadline: Instant,
) -> Result<(TcpStream, Vec<u8>, usize), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(size) = rcvbuf {
        socket
            .set_recv_buffer_size(size)
            .map_err(|e| e.to_string())?;
    }
    let mut stream = timeout_at(deadline, socket.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    timeout_at(deadline, stream.write_all(request))
        .await
        .map_err(|_| "write timed out".to_owned())?
        .map_err(|e| format!("write: {e}"))?;
    // Read the head only: the body (or frames) may follow it in the same packet.
    let mut buf = Vec::new();
    loop {
        if let Some(end) = head_end(&buf) {
            return Ok((stream, buf, end));
        }
        let mut chunk = [0u8; 4096];
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "no response head in time (got {:?})",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Ok(Ok(0)) => {
                return Err(format!(
                    "connection closed before a response head (got {:?})",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
