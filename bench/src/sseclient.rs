//! A lean SSE client for viewers: `GET` with `Accept: text/event-stream`, then the body
//! de-chunked into one buffer and cut into events at each blank line. An event is counted
//! only once its blank line has arrived, so a message split over reads or chunks counts
//! once; comments (`: ping`) and `retry:` carry no data and are skipped.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::payload::{digits_after, find};
use crate::wsclient::{expect_status, header, read_head, tcp_connect, ConnectError, Frame};

/// A chunk or event larger than this is taken for a broken stream.
const MAX_EVENT: usize = 1 << 20;

pub struct SseClient {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked (a chunk-size line may be split over reads).
    raw: Vec<u8>,
    /// The event stream, de-chunked; `text[done..]` is not yet returned.
    text: Vec<u8>,
    done: usize,
    /// The body is chunked (HTTP/1.1); else it is the event stream as it is.
    chunked: bool,
    /// Bytes of the current chunk not yet read; 0 when a size line comes next.
    left: usize,
    /// The last chunk came (the server ended the stream, usually right after its close
    /// event, which must still be read).
    ended: bool,
}

impl SseClient {
    /// Connects and opens the stream `GET path` on `addr`.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        host: &str,
        path: &str,
    ) -> Result<Self, ConnectError> {
        let mut stream = tcp_connect(addr, source).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 2048];
        let mut end = 0;
        let head_len = read_head(&mut stream, &mut buf, &mut end).await?;
        let head = String::from_utf8_lossy(&buf[..head_len]);
        expect_status(&head, "200")?;
        let chunked =
            header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut client = Self {
            stream,
            raw: Vec::with_capacity(1024),
            text: Vec::with_capacity(1024),
            done: 0,
            chunked,
            left: 0,
            ended: false,
        };
        client.take_in(&buf[head_len..end])?;
        Ok(client)
    }

    /// The next message (`data:`) or close (`event: close`); pings are skipped.
    pub async fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        loop {
            if let Some(len) = find(&self.text[self.done..], b"\n\n") {
                let (from, to) = (self.done, self.done + len);
                self.done = to + 2;
                match read_event(&self.text[from..to]) {
                    Event::Data(data) => {
                        return Ok(Frame::Text(&self.text[from + data.start..from + data.end]))
                    }
                    Event::Close(code) => return Ok(Frame::Close(code)),
                    Event::Other => continue,
                }
            }
            // Nothing whole left: drop what was returned before reading more.
            self.text.drain(..self.done);
            self.done = 0;
            if self.text.len() > MAX_EVENT {
                return Err(io::Error::other("an over-long event"));
            }
            if self.ended {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.take_in(&buf[..n])?;
        }
    }

    /// Appends what was read to the event stream, de-chunking it.
    fn take_in(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.chunked {
            self.text.extend_from_slice(bytes);
            return Ok(());
        }
        self.raw.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.raw.len() {
            if self.left > 0 {
                let n = self.left.min(self.raw.len() - at);
                self.text.extend_from_slice(&self.raw[at..at + n]);
                self.left -= n;
                at += n;
                continue;
            }
            let Some(eol) = find(&self.raw[at..], b"\r\n") else {
                break;
            };
            let line = &self.raw[at..at + eol];
            at += eol + 2;
            // The blank line is the CRLF that ends the previous chunk's data.
            if line.is_empty() {
                continue;
            }
            self.left = chunk_size(line)?;
            if self.left == 0 {
                self.ended = true;
                break;
            }
        }
        self.raw.drain(..at);
        if self.raw.len() > MAX_EVENT {
            return Err(io::Error::other("an over-long chunk-size line"));
        }
        Ok(())
    }
}

/// A chunk-size line: hex digits, maybe `;extensions`.
fn chunk_size(line: &[u8]) -> io::Result<usize> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
        .filter(|n| *n <= MAX_EVENT)
        .ok_or_else(|| {
            io::Error::other(format!(
                "bad chunk size {:?}",
                String::from_utf8_lossy(line)
            ))
        })
}

/// What an event says; `Data` is where its `data:` value lies in it.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Data(Range<usize>),
    /// `event: close` with the code in its data (1005 when it gives none).
    Close(u16),
    /// A comment (`: ping`), `retry:`, or anything else without data.
    Other,
}

/// Reads an event (its lines, without the blank line that ends it).
fn read_event(event: &[u8]) -> Event {
    let mut data = None;
    let mut close = false;
    let mut at = 0;
    for line in event.split(|b| *b == b'\n') {
        if line.starts_with(b"data: ") {
            data = Some(at + 6..at + line.len());
        } else if line == b"event: close" {
            close = true;
        }
        at += line.len() + 1;
    }
    match (close, data) {
        (true, data) => {
            let code = data
                .and_then(|d| digits_after(&event[d], b"\"code\":"))
                .and_then(|c| u16::try_from(c).ok());
            Event::Close(code.unwrap_or(1005))
        }
        (false, Some(d)) => Event::Data(d),
        (false, None) => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pings_and_close() {
        assert_eq!(read_event(b"retry: 2000"), Event::Other);
        assert_eq!(read_event(b": ping"), Event::Other);
        let message = b"id: c:1:1\ndata: {\"id\":1}";
        assert_eq!(read_event(message), Event::Data(16..24));
        let close = b"event: close\ndata: {\"code\":4000,\"reason\":\"slow\"}";
        assert_eq!(read_event(close), Event::Close(4000));
        assert_eq!(read_event(b"event: close"), Event::Close(1005));
    }

    /// The same stream, chunked and cut at every byte, gives each message once, then the
    /// close event that comes with the last chunk.
    #[test]
    fn split_chunks_count_each_message_once() {
        let events = "retry: 2000\n\nid: c:1:1\ndata: {\"id\":1}\n\n: ping\n\n\
                      id: c:1:2\ndata: {\"id\":2}\n\n";
        let mut body = Vec::new();
        for part in [&events[..20], &events[20..21], &events[21..]] {
            body.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        let close = "event: close\ndata: {\"code\":1001,\"reason\":\"\"}\n\n";
        let last = format!("{:x}\r\n{close}\r\n0\r\n\r\n", close.len());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut req = [0u8; 512];
                let _ = s.read(&mut req).await.unwrap();
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                             Transfer-Encoding: chunked\r\n\r\n";
                s.write_all(head).await.unwrap();
                for byte in body {
                    s.write_all(&[byte]).await.unwrap();
                    s.flush().await.unwrap();
                }
                s.write_all(last.as_bytes()).await.unwrap();
            });
            let mut client = SseClient::connect(addr, None, "h", "/sub/c").await.unwrap();
            let mut got = Vec::new();
            loop {
                match client.next_frame().await {
                    Ok(Frame::Text(d)) => got.push(String::from_utf8_lossy(d).into_owned()),
                    Ok(other) => got.push(format!("{other:?}")),
                    Err(e) => {
                        got.push(format!("{:?}", e.kind()));
                        break;
                    }
                }
            }
            assert_eq!(
                got,
                ["{\"id\":1}", "{\"id\":2}", "Close(1001)", "UnexpectedEof"]
            );
            server.await.unwrap();
        });
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"1A;x=y").unwrap(), 26);
        assert!(chunk_size(b"zz").is_err());
    }
}
