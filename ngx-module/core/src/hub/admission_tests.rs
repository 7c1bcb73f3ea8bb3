//! The hub's side of private channels: which requests need the sidecar, held requests and
//! their verdicts, admitted viewers the sidecar closes or hears leave, and subscribers a
//! new policy shuts out.

use chatup_wire::close;
use chatup_wire::{BacklogKind, Entry, ToSidecar, ToWorker};

use super::test_support::relay_frames;
use super::{Delivery, Hub, Subscription};
use crate::admission::{AdmissionError, Gate};

const BIG: usize = 1 << 20;

fn subs(channels: &[&str]) -> Vec<Subscription> {
    channels
        .iter()
        .map(|c| Subscription {
            channel: (*c).into(),
            since: None,
        })
        .collect()
}

fn policy(patterns: &[&str]) -> ToWorker {
    ToWorker::Policy {
        private: patterns.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn connected_hub(patterns: &[&str]) -> Hub<u32> {
    let mut hub = Hub::new(100);
    hub.relay_connected(1);
    hub.handle_relay_frame(policy(patterns));
    relay_frames(&mut hub);
    hub
}

/// Asks the sidecar to admit a viewer of `members-x`; the admission id.
fn hold(hub: &mut Hub<u32>) -> u64 {
    hub.request_admission(vec!["members-x".into()], "a.b.c".into())
        .unwrap()
}

/// A WebSocket viewer of `members-x` the sidecar admitted: its admission id and key.
fn admitted_viewer(hub: &mut Hub<u32>) -> (u64, usize) {
    let id = hold(hub);
    let key = hub.add_subscriber(1, subs(&["members-x"]), BIG, Delivery::WebSocket);
    hub.set_admission(key, id);
    (id, key)
}

#[test]
fn the_gate_knows_only_once_the_policy_came() {
    let mut hub = Hub::<u32>::new(100);
    hub.relay_connected(1);
    assert_eq!(hub.admissions().gate(&subs(&["lobby"])), Gate::Unknown);
    hub.handle_relay_frame(policy(&["user.{sub}", "members-*"]));
    assert_eq!(hub.admissions().gate(&subs(&["lobby"])), Gate::Public);
    assert_eq!(
        hub.admissions()
            .gate(&subs(&["lobby", "members-x", "user.al"])),
        Gate::Private(vec!["members-x".into(), "user.al".into()])
    );
    hub.handle_relay_frame(policy(&[]));
    assert_eq!(hub.admissions().gate(&subs(&["members-x"])), Gate::Public);
}

#[test]
fn a_held_request_gets_its_verdict_and_a_late_admission_is_undone() {
    let mut hub = connected_hub(&["members-*"]);
    let id = hold(&mut hub);
    assert_eq!(
        relay_frames(&mut hub),
        vec![ToSidecar::Admit {
            id,
            channels: vec!["members-x".into()],
            token: "a.b.c".into()
        }]
    );
    hub.handle_relay_frame(ToWorker::Admitted {
        id,
        status: 0,
        reason: String::new(),
    });
    assert_eq!(hub.admissions().take_verdicts(), vec![(id, Ok(()))]);

    let refused = hold(&mut hub);
    hub.handle_relay_frame(ToWorker::Admitted {
        id: refused,
        status: 403,
        reason: "forbidden".into(),
    });
    assert_eq!(
        hub.admissions().take_verdicts(),
        vec![(refused, Err((403, "forbidden".into())))]
    );

    // The client went away before the verdict: the sidecar hears it left.
    let gone = hold(&mut hub);
    assert!(hub.admissions().forget(gone));
    relay_frames(&mut hub);
    hub.handle_relay_frame(ToWorker::Admitted {
        id: gone,
        status: 0,
        reason: String::new(),
    });
    assert!(hub.admissions().take_verdicts().is_empty());
    assert_eq!(relay_frames(&mut hub), vec![ToSidecar::Left { id: gone }]);
}

#[test]
fn without_the_relay_nothing_waits() {
    let mut hub = connected_hub(&["members-*"]);
    let held = hold(&mut hub);
    hub.relay_disconnected();
    let verdicts = hub.admissions().take_verdicts();
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].0, held);
    assert!(matches!(&verdicts[0].1, Err((503, _))));
    assert_eq!(
        hub.request_admission(vec!["members-x".into()], "a.b.c".into()),
        Err(AdmissionError::SidecarDown)
    );
}

#[test]
fn an_admitted_viewer_is_closed_by_the_sidecar_and_heard_leaving() {
    let mut hub = connected_hub(&["members-*"]);
    let (id, key) = admitted_viewer(&mut hub);
    assert!(hub.admissions().is_admitted(id));
    hub.handle_relay_frame(ToWorker::CloseViewer {
        id,
        code: close::SUBSCRIBE_TOKEN_EXPIRED,
        reason: "subscribe token expired".into(),
    });
    assert_eq!(
        hub.subscriber(key).unwrap().closing(),
        Some(close::SUBSCRIBE_TOKEN_EXPIRED)
    );
    relay_frames(&mut hub);
    hub.remove_subscriber(key);
    let frames = relay_frames(&mut hub);
    assert!(frames.contains(&ToSidecar::Left { id }), "{frames:?}");
    assert!(!hub.admissions().is_admitted(id));
    // A CloseViewer for someone gone does nothing.
    hub.handle_relay_frame(ToWorker::CloseViewer {
        id,
        code: 4002,
        reason: String::new(),
    });
}

#[test]
fn a_policy_that_makes_a_channel_private_shuts_out_who_was_not_admitted() {
    let mut hub = Hub::<u32>::new(100);
    hub.relay_connected(1);
    // Before the policy is known (a new worker), a viewer without a token came in.
    let outsider = hub.add_subscriber(1, subs(&["members-x"]), BIG, Delivery::WebSocket);
    let public = hub.add_subscriber(2, subs(&["lobby"]), BIG, Delivery::WebSocket);
    hub.handle_relay_frame(policy(&["members-*"]));
    assert_eq!(
        hub.subscriber(outsider).unwrap().closing(),
        Some(close::PRIVATE_CHANNEL)
    );
    assert_eq!(hub.subscriber(public).unwrap().closing(), None);
    // What the sidecar sends for the channel afterwards does not reach it.
    let unsent = hub.subscriber(outsider).unwrap().outbox.unsent();
    hub.handle_relay_frame(ToWorker::Backlog {
        channel: "members-x".into(),
        epoch: 1,
        kind: BacklogKind::Recent,
        messages: vec![Entry {
            id: 1,
            payload: b"{\"msg\":\"secret\"}".to_vec(),
        }],
    });
    assert_eq!(hub.subscriber(outsider).unwrap().outbox.unsent(), unsent);
}

#[test]
fn a_relay_reconnect_sends_admitted_viewers_to_be_admitted_again() {
    let mut hub = connected_hub(&["members-*"]);
    let (_, key) = admitted_viewer(&mut hub);
    hub.relay_disconnected();
    hub.relay_connected(1);
    assert_eq!(
        hub.subscriber(key).unwrap().closing(),
        Some(close::GOING_AWAY)
    );
}
