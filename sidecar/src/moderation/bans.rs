//! The ban store: who may not publish in which channel, and until when.
//!
//! A ban says whom it matches ([`Who`]): a user, by the token's `sub`
//! ([`Identity::user_id`]), or a name, by the token's `_public.name`
//! ([`Identity::public_name`]), as the original system banned. Two engines, chosen like
//! the broker:
//!
//! * memory, for a single host: a map per channel; lapsed bans are dropped whenever the
//!   channel is read, and every new ban sweeps all channels, so the map holds only bans in
//!   force plus those lapsed since the last ban;
//! * Redis, shared by every host: one hash per channel, `<prefix>:{<channel>}:bans:by-kind`
//!   (hash-tagged by channel like the broker's keys, so it lives on the channel's shard),
//!   field = `user:<sub>` or `name:<name>`, value = until in ms since the Unix epoch, `0`
//!   for ever. Setting and listing go through one script ([`BANS_LUA`]) that drops lapsed
//!   bans and makes the hash expire with its last ban; a lookup is one pipeline of two
//!   `HMGET`s. Every call is bounded by `redis.timeout_ms`: with Redis down it fails with
//!   [`ModerationError::Unavailable`], never hangs.
//!
//! Bans stored by earlier versions, in `<prefix>:{<channel>}:bans` with the bare id as the
//! field, are read as they are ([`Who::Legacy`]): such a ban was made for whoever the
//! token named by its `sub` or its `_public.name`, so it still matches a token whose `sub`
//! or `_public.name` is that id until it lapses or is lifted (unbanning the id as a user
//! or as a name lifts it). Nothing new is written there; it expires with its last ban.
//!
//! A ban's lapse is judged by the clock of the host that reads it (hosts are expected to
//! keep their clocks in sync).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::Script;

use super::ModerationError;
use crate::broker::Guard;
use crate::cluster::redis::RedisLink;
use crate::jwt::Identity;
use crate::message::now_ms;

/// Sets bans, drops lapsed ones and sets the hashes' expiry; see its header.
pub const BANS_LUA: &str = include_str!("bans.lua");

/// The latest `until` a ban may have: Lua numbers are doubles, exact up to 2^53 ms (some
/// 285,000 years).
const MAX_UNTIL_MS: u64 = (1 << 53) - 1;

/// Whom a ban matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Who {
    /// A token whose `sub` is this.
    User(String),
    /// A token whose `_public.name` is this.
    Name(String),
    /// A ban stored before bans had kinds: a token whose `sub` or `_public.name` is this.
    /// Read, listed and lifted, never made.
    Legacy(String),
}

impl Who {
    /// `user`, `name` or `legacy`: the field the admin API and the `rmUserMsg` event name
    /// it by.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Name(_) => "name",
            Self::Legacy(_) => "legacy",
        }
    }

    /// The id or the name.
    pub fn value(&self) -> &str {
        match self {
            Self::User(v) | Self::Name(v) | Self::Legacy(v) => v,
        }
    }

    /// The field in the channel's hash (`Legacy`: in the old hash).
    fn field(&self) -> String {
        match self {
            Self::User(v) => format!("user:{v}"),
            Self::Name(v) => format!("name:{v}"),
            Self::Legacy(v) => v.clone(),
        }
    }

    fn from_field(field: &str) -> Option<Self> {
        if let Some(v) = field.strip_prefix("user:") {
            Some(Self::User(v.to_owned()))
        } else {
            field
                .strip_prefix("name:")
                .map(|v| Self::Name(v.to_owned()))
        }
    }

    /// What bans of `identity` may be stored under, kind by kind: its user and its name
    /// (each when it has one).
    pub fn of(identity: &Identity) -> Vec<Who> {
        identity
            .user_id()
            .map(Who::User)
            .into_iter()
            .chain(identity.public_name().map(Who::Name))
            .collect()
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind(), self.value())
    }
}

