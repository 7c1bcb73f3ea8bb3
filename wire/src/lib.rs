//! The relay protocol between an nginx worker running `ngx_http_chatup_module` and the
//! `chatup-sidecar` on the same host.
//!
//! Every nginx worker holds one Unix-socket stream to the sidecar. Both directions carry
//! length-prefixed binary frames:
//!
//! ```text
//! frame   := length:u32be  kind:u8  body        length counts kind + body
//! str     := len:u16be utf8-bytes
//! bytes   := len:u32be bytes
//! option  := 0 | 1 value
//! ```
//!
//! The publish frames, field by field:
//!
//! ```text
//! Publish   (0x07) := id:u64 channel:bytes authorization:option<bytes>
//!                     content_type:option<bytes> idempotency_key:option<bytes> body:bytes
//! Published (0x87) := id:u64 status:u16 count:u16 (name:str value:str)* body:bytes
//! ```
//!
//! Worker → sidecar ([`ToSidecar`]): `Hello`, `Subscribe` (with the worker's resume point
//! when it already holds messages of that channel), `Unsubscribe`, `Stats` (subscriber
//! counts and the worker's delivery [`Totals`]), `Admit` (a viewer's request for private
//! channels, with its token), `Left` (an admitted viewer is gone) and `Publish` (a
//! `POST /pub/<ch>` request the worker answers for the sidecar: [`PublishRequest`]).
//! Sidecar → worker ([`ToWorker`]): `Policy` (which channels are private, right after
//! `Hello`), `Message`, `Backlog` (the answer to every `Subscribe`), `EpochReset`,
//! `Admitted` (the answer to every `Admit`), `CloseViewer` (an admitted viewer must go:
//! its token expired, or its user was banned) and `Published` (the answer to every
//! `Publish`: [`PublishAnswer`]). Answers carry the id of their request and may come in
//! any order.
//!
//! The crate has no I/O: callers own their buffers and call [`encode`] and [`decode`].
//! Decoding never panics on any input; malformed frames give a [`WireError`].
#![forbid(unsafe_code)]

use std::fmt;

pub mod channel;
pub mod close;
pub mod private;

/// Bumped whenever a frame changes shape; a sidecar refuses a worker that speaks another.
pub const PROTOCOL_VERSION: u16 = 4;

/// Largest frame either side accepts (kind byte + body). A backlog of a full history of
/// large messages stays well under it; anything bigger is a broken peer.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Bytes before the body: the length prefix and the kind byte.
pub const HEADER_LEN: usize = 5;

/// Where a reader stands in a channel: the channel's epoch and the last id it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: u64,
    pub id: u64,
}

/// How a [`ToWorker::Backlog`] relates to the `since` of the `Subscribe` it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BacklogKind {
    /// No `since` was given: the messages are the channel's most recent ones.
    Recent = 0,
    /// The messages are exactly those after `since`; nothing is missing.
    Continued = 1,
    /// Same epoch, but history no longer reaches back to `since`: messages in between are lost.
    Truncated = 2,
    /// The channel's epoch is not the one in `since` (its history was lost): the messages are
    /// the new epoch's most recent ones and the old position means nothing any more.
    EpochChanged = 3,
}

impl BacklogKind {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Self::Recent,
            1 => Self::Continued,
            2 => Self::Truncated,
            3 => Self::EpochChanged,
            other => return Err(WireError::InvalidValue("backlog kind", other)),
        })
    }
}

/// One message of a channel: its id and the exact bytes subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub payload: Vec<u8>,
}

/// A channel and how many subscribers a worker has on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCount {
    pub channel: String,
    pub subscribers: u32,
}

/// What a worker did for its subscribers: counters that only grow, for the sidecar's metrics.
///
/// The totals in a `Stats` frame count from the start of the worker's current counting
/// window, not from the start of the process: a window opens with each relay connection
/// and starts where the totals last reported on the previous connection ended. The sidecar
/// therefore adds up the last totals of every connection, closed ones included, and counts
/// each event once even when a worker reconnects. (What a worker counted after its last
/// `Stats` on a connection that broke goes into its next window.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages queued to subscribers as they reached the worker (live, or filling the gap
    /// after a relay reconnect), counted once per subscriber.
    pub delivered: u64,
    /// Messages replayed from the worker's channel cache to a subscriber that connected or
    /// resumed, counted once per subscriber.
    pub replayed: u64,
    /// Subscribers closed with 4000 because they fell too far behind.
    pub slow_closes: u64,
}

