//! The host registry: which chat hosts are alive, how loaded each is, and how many viewers
//! and publishers each has in a channel. The dispatcher ([`crate::dispatch`]) reads it
//! through the [`Directory`] trait, which has two implementations:
//!
//! * [`LocalDirectory`] (memory broker, one host): the only host is this one, its numbers
//!   read straight from the relay's [`Workers`] and from [`Presence`].
//! * [`RedisDirectory`] (many hosts): every worker runs a [`Reporter`] that writes its entry
//!   and channel counts to Redis every `host.report_interval_ms`, with an expiry of
//!   `host.ttl_ms`, so a host that stops reporting vanishes within that time. No `KEYS` or
//!   `SCAN` anywhere.
//!
//! Redis keys (`<p>` is `redis.key_prefix`):
//!
//! | key | type | what |
//! |-----|------|------|
//! | `<p>:{hosts}:index` | sorted set | member: host id; score: when its entry expires (ms since the Unix epoch, the writer's clock) |
//! | `<p>:{hosts}:host:<id>` | string, `PX host.ttl_ms` | the host's [`HostEntry`] as JSON |
//! | `<p>:counts:<id>` | hash, `PEXPIRE host.ttl_ms` | `s:<ch>` viewers and `p:<ch>` publishers of the host in channel `<ch>` (absent when 0) |
//!
//! The index and the entries share the hash tag `{hosts}`, so in a Redis Cluster they are in
//! one slot and a reporter writes them in one pipeline. Each host's count hash is one key,
//! written in its own pipeline (a pipeline never spans slots).
//!
//! Liveness is decided by Redis alone: an entry whose `PX` has run out is gone from `MGET`,
//! whatever the clocks of the hosts say. The index score only tells which members are worth
//! asking for; readers take members whose score is at most [`INDEX_GRACE_MS`] in the past,
//! and reporters prune those older than that, so hosts' clocks may disagree by up to that
//! much without a live host being skipped.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::HostConfig;
use crate::message::now_ms;
use crate::presence::Presence;
use crate::redis::{RedisError, RedisLink};
use crate::relay::Workers;

/// How far in the past an index score may be for its member still to be looked up (and how
/// old it must be to be pruned): the clock skew between hosts that is tolerated.
pub const INDEX_GRACE_MS: u64 = 60_000;

/// Fields per `HSET` when a host's counts are written in full.
const HSET_CHUNK: usize = 512;

/// Why the registry cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Redis is down, slow, or refused a command.
    #[error("the host registry is unavailable: {0}")]
    Unavailable(String),
}

impl From<RedisError> for RegistryError {
    fn from(e: RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// What a host is and how loaded it is, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Unique among hosts (`host.id`); what clients name in `exclude`.
    pub id: String,
    /// Base URL of the host's nginx (`host.public_url`); empty: the dispatcher's origin.
    pub public_url: String,
    /// Where nginx mounts the subscriber endpoint (`host.sub_path`).
    pub sub_path: String,
    /// Where nginx mounts the publisher endpoints (`host.pub_path`).
    pub pub_path: String,
    /// Viewer connections on the host's nginx workers.
    pub subscribers: u64,
    /// Authenticated publisher sessions on the host's sidecar.
    pub publishers: u64,
    /// When the entry was written (ms since the Unix epoch): lets a dispatcher tell a fresh
    /// report from the one it already scored.
    pub written_ms: u64,
}

/// A channel's audience, summed over live hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Viewers (subscriber connections in nginx).
    pub subscribers: u64,
    /// Distinct publishers joined, per host (a user joined on two hosts counts twice).
    pub publishers: u64,
}

/// Where the dispatcher finds hosts and channel counts.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// A short name for logs (`local`, `redis`).
    fn name(&self) -> &'static str;

    /// The live hosts, in no particular order.
    async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError>;

    /// `channel`'s viewers and publishers summed over `hosts` (as returned by
    /// [`hosts`](Directory::hosts)).
    async fn channel_counts(
        &self,
        channel: &str,
        hosts: &[HostEntry],
    ) -> Result<ChannelCounts, RegistryError>;
}

/// This host's fixed description, from `[host]` and the HTTP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub id: String,
    pub public_url: String,
    pub sub_path: String,
    pub pub_path: String,
}

impl HostInfo {
    /// `[host]`, with the id defaulting to `<machine hostname>:<http port>`.
    pub fn from_config(config: &HostConfig, http: SocketAddr) -> Self {
        let id = if config.id.is_empty() {
            format!("{}:{}", machine_hostname(), http.port())
        } else {
            config.id.clone()
        };
        Self {
            id,
            public_url: config.public_url.clone(),
            sub_path: config.sub_path.clone(),
            pub_path: config.pub_path.clone(),
        }
    }

    fn entry(&self, load: &HostLoad) -> HostEntry {
        HostEntry {
            id: self.id.clone(),
            public_url: self.public_url.clone(),
            sub_path: self.sub_path.clone(),
            pub_path: self.pub_path.clone(),
            subscribers: load.workers.total_subscribers(),
            publishers: load.presence.total(),
            written_ms: now_ms(),
        }
    }
}

