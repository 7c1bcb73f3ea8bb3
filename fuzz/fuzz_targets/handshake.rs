//! The upgrade checks on arbitrary paths and query strings: no panic, and an accepted
//! request only names valid, distinct channels.
#![no_main]

use chatup_module_core::handshake::{check, UpgradeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'?').unwrap_or(data.len());
    let (path, args) = data.split_at(split);
    let req = UpgradeRequest {
        is_get: true,
        is_http11: true,
        upgrade: Some(b"websocket"),
        connection: Some(b"Upgrade"),
        version: Some(b"13"),
        key: Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
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
