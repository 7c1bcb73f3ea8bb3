//! Brokers: where messages get their id, are kept in history and reach subscribers.
//!
//! A [`Broker`] is the engine behind the relay and the publisher endpoints. It is shaped so
//! that an in-process engine ([`memory::MemoryBroker`]) and a Redis engine can both implement
//! it:
//!
//! * [`Broker::publish`] takes the channel and the already encoded [`Tail`] of the message and,
//!   in one atomic step, assigns the next id, builds the final bytes with
//!   [`crate::message::assemble`], appends them to the history and fans them out.
//! * [`Broker::publish_once`] does the same for a publish that carries an idempotency key
//!   ([`Once`]): in the same atomic step it first looks the key up, and when a publish with
//!   that key came within the key's window it publishes nothing and answers with that
//!   publish's position ([`Publication::Repeat`]). The key is remembered for the window
//!   whether or not the publisher ever got the first answer, so a publisher that retries
//!   after a timeout (the first attempt may have been applied after all) publishes once.
//! * [`Broker::subscribe`] registers a [`Subscriber`] for live messages *before* reading the
//!   history, then answers with the [`Backlog`] chosen by [`plan_backlog`]. The backlog's
//!   `head` tells the subscriber which live messages it already has, so nothing is missed
//!   and nothing is delivered twice.
//! * Live events go into each subscriber's bounded queue without ever waiting: a subscriber
//!   whose queue is full is marked overflowed and dropped, never allowed to slow down the
//!   publishers.
//! * [`Broker::publish_guarded`], where the engine can ([`Broker::applies_guards`]: Redis),
//!   applies checks of the plugin chain ([`guards`]: bans, the rate limit) in the same
//!   atomic step as the publish, so a publish costs one round trip and the rate limit
//!   counts exactly what was published.

pub mod config;
pub mod guards;
pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatup_wire::{BacklogKind, Entry, Position};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::message::Tail;

pub use guards::{Guard, Guarded, Stopped};

/// Largest epoch: epochs stay exact as JavaScript numbers.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// A message as stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel, shared by all copies of the message in queues.
    pub channel: Arc<str>,
    /// The channel's epoch when the message was published.
    pub epoch: u64,
    /// The message's id in its channel and epoch.
    pub id: u64,
    /// The complete message JSON, exactly as subscribers receive it.
    pub payload: Bytes,
}

/// A publish that happens at most once per key: see [`Broker::publish_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// Names the publish among the channel's: the client's idempotency key already scoped
    /// to its user (see [`crate::host::publish::idempotency`]). Opaque to the broker; it only
    /// holds characters allowed in a Redis key name.
    pub key: String,
    /// How long after the publish the key still names it; a retry after that publishes
    /// again.
    pub window: Duration,
}

/// What [`Broker::publish_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// The message was published now.
    New(Published),
    /// A publish with the same key came first, within the window: nothing was published,
    /// and this is where that first message went.
    Repeat(Position),
}

/// What a subscriber receives live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A newly published message.
    Message(Published),
    /// The channel's history was lost while subscribed: ids restart in `epoch`.
    EpochReset { channel: Arc<str>, epoch: u64 },
}

/// The answer to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The channel's current epoch.
    pub epoch: u64,
    /// The channel's last id at the moment of subscribing (0 when it has none). Live
    /// messages with an id up to `head` in this epoch are already accounted for and must be
    /// dropped by the subscriber.
    pub head: u64,
    /// How `messages` relate to the requested resume point.
    pub kind: BacklogKind,
    /// The messages to deliver first, oldest first.
    pub messages: Vec<Entry>,
}

/// A page of a channel's history, for readers that do not subscribe (the dispatcher, the
/// admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The channel's current epoch.
    pub epoch: u64,
    /// The channel's last id (0 when it has none).
    pub head: u64,
    /// The page, oldest first.
    pub messages: Vec<Entry>,
}