/// The machine's hostname, `localhost` when it cannot be read.
fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where this host's numbers come from.
#[derive(Clone)]
pub struct HostLoad {
    /// Viewer counts, from the nginx workers' `Stats`.
    pub workers: Arc<Workers>,
    /// Publisher sessions and joined users.
    pub presence: Arc<Presence>,
}

impl HostLoad {
    /// One channel's numbers on this host.
    pub fn channel(&self, channel: &str) -> ChannelCounts {
        let subscribers = self
            .workers
            .snapshot()
            .iter()
            .flat_map(|w| &w.channels)
            .filter(|c| c.channel == channel)
            .map(|c| u64::from(c.subscribers))
            .sum();
        ChannelCounts {
            subscribers,
            publishers: self.presence.publishers(channel),
        }
    }

    /// Every channel with viewers or publishers on this host, as count-hash fields:
    /// `s:<ch>` and `p:<ch>`, zeros left out.
    fn fields(&self) -> HashMap<String, u64> {
        let mut fields = HashMap::new();
        for worker in self.workers.snapshot() {
            for c in worker.channels {
                if c.subscribers > 0 {
                    *fields.entry(format!("s:{}", c.channel)).or_insert(0) +=
                        u64::from(c.subscribers);
                }
            }
        }
        for (channel, users) in self.presence.snapshot() {
            if users > 0 {
                fields.insert(format!("p:{channel}"), users);
            }
        }
        fields
    }
}

/// One host, this one: for the memory broker.
pub struct LocalDirectory {
    /// This host's description.
    info: HostInfo,
    /// Its numbers.
    load: HostLoad,
}

impl LocalDirectory {
    pub fn new(info: HostInfo, load: HostLoad) -> Self {
        Self { info, load }
    }
}

#[async_trait]
impl Directory for LocalDirectory {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
        Ok(vec![self.info.entry(&self.load)])
    }

    async fn channel_counts(
        &self,
        channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<ChannelCounts, RegistryError> {
        Ok(self.load.channel(channel))
    }
}

/// The Redis key names.
#[derive(Debug, Clone)]
struct Keys {
    /// `redis.key_prefix`.
    prefix: Arc<str>,
}

impl Keys {
    fn index(&self) -> String {
        format!("{}:{{hosts}}:index", self.prefix)
    }

    fn host(&self, id: &str) -> String {
        format!("{}:{{hosts}}:host:{id}", self.prefix)
    }

    fn counts(&self, id: &str) -> String {
        format!("{}:counts:{id}", self.prefix)
    }
}

/// The hosts that report to Redis.
pub struct RedisDirectory {
    /// Commands, bounded by `redis.timeout_ms`.
    link: RedisLink,
    /// Key names under the prefix.
    keys: Keys,
}

impl RedisDirectory {
    pub fn new(link: RedisLink) -> Self {
        let keys = Keys {
            prefix: link.key_prefix().into(),
        };
        Self { link, keys }
    }
}

#[async_trait]
impl Directory for RedisDirectory {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
        let since = now_ms().saturating_sub(INDEX_GRACE_MS);
        let ids: Vec<String> = self
            .link
            .run(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.index())
                    .arg(since)
                    .arg("+inf")
                    .clone(),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in &ids {
            mget.arg(self.keys.host(id));
        }
        let entries: Vec<Option<String>> = self.link.run(mget).await?;
        let mut hosts = Vec::with_capacity(entries.len());
        for (id, json) in ids.iter().zip(entries) {
            // None: the entry expired, the host is dead (its index member is pruned later).
            let Some(json) = json else { continue };
            match serde_json::from_str::<HostEntry>(&json) {
                Ok(entry) => hosts.push(entry),
                Err(e) => warn!(host = id, "ignoring an unreadable host entry: {e}"),
            }
        }
        Ok(hosts)
    }

    async fn channel_counts(
        &self,
        channel: &str,
        hosts: &[HostEntry],
    ) -> Result<ChannelCounts, RegistryError> {
        // One key per host, so one command each (they may live on different cluster nodes);
        // they run concurrently on the multiplexed connection.
        let s = format!("s:{channel}");
        let p = format!("p:{channel}");
        let calls = hosts.iter().map(|host| {
            let cmd = redis::cmd("HMGET")
                .arg(self.keys.counts(&host.id))
                .arg(&s)
                .arg(&p)
                .clone();
            self.link.run::<(Option<u64>, Option<u64>)>(cmd)
        });
        let mut total = ChannelCounts::default();
        for result in join_all(calls).await {
            let (subscribers, publishers) = result?;
            total.subscribers += subscribers.unwrap_or(0);
            total.publishers += publishers.unwrap_or(0);
        }
        Ok(total)
    }
}

