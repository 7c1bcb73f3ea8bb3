//! A subscriber's request checks on arbitrary paths, query strings and `Last-Event-ID` or
//! `Authorization` values, for every transport: no panic; an accepted request only names
//! valid, distinct channels, resuming only channels it names, and carries a subscribe token
//! only of JWT characters and bounded length; the private channel patterns match its
//! channels consistently.
#![no_main]

use chatup_module_core::handshake::{check, UpgradeRequest, MAX_TOKEN_LEN};
use chatup_wire::private::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    // <path>?<args>\n<Last-Event-ID, or Authorization when the selector says so>
    let (request, header) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let (last_event_id, authorization) = if selector & 8 == 0 {
        (header, None)
    } else {
        (None, header)
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
        authorization,
        channels: path,
        args: args.get(1..).unwrap_or(b""),
    };
    if let Ok(accepted) = check(&req, 8) {
        assert!(!accepted.subscriptions.is_empty() && accepted.subscriptions.len() <= 8);
        if let Some(Ok(token)) = &accepted.token {
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)));
        }
        let policy = Policy::parse(&["user.{sub}", "members-*", "vip"]).unwrap();
        for s in &accepted.subscriptions {
            if let Some(owner) = policy.owner(&s.channel) {
                assert!(policy.is_private(&s.channel) && !owner.is_empty());
                assert!(s.channel.ends_with(owner));
            }
        }
        for (i, s) in accepted.subscriptions.iter().enumerate() {
            assert!(chatup_wire::channel::validate(s.channel.as_bytes()).is_ok());
            assert!(accepted.subscriptions[..i]
                .iter()
                .all(|o| o.channel != s.channel));
        }
    }
});
