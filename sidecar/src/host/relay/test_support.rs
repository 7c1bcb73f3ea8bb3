//! Test fixtures shared by the relay's tests: a relay server on a temporary socket over a
//! memory broker, and a fake nginx worker that connects to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chatup_wire::private::Policy;
use chatup_wire::{Position, PublishRequest, ToSidecar, ToWorker, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::WireCodec;
use super::{NginxWorkers, RelayOptions, RelayServer};
use crate::broker::memory::{MemoryBroker, MemoryOptions};
use crate::broker::Broker;
use crate::cluster::control::Control;
use crate::host::presence::Presence;
use crate::host::publish::sessions::Sessions;
use crate::host::publish::{App, Publisher, WsSettings};
use crate::message::{Body, Tail};
use crate::moderation::{Bans, Moderation};
use crate::plugins::Chain;

pub(super) type Worker = Framed<UnixStream, WireCodec<ToWorker, ToSidecar>>;

/// A running relay server and what the tests look at or drive.
pub(super) struct Fixture {
    /// Holds the socket's directory until the test ends.
    _dir: tempfile::TempDir,
    /// The relay socket, for [`connect`].
    pub(super) path: PathBuf,
    /// The broker behind the relay, to publish into.
    pub(super) broker: Arc<MemoryBroker>,
    /// The relay's stats of its connected workers.
    pub(super) workers: Arc<NginxWorkers>,
    /// Stops the server.
    pub(super) shutdown: CancellationToken,
    /// The server's connection tasks, to wait for at shutdown.
    pub(super) tracker: TaskTracker,
    /// The server's accept loop.
    pub(super) server: tokio::task::JoinHandle<()>,
}

/// Starts a relay server whose connections queue `queue_size` live events.
pub(super) async fn start(queue_size: usize) -> Fixture {
    start_with(queue_size, false).await
}

/// Starts a relay server that also answers `Publish` frames, with a publisher over the
/// same broker (default plugins, the example key, messages of at most 5 characters).
pub(super) async fn start_publishing() -> Fixture {
    start_with(1024, true).await
}

async fn start_with(queue_size: usize, publishing: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.sock");
    let broker = MemoryBroker::new(MemoryOptions {
        history_size: 5,
        ttl: Duration::from_secs(3600),
    });
    let mut relay = RelayServer::bind(
        RelayOptions {
            socket: path.clone(),
            mode: 0o600,
            queue_size,
        },
        broker.clone(),
    )
    .unwrap();
    let workers = relay.workers();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    if publishing {
        relay = relay.with_publisher(app(broker.clone(), &shutdown, &tracker));
    }
    let server = tokio::spawn(relay.run(shutdown.clone(), tracker.clone()));
    Fixture {
        _dir: dir,
        path,
        broker,
        workers,
        shutdown,
        tracker,
        server,
    }
}

/// What the publisher endpoints share, publishing into `broker`.
fn app(broker: Arc<MemoryBroker>, shutdown: &CancellationToken, tracker: &TaskTracker) -> Arc<App> {
    let moderation = Arc::new(Moderation::new(
        Bans::memory(),
        Control::memory(),
        broker.clone(),
        true,
    ));
    Arc::new(App {
        publisher: Publisher::new(
            broker,
            Arc::new(crate::test_support::verifier()),
            crate::test_support::TIGHT_LIMITS,
            Chain::default(),
        ),
        presence: Presence::new(false).0,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        ws: WsSettings::default(),
        moderation,
        sessions: Sessions::new(),
        private: Policy::default(),
    })
}

/// A `Publish` frame of `text/plain` `body` to `channel` with `token` (none: no header).
pub(super) fn publish_frame(id: u64, channel: &str, token: Option<&str>, body: &str) -> ToSidecar {
    ToSidecar::Publish(PublishRequest {
        id,
        channel: channel.as_bytes().to_vec(),
        authorization: token.map(|t| format!("Bearer {t}").into_bytes()),
        content_type: Some(b"text/plain".to_vec()),
        idempotency_key: None,
        body: body.as_bytes().to_vec(),
    })
}

/// Connects as an nginx worker (pid 4242) and says `Hello`.
pub(super) async fn connect(path: &Path) -> Worker {
    let stream = UnixStream::connect(path).await.unwrap();
    let mut w = Framed::new(stream, WireCodec::default());
    w.send(ToSidecar::Hello {
        version: PROTOCOL_VERSION,
        pid: 4242,
    })
    .await
    .unwrap();
    // The first answer: which channels are private (none here).
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(ToWorker::Policy { private }))) => assert!(private.is_empty()),
        other => panic!("expected the Policy frame first, got {other:?}"),
    }
    w
}

/// The next frame from the relay (within 5 s).
pub(super) async fn next(w: &mut Worker) -> ToWorker {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a frame within 5s")
        .expect("connection open")
        .expect("a valid frame")
}

/// Whether the server closes the connection (within 5 s).
pub(super) async fn closed(w: &mut Worker) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

/// Publishes a text message to `ch`; returns its id.
pub(super) async fn publish(b: &MemoryBroker, ch: &str, text: &str) -> u64 {
    let tail = Tail::encode(1, "{}", &Body::Text(text.into())).unwrap();
    b.publish(ch, &tail).await.unwrap().id
}

/// A `Subscribe` frame.
pub(super) fn subscribe(channel: &str, want: u32, since: Option<Position>) -> ToSidecar {
    ToSidecar::Subscribe {
        channel: channel.into(),
        want,
        since,
    }
}
