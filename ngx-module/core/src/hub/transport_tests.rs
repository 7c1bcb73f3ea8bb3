//! The hub's SSE and long-poll subscribers: what they are sent, and where they stand.

use chatup_wire::{BacklogKind, Entry, Position, ToWorker};

use super::{Delivery, Hub, SubscriberKey, Subscription};
use crate::since;
use crate::sse::Framing;

const BIG: usize = 1 << 20;
const SSE: Delivery = Delivery::EventStream(Framing::Raw);

fn sub(channel: &str, since: Option<(u64, u64)>) -> Subscription {
    Subscription {
        channel: channel.into(),
        since: since.map(|(epoch, id)| Position { epoch, id }),
    }
}

fn msg(channel: &str, epoch: u64, id: u64) -> ToWorker {
    ToWorker::Message {
        channel: channel.into(),
        epoch,
        id,
        payload: format!("{{\"ch\":\"{channel}\",\"id\":{id}}}").into_bytes(),
    }
}

fn backlog(channel: &str, epoch: u64, ids: std::ops::Range<u64>) -> ToWorker {
    ToWorker::Backlog {
        channel: channel.into(),
        epoch,
        kind: BacklogKind::Recent,
        messages: ids
            .map(|id| Entry {
                id,
                payload: format!("{{\"ch\":\"{channel}\",\"id\":{id}}}").into_bytes(),
            })
            .collect(),
    }
}

/// A hub whose channels are known, with these messages cached.
fn hub_with(channels: &[(&str, u64, std::ops::Range<u64>)]) -> Hub<u32> {
    let mut hub = Hub::new(100);
    hub.relay_connected(1);
    let probe = hub.add_subscriber(
        0,
        channels.iter().map(|(c, _, _)| sub(c, None)).collect(),
        BIG,
        Delivery::WebSocket,
    );
    for (channel, epoch, ids) in channels {
        hub.handle_relay_frame(backlog(channel, *epoch, ids.clone()));
    }
    // The probe keeps the channels subscribed; its frames are not looked at.
    hub.subscriber(probe).unwrap().outbox.clear();
    hub
}

/// What an SSE subscriber was sent, as text.
fn stream(hub: &mut Hub<u32>, key: SubscriberKey) -> String {
    let sub = hub.subscriber(key).unwrap();
    let mut bytes = Vec::new();
    sub.outbox.gather(&mut bytes, usize::MAX);
    sub.outbox.consume(bytes.len());
    String::from_utf8(bytes).unwrap()
}