impl History {
    /// The page of up to `limit` messages with an id below `before` (any when `None`), taken
    /// from `newest_first` (id and payload, newest first) and returned oldest first.
    pub fn page<'a>(
        epoch: u64,
        head: u64,
        newest_first: impl Iterator<Item = (u64, &'a [u8])>,
        before: Option<u64>,
        limit: usize,
    ) -> Self {
        let below = before.unwrap_or(u64::MAX);
        let mut messages: Vec<Entry> = newest_first
            .filter(|(id, _)| *id < below)
            .take(limit)
            .map(|(id, payload)| Entry {
                id,
                payload: payload.to_vec(),
            })
            .collect();
        messages.reverse();
        Self {
            epoch,
            head,
            messages,
        }
    }
}

/// A subscriber's identity, unique in this process.
pub type SubscriberId = u64;

/// The sending end of one subscriber's bounded queue, handed to the broker.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Identifies the subscriber for `unsubscribe` and to avoid registering it twice.
    id: SubscriberId,
    /// The subscriber's queue; never awaited on by the broker.
    queue: mpsc::Sender<Event>,
    /// Cancelled when the queue was found full: the owner closes its connection.
    overflowed: CancellationToken,
}

/// What became of an event handed to [`Subscriber::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full; the subscriber is marked overflowed and should be dropped.
    Overflowed,
    /// The subscriber has gone away.
    Gone,
}

impl Subscriber {
    /// A new subscriber and the receiving end of its queue of `capacity` events.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let subscriber = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            queue,
            overflowed: CancellationToken::new(),
        };
        (subscriber, rx)
    }

    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// Cancelled once the subscriber could not keep up.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflowed
    }

    /// Queues `event` without waiting.
    pub fn deliver(&self, event: Event) -> Delivery {
        match self.queue.try_send(event) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.cancel();
                Delivery::Overflowed
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached right now; retrying later may work.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen.
    #[error("broker error: {0}")]
    Internal(String),
}

/// A message engine. See the module documentation for the guarantees.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Assigns the next id of `channel`, builds the message from `tail`, appends it to the
    /// history and delivers it to the channel's subscribers, as one atomic step.
    async fn publish(&self, channel: &str, tail: &Tail) -> Result<Published, BrokerError>;

    /// Like [`publish`](Self::publish), unless a publish with `once.key` in `channel` came
    /// less than its window ago: then nothing is published and the answer is that
    /// publish's position. The look-up, the publish and remembering the key for
    /// `once.window` are one atomic step, so of two attempts with one key exactly one
    /// publishes, whichever reaches the broker first and however late.
    async fn publish_once(
        &self,
        channel: &str,
        tail: &Tail,
        once: &Once,
    ) -> Result<Publication, BrokerError>;

    /// Whether this engine applies [`Guard`]s ([`publish_guarded`](Self::publish_guarded),
    /// [`check_guards`](Self::check_guards)). When it does not, the plugins check as
    /// they always did and those two are never called.
    fn applies_guards(&self) -> bool {
        false
    }

    /// Applies `guards` in order and, if none stops the message, publishes it as
    /// [`publish`](Self::publish) (or [`publish_once`](Self::publish_once) with `once`),
    /// counting it in the rate limit's window: all one atomic step.
    async fn publish_guarded(
        &self,
        channel: &str,
        tail: &Tail,
        once: Option<&Once>,
        guards: &[Guard],
    ) -> Result<Guarded, BrokerError> {
        let _ = (channel, tail, once, guards);
        Err(BrokerError::Internal(format!(
            "the {} broker applies no guards",
            self.name()
        )))
    }

    /// Applies `guards` in order without publishing or counting anything: which one, if
    /// any, would stop a message that a later plugin refused or withheld (so the
    /// publisher hears of the first refusal in chain order).
    async fn check_guards(
        &self,
        channel: &str,
        guards: &[Guard],
    ) -> Result<Option<Stopped>, BrokerError> {
        let _ = (channel, guards);
        Err(BrokerError::Internal(format!(
            "the {} broker applies no guards",
            self.name()
        )))
    }

    /// Registers `subscriber` for live events of `channel` and returns what to send first:
    /// the last `want` messages when `since` is `None`, otherwise what follows `since` (see
    /// [`plan_backlog`]). Subscribing twice with the same subscriber is allowed and answers
    /// with a fresh backlog.
    async fn subscribe(
        &self,
        channel: &str,
        want: u32,
        since: Option<Position>,
        subscriber: &Subscriber,
    ) -> Result<Backlog, BrokerError>;

    /// Stops delivering `channel` to the subscriber. Unknown pairs are ignored.
    async fn unsubscribe(&self, channel: &str, subscriber: SubscriberId);

    /// Up to `limit` of the newest kept messages with an id below `before` (all kept ones
    /// when `None`), oldest first.
    async fn history(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError>;
}

