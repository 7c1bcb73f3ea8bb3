//! What a message may be: its length, its event name and data, how long its idempotency
//! key holds. The same for every way in (a publisher over WebSocket or HTTP, the admin
//! API's `POST /post`).

use std::time::Duration;

use super::limits_config::LimitsConfig;

/// Longest event name, in bytes.
pub const MAX_EVENT_NAME: usize = 64;

/// Event names the platform itself emits; publishers may not impersonate them: `resync`
/// (the module, on resume), `join` and `leave` (presence, see [`crate::host::presence`]).
pub const RESERVED_EVENTS: &[&str] = &["resync", "join", "leave"];

/// What publishers may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest message text, in characters.
    pub max_message_chars: usize,
    /// Largest serialized event `data`, in bytes.
    pub max_event_bytes: usize,
    /// How long an idempotency key names its publish: a retry with the key within it gets
    /// the first answer instead of publishing again.
    pub idempotency_window: Duration,
}

impl From<&LimitsConfig> for Limits {
    fn from(config: &LimitsConfig) -> Self {
        Self {
            max_message_chars: config.max_message_chars,
            max_event_bytes: config.max_event_bytes,
            idempotency_window: Duration::from_secs(config.idempotency_window_seconds),
        }
    }
}

impl Limits {
    /// Largest request body or WebSocket frame worth reading: a message of the longest
    /// allowed text, fully JSON-escaped, or the largest event, plus room for the envelope
    /// and a token.
    pub fn max_request_bytes(&self) -> usize {
        let text = self.max_message_chars.saturating_mul(6);
        let event = self.max_event_bytes.saturating_mul(2);
        text.max(event).saturating_add(16 * 1024).max(64 * 1024)
    }
}
