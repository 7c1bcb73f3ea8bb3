//! [`Reporter`]: writes this host's entry, channel counts and member lists to Redis, where
//! [`RedisDirectory`](super::RedisDirectory) reads them (the keys:
//! [`redis_directory`](super::redis_directory)).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::cluster::members::{MemberList, MemberMirror};
use crate::cluster::redis::RedisLink;
use crate::config::HostConfig;
use crate::message::now_ms;

use super::redis_directory::Keys;
use super::{HostInfo, HostLoadSource, RegistryError, INDEX_GRACE_MS};

/// Fields per `HSET` when a host's counts are written in full.
const HSET_CHUNK: usize = 512;

/// Writes this host's entry and channel counts to Redis periodically.
pub struct Reporter {
    /// Commands, bounded by `redis.timeout_ms`.
    link: RedisLink,
    /// Key names under the prefix.
    keys: Keys,
    /// What this host is.
    info: HostInfo,
    /// Where its numbers come from.
    load: Arc<dyn HostLoadSource>,
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
    /// Who watches which private channel, mirrored the same way.
    viewers: MemberMirror,
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
    pub fn new(
        link: RedisLink,
        info: HostInfo,
        load: Arc<dyn HostLoadSource>,
        config: &HostConfig,
    ) -> Self {
        let keys = Keys::new(link.key_prefix());
        let ttl = Duration::from_millis(config.ttl_ms);
        let members = MemberMirror::new(link.key_prefix(), &info.id, &info.instance, ttl);
        let viewers = MemberMirror::of(
            MemberList::Viewers,
            link.key_prefix(),
            &info.id,
            &info.instance,
            ttl,
        );
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
            viewers,
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
                let current = self.load.all_members();
                self.members
                    .write(&self.link, current)
                    .await
                    .map_err(RegistryError::from)
            }
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(()) => {
                let current = self.load.all_viewers();
                self.viewers
                    .write(&self.link, current)
                    .await
                    .map_err(RegistryError::from)
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.dirty = true;
            self.members.mark_dirty();
            self.viewers.mark_dirty();
        }
        result
    }

    /// Writes this host's entry and its index member, and prunes long-dead members.
    async fn write_entry(&mut self) -> Result<(), RegistryError> {
        let entry = self.info.entry(self.load.as_ref());
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
        let current = count_fields(self.load.as_ref());
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
        self.viewers.remove_all(&self.link).await?;
        Ok(())
    }
}

/// Every channel with viewers or publishers on this host, as count-hash fields: `s:<ch>`
/// and `p:<ch>`, zeros left out.
fn count_fields(load: &dyn HostLoadSource) -> HashMap<String, u64> {
    let mut fields = HashMap::new();
    for (channel, counts) in load.channels() {
        if counts.subscribers > 0 {
            fields.insert(format!("s:{channel}"), counts.subscribers);
        }
        if counts.publishers > 0 {
            fields.insert(format!("p:{channel}"), counts.publishers);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cluster::registry::tests::{
        hash, identity, ids, named, users, Host, RedisCluster, RedisServer,
    };
    use crate::cluster::registry::{ChannelCounts, Directory, RedisDirectory};

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
