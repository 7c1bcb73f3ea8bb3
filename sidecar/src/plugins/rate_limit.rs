//! The `rate_limit` plugin: at most `rate_limit.messages` messages per
//! `rate_limit.per_seconds` seconds per user per channel.
//!
//! The window slides: a message is allowed when fewer than `messages` were counted in the
//! `per_seconds` before it, so no burst of twice the limit fits across a window edge, as
//! it would with fixed windows. Only published messages count: a refused message (here or
//! by any plugin after this one, or by the broker) and a withheld one do not; joins and
//! leaves are not messages. The refusal is `rate_limited` with `retryAfter` (WebSocket) or
//! `Retry-After` (HTTP): the seconds, rounded up, until the oldest counted message leaves
//! the window. Retries of one message with its idempotency key
//! ([`crate::host::publish::idempotency`]) count once: an attempt whose outcome was unknown may
//! have been counted already.
//!
//! How: the check reserves a slot, which counts at once, so that concurrent publishes (from
//! many hosts) cannot pass the limit together; the slot is a [`Hold`] on the draft, given
//! back when the message turns out not to be published and kept when it is. Nothing
//! needs to happen on success, so a published message costs one Redis call as before. If
//! the slot is never settled (the sidecar dies, the publisher's request is dropped, Redis
//! cannot be reached to give it back), it stays counted and leaves the window like a
//! message: the limit can only be stricter for one window, never looser.
//!
//! The user is [`Identity::moderation_id`], or the token's `_public` text when it has none
//! (so such users are limited too, by what they show). Counting:
//!
//! * with Redis, across hosts: one script call per message ([`RATE_LIMIT_LUA`]) on a
//!   sorted set of the slots' times, `<prefix>:{<channel>}:rate:<user>` (on the channel's
//!   shard), which expires with the window; Redis's clock is the only one used. Giving a
//!   slot back is a `ZREM`; a message with an idempotency key also marks its slot counted
//!   once published ([`RATE_COMMIT_LUA`]). Redis unreachable: `unavailable`, within
//!   `redis.timeout_ms`;
//!
//!   With the Redis broker and a chain that lets it (see [`super`]), the check is instead a
//!   [`Guard`] of the publish script ([`crate::broker::redis`]): the same sorted set and
//!   members, checked and, once the message is published, counted in the same atomic
//!   call as the publish. Nothing is reserved, so nothing is given back: the set holds
//!   exactly the published messages (a keyed one as `key:<key>` at once), and a message
//!   refused by the broker, by a plugin or by this limit takes no place;
//! * with the memory broker, in this process: the slots' times per channel and user,
//!   swept every window so idle users take no memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Draft, Hold, Plugin, PluginSetupError, Setup};
use crate::broker::Guard;
use crate::cluster::redis::RedisLink;
use crate::jwt::Identity;
use crate::publish_error::{ErrorCode, PublishError};

/// Reserves a slot or refuses the message; see its header.
pub const RATE_LIMIT_LUA: &str = include_str!("rate_limit.lua");

/// Marks the slot of a published message with an idempotency key counted; see its header.
pub const RATE_COMMIT_LUA: &str = include_str!("rate_commit.lua");

/// Limits how fast each user publishes in each channel.
pub struct RateLimit {
    /// Messages allowed per window.
    messages: u32,
    /// The window.
    window: Duration,
    /// Where the counts are; shared with the slots, which settle there.
    engine: Arc<Engine>,
}

enum Engine {
    Memory(Arc<Windows>),
    Redis {
        link: RedisLink,
        /// [`RATE_LIMIT_LUA`], loaded once per node and then called by hash.
        reserve: Script,
        /// [`RATE_COMMIT_LUA`], likewise.
        commit: Script,
    },
}

/// The in-process counts: channel → user → the slots (their time and member, as in
/// Redis), oldest first.
#[derive(Debug, Default)]
struct Windows {
    channels: Mutex<HashMap<String, HashMap<String, VecDeque<Slot>>>>,
    /// Numbers the members of the slots of messages without a key.
    next: AtomicU64,
}

/// A slot in a window: when it was taken, and its member (see [`member`]).
type Slot = (Instant, String);

