//! A WebSocket publisher on `/pub`: connect, authenticate, send frames, read answers and
//! the close.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::token::token;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/pub"))
        .await
        .unwrap();
    ws
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame, as JSON (pings are skipped).
pub async fn ws_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5s")
            .expect("connection open")
            .expect("a valid frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Sends each frame and expects an error with the given code, carrying the frame's `ref`.
pub async fn expect_errors<const N: usize>(ws: &mut Ws, cases: [(Value, &str); N]) {
    for (frame, code) in cases {
        let reference = frame["ref"].clone();
        ws_send(ws, frame).await;
        let reply = ws_json(ws).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert_eq!(reply["ref"], reference, "{reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
    }
}

/// Reads until the close frame and returns its code.
pub async fn ws_close_code(ws: &mut Ws) -> u16 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5s");
        match m {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub async fn ws_authed(addr: SocketAddr, events: bool) -> Ws {
    let mut ws = ws_connect(addr).await;
    ws.send(Message::text(token(events))).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "auth", "{reply}");
    ws
}

pub async fn ws_as(addr: SocketAddr, token: String) -> Ws {
    let mut ws = ws_connect(addr).await;
    ws.send(Message::text(token)).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "auth", "{reply}");
    ws
}

/// Publishes `text` on `channel` through `ws` and checks the ack.
pub async fn ws_publish(ws: &mut Ws, channel: &str, text: &str) {
    ws_send(ws, json!({"ref": "m", "ch": channel, "msg": text})).await;
    let ack = ws_json(ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Closes `ws` and waits for the server's close frame, so the session has ended.
pub async fn ws_close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

/// The text frames a session gets before its close frame, and the close.
pub async fn ws_frames_until_close(ws: &mut Ws) -> (Vec<Value>, (u16, String)) {
    let mut texts = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5s");
        match m {
            Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => {
                return (texts, (u16::from(frame.code), frame.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A WebSocket publisher of `token` that joined `channel`.
pub async fn ws_joined(addr: SocketAddr, token: String, channel: &str) -> Ws {
    let mut ws = ws_as(addr, token).await;
    ws_send(&mut ws, json!({"ref": "j", "join": channel})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    ws
}

/// Expects `frame` to be answered with an error `code`; returns the answer.
pub async fn ws_refused(ws: &mut Ws, frame: Value, code: &str) -> Value {
    ws_send(ws, frame).await;
    let reply = ws_json(ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some(code)),
        "{reply}"
    );
    reply
}

/// Reads until the close frame; returns its code and reason.
pub async fn ws_close_frame(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5s");
        match m {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
