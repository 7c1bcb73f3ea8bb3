//! The registry in Redis: the key layout, and [`RedisDirectory`], which reads what every
//! host's [`Reporter`](super::Reporter) writes.
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

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use tracing::warn;

use crate::cluster::redis::RedisLink;
use crate::message::now_ms;

use super::{ChannelCounts, Directory, HostEntry, JoinedPublisher, RegistryError};
use crate::cluster::members::MemberList;

/// How far in the past an index score may be for its member still to be looked up (and how
/// old it must be to be pruned): the clock skew between hosts that is tolerated.
pub const INDEX_GRACE_MS: u64 = 60_000;

/// The Redis key names.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `redis.key_prefix`.
    prefix: Arc<str>,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub(super) fn index(&self) -> String {
        format!("{}:{{hosts}}:index", self.prefix)
    }

    pub(super) fn host(&self, id: &str) -> String {
        format!("{}:{{hosts}}:host:{id}", self.prefix)
    }

    pub(super) fn counts(&self, id: &str) -> String {
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
        let keys = Keys::new(link.key_prefix());
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

    async fn channel_viewers(
        &self,
        channel: &str,
        hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        let viewers =
            crate::cluster::members::read_list(&self.link, MemberList::Viewers, channel, hosts)
                .await?;
        Ok(viewers
            .into_iter()
            .map(|(key, user)| JoinedPublisher { key, user })
            .collect())
    }
}
