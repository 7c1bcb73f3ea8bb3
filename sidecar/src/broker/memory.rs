//! The in-process broker for a single host: no Redis, history in memory.
//!
//! Channels live in a fixed number of shards, each behind a mutex held only for the few
//! operations of one publish or subscribe (no await while held). Publishing to a channel and
//! subscribing to it take the same lock, so a subscriber gets every message either in its
//! backlog or live, never both and never neither.
//!
//! A channel is created with a random epoch on first use. It is forgotten when it has had no
//! subscribers and no messages for `ttl`; a later use starts a new epoch, which tells
//! resuming clients that their position is void.
//!
//! Idempotency keys ([`Broker::publish_once`]) are kept per channel, under the same lock
//! as the publish they name, until their window passes; a channel is not forgotten while
//! it holds one, so a retry within the window is still recognized.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chatup_wire::{Entry, Position};
use tokio_util::sync::CancellationToken;

use super::{
    new_epoch, plan_backlog, Backlog, Broker, BrokerError, Delivery, Event, History, Once,
    Publication, Published, Subscriber, SubscriberId,
};
use crate::message::{assemble, Tail};

/// Shards of the channel map: enough that unrelated channels rarely share a lock.
const SHARDS: usize = 64;

/// Settings of a [`MemoryBroker`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryOptions {
    /// Messages kept per channel.
    pub history_size: usize,
    /// How long a channel without subscribers and without messages is kept.
    pub ttl: Duration,
}

/// One shard: channels by name.
type Shard = HashMap<Arc<str>, Channel>;

pub struct MemoryBroker {
    /// Channel state by name, split by hash.
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard of a channel name (randomly keyed, so names cannot be chosen to
    /// crowd one shard).
    hasher: RandomState,
    /// History bound and idle time-to-live.
    options: MemoryOptions,
}

struct Channel {
    /// The name, shared with every [`Published`] of the channel.
    name: Arc<str>,
    /// Random per history; a new one means the previous history is gone.
    epoch: u64,
    /// The last id given out in this epoch (0 before the first message).
    last_id: u64,
    /// The newest messages, oldest first, ids contiguous up to `last_id`.
    history: VecDeque<(u64, Bytes)>,
    /// Who gets live messages.
    subscribers: Vec<Subscriber>,
    /// Since when the channel has been without publishes and without subscribers.
    idle_since: Instant,
    /// The idempotency keys of recent publishes: where each one's message went, and until
    /// when the key counts.
    keys: HashMap<String, (Position, Instant)>,
    /// The same keys with when each stops counting, oldest first (every key gets the same
    /// window, so this is also the order they expire in).
    key_expiry: VecDeque<(Instant, String)>,
}

impl Channel {
    fn new(name: &str, previous_epoch: Option<u64>, now: Instant) -> Self {
        Self {
            name: name.into(),
            epoch: new_epoch(previous_epoch),
            last_id: 0,
            history: VecDeque::new(),
            subscribers: Vec::new(),
            idle_since: now,
            keys: HashMap::new(),
            key_expiry: VecDeque::new(),
        }
    }

    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        self.subscribers.is_empty()
            && now.saturating_duration_since(self.idle_since) >= ttl
            && self
                .key_expiry
                .back()
                .is_none_or(|(until, _)| *until <= now)
    }

    /// Forgets the idempotency keys whose window has passed.
    fn expire_keys(&mut self, now: Instant) {
        while let Some((until, _)) = self.key_expiry.front() {
            if *until > now {
                break;
            }
            if let Some((until, key)) = self.key_expiry.pop_front() {
                // Only if no later publish has taken the key since.
                if self.keys.get(&key).is_some_and(|(_, u)| *u == until) {
                    self.keys.remove(&key);
                }
            }
        }
    }
}

