//! A fake nginx worker on the relay socket, speaking the relay protocol with the sidecar's
//! own codec.

use std::path::PathBuf;
use std::time::Duration;

use chatup_sidecar::host::relay::codec::WireCodec;
use chatup_wire::{BacklogKind, ToSidecar, ToWorker, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

pub type Worker = Framed<UnixStream, WireCodec<ToWorker, ToSidecar>>;

pub async fn worker(socket: &PathBuf, channel: &str) -> Worker {
    let stream = UnixStream::connect(socket).await.unwrap();
    let mut w = Framed::new(stream, WireCodec::default());
    w.send(ToSidecar::Hello {
        version: PROTOCOL_VERSION,
        pid: 1,
    })
    .await
    .unwrap();
    match next_frame(&mut w).await {
        ToWorker::Policy { .. } => {}
        other => panic!("expected the Policy frame first, got {other:?}"),
    }
    w.send(ToSidecar::Subscribe {
        channel: channel.into(),
        want: 10,
        since: None,
    })
    .await
    .unwrap();
    match next_frame(&mut w).await {
        ToWorker::Backlog { kind, .. } => assert_eq!(kind, BacklogKind::Recent),
        other => panic!("{other:?}"),
    }
    w
}

pub async fn next_frame(w: &mut Worker) -> ToWorker {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a frame within 5s")
        .expect("open")
        .expect("valid")
}

/// The next relay message's payload as JSON.
pub async fn relay_json(w: &mut Worker) -> Value {
    match next_frame(w).await {
        ToWorker::Message { payload, .. } => serde_json::from_slice(&payload).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}
