//! The sidecar as a whole: its health answer, and a shutdown that closes everything in order.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn health() {
    let s = start().await;
    let r = http(s.addr, "GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200);
    let health = r.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["broker"], "memory");
    assert_eq!(health["roles"], json!(["worker", "dispatcher", "admin"]));
    assert!(
        health["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{health}"
    );
    assert!(health.get("reason").is_none(), "{health}");
    let r = http(s.addr, "GET", "/nope", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_publishers_1001_and_relay_and_removes_socket() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    let mut w = worker(&s.socket, "room").await;
    let socket = s.socket.clone();
    let addr = s.addr;
    let stopping = tokio::spawn(s.stop());
    assert_eq!(ws_close_code(&mut ws).await, 1001);
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    stopping.await.unwrap().unwrap();
    assert!(!socket.exists());
    assert!(TcpStream::connect(addr).await.is_err());
}
