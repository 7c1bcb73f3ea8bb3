//! Puts the roles together: the shared services first, then each role this process plays
//! (chat host, dispatcher, admin API), then the routes; and takes them down again in order
//! at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cluster::registry::HostInfo;
use crate::config::Config;
use crate::error::Error;
use crate::host::publish::WsSettings;
use crate::host::relay::NginxWorkers;
use crate::host::{ChatHost, HostKeys, HostTasks};
use crate::http::health::Health;
use crate::http::{routes, HttpServer};
use crate::message::Limits;
use crate::moderation::Moderation;
use crate::plugins::admin_blacklist;
use crate::plugins::blacklist::Blacklist;
use crate::shared::Shared;
use crate::{admin, cluster, dispatcher};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A sidecar whose sockets are bound, ready to [`run`](Sidecar::run).
pub struct Sidecar {
    /// The chat host's relay, presence events and load reports (chat-host role only).
    host_tasks: Option<HostTasks>,
    /// Where the relay socket is, for callers (the tasks are consumed by `run`).
    relay_path: Option<PathBuf>,
    /// The relay's connected nginx workers and their counts (chat-host role only).
    workers: Option<Arc<NginxWorkers>>,
    /// The bound HTTP listener.
    http: HttpServer,
    /// Its actual address (the configured port may be 0).
    http_addr: SocketAddr,
    /// The routes of this process's roles.
    router: Router,
    /// Bans and their effects, for the admin API.
    moderation: Arc<Moderation>,
    /// Cancelled to stop everything.
    shutdown: CancellationToken,
    /// Relay connections, publisher sessions and background tasks, awaited at shutdown.
    tracker: TaskTracker,
    /// The blacklist's lists, for the admin API: with `blacklist` in the chain, on a chat
    /// host, or on an admin host without the chat-host role (then through Redis).
    blacklist: Option<Arc<Blacklist>>,
}

impl Sidecar {
    /// Loads the keys, starts the shared services and binds the listeners the configured
    /// roles need (the relay socket and `/pub` only with `roles.chat_host`, `/join` only
    /// with `roles.dispatcher`). Nothing is served yet.
    pub async fn start(config: &Config, ws: WsSettings) -> Result<Self, Error> {
        // Keys first: one that does not fit stops the start before anything is bound.
        let host_keys = HostKeys::load(config)?;
        // The dispatcher shows the users of private channels to the operator (admin) too.
        let admin_keys = if config.roles.admin || config.roles.dispatcher {
            admin::verifier(config)?
        } else {
            None
        };

        // Shared services: metrics, broker and Redis link, bans, control bus.
        let shared = Shared::start(config).await?;
        let http = HttpServer::bind(config.http.listen).await?;
        let http_addr = http.local_addr().unwrap_or(config.http.listen);
        let host_info = HostInfo::from_config(&config.host, http_addr);
        let limits = Limits::from(&config.limits);

        // The roles.
        let chat_host = match host_keys {
            Some(keys) => {
                Some(ChatHost::assemble(config, keys, &shared, &host_info, limits, ws).await?)
            }
            None => None,
        };
        let (moderation, blacklist) = match &chat_host {
            Some(host) => (host.moderation.clone(), host.blacklist.clone()),
            // Nothing here checks joins, so bans need no enforcing on this host.
            None => (
                shared.moderation(false),
                admin_blacklist(&shared.plugin_setup(config)).await?,
            ),
        };
        let directory = cluster::directory(
            shared.redis.as_ref(),
            &host_info,
            chat_host.as_ref().map(|host| host.load.clone()),
        );
        let operators = admin_keys
            .clone()
            .map(|keys| keys as Arc<dyn crate::jwt::OperatorTokens>);
        let dispatcher = dispatcher::assemble(config, directory.as_ref(), &shared, operators);
        let admin = admin::assemble(
            config,
            admin_keys.filter(|_| config.roles.admin),
            directory.as_ref(),
            &shared,
            limits,
            moderation.clone(),
            blacklist.clone(),
        );

        // The routes.
        let health = Arc::new(Health {
            // The chat-host role is reported as "worker", its name before `roles.chat_host`:
            // monitors match on it.
            roles: [
                ("worker", chat_host.is_some()),
                ("dispatcher", dispatcher.is_some()),
                ("admin", admin.is_some()),
            ]
            .into_iter()
            .filter_map(|(role, on)| on.then_some(role))
            .collect(),
            broker: shared.broker.name(),
            host: host_info.id.clone(),
            redis: shared.redis.clone(),
        });
        info!(
            broker = shared.broker.name(),
            host = host_info.id,
            chat_host = config.roles.chat_host,
            dispatcher = dispatcher.as_ref().map(|d| d.directory_name()),
            presence_events = config.presence.events,
            history_size = config.history.size,
            history_ttl_seconds = config.history.ttl_seconds,
            algorithms = ?config.auth.algorithms,
            "sidecar ready"
        );
        let (app, demo, host_tasks) = match chat_host {
            Some(host) => (Some(host.app), host.demo, Some(host.tasks)),
            None => (None, None, None),
        };
        let router = routes(health, app, demo, dispatcher, admin);
        Ok(Self {
            relay_path: host_tasks.as_ref().map(|t| t.relay_path().to_owned()),
            workers: host_tasks.as_ref().map(HostTasks::workers),
            host_tasks,
            http,
            http_addr,
            router,
            moderation,
            shutdown: shared.shutdown,
            tracker: shared.tracker,
            blacklist,
        })
    }

    /// Bans and their effects (the admin API's entry point).
    pub fn moderation(&self) -> Arc<Moderation> {
        self.moderation.clone()
    }

    /// The blacklist's lists (none without `blacklist` in `plugins.chain`, or on a host
    /// with neither the chat-host role nor Redis).
    pub fn blacklist(&self) -> Option<Arc<Blacklist>> {
        self.blacklist.clone()
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The relay socket's path (none without the chat-host role).
    pub fn relay_path(&self) -> Option<&Path> {
        self.relay_path.as_deref()
    }

    /// The connected nginx workers and their counts (none without the chat-host role).
    pub fn workers(&self) -> Option<Arc<NginxWorkers>> {
        self.workers.clone()
    }

    /// Serves until `stop` resolves, then closes publishers (1001) and relay connections,
    /// removes the socket file and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let Self {
            host_tasks,
            http,
            router,
            shutdown,
            tracker,
            ..
        } = self;
        let relay_task: Option<JoinHandle<()>> =
            host_tasks.map(|tasks| tasks.spawn(&shutdown, &tracker));
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
