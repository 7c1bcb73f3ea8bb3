//! The ban store: which users may not publish in which channel, and until when.
//!
//! Users are known by [`crate::auth::Identity::moderation_id`]. Two engines, chosen like
//! the broker:
//!
//! * memory, for a single host: a map per channel; lapsed bans are dropped whenever the
//!   channel is read, and every new ban sweeps all channels, so the map holds only bans in
//!   force plus those lapsed since the last ban;
//! * Redis, shared by every host: one hash per channel, `<prefix>:{<channel>}:bans`
//!   (hash-tagged by channel like the broker's keys, so it lives on the channel's shard),
//!   field = user id, value = until in ms since the Unix epoch, `0` for ever. Setting and
//!   listing go through one script ([`BANS_LUA`]) that drops lapsed bans and makes the
//!   hash expire with its last ban; a lookup is one `HGET`. Every call is bounded by
//!   `redis.timeout_ms`: with Redis down it fails with
//!   [`ModerationError::Unavailable`], never hangs.
//!
//! A ban's lapse is judged by the clock of the host that reads it (hosts are expected to
//! keep their clocks in sync).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Script, Value};

use super::ModerationError;
use crate::message::now_ms;
use crate::redis::RedisLink;

/// Sets bans, drops lapsed ones and sets the hash's expiry; see its header.
pub const BANS_LUA: &str = include_str!("bans.lua");

/// The latest `until` a ban may have: Lua numbers are doubles, exact up to 2^53 ms (some
/// 285,000 years).
const MAX_UNTIL_MS: u64 = (1 << 53) - 1;

/// A ban in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// When it lapses, in ms since the Unix epoch; `None`: never.
    pub until: Option<u64>,
}

impl Ban {
    /// A ban from now for `expire`, or for ever.
    pub fn from_now(expire: Option<Duration>, now: u64) -> Self {
        Self {
            until: expire.map(|e| {
                let ms = u64::try_from(e.as_millis()).unwrap_or(u64::MAX).max(1);
                now.saturating_add(ms).min(MAX_UNTIL_MS)
            }),
        }
    }

    /// The stored form: until, or 0 for ever.
    fn stored(self) -> u64 {
        self.until.unwrap_or(0)
    }

    fn from_stored(value: u64) -> Self {
        Self {
            until: (value != 0).then_some(value),
        }
    }

    /// Whether it still holds at `now`.
    pub fn in_force(&self, now: u64) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// The bans of every channel, in memory or in Redis. Clones share the store.
#[derive(Clone)]
pub struct Bans {
    engine: Arc<Engine>,
}

enum Engine {
    /// Channel → user id → ban.
    Memory(Mutex<HashMap<String, HashMap<String, Ban>>>),
    Redis {
        link: RedisLink,
        /// [`BANS_LUA`], loaded once per node and then called by hash.
        script: Script,
    },
}

impl Bans {
    /// Bans kept in this process (one host).
    pub fn memory() -> Self {
        Self {
            engine: Arc::new(Engine::Memory(Mutex::default())),
        }
    }

    /// Bans kept in Redis, seen by every host.
    pub fn redis(link: RedisLink) -> Self {
        Self {
            engine: Arc::new(Engine::Redis {
                link,
                script: Script::new(BANS_LUA),
            }),
        }
    }

    /// Bans `users` from `channel` for `expire`, or for ever; a user already banned gets
    /// the new term. Returns the ban set.
    pub async fn ban(
        &self,
        channel: &str,
        users: &[String],
        expire: Option<Duration>,
    ) -> Result<Ban, ModerationError> {
        let now = now_ms();
        let ban = Ban::from_now(expire, now);
        self.set(channel, users, ban, now).await?;
        Ok(ban)
    }

