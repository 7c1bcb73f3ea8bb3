//! Checking a subscriber's request: which transport it asks for (a WebSocket upgrade, an
//! SSE stream or a long poll), its headers, channels from the path, where it resumes from and
//! the subscribe token it carries (for private channels). Every refusal says why, with the
//! HTTP status it deserves.

use chatup_wire::channel::{self, ChannelNameError};
use chatup_wire::Position;

use crate::hub::Subscription;
use crate::since::{self, SinceError};
use crate::ws;

/// How a subscriber receives its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RFC 6455 over HTTP/1.1.
    WebSocket,
    /// `text/event-stream`: one event per message, for `EventSource`.
    EventStream,
    /// One JSON answer per request: at once, or when something arrives, or at the timeout.
    Poll,
}

/// The request facts the checks need, borrowed from nginx's request.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    pub is_get: bool,
    pub is_http11: bool,
    pub upgrade: Option<&'a [u8]>,
    pub connection: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    /// `Accept`: `text/event-stream` asks for SSE.
    pub accept: Option<&'a [u8]>,
    /// `Last-Event-ID`: where an `EventSource` resumes after it reconnected on its own.
    pub last_event_id: Option<&'a [u8]>,
    /// `Authorization`: `Bearer <subscribe token>`, for clients that can set headers.
    pub authorization: Option<&'a [u8]>,
    /// The URI path after the location prefix.
    pub channels: &'a [u8],
    /// The raw query string.
    pub args: &'a [u8],
}

/// What an accepted request turns into.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub transport: Transport,
    /// `Sec-WebSocket-Accept`; empty for the other transports.
    pub accept_key: String,
    pub subscriptions: Vec<Subscription>,
    /// The subscribe token (`?token=`, else `Authorization: Bearer`), or why it cannot be
    /// one. Looked at only for private channels: a public channel's request is answered
    /// whatever it carries (a site's own `Authorization` or `token` included).
    pub token: Option<Result<String, &'static str>>,
}

/// Longest subscribe token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a subscriber endpoint only answers GET")]
    Method,
    #[error("WebSocket needs HTTP/1.1 (SSE and long-poll work over any HTTP version)")]
    HttpVersion,
    #[error(
        "this subscriber endpoint answers a WebSocket upgrade (\"Upgrade: websocket\" and \
         \"Connection: Upgrade\"), an SSE request (\"Accept: text/event-stream\" or \
         ?transport=sse) or a long poll (?transport=poll)"
    )]
    NotUpgrade,
    #[error("transport {0:?} is not one of ws, sse, poll")]
    Transport(String),
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    WsVersion,
    #[error("missing or invalid Sec-WebSocket-Key (base64 of 16 bytes)")]
    Key,
    #[error("no channel in the path: subscribe to <location>/<channel>[/<channel>...]")]
    NoChannel,
    #[error("{0}")]
    Channel(#[from] ChannelNameError),
    #[error("{0} channels requested; this endpoint allows {1}")]
    TooManyChannels(usize, usize),
    #[error("channel {0:?} appears twice")]
    DuplicateChannel(String),
    #[error("since: {0}")]
    Since(String),
    #[error("Last-Event-ID: {0}")]
    LastEventId(String),
    #[error("token: {0}")]
    Token(&'static str),
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Method => 405,
            Self::WsVersion => 426,
            _ => 400,
        }
    }
}

/// The transport a request asks for: `?transport=` first, then its headers.
pub fn transport_of(req: &UpgradeRequest<'_>) -> Result<Transport, HandshakeError> {
    if let Some(name) = since::query_arg(req.args, b"transport") {
        return match name {
            b"ws" | b"websocket" => Ok(Transport::WebSocket),
            b"sse" => Ok(Transport::EventStream),
            b"poll" => Ok(Transport::Poll),
            other => Err(HandshakeError::Transport(
                String::from_utf8_lossy(other).into_owned(),
            )),
        };
    }
    if req.upgrade.is_some_and(|v| has_token(v, b"websocket")) {
        return Ok(Transport::WebSocket);
    }
    if req.accept.is_some_and(accepts_event_stream) {
        return Ok(Transport::EventStream);
    }
    Err(HandshakeError::NotUpgrade)
}

