//! Who is joined to which channel on every host, for `GET /stats/<ch>` of the admin API,
//! and who watches which private channel ([`MemberList::Viewers`]).
//!
//! [`Presence`](crate::host::presence::Presence) knows the publishers joined on its own host
//! only, [`Viewers`](crate::host::viewers::Viewers) the viewers admitted there. With Redis,
//! each worker's [`Reporter`](crate::cluster::registry::Reporter) mirrors both with a
//! [`MemberMirror`] each, and [`read`] gathers a channel's lists from the live hosts.
//!
//! Redis keys (`<p>` is `redis.key_prefix`):
//!
//! | key | type | what |
//! |-----|------|------|
//! | `<p>:{<ch>}:members:<host id>:<instance>` | hash, `PEXPIRE` [`MemberMirror::expiry`] | field: user key (`sub:<sub>` or `public:<_public>`); value: the user's `_public` JSON |
//! | `<p>:{<ch>}:viewers:<host id>:<instance>` | hash, the same expiry | a private channel's admitted viewers; field: `sub:<sub>`; value: `{"sub":…,"user":<_public>}` |
//!
//! Cost is kept low:
//!
//! * Only changes are written: each report compares presence with what it last wrote and
//!   sends `HSET`/`HDEL` for the channels that changed (one pipeline per channel, as each is
//!   its own key; a pipeline never spans slots).
//! * A channel's hashes carry the channel's hash tag, so in a Redis Cluster they sit in the
//!   channel's slot and a reader fetches every host's hash in one pipeline.
//! * The expiry is long (at least a minute) and refreshed only every third of it, not at
//!   every report. It only collects the lists of hosts that died: readers never rely on it,
//!   they read the lists of the hosts the registry lists as live, by the `instance` those
//!   hosts' entries carry. A random instance per run means that a host restarted under the
//!   same id never shows what its previous run left behind.
//!
//! When Redis may have lost the hashes (a failed report, or a refresh or write that found a
//! hash gone, as after a Redis restart without persistence) the next report rewrites them
//! all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt as _};
use tracing::debug;

use crate::cluster::redis::{RedisError, RedisLink};
use crate::cluster::registry::HostEntry;

/// Channel lists → per channel, user key → `_public` JSON.
pub type Members = HashMap<String, HashMap<Arc<str>, Arc<str>>>;

/// Fields per `HSET`/`HDEL` in one command.
const CHUNK: usize = 512;

/// Channels written at once (each is one pipeline on the multiplexed connection).
const CONCURRENT_WRITES: usize = 16;

/// The shortest expiry of the hashes.
const MIN_EXPIRY: Duration = Duration::from_secs(60);

/// The expiry is this many `host.ttl_ms`, when that is more than [`MIN_EXPIRY`].
const EXPIRY_TTLS: u32 = 20;

/// Which list of a channel: its joined publishers, or its admitted viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberList {
    Publishers,
    Viewers,
}

impl MemberList {
    fn segment(self) -> &'static str {
        match self {
            Self::Publishers => "members",
            Self::Viewers => "viewers",
        }
    }
}

/// The hash holding `host`'s (run `instance`) members of `channel`.
pub fn key(prefix: &str, channel: &str, host: &str, instance: &str) -> String {
    list_key(MemberList::Publishers, prefix, channel, host, instance)
}

/// The hash holding `host`'s (run `instance`) `list` of `channel`.
pub fn list_key(
    list: MemberList,
    prefix: &str,
    channel: &str,
    host: &str,
    instance: &str,
) -> String {
    format!(
        "{prefix}:{{{channel}}}:{}:{host}:{instance}",
        list.segment()
    )
}

/// This host's members as written to Redis, and what the next report must send.
#[derive(Debug)]
pub struct MemberMirror {
    /// Which list it mirrors.
    list: MemberList,
    /// `redis.key_prefix`.
    prefix: Arc<str>,
    /// This host's id.
    host: Arc<str>,
    /// This run's instance id (see the module documentation).
    instance: Arc<str>,
    /// How long a hash outlives its last refresh.
    expiry: Duration,
    /// The members as last written successfully, per channel.
    written: Members,
    /// When each channel's hash expiry was last set.
    refreshed: HashMap<String, Instant>,
    /// Whether Redis may not hold `written`: the next write replaces every hash.
    dirty: bool,
}

impl MemberMirror {
    /// A mirror for this host; `host_ttl` is `host.ttl_ms`.
    pub fn new(prefix: &str, host: &str, instance: &str, host_ttl: Duration) -> Self {
        Self::of(MemberList::Publishers, prefix, host, instance, host_ttl)
    }

    /// A mirror of this host's `list`.
    pub fn of(
        list: MemberList,
        prefix: &str,
        host: &str,
        instance: &str,
        host_ttl: Duration,
    ) -> Self {
        Self {
            list,
            prefix: prefix.into(),
            host: host.into(),
            instance: instance.into(),
            expiry: host_ttl.saturating_mul(EXPIRY_TTLS).max(MIN_EXPIRY),
            written: HashMap::new(),
            refreshed: HashMap::new(),
            dirty: true,
        }
    }

