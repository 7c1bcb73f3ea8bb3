//! The Redis broker: one room spans many hosts, through one Redis server or a Redis Cluster.
//!
//! Per channel `C`, with the configured prefix `P`, three names share the hash tag `{C}`,
//! so in a cluster a channel lives on one shard:
//!
//! * `P:{C}:meta`, a hash: `ep`, the channel's epoch, and `id`, its last id;
//! * `P:{C}:history`, a list of the newest messages, newest first;
//! * `P:{C}:live`, the pub/sub channel (sharded pub/sub in a cluster);
//! * `P:{C}:once:<key>`, per idempotency key of a recent publish ([`Broker::publish_once`]),
//!   a string `<epoch>:<id>` naming the message published with it, expiring after the key's
//!   window.
//!
//! Publishing is one script ([`PUBLISH_LUA`]): apply the guards if there are any (bans,
//! the rate limit: [`super::guards`]), look up the idempotency key if there is one, next
//! id, append to the history (trimmed, with an expiry), remember the key, count the message
//! in the rate limit's window, publish. History entries and live messages are
//! `<epoch>:<id>:<message JSON>`; the JSON is built by the script exactly as
//! [`crate::message::assemble`] builds it, so every host forwards the same bytes.
//!
//! This sidecar subscribes in Redis only to the channels its nginx workers want, and keeps
//! per channel the position of the last message it handed on. A live message that does not
//! follow it (a gap: messages lost while the pub/sub connection was down), a new epoch, or
//! a fresh confirmation of the subscription (the connection came back) makes it read the
//! history and hand on what is missing, in order, before anything newer. When the history
//! is gone (Redis restarted empty, keys expired) the channel starts a new epoch, and the
//! relay tells the workers, which tell their clients.
//!
//! The broker owns its subscriptions rather than trusting the client library to restore
//! them: when the pub/sub connection drops, or Redis itself ends a subscription (a Redis
//! Cluster node sends `sunsubscribe` when the channel's slot moves to another node), every
//! channel still wanted is subscribed again (`ensure_subscribed`), retried until Redis
//! confirms, and the confirmation fills the gap from history. In a cluster the new
//! subscription goes to whichever node serves the slot now: the promoted replica after a
//! failover, the target of a reshard. A history whose last id went backwards (a master died
//! before its replica had the newest messages) cannot continue the ids subscribers already
//! saw: the channel moves to a new epoch, and clients are told.
//!
//! Publishing while Redis is unreachable fails within `redis.timeout_ms` with
//! [`BrokerError::Unavailable`]: a message is acknowledged only once Redis has it. Such a
//! failure does not say the message was not published: the command may still be waiting in
//! the connection and run once Redis answers again. A retry with the same idempotency key
//! then gets the first attempt's id instead of publishing twice.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatup_wire::{Entry, Position};
use redis::{PushInfo, PushKind, Script, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    new_epoch, plan_backlog, Backlog, Broker, BrokerError, Delivery, Event, Guard, Guarded,
    History, Once, Publication, Published, Stopped, Subscriber, SubscriberId,
};
use crate::cluster::redis::{RedisError, RedisLink};
use crate::message::{assemble, Tail};

/// The publish script; see its header for the keys and arguments.
pub const PUBLISH_LUA: &str = include_str!("redis/publish.lua");
/// Reads epoch, last id and history (creating the channel's epoch if it has none).
pub const READ_LUA: &str = include_str!("redis/read.lua");

/// Locks that order subscription changes per channel (by hash), so a SUBSCRIBE and an
/// UNSUBSCRIBE of the same channel never cross on the wire.
const OP_LOCKS: usize = 64;

/// How often lost subscriptions are issued again, and catch-ups that failed are tried
/// again, until they succeed. Short: the channel is silent until then; each attempt is
/// bounded by `redis.timeout_ms`.
const RETRY_REPAIR: Duration = Duration::from_millis(250);

/// Subscriptions or catch-ups done at once when many channels need one.
const REPAIR_CONCURRENCY: usize = 64;

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    /// Messages kept per channel.
    pub history_size: usize,
    /// How long a channel's keys live after its last publish.
    pub ttl: Duration,
}

