//! Steady publishing through chat hosts while something breaks, and what the viewers saw.
//!
//! [`run`] publishes `m0`, `m1`, … with `POST /pub/<ch>` at a fixed rate, alternating
//! between hosts, and reads every subscriber at the same time, so each delivery gets the
//! instant it arrived. Halfway it calls the fault (kill a Redis node, move a slot). The
//! [`Report`] holds what was acknowledged and what each subscriber received, and checks
//! the promise every failover test makes: every acknowledged message reaches every
//! subscriber exactly once, in order.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::token::token;
use crate::ws::{Event, Subscriber};
use crate::{Chatup, Options};

/// How the traffic goes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The channel published to (the subscribers must watch it).
    pub channel: String,
    /// Publishes per second (one every `1/rate`, or right after a slower answer).
    pub rate: u32,
    /// Publishing before the fault.
    pub before: Duration,
    /// Publishing after the fault.
    pub after: Duration,
    /// How long subscribers may take, once publishing stopped, to receive what was acked.
    pub settle: Duration,
}

/// A publish that was answered 200.
#[derive(Debug, Clone)]
pub struct Acked {
    pub text: String,
    pub epoch: u64,
    pub id: u64,
    /// When the publish was sent.
    pub sent: Instant,
}

/// A message as one subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub msg: Value,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub acked: Vec<Acked>,
    /// Publishes answered otherwise (their outcome is unknown), with the status.
    pub failed: Vec<(String, u16)>,
    /// When the fault was called.
    pub fault_at: Instant,
    /// Chat messages per subscriber, in arrival order.
    pub received: Vec<Vec<Received>>,
    /// Other frames (events such as `resync`) per subscriber.
    pub events: Vec<Vec<Value>>,
}

/// Chat hosts "a" on 127.0.0.2 and "b" on 127.0.0.3 (their options from `options`), with
/// two viewers of `channel` on each (a, b, a, b), subscribed before publishing starts.
pub async fn two_hosts(
    options: impl Fn(&str, &str) -> Options,
    channel: &str,
) -> (Chatup, Chatup, Vec<Subscriber>) {
    let a = Chatup::start_with(options("127.0.0.2", "a"));
    let b = Chatup::start_with(options("127.0.0.3", "b"));
    let mut subs = Vec::new();
    for env in [&a, &b, &a, &b] {
        subs.push(Subscriber::connect(env, &format!("/sub/{channel}")).await);
    }
    // Let every worker's subscription reach Redis before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (a, b, subs)
}

/// Publishes through `hosts` (in turn) on `plan.channel` while reading `subs`, calling
/// `fault` after `plan.before`.
pub async fn run(
    hosts: &[&Chatup],
    subs: &mut [Subscriber],
    plan: &Plan,
    fault: impl FnOnce(),
) -> Report {
    assert!(!hosts.is_empty() && plan.rate > 0);
    let acked = RefCell::new(Vec::<Acked>::new());
    let publishing = Cell::new(true);
    let fault_at = Cell::new(None::<Instant>);
    let mut failed = Vec::new();
    let alice = token("alice");

    let publisher = async {
        let interval = Duration::from_secs(1) / plan.rate;
        let start = Instant::now();
        let mut fault = Some(fault);
        let mut i = 0usize;
        loop {
            let elapsed = start.elapsed();
            if fault.is_some() && elapsed >= plan.before {
                (fault.take().expect("called once"))();
                fault_at.set(Some(Instant::now()));
            }
            if let Some(at) = fault_at.get() {
                if at.elapsed() >= plan.after {
                    break;
                }
            }
            let text = format!("m{i}");
            let host = hosts[i % hosts.len()];
            i += 1;
            let sent = Instant::now();
            let resp = host.post_text(&plan.channel, &alice, text.as_bytes()).await;
            if resp.status == 200 {
                let v = resp.json();
                let (Some(epoch), Some(id)) = (v["ep"].as_u64(), v["id"].as_u64()) else {
                    panic!("an ack without ep and id: {v}");
                };
                acked.borrow_mut().push(Acked {
                    text,
                    epoch,
                    id,
                    sent,
                });
            } else {
                failed.push((text, resp.status));
            }
            // A steady rate, also after a slow answer: no burst to make up for lost time.
            tokio::time::sleep_until((sent + interval).max(Instant::now()).into()).await;
        }
        publishing.set(false);
    };

    let readers = subs.iter_mut().map(|sub| {
        let (acked, publishing) = (&acked, &publishing);
        async move {
            let (mut chat, mut events) = (Vec::new(), Vec::new());
            let mut seen = HashSet::new();
            let mut settle_until = None;
            loop {
                if !publishing.get() {
                    let until = *settle_until.get_or_insert(Instant::now() + plan.settle);
                    let all = acked
                        .borrow()
                        .iter()
                        .all(|a| seen.contains(&(a.epoch, a.id)));
                    if all || Instant::now() >= until {
                        break;
                    }
                }
                match sub.next(Duration::from_millis(100)).await {
                    Some(Event::Text(text)) => {
                        let msg: Value = serde_json::from_str(&text).expect("a JSON frame");
                        if msg.get("msg").is_some() {
                            if let (Some(ep), Some(id)) = (msg["ep"].as_u64(), msg["id"].as_u64()) {
                                seen.insert((ep, id));
                            }
                            chat.push(Received {
                                at: Instant::now(),
                                msg,
                            });
                        } else {
                            events.push(msg);
                        }
                    }
                    Some(Event::Close(frame)) => panic!("a subscriber was closed: {frame:?}"),
                    _ => {}
                }
            }
            (chat, events)
        }
    });
    let (_, results) = tokio::join!(publisher, futures_util::future::join_all(readers));
    let (received, events) = results.into_iter().unzip();
    Report {
        acked: acked.into_inner(),
        failed,
        fault_at: fault_at.get().expect("the fault was called"),
        received,
        events,
    }
}