    /// How long a hash lives without a refresh.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Makes the next [`write`](Self::write) replace every hash (Redis may have lost them).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn key(&self, channel: &str) -> String {
        list_key(self.list, &self.prefix, channel, &self.host, &self.instance)
    }

    /// Brings Redis in line with `current` (from
    /// [`Presence::all_members`](crate::host::presence::Presence::all_members)): the changes
    /// since the last write, the expiries that are due, or everything after a failure.
    pub async fn write(&mut self, link: &RedisLink, current: Members) -> Result<(), RedisError> {
        let now = Instant::now();
        let refresh_every = self.expiry / 3;
        let expiry_ms = self.expiry.as_millis() as u64;
        let mut writes = Vec::new();
        let channels = current.keys().chain(
            self.written
                .keys()
                .filter(|channel| !current.contains_key(*channel)),
        );
        for channel in channels {
            let key = self.key(channel);
            let now_members = current.get(channel);
            let before = self.written.get(channel);
            let mut pipe = redis::pipe();
            let Some(now_members) = now_members else {
                // The channel emptied on this host.
                pipe.cmd("DEL").arg(&key);
                writes.push((channel.clone(), pipe, false));
                continue;
            };
            let Some(before) = before.filter(|_| !self.dirty) else {
                pipe.atomic().cmd("DEL").arg(&key).ignore();
                let fields: Vec<(&Arc<str>, &Arc<str>)> = now_members.iter().collect();
                for chunk in fields.chunks(CHUNK) {
                    let hset = pipe.cmd("HSET").arg(&key);
                    for (user_key, user) in chunk {
                        hset.arg(user_key.as_ref()).arg(user.as_ref());
                    }
                    hset.ignore();
                }
                pipe.cmd("PEXPIRE").arg(&key).arg(expiry_ms).ignore();
                writes.push((channel.clone(), pipe, false));
                continue;
            };
            let changed: Vec<(&Arc<str>, &Arc<str>)> = now_members
                .iter()
                .filter(|(user_key, user)| before.get(*user_key) != Some(*user))
                .collect();
            let removed: Vec<&Arc<str>> = before
                .keys()
                .filter(|user_key| !now_members.contains_key(*user_key))
                .collect();
            let due = self
                .refreshed
                .get(channel)
                .is_none_or(|at| now.duration_since(*at) >= refresh_every);
            if changed.is_empty() && removed.is_empty() && !due {
                continue;
            }
            // Whether the hash is still there, before anything recreates it.
            pipe.cmd("PEXPIRE").arg(&key).arg(expiry_ms);
            for chunk in changed.chunks(CHUNK) {
                let hset = pipe.cmd("HSET").arg(&key);
                for (user_key, user) in chunk {
                    hset.arg(user_key.as_ref()).arg(user.as_ref());
                }
                hset.ignore();
            }
            for chunk in removed.chunks(CHUNK) {
                let hdel = pipe.cmd("HDEL").arg(&key);
                for user_key in chunk {
                    hdel.arg(user_key.as_ref());
                }
                hdel.ignore();
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(expiry_ms).ignore();
            writes.push((channel.clone(), pipe, true));
        }
        if writes.is_empty() {
            self.dirty = false;
            return Ok(());
        }
        let results: Vec<(String, Result<bool, RedisError>)> = stream::iter(writes)
            .map(|(channel, pipe, checks)| async move {
                let mut conn = link.commands();
                let result = if checks {
                    link.bounded(pipe.query_async::<(i64,)>(&mut conn))
                        .await
                        .map(|(existed,)| existed == 1)
                } else {
                    link.bounded(pipe.query_async::<()>(&mut conn))
                        .await
                        .map(|()| true)
                };
                (channel, result)
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut lost = false;
        for (channel, result) in results {
            match result {
                Ok(true) => {
                    self.refreshed.insert(channel, now);
                }
                Ok(false) => lost = true,
                Err(e) => {
                    self.dirty = true;
                    return Err(e);
                }
            }
        }
        self.refreshed
            .retain(|channel, _| current.contains_key(channel));
        self.written = current;
        if lost {
            // A hash expired or Redis lost it: what was just written is only the changes.
            debug!("a member list was gone from Redis; rewriting them all");
        }
        self.dirty = lost;
        Ok(())
    }

    /// Removes every hash this host wrote (at shutdown).
    pub async fn remove_all(&self, link: &RedisLink) -> Result<(), RedisError> {
        let keys: Vec<String> = self
            .written
            .keys()
            .map(|channel| self.key(channel))
            .collect();
        let results: Vec<Result<i64, RedisError>> = stream::iter(keys)
            .map(|key| async move { link.run::<i64>(redis::cmd("DEL").arg(key).clone()).await })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }
}

/// The distinct members of `channel` on `hosts`, sorted by user key: (user key, `_public`
/// JSON). A user joined on several hosts is listed once, with the `_public` of the host
/// whose id sorts first. Hosts without an instance (older versions) list nobody.
pub async fn read(
    link: &RedisLink,
    channel: &str,
    hosts: &[HostEntry],
) -> Result<Vec<(String, String)>, RedisError> {
    read_list(link, MemberList::Publishers, channel, hosts).await
}

/// Like [`read`], for `list`.
pub async fn read_list(
    link: &RedisLink,
    list: MemberList,
    channel: &str,
    hosts: &[HostEntry],
) -> Result<Vec<(String, String)>, RedisError> {
    let mut hosts: Vec<&HostEntry> = hosts.iter().filter(|h| !h.instance.is_empty()).collect();
    if hosts.is_empty() {
        return Ok(Vec::new());
    }
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    // Every key carries the channel's hash tag: one slot, one pipeline.
    let mut pipe = redis::pipe();
    for host in &hosts {
        pipe.cmd("HGETALL").arg(list_key(
            list,
            link.key_prefix(),
            channel,
            &host.id,
            &host.instance,
        ));
    }
    let mut conn = link.commands();
    let lists: Vec<HashMap<String, String>> = link.bounded(pipe.query_async(&mut conn)).await?;
    let mut merged = BTreeMap::new();
    for list in lists {
        for (user_key, user) in list {
            merged.entry(user_key).or_insert(user);
        }
    }
    Ok(merged.into_iter().collect())
}