pub struct RedisBroker {
    /// Commands, scripts and pub/sub.
    link: RedisLink,
    /// History bound and key expiry.
    options: RedisOptions,
    /// Loaded once per Redis node, then called by hash.
    publish_script: Script,
    read_script: Script,
    /// The channels this host's workers want, with their subscribers.
    channels: Mutex<HashMap<Arc<str>, LocalChannel>>,
    /// See [`OP_LOCKS`].
    op_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Picks the op lock of a channel.
    hasher: RandomState,
    /// Times the pub/sub connection was lost, for metrics.
    pubsub_disconnects: AtomicU64,
    /// Wakes [`repair`] when a subscription was lost or a catch-up failed.
    needs_repair: tokio::sync::Notify,
}

struct LocalChannel {
    /// The name, shared with every [`Published`] handed on.
    name: Arc<str>,
    /// The relay connections that want the channel.
    subscribers: Vec<Subscriber>,
    /// The last message handed to subscribers (or the head read when subscribing): the
    /// next live message must follow it.
    last: Option<Position>,
    /// Whether Redis has confirmed the subscription and not ended it since (connection
    /// lost, slot moved): while false, `ensure_subscribed` keeps issuing it.
    subscribed: bool,
    /// Set when a catch-up is owed (it failed, or the subscription was lost); retried every
    /// [`RETRY_REPAIR`]. Meanwhile live messages after a gap are left to it.
    stale: bool,
}

/// A history entry or live message: `<epoch>:<id>:<json>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawEntry {
    epoch: u64,
    id: u64,
    payload: Bytes,
}

impl RawEntry {
    fn parse(bytes: Vec<u8>) -> Option<Self> {
        let bytes = Bytes::from(bytes);
        let first = bytes.iter().position(|&b| b == b':')?;
        let second = first + 1 + bytes[first + 1..].iter().position(|&b| b == b':')?;
        let number = |range: &[u8]| std::str::from_utf8(range).ok()?.parse::<u64>().ok();
        Some(Self {
            epoch: number(&bytes[..first])?,
            id: number(&bytes[first + 1..second])?,
            payload: bytes.slice(second + 1..),
        })
    }
}

/// What the publish script answered.
enum Reply {
    /// Published, or a repeat of an idempotency key.
    Published(Publication),
    /// A guard stopped the message.
    Stopped(Stopped),
    /// Only the guards were applied (`check`), and they let the message pass.
    Passed,
}

/// Adds the keys and arguments of `guard` to a call of [`PUBLISH_LUA`] (see its header).
fn add_guard(invocation: &mut redis::ScriptInvocation<'_>, guard: &Guard) {
    match guard {
        Guard::Ban {
            hash,
            legacy_hash,
            fields,
            legacy_fields,
            now_ms,
        } => {
            // Both lists are read pairwise by the script: one length for both.
            let n = fields.len().min(legacy_fields.len());
            invocation
                .key(hash)
                .key(legacy_hash)
                .arg("ban")
                .arg(*now_ms)
                .arg(n)
                .arg(&fields[..n])
                .arg(&legacy_fields[..n]);
        }
        Guard::Rate {
            counts,
            messages,
            window,
            member,
            key,
        } => {
            invocation
                .key(counts)
                .arg("rate")
                .arg(*messages)
                .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
                .arg(member)
                .arg(key.as_deref().unwrap_or(""));
        }
    }
}

/// What the read script returned.
struct Read {
    epoch: u64,
    head: u64,
    /// Newest first.
    entries: Vec<RawEntry>,
}