/// Chooses the backlog for a subscription, from a history holding the contiguous ids
/// `head - kept + 1 ..= head` of `epoch`. Returns the kind and how many of the newest kept
/// messages to send.
pub fn plan_backlog(
    epoch: u64,
    head: u64,
    kept: usize,
    want: u32,
    since: Option<Position>,
) -> (BacklogKind, usize) {
    let kept = kept.min(usize::try_from(head).unwrap_or(usize::MAX));
    let Some(since) = since else {
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        return (BacklogKind::Recent, want.min(kept));
    };
    if since.epoch != epoch {
        return (BacklogKind::EpochChanged, kept);
    }
    if since.id >= head {
        return (BacklogKind::Continued, 0);
    }
    let missing = head - since.id;
    if missing <= kept as u64 {
        // The oldest kept id is at most since.id + 1: nothing in between is lost.
        return (BacklogKind::Continued, missing as usize);
    }
    (BacklogKind::Truncated, kept)
}

/// A fresh random epoch in `1..=MAX_EPOCH`, different from `previous`.
pub fn new_epoch(previous: Option<u64>) -> u64 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    loop {
        let epoch = rng.random_range(1..=MAX_EPOCH);
        if Some(epoch) != previous {
            return epoch;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, id: u64) -> Option<Position> {
        Some(Position { epoch, id })
    }

    #[test]
    fn plan_follows_the_relay_rules() {
        use BacklogKind::*;
        // History of epoch 7 holds ids 11..=20.
        let plan = |want, since| plan_backlog(7, 20, 10, want, since);
        assert_eq!(plan(5, None), (Recent, 5));
        assert_eq!(plan(50, None), (Recent, 10));
        assert_eq!(plan(0, None), (Recent, 0));
        assert_eq!(plan(5, at(8, 20)), (EpochChanged, 10));
        assert_eq!(plan(5, at(7, 20)), (Continued, 0));
        assert_eq!(plan(5, at(7, 25)), (Continued, 0));
        assert_eq!(plan(5, at(7, 15)), (Continued, 5));
        // since.id + 1 == oldest kept id: still continuous.
        assert_eq!(plan(5, at(7, 10)), (Continued, 10));
        assert_eq!(plan(5, at(7, 9)), (Truncated, 10));
        assert_eq!(plan(5, at(7, 0)), (Truncated, 10));
        // An empty channel.
        assert_eq!(plan_backlog(3, 0, 0, 10, None), (Recent, 0));
        assert_eq!(plan_backlog(3, 0, 0, 10, at(3, 0)), (Continued, 0));
        assert_eq!(plan_backlog(3, 0, 0, 10, at(4, 9)), (EpochChanged, 0));
        // No history kept at all.
        assert_eq!(plan_backlog(3, 5, 0, 10, at(3, 4)), (Truncated, 0));
        assert_eq!(plan_backlog(3, 5, 0, 10, at(3, 5)), (Continued, 0));
    }

    #[test]
    fn epochs_are_js_safe_and_change() {
        for _ in 0..1000 {
            let e = new_epoch(Some(1));
            assert!((1..=MAX_EPOCH).contains(&e) && e != 1);
        }
    }

    #[test]
    fn full_queue_marks_the_subscriber_overflowed() {
        let (s, mut rx) = Subscriber::new(1);
        let ev = Event::EpochReset {
            channel: "c".into(),
            epoch: 1,
        };
        assert_eq!(s.deliver(ev.clone()), Delivery::Queued);
        assert!(!s.overflowed().is_cancelled());
        assert_eq!(s.deliver(ev.clone()), Delivery::Overflowed);
        assert!(s.overflowed().is_cancelled());
        assert_eq!(rx.try_recv().unwrap(), ev);
        drop(rx);
        assert_eq!(s.deliver(ev), Delivery::Gone);
    }
}