impl Totals {
    /// What was counted after `earlier` (field by field, never below zero).
    pub fn since(self, earlier: Totals) -> Totals {
        Totals {
            delivered: self.delivered.saturating_sub(earlier.delivered),
            replayed: self.replayed.saturating_sub(earlier.replayed),
            slow_closes: self.slow_closes.saturating_sub(earlier.slow_closes),
        }
    }

    /// Both counts added (field by field, saturating).
    pub fn plus(self, other: Totals) -> Totals {
        Totals {
            delivered: self.delivered.saturating_add(other.delivered),
            replayed: self.replayed.saturating_add(other.replayed),
            slow_closes: self.slow_closes.saturating_add(other.slow_closes),
        }
    }

    /// The larger of each field.
    pub fn max(self, other: Totals) -> Totals {
        Totals {
            delivered: self.delivered.max(other.delivered),
            replayed: self.replayed.max(other.replayed),
            slow_closes: self.slow_closes.max(other.slow_closes),
        }
    }
}

/// A `POST /pub/<ch>` request as an nginx worker read it: what the sidecar's publish
/// checks read of an HTTP request, as raw bytes (the sidecar judges them exactly as it
/// judges the same request on its own HTTP port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Unique among the worker's requests waiting on this connection; the answer carries it.
    pub id: u64,
    /// The path after the location's prefix (percent-decoded, as nginx has it).
    pub channel: Vec<u8>,
    /// The `Authorization` header (the first one), if any.
    pub authorization: Option<Vec<u8>>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<Vec<u8>>,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<Vec<u8>>,
    /// The whole request body.
    pub body: Vec<u8>,
}

/// The sidecar's answer to a [`PublishRequest`]: the HTTP response the worker sends, its
/// body being JSON (`{"ch","id","ep"}`, or `{"error":{"code","message"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAnswer {
    /// The id of the request.
    pub id: u64,
    /// The HTTP status.
    pub status: u16,
    /// Headers beyond `Content-Type` and `Content-Length` (`Retry-After`,
    /// `WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Frames an nginx worker sends to the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToSidecar {
    /// First frame on every connection.
    Hello { version: u16, pid: u32 },
    /// Start receiving `channel`. `want` is how many recent messages to send when `since`
    /// is absent or unusable; with `since`, everything after it is sent.
    Subscribe {
        channel: String,
        want: u32,
        since: Option<Position>,
    },
    /// The worker has no subscriber left on `channel`.
    Unsubscribe { channel: String },
    /// The worker's current subscriber counts and its totals (sent when either changed, at
    /// most periodically).
    Stats {
        subscribers: u32,
        totals: Totals,
        channels: Vec<ChannelCount>,
    },
    /// A viewer asks for private `channels` (only those of its request) with `token`; held
    /// until the sidecar answers `Admitted` with the same `id` (unique per connection).
    Admit {
        id: u64,
        channels: Vec<String>,
        token: String,
    },
    /// The viewer admitted as `id` is gone.
    Left { id: u64 },
    /// A publish to answer with `Published` (same `id`).
    Publish(PublishRequest),
}

/// Frames the sidecar sends to an nginx worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// A live message, in id order after everything already sent for the channel.
    Message {
        channel: String,
        epoch: u64,
        id: u64,
        payload: Vec<u8>,
    },
    /// The answer to a `Subscribe`, always before any live `Message` of that channel.
    Backlog {
        channel: String,
        epoch: u64,
        kind: BacklogKind,
        messages: Vec<Entry>,
    },
    /// The channel's history was lost while subscribed; ids restart in `epoch`.
    EpochReset { channel: String, epoch: u64 },
    /// The private channel patterns ([`private::Policy`]); the first frame on every
    /// connection. Subscribers already there on a channel that is now private and that
    /// were not admitted are closed.
    Policy { private: Vec<String> },
    /// The answer to `Admit`: `status` 0 admits the viewer; otherwise it is the HTTP status
    /// the request is refused with, and `reason` says why.
    Admitted {
        id: u64,
        status: u16,
        reason: String,
    },
    /// Close the viewer admitted as `id` with this WebSocket close `code` and `reason`.
    CloseViewer { id: u64, code: u16, reason: String },
    /// The answer to `Publish`.
    Published(PublishAnswer),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame body ends inside a field")]
    Truncated,
    #[error("{0} trailing bytes after the frame body")]
    Trailing(usize),
    #[error("field is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid {0}: {1}")]
    InvalidValue(&'static str, u8),
    #[error("string of {0} bytes is too long for the protocol")]
    StringTooLong(usize),
}

