//! Checking a subscriber's upgrade request: headers, channels from the path and the `since`
//! resume points. Every refusal says why, with the HTTP status it deserves.

use chatup_wire::channel::{self, ChannelNameError};
use chatup_wire::Position;

use crate::hub::Subscription;
use crate::ws;

/// The request facts the checks need, borrowed from nginx's request.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    pub is_get: bool,
    pub is_http11: bool,
    pub upgrade: Option<&'a [u8]>,
    pub connection: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    /// The URI path after the location prefix.
    pub channels: &'a [u8],
    /// The raw query string.
    pub args: &'a [u8],
}

/// What an accepted request turns into.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub accept_key: String,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a subscriber endpoint only answers GET")]
    Method,
    #[error("WebSocket needs HTTP/1.1")]
    HttpVersion,
    #[error(
        "this is a WebSocket endpoint: send \"Upgrade: websocket\" and \"Connection: Upgrade\""
    )]
    NotUpgrade,
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

/// Checks an upgrade request; on success gives the accept key and the subscriptions.
pub fn check(req: &UpgradeRequest<'_>, max_channels: usize) -> Result<Accepted, HandshakeError> {
    if !req.is_get {
        return Err(HandshakeError::Method);
    }
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
    let channels = channels_from_path(req.channels, max_channels)?;
    let since = parse_since(req.args)?;
    let mut subscriptions: Vec<Subscription> = channels
        .into_iter()
        .map(|channel| Subscription {
            channel,
            since: None,
        })
        .collect();
    for (name, position) in since {
        let sub = subscriptions
            .iter_mut()
            .find(|s| s.channel == name)
            .ok_or_else(|| HandshakeError::Since(format!("channel {name:?} is not in the path")))?;
        if sub.since.replace(position).is_some() {
            return Err(HandshakeError::Since(format!(
                "channel {name:?} appears twice"
            )));
        }
    }
    Ok(Accepted {
        accept_key: ws::accept_key(key),
        subscriptions,
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
    let Some(raw) = args
        .split(|&b| b == b'&')
        .find_map(|kv| kv.strip_prefix(b"since="))
    else {
        return Ok(Vec::new());
    };
    let decoded =
        percent_decode(raw).ok_or_else(|| HandshakeError::Since("bad percent-encoding".into()))?;
    let text = std::str::from_utf8(&decoded)
        .map_err(|_| HandshakeError::Since("not valid UTF-8".into()))?;
    let mut out = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        let bad = || HandshakeError::Since(format!("{entry:?} is not <channel>:<epoch>:<id>"));
        let mut parts = entry.split(':');
        let (Some(name), Some(epoch), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        channel::validate(name.as_bytes())?;
        let epoch: u64 = epoch.parse().map_err(|_| bad())?;
        let id: u64 = id.parse().map_err(|_| bad())?;
        out.push((name.to_owned(), Position { epoch, id }));
    }
    Ok(out)
}

fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(if b == b'+' { b' ' } else { b });
            i += 1;
        }
    }
    Some(out)
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
            channels: b"room1/room2",
            args: b"",
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
}
