//! A worker's hub fed arbitrary relay frames while subscribers of every transport come and
//! go: no panic, nothing is ever queued for a subscriber after its close frame (or a poll's
//! complete answer), a poll's `since` parses back, its totals never go down, and private
//! channel frames (`Policy`, `Admitted`, `CloseViewer`) find admitted viewers and held
//! requests in any order.
#![no_main]

use chatup_module_core::hub::{Delivery, Hub, Subscription};
use chatup_module_core::since;
use chatup_module_core::sse::Framing;
use chatup_wire::{decode, Position, ToWorker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut hub: Hub<u8> = Hub::new(usize::from(selector % 8));
    hub.relay_connected(1);
    let channels = ["a", "b", "c"];
    let mut keys = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let since = (selector & (1 << i) != 0).then_some(Position { epoch: 1, id: 2 });
        let subs = vec![Subscription {
            channel: ch.to_string(),
            since,
        }];
        let delivery = match (usize::from(selector >> 3) + i) % 4 {
            0 => Delivery::WebSocket,
            1 => Delivery::EventStream(Framing::Raw),
            2 => Delivery::EventStream(Framing::Chunked),
            _ => Delivery::Poll,
        };
        keys.push(hub.add_subscriber(i as u8, subs, 64 + usize::from(selector), delivery));
    }
    // One viewer admitted to its private channel, one request still held.
    if let Ok(id) = hub.request_admission(vec!["a".into()], "t.o.k".into()) {
        hub.set_admission(keys[0], id);
    }
    let _ = hub.request_admission(vec!["b".into()], "t.o.k".into());
    let mut closed = std::collections::HashSet::new();
    let mut at = 0;
    let mut step = 0usize;
    let mut totals = hub.totals();
    while let Ok(Some((frame, used))) = decode::<ToWorker>(&rest[at..]) {
        at += used;
        step += 1;
        hub.handle_relay_frame(frame);
        assert_eq!(hub.totals().max(totals), hub.totals(), "totals went down");
        totals = hub.totals();
        if step % 5 == 0 {
            if let Some(key) = keys.pop() {
                hub.remove_subscriber(key);
            }
        }
        if step % 7 == 0 {
            hub.relay_disconnected();
            hub.relay_connected(1);
        }
        if step % 3 == 0 {
            hub.sweep_lingering();
        }
        for (id, _) in hub.admissions().take_verdicts() {
            hub.admitted_viewer_gone(id);
        }
        for (key, _) in hub.take_dirty() {
            let _ = hub.poll_is_ready(key);
            let Some(sub) = hub.subscriber(key) else {
                continue;
            };
            if sub.delivery() == Delivery::Poll {
                assert!(
                    since::parse(sub.since().as_bytes()).is_ok(),
                    "{}",
                    sub.since()
                );
            }
            let mut bytes = Vec::new();
            sub.outbox.gather(&mut bytes, usize::MAX);
            sub.outbox.consume(bytes.len());
            assert!(
                bytes.is_empty() || !closed.contains(&key),
                "bytes queued after the close frame"
            );
            if sub.closing().is_some() {
                closed.insert(key);
            }
        }
        hub.report_stats();
        hub.relay_output().clear();
    }
});
