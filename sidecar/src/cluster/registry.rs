//! The host registry: which chat hosts are alive, how loaded each is, and how many viewers
//! and publishers each has in a channel. The dispatcher ([`crate::dispatcher::join`]) reads it
//! through the [`Directory`] trait, which has two implementations:
//!
//! * [`LocalDirectory`] (memory broker, one host): the only host is this one, its numbers
//!   read straight from the relay's [`NginxWorkers`] and from [`Presence`].
//! * [`RedisDirectory`] (many hosts): every chat host runs a [`Reporter`] that writes its entry
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
//! | `<p>:{<ch>}:members:<id>:<instance>` | hash | who is joined to `<ch>` on the host, for the admin API (see [`crate::cluster::members`]) |
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

use crate::cluster::members::MemberMirror;
use crate::cluster::redis::{RedisError, RedisLink};
use crate::config::HostConfig;
use crate::host::presence::Presence;
use crate::host::relay::NginxWorkers;
use crate::message::now_ms;

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
    /// A random id of this run of the host's sidecar: its member lists
    /// ([`crate::cluster::members`]) are keyed by it, so a restarted host never shows what its
    /// previous run left. Empty in entries of older versions.
    #[serde(default)]
    pub instance: String,
}

/// A publisher joined to a channel, as [`Directory::channel_publishers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedPublisher {
    /// Tells users apart across hosts: `sub:<sub>`, or `public:<_public>` without a `sub`.
    pub key: String,
    /// The user's `_public` object, as JSON text.
    pub user: String,
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

    /// The distinct publishers joined to `channel` on `hosts` (as returned by
    /// [`hosts`](Directory::hosts)), sorted by key; a user joined on several hosts is listed
    /// once. Directories that only count list nobody.
    async fn channel_publishers(
        &self,
        _channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        Ok(Vec::new())
    }
}

