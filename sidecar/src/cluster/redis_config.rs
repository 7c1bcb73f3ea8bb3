//! `[redis]`: where the Redis server, cluster or sentinels are ([`crate::cluster::redis`]).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Redis, for many hosts: one server (`url`), a Redis Cluster (`cluster_nodes`) or a
/// primary watched by Redis Sentinel (`sentinels`). With none set the sidecar uses its
/// in-process memory broker and serves one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis server: `redis://[[user]:password@]host[:port][/db]` or
    /// `unix:///path/to/redis.sock`. TLS is not built in: reach a remote TLS-only Redis
    /// through a local tunnel.
    pub url: String,
    /// Seed nodes of a Redis Cluster (same URL form). When set, channels use sharded
    /// pub/sub (SPUBLISH/SSUBSCRIBE) so a message travels only within its channel's shard.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel nodes (`redis://[:password@]host:26379`) watching the primary named
    /// `sentinel_master`. The sidecar asks them where the primary is and moves to the new
    /// one when they promote a replica.
    pub sentinels: Vec<String>,
    /// The name the sentinels know the primary by (`sentinel monitor <name> ...`).
    pub sentinel_master: String,
    /// The password of the primary and its replicas, with `sentinels` (for `url` and
    /// `cluster_nodes` it is part of the URLs).
    pub password: String,
    /// Prefix of every key and pub/sub channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// How long a Redis command may take; past it a publish fails with `unavailable`
    /// instead of hanging the publisher.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
            password: String::new(),
            key_prefix: "chatup".into(),
            timeout_ms: 1000,
        }
    }
}

impl RedisConfig {
    /// Whether Redis is configured at all (otherwise: memory broker).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.cluster_nodes.is_empty() || !self.sentinels.is_empty()
    }

    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let redis_url = |key: &str, url: &str| {
            if ["redis://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    key,
                    format!(
                        "{url:?} is not a Redis URL (redis://host:port or unix:///path; \
                         rediss:// is not supported, use a local TLS tunnel)"
                    ),
                ))
            }
        };
        let kinds = [
            !self.url.is_empty(),
            !self.cluster_nodes.is_empty(),
            !self.sentinels.is_empty(),
        ];
        if kinds.iter().filter(|set| **set).count() > 1 {
            return Err(ConfigError::invalid(
                "redis",
                "set one of redis.url (one server), redis.cluster_nodes (a cluster) or \
                 redis.sentinels (a primary watched by Redis Sentinel)",
            ));
        }
        if !self.url.is_empty() {
            redis_url("redis.url", &self.url)?;
        }
        for node in &self.cluster_nodes {
            redis_url("redis.cluster_nodes", node)?;
        }
        for node in &self.sentinels {
            redis_url("redis.sentinels", node)?;
            if !node.starts_with("redis://") {
                return Err(ConfigError::invalid(
                    "redis.sentinels",
                    format!("{node:?}: sentinels are reached over TCP (redis://host:26379)"),
                ));
            }
        }
        if !self.sentinels.is_empty() && self.sentinel_master.is_empty() {
            return Err(ConfigError::invalid(
                "redis.sentinel_master",
                "the name the sentinels know the primary by is needed with redis.sentinels",
            ));
        }
        if self.sentinels.is_empty()
            && (!self.sentinel_master.is_empty() || !self.password.is_empty())
        {
            return Err(ConfigError::invalid(
                if self.password.is_empty() {
                    "redis.sentinel_master"
                } else {
                    "redis.password"
                },
                "only used with redis.sentinels (put a password in redis.url or \
                 redis.cluster_nodes)",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError::invalid(
                "redis.key_prefix",
                "must be non-empty, without spaces or braces (braces are Redis Cluster hash tags)",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "redis.timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, load_sets as load};

    #[test]
    fn redis_settings_are_checked() {
        let c = load(&["redis.url=redis://10.0.0.5:6379", "host.id=chat-1.eu:7001"]).unwrap();
        assert!(c.redis.enabled());
        assert!(!load(&[]).unwrap().redis.enabled());
        let sentinel = load(&[
            "redis.sentinels=redis://10.0.0.1:26379,redis://10.0.0.2:26379",
            "redis.sentinel_master=chat",
            "redis.password=pw",
        ])
        .unwrap();
        assert!(sentinel.redis.enabled());
        assert_eq!(sentinel.redis.sentinels.len(), 2);
        assert_refused(&[
            (&["redis.url=http://x"], "not a Redis URL"),
            (&["redis.url=rediss://x"], "TLS tunnel"),
            (
                &["redis.url=redis://a", "redis.cluster_nodes=redis://b"],
                "set one of",
            ),
            (
                &["redis.url=redis://a", "redis.sentinels=redis://b:26379"],
                "set one of",
            ),
            (&["redis.cluster_nodes=b:6379"], "redis.cluster_nodes"),
            (
                &["redis.sentinels=redis://b:26379"],
                "redis.sentinel_master",
            ),
            (
                &["redis.sentinels=unix:///s.sock", "redis.sentinel_master=m"],
                "over TCP",
            ),
            (
                &["redis.sentinel_master=m"],
                "only used with redis.sentinels",
            ),
            (
                &["redis.url=redis://a", "redis.password=pw"],
                "redis.password",
            ),
            (&["redis.key_prefix=a{b"], "hash tags"),
            (&["redis.timeout_ms=0"], "redis.timeout_ms"),
        ]);
    }
}
