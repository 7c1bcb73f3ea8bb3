//! The services every role uses, started before any role: the metrics, the broker (and
//! with `[redis]` the connection the other shared parts reuse), the ban store, the control
//! bus, and the shutdown signal with the tasks it waits for.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::broker::memory::{MemoryBroker, MemoryOptions};
use crate::broker::redis::{RedisBroker, RedisOptions};
use crate::broker::Broker;
use crate::cluster::control::Control;
use crate::cluster::redis::RedisLink;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::moderation::{Bans, Moderation};
use crate::plugins::Setup;

/// What the roles share.
pub struct Shared {
    /// Every part that counts gets this one (rather than a global), so that several
    /// sidecars in one test process keep their own numbers.
    pub metrics: Arc<Metrics>,
    /// Ids, history and fan-out of every message: memory (one host) or Redis.
    pub broker: Arc<dyn Broker>,
    /// The Redis connection, with `[redis]`: the registry, bans, control bus and plugins
    /// share it with the broker.
    pub redis: Option<RedisLink>,
    /// The ban store: the chat host checks it, the admin API writes it.
    pub bans: Bans,
    /// Tells every host to kick: the chat host listens, the admin API speaks.
    pub control: Arc<Control>,
    /// Cancelled to stop everything.
    pub shutdown: CancellationToken,
    /// Relay connections, publisher sessions and background tasks, awaited at shutdown.
    pub tracker: TaskTracker,
}

impl Shared {
    /// Starts the shared services; with `[redis]` this connects to Redis.
    pub async fn start(config: &Config) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::new()?);

        let (broker, redis): (Arc<dyn Broker>, Option<RedisLink>) = if config.redis.enabled() {
            let (link, pushes) = RedisLink::connect(&config.redis).await?;
            info!(
                redis = link.address(),
                cluster = link.is_cluster(),
                "connected to Redis"
            );
            let broker = RedisBroker::start(
                link.clone(),
                pushes,
                RedisOptions {
                    history_size: config.history.size,
                    ttl: Duration::from_secs(config.history.ttl_seconds),
                },
                shutdown.clone(),
            );
            let redis_broker = broker.clone();
            metrics.watch_redis(move || redis_broker.pubsub_disconnects())?;
            (broker, Some(link))
        } else {
            let memory = MemoryBroker::new(MemoryOptions {
                history_size: config.history.size,
                ttl: Duration::from_secs(config.history.ttl_seconds),
            });
            memory.spawn_sweeper(shutdown.clone());
            (memory, None)
        };

        let bans = match &redis {
            Some(link) => Bans::redis(link.clone()),
            None => Bans::memory(),
        };
        let control = match &redis {
            Some(link) => {
                Control::redis(
                    link.clone(),
                    &config.redis,
                    config.roles.chat_host,
                    shutdown.clone(),
                )
                .await?
            }
            None => Control::memory(),
        };
        Ok(Self {
            metrics,
            broker,
            redis,
            bans,
            control,
            shutdown,
            tracker,
        })
    }

    /// Bans and their effects; `enforced` when the chain has the ban plugin (only then are
    /// joins of banned users refused, as their publishes are).
    pub fn moderation(&self, enforced: bool) -> Arc<Moderation> {
        Arc::new(Moderation::new(
            self.bans.clone(),
            self.control.clone(),
            self.broker.clone(),
            enforced,
        ))
    }

    /// What the plugins need to start.
    pub fn plugin_setup<'a>(&self, config: &'a Config) -> Setup<'a> {
        Setup {
            config,
            redis: self.redis.clone(),
            shutdown: self.shutdown.clone(),
            tracker: self.tracker.clone(),
            bans: self.bans.clone(),
        }
    }
}
