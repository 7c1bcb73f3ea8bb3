//! A lean WebSocket client for subscribers: handshake, then server frames read from one
//! reusable buffer. The generator pays for every delivery it receives, so it does not
//! allocate per frame or validate what the server is trusted to send.

use std::io;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::IpBindAddressNoPort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::payload::find;

const MAX_HEADER: usize = 8192;
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    #[error("the server answered {0:?}")]
    Refused(String),
    #[error("the server closed the connection during the handshake")]
    Eof,
    #[error("wrong Sec-WebSocket-Accept")]
    BadAccept,
}

/// One server frame, borrowed from the client's buffer.
#[derive(Debug)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    /// The server closed with this code (1005 when it gave none).
    Close(u16),
    /// A long poll was answered (its messages come next); only polls say this.
    Answered,
}

pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Opens a TCP connection from `source` (any port) to `addr`.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        // Let connect() pick the port per destination, so each source address gives a full
        // ephemeral range to every server port instead of sharing one.
        setsockopt(&socket, IpBindAddressNoPort, &true).map_err(io::Error::from)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until `buf[..*end]` holds a whole response head and returns its length (the
/// bytes after it, up to `end`, are the body's first).
pub async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    end: &mut usize,
) -> Result<usize, ConnectError> {
    loop {
        if let Some(pos) = find(&buf[..*end], b"\r\n\r\n") {
            return Ok(pos + 4);
        }
        if *end == buf.len() {
            if buf.len() >= MAX_HEADER {
                return Err(ConnectError::Refused("an over-long response header".into()));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[*end..]).await?;
        if n == 0 {
            return Err(ConnectError::Eof);
        }
        *end += n;
    }
}

/// Refuses a response head whose status is not `code`.
pub fn expect_status(head: &str, code: &str) -> Result<(), ConnectError> {
    let status = head.lines().next().unwrap_or_default();
    match status.strip_prefix("HTTP/1.1 ") {
        Some(rest) if rest.starts_with(code) => Ok(()),
        _ => Err(ConnectError::Refused(status.to_owned())),
    }
}

/// The value of header `name` in a response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, value) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl WsClient {
    /// Connects and upgrades `GET path` on `addr`.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        host: &str,
        path: &str,
        key_seed: u64,
    ) -> Result<Self, ConnectError> {
        let mut stream = tcp_connect(addr, source).await?;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&key_seed.to_le_bytes());
        nonce[8..].copy_from_slice(&key_seed.rotate_left(29).to_be_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 2048];
        let mut end = 0;
        let head_len = read_head(&mut stream, &mut buf, &mut end).await?;
        let head = String::from_utf8_lossy(&buf[..head_len]);
        expect_status(&head, "101")?;
        let expected = chatup_tests::raw::accept_for(&key);
        if header(&head, "sec-websocket-accept") != Some(expected.as_str()) {
            return Err(ConnectError::BadAccept);
        }
        Ok(Self {
            stream,
            buf,
            start: head_len,
            end,
        })
    }

    /// The next text or close frame; pings are answered on the way.
    pub async fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        loop {
            match parse_header(&self.buf[self.start..self.end]) {
                Some(Ok((opcode, header_len, len))) => {
                    let total = header_len + len;
                    if self.end - self.start >= total {
                        let from = self.start + header_len;
                        self.start += total;
                        match opcode {
                            0x1 | 0x2 => {
                                let payload = &self.buf[from..from + len];
                                return Ok(Frame::Text(payload));
                            }
                            0x8 => {
                                let p = &self.buf[from..from + len];
                                let code = if p.len() >= 2 {
                                    u16::from_be_bytes([p[0], p[1]])
                                } else {
                                    1005
                                };
                                return Ok(Frame::Close(code));
                            }
                            0x9 => {
                                let payload = self.buf[from..from + len].to_vec();
                                self.send_control(0xA, &payload).await?;
                            }
                            _ => {}
                        }
                        continue;
                    }
                    if total > MAX_FRAME {
                        return Err(io::Error::other(format!("a {total}-byte frame")));
                    }
                    self.make_room(total);
                }
                Some(Err(e)) => return Err(e),
                None => self.make_room(14),
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }

    /// Makes sure `need` bytes from `start` fit in the buffer.
    fn make_room(&mut self, need: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need.max(self.end + 512) {
            self.buf
                .resize(need.max(self.end + 512).next_power_of_two(), 0);
        }
    }

    /// Sends a masked control frame (pong or close).
    async fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let payload = &payload[..payload.len().min(125)];
        let mask = [0x5a, 0x17, 0xc3, 0x81];
        let mut frame = Vec::with_capacity(6 + payload.len());
        frame.push(0x80 | opcode);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }
}

/// (opcode, header length, payload length) of the server frame at the start of `bytes`,
/// `None` when more bytes are needed.
fn parse_header(bytes: &[u8]) -> Option<io::Result<(u8, usize, usize)>> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    if bytes[1] & 0x80 != 0 {
        return Some(Err(io::Error::other("the server masked a frame")));
    }
    let (header_len, len) = match bytes[1] & 0x7f {
        126 => {
            if bytes.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize)
        }
        127 => {
            if bytes.len() < 10 {
                return None;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[2..10]);
            (10, u64::from_be_bytes(n) as usize)
        }
        n => (2, n as usize),
    };
    Some(Ok((opcode, header_len, len)))
}

/// An unmasked server text frame carrying `payload`.
pub fn server_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = server_text_frame(&vec![b'a'; len]);
            let (op, header, parsed) = parse_header(&frame).unwrap().unwrap();
            assert_eq!((op, parsed), (1, len));
            assert_eq!(header + len, frame.len());
            assert!(parse_header(&frame[..header - 1]).is_none());
        }
        assert!(parse_header(&[0x81, 0x85]).unwrap().is_err());
    }
}