impl RedisBroker {
    /// A broker on `link`, handing on the pub/sub pushes that arrive on `pushes` until
    /// `shutdown`.
    pub fn start(
        link: RedisLink,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        options: RedisOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let broker = Arc::new(Self {
            link,
            options,
            publish_script: Script::new(PUBLISH_LUA),
            read_script: Script::new(READ_LUA),
            channels: Mutex::new(HashMap::new()),
            op_locks: (0..OP_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            pubsub_disconnects: AtomicU64::new(0),
            needs_repair: tokio::sync::Notify::new(),
        });
        tokio::spawn(run_pushes(
            Arc::downgrade(&broker),
            pushes,
            shutdown.clone(),
        ));
        tokio::spawn(repair(Arc::downgrade(&broker), shutdown));
        broker
    }

    /// Times the pub/sub connection was lost since the start.
    pub fn pubsub_disconnects(&self) -> u64 {
        self.pubsub_disconnects.load(Ordering::Relaxed)
    }

    fn meta_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.link.key_prefix())
    }

    fn history_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:history", self.link.key_prefix())
    }

    fn once_key(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:once:{key}", self.link.key_prefix())
    }

    fn live_channel(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:live", self.link.key_prefix())
    }

    /// The chatup channel of a Redis pub/sub channel of ours.
    fn channel_of_live<'a>(&self, live: &'a str) -> Option<&'a str> {
        live.strip_prefix(self.link.key_prefix())?
            .strip_prefix(":{")?
            .strip_suffix("}:live")
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, LocalChannel>> {
        // No critical section panics; state stays usable if one ever did.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn op_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        &self.op_locks[(self.hasher.hash_one(channel) % OP_LOCKS as u64) as usize]
    }

    fn unavailable(e: RedisError) -> BrokerError {
        BrokerError::Unavailable(e.to_string())
    }

    /// Runs one of the scripts, whose replies all start with the epoch and an id.
    async fn call(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        script: &str,
        channel: &str,
    ) -> Result<(u64, u64, std::vec::IntoIter<Value>), BrokerError> {
        let mut conn = self.link.commands();
        let reply: Vec<Value> = self
            .link
            .bounded(invocation.invoke_async(&mut conn))
            .await
            .map_err(Self::unavailable)?;
        let mut items = reply.into_iter();
        match (
            items.next().and_then(value_u64),
            items.next().and_then(value_u64),
        ) {
            (Some(epoch), Some(id)) => Ok((epoch, id, items)),
            _ => Err(BrokerError::Internal(format!(
                "unexpected reply from the {script} script for {channel}"
            ))),
        }
    }

    /// Runs the publish script, with the idempotency key of `once` if given.
    async fn run_publish(
        &self,
        channel: &str,
        tail: &Tail,
        once: Option<&Once>,
    ) -> Result<Publication, BrokerError> {
        match self.run_guarded(channel, Some((tail, once)), &[]).await? {
            Reply::Published(publication) => Ok(publication),
            _ => Err(BrokerError::Internal(format!(
                "the publish script stopped a message without guards in {channel}"
            ))),
        }
    }

    /// Runs the publish script with `guards`: publishing `publish` (the tail and the
    /// idempotency key) if they let it pass, or, without it, only applying them.
    async fn run_guarded(
        &self,
        channel: &str,
        publish: Option<(&Tail, Option<&Once>)>,
        guards: &[Guard],
    ) -> Result<Reply, BrokerError> {
        let channel_json = serde_json::to_string(channel)
            .map_err(|e| BrokerError::Internal(format!("cannot encode the channel name: {e}")))?;
        let publish_command = if self.link.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let (tail_bytes, once) = match publish {
            Some((tail, once)) => (tail.as_bytes(), once),
            None => (&b""[..], None),
        };
        let mut invocation = self.publish_script.key(self.meta_key(channel));
        invocation
            .key(self.history_key(channel))
            .arg(channel_json)
            .arg(tail_bytes)
            .arg(new_epoch(None))
            .arg(self.options.history_size)
            .arg(self.options.ttl.as_secs().max(1))
            .arg(self.live_channel(channel))
            .arg(publish_command);
        match once {
            Some(once) => invocation
                .key(self.once_key(channel, &once.key))
                .arg(once.window.as_secs().max(1)),
            None => invocation.arg(""),
        };
        invocation
            .arg(if publish.is_some() {
                "publish"
            } else {
                "check"
            })
            .arg(guards.len());
        for guard in guards {
            add_guard(&mut invocation, guard);
        }
        let (epoch, id, mut rest) = self.call(&invocation, "publish", channel).await?;
        let kind = rest.next().and_then(value_u64);
        let value = rest.next().and_then(value_u64);
        Ok(match (kind, publish) {
            (None, Some((tail, _))) => Reply::Published(Publication::New(Published {
                channel: channel.into(),
                epoch,
                id,
                payload: assemble(channel, id, epoch, tail),
            })),
            (Some(1), Some(_)) => Reply::Published(Publication::Repeat(Position { epoch, id })),
            (Some(2), _) => Reply::Stopped(Stopped::Banned {
                until: value.filter(|&until| until != 0),
            }),
            (Some(3), _) => Reply::Stopped(Stopped::RateLimited {
                wait: Duration::from_millis(value.unwrap_or(0)),
            }),
            (Some(4), None) => Reply::Passed,
            _ => {
                return Err(BrokerError::Internal(format!(
                    "unexpected reply from the publish script for {channel}"
                )))
            }
        })
    }

    /// Runs the read script: epoch, head and up to `count` entries below `before`.
    async fn read(&self, channel: &str, count: usize, before: u64) -> Result<Read, BrokerError> {
        self.read_after(channel, count, before, None).await
    }

    /// [`Self::read`] by a reader that already handed on `seen`: if the channel's last id is
    /// now below it in the same epoch, Redis lost acknowledged messages (a failover to a
    /// replica that lagged) and the script moves the channel to a new epoch.
    async fn read_after(
        &self,
        channel: &str,
        count: usize,
        before: u64,
        seen: Option<Position>,
    ) -> Result<Read, BrokerError> {
        let mut invocation = self.read_script.key(self.meta_key(channel));
        let seen = seen.unwrap_or(Position { epoch: 0, id: 0 });
        invocation
            .key(self.history_key(channel))
            .arg(new_epoch(None))
            .arg(self.options.ttl.as_secs().max(1))
            .arg(count)
            .arg(before)
            .arg(seen.epoch)
            .arg(seen.id);
        let (epoch, head, items) = self.call(&invocation, "read", channel).await?;
        let entries = items
            .filter_map(|v| match v {
                Value::BulkString(bytes) => RawEntry::parse(bytes),
                _ => None,
            })
            .filter(|e| e.epoch == epoch)
            .collect();
        Ok(Read {
            epoch,
            head,
            entries,
        })
    }

    /// Hands a live message on, or finds out that messages are missing before it.
    async fn on_live(&self, channel: &str, entry: RawEntry) {
        let missing = {
            let mut map = self.lock();
            let Some(ch) = map.get_mut(channel) else {
                return; // No longer wanted.
            };
            let follows = match ch.last {
                Some(last) if last.epoch == entry.epoch && entry.id <= last.id => return,
                Some(last) if last.epoch == entry.epoch => entry.id == last.id + 1,
                Some(_) => entry.id == 1,
                None => true,
            };
            if follows {
                ch.hand_on(&entry);
                return;
            }
            if ch.stale {
                // A catch-up is owed and will read this message from the history.
                return;
            }
            true
        };
        if missing && self.catch_up(channel).await {
            // Normally the history held it; without history it comes now, after the gap.
            let mut map = self.lock();
            if let Some(ch) = map.get_mut(channel) {
                let behind = ch
                    .last
                    .is_none_or(|l| l.epoch != entry.epoch || l.id < entry.id);
                if behind {
                    warn!(
                        channel,
                        epoch = entry.epoch,
                        id = entry.id,
                        "messages before this one are gone from the history; subscribers miss them"
                    );
                    ch.hand_on(&entry);
                }
            }
        }
    }

    /// Reads the history and hands on everything after the channel's last position.
    /// Returns false when the history could not be read (the channel is left stale, for
    /// [`repair`] to try again).
    async fn catch_up(&self, channel: &str) -> bool {
        let Some(seen) = self.lock().get(channel).and_then(|ch| ch.last) else {
            return true;
        };
        let read = match self
            .read_after(channel, self.options.history_size, 0, Some(seen))
            .await
        {
            Ok(read) => read,
            Err(e) => {
                warn!(
                    channel,
                    "cannot read the history to catch up: {e}; will retry"
                );
                if let Some(ch) = self.lock().get_mut(channel) {
                    ch.stale = true;
                }
                self.needs_repair.notify_one();
                return false;
            }
        };
        let mut map = self.lock();
        let Some(ch) = map.get_mut(channel) else {
            return true;
        };
        ch.stale = false;
        let Some(last) = ch.last else {
            return true;
        };
        let after = if read.epoch == last.epoch {
            last.id
        } else {
            info!(
                channel,
                old_epoch = last.epoch,
                epoch = read.epoch,
                "the channel's history was lost; it starts a new epoch"
            );
            ch.deliver(Event::EpochReset {
                channel: ch.name.clone(),
                epoch: read.epoch,
            });
            ch.last = Some(Position {
                epoch: read.epoch,
                id: 0,
            });
            0
        };
        let missing: Vec<&RawEntry> = read.entries.iter().rev().filter(|e| e.id > after).collect();
        if let Some(first) = missing.first() {
            if first.id > after + 1 {
                warn!(
                    channel,
                    from = after + 1,
                    to = first.id - 1,
                    "messages missed while disconnected are no longer in the history"
                );
            }
        } else if read.head > after {
            warn!(
                channel,
                from = after + 1,
                to = read.head,
                "messages missed while disconnected are no longer in the history"
            );
        }
        let count = missing.len();
        for entry in missing {
            ch.hand_on(entry);
        }
        if count > 0 {
            debug!(channel, count, "caught up from the history");
        }
        true
    }

    /// After a lost pub/sub connection every channel may have missed messages, and its
    /// subscription must be issued again.
    fn mark_all_lost(&self) {
        for ch in self.lock().values_mut() {
            ch.stale = ch.last.is_some();
            ch.subscribed = false;
        }
        self.needs_repair.notify_one();
    }

    /// Redis ended the subscription of `channel` by itself (in a cluster: its slot moved to
    /// another node). Still wanted, it is subscribed again.
    fn subscription_ended(&self, channel: &str) {
        let mut map = self.lock();
        let Some(ch) = map.get_mut(channel) else {
            return; // Our own unsubscribe.
        };
        if ch.subscribed {
            info!(
                channel,
                "Redis ended the channel's subscription (its slot moved?); subscribing again"
            );
            ch.subscribed = false;
            ch.stale = ch.last.is_some();
            self.needs_repair.notify_one();
        }
    }

    /// The wanted channels whose subscription is not confirmed, and those owed a
    /// catch-up.
    fn needing_repair(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let map = self.lock();
        let wanted = || map.values().filter(|ch| !ch.subscribers.is_empty());
        let unsubscribed = wanted()
            .filter(|ch| !ch.subscribed)
            .map(|ch| ch.name.clone())
            .collect();
        let stale = wanted()
            .filter(|ch| ch.subscribed && ch.stale)
            .map(|ch| ch.name.clone())
            .collect();
        (unsubscribed, stale)
    }

    /// Issues the subscription of `channel` if it is wanted and not confirmed; the
    /// confirmation's push catches the channel up. Returns false when Redis refused or did
    /// not answer.
    async fn ensure_subscribed(&self, channel: &str) -> bool {
        let _ordered = self.op_lock(channel).lock().await;
        let needed = self
            .lock()
            .get(channel)
            .is_some_and(|ch| !ch.subscribed && !ch.subscribers.is_empty());
        if !needed {
            return true;
        }
        match self.subscribe_in_redis(channel).await {
            Ok(()) => true,
            Err(e) => {
                debug!(channel, "cannot subscribe again yet: {e}");
                false
            }
        }
    }

    /// Issues the channel's subscription and marks it confirmed. The caller holds the
    /// channel's op lock.
    async fn subscribe_in_redis(&self, channel: &str) -> Result<(), RedisError> {
        let mut subscriptions = self.link.subscriptions();
        let live = self.live_channel(channel);
        self.link.bounded(subscriptions.subscribe(&live)).await?;
        if let Some(ch) = self.lock().get_mut(channel) {
            ch.subscribed = true;
        }
        Ok(())
    }

    /// Removes `subscriber` from `channel`; returns whether the channel is now unwanted and
    /// was subscribed in Redis.
    fn remove_subscriber(&self, channel: &str, subscriber: SubscriberId) -> bool {
        let mut map = self.lock();
        let Some(ch) = map.get_mut(channel) else {
            return false;
        };
        ch.subscribers.retain(|s| s.id() != subscriber);
        if !ch.subscribers.is_empty() {
            return false;
        }
        map.remove(channel).is_some_and(|ch| ch.subscribed)
    }
}