fn poll_answer(hub: &mut Hub<u32>, key: SubscriberKey) -> serde_json::Value {
    let body = hub.subscriber(key).unwrap().take_poll_answer();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn an_sse_stream_starts_with_retry_then_replays_with_ids() {
    let mut hub = hub_with(&[("c", 7, 1..4)]);
    let key = hub.add_subscriber(1, vec![sub("c", Some((7, 1)))], BIG, SSE);
    assert_eq!(
        stream(&mut hub, key),
        "retry: 2000\n\n\
         id: c:7:2\ndata: {\"ch\":\"c\",\"id\":2}\n\n\
         id: c:7:3\ndata: {\"ch\":\"c\",\"id\":3}\n\n"
    );
    hub.handle_relay_frame(msg("c", 7, 4));
    assert_eq!(
        stream(&mut hub, key),
        "id: c:7:4\ndata: {\"ch\":\"c\",\"id\":4}\n\n"
    );
}

#[test]
fn single_channel_streams_share_one_event_per_message() {
    let mut hub = hub_with(&[("c", 7, 1..2)]);
    let a = hub.add_subscriber(1, vec![sub("c", None)], BIG, SSE);
    let b = hub.add_subscriber(2, vec![sub("c", None)], BIG, SSE);
    stream(&mut hub, a);
    stream(&mut hub, b);
    hub.handle_relay_frame(msg("c", 7, 2));
    let front = |hub: &mut Hub<u32>, key| {
        hub.subscriber(key)
            .unwrap()
            .outbox
            .frames()
            .next()
            .unwrap()
            .clone()
    };
    let (ea, eb) = (front(&mut hub, a), front(&mut hub, b));
    assert!(std::sync::Arc::ptr_eq(&ea, &eb), "one allocation for both");
}

#[test]
fn a_multi_channel_id_keeps_every_channel_including_quiet_ones() {
    let mut hub = hub_with(&[("a", 1, 1..3), ("b", 2, 1..6)]);
    let key = hub.add_subscriber(1, vec![sub("a", None), sub("b", Some((2, 5)))], BIG, SSE);
    let replay = stream(&mut hub, key);
    assert!(replay.contains("id: a:1:1,b:2:5\n"), "{replay}");
    assert!(
        replay.ends_with("id: a:1:2,b:2:5\ndata: {\"ch\":\"a\",\"id\":2}\n\n"),
        "{replay}"
    );
    hub.handle_relay_frame(msg("b", 2, 6));
    assert!(stream(&mut hub, key).starts_with("id: a:1:2,b:2:6\n"));
    // The id is what Last-Event-ID gives back, and it parses as a resume point.
    let id = hub.subscriber(key).unwrap().since();
    assert_eq!(since::parse(id.as_bytes()).unwrap().len(), 2);
}

#[test]
fn a_resync_is_an_event_whose_id_is_the_new_epoch() {
    let mut hub = hub_with(&[("c", 7, 1..3)]);
    let key = hub.add_subscriber(1, vec![sub("c", Some((6, 9)))], BIG, SSE);
    let replay = stream(&mut hub, key);
    assert!(
        replay.contains(
            "id: c:7:0\ndata: {\"ch\":\"c\",\"ev\":\"resync\",\"data\":{\"reason\":\"epoch_changed\",\"ep\":7}}\n\n"
        ),
        "{replay}"
    );
    assert!(replay.ends_with("id: c:7:2\ndata: {\"ch\":\"c\",\"id\":2}\n\n"));
    hub.handle_relay_frame(ToWorker::EpochReset {
        channel: "c".into(),
        epoch: 8,
    });
    assert!(stream(&mut hub, key).starts_with("id: c:8:0\ndata: {\"ch\":\"c\",\"ev\":\"resync\""));
}

#[test]
fn chunked_streams_are_valid_chunks_and_pings_are_comments() {
    let mut hub = hub_with(&[("c", 7, 1..2)]);
    let key = hub.add_subscriber(
        1,
        vec![sub("c", None)],
        BIG,
        Delivery::EventStream(Framing::Chunked),
    );
    hub.send_ping(key);
    let text = stream(&mut hub, key);
    // Each chunk: hex length, CRLF, that many bytes, CRLF.
    let mut rest = text.as_str();
    let mut events = String::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once("\r\n").unwrap();
        let len = usize::from_str_radix(len, 16).unwrap();
        events.push_str(&tail[..len]);
        rest = tail[len..].strip_prefix("\r\n").unwrap();
    }
    assert_eq!(
        events,
        "retry: 2000\n\nid: c:7:1\ndata: {\"ch\":\"c\",\"id\":1}\n\n: ping\n\n"
    );
}

#[test]
fn a_slow_stream_gets_a_close_event_and_nothing_after() {
    let mut hub = hub_with(&[("c", 7, 1..2)]);
    let key = hub.add_subscriber(1, vec![sub("c", None)], 120, SSE);
    stream(&mut hub, key);
    for id in 2..10 {
        hub.handle_relay_frame(msg("c", 7, id));
    }
    let text = stream(&mut hub, key);
    assert!(
        text.ends_with(
            "event: close\ndata: {\"code\":4000,\"reason\":\"too slow: reconnect and resume\"}\n\n"
        ),
        "{text}"
    );
    assert_eq!(hub.totals().slow_closes, 1);
    hub.handle_relay_frame(msg("c", 7, 10));
    assert_eq!(stream(&mut hub, key), "");
}

