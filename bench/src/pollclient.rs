//! A long-poll viewer: `GET <path>?transport=poll[&since=...]` on one keep-alive connection,
//! each answer's `since` sent back with the next poll, so the answers together are the
//! channel's messages in order, each once.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wsclient::{expect_status, header, read_head, tcp_connect, ConnectError, Frame};

/// An answer larger than this is taken for a broken server.
const MAX_BODY: usize = 16 << 20;

/// A poll's answer (README "Long-poll").
#[derive(Deserialize)]
struct Answer {
    messages: Vec<Box<RawValue>>,
    since: String,
}

pub struct PollClient {
    stream: TcpStream,
    /// Where to reconnect when the server ends a keep-alive connection.
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: String,
    /// The request target without `since`.
    path: String,
    /// The last answer's `since`, which the next poll sends back.
    since: Option<String>,
    /// A poll is out and its answer not yet read.
    waiting: bool,
    /// The server said `Connection: close`: the next poll opens a new connection.
    reconnect: bool,
    /// The last answer's messages not yet returned, last first.
    pending: Vec<Box<RawValue>>,
    /// The message returned last (its bytes are lent out).
    current: Option<Box<RawValue>>,
    buf: Vec<u8>,
}

impl PollClient {
    /// Connects and sends the first poll (without `since`: the channel's recent messages, or
    /// the next one).
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        host: &str,
        path: &str,
    ) -> Result<Self, ConnectError> {
        let mut client = Self {
            stream: tcp_connect(addr, source).await?,
            addr,
            source,
            host: host.to_owned(),
            path: format!(
                "{path}{}transport=poll",
                if path.contains('?') { '&' } else { '?' }
            ),
            since: None,
            waiting: false,
            reconnect: false,
            pending: Vec::new(),
            current: None,
            buf: vec![0u8; 4096],
        };
        client.send_poll().await?;
        Ok(client)
    }

    /// The next message of the last answer; when none is left, polls again and says
    /// `Answered` once the answer is in.
    pub async fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        if let Some(message) = self.pending.pop() {
            let message = self.current.insert(message);
            return Ok(Frame::Text(message.get().as_bytes()));
        }
        if !self.waiting {
            self.send_poll().await?;
        }
        self.read_answer().await?;
        Ok(Frame::Answered)
    }

    async fn send_poll(&mut self) -> io::Result<()> {
        if self.reconnect {
            self.stream = tcp_connect(self.addr, self.source).await?;
            self.reconnect = false;
        }
        let since = match &self.since {
            Some(s) => format!("&since={s}"),
            None => String::new(),
        };
        let request = format!(
            "GET {}{since} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.path, self.host
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.waiting = true;
        Ok(())
    }

    async fn read_answer(&mut self) -> io::Result<()> {
        let mut end = 0;
        let head_len = read_head(&mut self.stream, &mut self.buf, &mut end)
            .await
            .map_err(io::Error::other)?;
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        expect_status(&head, "200").map_err(io::Error::other)?;
        let length = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n <= MAX_BODY)
            .ok_or_else(|| io::Error::other("a poll answer without a usable Content-Length"))?;
        self.reconnect =
            header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let whole = head_len + length;
        if self.buf.len() < whole {
            self.buf.resize(whole, 0);
        }
        while end < whole {
            let n = self.stream.read(&mut self.buf[end..whole]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            end += n;
        }
        self.waiting = false;
        let answer: Answer = serde_json::from_slice(&self.buf[head_len..whole])
            .map_err(|e| io::Error::other(format!("a poll answer: {e}")))?;
        self.since = Some(answer.since);
        self.pending = answer.messages;
        self.pending.reverse();
        Ok(())
    }
}
