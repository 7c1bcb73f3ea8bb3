//! Puts the pieces together for the configured roles: key, broker, relay socket, presence,
//! host registry, dispatcher, HTTP listener; and takes them down again in order at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::auth::{warn_example_admin_key, AdminVerifier};
use crate::admin::AdminState;
use crate::broker::memory::{MemoryBroker, MemoryOptions};
use crate::broker::redis::{RedisBroker, RedisOptions};
use crate::broker::Broker;
use crate::cluster::control::Control;
use crate::cluster::redis::RedisLink;
use crate::cluster::registry::{
    Directory, HostInfo, HostLoad, LocalDirectory, RedisDirectory, Reporter,
};
use crate::config::Config;
use crate::dispatcher::join::Dispatcher;
use crate::error::Error;
use crate::host::demo::{warn_open_minting, DemoTokens};
use crate::host::presence::{EventPump, Presence};
use crate::host::publish::sessions::{kick_on_notice, Sessions};
use crate::host::publish::{App, WsSettings};
use crate::host::publish::{Limits, Publisher};
use crate::host::relay::{NginxWorkers, RelayOptions, RelayServer};
use crate::http::health::Health;
use crate::http::{router, HttpServer};
use crate::jwt::{warn_example_key, warn_no_exp, Verifier};
use crate::metrics::{Metrics, PublishedKind};
use crate::moderation::{Bans, Moderation};
use crate::plugins::blacklist::Blacklist;
use crate::plugins::{admin_blacklist, build_chain, Setup};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The admin token checker, or `None` (admin API off) when no key is configured.
fn admin_verifier(config: &Config) -> Result<Option<Arc<AdminVerifier>>, Error> {
    let path = &config.admin.public_key_file;
    if path.as_os_str().is_empty() {
        warn!("admin.public_key_file is empty: the admin API is off (only /health and /metrics answer)");
        return Ok(None);
    }
    let verifier = AdminVerifier::from_config(&config.admin, &config.auth)?;
    if verifier.uses_example_key() {
        warn_example_admin_key(path);
    }
    Ok(Some(Arc::new(verifier)))
}

/// A sidecar whose sockets are bound, ready to [`run`](Sidecar::run).
pub struct Sidecar {
    /// The bound relay socket (worker role only).
    relay: Option<RelayServer>,
    /// Where it is, for callers (the server is consumed by `run`).
    relay_path: Option<PathBuf>,
    /// The relay's connected workers and their counts (worker role only).
    workers: Option<Arc<NginxWorkers>>,
    /// The bound HTTP listener.
    http: HttpServer,
    /// Its actual address (the configured port may be 0).
    http_addr: SocketAddr,
    /// The routes of this process's roles.
    router: Router,
    /// Publishes presence events (worker role with `presence.events`).
    pump: Option<(EventPump, Arc<Presence>, Arc<dyn Broker>)>,
    /// Reports this host's load to Redis (worker role with Redis).
    reporter: Option<Reporter>,
    /// Bans and their effects, for the admin API.
    moderation: Arc<Moderation>,
    /// Cancelled to stop everything.
    shutdown: CancellationToken,
    /// Relay connections, publisher sessions and background tasks, awaited at shutdown.
    tracker: TaskTracker,
    /// The blacklist's lists, for the admin API: with `blacklist` in the chain, on a worker,
    /// or on an admin host without the worker role (then through Redis).
    blacklist: Option<Arc<Blacklist>>,
}