/// Checks a subscriber's request; on success gives its transport, the accept key (for a
/// WebSocket) and the subscriptions.
pub fn check(req: &UpgradeRequest<'_>, max_channels: usize) -> Result<Accepted, HandshakeError> {
    if !req.is_get {
        return Err(HandshakeError::Method);
    }
    let transport = transport_of(req)?;
    let accept_key = match transport {
        Transport::WebSocket => check_websocket(req)?,
        Transport::EventStream | Transport::Poll => String::new(),
    };
    let channels = channels_from_path(req.channels, max_channels)?;
    let mut subscriptions: Vec<Subscription> = channels
        .into_iter()
        .map(|channel| Subscription {
            channel,
            since: None,
        })
        .collect();
    let since = parse_since(req.args)?;
    apply_since(&mut subscriptions, since, HandshakeError::Since)?;
    if transport == Transport::EventStream {
        if let Some(id) = req.last_event_id {
            // What the stream said last wins over the URL it was first opened with.
            let positions =
                since::parse(id).map_err(|e| HandshakeError::LastEventId(e.to_string()))?;
            for sub in &mut subscriptions {
                sub.since = None;
            }
            apply_since(&mut subscriptions, positions, HandshakeError::LastEventId)?;
        }
    }
    let token = token_of(req);
    Ok(Accepted {
        transport,
        accept_key,
        subscriptions,
        token,
    })
}

