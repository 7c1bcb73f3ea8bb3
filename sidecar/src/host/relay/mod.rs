//! The relay server: the Unix socket that this host's nginx workers connect to.
//!
//! Each worker holds one connection. It says `Hello`, then subscribes to the channels its
//! subscribers watch. For every `Subscribe` the worker gets one `Backlog`, then the channel's
//! live messages in id order, each id once. Live messages wait in a bounded queue per
//! connection; a worker that lets it fill up is disconnected rather than allowed to hold up
//! the broker. It reconnects and resubscribes from its last positions, so nothing is lost.
//!
//! The files:
//!
//! * `mod.rs`: [`RelayServer`], which binds the socket and accepts workers, one task each;
//! * `socket.rs`: the socket file (stale ones replaced, removed at shutdown);
//! * `connection.rs`: one worker's connection, from `Hello` to its end;
//! * [`codec`]: the frames on the socket; [`nginx_workers`]: the connected workers'
//!   latest counts; [`config`]: the `[relay]` settings.
//!
//! A connection's life: the worker says `Hello` (version checked, within a timeout); then
//! its `Subscribe` frames are answered with a `Backlog` each and subscribe it in the broker
//! (retried while the broker is down), its `Stats` are kept in [`NginxWorkers`], its
//! `Publish` frames are answered with a `Published` each (the checks of `POST /pub/<ch>`),
//! and the broker's live events are written to it in batches, skipping what the backlog
//! covered.
//! It ends when the worker closes, breaks the protocol, lets its queue overflow, or at
//! shutdown (what is queued is flushed first); its subscriptions and stats go with it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, Instrument};

pub mod codec;
pub mod config;
mod connection;
pub mod nginx_workers;
mod socket;
#[cfg(test)]
mod test_support;

pub use nginx_workers::{NginxWorkerStats, NginxWorkers, RelayTraffic};

use crate::broker::Broker;
use crate::host::publish::App;
use crate::host::viewers::Viewers;
use connection::{Answerers, Connection};
use socket::SocketFile;

/// Settings of the relay server.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where the socket file is created.
    pub socket: PathBuf,
    /// File mode of the socket (who may connect).
    pub mode: u32,
    /// Live events queued per worker before the worker is disconnected as too slow.
    pub queue_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "relay.socket {path} is in use by a running process (another sidecar?); \
         stop it or choose another path"
    )]
    InUse { path: PathBuf },
    #[error("relay.socket {path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create relay.socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set relay.socket_mode {mode:04o} on {path}: {source}")]
    Mode {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
}

/// A bound relay socket, ready to serve.
pub struct RelayServer {
    /// The bound socket.
    listener: UnixListener,
    /// Removes the socket file when the server goes away.
    file: SocketFile,
    /// Per-connection settings (queue bound).
    options: RelayOptions,
    /// Where connections subscribe.
    broker: Arc<dyn Broker>,
    /// Stats of the connected workers, shared with whoever reports this host's load.
    workers: Arc<NginxWorkers>,
    /// Admits viewers to private channels (`None`: none is private).
    viewers: Option<Arc<Viewers>>,
    /// Answers the workers' publishes (`None`: refused as unavailable).
    app: Option<Arc<App>>,
}

impl RelayServer {
    /// Creates the socket file (replacing a stale one left by a crashed process) with the
    /// configured mode. Must run inside a Tokio runtime.
    pub fn bind(options: RelayOptions, broker: Arc<dyn Broker>) -> Result<Self, RelayError> {
        let (listener, file) = socket::bind(&options.socket, options.mode)?;
        Ok(Self {
            listener,
            file,
            options,
            broker,
            workers: Arc::default(),
            viewers: None,
            app: None,
        })
    }

    /// Answers the workers' `Publish` frames with `app`, as `POST /pub/<ch>` on the HTTP
    /// port would.
    pub fn with_publisher(mut self, app: Arc<App>) -> Self {
        self.app = Some(app);
        self
    }

    /// Admits viewers of private channels with `viewers` (without: every channel is public).
    pub fn with_viewers(mut self, viewers: Arc<Viewers>) -> Self {
        self.viewers = Some(viewers);
        self
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The connected workers' latest stats.
    pub fn workers(&self) -> Arc<NginxWorkers> {
        self.workers.clone()
    }

    /// Accepts workers until `shutdown`, then closes every connection (after flushing what
    /// is queued for it) and removes the socket file. Connection tasks are added to `tracker`.
    pub async fn run(self, shutdown: CancellationToken, tracker: TaskTracker) {
        static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
        info!(path = %self.file.path.display(), "relay listening");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("relay", conn, pid = tracing::field::Empty);
                    let connection = Connection::new(
                        conn,
                        stream,
                        self.broker.clone(),
                        self.workers.clone(),
                        self.options.queue_size,
                        shutdown.clone(),
                        Answerers {
                            viewers: self.viewers.clone(),
                            app: self.app.clone(),
                        },
                    );
                    tracker.spawn(connection.run().instrument(span));
                }
                Err(e) => {
                    // Typically out of file descriptors: wait a little instead of spinning.
                    error!("relay accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(self.listener);
        drop(self.file);
        info!("relay stopped accepting");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use futures_util::SinkExt;

    use super::test_support::{closed, connect, next, start, subscribe};
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_is_not_and_shutdown_removes_it() {
        let f = start(16).await;
        // A second server on a live socket is refused.
        let err = RelayServer::bind(
            RelayOptions {
                socket: f.path.clone(),
                mode: 0o600,
                queue_size: 1,
            },
            f.broker.clone(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, RelayError::InUse { .. }), "{err}");
        let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut w = connect(&f.path).await;
        w.send(subscribe("room", 0, None)).await.unwrap();
        next(&mut w).await;
        f.shutdown.cancel();
        f.server.await.unwrap();
        f.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), f.tracker.wait())
            .await
            .unwrap();
        assert!(closed(&mut w).await);
        assert!(!f.path.exists(), "socket file removed at shutdown");

        // A stale socket file (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&f.path).unwrap();
        drop(stale);
        assert!(f.path.exists());
        let relay = RelayServer::bind(
            RelayOptions {
                socket: f.path.clone(),
                mode: 0o660,
                queue_size: 1,
            },
            f.broker.clone(),
        )
        .unwrap();
        assert_eq!(relay.path(), f.path);
        drop(relay);
        assert!(!f.path.exists());

        // A regular file is never replaced.
        std::fs::write(&f.path, "data").unwrap();
        let err = RelayServer::bind(
            RelayOptions {
                socket: f.path.clone(),
                mode: 0o660,
                queue_size: 1,
            },
            f.broker.clone(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, RelayError::NotASocket { .. }), "{err}");
    }
}