#[test]
fn a_poll_answers_with_what_follows_since_and_where_that_leaves_it() {
    let mut hub = hub_with(&[("a", 1, 1..4), ("b", 2, 1..2)]);
    let key = hub.add_subscriber(
        1,
        vec![sub("a", Some((1, 1))), sub("b", None)],
        BIG,
        Delivery::Poll,
    );
    assert_eq!(
        poll_answer(&mut hub, key),
        serde_json::json!({
            "messages": [{"ch": "a", "id": 2}, {"ch": "a", "id": 3}, {"ch": "b", "id": 1}],
            "since": "a:1:3,b:2:1"
        })
    );
    // A held poll: nothing new yet, pings are not its business.
    let held = hub.add_subscriber(2, vec![sub("a", Some((1, 3)))], BIG, Delivery::Poll);
    hub.send_ping(held);
    assert_eq!(
        poll_answer(&mut hub, held),
        serde_json::json!({"messages": [], "since": "a:1:3"})
    );
    hub.handle_relay_frame(msg("a", 1, 4));
    assert_eq!(
        poll_answer(&mut hub, held),
        serde_json::json!({"messages": [{"ch": "a", "id": 4}], "since": "a:1:4"})
    );
}

#[test]
fn a_first_poll_on_an_empty_channel_says_where_the_channel_stands() {
    let mut hub = hub_with(&[("c", 4, 1..1)]);
    let key = hub.add_subscriber(1, vec![sub("c", None)], BIG, Delivery::Poll);
    assert_eq!(
        poll_answer(&mut hub, key),
        serde_json::json!({"messages": [], "since": "c:4:0"})
    );
}

#[test]
fn a_full_poll_answers_with_what_fits_and_the_next_resumes_after_it() {
    let mut hub = hub_with(&[("c", 7, 1..11)]);
    // Room for three frames of ~18 bytes.
    let key = hub.add_subscriber(1, vec![sub("c", None)], 60, Delivery::Poll);
    assert!(
        hub.subscriber(key).unwrap().closing().is_some(),
        "answer at once"
    );
    let first = poll_answer(&mut hub, key);
    let got = first["messages"].as_array().unwrap().len();
    assert!((1..10).contains(&got), "{first}");
    assert_eq!(first["since"], format!("c:7:{got}"));
    assert_eq!(
        hub.totals().slow_closes,
        0,
        "a full answer is not a slow consumer"
    );
    hub.remove_subscriber(key);

    let next = hub.add_subscriber(
        2,
        vec![sub("c", Some((7, got as u64)))],
        BIG,
        Delivery::Poll,
    );
    let second = poll_answer(&mut hub, next);
    let ids: Vec<u64> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, ((got as u64 + 1)..=10).collect::<Vec<_>>());
}

#[test]
fn a_poll_waiting_for_its_channel_answers_when_the_backlog_comes() {
    let mut hub: Hub<u32> = Hub::new(100);
    hub.relay_connected(1);
    let key = hub.add_subscriber(1, vec![sub("c", Some((3, 1)))], BIG, Delivery::Poll);
    assert_eq!(
        poll_answer(&mut hub, key),
        serde_json::json!({"messages": [], "since": "c:3:1"}),
        "the resume point is kept while the channel is unknown"
    );
    hub.handle_relay_frame(backlog("c", 3, 1..3));
    assert_eq!(
        poll_answer(&mut hub, key),
        serde_json::json!({"messages": [{"ch": "c", "id": 2}], "since": "c:3:2"})
    );
}

