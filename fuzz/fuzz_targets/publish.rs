//! A publish location on arbitrary input: the route never panics, a channel it returns is
//! one non-empty path segment of a POST, the worker's own error bodies never carry a raw
//! control character (their JSON escapes it); the hub's publishes, fed arbitrary relay frames
//! between requests, answers and a relay loss, answer each request at most once; and any
//! answer becomes a response with an HTTP status and no header that could break the
//! response head.
#![no_main]

use std::collections::HashSet;

use chatup_module_core::hub::Hub;
use chatup_module_core::publish::{response, route, PublishHeaders};
use chatup_wire::{decode, PublishAnswer, ToWorker};
use libfuzzer_sys::fuzz_target;

fn check_response(answer: PublishAnswer) {
    let r = response(answer);
    assert!((200..=599).contains(&r.status));
    for (name, value) in &r.headers {
        assert!(!name.is_empty() && !name.contains(':'));
        assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
        assert!(!name.eq_ignore_ascii_case("content-length"));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let frames = parts.next().unwrap_or_default();

    match route(method, uri, b"/pub/") {
        Ok(channel) => {
            assert_eq!(method, b"POST");
            assert!(!channel.is_empty() && !channel.contains(&b'/'));
            assert!(uri.ends_with(channel));
        }
        Err(e) => {
            let body = e.body();
            assert!(body.starts_with(b"{\"error\":{\"code\":\""));
            assert!(std::str::from_utf8(&body).is_ok());
            assert!(!body.iter().any(|&b| b < 0x20));
        }
    }

    // An answer made from the input itself: any status, any headers.
    let status = u16::from_be_bytes([
        header.first().copied().unwrap_or(0),
        header.get(1).copied().unwrap_or(0),
    ]);
    let text = String::from_utf8_lossy(header);
    let headers = text
        .split('\n')
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    check_response(PublishAnswer {
        id: 1,
        status,
        headers,
        body: frames.to_vec(),
    });

    // The hub: publishes go out, frames come back, the relay may break between them.
    let mut hub: Hub<u8> = Hub::new(4);
    hub.relay_connected(1);
    let mut waiting = HashSet::new();
    let mut answered = HashSet::new();
    let mut at = 0;
    for (i, &b) in frames.iter().enumerate().take(16) {
        match b % 4 {
            0 => {
                let mut h = PublishHeaders::default();
                h.offer(b"authorization", header);
                if let Ok(id) = hub.request_publish(b"room", h, vec![b; 3]) {
                    waiting.insert(id);
                }
            }
            1 => {
                if let Some(&id) = waiting.iter().next() {
                    if hub.publishes().forget(id) {
                        waiting.remove(&id);
                    }
                }
            }
            2 if i % 7 == 0 => {
                hub.relay_disconnected();
                hub.relay_connected(1);
            }
            _ => {
                if let Ok(Some((frame, used))) = decode::<ToWorker>(&frames[at..]) {
                    at += used;
                    hub.handle_relay_frame(frame);
                }
            }
        }
        for (id, answer) in hub.publishes().take_answers() {
            assert!(
                waiting.remove(&id),
                "an answer for {id}, which nobody waits for"
            );
            assert!(answered.insert(id), "{id} answered twice");
            if let Ok(answer) = answer {
                assert_eq!(answer.id, id);
                check_response(answer);
            }
        }
    }
    assert_eq!(hub.publishes().waiting(), waiting.len());
});
