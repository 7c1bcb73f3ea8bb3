//! The host registry: which chat hosts are alive, how loaded each is, and how many viewers
//! and publishers each has in a channel. The dispatcher ([`crate::dispatcher::join`]) reads it
//! through the [`Directory`] trait, which has two implementations:
//!
//! * [`LocalDirectory`] (memory broker, one host): the only host is this one, its numbers
//!   read straight from its [`HostLoadSource`].
//! * [`RedisDirectory`] (many hosts): every chat host runs a [`Reporter`] that writes its entry
//!   and channel counts to Redis every `host.report_interval_ms`, with an expiry of
//!   `host.ttl_ms`, so a host that stops reporting vanishes within that time. No `KEYS` or
//!   `SCAN` anywhere. The keys and how liveness is decided: [`redis_directory`].
//!
//! The files:
//!
//! * this one: what the dispatcher and admin API see ([`Directory`], [`HostEntry`],
//!   [`ChannelCounts`], [`JoinedPublisher`], [`RegistryError`]) and this host's fixed
//!   description ([`HostInfo`]);
//! * [`load`]: what the registry reads of this host's load ([`HostLoadSource`]), implemented
//!   by the chat host ([`crate::host::load`]);
//! * [`local`]: [`LocalDirectory`], this host alone;
//! * [`redis_directory`]: the Redis keys and [`RedisDirectory`], which reads them;
//! * [`reporter`]: [`Reporter`], which writes them.

pub mod load;
pub mod local;
pub mod redis_directory;
pub mod reporter;
#[cfg(test)]
pub(crate) mod tests;

use std::net::SocketAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cluster::redis::RedisError;
use crate::config::HostConfig;
use crate::message::now_ms;

pub use load::HostLoadSource;
pub use local::LocalDirectory;
pub use redis_directory::{RedisDirectory, INDEX_GRACE_MS};
pub use reporter::Reporter;

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

    /// The distinct viewers admitted to the private `channel` on `hosts`, sorted by key
    /// (`sub:<sub>`), each `user` a `{"sub":…,"user":<_public>}` object.
    async fn channel_viewers(
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

    /// This host's entry as `load` has it now.
    fn entry(&self, load: &dyn HostLoadSource) -> HostEntry {
        HostEntry {
            id: self.id.clone(),
            public_url: self.public_url.clone(),
            sub_path: self.sub_path.clone(),
            pub_path: self.pub_path.clone(),
            subscribers: load.total_subscribers(),
            publishers: load.total_publishers(),
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