    /// Lifts the bans of `users` in `channel` (users not banned are no error).
    pub async fn unban(&self, channel: &str, users: &[String]) -> Result<(), ModerationError> {
        match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                if let Some(bans) = map.get_mut(channel) {
                    for user in users {
                        bans.remove(user);
                    }
                    if bans.is_empty() {
                        map.remove(channel);
                    }
                }
                Ok(())
            }
            Engine::Redis { link, .. } => {
                if users.is_empty() {
                    return Ok(());
                }
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(key(link, channel)).arg(users);
                link.run::<Value>(cmd).await.map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// The ban of `user` in `channel`, if one is in force.
    pub async fn ban_of(&self, channel: &str, user: &str) -> Result<Option<Ban>, ModerationError> {
        self.ban_of_at(channel, user, now_ms()).await
    }

    async fn ban_of_at(
        &self,
        channel: &str,
        user: &str,
        now: u64,
    ) -> Result<Option<Ban>, ModerationError> {
        match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                prune(&mut map, channel, now);
                Ok(map.get(channel).and_then(|bans| bans.get(user)).copied())
            }
            Engine::Redis { link, .. } => {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(key(link, channel)).arg(user);
                let value: Option<String> = link.run(cmd).await.map_err(unavailable)?;
                // Something unreadable in the field counts as no ban; the next listing
                // drops it.
                Ok(value
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Ban::from_stored)
                    .filter(|ban| ban.in_force(now)))
            }
        }
    }

    /// The bans in force in `channel`, by user id.
    pub async fn list(&self, channel: &str) -> Result<Vec<(String, Ban)>, ModerationError> {
        self.list_at(channel, now_ms()).await
    }

    async fn list_at(
        &self,
        channel: &str,
        now: u64,
    ) -> Result<Vec<(String, Ban)>, ModerationError> {
        let mut bans = match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                prune(&mut map, channel, now);
                map.get(channel)
                    .map(|bans| bans.iter().map(|(u, b)| (u.clone(), *b)).collect())
                    .unwrap_or_default()
            }
            Engine::Redis { .. } => self.run_script(channel, &[], Ban::default(), now).await?,
        };
        bans.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(bans)
    }

    async fn set(
        &self,
        channel: &str,
        users: &[String],
        ban: Ban,
        now: u64,
    ) -> Result<(), ModerationError> {
        match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                // Bans are rare: each one sweeps every channel's lapsed bans.
                map.retain(|_, bans| {
                    bans.retain(|_, b| b.in_force(now));
                    !bans.is_empty()
                });
                let bans = map.entry(channel.to_owned()).or_default();
                for user in users {
                    bans.insert(user.clone(), ban);
                }
                Ok(())
            }
            Engine::Redis { .. } => self.run_script(channel, users, ban, now).await.map(|_| ()),
        }
    }

    /// Runs [`BANS_LUA`]: sets `users` to `ban` (none: only cleans up) and returns the
    /// bans in force.
    async fn run_script(
        &self,
        channel: &str,
        users: &[String],
        ban: Ban,
        now: u64,
    ) -> Result<Vec<(String, Ban)>, ModerationError> {
        let Engine::Redis { link, script } = &*self.engine else {
            return Ok(Vec::new());
        };
        let mut invocation = script.key(key(link, channel));
        invocation.arg(now);
        for user in users {
            invocation.arg(user).arg(ban.stored());
        }
        let mut conn = link.commands();
        let reply: Vec<String> = link
            .bounded(invocation.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?;
        Ok(reply
            .chunks_exact(2)
            .filter_map(|pair| {
                let until = pair[1].parse::<u64>().ok()?;
                Some((pair[0].clone(), Ban::from_stored(until)))
            })
            .collect())
    }
}

impl Default for Ban {
    /// For ever.
    fn default() -> Self {
        Self { until: None }
    }
}

/// `<prefix>:{<channel>}:bans`.
fn key(link: &RedisLink, channel: &str) -> String {
    format!("{}:{{{channel}}}:bans", link.key_prefix())
}