impl Report {
    /// Panics unless every subscriber received every acknowledged message exactly once,
    /// each as acknowledged (same text, epoch and id), in id order within an epoch, and
    /// no message twice at all.
    #[track_caller]
    pub fn assert_every_ack_once(&self) {
        let acked: HashMap<(u64, u64), &Acked> =
            self.acked.iter().map(|a| ((a.epoch, a.id), a)).collect();
        assert_eq!(
            acked.len(),
            self.acked.len(),
            "two acks share an epoch and id: {:?}",
            self.acked
        );
        for (n, chat) in self.received.iter().enumerate() {
            let mut seen = HashSet::new();
            let mut last: Option<(u64, u64)> = None;
            for r in chat {
                let key = (
                    r.msg["ep"].as_u64().unwrap_or(0),
                    r.msg["id"].as_u64().unwrap_or(0),
                );
                assert!(seen.insert(key), "subscriber {n}: {} twice", r.msg);
                if let Some((ep, id)) = last {
                    assert!(
                        ep != key.0 || id < key.1,
                        "subscriber {n}: {} after id {id}",
                        r.msg
                    );
                }
                last = Some(key);
                if let Some(a) = acked.get(&key) {
                    assert_eq!(r.msg["msg"], a.text.as_str(), "subscriber {n}: {}", r.msg);
                }
            }
            let missing: Vec<String> = self
                .acked
                .iter()
                .filter(|a| !seen.contains(&(a.epoch, a.id)))
                .map(|a| format!("{}@{}:{}", a.text, a.epoch, a.id))
                .collect();
            assert!(
                missing.is_empty(),
                "subscriber {n} never received {} of {} acked messages, first {:?}; events {:?}",
                missing.len(),
                self.acked.len(),
                &missing[..missing.len().min(5)],
                self.events[n]
            );
        }
    }

    /// Per subscriber, how many acknowledged messages it never received.
    pub fn missing(&self) -> Vec<usize> {
        self.received
            .iter()
            .map(|chat| {
                let seen: HashSet<(u64, u64)> = chat.iter().filter_map(position).collect();
                self.acked
                    .iter()
                    .filter(|a| !seen.contains(&(a.epoch, a.id)))
                    .count()
            })
            .collect()
    }

    /// Per subscriber, how many messages it received more than once.
    pub fn duplicates(&self) -> Vec<usize> {
        self.received
            .iter()
            .map(|chat| {
                let mut seen = HashSet::new();
                chat.iter()
                    .filter_map(position)
                    .filter(|p| !seen.insert(*p))
                    .count()
            })
            .collect()
    }

    /// Acknowledged publishes sent after the fault.
    pub fn acked_after_fault(&self) -> usize {
        self.acked
            .iter()
            .filter(|a| a.sent >= self.fault_at)
            .count()
    }

    /// Per subscriber, the time from the fault to the first delivery of a message sent
    /// after it (`None` if none came).
    pub fn recovery(&self) -> Vec<Option<Duration>> {
        let sent: HashMap<&str, Instant> = self
            .acked
            .iter()
            .map(|a| (a.text.as_str(), a.sent))
            .collect();
        self.received
            .iter()
            .map(|chat| {
                chat.iter()
                    .filter(|r| {
                        r.msg["msg"]
                            .as_str()
                            .and_then(|t| sent.get(t))
                            .is_some_and(|s| *s >= self.fault_at)
                    })
                    .map(|r| r.at.duration_since(self.fault_at))
                    .min()
            })
            .collect()
    }

    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} acked ({} after the fault), {} not acked {:?}; received per subscriber {:?}; \
             fault to first delivery of a later message {:?}",
            self.acked.len(),
            self.acked_after_fault(),
            self.failed.len(),
            self.failed.iter().map(|(_, s)| *s).collect::<HashSet<_>>(),
            self.received.iter().map(Vec::len).collect::<Vec<_>>(),
            self.recovery()
        )
    }
}

/// A received message's epoch and id.
fn position(r: &Received) -> Option<(u64, u64)> {
    Some((r.msg["ep"].as_u64()?, r.msg["id"].as_u64()?))
}
