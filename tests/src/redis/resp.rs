//! RESP2 over a plain `TcpStream`: one command per connection, blocking and bounded.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use super::COMMAND_TIMEOUT;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …` (the text without the `-`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…`; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` is the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as `redis-cli --raw` prints it: strings and numbers as they are, errors as
    /// their message, nil as the empty string, arrays one element a line.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join("\n")
            }
        }
    }

    /// The elements of an array reply as text (one element for any other reply, none for nil).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect(),
            Reply::Array(None) | Reply::Bulk(None) => Vec::new(),
            other => vec![other.text()],
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Sends one command to the Redis at `addr` on a new connection and reads its reply. An error
/// reply is `Ok(Reply::Error)`; `Err` means the server could not be reached or spoke
/// something other than RESP.
pub fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        req.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        req.extend_from_slice(arg.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req)?;
    read_reply(&mut BufReader::new(stream))
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "reply line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    let Some((&kind, rest)) = line.split_first() else {
        return Err(bad("empty reply line".into()));
    };
    let rest = String::from_utf8_lossy(rest).into_owned();
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| bad(format!("not a number in a reply: {s:?}")))
    };
    match kind {
        b'+' => Ok(Reply::Status(rest)),
        b'-' => Ok(Reply::Error(rest)),
        b':' => Ok(Reply::Int(number(&rest)?)),
        b'$' => {
            let Ok(len) = usize::try_from(number(&rest)?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let Ok(len) = usize::try_from(number(&rest)?) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(bad(format!(
            "unknown reply type {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(&line)
        ))),
    }
}

/// The value of `field` in an INFO-style reply (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|v| v.strip_prefix(':'))
            .map(str::to_owned)
    })
}