fn unavailable(e: crate::redis::RedisError) -> ModerationError {
    ModerationError::Unavailable(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; the map stays usable if one ever did.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops the lapsed bans of `channel` (and the channel when none is left).
fn prune(map: &mut HashMap<String, HashMap<String, Ban>>, channel: &str, now: u64) {
    if let Some(bans) = map.get_mut(channel) {
        bans.retain(|_, ban| ban.in_force(now));
        if bans.is_empty() {
            map.remove(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    const T0: u64 = 1_700_000_000_000;

    /// The same checks for both engines, with the clock starting at `t0`.
    async fn expiry_unban_and_list(bans: &Bans, t0: u64) {
        let forever = Ban { until: None };
        let short = Ban::from_now(Some(Duration::from_secs(10)), t0);
        assert_eq!(short.until, Some(t0 + 10_000));
        bans.set("room", &users(&["ann", "bo"]), short, t0)
            .await
            .unwrap();
        bans.set("room", &users(&["cy"]), forever, t0)
            .await
            .unwrap();
        bans.set("hall", &users(&["ann"]), forever, t0)
            .await
            .unwrap();
        assert_eq!(
            bans.ban_of_at("room", "ann", t0).await.unwrap(),
            Some(short)
        );
        assert_eq!(
            bans.ban_of_at("room", "ann", t0 + 9_999).await.unwrap(),
            Some(short)
        );
        assert_eq!(bans.ban_of_at("room", "dee", t0).await.unwrap(), None);
        assert_eq!(bans.ban_of_at("lobby", "ann", t0).await.unwrap(), None);
        assert_eq!(
            bans.list_at("room", t0).await.unwrap(),
            vec![
                ("ann".to_string(), short),
                ("bo".to_string(), short),
                ("cy".to_string(), forever)
            ]
        );
        // Lapsed at its `until`.
        assert_eq!(
            bans.ban_of_at("room", "ann", t0 + 10_000).await.unwrap(),
            None
        );
        assert_eq!(
            bans.list_at("room", t0 + 10_000).await.unwrap(),
            vec![("cy".to_string(), forever)]
        );
        // A new term replaces the old one, either way.
        bans.set("room", &users(&["cy"]), short, t0).await.unwrap();
        assert_eq!(bans.ban_of_at("room", "cy", t0).await.unwrap(), Some(short));
        bans.set("room", &users(&["cy"]), forever, t0)
            .await
            .unwrap();
        assert_eq!(
            bans.ban_of_at("room", "cy", t0 + 99_999_999).await.unwrap(),
            Some(forever)
        );
        // Unban: gone at once, others untouched; unknown users are no error.
        bans.unban("room", &users(&["cy", "nobody"])).await.unwrap();
        assert_eq!(bans.ban_of_at("room", "cy", t0).await.unwrap(), None);
        assert_eq!(
            bans.list_at("hall", t0 + 99_999_999).await.unwrap(),
            vec![("ann".to_string(), forever)]
        );
        bans.unban("nowhere", &users(&["ann"])).await.unwrap();
    }

    #[tokio::test]
    async fn memory_bans_lapse_and_lift() {
        let bans = Bans::memory();
        expiry_unban_and_list(&bans, T0).await;
        // Nothing lapsed stays behind once a ban sweeps.
        bans.set("other", &users(&["x"]), Ban::default(), T0 + 99_999_999)
            .await
            .unwrap();
        let Engine::Memory(map) = &*bans.engine else {
            unreachable!()
        };
        let channels: Vec<String> = {
            let mut c: Vec<String> = lock(map).keys().cloned().collect();
            c.sort();
            c
        };
        assert_eq!(channels, ["hall", "other"]);
    }

    #[tokio::test]
    async fn redis_bans_lapse_lift_and_expire_with_their_last_ban() {
        let redis = crate::registry::tests::RedisServer::start();
        let link = redis.link().await;
        let bans = Bans::redis(link.clone());
        // Against the real clock here, since Redis expires keys by it.
        let now = now_ms();
        let forever = Ban { until: None };
        let short = Ban::from_now(Some(Duration::from_secs(10)), now);
        bans.set("room", &users(&["ann"]), short, now)
            .await
            .unwrap();
        let ttl: i64 = link
            .run(redis::cmd("PTTL").arg("chatup:{room}:bans").clone())
            .await
            .unwrap();
        assert!((9_000..=10_000).contains(&ttl), "{ttl}");
        bans.set("room", &users(&["bo"]), forever, now)
            .await
            .unwrap();
        let ttl: i64 = link
            .run(redis::cmd("PTTL").arg("chatup:{room}:bans").clone())
            .await
            .unwrap();
        assert_eq!(ttl, -1, "a ban for ever keeps the hash");
        assert_eq!(
            bans.list_at("room", now + 10_000).await.unwrap(),
            vec![("bo".to_string(), forever)]
        );
        bans.unban("room", &users(&["bo"])).await.unwrap();
        assert!(bans.list_at("room", now).await.unwrap().is_empty());

        // The shared checks, on channels of their own.
        let bans = Bans::redis(link.clone());
        expiry_unban_and_list(&bans, now_ms()).await;

        // A real 300 ms ban lapses by itself and its hash goes.
        bans.ban("quick", &users(&["ann"]), Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert!(bans.ban_of("quick", "ann").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(bans.ban_of("quick", "ann").await.unwrap(), None);
        let exists: i64 = link
            .run(redis::cmd("EXISTS").arg("chatup:{quick}:bans").clone())
            .await
            .unwrap();
        assert_eq!(exists, 0);

        // Redis down: a clear error within the bound.
        drop(redis);
        let started = std::time::Instant::now();
        let err = bans.ban_of("room", "ann").await.unwrap_err();
        assert!(matches!(err, ModerationError::Unavailable(_)), "{err}");
        let err = bans.ban("room", &users(&["x"]), None).await.unwrap_err();
        assert!(matches!(err, ModerationError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