impl Sidecar {
    /// Loads the key, creates the broker and binds the listeners the configured roles need
    /// (the relay socket and `/pub` only with `roles.chat_host`, `/join` only with
    /// `roles.dispatcher`). Nothing is served yet.
    pub async fn start(config: &Config, ws: WsSettings) -> Result<Self, Error> {
        let worker = config.roles.chat_host;
        let verifier = if worker {
            let verifier = Verifier::from_config(&config.auth)?;
            if verifier.uses_example_key() {
                warn_example_key(
                    "auth.public_key_file",
                    &config.auth.public_key_file,
                    "publish as any user",
                );
            }
            if !config.auth.require_exp {
                warn_no_exp();
            }
            Some(verifier)
        } else {
            None
        };
        // Checked before anything is bound, like the keys: a demo key that does not fit
        // stops the start.
        let demo = match &verifier {
            Some(verifier) => DemoTokens::from_config(&config.demo, &config.auth, verifier)?,
            None => None,
        };
        if demo.is_some() {
            warn_open_minting(&config.demo.private_key_file);
        } else if !config.demo.private_key_file.as_os_str().is_empty() {
            warn!(
                "demo.private_key_file is set but this process has no worker role: no /demo/token"
            );
        }
        // Checked before anything is bound: a wrong admin key stops the start.
        let admin_tokens = if config.roles.admin {
            admin_verifier(config)?
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Every part that counts gets this one (rather than a global), so that several
        // sidecars in one test process keep their own numbers.
        let metrics = Arc::new(Metrics::new()?);

        // The broker, and with `[redis]` the connection the host registry shares.
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

        // Bans, and the bus that tells every host to kick: the worker checks and kicks,
        // the admin API bans.
        let bans = match &redis {
            Some(link) => Bans::redis(link.clone()),
            None => Bans::memory(),
        };
        let control = match &redis {
            Some(link) => {
                Control::redis(link.clone(), &config.redis, worker, shutdown.clone()).await?
            }
            None => Control::memory(),
        };
        let moderation = Arc::new(Moderation::new(
            bans.clone(),
            control.clone(),
            broker.clone(),
            config.plugins.chain.iter().any(|name| name == "ban"),
        ));

        let http = HttpServer::bind(config.http.listen).await?;
        let http_addr = http.local_addr().unwrap_or(config.http.listen);
        let host = HostInfo::from_config(&config.host, http_addr);

        let mut relay = None;
        let mut load = None;
        let mut worker_app = None;
        let mut pump = None;
        let blacklist;
        let setup = Setup {
            config,
            redis: redis.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            bans: bans.clone(),
        };
        if let Some(verifier) = verifier {
            let plugins = build_chain(&setup).await?;
            let chain = plugins.chain;
            blacklist = plugins.blacklist;
            info!(plugins = ?chain.names(), "plugin chain ready");
            let sessions = Sessions::new();
            tracker.spawn(kick_on_notice(
                control.subscribe(),
                sessions.clone(),
                shutdown.clone(),
            ));
            let server = RelayServer::bind(
                RelayOptions {
                    socket: config.relay.socket.clone(),
                    mode: config.relay.socket_mode.0,
                    queue_size: config.relay.queue_size,
                },
                metrics.metered(broker.clone(), None),
            )?;
            let (presence, events) = Presence::with_leave_grace(
                config.presence.events,
                Duration::from_millis(config.presence.leave_grace_ms),
            );
            metrics.watch_relay(&server.workers())?;
            metrics.watch_presence(&presence)?;
            let presence_broker = metrics.metered(broker.clone(), Some(PublishedKind::Presence));
            pump = events.map(|events| (events, presence.clone(), presence_broker));
            load = Some(HostLoad {
                workers: server.workers(),
                presence: presence.clone(),
            });
            relay = Some(server);
            worker_app = Some(Arc::new(App {
                publisher: Publisher::new(
                    metrics.metered(broker.clone(), None),
                    Arc::new(verifier),
                    Limits::from(&config.limits),
                    chain,
                )
                .with_metrics(metrics.clone()),
                presence,
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                ws,
                moderation: moderation.clone(),
                sessions,
            }));
        } else {
            blacklist = admin_blacklist(&setup).await?;
        }

        let reporter = match (&redis, &load) {
            (Some(link), Some(load)) => Some(Reporter::new(
                link.clone(),
                host.clone(),
                load.clone(),
                &config.host,
            )),
            _ => None,
        };
        let directory: Option<Arc<dyn Directory>> = match (&redis, load) {
            (Some(link), _) => Some(Arc::new(RedisDirectory::new(link.clone()))),
            (None, Some(load)) => Some(Arc::new(LocalDirectory::new(host.clone(), load))),
            // Refused by the configuration check: a dispatcher alone needs Redis.
            (None, None) => None,
        };
        let dispatcher = match &directory {
            Some(directory) if config.roles.dispatcher => Some(Arc::new(
                Dispatcher::new(
                    directory.clone(),
                    metrics.metered(broker.clone(), None),
                    config.dispatch.clone(),
                )
                .with_report_interval(Duration::from_millis(config.host.report_interval_ms)),
            )),
            _ => None,
        };
        let admin = match directory {
            Some(directory) if config.roles.admin => Some(Arc::new(AdminState {
                verifier: admin_tokens,
                broker: metrics.metered(broker.clone(), Some(PublishedKind::Admin)),
                directory,
                limits: Limits::from(&config.limits),
                metrics: metrics.clone(),
                blacklist: blacklist.clone(),
                moderation: moderation.clone(),
            })),
            _ => None,
        };

        let health = Arc::new(Health {
            // The chat-host role is reported as "worker", its name before `roles.chat_host`:
            // monitors match on it.
            roles: [
                ("worker", worker_app.is_some()),
                ("dispatcher", dispatcher.is_some()),
                ("admin", admin.is_some()),
            ]
            .into_iter()
            .filter_map(|(role, on)| on.then_some(role))
            .collect(),
            broker: broker.name(),
            host: host.id.clone(),
            redis: redis.clone(),
        });
        let relay_path = relay.as_ref().map(|r| r.path().to_owned());
        let workers = relay.as_ref().map(RelayServer::workers);
        info!(
            broker = broker.name(),
            host = host.id,
            worker = worker,
            dispatcher = dispatcher.as_ref().map(|d| d.directory_name()),
            presence_events = config.presence.events,
            history_size = config.history.size,
            history_ttl_seconds = config.history.ttl_seconds,
            algorithms = ?config.auth.algorithms,
            "sidecar ready"
        );
        let mut routes = router(health, worker_app, dispatcher, admin);
        if let Some(demo) = demo {
            routes = routes.merge(crate::host::demo::router(Arc::new(demo)));
        }
        Ok(Self {
            relay,
            relay_path,
            workers,
            http,
            http_addr,
            router: routes,
            pump,
            reporter,
            moderation,
            shutdown,
            tracker,
            blacklist,
        })
    }

    /// Bans and their effects (the admin API's entry point).
    pub fn moderation(&self) -> Arc<Moderation> {
        self.moderation.clone()
    }

    /// The blacklist's lists (none without `blacklist` in `plugins.chain`, or on a host
    /// with neither the worker role nor Redis).
    pub fn blacklist(&self) -> Option<Arc<Blacklist>> {
        self.blacklist.clone()
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The relay socket's path (none without the worker role).
    pub fn relay_path(&self) -> Option<&Path> {
        self.relay_path.as_deref()
    }

    /// The connected nginx workers and their counts (none without the worker role).
    pub fn workers(&self) -> Option<Arc<NginxWorkers>> {
        self.workers.clone()
    }

    /// Serves until `stop` resolves, then closes publishers (1001) and relay connections,
    /// removes the socket file and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let Self {
            relay,
            http,
            router,
            pump,
            reporter,
            shutdown,
            tracker,
            ..
        } = self;
        let relay_task =
            relay.map(|relay| tokio::spawn(relay.run(shutdown.clone(), tracker.clone())));
        if let Some((pump, presence, broker)) = pump {
            tracker.spawn(pump.run(presence, broker, shutdown.clone()));
        }
        if let Some(reporter) = reporter {
            tracker.spawn(reporter.run(shutdown.clone()));
        }
        let mut http_task = tokio::spawn(http.run(router, shutdown.clone()));

        let failure = tokio::select! {
            _ = stop => None,
            result = &mut http_task => Some(match result {
                Ok(Ok(())) => std::io::Error::other("stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e.to_string()),
            }),
        };
        shutdown.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            if failure.is_none() {
                let _ = http_task.await;
            }
            if let Some(relay_task) = relay_task {
                let _ = relay_task.await;
            }
            tracker.close();
            tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            warn!(
                "some connections did not close within {}s; exiting anyway",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        match failure {
            None => {
                info!("stopped");
                Ok(())
            }
            Some(e) => {
                error!("the HTTP server failed: {e}");
                Err(Error::Serve(e))
            }
        }
    }
}