/// This host's fixed description, from `[host]` and the HTTP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub id: String,
    pub public_url: String,
    pub sub_path: String,
    pub pub_path: String,
    /// A random id of this run (see [`HostEntry::instance`]).
    pub instance: String,
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
            instance: format!("{:016x}", rand::random::<u64>()),
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
            instance: self.instance.clone(),
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
    pub workers: Arc<NginxWorkers>,
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

    async fn channel_publishers(
        &self,
        channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        let mut members: Vec<JoinedPublisher> = self
            .load
            .presence
            .members(channel)
            .into_iter()
            .map(|(key, user)| JoinedPublisher {
                key: key.to_string(),
                user: user.to_string(),
            })
            .collect();
        members.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(members)
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

    async fn channel_publishers(
        &self,
        channel: &str,
        hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        let members = crate::cluster::members::read(&self.link, channel, hosts).await?;
        Ok(members
            .into_iter()
            .map(|(key, user)| JoinedPublisher { key, user })
            .collect())
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
    /// Who is joined where, mirrored for the admin API's channel stats.
    members: MemberMirror,
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
        let ttl = Duration::from_millis(config.ttl_ms);
        let members = MemberMirror::new(link.key_prefix(), &info.id, &info.instance, ttl);
        Self {
            link,
            keys,
            info,
            load,
            interval: Duration::from_millis(config.report_interval_ms),
            ttl,
            written: HashMap::new(),
            dirty: true,
            failing: false,
            members,
        }
    }

    /// Reports at once, then every interval until `shutdown`; then removes this host's
    /// entry so that dispatchers stop sending clients here before the expiry would.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("registry", host = %self.info.id);
        self.serve(shutdown).instrument(span).await
    }

    async fn serve(mut self, shutdown: CancellationToken) {
        info!(
            interval_ms = self.interval.as_millis() as u64,
            ttl_ms = self.ttl.as_millis() as u64,
            "reporting this host to the registry"
        );
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

    /// Writes the entry, then the counts, then the member lists. After a failure the next
    /// report rewrites the counts and lists in full: Redis may have lost them, or taken only
    /// part.
    pub async fn report(&mut self) -> Result<(), RegistryError> {
        let result = self.write_entry().await;
        let result = match result {
            Ok(()) => self.write_counts().await,
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(()) => {
                let current = self.load.presence.all_members();
                self.members
                    .write(&self.link, current)
                    .await
                    .map_err(RegistryError::from)
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.dirty = true;
            self.members.mark_dirty();
        }
        result
    }

    /// Writes this host's entry and its index member, and prunes long-dead members.
    async fn write_entry(&mut self) -> Result<(), RegistryError> {
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
            // Whatever took it (a Redis restart) took the member lists too.
            self.members.mark_dirty();
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
        self.members.remove_all(&self.link).await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::config::RedisConfig;
    use crate::host::relay::codec::WireCodec;
    use crate::host::relay::{RelayOptions, RelayServer};
    use chatup_wire::{ChannelCount, ToSidecar, ToWorker, PROTOCOL_VERSION};
    use futures_util::{SinkExt, StreamExt};
    use std::process::{Child, Command, Stdio};
    use tokio::net::UnixStream;
    use tokio_util::codec::Framed;
    use tokio_util::task::TaskTracker;

    /// A redis-server of our own on a free loopback port, killed when dropped.
    pub(crate) struct RedisServer {
        child: Child,
        port: u16,
    }

    impl RedisServer {
        /// Panics, saying what to install, when there is no redis-server to run: the tests
        /// that need one must not pass without it.
        pub(crate) fn start() -> Self {
            assert!(
                Command::new("redis-server")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok(),
                "no redis-server on PATH: run scripts/setup (or apt-get install redis-server)"
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port };
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not listen on {port}");
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        pub(crate) async fn link(&self) -> RedisLink {
            let config = RedisConfig {
                url: self.url(),
                timeout_ms: 500,
                ..RedisConfig::default()
            };
            RedisLink::connect(&config).await.unwrap().0
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A host: a relay with one fake nginx worker (whose `Stats` set the viewer counts)
    /// and a presence registry.
    struct Host {
        _dir: tempfile::TempDir,
        worker: Framed<UnixStream, WireCodec<ToWorker, ToSidecar>>,
        presence: Arc<Presence>,
        load: HostLoad,
        shutdown: CancellationToken,
    }

    impl Host {
        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("relay.sock");
            let relay = RelayServer::bind(
                RelayOptions {
                    socket: path.clone(),
                    mode: 0o600,
                    queue_size: 16,
                },
                MemoryBroker::new(MemoryOptions {
                    history_size: 1,
                    ttl: Duration::from_secs(60),
                }),
            )
            .unwrap();
            let workers = relay.workers();
            let shutdown = CancellationToken::new();
            tokio::spawn(relay.run(shutdown.clone(), TaskTracker::new()));
            let mut worker = Framed::new(
                UnixStream::connect(&path).await.unwrap(),
                WireCodec::default(),
            );
            worker
                .send(ToSidecar::Hello {
                    version: PROTOCOL_VERSION,
                    pid: 7,
                })
                .await
                .unwrap();
            let (presence, _) = Presence::new(false);
            let load = HostLoad {
                workers,
                presence: presence.clone(),
            };
            Self {
                _dir: dir,
                worker,
                presence,
                load,
                shutdown,
            }
        }

        /// Sets the worker's viewer counts and waits until the relay has them.
        async fn viewers(&mut self, counts: &[(&str, u32)]) {
            self.worker
                .send(ToSidecar::Stats {
                    subscribers: counts.iter().map(|(_, n)| n).sum(),
                    totals: Default::default(),
                    channels: counts
                        .iter()
                        .map(|(channel, subscribers)| ChannelCount {
                            channel: channel.to_string(),
                            subscribers: *subscribers,
                        })
                        .collect(),
                })
                .await
                .unwrap();
            self.worker
                .send(ToSidecar::Subscribe {
                    channel: "sync".into(),
                    want: 0,
                    since: None,
                })
                .await
                .unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(5), self.worker.next()).await;
            assert!(matches!(answer, Ok(Some(Ok(ToWorker::Backlog { .. })))));
        }

        fn reporter(&self, link: &RedisLink, id: &str, interval_ms: u64, ttl_ms: u64) -> Reporter {
            let config = HostConfig {
                id: id.into(),
                public_url: format!("https://{id}.example"),
                report_interval_ms: interval_ms,
                ttl_ms,
                ..HostConfig::default()
            };
            let info = HostInfo::from_config(&config, SocketAddr::from(([127, 0, 0, 1], 1)));
            Reporter::new(link.clone(), info, self.load.clone(), &config)
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn identity(sub: &str) -> crate::jwt::Identity {
        crate::test_support::identity_of(Some(sub), "{}")
    }

    async fn hash(link: &RedisLink, key: &str) -> HashMap<String, u64> {
        link.run(redis::cmd("HGETALL").arg(key).clone())
            .await
            .unwrap()
    }

    fn ids(hosts: &[HostEntry]) -> Vec<&str> {
        let mut ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn default_id_is_the_hostname_and_port() {
        let info = HostInfo::from_config(
            &HostConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 7009)),
        );
        assert!(
            info.id.ends_with(":7009") && info.id.len() > 5,
            "{}",
            info.id
        );
        let named = HostConfig {
            id: "chat1".into(),
            ..HostConfig::default()
        };
        let info = HostInfo::from_config(&named, SocketAddr::from(([127, 0, 0, 1], 7009)));
        assert_eq!(info.id, "chat1");
    }

    #[tokio::test]
    async fn local_directory_is_this_host_with_summed_counts() {
        let mut host = Host::start().await;
        host.viewers(&[("room", 4), ("other", 1)]).await;
        let ann = identity("ann");
        let mut session = host.presence.connect(&ann);
        session.join(&ann, "room").unwrap();
        let info = HostInfo::from_config(
            &HostConfig {
                id: "solo".into(),
                ..HostConfig::default()
            },
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        let directory = LocalDirectory::new(info, host.load.clone());
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            (
                hosts[0].id.as_str(),
                hosts[0].subscribers,
                hosts[0].publishers
            ),
            ("solo", 5, 1)
        );
        assert_eq!(
            directory.channel_counts("room", &hosts).await.unwrap(),
            ChannelCounts {
                subscribers: 4,
                publishers: 1
            }
        );
        assert_eq!(
            directory.channel_counts("none", &hosts).await.unwrap(),
            ChannelCounts::default()
        );
    }

    #[tokio::test]
    async fn redis_hosts_report_and_counts_sum_over_hosts() {
        let server = RedisServer::start();
        let link = server.link().await;
        let directory = RedisDirectory::new(link.clone());
        assert!(directory.hosts().await.unwrap().is_empty());

        let mut a = Host::start().await;
        let mut b = Host::start().await;
        a.viewers(&[("room", 3), ("a-only", 2)]).await;
        b.viewers(&[("room", 4)]).await;
        let (ann, bo) = (identity("ann"), identity("bo"));
        let mut ann_a = a.presence.connect(&ann);
        let mut ann_b = b.presence.connect(&ann);
        let mut bo_b = b.presence.connect(&bo);
        ann_a.join(&ann, "room").unwrap();
        ann_b.join(&ann, "room").unwrap();
        bo_b.join(&bo, "room").unwrap();

        let mut ra = a.reporter(&link, "host-a", 1000, 3000);
        let mut rb = b.reporter(&link, "host-b", 1000, 3000);
        ra.report().await.unwrap();
        rb.report().await.unwrap();
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(ids(&hosts), ["host-a", "host-b"]);
        let entry_b = hosts.iter().find(|h| h.id == "host-b").unwrap();
        assert_eq!((entry_b.subscribers, entry_b.publishers), (4, 2));
        assert_eq!(entry_b.public_url, "https://host-b.example");
        assert_eq!(
            (entry_b.sub_path.as_str(), entry_b.pub_path.as_str()),
            ("/sub/", "/pub")
        );
        assert!(entry_b.written_ms > 0);
        // ann is counted once per host: 1 on a, 2 (ann, bo) on b.
        assert_eq!(
            directory.channel_counts("room", &hosts).await.unwrap(),
            ChannelCounts {
                subscribers: 7,
                publishers: 3
            }
        );
        assert_eq!(
            hash(&link, "chatup:counts:host-a").await,
            HashMap::from([
                ("s:room".to_string(), 3),
                ("s:a-only".to_string(), 2),
                ("p:room".to_string(), 1)
            ])
        );
        let ttl: i64 = link
            .run(redis::cmd("PTTL").arg("chatup:counts:host-a").clone())
            .await
            .unwrap();
        assert!((1..=3000).contains(&ttl), "{ttl}");
        let ttl: i64 = link
            .run(redis::cmd("PTTL").arg("chatup:{hosts}:host:host-a").clone())
            .await
            .unwrap();
        assert!((1..=3000).contains(&ttl), "{ttl}");

        // Changes go out as changes: a channel that empties loses its fields.
        a.viewers(&[("room", 5)]).await;
        ann_a.leave("room").unwrap();
        ra.report().await.unwrap();
        assert_eq!(
            hash(&link, "chatup:counts:host-a").await,
            HashMap::from([("s:room".to_string(), 5)])
        );
        // A hash lost behind the reporter's back (Redis restarted empty) is written again
        // in full, not just the changes.
        link.run::<i64>(redis::cmd("DEL").arg("chatup:counts:host-a").clone())
            .await
            .unwrap();
        a.viewers(&[("room", 5), ("new", 1)]).await;
        ra.report().await.unwrap();
        assert_eq!(
            hash(&link, "chatup:counts:host-a").await,
            HashMap::from([("s:room".to_string(), 5), ("s:new".to_string(), 1)])
        );
        drop((ann_b, bo_b));
    }

    fn named(sub: &str, name: &str) -> crate::jwt::Identity {
        crate::jwt::Identity {
            sub: Some(sub.into()),
            user: format!(r#"{{"name":"{name}"}}"#).into(),
            events: false,
            expires_at: u64::MAX,
        }
    }

    fn users(list: &[JoinedPublisher]) -> Vec<(&str, &str)> {
        list.iter()
            .map(|p| (p.key.as_str(), p.user.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn member_lists_are_mirrored_per_host_and_merged() {
        let server = RedisServer::start();
        let link = server.link().await;
        let directory = RedisDirectory::new(link.clone());
        let a = Host::start().await;
        let b = Host::start().await;
        let (ann, bo, cy) = (named("1", "ann"), named("2", "bo"), named("3", "cy"));
        let mut ann_a = a.presence.connect(&ann);
        let mut ann_b = b.presence.connect(&ann);
        let mut bo_b = b.presence.connect(&bo);
        let mut cy_a = a.presence.connect(&cy);
        ann_a.join(&ann, "room").unwrap();
        ann_b.join(&ann, "room").unwrap();
        bo_b.join(&bo, "room").unwrap();
        cy_a.join(&cy, "elsewhere").unwrap();
        let mut ra = a.reporter(&link, "host-a", 1000, 3000);
        let mut rb = b.reporter(&link, "host-b", 1000, 3000);
        ra.report().await.unwrap();
        rb.report().await.unwrap();
        let hosts = directory.hosts().await.unwrap();
        assert!(hosts.iter().all(|h| h.instance.len() == 16), "{hosts:?}");
        // ann is joined on both hosts and listed once.
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [
                ("sub:1", r#"{"name":"ann"}"#),
                ("sub:2", r#"{"name":"bo"}"#)
            ]
        );
        assert_eq!(
            users(
                &directory
                    .channel_publishers("elsewhere", &hosts)
                    .await
                    .unwrap()
            ),
            [("sub:3", r#"{"name":"cy"}"#)]
        );
        assert!(directory
            .channel_publishers("none", &hosts)
            .await
            .unwrap()
            .is_empty());
        let key_a = crate::cluster::members::key("chatup", "room", "host-a", &ra.info.instance);
        let ttl: i64 = link
            .run(redis::cmd("PTTL").arg(&key_a).clone())
            .await
            .unwrap();
        assert!((50_000..=60_000).contains(&ttl), "{ttl}");

        // Changes go out: bo leaves; a channel that empties loses its hash.
        drop(bo_b);
        drop(cy_a);
        rb.report().await.unwrap();
        ra.report().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [("sub:1", r#"{"name":"ann"}"#)]
        );
        let elsewhere =
            crate::cluster::members::key("chatup", "elsewhere", "host-a", &ra.info.instance);
        let exists: i64 = link
            .run(redis::cmd("EXISTS").arg(&elsewhere).clone())
            .await
            .unwrap();
        assert_eq!(exists, 0);

        // Redis loses everything (a restart without persistence): the next reports write
        // the lists again in full, not only changes.
        link.run::<()>(redis::cmd("FLUSHALL").clone())
            .await
            .unwrap();
        let dan = named("4", "dan");
        let mut dan_b = b.presence.connect(&dan);
        dan_b.join(&dan, "room").unwrap();
        ra.report().await.unwrap();
        rb.report().await.unwrap();
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [
                ("sub:1", r#"{"name":"ann"}"#),
                ("sub:4", r#"{"name":"dan"}"#)
            ]
        );

        // host-a restarts under the same id, nobody joined yet: its old list is not read.
        let mut ra_again = Host::start().await.reporter(&link, "host-a", 1000, 3000);
        assert_ne!(ra_again.info.instance, ra.info.instance);
        ra_again.report().await.unwrap();
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [
                ("sub:1", r#"{"name":"ann"}"#),
                ("sub:4", r#"{"name":"dan"}"#)
            ],
            "ann is still on host-b"
        );
        drop(ann_b);
        rb.report().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [("sub:4", r#"{"name":"dan"}"#)],
            "host-a's previous run is not read"
        );

        // A host that stops removes its lists.
        let key_b = crate::cluster::members::key("chatup", "room", "host-b", &rb.info.instance);
        rb.deregister().await.unwrap();
        let exists: i64 = link
            .run(redis::cmd("EXISTS").arg(&key_b).clone())
            .await
            .unwrap();
        assert_eq!(exists, 0);
        drop((ann_a, dan_b));
    }

    #[tokio::test]
    async fn the_local_directory_lists_this_hosts_members() {
        let host = Host::start().await;
        let (ann, bo) = (named("1", "ann"), named("2", "bo"));
        let mut s1 = host.presence.connect(&bo);
        let mut s2 = host.presence.connect(&ann);
        s1.join(&bo, "room").unwrap();
        s2.join(&ann, "room").unwrap();
        let info = HostInfo::from_config(
            &HostConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        let directory = LocalDirectory::new(info, host.load.clone());
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [
                ("sub:1", r#"{"name":"ann"}"#),
                ("sub:2", r#"{"name":"bo"}"#)
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_host_vanishes_and_a_stopping_one_leaves_at_once() {
        let server = RedisServer::start();
        let link = server.link().await;
        let directory = RedisDirectory::new(link.clone());
        let a = Host::start().await;
        let b = Host::start().await;
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let task_a = tokio::spawn(a.reporter(&link, "a", 100, 400).run(stop_a.clone()));
        let task_b = tokio::spawn(b.reporter(&link, "b", 100, 400).run(stop_b.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while directory.hosts().await.unwrap().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "both hosts report");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reports keep the entries alive well past their expiry.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(ids(&directory.hosts().await.unwrap()), ["a", "b"]);

        // a dies without a word: gone within its ttl.
        task_a.abort();
        let died = tokio::time::Instant::now();
        while directory.hosts().await.unwrap().len() > 1 {
            assert!(died.elapsed() < Duration::from_secs(2), "a expires");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            died.elapsed() <= Duration::from_millis(1000),
            "{:?}",
            died.elapsed()
        );
        assert_eq!(ids(&directory.hosts().await.unwrap()), ["b"]);

        // b shuts down: it removes itself.
        stop_b.cancel();
        tokio::time::timeout(Duration::from_secs(5), task_b)
            .await
            .unwrap()
            .unwrap();
        assert!(directory.hosts().await.unwrap().is_empty());
        let members: Vec<String> = link
            .run(
                redis::cmd("ZRANGE")
                    .arg("chatup:{hosts}:index")
                    .arg(0)
                    .arg(-1)
                    .clone(),
            )
            .await
            .unwrap();
        // b's member went with it; a's stays until it is older than the grace period.
        assert_eq!(members, ["a"]);
        drop(stop_a);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_and_reporting_recovers() {
        let mut server = RedisServer::start();
        let link = server.link().await;
        let directory = RedisDirectory::new(link.clone());
        let mut host = Host::start().await;
        host.viewers(&[("room", 1)]).await;
        let mut reporter = host.reporter(&link, "h", 1000, 3000);
        reporter.report().await.unwrap();
        assert!(!reporter.dirty);
        server.kill();
        assert!(matches!(
            directory.hosts().await,
            Err(RegistryError::Unavailable(_))
        ));
        assert!(reporter.report().await.is_err());
        assert!(reporter.dirty);
        // Back on the same port, empty: the next report writes everything again.
        let port = server.port;
        let restarted = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = RedisServer {
            child: restarted,
            port,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while reporter.report().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "reporting recovers");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ids(&directory.hosts().await.unwrap()), ["h"]);
        assert_eq!(
            hash(&link, "chatup:counts:h").await,
            HashMap::from([("s:room".to_string(), 1)])
        );
        drop(server);
    }

    /// Three redis-server masters formed into a cluster with redis-cli; killed when dropped.
    struct RedisCluster {
        nodes: Vec<RedisServer>,
        _dir: tempfile::TempDir,
    }

    impl RedisCluster {
        /// Panics, saying what to install, without redis-cli or redis-server.
        fn start() -> Self {
            assert!(
                Command::new("redis-cli")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok(),
                "no redis-cli on PATH: run scripts/setup (or apt-get install redis-tools)"
            );
            RedisServer::start(); // only to check that redis-server is there
            let dir = tempfile::tempdir().unwrap();
            let mut nodes = Vec::new();
            for i in 0..3 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(&conf)
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                nodes.push(RedisServer { child, port });
            }
            for node in &nodes {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
                    assert!(std::time::Instant::now() < deadline, "node listens");
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
            let created = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
                .arg("--cluster-yes")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(created.success(), "redis-cli --cluster create");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let ok = nodes.iter().all(|n| {
                    Command::new("redis-cli")
                        .args(["-p", &n.port.to_string(), "cluster", "info"])
                        .output()
                        .is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                        })
                });
                if ok {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the cluster forms");
                std::thread::sleep(Duration::from_millis(50));
            }
            Self { nodes, _dir: dir }
        }

        async fn link(&self) -> RedisLink {
            let config = RedisConfig {
                cluster_nodes: self.nodes.iter().map(RedisServer::url).collect(),
                timeout_ms: 1000,
                ..RedisConfig::default()
            };
            RedisLink::connect(&config).await.unwrap().0
        }
    }

    #[tokio::test]
    async fn the_registry_works_on_a_redis_cluster() {
        let cluster = RedisCluster::start();
        let link = cluster.link().await;
        assert!(link.is_cluster());
        let directory = RedisDirectory::new(link.clone());
        // Enough hosts that their count hashes sit on different nodes.
        let mut hosts = Vec::new();
        for i in 0..6 {
            let mut host = Host::start().await;
            host.viewers(&[("room", i + 1)]).await;
            let mut reporter = host.reporter(&link, &format!("host-{i}"), 1000, 3000);
            reporter.report().await.unwrap();
            // Again, now as changes.
            host.viewers(&[("room", i + 1), ("more", 1)]).await;
            reporter.report().await.unwrap();
            hosts.push((host, reporter));
        }
        let live = directory.hosts().await.unwrap();
        assert_eq!(live.len(), 6);
        assert_eq!(
            directory.channel_counts("room", &live).await.unwrap(),
            ChannelCounts {
                subscribers: 21,
                publishers: 0
            }
        );
        assert_eq!(
            directory
                .channel_counts("more", &live)
                .await
                .unwrap()
                .subscribers,
            6
        );
        for (_, reporter) in &hosts {
            reporter.deregister().await.unwrap();
        }
        assert!(directory.hosts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn member_lists_work_on_a_redis_cluster() {
        let cluster = RedisCluster::start();
        let link = cluster.link().await;
        let directory = RedisDirectory::new(link.clone());
        // Channels in different slots, users on several hosts.
        let channels: Vec<String> = (0..8).map(|i| format!("room{i}")).collect();
        let mut running = Vec::new();
        for h in 0..3 {
            let host = Host::start().await;
            let mut sessions = Vec::new();
            for u in 0..4 {
                let who = named(&format!("u{u}"), &format!("user{u}"));
                let mut session = host.presence.connect(&who);
                for channel in channels.iter().skip(h) {
                    session.join(&who, channel).unwrap();
                }
                sessions.push(session);
            }
            let mut reporter = host.reporter(&link, &format!("host-{h}"), 1000, 3000);
            reporter.report().await.unwrap();
            running.push((host, sessions, reporter));
        }
        let live = directory.hosts().await.unwrap();
        assert_eq!(live.len(), 3);
        for channel in &channels {
            let listed = directory.channel_publishers(channel, &live).await.unwrap();
            assert_eq!(
                listed.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
                ["sub:u0", "sub:u1", "sub:u2", "sub:u3"],
                "{channel}"
            );
        }
        // Leaving everywhere, as changes.
        for (_, sessions, reporter) in &mut running {
            sessions.clear();
            reporter.report().await.unwrap();
        }
        for channel in &channels {
            assert!(directory
                .channel_publishers(channel, &live)
                .await
                .unwrap()
                .is_empty());
        }
    }
}
