//! Puts the pieces together: key, broker, relay socket, HTTP listener; and takes them down
//! again in order at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::{warn_example_key, Verifier};
use crate::broker::memory::{MemoryBroker, MemoryOptions};
use crate::broker::Broker;
use crate::config::Config;
use crate::error::Error;
use crate::http::{App, HttpServer, WsSettings};
use crate::publish::{Limits, Publisher};
use crate::relay::{RelayOptions, RelayServer, Workers};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A sidecar whose sockets are bound, ready to [`run`](Sidecar::run).
pub struct Sidecar {
    /// The bound relay socket.
    relay: RelayServer,
    /// Where it is, for callers (the server is consumed by `run`).
    relay_path: PathBuf,
    /// The bound HTTP listener.
    http: HttpServer,
    /// Its actual address (the configured port may be 0).
    http_addr: SocketAddr,
    /// Shared state of the HTTP handlers.
    app: Arc<App>,
    /// Cancelled to stop everything.
    shutdown: CancellationToken,
    /// Relay connections and publisher sessions, awaited at shutdown.
    tracker: TaskTracker,
}

impl Sidecar {
    /// Loads the key, creates the broker and binds both listeners. Nothing is served yet.
    pub async fn start(config: &Config, ws: WsSettings) -> Result<Self, Error> {
        let verifier = Verifier::from_config(&config.auth)?;
        if verifier.uses_example_key() {
            warn_example_key(&config.auth.public_key_file);
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();

        let memory = MemoryBroker::new(MemoryOptions {
            history_size: config.history.size,
            ttl: Duration::from_secs(config.history.ttl_seconds),
        });
        memory.spawn_sweeper(shutdown.clone());
        let broker: Arc<dyn Broker> = memory;

        let http = HttpServer::bind(config.http.listen).await?;
        let http_addr = http.local_addr().unwrap_or(config.http.listen);
        let relay = RelayServer::bind(
            RelayOptions {
                socket: config.relay.socket.clone(),
                mode: config.relay.socket_mode.0,
                queue_size: config.relay.queue_size,
            },
            broker.clone(),
        )?;
        let relay_path = relay.path().to_owned();
        info!(
            broker = broker.name(),
            history_size = config.history.size,
            history_ttl_seconds = config.history.ttl_seconds,
            algorithms = ?config.auth.algorithms,
            "sidecar ready"
        );

        let app = Arc::new(App {
            publisher: Publisher::new(
                broker,
                Arc::new(verifier),
                Limits {
                    max_message_chars: config.limits.max_message_chars,
                    max_event_bytes: config.limits.max_event_bytes,
                },
            ),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            ws,
        });
        Ok(Self {
            relay,
            relay_path,
            http,
            http_addr,
            app,
            shutdown,
            tracker,
        })
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The relay socket's path.
    pub fn relay_path(&self) -> &Path {
        &self.relay_path
    }

    /// The connected nginx workers and their counts.
    pub fn workers(&self) -> Arc<Workers> {
        self.relay.workers()
    }

    /// Serves until `stop` resolves, then closes publishers (1001) and relay connections,
    /// removes the socket file and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        let Self {
            relay,
            http,
            app,
            shutdown,
            tracker,
            ..
        } = self;
        let relay_task = tokio::spawn(relay.run(shutdown.clone(), tracker.clone()));
        let mut http_task = tokio::spawn(http.run(app, shutdown.clone()));

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
            let _ = relay_task.await;
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