/// A frame kind of one direction.
pub trait Frame: Sized {
    /// Appends the body (without header) and returns the kind byte.
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<u8, WireError>;
    fn decode_body(kind: u8, body: &[u8]) -> Result<Self, WireError>;
}

/// Appends one complete frame to `out`. On error `out` is left as it was.
pub fn encode<F: Frame>(frame: &F, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let kind = match frame.encode_body(out) {
        Ok(kind) => kind,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(WireError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    out[start + 4] = kind;
    Ok(())
}

/// Decodes the first frame in `buf`: `Ok(None)` while it is incomplete, otherwise the frame
/// and how many bytes of `buf` it used.
pub fn decode<F: Frame>(buf: &[u8]) -> Result<Option<(F, usize)>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(len));
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let decoded = F::decode_body(frame[0], &frame[1..])?;
    Ok(Some((decoded, 4 + len)))
}

const HELLO: u8 = 0x01;
const SUBSCRIBE: u8 = 0x02;
const UNSUBSCRIBE: u8 = 0x03;
const STATS: u8 = 0x04;
const ADMIT: u8 = 0x05;
const LEFT: u8 = 0x06;
const PUBLISH: u8 = 0x07;
const MESSAGE: u8 = 0x81;
const BACKLOG: u8 = 0x82;
const EPOCH_RESET: u8 = 0x83;
const POLICY: u8 = 0x84;
const ADMITTED: u8 = 0x85;
const CLOSE_VIEWER: u8 = 0x86;
const PUBLISHED: u8 = 0x87;