/// A ban in force. Sent to publishers as its end alone (`until`: a number, or `null` for
/// ever), hence `transparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
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

    /// The longer of two bans (for ever beats any term).
    fn longer(self, other: Self) -> Self {
        match (self.until, other.until) {
            (None, _) | (_, None) => Self { until: None },
            (Some(a), Some(b)) => Self {
                until: Some(a.max(b)),
            },
        }
    }
}

/// The bans of every channel, in memory or in Redis. Clones share the store.
#[derive(Clone)]
pub struct Bans {
    engine: Arc<Engine>,
}

enum Engine {
    /// Channel → whom → ban.
    Memory(Mutex<HashMap<String, HashMap<Who, Ban>>>),
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

    /// Bans `whom` from `channel` for `expire`, or for ever; one already banned gets the
    /// new term. Returns the ban set.
    pub async fn ban(
        &self,
        channel: &str,
        whom: &[Who],
        expire: Option<Duration>,
    ) -> Result<Ban, ModerationError> {
        let now = now_ms();
        let ban = Ban::from_now(expire, now);
        self.set(channel, whom, ban, now).await?;
        Ok(ban)
    }

    /// Lifts the bans of `whom` in `channel` (those not banned are no error). Lifting a
    /// user or a name also lifts a [`Who::Legacy`] ban of the same id.
    pub async fn unban(&self, channel: &str, whom: &[Who]) -> Result<(), ModerationError> {
        match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                if let Some(bans) = map.get_mut(channel) {
                    for who in whom {
                        bans.remove(who);
                        bans.remove(&Who::Legacy(who.value().to_owned()));
                    }
                    if bans.is_empty() {
                        map.remove(channel);
                    }
                }
                Ok(())
            }
            Engine::Redis { link, .. } => {
                if whom.is_empty() {
                    return Ok(());
                }
                let fields: Vec<String> = whom
                    .iter()
                    .filter(|w| !matches!(w, Who::Legacy(_)))
                    .map(Who::field)
                    .collect();
                let legacy: Vec<&str> = whom.iter().map(Who::value).collect();
                let mut pipe = redis::pipe();
                if !fields.is_empty() {
                    pipe.cmd("HDEL")
                        .arg(key(link, channel))
                        .arg(fields)
                        .ignore();
                }
                pipe.cmd("HDEL")
                    .arg(legacy_key(link, channel))
                    .arg(legacy)
                    .ignore();
                let mut conn = link.commands();
                link.bounded(pipe.query_async::<()>(&mut conn))
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// The longest ban in force in `channel` that matches `identity`, with whom it bans.
    pub async fn ban_of(
        &self,
        channel: &str,
        identity: &Identity,
    ) -> Result<Option<(Who, Ban)>, ModerationError> {
        self.ban_of_at(channel, &Who::of(identity), now_ms()).await
    }

    async fn ban_of_at(
        &self,
        channel: &str,
        keys: &[Who],
        now: u64,
    ) -> Result<Option<(Who, Ban)>, ModerationError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let found: Vec<(Who, Ban)> = match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                prune(&mut map, channel, now);
                map.get(channel)
                    .map(|bans| {
                        keys.iter()
                            .filter_map(|k| bans.get(k).map(|b| (k.clone(), *b)))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Engine::Redis { link, .. } => {
                let legacy: Vec<Who> = keys.iter().map(|k| Who::Legacy(k.value().into())).collect();
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(key(link, channel))
                    .arg(keys.iter().map(Who::field).collect::<Vec<_>>());
                pipe.cmd("HMGET")
                    .arg(legacy_key(link, channel))
                    .arg(legacy.iter().map(Who::field).collect::<Vec<_>>());
                let mut conn = link.commands();
                let (current, old): (Vec<Option<String>>, Vec<Option<String>>) = link
                    .bounded(pipe.query_async(&mut conn))
                    .await
                    .map_err(unavailable)?;
                // Something unreadable in a field counts as no ban; the next listing
                // drops it.
                keys.iter()
                    .chain(&legacy)
                    .zip(current.into_iter().chain(old))
                    .filter_map(|(who, value)| {
                        let ban = Ban::from_stored(value?.parse::<u64>().ok()?);
                        Some((who.clone(), ban))
                    })
                    .filter(|(_, ban)| ban.in_force(now))
                    .collect()
            }
        };
        Ok(found.into_iter().reduce(|a, b| {
            let longer = a.1.longer(b.1);
            if longer == a.1 {
                a
            } else {
                b
            }
        }))
    }

    /// Whether the bans are in Redis, where the broker can read them in its publish
    /// ([`Self::guard`]).
    pub fn in_redis(&self) -> bool {
        matches!(*self.engine, Engine::Redis { .. })
    }

    /// The lookup of [`Self::ban_of`] as a guard the Redis broker applies in its publish
    /// (the same fields of the same two hashes, judged by this host's clock). `None` when
    /// the bans are in memory, or when `identity` has nothing a ban could match.
    pub fn guard(&self, channel: &str, identity: &Identity) -> Option<Guard> {
        let Engine::Redis { link, .. } = &*self.engine else {
            return None;
        };
        let whom = Who::of(identity);
        if whom.is_empty() {
            return None;
        }
        Some(Guard::Ban {
            hash: key(link, channel),
            legacy_hash: legacy_key(link, channel),
            fields: whom.iter().map(Who::field).collect(),
            legacy_fields: whom
                .iter()
                .map(|who| Who::Legacy(who.value().to_owned()).field())
                .collect(),
            now_ms: now_ms(),
        })
    }

    /// The bans in force in `channel`, sorted by kind then id.
    pub async fn list(&self, channel: &str) -> Result<Vec<(Who, Ban)>, ModerationError> {
        self.list_at(channel, now_ms()).await
    }

    async fn list_at(&self, channel: &str, now: u64) -> Result<Vec<(Who, Ban)>, ModerationError> {
        let mut bans = match &*self.engine {
            Engine::Memory(map) => {
                let mut map = lock(map);
                prune(&mut map, channel, now);
                map.get(channel)
                    .map(|bans| bans.iter().map(|(w, b)| (w.clone(), *b)).collect())
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
        whom: &[Who],
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
                for who in whom {
                    bans.insert(who.clone(), ban);
                }
                Ok(())
            }
            Engine::Redis { .. } => self.run_script(channel, whom, ban, now).await.map(|_| ()),
        }
    }

    /// Runs [`BANS_LUA`]: sets `whom` to `ban` (none: only cleans up) and returns the bans
    /// in force, the legacy ones included.
    async fn run_script(
        &self,
        channel: &str,
        whom: &[Who],
        ban: Ban,
        now: u64,
    ) -> Result<Vec<(Who, Ban)>, ModerationError> {
        let Engine::Redis { link, script } = &*self.engine else {
            return Ok(Vec::new());
        };
        let mut invocation = script.key(key(link, channel));
        invocation.key(legacy_key(link, channel)).arg(now);
        for who in whom {
            invocation.arg(who.field()).arg(ban.stored());
        }
        let mut conn = link.commands();
        let (current, legacy): (Vec<String>, Vec<String>) = link
            .bounded(invocation.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?;
        let read = |pairs: &[String], who: &dyn Fn(&str) -> Option<Who>| -> Vec<(Who, Ban)> {
            pairs
                .chunks_exact(2)
                .filter_map(|pair| {
                    let until = pair[1].parse::<u64>().ok()?;
                    Some((who(&pair[0])?, Ban::from_stored(until)))
                })
                .collect()
        };
        let mut all = read(&current, &Who::from_field);
        all.extend(read(&legacy, &|f| Some(Who::Legacy(f.to_owned()))));
        Ok(all)
    }
}

impl Default for Ban {
    /// For ever.
    fn default() -> Self {
        Self { until: None }
    }
}

/// `<prefix>:{<channel>}:bans:by-kind`.
fn key(link: &RedisLink, channel: &str) -> String {
    format!("{}:{{{channel}}}:bans:by-kind", link.key_prefix())
}

/// `<prefix>:{<channel>}:bans`: where earlier versions kept bans by bare id.
fn legacy_key(link: &RedisLink, channel: &str) -> String {
    format!("{}:{{{channel}}}:bans", link.key_prefix())
}

fn unavailable(e: crate::cluster::redis::RedisError) -> ModerationError {
    ModerationError::Unavailable(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; the map stays usable if one ever did.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops the lapsed bans of `channel` (and the channel when none is left).
fn prune(map: &mut HashMap<String, HashMap<Who, Ban>>, channel: &str, now: u64) {
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
    use crate::test_support::identity_of as identity;

    fn users(ids: &[&str]) -> Vec<Who> {
        ids.iter().map(|n| Who::User(n.to_string())).collect()
    }

    fn user(id: &str) -> Who {
        Who::User(id.into())
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
        let of = |id: &str| vec![user(id)];
        assert_eq!(
            bans.ban_of_at("room", &of("ann"), t0).await.unwrap(),
            Some((user("ann"), short))
        );
        assert_eq!(
            bans.ban_of_at("room", &of("ann"), t0 + 9_999)
                .await
                .unwrap(),
            Some((user("ann"), short))
        );
        assert_eq!(bans.ban_of_at("room", &of("dee"), t0).await.unwrap(), None);
        assert_eq!(bans.ban_of_at("lobby", &of("ann"), t0).await.unwrap(), None);
        // A ban by user does not match the same text as a name, nor the other way round.
        let named_ann = vec![Who::Name("ann".into())];
        assert_eq!(bans.ban_of_at("room", &named_ann, t0).await.unwrap(), None);
        bans.set("room", &[Who::Name("dee".into())], forever, t0)
            .await
            .unwrap();
        assert_eq!(bans.ban_of_at("room", &of("dee"), t0).await.unwrap(), None);
        // Both kinds of one user: the longer ban is the one reported.
        let both = vec![user("ann"), Who::Name("dee".into())];
        assert_eq!(
            bans.ban_of_at("room", &both, t0).await.unwrap(),
            Some((Who::Name("dee".into()), forever))
        );
        bans.unban("room", &[Who::Name("dee".into())])
            .await
            .unwrap();
        assert_eq!(
            bans.list_at("room", t0).await.unwrap(),
            vec![
                (user("ann"), short),
                (user("bo"), short),
                (user("cy"), forever)
            ]
        );
        // Lapsed at its `until`.
        assert_eq!(
            bans.ban_of_at("room", &of("ann"), t0 + 10_000)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            bans.list_at("room", t0 + 10_000).await.unwrap(),
            vec![(user("cy"), forever)]
        );
        // A new term replaces the old one, either way.
        bans.set("room", &users(&["cy"]), short, t0).await.unwrap();
        assert_eq!(
            bans.ban_of_at("room", &of("cy"), t0).await.unwrap(),
            Some((user("cy"), short))
        );
        bans.set("room", &users(&["cy"]), forever, t0)
            .await
            .unwrap();
        assert_eq!(
            bans.ban_of_at("room", &of("cy"), t0 + 99_999_999)
                .await
                .unwrap(),
            Some((user("cy"), forever))
        );
        // Unban: gone at once, others untouched; unknown users are no error.
        bans.unban("room", &users(&["cy", "nobody"])).await.unwrap();
        assert_eq!(bans.ban_of_at("room", &of("cy"), t0).await.unwrap(), None);
        assert_eq!(
            bans.list_at("hall", t0 + 99_999_999).await.unwrap(),
            vec![(user("ann"), forever)]
        );
        bans.unban("nowhere", &users(&["ann"])).await.unwrap();
    }

    #[test]
    fn a_token_is_banned_by_its_sub_and_by_its_name() {
        let zoe = identity(Some("u-17"), r#"{"name":"Zoe"}"#);
        assert_eq!(
            Who::of(&zoe),
            [Who::User("u-17".into()), Who::Name("Zoe".into())]
        );
        assert_eq!(Who::of(&identity(None, "{}")), []);
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
        let redis = crate::cluster::registry::tests::RedisServer::start();
        let link = redis.link().await;
        let bans = Bans::redis(link.clone());
        // Against the real clock here, since Redis expires keys by it.
        let now = now_ms();
        let forever = Ban { until: None };
        let short = Ban::from_now(Some(Duration::from_secs(10)), now);
        bans.set("room", &users(&["ann"]), short, now)
            .await
            .unwrap();
        let pttl = |key: &'static str| {
            let link = link.clone();
            async move {
                link.run::<i64>(redis::cmd("PTTL").arg(key).clone())
                    .await
                    .unwrap()
            }
        };
        let ttl = pttl("chatup:{room}:bans:by-kind").await;
        assert!((9_000..=10_000).contains(&ttl), "{ttl}");
        let field: Option<String> = link
            .run(
                redis::cmd("HGET")
                    .arg("chatup:{room}:bans:by-kind")
                    .arg("user:ann")
                    .clone(),
            )
            .await
            .unwrap();
        assert_eq!(field, Some(short.until.unwrap().to_string()));
        bans.set("room", &[Who::Name("bo".into())], forever, now)
            .await
            .unwrap();
        assert_eq!(
            pttl("chatup:{room}:bans:by-kind").await,
            -1,
            "a ban for ever keeps the hash"
        );
        assert_eq!(
            bans.list_at("room", now + 10_000).await.unwrap(),
            vec![(Who::Name("bo".into()), forever)]
        );
        bans.unban("room", &[Who::Name("bo".into())]).await.unwrap();
        assert!(bans.list_at("room", now).await.unwrap().is_empty());

        // The shared checks, on channels of their own.
        let bans = Bans::redis(link.clone());
        expiry_unban_and_list(&bans, now_ms()).await;

        // A real 300 ms ban lapses by itself and its hash goes.
        let ann = identity(Some("ann"), "{}");
        bans.ban("quick", &users(&["ann"]), Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert!(bans.ban_of("quick", &ann).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(bans.ban_of("quick", &ann).await.unwrap(), None);
        let exists: i64 = link
            .run(
                redis::cmd("EXISTS")
                    .arg("chatup:{quick}:bans:by-kind")
                    .clone(),
            )
            .await
            .unwrap();
        assert_eq!(exists, 0);

        // Bans by bare id from earlier versions: matched by sub or name, listed as
        // legacy, lifted by either kind, and kept to their term.
        let later = (now_ms() + 60_000).to_string();
        let mut hset = redis::cmd("HSET");
        hset.arg("chatup:{old}:bans")
            .arg("Zoe")
            .arg(&later)
            .arg("u-9")
            .arg("0")
            .arg("junk")
            .arg("x");
        link.run::<i64>(hset).await.unwrap();
        let zoe = identity(Some("u-17"), r#"{"name":"Zoe"}"#);
        let nine = identity(Some("u-9"), r#"{"name":"Nina"}"#);
        let other = identity(Some("u-1"), r#"{"name":"Al"}"#);
        let until = Some(later.parse::<u64>().unwrap());
        assert_eq!(
            bans.ban_of("old", &zoe).await.unwrap(),
            Some((Who::Legacy("Zoe".into()), Ban { until }))
        );
        assert_eq!(
            bans.ban_of("old", &nine).await.unwrap(),
            Some((Who::Legacy("u-9".into()), forever))
        );
        assert_eq!(bans.ban_of("old", &other).await.unwrap(), None);
        assert_eq!(
            bans.list("old").await.unwrap(),
            vec![
                (Who::Legacy("Zoe".into()), Ban { until }),
                (Who::Legacy("u-9".into()), forever)
            ]
        );
        bans.unban("old", &[Who::Name("Zoe".into())]).await.unwrap();
        assert_eq!(bans.ban_of("old", &zoe).await.unwrap(), None);
        bans.unban("old", &users(&["u-9"])).await.unwrap();
        assert!(bans.list("old").await.unwrap().is_empty());

        // Redis down: a clear error within the bound.
        drop(redis);
        let started = std::time::Instant::now();
        let err = bans.ban_of("room", &ann).await.unwrap_err();
        assert!(matches!(err, ModerationError::Unavailable(_)), "{err}");
        let err = bans.ban("room", &users(&["x"]), None).await.unwrap_err();
        assert!(matches!(err, ModerationError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
