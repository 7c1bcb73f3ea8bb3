//! A subscriber's request checks on arbitrary paths, query strings and `Last-Event-ID`
//! values, for every transport: no panic, and an accepted request only names valid,
//! distinct channels, resuming only channels it names.
#![no_main]

use chatup_module_core::handshake::{check, UpgradeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    // <path>?<args>\n<Last-Event-ID>
    let (request, last_event_id) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let split = request
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(request.len());
    let (path, args) = request.split_at(split);
    let websocket = selector & 1 == 0;
    let req = UpgradeRequest {
        is_get: true,
        is_http11: selector & 2 == 0,
        upgrade: websocket.then_some(&b"websocket"[..]),
        connection: websocket.then_some(&b"Upgrade"[..]),
        version: Some(b"13"),
        key: Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
        accept: (selector & 4 != 0).then_some(&b"text/html, text/event-stream;q=0.9"[..]),
        last_event_id,
        channels: path,
        args: args.get(1..).unwrap_or(b""),
    };
    if let Ok(accepted) = check(&req, 8) {
        assert!(!accepted.subscriptions.is_empty() && accepted.subscriptions.len() <= 8);
        for (i, s) in accepted.subscriptions.iter().enumerate() {
            assert!(chatup_wire::channel::validate(s.channel.as_bytes()).is_ok());
            assert!(accepted.subscriptions[..i]
                .iter()
                .all(|o| o.channel != s.channel));
        }
    }
});