impl Frame for ToSidecar {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<u8, WireError> {
        Ok(match self {
            Self::Hello { version, pid } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&pid.to_be_bytes());
                HELLO
            }
            Self::Subscribe {
                channel,
                want,
                since,
            } => {
                put_str(out, channel)?;
                out.extend_from_slice(&want.to_be_bytes());
                match since {
                    None => out.push(0),
                    Some(p) => {
                        out.push(1);
                        out.extend_from_slice(&p.epoch.to_be_bytes());
                        out.extend_from_slice(&p.id.to_be_bytes());
                    }
                }
                SUBSCRIBE
            }
            Self::Unsubscribe { channel } => {
                put_str(out, channel)?;
                UNSUBSCRIBE
            }
            Self::Stats {
                subscribers,
                totals,
                channels,
            } => {
                out.extend_from_slice(&subscribers.to_be_bytes());
                out.extend_from_slice(&totals.delivered.to_be_bytes());
                out.extend_from_slice(&totals.replayed.to_be_bytes());
                out.extend_from_slice(&totals.slow_closes.to_be_bytes());
                out.extend_from_slice(&(channels.len() as u32).to_be_bytes());
                for c in channels {
                    put_str(out, &c.channel)?;
                    out.extend_from_slice(&c.subscribers.to_be_bytes());
                }
                STATS
            }
            Self::Admit {
                id,
                channels,
                token,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_strings(out, channels)?;
                put_str(out, token)?;
                ADMIT
            }
            Self::Left { id } => {
                out.extend_from_slice(&id.to_be_bytes());
                LEFT
            }
            Self::Publish(p) => {
                out.extend_from_slice(&p.id.to_be_bytes());
                put_bytes(out, &p.channel)?;
                put_option_bytes(out, p.authorization.as_deref())?;
                put_option_bytes(out, p.content_type.as_deref())?;
                put_option_bytes(out, p.idempotency_key.as_deref())?;
                put_bytes(out, &p.body)?;
                PUBLISH
            }
        })
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(body);
        let frame = match kind {
            HELLO => Self::Hello {
                version: r.u16()?,
                pid: r.u32()?,
            },
            SUBSCRIBE => Self::Subscribe {
                channel: r.string()?,
                want: r.u32()?,
                since: match r.u8()? {
                    0 => None,
                    1 => Some(Position {
                        epoch: r.u64()?,
                        id: r.u64()?,
                    }),
                    other => return Err(WireError::InvalidValue("option flag", other)),
                },
            },
            UNSUBSCRIBE => Self::Unsubscribe {
                channel: r.string()?,
            },
            STATS => {
                let subscribers = r.u32()?;
                let totals = Totals {
                    delivered: r.u64()?,
                    replayed: r.u64()?,
                    slow_closes: r.u64()?,
                };
                let count = r.u32()? as usize;
                // Each entry takes at least 6 bytes: a bogus count cannot make us allocate.
                let mut channels = Vec::with_capacity(count.min(r.0.len() / 6));
                for _ in 0..count {
                    channels.push(ChannelCount {
                        channel: r.string()?,
                        subscribers: r.u32()?,
                    });
                }
                Self::Stats {
                    subscribers,
                    totals,
                    channels,
                }
            }
            ADMIT => Self::Admit {
                id: r.u64()?,
                channels: r.strings()?,
                token: r.string()?,
            },
            LEFT => Self::Left { id: r.u64()? },
            PUBLISH => Self::Publish(PublishRequest {
                id: r.u64()?,
                channel: r.bytes()?.to_vec(),
                authorization: r.option_bytes()?,
                content_type: r.option_bytes()?,
                idempotency_key: r.option_bytes()?,
                body: r.bytes()?.to_vec(),
            }),
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

impl Frame for ToWorker {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<u8, WireError> {
        Ok(match self {
            Self::Message {
                channel,
                epoch,
                id,
                payload,
            } => {
                put_str(out, channel)?;
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                put_bytes(out, payload)?;
                MESSAGE
            }
            Self::Backlog {
                channel,
                epoch,
                kind,
                messages,
            } => {
                put_str(out, channel)?;
                out.extend_from_slice(&epoch.to_be_bytes());
                out.push(*kind as u8);
                out.extend_from_slice(&(messages.len() as u32).to_be_bytes());
                for m in messages {
                    out.extend_from_slice(&m.id.to_be_bytes());
                    put_bytes(out, &m.payload)?;
                }
                BACKLOG
            }
            Self::EpochReset { channel, epoch } => {
                put_str(out, channel)?;
                out.extend_from_slice(&epoch.to_be_bytes());
                EPOCH_RESET
            }
            Self::Policy { private } => {
                put_strings(out, private)?;
                POLICY
            }
            Self::Admitted { id, status, reason } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                put_str(out, reason)?;
                ADMITTED
            }
            Self::CloseViewer { id, code, reason } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                put_str(out, reason)?;
                CLOSE_VIEWER
            }
            Self::Published(a) => {
                out.extend_from_slice(&a.id.to_be_bytes());
                out.extend_from_slice(&a.status.to_be_bytes());
                let count = u16::try_from(a.headers.len())
                    .map_err(|_| WireError::TooLarge(a.headers.len()))?;
                out.extend_from_slice(&count.to_be_bytes());
                for (name, value) in &a.headers {
                    put_str(out, name)?;
                    put_str(out, value)?;
                }
                put_bytes(out, &a.body)?;
                PUBLISHED
            }
        })
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(body);
        let frame = match kind {
            MESSAGE => Self::Message {
                channel: r.string()?,
                epoch: r.u64()?,
                id: r.u64()?,
                payload: r.bytes()?.to_vec(),
            },
            BACKLOG => {
                let channel = r.string()?;
                let epoch = r.u64()?;
                let kind = BacklogKind::from_u8(r.u8()?)?;
                let count = r.u32()? as usize;
                // Each entry takes at least 12 bytes.
                let mut messages = Vec::with_capacity(count.min(r.0.len() / 12));
                for _ in 0..count {
                    messages.push(Entry {
                        id: r.u64()?,
                        payload: r.bytes()?.to_vec(),
                    });
                }
                Self::Backlog {
                    channel,
                    epoch,
                    kind,
                    messages,
                }
            }
            EPOCH_RESET => Self::EpochReset {
                channel: r.string()?,
                epoch: r.u64()?,
            },
            POLICY => Self::Policy {
                private: r.strings()?,
            },
            ADMITTED => Self::Admitted {
                id: r.u64()?,
                status: r.u16()?,
                reason: r.string()?,
            },
            CLOSE_VIEWER => Self::CloseViewer {
                id: r.u64()?,
                code: r.u16()?,
                reason: r.string()?,
            },
            PUBLISHED => {
                let id = r.u64()?;
                let status = r.u16()?;
                let count = r.u16()? as usize;
                // Each header takes at least 4 bytes: a bogus count cannot make us allocate.
                let mut headers = Vec::with_capacity(count.min(r.0.len() / 4));
                for _ in 0..count {
                    headers.push((r.string()?, r.string()?));
                }
                Self::Published(PublishAnswer {
                    id,
                    status,
                    headers,
                    body: r.bytes()?.to_vec(),
                })
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    let len = u16::try_from(s.len()).map_err(|_| WireError::StringTooLong(s.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_strings(out: &mut Vec<u8>, list: &[String]) -> Result<(), WireError> {
    let count = u16::try_from(list.len()).map_err(|_| WireError::TooLarge(list.len()))?;
    out.extend_from_slice(&count.to_be_bytes());
    list.iter().try_for_each(|s| put_str(out, s))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), WireError> {
    if b.len() > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(b.len()));
    }
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_option_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) -> Result<(), WireError> {
    match b {
        None => {
            out.push(0);
            Ok(())
        }
        Some(b) => {
            out.push(1);
            put_bytes(out, b)
        }
    }
}

/// A cursor over a frame body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }
    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| WireError::InvalidUtf8)
    }
    fn strings(&mut self) -> Result<Vec<String>, WireError> {
        let count = self.u16()? as usize;
        // Each string takes at least 2 bytes: a bogus count cannot make us allocate.
        let mut list = Vec::with_capacity(count.min(self.0.len() / 2));
        for _ in 0..count {
            list.push(self.string()?);
        }
        Ok(list)
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn option_bytes(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?.to_vec())),
            other => Err(WireError::InvalidValue("option flag", other)),
        }
    }
    fn finish(self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<F: Frame + PartialEq + fmt::Debug>(frame: F) {
        let mut buf = Vec::new();
        encode(&frame, &mut buf).unwrap();
        // Every strict prefix is incomplete, never an error.
        for cut in 0..buf.len() {
            assert_eq!(decode::<F>(&buf[..cut]).unwrap().map(|(_, n)| n), None);
        }
        let (decoded, used) = decode::<F>(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(ToSidecar::Hello {
            version: 1,
            pid: 42,
        });
        roundtrip(ToSidecar::Subscribe {
            channel: "room".into(),
            want: 100,
            since: None,
        });
        roundtrip(ToSidecar::Subscribe {
            channel: "room".into(),
            want: 0,
            since: Some(Position { epoch: 7, id: 9 }),
        });
        roundtrip(ToSidecar::Unsubscribe {
            channel: "r".into(),
        });
        roundtrip(ToSidecar::Stats {
            subscribers: 0,
            totals: Totals::default(),
            channels: vec![],
        });
        roundtrip(ToSidecar::Stats {
            subscribers: 3,
            totals: Totals {
                delivered: u64::MAX,
                replayed: 1 << 40,
                slow_closes: 7,
            },
            channels: vec![
                ChannelCount {
                    channel: "a".into(),
                    subscribers: 1,
                },
                ChannelCount {
                    channel: "b".into(),
                    subscribers: 2,
                },
            ],
        });
        roundtrip(ToWorker::Message {
            channel: "room".into(),
            epoch: u64::MAX,
            id: 1,
            payload: b"{\"msg\":\"hi\"}".to_vec(),
        });
        roundtrip(ToWorker::Backlog {
            channel: "room".into(),
            epoch: 5,
            kind: BacklogKind::Truncated,
            messages: vec![
                Entry {
                    id: 4,
                    payload: b"x".to_vec(),
                },
                Entry {
                    id: 5,
                    payload: vec![],
                },
            ],
        });
        roundtrip(ToWorker::EpochReset {
            channel: "room".into(),
            epoch: 8,
        });
        roundtrip(ToSidecar::Admit {
            id: 7,
            channels: vec!["user.alice".into(), "members-x".into()],
            token: "a.b.c".into(),
        });
        roundtrip(ToSidecar::Admit {
            id: u64::MAX,
            channels: vec![],
            token: String::new(),
        });
        roundtrip(ToSidecar::Left { id: 9 });
        roundtrip(ToWorker::Policy {
            private: vec!["user.{sub}".into(), "members-*".into()],
        });
        roundtrip(ToWorker::Policy { private: vec![] });
        roundtrip(ToWorker::Admitted {
            id: 7,
            status: 0,
            reason: String::new(),
        });
        roundtrip(ToWorker::Admitted {
            id: 8,
            status: 403,
            reason: "not yours".into(),
        });
        roundtrip(ToWorker::CloseViewer {
            id: 7,
            code: 4002,
            reason: "token expired".into(),
        });
    }

    #[test]
    fn publish_frames_roundtrip() {
        roundtrip(ToSidecar::Publish(PublishRequest {
            id: 1,
            channel: b"room".to_vec(),
            authorization: Some(b"Bearer a.b.c".to_vec()),
            content_type: Some(b"text/plain; charset=utf-8".to_vec()),
            idempotency_key: Some(b"k-1".to_vec()),
            body: b"hello".to_vec(),
        }));
        // Absent headers, an empty body, and bytes that are not UTF-8 (the sidecar judges
        // them, as it would on its HTTP port).
        roundtrip(ToSidecar::Publish(PublishRequest {
            id: u64::MAX,
            channel: vec![0xff, b'/'],
            authorization: None,
            content_type: Some(vec![]),
            idempotency_key: None,
            body: vec![],
        }));
        roundtrip(ToWorker::Published(PublishAnswer {
            id: 7,
            status: 200,
            headers: vec![],
            body: br#"{"ch":"room","id":1,"ep":2}"#.to_vec(),
        }));
        roundtrip(ToWorker::Published(PublishAnswer {
            id: 8,
            status: 401,
            headers: vec![
                ("WWW-Authenticate".into(), "Bearer".into()),
                ("Retry-After".into(), "1".into()),
            ],
            body: br#"{"error":{"code":"bad_token","message":"no"}}"#.to_vec(),
        }));
    }

    #[test]
    fn publish_fields_are_in_their_documented_places() {
        let mut buf = Vec::new();
        encode(
            &ToSidecar::Publish(PublishRequest {
                id: 2,
                channel: b"c".to_vec(),
                authorization: None,
                content_type: Some(b"t".to_vec()),
                idempotency_key: None,
                body: b"xy".to_vec(),
            }),
            &mut buf,
        )
        .unwrap();
        let mut expected = vec![0, 0, 0, 28, PUBLISH];
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 1, b'c']);
        expected.extend_from_slice(&[0, 1, 0, 0, 0, 1, b't', 0]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'x', b'y']);
        assert_eq!(buf, expected);

        let mut buf = Vec::new();
        encode(
            &ToWorker::Published(PublishAnswer {
                id: 3,
                status: 503,
                headers: vec![("a".into(), "b".into())],
                body: b"{}".to_vec(),
            }),
            &mut buf,
        )
        .unwrap();
        let mut expected = vec![0, 0, 0, 25, PUBLISHED];
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&[1, 0xf7, 0, 1, 0, 1, b'a', 0, 1, b'b']);
        expected.extend_from_slice(&[0, 0, 0, 2, b'{', b'}']);
        assert_eq!(buf, expected);
    }

    #[test]
    fn malformed_publish_frames_are_errors() {
        // A bad option flag for the Authorization header.
        let mut buf = vec![0, 0, 0, 0, PUBLISH];
        buf.extend_from_slice(&1u64.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 1, b'c', 7]);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode::<ToSidecar>(&buf),
            Err(WireError::InvalidValue("option flag", 7))
        );
        // An answer claiming 65,535 headers in a few bytes.
        let mut buf = vec![0, 0, 0, 0, PUBLISHED];
        buf.extend_from_slice(&1u64.to_be_bytes());
        buf.extend_from_slice(&[0, 200, 0xff, 0xff]);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode::<ToWorker>(&buf), Err(WireError::Truncated));
        // A header name that is not UTF-8.
        let mut buf = vec![0, 0, 0, 0, PUBLISHED];
        buf.extend_from_slice(&1u64.to_be_bytes());
        buf.extend_from_slice(&[0, 200, 0, 1, 0, 1, 0xff, 0, 0, 0, 0, 0, 0]);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode::<ToWorker>(&buf), Err(WireError::InvalidUtf8));
    }

    #[test]
    fn huge_declared_string_lists_do_not_allocate() {
        // A Policy claiming 65,535 patterns in a 2-byte body.
        let buf = vec![0, 0, 0, 3, POLICY, 0xff, 0xff];
        assert_eq!(decode::<ToWorker>(&buf), Err(WireError::Truncated));
    }

    #[test]
    fn frames_decode_one_after_another() {
        let mut buf = Vec::new();
        encode(&ToSidecar::Hello { version: 1, pid: 1 }, &mut buf).unwrap();
        encode(
            &ToSidecar::Unsubscribe {
                channel: "x".into(),
            },
            &mut buf,
        )
        .unwrap();
        let (first, n) = decode::<ToSidecar>(&buf).unwrap().unwrap();
        assert_eq!(first, ToSidecar::Hello { version: 1, pid: 1 });
        let (second, m) = decode::<ToSidecar>(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            second,
            ToSidecar::Unsubscribe {
                channel: "x".into()
            }
        );
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(decode::<ToWorker>(&[0, 0, 0, 0]), Err(WireError::Empty));
        assert_eq!(
            decode::<ToWorker>(&[0xff, 0, 0, 0]),
            Err(WireError::TooLarge(0xff00_0000))
        );
        assert_eq!(
            decode::<ToWorker>(&[0, 0, 0, 1, 0x7f]),
            Err(WireError::UnknownKind(0x7f))
        );
        // A Hello with a byte too many.
        assert_eq!(
            decode::<ToSidecar>(&[0, 0, 0, 8, HELLO, 0, 1, 0, 0, 0, 1, 9]),
            Err(WireError::Trailing(1))
        );
        // A Message whose payload length points past the frame.
        let mut buf = Vec::new();
        encode(
            &ToWorker::Message {
                channel: "c".into(),
                epoch: 1,
                id: 1,
                payload: b"abc".to_vec(),
            },
            &mut buf,
        )
        .unwrap();
        let last = buf.len() - 4;
        buf[last - 1] = 200;
        assert_eq!(decode::<ToWorker>(&buf), Err(WireError::Truncated));
        // Invalid UTF-8 in a channel name.
        assert_eq!(
            decode::<ToSidecar>(&[0, 0, 0, 4, UNSUBSCRIBE, 0, 1, 0xff]),
            Err(WireError::InvalidUtf8)
        );
        // A bad option flag.
        let mut sub = vec![0, 0, 0, 0, SUBSCRIBE, 0, 1, b'a', 0, 0, 0, 1, 2];
        let len = (sub.len() - 4) as u32;
        sub[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode::<ToSidecar>(&sub),
            Err(WireError::InvalidValue("option flag", 2))
        );
    }

    #[test]
    fn huge_declared_counts_do_not_allocate() {
        // Stats claiming 4 billion channels in a 33-byte body.
        let mut buf = vec![0, 0, 0, 33, STATS];
        buf.extend_from_slice(&[0; 4 + 24]);
        buf.extend_from_slice(&[0xff; 4]);
        assert_eq!(decode::<ToSidecar>(&buf), Err(WireError::Truncated));
    }

    #[test]
    fn stats_fields_are_in_their_documented_places() {
        let mut buf = Vec::new();
        encode(
            &ToSidecar::Stats {
                subscribers: 2,
                totals: Totals {
                    delivered: 3,
                    replayed: 4,
                    slow_closes: 5,
                },
                channels: vec![ChannelCount {
                    channel: "c".into(),
                    subscribers: 2,
                }],
            },
            &mut buf,
        )
        .unwrap();
        let mut expected = vec![0, 0, 0, 40, STATS, 0, 0, 0, 2];
        for n in [3u64, 4, 5] {
            expected.extend_from_slice(&n.to_be_bytes());
        }
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 1, b'c', 0, 0, 0, 2]);
        assert_eq!(buf, expected);
    }

    #[test]
    fn totals_arithmetic_saturates() {
        let a = Totals {
            delivered: 10,
            replayed: 1,
            slow_closes: u64::MAX,
        };
        let b = Totals {
            delivered: 4,
            replayed: 5,
            slow_closes: 1,
        };
        assert_eq!(
            a.since(b),
            Totals {
                delivered: 6,
                replayed: 0,
                slow_closes: u64::MAX - 1,
            }
        );
        assert_eq!(
            a.plus(b),
            Totals {
                delivered: 14,
                replayed: 6,
                slow_closes: u64::MAX,
            }
        );
        assert_eq!(
            a.max(b),
            Totals {
                delivered: 10,
                replayed: 5,
                slow_closes: u64::MAX,
            }
        );
    }

    #[test]
    fn encode_refuses_overlong_strings_and_leaves_buffer_intact() {
        let mut buf = vec![1, 2, 3];
        let err = encode(
            &ToSidecar::Unsubscribe {
                channel: "x".repeat(70_000),
            },
            &mut buf,
        );
        assert_eq!(err, Err(WireError::StringTooLong(70_000)));
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
