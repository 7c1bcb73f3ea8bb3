//! Resume points: `<ch>:<epoch>:<id>[,<ch>:<epoch>:<id>...]`, the one encoding of a position
//! on every channel, whether it comes as `?since=`, as an SSE `Last-Event-ID` or goes out as
//! an SSE event's `id:` or a long-poll answer's `since`.

use std::fmt::Write as _;

use chatup_wire::channel::{self, ChannelNameError};
use chatup_wire::Position;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("bad percent-encoding")]
    PercentEncoding,
    #[error("not valid UTF-8")]
    Utf8,
    #[error("{0:?} is not <channel>:<epoch>:<id>")]
    Entry(String),
    #[error("{0}")]
    Channel(#[from] ChannelNameError),
}

/// The positions of a query argument's value, percent-encoded or not.
pub fn parse_query_value(raw: &[u8]) -> Result<Vec<(String, Position)>, SinceError> {
    let decoded = percent_decode(raw).ok_or(SinceError::PercentEncoding)?;
    parse(&decoded)
}

/// The positions of a header value (`Last-Event-ID`), as sent: not percent-encoded.
pub fn parse(text: &[u8]) -> Result<Vec<(String, Position)>, SinceError> {
    let text = std::str::from_utf8(text).map_err(|_| SinceError::Utf8)?;
    let mut out = Vec::new();
    for entry in text.trim().split(',').filter(|e| !e.is_empty()) {
        let bad = || SinceError::Entry(entry.to_owned());
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

/// Appends the encoding of `positions` (channels without one are left out) to `out`.
/// Channel names are validated to a charset that needs no escaping here.
pub fn encode<'a>(positions: impl IntoIterator<Item = (&'a str, Position)>, out: &mut String) {
    let mut first = true;
    for (name, p) in positions {
        if p.epoch == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        // Writing to a String cannot fail.
        let _ = write!(out, "{name}:{}:{}", p.epoch, p.id);
    }
}

/// The raw value of query argument `name`, if present.
pub fn query_arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    args.split(|&b| b == b'&').find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(b"="))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, id: u64) -> Position {
        Position { epoch, id }
    }

    #[test]
    fn encodes_what_it_parses() {
        let mut text = String::new();
        encode([("a", pos(5, 10)), ("b.c", pos(7, 0))], &mut text);
        assert_eq!(text, "a:5:10,b.c:7:0");
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            vec![("a".to_owned(), pos(5, 10)), ("b.c".to_owned(), pos(7, 0))]
        );
    }

    #[test]
    fn leaves_out_channels_without_a_position() {
        let mut text = String::new();
        encode([("a", pos(0, 0)), ("b", pos(3, 4))], &mut text);
        assert_eq!(text, "b:3:4");
        text.clear();
        encode([("a", pos(0, 0))], &mut text);
        assert_eq!(text, "");
    }

    #[test]
    fn query_values_may_be_percent_encoded() {
        assert_eq!(
            parse_query_value(b"a%3A1%3A2%2Cb:3:4").unwrap(),
            vec![("a".to_owned(), pos(1, 2)), ("b".to_owned(), pos(3, 4))]
        );
        assert_eq!(parse_query_value(b"a%3"), Err(SinceError::PercentEncoding));
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(parse(b"a:1"), Err(SinceError::Entry("a:1".into())));
        assert_eq!(parse(b"a:1:x"), Err(SinceError::Entry("a:1:x".into())));
        assert_eq!(parse(b"a:1:2:3"), Err(SinceError::Entry("a:1:2:3".into())));
        assert_eq!(parse(b"\xff"), Err(SinceError::Utf8));
        assert!(matches!(parse(b"a b:1:2"), Err(SinceError::Channel(_))));
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(
            parse(b" a:1:2 ").unwrap(),
            vec![("a".to_owned(), pos(1, 2))]
        );
    }

    #[test]
    fn finds_query_arguments_by_exact_name() {
        assert_eq!(query_arg(b"x=1&since=a:1:2", b"since"), Some(&b"a:1:2"[..]));
        assert_eq!(query_arg(b"sincex=1", b"since"), None);
        assert_eq!(query_arg(b"transport=sse", b"transport"), Some(&b"sse"[..]));
        assert_eq!(query_arg(b"", b"since"), None);
    }
}