/// What a reservation found.
#[derive(Debug, PartialEq, Eq)]
enum Reserved {
    /// A new slot, under this member.
    New(String),
    /// A retry of the message (same key) holds a slot it has not settled yet.
    InFlight,
    /// The message (same key) was published and counted.
    Counted,
}

/// Why a message gets no slot.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The window is full; a slot frees after this long.
    Full(Duration),
    /// Redis cannot be reached.
    Unavailable(String),
}

/// The member of a slot of a message with a key, while it is not known to be published.
fn reserved_member(key: &str) -> String {
    format!("p:key:{key}")
}

/// The member of the slot of a published message with a key: its retries find it and pass.
fn counted_member(key: &str) -> String {
    format!("key:{key}")
}

impl RateLimit {
    /// The plugin as `[rate_limit]` sets it: through Redis when `[redis]` is configured,
    /// else in this process (with a sweeper task that stops at shutdown).
    pub fn from_setup(setup: &Setup<'_>) -> Result<Self, PluginSetupError> {
        let config = &setup.config.rate_limit;
        if config.messages == 0 || config.per_seconds == 0 {
            return Err(PluginSetupError::Plugin {
                name: "rate_limit",
                message: "rate_limit.messages and rate_limit.per_seconds must be at least 1".into(),
            });
        }
        let window = Duration::from_secs(config.per_seconds);
        Ok(match &setup.redis {
            Some(link) => Self::redis(config.messages, window, link.clone()),
            None => {
                let limit = Self::memory(config.messages, window);
                if let Engine::Memory(windows) = &*limit.engine {
                    setup.tracker.spawn(sweep(
                        Arc::downgrade(windows),
                        window,
                        setup.shutdown.clone(),
                    ));
                }
                limit
            }
        })
    }

    /// Counting in this process (no sweeper: see [`RateLimit::from_setup`]).
    pub fn memory(messages: u32, window: Duration) -> Self {
        Self {
            messages,
            window,
            engine: Arc::new(Engine::Memory(Arc::default())),
        }
    }

    /// Counting in Redis, shared by every host.
    pub fn redis(messages: u32, window: Duration, link: RedisLink) -> Self {
        Self {
            messages,
            window,
            engine: Arc::new(Engine::Redis {
                link,
                reserve: Script::new(RATE_LIMIT_LUA),
                commit: Script::new(RATE_COMMIT_LUA),
            }),
        }
    }

    /// Reserves a slot for a message of `user` in `channel` (or finds the one of its key);
    /// `Err` with the wait when it is one too many.
    async fn reserve(
        &self,
        channel: &str,
        user: &str,
        key: Option<&str>,
    ) -> Result<Reserved, Refusal> {
        match &*self.engine {
            Engine::Memory(windows) => windows.reserve(
                channel,
                user,
                key,
                self.messages,
                self.window,
                Instant::now(),
            ),
            Engine::Redis { link, reserve, .. } => {
                let member = match key {
                    Some(key) => reserved_member(key),
                    None => format!("{:016x}", rand::random::<u64>()),
                };
                let mut invocation = reserve.key(counts_key(link, channel, user));
                invocation
                    .arg(self.messages)
                    .arg(millis(self.window))
                    .arg(&member);
                let mut conn = link.commands();
                let (status, wait_ms): (i64, i64) = link
                    .bounded(invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|e| Refusal::Unavailable(e.to_string()))?;
                match status {
                    1 => Ok(Reserved::New(member)),
                    2 => Ok(Reserved::InFlight),
                    3 => Ok(Reserved::Counted),
                    _ => Err(Refusal::Full(Duration::from_millis(
                        u64::try_from(wait_ms).unwrap_or(0),
                    ))),
                }
            }
        }
    }
}