#[test]
fn closing_a_poll_keeps_its_messages_to_answer_with() {
    let mut hub = hub_with(&[("c", 7, 1..3)]);
    let key = hub.add_subscriber(1, vec![sub("c", Some((7, 1)))], BIG, Delivery::Poll);
    hub.close_all(1001, "going away");
    assert_eq!(hub.subscriber(key).unwrap().closing(), Some(1001));
    assert_eq!(
        poll_answer(&mut hub, key),
        serde_json::json!({"messages": [{"ch": "c", "id": 2}], "since": "c:7:2"})
    );
}

#[test]
fn a_channel_stays_subscribed_a_while_for_the_next_poll() {
    let mut hub: Hub<u32> = Hub::new(100);
    hub.relay_connected(1);
    let first = hub.add_subscriber(1, vec![sub("c", None)], BIG, Delivery::Poll);
    hub.handle_relay_frame(backlog("c", 3, 1..3));
    std::mem::take(hub.relay_output());
    hub.remove_subscriber(first);
    assert!(hub.relay_output().is_empty(), "not unsubscribed at once");
    // The next poll finds the channel cached: it answers without asking the sidecar.
    let next = hub.add_subscriber(2, vec![sub("c", Some((3, 1)))], BIG, Delivery::Poll);
    assert!(hub.relay_output().is_empty(), "no new Subscribe");
    assert_eq!(
        poll_answer(&mut hub, next),
        serde_json::json!({"messages": [{"ch": "c", "id": 2}], "since": "c:3:2"})
    );
    hub.remove_subscriber(next);
    for _ in 1..super::POLL_LINGER_SWEEPS {
        hub.sweep_lingering();
    }
    assert!(hub.relay_output().is_empty());
    assert_eq!(hub.channel_count(), 1);
    hub.sweep_lingering();
    assert_eq!(hub.channel_count(), 0, "gone once its time is up");
    assert!(!hub.relay_output().is_empty(), "and unsubscribed");
}

#[test]
fn a_stream_leaving_unsubscribes_at_once() {
    let mut hub = hub_with(&[]);
    let key = hub.add_subscriber(1, vec![sub("w", None)], BIG, SSE);
    hub.handle_relay_frame(backlog("w", 1, 1..1));
    hub.remove_subscriber(key);
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn a_poll_waits_for_all_its_channels_before_answering() {
    let mut hub: Hub<u32> = Hub::new(100);
    hub.relay_connected(1);
    let key = hub.add_subscriber(1, vec![sub("a", None), sub("b", None)], BIG, Delivery::Poll);
    assert!(!hub.poll_is_ready(key));
    hub.handle_relay_frame(backlog("a", 1, 1..2));
    assert!(!hub.poll_is_ready(key), "b is still on its way");
    hub.handle_relay_frame(backlog("b", 2, 1..2));
    assert!(hub.poll_is_ready(key));
    assert_eq!(poll_answer(&mut hub, key)["since"], "a:1:1,b:2:1");
    hub.close(key, 1001, "going away");
    assert!(
        hub.poll_is_ready(key),
        "a closing poll answers with what it has"
    );
}

#[test]
fn a_poll_without_since_is_answered_once_its_channels_are_known_even_empty() {
    let mut hub: Hub<u32> = Hub::new(100);
    hub.relay_connected(1);
    let fresh = hub.add_subscriber(1, vec![sub("e", None)], BIG, Delivery::Poll);
    assert!(!hub.poll_is_ready(fresh), "not before the channel is known");
    hub.handle_relay_frame(backlog("e", 4, 1..1));
    assert!(
        hub.poll_is_ready(fresh),
        "empty, but it learns where the channel stands"
    );
    assert_eq!(
        poll_answer(&mut hub, fresh),
        serde_json::json!({"messages": [], "since": "e:4:0"})
    );
    let resuming = hub.add_subscriber(2, vec![sub("e", Some((4, 0)))], BIG, Delivery::Poll);
    assert!(
        !hub.poll_is_ready(resuming),
        "nothing after its since: held"
    );
}