/// The subscribe token: `?token=` (browsers cannot set headers on a WebSocket or an
/// `EventSource`), else `Authorization: Bearer` (another scheme, such as a site's HTTP basic
/// authentication, is not a token). A JWT is plain base64url and dots: anything else is
/// kept as the reason it cannot be one.
pub fn token_of(req: &UpgradeRequest<'_>) -> Option<Result<String, &'static str>> {
    let raw = match since::query_arg(req.args, b"token") {
        Some(raw) => raw,
        None => {
            let value = trim(req.authorization?);
            let split = value
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(value.len());
            if !value[..split].eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            trim(&value[split..])
        }
    };
    if raw.is_empty() {
        return Some(Err("it is empty"));
    }
    if raw.len() > MAX_TOKEN_LEN {
        return Some(Err("it is longer than 8192 bytes"));
    }
    if !raw
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    {
        return Some(Err("a JWT holds only base64url characters and '.'"));
    }
    // Checked to be ASCII just above.
    Some(Ok(String::from_utf8_lossy(raw).into_owned()))
}

/// The WebSocket-only checks; gives the accept key.
fn check_websocket(req: &UpgradeRequest<'_>) -> Result<String, HandshakeError> {
    if !req.is_http11 {
        return Err(HandshakeError::HttpVersion);
    }
    let upgrade_ok = req.upgrade.is_some_and(|v| has_token(v, b"websocket"));
    let connection_ok = req.connection.is_some_and(|v| has_token(v, b"upgrade"));
    if !upgrade_ok || !connection_ok {
        return Err(HandshakeError::NotUpgrade);
    }
    if req.version.map(trim) != Some(b"13") {
        return Err(HandshakeError::WsVersion);
    }
    let key = req.key.map(trim).ok_or(HandshakeError::Key)?;
    if !ws::key_is_valid(key) {
        return Err(HandshakeError::Key);
    }
    Ok(ws::accept_key(key))
}

/// Sets each subscription's resume point; `error` wraps what is wrong.
fn apply_since(
    subscriptions: &mut [Subscription],
    positions: Vec<(String, Position)>,
    error: fn(String) -> HandshakeError,
) -> Result<(), HandshakeError> {
    for (name, position) in positions {
        let sub = subscriptions
            .iter_mut()
            .find(|s| s.channel == name)
            .ok_or_else(|| error(format!("channel {name:?} is not in the path")))?;
        if sub.since.replace(position).is_some() {
            return Err(error(format!("channel {name:?} appears twice")));
        }
    }
    Ok(())
}

/// Whether an `Accept` value lists `text/event-stream`.
fn accepts_event_stream(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| {
        let media = t.split(|&b| b == b';').next().unwrap_or(t);
        trim(media).eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// `a/b/c` → the channels, validated; empty segments (`a//b`, a trailing `/`) are skipped.
pub fn channels_from_path(path: &[u8], max: usize) -> Result<Vec<String>, HandshakeError> {
    let mut channels: Vec<String> = Vec::new();
    for segment in path.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        channel::validate(segment)?;
        // validate() admits ASCII only.
        let name = String::from_utf8_lossy(segment).into_owned();
        if channels.contains(&name) {
            return Err(HandshakeError::DuplicateChannel(name));
        }
        channels.push(name);
        if channels.len() > max {
            let total = path.split(|&b| b == b'/').filter(|s| !s.is_empty()).count();
            return Err(HandshakeError::TooManyChannels(total, max));
        }
    }
    if channels.is_empty() {
        return Err(HandshakeError::NoChannel);
    }
    Ok(channels)
}

/// The `since` query argument: `<ch>:<epoch>:<id>[,...]`, percent-encoded or not.
pub fn parse_since(args: &[u8]) -> Result<Vec<(String, Position)>, HandshakeError> {
    let Some(raw) = since::query_arg(args, b"since") else {
        return Ok(Vec::new());
    };
    since::parse_query_value(raw).map_err(|e| match e {
        SinceError::Channel(e) => HandshakeError::Channel(e),
        other => HandshakeError::Since(other.to_string()),
    })
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good<'a>() -> UpgradeRequest<'a> {
        UpgradeRequest {
            is_get: true,
            is_http11: true,
            upgrade: Some(b"websocket"),
            connection: Some(b"keep-alive, Upgrade"),
            version: Some(b"13"),
            key: Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
            accept: None,
            last_event_id: None,
            authorization: None,
            channels: b"room1/room2",
            args: b"",
        }
    }

    /// What an `EventSource` sends: no upgrade headers, maybe not even HTTP/1.1.
    fn event_source<'a>() -> UpgradeRequest<'a> {
        UpgradeRequest {
            is_get: true,
            is_http11: false,
            accept: Some(b"text/event-stream"),
            channels: b"room1/room2",
            ..UpgradeRequest::default()
        }
    }

    fn since_of(accepted: &Accepted) -> Vec<Option<(u64, u64)>> {
        accepted
            .subscriptions
            .iter()
            .map(|s| s.since.map(|p| (p.epoch, p.id)))
            .collect()
    }

    #[test]
    fn chooses_the_transport_from_the_query_then_the_headers() {
        assert_eq!(check(&good(), 16).unwrap().transport, Transport::WebSocket);
        let sse = check(&event_source(), 16).unwrap();
        assert_eq!(sse.transport, Transport::EventStream);
        assert_eq!(sse.accept_key, "");
        for (args, transport) in [
            (&b"transport=sse"[..], Transport::EventStream),
            (b"since=room1:1:2&transport=poll", Transport::Poll),
            (b"transport=ws", Transport::WebSocket),
        ] {
            let req = UpgradeRequest { args, ..good() };
            assert_eq!(check(&req, 16).unwrap().transport, transport);
        }
        let poll = UpgradeRequest {
            args: b"transport=poll",
            ..UpgradeRequest::default()
        };
        let poll = UpgradeRequest {
            is_get: true,
            channels: b"a",
            ..poll
        };
        assert_eq!(check(&poll, 16).unwrap().transport, Transport::Poll);
        let accept_list = UpgradeRequest {
            accept: Some(b"text/html, Text/Event-Stream ; q=0.5"),
            ..event_source()
        };
        assert_eq!(
            check(&accept_list, 16).unwrap().transport,
            Transport::EventStream
        );
    }

    #[test]
    fn a_request_that_asks_for_no_transport_is_told_the_three() {
        let plain = UpgradeRequest {
            accept: Some(b"text/html"),
            ..event_source()
        };
        let err = check(&plain, 16).unwrap_err();
        assert_eq!(err, HandshakeError::NotUpgrade);
        let text = err.to_string();
        for needle in ["Upgrade: websocket", "text/event-stream", "transport=poll"] {
            assert!(text.contains(needle), "{text}");
        }
        let bad = UpgradeRequest {
            args: b"transport=comet",
            ..event_source()
        };
        assert_eq!(
            check(&bad, 16).unwrap_err().to_string(),
            "transport \"comet\" is not one of ws, sse, poll"
        );
    }

    #[test]
    fn last_event_id_resumes_every_channel_and_wins_over_since() {
        let req = UpgradeRequest {
            args: b"since=room1:1:1",
            last_event_id: Some(b"room1:5:10,room2:6:20"),
            ..event_source()
        };
        assert_eq!(
            since_of(&check(&req, 16).unwrap()),
            vec![Some((5, 10)), Some((6, 20))]
        );
        let partial = UpgradeRequest {
            args: b"since=room1:1:1,room2:2:2",
            last_event_id: Some(b"room2:6:20"),
            ..event_source()
        };
        assert_eq!(
            since_of(&check(&partial, 16).unwrap()),
            vec![None, Some((6, 20))]
        );
        // A WebSocket has no Last-Event-ID: the header is not its business.
        let ws = UpgradeRequest {
            last_event_id: Some(b"junk"),
            ..good()
        };
        assert!(check(&ws, 16).is_ok());
    }

    #[test]
    fn a_bad_last_event_id_says_what_is_wrong() {
        for (id, needle) in [
            (&b"room1:5"[..], "is not <channel>:<epoch>:<id>"),
            (b"room3:1:1", "\"room3\" is not in the path"),
            (b"room1:1:1,room1:1:2", "appears twice"),
            (b"room1:x:1", "is not <channel>:<epoch>:<id>"),
            (b"\xff", "UTF-8"),
        ] {
            let req = UpgradeRequest {
                last_event_id: Some(id),
                ..event_source()
            };
            let err = check(&req, 16).unwrap_err();
            assert_eq!(err.status(), 400);
            let text = err.to_string();
            assert!(text.starts_with("Last-Event-ID: "), "{text}");
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn accepts_a_proper_upgrade() {
        let ok = check(&good(), 16).unwrap();
        assert_eq!(ok.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            ok.subscriptions
                .iter()
                .map(|s| s.channel.as_str())
                .collect::<Vec<_>>(),
            vec!["room1", "room2"]
        );
    }

    #[test]
    fn refuses_bad_requests_with_a_reason_and_status() {
        let cases: Vec<(UpgradeRequest<'_>, u16, &str)> = vec![
            (
                UpgradeRequest {
                    is_get: false,
                    ..good()
                },
                405,
                "GET",
            ),
            (
                UpgradeRequest {
                    is_http11: false,
                    ..good()
                },
                400,
                "HTTP/1.1",
            ),
            (
                UpgradeRequest {
                    upgrade: None,
                    ..good()
                },
                400,
                "Upgrade",
            ),
            (
                UpgradeRequest {
                    connection: Some(b"close"),
                    ..good()
                },
                400,
                "Upgrade",
            ),
            (
                UpgradeRequest {
                    version: Some(b"8"),
                    ..good()
                },
                426,
                "13",
            ),
            (
                UpgradeRequest {
                    key: Some(b"short"),
                    ..good()
                },
                400,
                "Key",
            ),
            (
                UpgradeRequest {
                    channels: b"",
                    ..good()
                },
                400,
                "no channel",
            ),
            (
                UpgradeRequest {
                    channels: b"a/b:c",
                    ..good()
                },
                400,
                "':'",
            ),
            (
                UpgradeRequest {
                    channels: b"a/b/a",
                    ..good()
                },
                400,
                "twice",
            ),
            (
                UpgradeRequest {
                    args: b"since=x",
                    ..good()
                },
                400,
                "<channel>:<epoch>:<id>",
            ),
            (
                UpgradeRequest {
                    args: b"since=other:1:2",
                    ..good()
                },
                400,
                "not in the path",
            ),
            (
                UpgradeRequest {
                    args: b"since=room1:1:x",
                    ..good()
                },
                400,
                "room1:1:x",
            ),
            (
                UpgradeRequest {
                    args: b"since=%zz",
                    ..good()
                },
                400,
                "percent",
            ),
        ];
        for (req, status, needle) in cases {
            let err = check(&req, 16).unwrap_err();
            assert_eq!(err.status(), status, "{err}");
            assert!(err.to_string().contains(needle), "{err:?} lacks {needle}");
        }
        let err = check(&good(), 1).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyChannels(2, 1));
    }

    #[test]
    fn since_resumes_named_channels() {
        let req = UpgradeRequest {
            args: b"x=1&since=room2%3A7%3A41,room1:7:3&y",
            ..good()
        };
        let ok = check(&req, 16).unwrap();
        assert_eq!(
            ok.subscriptions[0].since,
            Some(Position { epoch: 7, id: 3 })
        );
        assert_eq!(
            ok.subscriptions[1].since,
            Some(Position { epoch: 7, id: 41 })
        );
    }

    #[test]
    fn empty_path_segments_are_skipped() {
        assert_eq!(
            channels_from_path(b"/a//b/", 4).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn the_token_comes_from_the_query_else_the_authorization_header() {
        let token = |req: &UpgradeRequest<'_>| check(req, 16).unwrap().token;
        let mut req = event_source();
        assert_eq!(token(&req), None);
        req.args = b"since=room1:1:2&token=aaa.bbb.ccc";
        assert_eq!(token(&req), Some(Ok("aaa.bbb.ccc".into())));
        req.authorization = Some(b"Bearer xxx.yyy.zzz");
        assert_eq!(
            token(&req),
            Some(Ok("aaa.bbb.ccc".into())),
            "the query wins"
        );
        req.args = b"";
        assert_eq!(token(&req), Some(Ok("xxx.yyy.zzz".into())));
        req.authorization = Some(b"  bearer   xxx.yyy.zzz ");
        assert_eq!(token(&req), Some(Ok("xxx.yyy.zzz".into())));
        // A site's own authentication is not a token, and refuses nothing.
        req.authorization = Some(b"Basic dXNlcjpwYXNz");
        assert_eq!(token(&req), None);
        let mut ws = good();
        ws.args = b"token=a.b.c";
        assert_eq!(token(&ws), Some(Ok("a.b.c".into())));
    }

    #[test]
    fn what_cannot_be_a_token_says_why_but_refuses_nothing_yet() {
        let problem = |args: &'static [u8], auth: Option<&'static [u8]>| {
            let mut req = event_source();
            req.args = args;
            req.authorization = auth;
            // Only a private channel's request is refused for it (by the module).
            match check(&req, 16).unwrap().token {
                Some(Err(reason)) => reason,
                other => panic!("{other:?}"),
            }
        };
        assert!(problem(b"token=", None).contains("empty"));
        assert!(problem(b"token=a%20b", None).contains("base64url"));
        assert!(problem(b"", Some(b"Bearer ")).contains("empty"));
        let long = format!("token={}", "a".repeat(MAX_TOKEN_LEN + 1));
        let mut req = event_source();
        req.args = long.as_bytes();
        assert!(matches!(check(&req, 16).unwrap().token, Some(Err(r)) if r.contains("8192")));
    }
}
