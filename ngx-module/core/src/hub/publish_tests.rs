//! The hub's side of `POST /pub/<ch>`: publishes go out as `Publish` frames only while the
//! relay is up, answers reach the request that waits for them, and the relay's loss fails
//! the ones still waiting.

use chatup_wire::{PublishAnswer, ToSidecar, ToWorker};

use super::test_support::relay_frames;
use super::Hub;
use crate::publish::{PublishError, PublishHeaders};

fn headers() -> PublishHeaders {
    let mut h = PublishHeaders::default();
    h.offer(b"Authorization", b"Bearer t");
    h
}

fn answer(id: u64, status: u16) -> ToWorker {
    ToWorker::Published(PublishAnswer {
        id,
        status,
        headers: vec![],
        body: b"{}".to_vec(),
    })
}

#[test]
fn publishes_wait_for_their_own_answer() {
    let mut hub: Hub<u32> = Hub::new(10);
    assert_eq!(
        hub.request_publish(b"room", headers(), b"x".to_vec()),
        Err(PublishError::SidecarDown)
    );
    hub.relay_connected(1);
    relay_frames(&mut hub);
    let a = hub
        .request_publish(b"room", headers(), b"a".to_vec())
        .unwrap();
    let b = hub
        .request_publish(b"room", headers(), b"b".to_vec())
        .unwrap();
    let frames = relay_frames(&mut hub);
    let sent: Vec<(u64, Vec<u8>)> = frames
        .into_iter()
        .map(|f| match f {
            ToSidecar::Publish(p) => {
                assert_eq!(p.channel, b"room");
                assert_eq!(p.authorization.as_deref(), Some(&b"Bearer t"[..]));
                (p.id, p.body)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![(a, b"a".to_vec()), (b, b"b".to_vec())]);

    // Answers in any order; an unknown id is dropped.
    hub.handle_relay_frame(answer(b, 403));
    hub.handle_relay_frame(answer(12345, 200));
    let answers = hub.publishes().take_answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, b);
    assert_eq!(answers[0].1.as_ref().map(|a| a.status), Ok(403));

    // The relay breaks: the one still waiting is answered unavailable; its late answer
    // (on a new connection) is dropped.
    hub.relay_disconnected();
    assert_eq!(
        hub.publishes().take_answers(),
        vec![(a, Err(PublishError::SidecarDown))]
    );
    hub.relay_connected(1);
    hub.handle_relay_frame(answer(a, 200));
    assert!(hub.publishes().take_answers().is_empty());
}

#[test]
fn going_away_fails_waiting_publishes_and_forgotten_ones_stay_quiet() {
    let mut hub: Hub<u32> = Hub::new(10);
    hub.relay_connected(1);
    let a = hub.request_publish(b"room", headers(), vec![]).unwrap();
    let b = hub.request_publish(b"room", headers(), vec![]).unwrap();
    assert!(hub.publishes().forget(a));
    hub.fail_publishes(&PublishError::GoingAway);
    assert_eq!(
        hub.publishes().take_answers(),
        vec![(b, Err(PublishError::GoingAway))]
    );
}

#[test]
fn publishes_are_refused_while_too_much_waits_for_the_sidecar() {
    let mut hub: Hub<u32> = Hub::new(10);
    hub.relay_connected(1);
    // The sidecar stops reading: what the worker could not write stays queued.
    let body = vec![b'x'; 64 << 10];
    let mut sent = 0;
    let refused = loop {
        match hub.request_publish(b"room", headers(), body.clone()) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1000, "never refused");
    };
    assert_eq!(refused, PublishError::Backlogged);
    assert_eq!(refused.status(), 503);
    assert!(hub.relay_output().len() <= crate::publish::MAX_RELAY_BACKLOG + (65 << 10));
    // Once written, publishing goes on.
    hub.relay_output().clear();
    assert!(hub.request_publish(b"room", headers(), body).is_ok());
}

#[test]
fn a_body_the_relay_cannot_carry_is_refused_and_sends_nothing() {
    let mut hub: Hub<u32> = Hub::new(10);
    hub.relay_connected(1);
    relay_frames(&mut hub);
    let big = vec![b'x'; chatup_wire::MAX_FRAME_LEN + 1];
    assert_eq!(
        hub.request_publish(b"room", headers(), big),
        Err(PublishError::TooLarge(chatup_wire::MAX_FRAME_LEN))
    );
    assert!(hub.relay_output().is_empty());
    assert_eq!(hub.publishes().waiting(), 0);
}
