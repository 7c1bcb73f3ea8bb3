//! The connection to Redis, one server, a Redis Cluster or a primary watched by Redis
//! Sentinel, shared by the Redis broker and the host registry.
//!
//! Two connections are made: one for commands ([`Commands`], cheap to clone, multiplexed)
//! and one for pub/sub ([`Subscriptions`]), whose messages arrive as RESP3 pushes on a
//! channel. Both reconnect by themselves, for ever, with a short capped backoff; the
//! pub/sub one also re-subscribes, and says so with a fresh confirmation per channel, which
//! is when the broker fills what it missed.
//!
//! Every command is bounded by `redis.timeout_ms`: while Redis is down a call fails after
//! that long with [`RedisError::Unavailable`] instead of waiting for the reconnect.
//!
//! With Sentinel, each connection is a [`Primary`]: a connection to the server the
//! sentinels name as primary, asked again every `SENTINEL_POLL` (500 ms). When they name another
//! (a failover), the connection moves there, and a pub/sub connection reports the move as a
//! disconnection, so that the broker subscribes again and catches up.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisConnectionInfo, RedisFuture, Value,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::RedisConfig;

/// Reconnect backoff bounds: short, because a chat without its broker is down.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_millis(1000);
/// One TCP connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Commands queued for the Redis connection before callers wait (the library's default
/// is 50).
const PIPELINE_BUFFER: usize = 4096;
/// How often the sentinels are asked which server is the primary. It adds at most this
/// much to a failover, after the sentinels' own `down-after-milliseconds` and election.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The configured address cannot be used at all.
    #[error("invalid Redis address {address}: {message}")]
    Config { address: String, message: String },
    /// Redis did not answer in time or the connection is down.
    #[error("Redis at {address} is unavailable: {message}")]
    Unavailable { address: String, message: String },
    /// Redis answered with an error.
    #[error("Redis at {address} answered with an error: {message}")]
    Command { address: String, message: String },
}

/// The command connection: one server or a cluster, usable wherever the `redis` crate takes
/// a connection.
#[derive(Clone)]
pub enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Primary),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(p) => {
                let mut c = p.current();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(p) => {
                let mut c = p.current();
                Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(p) => p.current().get_db(),
        }
    }
}

/// A connection to the primary the sentinels name, moved when they name another. Clones
/// share it; the task that follows the sentinels ends when the last clone is dropped.
#[derive(Clone)]
pub struct Primary {
    /// The connection to the current primary; replaced, never mutated, on a failover.
    current: Arc<RwLock<ConnectionManager>>,
}

impl Primary {
    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The pub/sub connection. Messages, confirmations and disconnections arrive on the
/// receiver handed out by [`RedisLink::connect`].
#[derive(Clone)]
pub enum Subscriptions {
    /// `SUBSCRIBE`/`PUBLISH`: a single server delivers each message to its subscribers only.
    Single(ConnectionManager),
    /// `SSUBSCRIBE`/`SPUBLISH`: a channel lives on the shard of its hash slot, so a message
    /// does not travel to every node of the cluster.
    Cluster(ClusterConnection),
    /// `SUBSCRIBE`/`PUBLISH` on the current primary.
    Sentinel(Primary),
}

impl Subscriptions {
    /// Subscribes to one channel; returns once Redis has confirmed it.
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channel).await,
            Self::Cluster(c) => c.ssubscribe(channel).await,
            Self::Sentinel(p) => p.current().subscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channel).await,
            Self::Cluster(c) => c.sunsubscribe(channel).await,
            Self::Sentinel(p) => p.current().unsubscribe(channel).await,
        }
    }
}

/// A connected Redis: the command connection and what every user of it needs to know.
#[derive(Clone)]
pub struct RedisLink {
    /// Commands and scripts.
    commands: Commands,
    /// Pub/sub; its pushes go to the receiver returned by `connect`.
    subscriptions: Subscriptions,
    /// Bound on every call.
    timeout: Duration,
    /// Prefix of every key and channel.
    key_prefix: Arc<str>,
    /// Whether this is a cluster (sharded pub/sub, one slot per pipeline).
    cluster: bool,
    /// The address for messages, without credentials.
    address: Arc<str>,
}

