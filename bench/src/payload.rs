//! The bench's message text and how a subscriber reads a delivery back.
//!
//! The text starts with `b<unix ns>` (the publisher's clock when it sent it) and is padded
//! to the requested size; a delivery is the chatup message JSON around it. Reading a
//! delivery scans for `"id":` and `"msg":"b` instead of parsing JSON: the generator pays
//! for every delivery and the server's output is the thing under test, not the parser.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the clock every bench process shares).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What makes this run's names (channels, Redis keys) its own: the time in ms (hex) and
/// the pid.
pub fn run_stamp() -> String {
    format!("{:x}-{}", now_ns() / 1_000_000, std::process::id())
}

/// A message text of `size` bytes (at least the stamp) stamped with `sent_ns`.
pub fn message_text(sent_ns: u64, size: usize) -> String {
    let mut text = format!("b{sent_ns} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// What a subscriber needs from a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    /// The channel's epoch, for resuming with `since`.
    pub ep: Option<u64>,
    /// When the publisher sent it; `None` for messages the bench did not stamp.
    pub sent_ns: Option<u64>,
}

/// Reads the id and the stamp out of a delivered message; `None` when it is not a
/// message with an id (an event such as `resync`).
pub fn read_delivery(frame: &[u8]) -> Option<Delivery> {
    if find(frame, b"\"ev\":").is_some() {
        return None;
    }
    let id = digits_after(frame, b"\"id\":")?;
    let ep = digits_after(frame, b"\"ep\":");
    let sent_ns = digits_after(frame, b"\"msg\":\"b");
    Some(Delivery { id, ep, sent_ns })
}

/// The number right after the first `key` in `haystack`.
pub fn digits_after(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(haystack, key)? + key.len();
    let mut value: u64 = 0;
    let mut any = false;
    for &b in &haystack[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A message in the shape the sidecar encodes, for the floor server to send.
pub fn sample_message(channel: &str, id: u64, sent_ns: u64, size: usize) -> String {
    let text = message_text(sent_ns, size);
    format!(
        r#"{{"ch":"{channel}","id":{id},"ep":1779212345,"t":{t},"user":{{"name":"bench"}},"msg":"{text}"}}"#,
        t = sent_ns / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_wrote() {
        let text = message_text(1_779_000_000_123_456_789, 100);
        assert_eq!(text.len(), 100);
        let frame = sample_message("room-1", 42, 1_779_000_000_123_456_789, 100);
        assert_eq!(
            read_delivery(frame.as_bytes()),
            Some(Delivery {
                id: 42,
                ep: Some(1_779_212_345),
                sent_ns: Some(1_779_000_000_123_456_789)
            })
        );
    }

    #[test]
    fn events_and_foreign_messages() {
        let resync = br#"{"ch":"a","ev":"resync","data":{"reason":"epoch_changed","ep":3}}"#;
        assert_eq!(read_delivery(resync), None);
        let foreign = br#"{"ch":"a","id":7,"ep":1,"t":2,"user":{},"msg":"hello"}"#;
        assert_eq!(
            read_delivery(foreign),
            Some(Delivery {
                id: 7,
                ep: Some(1),
                sent_ns: None
            })
        );
        assert_eq!(read_delivery(b"{}"), None);
        assert_eq!(read_delivery(br#"{"id":99999999999999999999999}"#), None);
    }
}
