//! Test harness: starts real nginx (with `ngx_http_chatup_module`) and a real
//! `chatup-sidecar` per test, and talks to them the way clients do.
//!
//! - [`Chatup`] owns one test's processes, ports and temp folder; dropping it stops every
//!   process (and prints the logs when the test failed). A test may run several, one chat
//!   host per loopback address ([`Options::address`]), sharing a Redis.
//! - [`Dispatcher`]: a sidecar with only the dispatcher role, for multi-host tests.
//! - [`redis`]: real `redis-server` processes, alone ([`RedisServer`]) or as a cluster
//!   ([`RedisCluster`]), and a tiny RESP client to check what is in them.
//! - [`http`]: a small HTTP/1.1 client (publishing with POST, handshake error checks).
//! - [`ws`]: WebSocket subscribers and publishers (tokio-tungstenite).
//! - [`raw`]: a raw WebSocket client that sends hand-made frames and reads the server's.
//! - [`token`]: JWTs, good and bad.
//! - [`process`]: [`ChildGuard`], which owns every process the harness starts and stops it
//!   when dropped; signals and bounded waits.
//! - [`procfs`]: which nginx worker owns a client connection.
//! - [`traffic`]: steady publishing while a fault is injected, and what subscribers saw.
//! - [`recorder`]: an HTTP server that records requests and answers as scripted, standing
//!   in for the services plugins call (a Slack webhook, a publish-hook backend).
//!
//! The artifacts come from `build/` (`scripts/setup` makes them); `CHATUP_BUILD_DIR` points
//! elsewhere. Every wait is bounded, so a broken build fails instead of hanging.
#![forbid(unsafe_code)]

pub mod env;
pub mod http;
pub mod process;
pub mod procfs;
pub mod raw;
pub mod recorder;
pub mod redis;
pub mod sse;
pub mod token;
pub mod traffic;
pub mod ws;

pub use env::{
    build_dir, free_port, free_port_on, nginx_config_test, nginx_config_test_with_relay_socket,
    repo_root, Chatup, Dispatcher, Options,
};
pub use http::HttpResponse;
pub use process::ChildGuard;
pub use raw::{Frame, RawWs};
pub use recorder::{Recorder, Reply};
pub use redis::{Frozen, RedisCluster, RedisSentinel, RedisServer};
pub use sse::{SseEvent, SseStream};
pub use ws::{two_host_room, Event, Publisher, Subscriber};

use std::time::Duration;

/// How long a test waits for something that should happen promptly (a message, a reply).
pub const WAIT: Duration = Duration::from_secs(5);

/// A short form of `text` for failure messages (long payloads are cut).
pub fn brief(text: &str) -> String {
    const MAX: usize = 160;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &text[..end], text.len())
}

/// Short forms of messages for failure output.
pub fn brief_all(msgs: &[serde_json::Value]) -> String {
    let parts: Vec<String> = msgs.iter().map(|m| brief(&m.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

/// Checks that `msg` is a chat message of `ch` with `id` and text `text`, and returns its epoch.
#[track_caller]
pub fn assert_message(msg: &serde_json::Value, ch: &str, id: u64, text: &str) -> u64 {
    assert_eq!(msg["ch"], ch, "channel of {msg}");
    assert_eq!(msg["id"], id, "id of {msg}");
    assert_eq!(msg["msg"], text, "text of {msg}");
    msg["ep"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch in {msg}"))
}

/// Checks that `msg` is the resync event of `ch` with `reason`, and returns the epoch it names.
#[track_caller]
pub fn assert_resync(msg: &serde_json::Value, ch: &str, reason: &str) -> u64 {
    assert_eq!(msg["ch"], ch, "channel of {msg}");
    assert_eq!(msg["ev"], "resync", "expected a resync event, got {msg}");
    assert_eq!(msg["data"]["reason"], reason, "resync reason in {msg}");
    msg["data"]["ep"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch in the resync event {msg}"))
}

/// The exact key order the contract fixes for a message: ch, id, ep, t, then the rest.
#[track_caller]
pub fn assert_key_order(raw: &str) {
    let positions: Vec<Option<usize>> = ["\"ch\":", "\"id\":", "\"ep\":", "\"t\":"]
        .iter()
        .map(|k| raw.find(k))
        .collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1]),
        "message keys are not in the order ch, id, ep, t: {raw}"
    );
    assert!(
        raw.starts_with("{\"ch\":"),
        "message does not start with ch: {raw}"
    );
}