impl MemoryBroker {
    pub fn new(options: MemoryOptions) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            options,
        })
    }

    /// Removes expired channels every so often until `shutdown` or until the broker is
    /// dropped. Expiry is also checked whenever a channel is used, so this only frees memory.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: CancellationToken) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = (self.options.ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(broker) = weak.upgrade() else { return };
                let removed = broker.sweep(Instant::now());
                if removed > 0 {
                    tracing::debug!(removed, "forgot idle channels");
                }
            }
        });
    }

    /// Forgets every expired channel; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, ch| !ch.expired(now, self.options.ttl));
            removed += before - map.len();
        }
        removed
    }

    /// How many channels are held.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(channel) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    /// The live channel named `name`, created (or re-created after expiry) as needed.
    fn touch<'a>(
        map: &'a mut Shard,
        name: &str,
        now: Instant,
        ttl: Duration,
    ) -> Result<&'a mut Channel, BrokerError> {
        let previous = match map.get(name) {
            Some(ch) if !ch.expired(now, ttl) => None,
            Some(ch) => Some(Some(ch.epoch)),
            None => Some(None),
        };
        if let Some(previous_epoch) = previous {
            let fresh = Channel::new(name, previous_epoch, now);
            map.insert(fresh.name.clone(), fresh);
        }
        // Present: it was either live or has just been inserted.
        map.get_mut(name)
            .ok_or_else(|| BrokerError::Internal(format!("channel {name} vanished")))
    }

    pub(crate) fn publish_at(
        &self,
        channel: &str,
        tail: &Tail,
        now: Instant,
    ) -> Result<Published, BrokerError> {
        match self.publish_once_at(channel, tail, None, now)? {
            Publication::New(published) => Ok(published),
            Publication::Repeat(_) => Err(BrokerError::Internal(
                "a publish without a key was taken for a repeat".into(),
            )),
        }
    }

    /// Publishes unless `once` names a publish made within its window; see
    /// [`Broker::publish_once`].
    pub(crate) fn publish_once_at(
        &self,
        channel: &str,
        tail: &Tail,
        once: Option<&Once>,
        now: Instant,
    ) -> Result<Publication, BrokerError> {
        let mut map = self.shard(channel);
        let ch = Self::touch(&mut map, channel, now, self.options.ttl)?;
        ch.expire_keys(now);
        if let Some((first, _)) = once.and_then(|once| ch.keys.get(&once.key)) {
            return Ok(Publication::Repeat(*first));
        }
        let until = once
            .map(|once| {
                now.checked_add(once.window).ok_or_else(|| {
                    BrokerError::Internal(format!("idempotency window {:?} too long", once.window))
                })
            })
            .transpose()?;
        let id = ch
            .last_id
            .checked_add(1)
            .ok_or_else(|| BrokerError::Internal(format!("channel {channel} ran out of ids")))?;
        let published = Published {
            channel: ch.name.clone(),
            epoch: ch.epoch,
            id,
            payload: assemble(channel, id, ch.epoch, tail),
        };
        ch.last_id = id;
        ch.idle_since = now;
        if let (Some(once), Some(until)) = (once, until) {
            let position = Position {
                epoch: ch.epoch,
                id,
            };
            ch.keys.insert(once.key.clone(), (position, until));
            ch.key_expiry.push_back((until, once.key.clone()));
        }
        if self.options.history_size > 0 {
            if ch.history.len() >= self.options.history_size {
                ch.history.pop_front();
            }
            ch.history.push_back((id, published.payload.clone()));
        }
        ch.subscribers.retain(|s| {
            let delivery = s.deliver(Event::Message(published.clone()));
            if delivery == Delivery::Overflowed {
                tracing::warn!(
                    channel,
                    subscriber = s.id(),
                    "subscriber queue is full; dropping the subscriber"
                );
            }
            delivery == Delivery::Queued
        });
        Ok(Publication::New(published))
    }

    pub(crate) fn subscribe_at(
        &self,
        channel: &str,
        want: u32,
        since: Option<Position>,
        subscriber: &Subscriber,
        now: Instant,
    ) -> Result<Backlog, BrokerError> {
        let mut map = self.shard(channel);
        let ch = Self::touch(&mut map, channel, now, self.options.ttl)?;
        if !ch.subscribers.iter().any(|s| s.id() == subscriber.id()) {
            ch.subscribers.push(subscriber.clone());
        }
        let (kind, count) = plan_backlog(ch.epoch, ch.last_id, ch.history.len(), want, since);
        let skip = ch.history.len() - count.min(ch.history.len());
        Ok(Backlog {
            epoch: ch.epoch,
            head: ch.last_id,
            kind,
            messages: ch
                .history
                .iter()
                .skip(skip)
                .map(|(id, payload)| Entry {
                    id: *id,
                    payload: payload.to_vec(),
                })
                .collect(),
        })
    }

    pub(crate) fn history_at(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
        now: Instant,
    ) -> Result<History, BrokerError> {
        let mut map = self.shard(channel);
        let ch = Self::touch(&mut map, channel, now, self.options.ttl)?;
        Ok(History::page(
            ch.epoch,
            ch.last_id,
            ch.history.iter().rev().map(|(id, p)| (*id, &p[..])),
            before,
            limit,
        ))
    }

    pub(crate) fn unsubscribe_at(&self, channel: &str, subscriber: SubscriberId, now: Instant) {
        let mut map = self.shard(channel);
        if let Some(ch) = map.get_mut(channel) {
            let before = ch.subscribers.len();
            ch.subscribers.retain(|s| s.id() != subscriber);
            if before > 0 && ch.subscribers.is_empty() {
                ch.idle_since = now;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections do not panic; if one ever did, its state is still consistent
    // enough to go on with.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, channel: &str, tail: &Tail) -> Result<Published, BrokerError> {
        self.publish_at(channel, tail, Instant::now())
    }

    async fn publish_once(
        &self,
        channel: &str,
        tail: &Tail,
        once: &Once,
    ) -> Result<Publication, BrokerError> {
        self.publish_once_at(channel, tail, Some(once), Instant::now())
    }

    async fn subscribe(
        &self,
        channel: &str,
        want: u32,
        since: Option<Position>,
        subscriber: &Subscriber,
    ) -> Result<Backlog, BrokerError> {
        self.subscribe_at(channel, want, since, subscriber, Instant::now())
    }

    async fn unsubscribe(&self, channel: &str, subscriber: SubscriberId) {
        self.unsubscribe_at(channel, subscriber, Instant::now())
    }

    async fn history(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.history_at(channel, before, limit, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use chatup_wire::BacklogKind;

    fn broker(history_size: usize) -> Arc<MemoryBroker> {
        MemoryBroker::new(MemoryOptions {
            history_size,
            ttl: Duration::from_secs(100),
        })
    }

    fn tail(text: &str) -> Tail {
        Tail::encode(1, "{}", &Body::Text(text.into())).unwrap()
    }

    fn ids(b: &Backlog) -> Vec<u64> {
        b.messages.iter().map(|e| e.id).collect()
    }

    fn live_ids(rx: &mut tokio::sync::mpsc::Receiver<Event>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let Event::Message(p) = ev {
                out.push(p.id);
            }
        }
        out
    }

    #[tokio::test]
    async fn ids_increase_by_one_and_payload_is_assembled() {
        let b = broker(10);
        let mut last = 0;
        let mut epoch = None;
        for i in 0..25 {
            let p = b.publish("room", &tail(&format!("m{i}"))).await.unwrap();
            assert_eq!(p.id, last + 1);
            last = p.id;
            assert_eq!(*epoch.get_or_insert(p.epoch), p.epoch);
            assert!((1..=super::super::MAX_EPOCH).contains(&p.epoch));
            let expected = format!(
                r#"{{"ch":"room","id":{},"ep":{},"t":1,"user":{{}},"msg":"m{i}"}}"#,
                p.id, p.epoch
            );
            assert_eq!(&p.payload[..], expected.as_bytes());
        }
        // Other channels count on their own, with their own epoch.
        let other = b.publish("other", &tail("x")).await.unwrap();
        assert_eq!(other.id, 1);
    }

    #[tokio::test]
    async fn history_pages_oldest_first_below_an_id() {
        let b = broker(5);
        for i in 0..8 {
            b.publish("room", &tail(&format!("m{i}"))).await.unwrap();
        }
        let all = b.history("room", None, 100).await.unwrap();
        assert_eq!(all.head, 8);
        assert_eq!(
            all.messages.iter().map(|e| e.id).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8]
        );
        let page = b.history("room", Some(7), 2).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|e| e.id).collect::<Vec<_>>(),
            [5, 6]
        );
        assert!(b
            .history("room", Some(4), 10)
            .await
            .unwrap()
            .messages
            .is_empty());
        assert_eq!(b.history("empty", None, 10).await.unwrap().head, 0);
    }

    #[tokio::test]
    async fn history_is_bounded() {
        let b = broker(3);
        for i in 0..10 {
            b.publish("r", &tail(&i.to_string())).await.unwrap();
        }
        let (s, _rx) = Subscriber::new(8);
        let backlog = b.subscribe("r", 100, None, &s).await.unwrap();
        assert_eq!(ids(&backlog), vec![8, 9, 10]);
        assert_eq!(backlog.head, 10);
        assert_eq!(backlog.kind, BacklogKind::Recent);
        assert!(std::str::from_utf8(&backlog.messages[0].payload)
            .unwrap()
            .contains("\"msg\":\"7\""));

        let none = broker(0);
        none.publish("r", &tail("x")).await.unwrap();
        let backlog = none.subscribe("r", 100, None, &s).await.unwrap();
        assert!(backlog.messages.is_empty());
        assert_eq!(backlog.head, 1);
    }

    #[tokio::test]
    async fn backlog_kinds() {
        let b = broker(5);
        let (s, _rx) = Subscriber::new(64);
        // Unknown channel: an epoch, nothing in it.
        let empty = b.subscribe("r", 10, None, &s).await.unwrap();
        assert_eq!(
            (empty.kind, empty.head, ids(&empty)),
            (BacklogKind::Recent, 0, vec![])
        );
        let epoch = empty.epoch;
        for i in 0..8 {
            b.publish("r", &tail(&i.to_string())).await.unwrap();
        }
        // History holds 4..=8.
        let at = |id| Some(Position { epoch, id });
        let cases = [
            (None, 2, BacklogKind::Recent, vec![7, 8]),
            (at(5), 2, BacklogKind::Continued, vec![6, 7, 8]),
            (at(3), 2, BacklogKind::Continued, vec![4, 5, 6, 7, 8]),
            (at(8), 2, BacklogKind::Continued, vec![]),
            (at(2), 2, BacklogKind::Truncated, vec![4, 5, 6, 7, 8]),
            (
                Some(Position {
                    epoch: epoch + 1,
                    id: 6,
                }),
                2,
                BacklogKind::EpochChanged,
                vec![4, 5, 6, 7, 8],
            ),
        ];
        for (since, want, kind, expected) in cases {
            let backlog = b.subscribe("r", want, since, &s).await.unwrap();
            assert_eq!(backlog.kind, kind, "{since:?}");
            assert_eq!(ids(&backlog), expected, "{since:?}");
            assert_eq!((backlog.epoch, backlog.head), (epoch, 8));
        }
    }

    #[tokio::test]
    async fn no_gap_and_no_duplicate_between_backlog_and_live() {
        let b = broker(1000);
        let publisher = {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..2000 {
                    b.publish("r", &tail(&i.to_string())).await.unwrap();
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        // Subscribe while publishing is under way.
        tokio::task::yield_now().await;
        let (s, mut rx) = Subscriber::new(4096);
        let backlog = b.subscribe("r", 1000, None, &s).await.unwrap();
        publisher.await.unwrap();
        let mut seen = ids(&backlog);
        let live = live_ids(&mut rx);
        assert!(live.iter().all(|id| *id > backlog.head));
        seen.extend(live);
        let first = seen[0];
        assert_eq!(seen, (first..=2000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn unsubscribe_stops_delivery_and_overflow_drops_subscriber() {
        let b = broker(10);
        let (s, mut rx) = Subscriber::new(2);
        b.subscribe("r", 0, None, &s).await.unwrap();
        b.publish("r", &tail("1")).await.unwrap();
        b.unsubscribe("r", s.id()).await;
        b.publish("r", &tail("2")).await.unwrap();
        assert_eq!(live_ids(&mut rx), vec![1]);

        b.subscribe("r", 0, None, &s).await.unwrap();
        // Subscribing twice registers once.
        b.subscribe("r", 0, None, &s).await.unwrap();
        for i in 0..5 {
            b.publish("r", &tail(&i.to_string())).await.unwrap();
        }
        assert!(s.overflowed().is_cancelled());
        assert_eq!(live_ids(&mut rx), vec![3, 4]);
        // Dropped from the channel: nothing more is queued.
        b.publish("r", &tail("x")).await.unwrap();
        assert_eq!(live_ids(&mut rx), Vec::<u64>::new());
    }

    #[test]
    fn idle_channels_expire_with_a_new_epoch() {
        let b = MemoryBroker::new(MemoryOptions {
            history_size: 10,
            ttl: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let first = b.publish_at("r", &tail("a"), t0).unwrap();
        // Used within the TTL: kept.
        let second = b
            .publish_at("r", &tail("b"), t0 + Duration::from_secs(59))
            .unwrap();
        assert_eq!((second.epoch, second.id), (first.epoch, 2));
        assert_eq!(b.sweep(t0 + Duration::from_secs(100)), 0);

        // Subscribed channels never expire.
        let (s, _rx) = Subscriber::new(8);
        b.subscribe_at("r", 0, None, &s, t0 + Duration::from_secs(60))
            .unwrap();
        assert_eq!(b.sweep(t0 + Duration::from_secs(1000)), 0);
        // Idle time counts from when the last subscriber left.
        let left = t0 + Duration::from_secs(1000);
        b.unsubscribe_at("r", s.id(), left);
        assert_eq!(b.sweep(left + Duration::from_secs(59)), 0);

        // Expired on use, even before a sweep: new epoch, ids from 1, history gone.
        let later = left + Duration::from_secs(61);
        let third = b.publish_at("r", &tail("c"), later).unwrap();
        assert_ne!(third.epoch, first.epoch);
        assert_eq!(third.id, 1);
        let backlog = b.subscribe_at("r", 10, None, &s, later).unwrap();
        assert_eq!(ids(&backlog), vec![1]);
        b.unsubscribe_at("r", s.id(), later);

        b.publish_at("other", &tail("x"), later).unwrap();
        assert_eq!(b.channel_count(), 2);
        assert_eq!(b.sweep(later + Duration::from_secs(60)), 2);
        assert_eq!(b.channel_count(), 0);
    }
    fn once(key: &str, seconds: u64) -> Once {
        Once {
            key: key.into(),
            window: Duration::from_secs(seconds),
        }
    }

    #[tokio::test]
    async fn a_repeated_key_publishes_nothing_and_answers_the_first_position() {
        let b = broker(10);
        let (s, mut rx) = Subscriber::new(64);
        b.subscribe("r", 0, None, &s).await.unwrap();
        let Publication::New(first) = b
            .publish_once("r", &tail("a"), &once("k1", 300))
            .await
            .unwrap()
        else {
            panic!("the first publish with a key is new");
        };
        // The retry carries another text and time: still the first message's position.
        let again = b
            .publish_once("r", &tail("b"), &once("k1", 300))
            .await
            .unwrap();
        assert_eq!(
            again,
            Publication::Repeat(Position {
                epoch: first.epoch,
                id: first.id
            })
        );
        // Another key, or no key, publishes; so does the same key in another channel.
        let Publication::New(second) = b
            .publish_once("r", &tail("c"), &once("k2", 300))
            .await
            .unwrap()
        else {
            panic!("another key is new");
        };
        assert_eq!(second.id, first.id + 1);
        assert_eq!(b.publish("r", &tail("d")).await.unwrap().id, first.id + 2);
        assert!(matches!(
            b.publish_once("other", &tail("a"), &once("k1", 300)).await.unwrap(),
            Publication::New(p) if p.id == 1
        ));
        // Subscribers and the history saw each message once.
        assert_eq!(live_ids(&mut rx), vec![1, 2, 3]);
        let history = b.history("r", None, 10).await.unwrap();
        let texts: Vec<String> = history
            .messages
            .iter()
            .map(|e| String::from_utf8(e.payload.clone()).unwrap())
            .collect();
        assert_eq!(texts.len(), 3);
        assert!(texts[0].contains("\"msg\":\"a\""), "{texts:?}");
        assert!(texts[1].contains("\"msg\":\"c\""), "{texts:?}");
    }

    #[test]
    fn keys_expire_after_their_window() {
        let b = MemoryBroker::new(MemoryOptions {
            history_size: 10,
            ttl: Duration::from_secs(1000),
        });
        let t0 = Instant::now();
        let first = b
            .publish_once_at("r", &tail("a"), Some(&once("k", 300)), t0)
            .unwrap();
        let Publication::New(first) = first else {
            panic!("new")
        };
        let within = t0 + Duration::from_secs(299);
        assert!(matches!(
            b.publish_once_at("r", &tail("a"), Some(&once("k", 300)), within).unwrap(),
            Publication::Repeat(p) if p.id == first.id
        ));
        // The window counts from the publish, not from the retries.
        let after = t0 + Duration::from_secs(300);
        assert!(matches!(
            b.publish_once_at("r", &tail("a"), Some(&once("k", 300)), after).unwrap(),
            Publication::New(p) if p.id == first.id + 1
        ));
        // The key now names the second publish, for a window from it.
        assert!(matches!(
            b.publish_once_at("r", &tail("a"), Some(&once("k", 300)), after + Duration::from_secs(299)).unwrap(),
            Publication::Repeat(p) if p.id == first.id + 1
        ));
        let ch = b.shard("r");
        assert_eq!(ch.get("r").map(|c| c.keys.len()), Some(1));
    }

    #[test]
    fn a_channel_holding_a_key_is_not_forgotten() {
        // The channel's idle time-to-live is shorter than the key's window.
        let b = MemoryBroker::new(MemoryOptions {
            history_size: 10,
            ttl: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let Publication::New(first) = b
            .publish_once_at("r", &tail("a"), Some(&once("k", 300)), t0)
            .unwrap()
        else {
            panic!("new")
        };
        assert_eq!(b.sweep(t0 + Duration::from_secs(200)), 0);
        let retry = b
            .publish_once_at(
                "r",
                &tail("a"),
                Some(&once("k", 300)),
                t0 + Duration::from_secs(200),
            )
            .unwrap();
        assert_eq!(
            retry,
            Publication::Repeat(Position {
                epoch: first.epoch,
                id: first.id
            })
        );
        // Once the key is gone the idle channel goes too.
        assert_eq!(b.sweep(t0 + Duration::from_secs(300)), 1);
    }
}