impl RedisLink {
    /// Connects both connections and checks that Redis answers. Returns the link and the
    /// receiver of pub/sub pushes.
    pub async fn connect(
        config: &RedisConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<PushInfo>), RedisError> {
        let target = Target::of(config);
        let commands = if target.cluster {
            Commands::Cluster(
                target
                    .cluster_client(config, ProtocolVersion::RESP2, None)?
                    .get_async_connection()
                    .await
                    .map_err(|e| target.unavailable(e))?,
            )
        } else if target.sentinel {
            Commands::Sentinel(target.follow_primary(config, None).await?)
        } else {
            let info = target.connection_info(config)?;
            let client = redis::Client::open(info).map_err(|e| target.config_error(e))?;
            Commands::Single(
                first_contact(
                    ConnectionManager::new_with_config(client, target.manager_config()),
                    target.timeout.max(CONNECT_TIMEOUT),
                    &target.address,
                )
                .await?,
            )
        };
        let (subscriptions, pushes) = target.subscriptions(config).await?;
        let link = Self {
            commands,
            subscriptions,
            timeout: target.timeout,
            key_prefix: config.key_prefix.as_str().into(),
            cluster: target.cluster,
            address: target.address,
        };
        link.run(redis::cmd("PING")).await.map(|_: Value| ())?;
        Ok((link, pushes))
    }

    /// Another pub/sub connection to the same Redis, with its own receiver of pushes: for
    /// a subscriber whose messages must not queue behind the broker's (the control bus).
    /// It reconnects and re-subscribes by itself like the first one.
    pub async fn connect_subscriptions(
        config: &RedisConfig,
    ) -> Result<(Subscriptions, mpsc::UnboundedReceiver<PushInfo>), RedisError> {
        Target::of(config).subscriptions(config).await
    }

