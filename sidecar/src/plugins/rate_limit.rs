//! The `rate_limit` plugin: at most `rate_limit.messages` messages per
//! `rate_limit.per_seconds` seconds per user per channel.
//!
//! The window slides: a message is allowed when fewer than `messages` were counted in the
//! `per_seconds` before it, so no burst of twice the limit fits across a window edge, as
//! it would with fixed windows. A refused message is not counted; joins and leaves are not
//! messages. The refusal is `rate_limited` with `retryAfter` (WebSocket) or `Retry-After`
//! (HTTP): the seconds, rounded up, until the oldest counted message leaves the window.
//! Retries of one message with its idempotency key ([`crate::publish::idempotency`]) count
//! once: an attempt whose outcome was unknown may have been counted already.
//!
//! The user is [`Identity::moderation_id`], or the token's `_public` text when it has none
//! (so such users are limited too, by what they show). Counting:
//!
//! * with Redis, across hosts: one script call per message ([`RATE_LIMIT_LUA`]) on a
//!   sorted set of the counted messages' times, `<prefix>:{<channel>}:rate:<user>` (on
//!   the channel's shard), which expires with the window; Redis's clock is the only one
//!   used. Redis unreachable: `unavailable`, within `redis.timeout_ms`;
//! * with the memory broker, in this process: the counted times per channel and user,
//!   swept every window so idle users take no memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::{Draft, Plugin, PluginSetupError, Setup};
use crate::auth::Identity;
use crate::publish::{ErrorCode, PublishError};
use crate::redis::RedisLink;

/// Counts a message or refuses it; see its header.
pub const RATE_LIMIT_LUA: &str = include_str!("rate_limit.lua");

/// Limits how fast each user publishes in each channel.
pub struct RateLimit {
    /// Messages allowed per window.
    messages: u32,
    /// The window.
    window: Duration,
    /// Where the counts are.
    engine: Engine,
}

enum Engine {
    Memory(Arc<Windows>),
    Redis {
        link: RedisLink,
        /// [`RATE_LIMIT_LUA`], loaded once per node and then called by hash.
        script: Script,
    },
}

/// The in-process counts: channel → user → the counted messages (their time, and their
/// idempotency key if they had one), oldest first.
#[derive(Debug, Default)]
struct Windows {
    channels: Mutex<HashMap<String, HashMap<String, VecDeque<Counted>>>>,
}

/// A counted message: when, and its scoped idempotency key if it had one.
type Counted = (Instant, Option<String>);

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
                if let Engine::Memory(windows) = &limit.engine {
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
            engine: Engine::Memory(Arc::default()),
        }
    }

    /// Counting in Redis, shared by every host.
    pub fn redis(messages: u32, window: Duration, link: RedisLink) -> Self {
        Self {
            messages,
            window,
            engine: Engine::Redis {
                link,
                script: Script::new(RATE_LIMIT_LUA),
            },
        }
    }

    /// Counts a message of `user` in `channel`; `Err` with the wait when it is one too
    /// many.
    async fn count(&self, channel: &str, user: &str, key: Option<&str>) -> Result<(), Refusal> {
        match &self.engine {
            Engine::Memory(windows) => windows.count(
                channel,
                user,
                key,
                self.messages,
                self.window,
                Instant::now(),
            ),
            Engine::Redis { link, script } => {
                let counts = format!("{}:{{{channel}}}:rate:{user}", link.key_prefix());
                let mut invocation = script.key(counts);
                invocation
                    .arg(self.messages)
                    .arg(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX))
                    .arg(rand::random::<u64>())
                    .arg(key.unwrap_or(""));
                let mut conn = link.commands();
                let (counted, wait_ms): (i64, i64) = link
                    .bounded(invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|e| Refusal::Unavailable(e.to_string()))?;
                if counted == 1 {
                    Ok(())
                } else {
                    Err(Refusal::Full(Duration::from_millis(
                        u64::try_from(wait_ms).unwrap_or(0),
                    )))
                }
            }
        }
    }
}

/// Why a message was not counted.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The window is full; a slot frees after this long.
    Full(Duration),
    /// Redis cannot be reached.
    Unavailable(String),
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        let user = user_of(draft.identity);
        match self.count(draft.channel, &user, draft.key).await {
            Ok(()) => Ok(()),
            Err(Refusal::Full(wait)) => {
                let seconds = retry_after_seconds(wait);
                Err(PublishError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {} messages per {} s in this channel; try again in {seconds} s",
                        self.messages,
                        self.window.as_secs()
                    ),
                )
                .retry_after(seconds))
            }
            Err(Refusal::Unavailable(e)) => Err(PublishError::new(
                ErrorCode::Unavailable,
                format!("cannot check the rate limit right now: {e}"),
            )),
        }
    }
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
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, VecDeque<Counted>>>> {
        // No critical section here panics; the counts stay usable if one ever did.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(
        &self,
        channel: &str,
        user: &str,
        key: Option<&str>,
        messages: u32,
        window: Duration,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut channels = self.lock();
        let counted = channels
            .entry(channel.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        while counted
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
        {
            counted.pop_front();
        }
        if key.is_some() && counted.iter().any(|(_, k)| k.as_deref() == key) {
            return Ok(()); // A retry of a message already counted.
        }
        if counted.len() < messages as usize {
            counted.push_back((now, key.map(str::to_owned)));
            return Ok(());
        }
        let oldest = counted.front().map_or(now, |(t, _)| *t);
        Err(Refusal::Full(
            (oldest + window).saturating_duration_since(now),
        ))
    }

    /// Forgets the users whose last counted message has left the window.
    fn sweep(&self, window: Duration, now: Instant) {
        self.lock().retain(|_, users| {
            users.retain(|_, counted| {
                counted
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
    use crate::auth::tests::identity_of as identity;
    use crate::message::Body;

    const WINDOW: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_slides_and_refusals_do_not_count() {
        let w = Windows::default();
        let t0 = Instant::now();
        let count = |at: Duration| w.count("room", "ann", None, 3, WINDOW, t0 + at);
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
            w.count("room", "bo", None, 3, WINDOW, t0 + ms(14_001)),
            Ok(())
        );
        assert_eq!(
            w.count("hall", "ann", None, 3, WINDOW, t0 + ms(14_001)),
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
        w.count("room", "ann", None, 3, WINDOW, t0).unwrap();
        w.count("room", "bo", None, 3, WINDOW, t0 + ms(5_000))
            .unwrap();
        w.count("hall", "cy", None, 3, WINDOW, t0 + ms(1_000))
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
        let redis = crate::registry::tests::RedisServer::start();
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
        let redis = crate::registry::tests::RedisServer::start();
        retries_count_once(&RateLimit::redis(
            2,
            Duration::from_secs(60),
            redis.link().await,
        ))
        .await;
    }
}
