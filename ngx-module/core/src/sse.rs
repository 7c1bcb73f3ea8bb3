//! The bytes of the HTTP transports: an SSE stream's events (raw or in HTTP/1.1 chunks,
//! as nginx chose when it sent the header) and a long poll's JSON answer.
//!
//! An SSE message event is `id: <positions>\ndata: <message JSON>\n\n`: the `id` is where
//! the stream stands on every channel of the request after this event (see [`crate::since`]),
//! so an `EventSource` reconnecting with it as `Last-Event-ID` resumes every channel.

use std::sync::Arc;

use crate::cache::Frame;

/// How long an `EventSource` waits before it reconnects on its own, in ms.
pub const RETRY_MS: u32 = 2000;

/// How an SSE stream's bytes are framed on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The body ends with the connection (HTTP/1.0, or chunked encoding turned off).
    Raw,
    /// HTTP/1.1 chunked transfer encoding: each piece is one chunk.
    Chunked,
}

/// `bytes` as they go on the connection.
pub fn framed(bytes: &[u8], framing: Framing) -> Frame {
    match framing {
        Framing::Raw => Arc::from(bytes),
        Framing::Chunked => {
            let mut out = Vec::with_capacity(bytes.len() + 12);
            out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
            Arc::from(out)
        }
    }
}

/// The first bytes of a stream: how long to wait before reconnecting.
pub fn preamble(framing: Framing) -> Frame {
    framed(format!("retry: {RETRY_MS}\n\n").as_bytes(), framing)
}

/// A comment line, which keeps proxies from timing the stream out.
pub fn ping(framing: Framing) -> Frame {
    framed(b": ping\n\n", framing)
}

/// One message event. `payload` is the message JSON, which the sidecar encodes on one line;
/// should it hold line breaks, each line gets its own `data:` (the client joins them back).
pub fn message_event(id: &str, payload: &[u8], framing: Framing) -> Frame {
    let mut event = Vec::with_capacity(payload.len() + id.len() + 16);
    event.extend_from_slice(b"id: ");
    event.extend_from_slice(id.as_bytes());
    event.push(b'\n');
    push_data(&mut event, payload);
    event.push(b'\n');
    framed(&event, framing)
}

/// The last event of a stream the server ends, with the code a WebSocket would close with,
/// then the end of the body (the last chunk, when chunked).
pub fn close_event(code: u16, reason: &str, framing: Framing) -> Frame {
    let mut data = format!("{{\"code\":{code},\"reason\":\"");
    push_json_string_body(&mut data, reason);
    data.push_str("\"}");
    let mut event = b"event: close\n".to_vec();
    push_data(&mut event, data.as_bytes());
    event.push(b'\n');
    let mut out = framed(&event, framing).to_vec();
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    Arc::from(out)
}

fn push_data(event: &mut Vec<u8>, payload: &[u8]) {
    for line in payload.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(line);
        event.push(b'\n');
    }
}

/// `text` escaped for inside a JSON string.
fn push_json_string_body(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

/// A long poll's answer: `{"messages":[...],"since":"<positions>"}`. Each payload is a
/// message's JSON as the sidecar encoded it.
pub fn poll_body<'a>(payloads: impl IntoIterator<Item = &'a [u8]>, since: &str) -> Vec<u8> {
    let mut body = b"{\"messages\":[".to_vec();
    for (i, payload) in payloads.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(payload);
    }
    body.extend_from_slice(b"],\"since\":\"");
    // Positions are channel names, digits, ':' and ',': nothing to escape.
    body.extend_from_slice(since.as_bytes());
    body.extend_from_slice(b"\"}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Frame) -> &str {
        std::str::from_utf8(frame).unwrap()
    }

    #[test]
    fn a_message_is_one_event_with_its_position() {
        let e = message_event("a:5:10", br#"{"ch":"a","id":10}"#, Framing::Raw);
        assert_eq!(text(&e), "id: a:5:10\ndata: {\"ch\":\"a\",\"id\":10}\n\n");
    }

    #[test]
    fn chunks_carry_their_length_in_hex() {
        let e = message_event("a:1:2", &[b'x'; 20], Framing::Chunked);
        let body = format!("id: a:1:2\ndata: {}\n\n", "x".repeat(20));
        assert_eq!(text(&e), format!("{:x}\r\n{body}\r\n", body.len()));
        assert_eq!(text(&ping(Framing::Chunked)), "8\r\n: ping\n\n\r\n");
    }

    #[test]
    fn line_breaks_in_a_payload_stay_inside_the_event() {
        let e = message_event("a:1:1", b"one\r\ntwo\nthree", Framing::Raw);
        assert_eq!(text(&e), "id: a:1:1\ndata: one\ndata: two\ndata: three\n\n");
    }

    #[test]
    fn the_close_event_says_the_code_and_ends_the_body() {
        let raw = close_event(4000, "too slow", Framing::Raw);
        assert_eq!(
            text(&raw),
            "event: close\ndata: {\"code\":4000,\"reason\":\"too slow\"}\n\n"
        );
        let quoted = close_event(1001, "a \"b\"\\\n", Framing::Raw);
        let data = text(&quoted)
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["reason"], "a \"b\"\\\n");
        let chunked = close_event(1001, "bye", Framing::Chunked);
        assert!(
            text(&chunked).ends_with("\r\n0\r\n\r\n"),
            "{}",
            text(&chunked)
        );
    }

    #[test]
    fn the_poll_answer_is_json() {
        let body = poll_body([&br#"{"id":1}"#[..], br#"{"id":2}"#], "a:1:2");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"messages": [{"id": 1}, {"id": 2}], "since": "a:1:2"})
        );
        let empty: serde_json::Value = serde_json::from_slice(&poll_body([], "")).unwrap();
        assert_eq!(empty, serde_json::json!({"messages": [], "since": ""}));
    }
}