/// Writes this host's entry and channel counts to Redis periodically.
pub struct Reporter {
    /// Commands, bounded by `redis.timeout_ms`.
    link: RedisLink,
    /// Key names under the prefix.
    keys: Keys,
    /// What this host is.
    info: HostInfo,
    /// Where its numbers come from.
    load: HostLoad,
    /// `host.report_interval_ms`.
    interval: Duration,
    /// `host.ttl_ms`: the expiry of everything written.
    ttl: Duration,
    /// The count fields as last written successfully; the next report sends only changes.
    written: HashMap<String, u64>,
    /// Whether Redis may not hold `written` (first report, or a failure since): the next
    /// report rewrites the count hash in full.
    dirty: bool,
    /// Whether the last report failed, to log failure and recovery once each.
    failing: bool,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("host", &self.info.id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(link: RedisLink, info: HostInfo, load: HostLoad, config: &HostConfig) -> Self {
        let keys = Keys {
            prefix: link.key_prefix().into(),
        };
        Self {
            link,
            keys,
            info,
            load,
            interval: Duration::from_millis(config.report_interval_ms),
            ttl: Duration::from_millis(config.ttl_ms),
            written: HashMap::new(),
            dirty: true,
            failing: false,
        }
    }

    /// Reports at once, then every interval until `shutdown`; then removes this host's
    /// entry so that dispatchers stop sending clients here before the expiry would.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("registry", host = %self.info.id);
        self.serve(shutdown).instrument(span).await
    }

    async fn serve(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.report().await {
                Ok(()) if self.failing => {
                    self.failing = false;
                    info!("host registry reachable again; reporting");
                }
                Ok(()) => {}
                Err(e) => {
                    self.dirty = true;
                    if !self.failing {
                        self.failing = true;
                        warn!("cannot report this host's load: {e}");
                    } else {
                        debug!("cannot report this host's load: {e}");
                    }
                }
            }
        }
        match self.deregister().await {
            Ok(()) => info!("removed this host from the registry"),
            Err(e) => {
                warn!("cannot remove this host from the registry (it expires by itself): {e}")
            }
        }
    }

    /// Writes the entry, then the counts.
    pub async fn report(&mut self) -> Result<(), RegistryError> {
        let entry = self.info.entry(&self.load);
        let json = serde_json::to_string(&entry)
            .map_err(|e| RegistryError::Unavailable(format!("cannot encode the entry: {e}")))?;
        let ttl_ms = self.ttl.as_millis() as u64;
        let now = now_ms();
        // All three keys carry the {hosts} tag: one slot, one pipeline.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.host(&self.info.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.index())
            .arg(now + ttl_ms)
            .arg(&self.info.id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.index())
            .arg("-inf")
            .arg(format!("({}", now.saturating_sub(INDEX_GRACE_MS)))
            .ignore();
        let mut conn = self.link.commands();
        self.link.bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.write_counts().await
    }

    /// Sends the count changes since the last report, or everything when Redis may have
    /// lost them.
    async fn write_counts(&mut self) -> Result<(), RegistryError> {
        let current = self.load.fields();
        if self.dirty {
            return self.rewrite_counts(current).await;
        }
        let key = self.keys.counts(&self.info.id);
        let ttl_ms = self.ttl.as_millis() as u64;
        let changed: Vec<(&String, &u64)> = current
            .iter()
            .filter(|(field, value)| self.written.get(*field) != Some(value))
            .collect();
        let removed: Vec<&String> = self
            .written
            .keys()
            .filter(|field| !current.contains_key(*field))
            .collect();
        let mut pipe = redis::pipe();
        // Whether the hash still exists, before anything recreates it.
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms);
        for chunk in changed.chunks(HSET_CHUNK) {
            let hset = pipe.cmd("HSET").arg(&key);
            for (field, value) in chunk {
                hset.arg(field.as_str()).arg(**value);
            }
            hset.ignore();
        }
        for chunk in removed.chunks(HSET_CHUNK) {
            pipe.cmd("HDEL").arg(&key).arg(chunk).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        let mut conn = self.link.commands();
        let (existed,): (i64,) = self.link.bounded(pipe.query_async(&mut conn)).await?;
        if existed == 0 && !self.written.is_empty() {
            // The hash expired or Redis lost it (a restart without persistence): what was
            // just written is only the changes. Write it all.
            debug!("the count hash was gone; rewriting it");
            return self.rewrite_counts(current).await;
        }
        self.written = current;
        Ok(())
    }

    /// Replaces the count hash with `current`, atomically.
    async fn rewrite_counts(&mut self, current: HashMap<String, u64>) -> Result<(), RegistryError> {
        let key = self.keys.counts(&self.info.id);
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        let fields: Vec<(&String, &u64)> = current.iter().collect();
        for chunk in fields.chunks(HSET_CHUNK) {
            let hset = pipe.cmd("HSET").arg(&key);
            for (field, value) in chunk {
                hset.arg(field.as_str()).arg(**value);
            }
            hset.ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        let mut conn = self.link.commands();
        self.link.bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.written = current;
        self.dirty = false;
        Ok(())
    }

    /// Removes this host's entry, index member and counts.
    async fn deregister(&self) -> Result<(), RegistryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.host(&self.info.id))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.index())
            .arg(&self.info.id)
            .ignore();
        let mut conn = self.link.commands();
        self.link.bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.link
            .run::<i64>(
                redis::cmd("DEL")
                    .arg(self.keys.counts(&self.info.id))
                    .clone(),
            )
            .await?;
        Ok(())
    }
}
