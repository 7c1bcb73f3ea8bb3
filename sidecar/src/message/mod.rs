//! The message JSON, encoded once per message and then forwarded as the same bytes
//! everywhere (history, relay, every subscriber).
//!
//! A message is built in two steps so that a broker can assign `id` and `ep` atomically:
//!
//! 1. the publisher side encodes the [`Tail`]: everything after `"ep":<n>,`, i.e.
//!    `"t":<ms>,"user":{..},"msg":".."}` (or `"ev"`/`"data"` for events; an operator's
//!    message posted without a sender has no `user`);
//! 2. the broker, holding the channel's lock (or inside a Redis script), calls [`assemble`]
//!    which prepends `{"ch":"<ch>","id":<id>,"ep":<ep>,`.
//!
//! Key order is therefore always `ch, id, ep, t`, then the rest.

pub mod limits;
pub mod limits_config;

pub use limits::{Limits, MAX_EVENT_NAME, RESERVED_EVENTS};
pub use limits_config::LimitsConfig;

use bytes::Bytes;
use serde_json::Value;

/// What a publisher sends: a chat message or an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A chat message's text.
    Text(String),
    /// A named event with optional JSON data.
    Event { name: String, data: Option<Value> },
}

/// The encoded end of a message, from `"t":` to the closing brace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail(Bytes);

impl Tail {
    /// Encodes `"t":<t_ms>,"user":<user>,` then `"msg":..}` or `"ev":..[,"data":..]}`.
    ///
    /// `user` must already be a JSON object (the encoded `_public` claim).
    pub fn encode(t_ms: u64, user: &str, body: &Body) -> Result<Self, serde_json::Error> {
        Self::encode_from(t_ms, Some(user), body)
    }

    /// Like [`encode`](Self::encode), for a message that may have no sender: without `user`
    /// the field is left out (`"t":<ms>,"msg":..}`). Operators post such messages through
    /// the admin API.
    pub fn encode_from(
        t_ms: u64,
        user: Option<&str>,
        body: &Body,
    ) -> Result<Self, serde_json::Error> {
        let mut out = Vec::with_capacity(64 + user.map_or(0, str::len));
        out.extend_from_slice(b"\"t\":");
        out.extend_from_slice(t_ms.to_string().as_bytes());
        if let Some(user) = user {
            out.extend_from_slice(b",\"user\":");
            out.extend_from_slice(user.as_bytes());
        }
        match body {
            Body::Text(text) => {
                out.extend_from_slice(b",\"msg\":");
                serde_json::to_writer(&mut out, text)?;
            }
            Body::Event { name, data } => {
                out.extend_from_slice(b",\"ev\":");
                serde_json::to_writer(&mut out, name)?;
                if let Some(data) = data {
                    out.extend_from_slice(b",\"data\":");
                    serde_json::to_writer(&mut out, data)?;
                }
            }
        }
        out.push(b'}');
        Ok(Self(out.into()))
    }

    /// A tail from bytes encoded elsewhere (e.g. read back from a broker).
    pub fn from_encoded(bytes: Bytes) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The final message bytes: `{"ch":<ch>,"id":<id>,"ep":<ep>,` followed by `tail`.
///
/// The one place these bytes are put together; a Redis engine does the same concatenation
/// in its script, which is safe because channel names never need JSON escaping.
pub fn assemble(channel: &str, id: u64, epoch: u64, tail: &Tail) -> Bytes {
    let mut out = Vec::with_capacity(48 + channel.len() + tail.0.len());
    out.extend_from_slice(b"{\"ch\":");
    // Channel names are validated to a charset that needs no escaping; encoding them as a
    // JSON string anyway keeps this function correct for any input.
    if serde_json::to_writer(&mut out, channel).is_err() {
        out.extend_from_slice(b"\"\"");
    }
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"ep\":");
    out.extend_from_slice(epoch.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(&tail.0);
    out.into()
}

/// Milliseconds since the Unix epoch, for `t`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_message_bytes_are_exact() {
        let tail =
            Tail::encode(1732200000000, r#"{"name":"ann"}"#, &Body::Text("hi".into())).unwrap();
        let bytes = assemble("room", 12, 3141592653, &tail);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"ch":"room","id":12,"ep":3141592653,"t":1732200000000,"user":{"name":"ann"},"msg":"hi"}"#
        );
    }

    #[test]
    fn event_bytes_are_exact_with_and_without_data() {
        let user = r#"{"name":"bo"}"#;
        let with = Tail::encode(
            5,
            user,
            &Body::Event {
                name: "typing".into(),
                data: Some(json!({"on": true})),
            },
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&assemble("a.b", 1, 2, &with)).unwrap(),
            r#"{"ch":"a.b","id":1,"ep":2,"t":5,"user":{"name":"bo"},"ev":"typing","data":{"on":true}}"#
        );
        let without = Tail::encode(
            5,
            user,
            &Body::Event {
                name: "typing".into(),
                data: None,
            },
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&assemble("c", 9, 8, &without)).unwrap(),
            r#"{"ch":"c","id":9,"ep":8,"t":5,"user":{"name":"bo"},"ev":"typing"}"#
        );
    }

    #[test]
    fn text_is_json_escaped() {
        let text = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é 😀 </script>";
        let tail = Tail::encode(1, "{}", &Body::Text(text.into())).unwrap();
        let bytes = assemble("r", 1, 1, &tail);
        let s = std::str::from_utf8(&bytes).unwrap();
        assert!(
            s.contains(r#""msg":"quote \" backslash \\ newline \n tab \t nul \u0000 bell \u0007 é 😀 </script>"}"#),
            "{s}"
        );
        // And the whole thing parses back, in key order.
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["msg"], json!(text));
        let keys: Vec<&str> = s
            .match_indices("\":")
            .map(|(i, _)| {
                let start = s[..i].rfind('"').unwrap() + 1;
                &s[start..i]
            })
            .collect();
        assert_eq!(keys, ["ch", "id", "ep", "t", "user", "msg"]);
    }

    #[test]
    fn a_message_without_sender_has_no_user_field() {
        let text = Tail::encode_from(7, None, &Body::Text("notice".into())).unwrap();
        assert_eq!(
            std::str::from_utf8(&assemble("r", 1, 2, &text)).unwrap(),
            r#"{"ch":"r","id":1,"ep":2,"t":7,"msg":"notice"}"#
        );
        let event = Tail::encode_from(
            7,
            None,
            &Body::Event {
                name: "poll".into(),
                data: Some(json!([1])),
            },
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&assemble("r", 1, 2, &event)).unwrap(),
            r#"{"ch":"r","id":1,"ep":2,"t":7,"ev":"poll","data":[1]}"#
        );
        assert_eq!(
            Tail::encode_from(7, Some("{}"), &Body::Text("x".into())).unwrap(),
            Tail::encode(7, "{}", &Body::Text("x".into())).unwrap()
        );
    }

    #[test]
    fn large_ids_and_epochs_are_written_in_full() {
        let tail = Tail::encode(0, "{}", &Body::Text(String::new())).unwrap();
        let max_ep = (1u64 << 53) - 1;
        let bytes = assemble("r", u64::MAX, max_ep, &tail);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!(
                r#"{{"ch":"r","id":{},"ep":{max_ep},"t":0,"user":{{}},"msg":""}}"#,
                u64::MAX
            )
        );
    }
}