    /// A handle for commands (clones share the connection).
    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    /// A handle for subscribing (clones share the connection).
    pub fn subscriptions(&self) -> Subscriptions {
        self.subscriptions.clone()
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The address, without credentials, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Runs one command within the time bound.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: Cmd) -> Result<T, RedisError> {
        let mut conn = self.commands();
        self.bounded(async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Awaits a Redis call within the time bound, turning its failure into a [`RedisError`].
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(RedisError::Unavailable {
                address: self.address.to_string(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }

    /// Classifies an error of the `redis` crate.
    pub fn error(&self, e: redis::RedisError) -> RedisError {
        let address = self.address.to_string();
        let message = e.to_string();
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            RedisError::Unavailable { address, message }
        } else {
            RedisError::Command { address, message }
        }
    }
}

/// Where the configured Redis is and how to reach it, shared by every connection made to
/// it.
#[derive(Clone)]
struct Target {
    /// Bound on every call.
    timeout: Duration,
    /// A cluster (`redis.cluster_nodes`) rather than one server (`redis.url`).
    cluster: bool,
    /// A primary found through Redis Sentinel (`redis.sentinels`).
    sentinel: bool,
    /// The address for messages, without credentials.
    address: Arc<str>,
}

impl Target {
    fn of(config: &RedisConfig) -> Self {
        let cluster = !config.cluster_nodes.is_empty();
        let sentinel = !config.sentinels.is_empty();
        let list = |nodes: &[String]| {
            nodes
                .iter()
                .map(|n| without_credentials(n))
                .collect::<Vec<_>>()
                .join(",")
        };
        let address: Arc<str> = if cluster {
            list(&config.cluster_nodes).into()
        } else if sentinel {
            format!(
                "{} (sentinels {})",
                config.sentinel_master,
                list(&config.sentinels)
            )
            .into()
        } else {
            without_credentials(&config.url).into()
        };
        Self {
            timeout: Duration::from_millis(config.timeout_ms),
            cluster,
            sentinel,
            address,
        }
    }

    /// How to reach the primary and replicas the sentinels name.
    fn sentinel_nodes(
        config: &RedisConfig,
        protocol: ProtocolVersion,
    ) -> SentinelNodeConnectionInfo {
        let mut redis = RedisConnectionInfo::default().set_protocol(protocol);
        if !config.password.is_empty() {
            redis = redis.set_password(&config.password);
        }
        SentinelNodeConnectionInfo::default().set_redis_connection_info(redis)
    }

    /// Connects to the primary the sentinels name and follows it from then on. With
    /// `pushes`, a pub/sub connection whose pushes go there (a move to a new primary is
    /// reported as a disconnection).
    async fn follow_primary(
        &self,
        config: &RedisConfig,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<Primary, RedisError> {
        let protocol = if pushes.is_some() {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        };
        let mut sentinel =
            Sentinel::build(config.sentinels.clone()).map_err(|e| self.config_error(e))?;
        let nodes = Self::sentinel_nodes(config, protocol);
        let wait = self.timeout.max(CONNECT_TIMEOUT);
        let client = match tokio::time::timeout(
            wait,
            sentinel.async_master_for(&config.sentinel_master, Some(&nodes)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(self.unavailable(e)),
            Err(_) => return Err(self.unavailable_with("no sentinel answered".into())),
        };
        let addr = client.get_connection_info().addr().clone();
        let manager = self.primary_manager(client, pushes.clone()).await?;
        let current = Arc::new(RwLock::new(manager));
        tokio::spawn(follow_sentinels(Follower {
            current: Arc::downgrade(&current),
            sentinel,
            master: config.sentinel_master.clone(),
            nodes,
            addr,
            pushes,
            target: self.clone(),
        }));
        Ok(Primary { current })
    }

    /// A connection manager on the primary `client` points at.
    async fn primary_manager(
        &self,
        client: redis::Client,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<ConnectionManager, RedisError> {
        let config = match pushes {
            Some(pushes) => self
                .manager_config()
                .set_push_sender(pushes)
                .set_automatic_resubscription(),
            None => self.manager_config(),
        };
        first_contact(
            ConnectionManager::new_with_config(client, config),
            self.timeout.max(CONNECT_TIMEOUT),
            &self.address,
        )
        .await
    }

    fn unavailable_with(&self, message: String) -> RedisError {
        RedisError::Unavailable {
            address: self.address.to_string(),
            message,
        }
    }

    fn config_error(&self, e: redis::RedisError) -> RedisError {
        RedisError::Config {
            address: self.address.to_string(),
            message: e.to_string(),
        }
    }

    fn unavailable(&self, e: redis::RedisError) -> RedisError {
        RedisError::Unavailable {
            address: self.address.to_string(),
            message: e.to_string(),
        }
    }

    fn cluster_client(
        &self,
        config: &RedisConfig,
        protocol: ProtocolVersion,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<redis::cluster::ClusterClient, RedisError> {
        let mut builder = ClusterClientBuilder::new(config.cluster_nodes.clone())
            .use_protocol(protocol)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(self.timeout)
            .min_retry_wait(RECONNECT_MIN.as_millis() as u64)
            .max_retry_wait(RECONNECT_MAX.as_millis() as u64);
        if let Some(pushes) = pushes {
            builder = builder.push_sender(pushes);
        }
        builder.build().map_err(|e| self.config_error(e))
    }

    fn connection_info(&self, config: &RedisConfig) -> Result<redis::ConnectionInfo, RedisError> {
        config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| self.config_error(e))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            // Room for every publisher's pipelined scripts: a publish waits for a free
            // place in this queue, and one that waits may lose its place in frame order.
            .set_pipeline_buffer_size(PIPELINE_BUFFER)
            .set_number_of_retries(usize::MAX)
            .set_min_delay(RECONNECT_MIN)
            .set_max_delay(RECONNECT_MAX)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.timeout))
    }

    /// A pub/sub connection (RESP3, pushes sent to the returned receiver).
    async fn subscriptions(
        &self,
        config: &RedisConfig,
    ) -> Result<(Subscriptions, mpsc::UnboundedReceiver<PushInfo>), RedisError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let subscriptions = if self.sentinel {
            Subscriptions::Sentinel(self.follow_primary(config, Some(push_tx)).await?)
        } else if self.cluster {
            Subscriptions::Cluster(
                self.cluster_client(config, ProtocolVersion::RESP3, Some(push_tx))?
                    .get_async_connection()
                    .await
                    .map_err(|e| self.unavailable(e))?,
            )
        } else {
            let info = self.connection_info(config)?;
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(resp3))
                .map_err(|e| self.config_error(e))?;
            Subscriptions::Single(
                first_contact(
                    ConnectionManager::new_with_config(
                        client,
                        self.manager_config()
                            .set_push_sender(push_tx)
                            .set_automatic_resubscription(),
                    ),
                    self.timeout.max(CONNECT_TIMEOUT),
                    &self.address,
                )
                .await?,
            )
        };
        Ok((subscriptions, push_rx))
    }
}

/// What the task following the sentinels for one [`Primary`] needs.
struct Follower {
    /// The connection it replaces; gone when every user dropped it.
    current: Weak<RwLock<ConnectionManager>>,
    sentinel: Sentinel,
    /// `redis.sentinel_master`.
    master: String,
    /// Credentials and protocol for the primary.
    nodes: SentinelNodeConnectionInfo,
    /// The primary connected to now.
    addr: ConnectionAddr,
    /// The pub/sub receiver told of a move, for a pub/sub connection.
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    /// Timeouts and the address for logs.
    target: Target,
}

/// Asks the sentinels for the primary every [`SENTINEL_POLL`] and moves the connection when
/// they name another server that answers as a primary.
async fn follow_sentinels(mut f: Follower) {
    loop {
        tokio::time::sleep(SENTINEL_POLL).await;
        if f.current.strong_count() == 0 {
            return;
        }
        let wait = f.target.timeout.max(CONNECT_TIMEOUT);
        // The library checks with ROLE that the server it returns is a primary.
        let client = match tokio::time::timeout(
            wait,
            f.sentinel.async_master_for(&f.master, Some(&f.nodes)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                debug!(redis = %f.target.address, "asking the sentinels for the primary: {e}");
                continue;
            }
            Err(_) => {
                debug!(redis = %f.target.address, "no sentinel answered in time");
                continue;
            }
        };
        let addr = client.get_connection_info().addr().clone();
        if addr == f.addr {
            continue;
        }
        let manager = match f.target.primary_manager(client, f.pushes.clone()).await {
            Ok(manager) => manager,
            Err(e) => {
                warn!(primary = %addr, "cannot connect to the new primary yet: {e}");
                continue;
            }
        };
        let Some(current) = f.current.upgrade() else {
            return;
        };
        *current.write().unwrap_or_else(PoisonError::into_inner) = manager;
        info!(
            redis = %f.target.address,
            from = %f.addr,
            to = %addr,
            "the sentinels promoted another primary; moved to it"
        );
        f.addr = addr;
        if let Some(pushes) = &f.pushes {
            // Subscriptions live on the old primary's connection: the broker must issue
            // them again on the new one and catch up.
            let _ = pushes.send(PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            });
        }
    }
}

/// Waits at most `wait` for a connection manager's first connection (afterwards it
/// reconnects for ever on its own).
async fn first_contact(
    manager: impl Future<Output = redis::RedisResult<ConnectionManager>>,
    wait: Duration,
    address: &str,
) -> Result<ConnectionManager, RedisError> {
    match tokio::time::timeout(wait, manager).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(e)) => Err(RedisError::Unavailable {
            address: address.to_owned(),
            message: e.to_string(),
        }),
        Err(_) => Err(RedisError::Unavailable {
            address: address.to_owned(),
            message: "no answer".into(),
        }),
    }
}

/// `redis://user:secret@host:6379/0` → `redis://host:6379/0`, for logs and errors.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            without_credentials("redis://user:pw@host:6379/0"),
            "redis://host:6379/0"
        );
        assert_eq!(without_credentials("redis://:pw@h"), "redis://h");
        assert_eq!(without_credentials("redis://h:1"), "redis://h:1");
        assert_eq!(
            without_credentials("unix:///run/redis.sock"),
            "unix:///run/redis.sock"
        );
    }
}