/// `<prefix>:{<channel>}:rate:<user>`.
fn counts_key(link: &RedisLink, channel: &str, user: &str) -> String {
    format!("{}:{{{channel}}}:rate:{user}", link.key_prefix())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A message's slot until it is known whether the message was published.
struct Taken {
    /// Where the slot is.
    engine: Arc<Engine>,
    /// For a slot made counted in place ([`RATE_COMMIT_LUA`]).
    window: Duration,
    channel: String,
    user: String,
    /// The member to remove if the message is not published: the slot this attempt
    /// reserved (`None` when a retry of the message holds it; that one gives it back).
    give_back: Option<String>,
    /// The message's key, if it has one: once published, its slot becomes counted so that
    /// a later refused retry does not give it back.
    key: Option<String>,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("channel", &self.channel)
            .field("user", &self.user)
            .field("give_back", &self.give_back)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Hold for Taken {
    async fn settle(self: Box<Self>, published: bool) {
        match &*self.engine {
            Engine::Memory(windows) => {
                windows.settle(&self, published, Instant::now());
            }
            Engine::Redis { link, commit, .. } => {
                let counts = counts_key(link, &self.channel, &self.user);
                let done = match (published, &self.key, &self.give_back) {
                    (true, Some(key), _) => {
                        let mut invocation = commit.key(counts);
                        invocation
                            .arg(reserved_member(key))
                            .arg(counted_member(key))
                            .arg(millis(self.window));
                        let mut conn = link.commands();
                        link.bounded(invocation.invoke_async::<i64>(&mut conn))
                            .await
                            .map(drop)
                    }
                    (false, _, Some(member)) => link
                        .run::<i64>(redis::cmd("ZREM").arg(counts).arg(member).clone())
                        .await
                        .map(drop),
                    _ => Ok(()),
                };
                if let Err(e) = done {
                    // The slot stays counted until it leaves the window.
                    warn!(
                        channel = self.channel,
                        published, "cannot settle a rate limit slot: {e}"
                    );
                }
            }
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        let user = user_of(draft.identity);
        let give_back = match self.reserve(draft.channel, &user, draft.key).await {
            Ok(Reserved::New(member)) => Some(member),
            Ok(Reserved::InFlight) => None,
            Ok(Reserved::Counted) => return Ok(()),
            Err(Refusal::Full(wait)) => return Err(refusal(self.messages, self.window, wait)),
            Err(Refusal::Unavailable(e)) => {
                return Err(PublishError::new(
                    ErrorCode::Unavailable,
                    format!("cannot check the rate limit right now: {e}"),
                ))
            }
        };
        let key = draft.key.map(str::to_owned);
        if give_back.is_some() || key.is_some() {
            draft.hold(Box::new(Taken {
                engine: self.engine.clone(),
                window: self.window,
                channel: draft.channel.to_owned(),
                user,
                give_back,
                key,
            }));
        }
        Ok(())
    }

    fn guardable(&self) -> bool {
        matches!(*self.engine, Engine::Redis { .. })
    }

    fn guard(&self, draft: &Draft<'_>) -> Option<Guard> {
        let Engine::Redis { link, .. } = &*self.engine else {
            return None;
        };
        let user = user_of(draft.identity);
        Some(Guard::Rate {
            counts: counts_key(link, draft.channel, &user),
            messages: self.messages,
            window: self.window,
            member: match draft.key {
                Some(key) => counted_member(key),
                None => format!("{:016x}", rand::random::<u64>()),
            },
            key: draft.key.map(str::to_owned),
        })
    }
}

/// The refusal of a message over a limit of `messages` per `window`, a place freeing
/// after `wait`: `rate_limited`, with the seconds to wait.
pub fn refusal(messages: u32, window: Duration, wait: Duration) -> PublishError {
    let seconds = retry_after_seconds(wait);
    PublishError::new(
        ErrorCode::RateLimited,
        format!(
            "at most {messages} messages per {} s in this channel; try again in {seconds} s",
            window.as_secs()
        ),
    )
    .retry_after(seconds)
}

/// Who is counted: the moderation id, or the `_public` text without one.
fn user_of(identity: &Identity) -> String {
    identity
        .moderation_id()
        .unwrap_or_else(|| identity.user.to_string())
}

/// Whole seconds, rounded up, at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000).max(1)
}

impl Windows {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, VecDeque<Slot>>>> {
        // No critical section here panics; the counts stay usable if one ever did.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// As [`RATE_LIMIT_LUA`], in this process.
    fn reserve(
        &self,
        channel: &str,
        user: &str,
        key: Option<&str>,
        messages: u32,
        window: Duration,
        now: Instant,
    ) -> Result<Reserved, Refusal> {
        let mut channels = self.lock();
        let slots = channels
            .entry(channel.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        while slots
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
        {
            slots.pop_front();
        }
        let member = match key {
            Some(key) => {
                let holds = |member: &str| slots.iter().any(|(_, m)| m == member);
                if holds(&counted_member(key)) {
                    return Ok(Reserved::Counted);
                }
                let member = reserved_member(key);
                if holds(&member) {
                    return Ok(Reserved::InFlight);
                }
                member
            }
            None => self.next.fetch_add(1, Ordering::Relaxed).to_string(),
        };
        if slots.len() < messages as usize {
            insert(slots, now, member.clone());
            return Ok(Reserved::New(member));
        }
        let oldest = slots.front().map_or(now, |(t, _)| *t);
        Err(Refusal::Full(
            (oldest + window).saturating_duration_since(now),
        ))
    }

    /// Gives `taken` back, or (published, with a key) makes it counted, as
    /// [`RATE_COMMIT_LUA`] does.
    fn settle(&self, taken: &Taken, published: bool, now: Instant) {
        let mut channels = self.lock();
        // Made again if swept meanwhile: a published message with a key is counted.
        let slots = channels
            .entry(taken.channel.clone())
            .or_default()
            .entry(taken.user.clone())
            .or_default();
        match (published, &taken.key, &taken.give_back) {
            (true, Some(key), _) => {
                let reserved = reserved_member(key);
                let counted = counted_member(key);
                if let Some(slot) = slots.iter_mut().find(|(_, m)| *m == reserved) {
                    slot.1 = counted;
                } else if !slots.iter().any(|(_, m)| *m == counted) {
                    insert(slots, now, counted);
                }
            }
            (false, _, Some(member)) => slots.retain(|(_, m)| m != member),
            _ => {}
        }
    }

    /// Forgets the users whose last slot has left the window.
    fn sweep(&self, window: Duration, now: Instant) {
        self.lock().retain(|_, users| {
            users.retain(|_, slots| {
                slots
                    .back()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) < window)
            });
            !users.is_empty()
        });
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }
}

/// Adds a slot, keeping the window oldest first.
fn insert(slots: &mut VecDeque<Slot>, at: Instant, member: String) {
    let at_or_after = slots.partition_point(|(t, _)| *t <= at);
    slots.insert(at_or_after, (at, member));
}

/// Sweeps the in-process counts every window until `shutdown` (or the plugin is gone).
async fn sweep(windows: std::sync::Weak<Windows>, window: Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(window);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(windows) = windows.upgrade() else {
            return;
        };
        windows.sweep(window, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::test_support::identity_of as identity;

    const WINDOW: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_slides_and_refusals_do_not_count() {
        let w = Windows::default();
        let t0 = Instant::now();
        let count = |at: Duration| w.reserve("room", "ann", None, 3, WINDOW, t0 + at).map(drop);
        assert_eq!(count(ms(0)), Ok(()));
        assert_eq!(count(ms(4_000)), Ok(()));
        assert_eq!(count(ms(9_000)), Ok(()));
        // Full until the first leaves the window at 10 s.
        assert_eq!(count(ms(9_500)), Err(Refusal::Full(ms(500))));
        assert_eq!(count(ms(9_999)), Err(Refusal::Full(ms(1))));
        assert_eq!(count(ms(10_000)), Ok(()));
        // Fixed windows would allow 3 more from 10 s on; a sliding one only the slots the
        // 4 s and 9 s messages free.
        assert_eq!(count(ms(10_001)), Err(Refusal::Full(ms(3_999))));
        assert_eq!(count(ms(14_000)), Ok(()));
        assert_eq!(count(ms(14_001)), Err(Refusal::Full(ms(4_999))));
        // Other users and other channels have their own counts.
        assert_eq!(
            w.reserve("room", "bo", None, 3, WINDOW, t0 + ms(14_001))
                .map(drop),
            Ok(())
        );
        assert_eq!(
            w.reserve("hall", "ann", None, 3, WINDOW, t0 + ms(14_001))
                .map(drop),
            Ok(())
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_seconds(ms(0)), 1);
        assert_eq!(retry_after_seconds(ms(1)), 1);
        assert_eq!(retry_after_seconds(ms(1_000)), 1);
        assert_eq!(retry_after_seconds(ms(1_001)), 2);
        assert_eq!(retry_after_seconds(ms(9_999)), 10);
    }

    #[test]
    fn idle_users_are_swept() {
        let w = Windows::default();
        let t0 = Instant::now();
        w.reserve("room", "ann", None, 3, WINDOW, t0).unwrap();
        w.reserve("room", "bo", None, 3, WINDOW, t0 + ms(5_000))
            .unwrap();
        w.reserve("hall", "cy", None, 3, WINDOW, t0 + ms(1_000))
            .unwrap();
        w.sweep(WINDOW, t0 + ms(9_999));
        assert_eq!(w.users(), 3);
        w.sweep(WINDOW, t0 + ms(11_000));
        assert_eq!(w.users(), 1);
        assert!(!w.lock().contains_key("hall"));
        w.sweep(WINDOW, t0 + ms(15_000));
        assert_eq!(w.users(), 0);
        assert!(w.lock().is_empty());
    }

    async fn publish(limit: &RateLimit, who: &Identity, channel: &str) -> Result<(), PublishError> {
        let mut draft = Draft::new(who, channel, Body::Text("hi".into()));
        limit.check(&mut draft).await
    }

    #[tokio::test]
    async fn the_refusal_says_how_long_to_wait() {
        let limit = RateLimit::memory(2, Duration::from_secs(5));
        let ann = identity(Some("ann"), "{}");
        publish(&limit, &ann, "room").await.unwrap();
        publish(&limit, &ann, "room").await.unwrap();
        let err = publish(&limit, &ann, "room").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(err.retry_after, Some(5));
        assert_eq!(
            err.message,
            "at most 2 messages per 5 s in this channel; try again in 5 s"
        );
        // Users without an id are counted by their `_public` text.
        let red = identity(None, r#"{"color":"red"}"#);
        let blue = identity(None, r#"{"color":"blue"}"#);
        publish(&limit, &red, "room").await.unwrap();
        publish(&limit, &red, "room").await.unwrap();
        assert!(publish(&limit, &red, "room").await.is_err());
        publish(&limit, &blue, "room").await.unwrap();
    }

    #[tokio::test]
    async fn redis_counts_are_shared_and_slide() {
        let redis = crate::cluster::registry::tests::RedisServer::start();
        let window = Duration::from_millis(1_000);
        let (a_link, b_link) = (redis.link().await, redis.link().await);
        let host_a = RateLimit::redis(3, window, a_link.clone());
        let host_b = RateLimit::redis(3, window, b_link);
        let ann = identity(Some("ann"), "{}");
        let started = Instant::now();
        publish(&host_a, &ann, "room").await.unwrap();
        publish(&host_a, &ann, "room").await.unwrap();
        publish(&host_b, &ann, "room").await.unwrap();
        let err = publish(&host_a, &ann, "room").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(err.retry_after, Some(1));
        assert!(publish(&host_b, &ann, "room").await.is_err());
        // Refusals were not counted: the key holds the 3 counted messages, and expires.
        let held: i64 = a_link
            .run(redis::cmd("ZCARD").arg("chatup:{room}:rate:ann").clone())
            .await
            .unwrap();
        assert_eq!(held, 3);
        let ttl: i64 = a_link
            .run(redis::cmd("PTTL").arg("chatup:{room}:rate:ann").clone())
            .await
            .unwrap();
        assert!((1..=1_000).contains(&ttl), "{ttl}");
        assert!(publish(&host_a, &identity(Some("bo"), "{}"), "room")
            .await
            .is_ok());

        // Once the first messages are a window old, publishing works again.
        let deadline = started + Duration::from_secs(5);
        loop {
            match publish(&host_b, &ann, "room").await {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited);
                    assert!(Instant::now() < deadline, "still refused: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(started.elapsed() >= ms(900), "{:?}", started.elapsed());

        drop(redis);
        let err = publish(&host_a, &ann, "room").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
    }
    async fn publish_keyed(
        limit: &RateLimit,
        who: &Identity,
        key: &str,
    ) -> Result<(), PublishError> {
        let mut draft = Draft::new(who, "room", Body::Text("hi".into())).with_key(Some(key));
        limit.check(&mut draft).await
    }

    /// Retries with one key count once; other keys and unkeyed messages count as usual.
    async fn retries_count_once(limit: &RateLimit) {
        let ann = identity(Some("ann"), "{}");
        for _ in 0..5 {
            publish_keyed(limit, &ann, "k1").await.unwrap();
        }
        publish_keyed(limit, &ann, "k2").await.unwrap();
        let err = publish_keyed(limit, &ann, "k3").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        // A counted message's retry still passes when the window is full.
        publish_keyed(limit, &ann, "k1").await.unwrap();
        assert!(publish(limit, &ann, "room").await.is_err());
    }

    #[tokio::test]
    async fn retries_of_a_keyed_message_count_once() {
        retries_count_once(&RateLimit::memory(2, Duration::from_secs(60))).await;
        let redis = crate::cluster::registry::tests::RedisServer::start();
        retries_count_once(&RateLimit::redis(
            2,
            Duration::from_secs(60),
            redis.link().await,
        ))
        .await;
    }
}

/// The limiter with the rest of a publish: later plugins, the broker.
#[cfg(test)]
mod published_tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::broker::{
        Backlog, Broker, BrokerError, History, Once, Publication, Published, Subscriber,
        SubscriberId,
    };
    use crate::host::publish::{Outcome, Publisher};
    use crate::message::Limits;
    use crate::message::{Body, Tail};
    use crate::plugins::Chain;
    use crate::test_support::{identity_of as identity, verifier};
    use chatup_wire::Position;

    /// A plugin after the limiter: refuses "reject", withholds "hide".
    struct Verdicts;

    #[async_trait]
    impl Plugin for Verdicts {
        fn name(&self) -> &'static str {
            "verdicts"
        }
        async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
            match &draft.body {
                Body::Text(t) if t == "reject" => {
                    Err(PublishError::new(ErrorCode::Rejected, "rejected"))
                }
                Body::Text(t) if t == "hide" => {
                    draft.broadcast = false;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }

    /// The memory broker, failing while `down`.
    struct Flaky {
        inner: Arc<MemoryBroker>,
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), BrokerError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(BrokerError::Unavailable("down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Broker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn publish(&self, channel: &str, tail: &Tail) -> Result<Published, BrokerError> {
            self.check()?;
            self.inner.publish(channel, tail).await
        }
        async fn publish_once(
            &self,
            channel: &str,
            tail: &Tail,
            once: &Once,
        ) -> Result<Publication, BrokerError> {
            self.check()?;
            self.inner.publish_once(channel, tail, once).await
        }
        async fn subscribe(
            &self,
            channel: &str,
            want: u32,
            since: Option<Position>,
            subscriber: &Subscriber,
        ) -> Result<Backlog, BrokerError> {
            self.inner.subscribe(channel, want, since, subscriber).await
        }
        async fn unsubscribe(&self, channel: &str, subscriber: SubscriberId) {
            self.inner.unsubscribe(channel, subscriber).await
        }
        async fn history(
            &self,
            channel: &str,
            before: Option<u64>,
            limit: usize,
        ) -> Result<History, BrokerError> {
            self.inner.history(channel, before, limit).await
        }
    }

    fn publisher(limit: RateLimit) -> (Publisher, Arc<Flaky>) {
        let broker = Arc::new(Flaky {
            inner: MemoryBroker::new(MemoryOptions {
                history_size: 10,
                ttl: Duration::from_secs(60),
            }),
            down: AtomicBool::new(false),
        });
        let publisher = Publisher::new(
            broker.clone(),
            Arc::new(verifier()),
            Limits {
                max_message_chars: 100,
                max_event_bytes: 100,
                idempotency_window: Duration::from_secs(300),
            },
            Chain::new(vec![Arc::new(limit), Arc::new(Verdicts)]),
        );
        (publisher, broker)
    }

    async fn send(p: &Publisher, text: &str, key: Option<&str>) -> Result<Outcome, ErrorCode> {
        p.publish_keyed(
            &identity(Some("ann"), "{}"),
            "room",
            Body::Text(text.into()),
            key,
        )
        .await
        .map_err(|e| e.code)
    }

    /// With a limit of 3: refused, withheld and broker-failed messages give their slot back.
    async fn only_published_messages_count(limit: RateLimit) {
        let (p, broker) = publisher(limit);
        for _ in 0..3 {
            assert_eq!(send(&p, "reject", None).await, Err(ErrorCode::Rejected));
        }
        for _ in 0..2 {
            assert_eq!(send(&p, "hide", None).await, Ok(Outcome::Withheld));
        }
        broker.down.store(true, Ordering::Relaxed);
        for _ in 0..2 {
            assert_eq!(send(&p, "hi", None).await, Err(ErrorCode::Unavailable));
        }
        broker.down.store(false, Ordering::Relaxed);
        for _ in 0..3 {
            assert!(matches!(
                send(&p, "hi", None).await,
                Ok(Outcome::Published(_))
            ));
        }
        assert_eq!(send(&p, "hi", None).await, Err(ErrorCode::RateLimited));
    }

    /// With a limit of 2: a keyed message counts once it is published, whatever becomes of
    /// its retries.
    async fn a_published_key_stays_counted(limit: RateLimit) {
        let (p, _) = publisher(limit);
        assert_eq!(
            send(&p, "reject", Some("k")).await,
            Err(ErrorCode::Rejected)
        );
        assert!(matches!(
            send(&p, "hi", Some("k")).await,
            Ok(Outcome::Published(_))
        ));
        // A refused retry does not give the published message's slot back…
        assert_eq!(
            send(&p, "reject", Some("k")).await,
            Err(ErrorCode::Rejected)
        );
        assert!(matches!(
            send(&p, "hi", None).await,
            Ok(Outcome::Published(_))
        ));
        assert_eq!(send(&p, "hi", None).await, Err(ErrorCode::RateLimited));
        // …and a retry still passes a full window, as a repeat.
        assert!(matches!(
            send(&p, "hi", Some("k")).await,
            Ok(Outcome::Repeat(_))
        ));
        assert_eq!(send(&p, "hi", None).await, Err(ErrorCode::RateLimited));
    }

    #[tokio::test]
    async fn in_memory_only_published_messages_count() {
        let window = Duration::from_secs(60);
        only_published_messages_count(RateLimit::memory(3, window)).await;
        a_published_key_stays_counted(RateLimit::memory(2, window)).await;
    }

    #[tokio::test]
    async fn through_redis_only_published_messages_count() {
        let redis = crate::cluster::registry::tests::RedisServer::start();
        let window = Duration::from_secs(60);
        let link = redis.link().await;
        only_published_messages_count(RateLimit::redis(3, window, link.clone())).await;
        // Given back slots leave nothing behind: the key holds the 3 published messages.
        let held: i64 = link
            .run(redis::cmd("ZCARD").arg("chatup:{room}:rate:ann").clone())
            .await
            .unwrap();
        assert_eq!(held, 3);
        let mut conn = link.commands();
        let _: () = link
            .bounded(redis::cmd("FLUSHALL").query_async(&mut conn))
            .await
            .unwrap();
        a_published_key_stays_counted(RateLimit::redis(2, window, link.clone())).await;
        let members: Vec<String> = link
            .run(
                redis::cmd("ZRANGE")
                    .arg("chatup:{room}:rate:ann")
                    .arg(0)
                    .arg(-1)
                    .clone(),
            )
            .await
            .unwrap();
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(members.iter().any(|m| m.starts_with("key:")), "{members:?}");
    }

    /// Slots reserved but never settled (the sidecar died) count until they leave the
    /// window; concurrent publishes never pass the limit.
    #[tokio::test]
    async fn unsettled_slots_count_and_lapse_with_the_window() {
        let redis = crate::cluster::registry::tests::RedisServer::start();
        let window = Duration::from_millis(500);
        let (a, b) = (redis.link().await, redis.link().await);
        let host_a = Arc::new(RateLimit::redis(3, window, a));
        let host_b = Arc::new(RateLimit::redis(3, window, b));
        let ann = identity(Some("ann"), "{}");
        let checks = (0..10).map(|i| {
            let limit = if i % 2 == 0 { &host_a } else { &host_b };
            let ann = &ann;
            async move {
                let mut draft = Draft::new(ann, "room", Body::Text("hi".into()));
                // The draft (and its slot) is dropped unsettled.
                limit.check(&mut draft).await
            }
        });
        let results = futures_util::future::join_all(checks).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        let started = Instant::now();
        loop {
            let mut draft = Draft::new(&ann, "room", Body::Text("hi".into()));
            match host_a.check(&mut draft).await {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited);
                    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