impl LocalChannel {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            subscribers: Vec::new(),
            last: None,
            subscribed: false,
            stale: false,
        }
    }

    /// Delivers a message to every subscriber and moves the position past it.
    fn hand_on(&mut self, entry: &RawEntry) {
        self.last = Some(Position {
            epoch: entry.epoch,
            id: entry.id,
        });
        self.deliver(Event::Message(Published {
            channel: self.name.clone(),
            epoch: entry.epoch,
            id: entry.id,
            payload: entry.payload.clone(),
        }));
    }

    fn deliver(&mut self, event: Event) {
        let channel = &self.name;
        self.subscribers.retain(|s| match s.deliver(event.clone()) {
            Delivery::Queued => true,
            Delivery::Overflowed => {
                warn!(
                    %channel,
                    subscriber = s.id(),
                    "subscriber queue is full; dropping the subscriber"
                );
                false
            }
            Delivery::Gone => false,
        });
    }
}

/// Hands on pub/sub pushes in arrival order, and catches channels up when the connection
/// comes back.
async fn run_pushes(
    broker: Weak<RedisBroker>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    shutdown: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = shutdown.cancelled() => return,
            push = pushes.recv() => push,
        };
        let Some(push) = push else { return };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(live)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    continue;
                };
                let Ok(live) = std::str::from_utf8(&live) else {
                    continue;
                };
                let Some(channel) = broker.channel_of_live(live) else {
                    continue;
                };
                match RawEntry::parse(payload) {
                    Some(entry) => broker.on_live(channel, entry).await,
                    None => warn!(channel, "ignoring a malformed live message"),
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                // Also sent when the connection re-subscribes after coming back.
                let channel = match push.data.first() {
                    Some(Value::BulkString(live)) => std::str::from_utf8(live)
                        .ok()
                        .and_then(|l| broker.channel_of_live(l))
                        .map(str::to_owned),
                    _ => None,
                };
                if let Some(channel) = channel {
                    broker.catch_up(&channel).await;
                }
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(live)) = push.data.first() {
                    if let Some(channel) = std::str::from_utf8(live)
                        .ok()
                        .and_then(|l| broker.channel_of_live(l))
                    {
                        broker.subscription_ended(channel);
                    }
                }
            }
            PushKind::Disconnection => {
                warn!(
                    redis = broker.link.address(),
                    "lost the Redis pub/sub connection; subscribing again, then catching up from history"
                );
                broker.pubsub_disconnects.fetch_add(1, Ordering::Relaxed);
                broker.mark_all_lost();
            }
            _ => {}
        }
    }
}

/// Issues lost subscriptions again and retries failed catch-ups, every [`RETRY_REPAIR`]
/// until each succeeds. A confirmed subscription is caught up by its confirmation's push.
/// Runs beside the pushes: positions are checked under the channel map's lock, so a
/// catch-up here and live messages there never hand on the same message twice.
async fn repair(broker: Weak<RedisBroker>, shutdown: CancellationToken) {
    use futures_util::StreamExt as _;
    let mut pending = false;
    loop {
        {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let notified = broker.needs_repair.notified();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(RETRY_REPAIR), if pending => {}
            }
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let (unsubscribed, stale) = broker.needing_repair();
        let total = unsubscribed.len();
        let subscribed = futures_util::stream::iter(unsubscribed)
            .map(|channel| {
                let broker = &broker;
                async move { broker.ensure_subscribed(&channel).await }
            })
            .buffer_unordered(REPAIR_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if total > 0 {
            if subscribed < total {
                debug!(
                    subscribed,
                    total, "some subscriptions are not restored yet; retrying"
                );
            } else {
                info!(total, "subscriptions restored");
            }
        }
        let owed = stale.len();
        let caught_up = futures_util::stream::iter(stale)
            .map(|channel| {
                let broker = broker.clone();
                async move { broker.catch_up(&channel).await }
            })
            .buffer_unordered(REPAIR_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        // One more round after new subscriptions: a channel whose confirmation did not catch
        // it up (it failed, or no confirmation came) is caught up then.
        pending = subscribed < total || caught_up < owed || subscribed > 0;
    }
}

fn value_u64(value: Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, channel: &str, tail: &Tail) -> Result<Published, BrokerError> {
        match self.run_publish(channel, tail, None).await? {
            Publication::New(published) => Ok(published),
            Publication::Repeat(_) => Err(BrokerError::Internal(format!(
                "the publish script took a publish without a key for a repeat in {channel}"
            ))),
        }
    }

    async fn publish_once(
        &self,
        channel: &str,
        tail: &Tail,
        once: &Once,
    ) -> Result<Publication, BrokerError> {
        self.run_publish(channel, tail, Some(once)).await
    }

    fn applies_guards(&self) -> bool {
        true
    }

    async fn publish_guarded(
        &self,
        channel: &str,
        tail: &Tail,
        once: Option<&Once>,
        guards: &[Guard],
    ) -> Result<Guarded, BrokerError> {
        match self
            .run_guarded(channel, Some((tail, once)), guards)
            .await?
        {
            Reply::Published(publication) => Ok(Guarded::Passed(publication)),
            Reply::Stopped(stopped) => Ok(Guarded::Stopped(stopped)),
            Reply::Passed => Err(BrokerError::Internal(format!(
                "the publish script only checked a publish in {channel}"
            ))),
        }
    }

    async fn check_guards(
        &self,
        channel: &str,
        guards: &[Guard],
    ) -> Result<Option<Stopped>, BrokerError> {
        match self.run_guarded(channel, None, guards).await? {
            Reply::Passed => Ok(None),
            Reply::Stopped(stopped) => Ok(Some(stopped)),
            Reply::Published(_) => Err(BrokerError::Internal(format!(
                "the publish script published a message it was to check in {channel}"
            ))),
        }
    }

    async fn subscribe(
        &self,
        channel: &str,
        want: u32,
        since: Option<Position>,
        subscriber: &Subscriber,
    ) -> Result<Backlog, BrokerError> {
        {
            let _ordered = self.op_lock(channel).lock().await;
            let needs_redis = {
                let mut map = self.lock();
                let ch = map
                    .entry(channel.into())
                    .or_insert_with(|| LocalChannel::new(channel));
                if !ch.subscribers.iter().any(|s| s.id() == subscriber.id()) {
                    ch.subscribers.push(subscriber.clone());
                }
                !ch.subscribed
            };
            if needs_redis {
                if let Err(e) = self.subscribe_in_redis(channel).await {
                    self.remove_subscriber(channel, subscriber.id());
                    return Err(Self::unavailable(e));
                }
            }
        }
        // A fresh subscription needs only the newest `want`; a resume may need all of it.
        let count = match since {
            None => usize::try_from(want)
                .unwrap_or(usize::MAX)
                .min(self.options.history_size),
            Some(_) => self.options.history_size,
        };
        let read = match self.read(channel, count, 0).await {
            Ok(read) => read,
            Err(e) => {
                self.unsubscribe(channel, subscriber.id()).await;
                return Err(e);
            }
        };
        if let Some(ch) = self.lock().get_mut(channel) {
            if ch.last.is_none() {
                ch.last = Some(Position {
                    epoch: read.epoch,
                    id: read.head,
                });
            }
        }
        let (kind, count) = plan_backlog(read.epoch, read.head, read.entries.len(), want, since);
        let messages = read
            .entries
            .into_iter()
            .take(count)
            .rev()
            .map(|e| Entry {
                id: e.id,
                payload: e.payload.to_vec(),
            })
            .collect();
        Ok(Backlog {
            epoch: read.epoch,
            head: read.head,
            kind,
            messages,
        })
    }

    async fn unsubscribe(&self, channel: &str, subscriber: SubscriberId) {
        let _ordered = self.op_lock(channel).lock().await;
        if self.remove_subscriber(channel, subscriber) {
            let mut subscriptions = self.link.subscriptions();
            let live = self.live_channel(channel);
            if let Err(e) = self.link.bounded(subscriptions.unsubscribe(&live)).await {
                // Messages that still arrive for it are ignored.
                debug!(channel, "cannot unsubscribe in Redis: {e}");
            }
        }
    }

    async fn history(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let read = self.read(channel, limit, before.unwrap_or(0)).await?;
        Ok(History::page(
            read.epoch,
            read.head,
            read.entries.iter().map(|e| (e.id, &e.payload[..])),
            before,
            limit,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_refuse_garbage() {
        let e = RawEntry::parse(b"12:3:{\"a\":\"x:y\"}".to_vec()).unwrap();
        assert_eq!((e.epoch, e.id), (12, 3));
        assert_eq!(&e.payload[..], b"{\"a\":\"x:y\"}");
        for bad in [&b""[..], b"12", b"12:3", b"x:3:{}", b"12:-1:{}", b":3:{}"] {
            assert_eq!(RawEntry::parse(bad.to_vec()), None, "{bad:?}");
        }
    }
}
