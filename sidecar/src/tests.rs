//! End-to-end tests: a whole sidecar on a real TCP port and a real Unix socket, driven by a
//! WebSocket client, raw HTTP requests and a fake nginx worker speaking the relay protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatup_wire::{BacklogKind, ToSidecar, ToWorker, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Framed;

use crate::config::Config;
use crate::host::publish::WsSettings;
use crate::host::relay::codec::WireCodec;
use crate::jwt::verify::tests::{good_claims, now, sign};
use crate::moderation::Who;
use crate::server::Sidecar;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type Worker = Framed<UnixStream, WireCodec<ToWorker, ToSidecar>>;

struct Running {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    socket: PathBuf,
    /// What the admin API bans through.
    moderation: std::sync::Arc<crate::moderation::Moderation>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), crate::Error>>,
}

impl Running {
    async fn stop(mut self) -> Result<(), crate::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("sidecar stops within 10s")
            .expect("sidecar task")
    }
}

async fn start_with(ws: WsSettings) -> Running {
    start_configured(ws, &[]).await
}

/// A sidecar with the test settings plus `extra` (`section.key=value`).
async fn start_configured(ws: WsSettings, extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("relay.sock");
    let mut sets = vec![
        format!("relay.socket={}", socket.display()),
        "http.listen=127.0.0.1:0".to_string(),
        format!(
            "auth.public_key_file={}/../nginx-conf/example-keys/jwt-public.pem",
            env!("CARGO_MANIFEST_DIR")
        ),
        "limits.max_message_chars=10".to_string(),
        "limits.max_event_bytes=32".to_string(),
        "history.size=50".to_string(),
        // Bans checked; no rate limit, so tests may publish quickly (those of the rate
        // limit turn it on).
        "plugins.chain=ban".to_string(),
        // Leaves at once, so tests closing a publisher see its leave right away (presence's
        // own tests cover the grace).
        "presence.leave_grace_ms=0".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::load(None, Vec::new(), &sets).unwrap().config;
    let sidecar = Sidecar::start(&config, ws).await.unwrap();
    let addr = sidecar.http_addr();
    let moderation = sidecar.moderation();
    if config.roles.chat_host {
        assert_eq!(sidecar.relay_path(), Some(socket.as_path()));
    } else {
        assert_eq!(sidecar.relay_path(), None);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));
    Running {
        _dir: dir,
        addr,
        socket,
        moderation,
        stop: Some(stop),
        task,
    }
}

async fn start() -> Running {
    start_with(WsSettings::default()).await
}

fn token(events: bool) -> String {
    let mut c = good_claims();
    if events {
        c["_events"] = json!(true);
    }
    sign(&c)
}

fn expired_token() -> String {
    let mut c = good_claims();
    c["exp"] = json!(now() - 3600);
    sign(&c)
}

// --- WebSocket helpers -------------------------------------------------------------------

async fn ws_connect(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/pub"))
        .await
        .unwrap();
    ws
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame, as JSON (pings are skipped).
async fn ws_json(ws: &mut Ws) -> Value {
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
async fn expect_errors<const N: usize>(ws: &mut Ws, cases: [(Value, &str); N]) {
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
async fn ws_close_code(ws: &mut Ws) -> u16 {
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

async fn ws_authed(addr: SocketAddr, events: bool) -> Ws {
    let mut ws = ws_connect(addr).await;
    ws.send(Message::text(token(events))).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "auth", "{reply}");
    ws
}

// --- Relay helpers -----------------------------------------------------------------------

async fn worker(socket: &PathBuf, channel: &str) -> Worker {
    let stream = UnixStream::connect(socket).await.unwrap();
    let mut w = Framed::new(stream, WireCodec::default());
    w.send(ToSidecar::Hello {
        version: PROTOCOL_VERSION,
        pid: 1,
    })
    .await
    .unwrap();
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

async fn next_frame(w: &mut Worker) -> ToWorker {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a frame within 5s")
        .expect("open")
        .expect("valid")
}

// --- HTTP helper -------------------------------------------------------------------------

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response within 5s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "chunked bodies are not expected"
    );
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", ctype)];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    http(addr, "POST", path, &headers, body).await
}

// --- Tests -------------------------------------------------------------------------------

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
async fn websocket_publish_reaches_the_relay_with_acks_in_order() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let mut ws = ws_authed(s.addr, false).await;

    ws_send(&mut ws, json!({"ref": 1, "ch": "room", "msg": "hi"})).await;
    let ack = ws_json(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], 1);
    assert_eq!(ack["id"], 1);
    let ep = ack["ep"].as_u64().unwrap();
    assert!((1..1 << 53).contains(&ep));

    ws_send(&mut ws, json!({"ref": "b", "ch": "room", "msg": "again"})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": "b", "id": 2, "ep": ep})
    );

    // The relay carries exactly the message bytes, in order.
    for (id, text) in [(1, "hi"), (2, "again")] {
        match next_frame(&mut w).await {
            ToWorker::Message {
                channel,
                epoch,
                id: got,
                payload,
            } => {
                assert_eq!((channel.as_str(), epoch, got), ("room", ep, id));
                let payload = String::from_utf8(payload).unwrap();
                let prefix = format!(r#"{{"ch":"room","id":{id},"ep":{ep},"t":"#);
                assert!(payload.starts_with(&prefix), "{payload}");
                assert!(
                    payload.ends_with(&format!(
                        r#","user":{{"color":"red","name":"ann"}},"msg":"{text}"}}"#
                    )),
                    "{payload}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_errors_carry_ref_code_and_reason() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    let cases = [
        (
            json!({"ref": 1, "ch": "bad name", "msg": "x"}),
            "bad_channel",
        ),
        (json!({"ref": 2, "ch": "room", "msg": "   "}), "empty"),
        (
            json!({"ref": 3, "ch": "room", "msg": "12345678901"}),
            "too_long",
        ),
        (json!({"ref": 4, "ch": "room"}), "bad_request"),
        (json!({"ref": 5, "msg": "x"}), "bad_request"),
        (
            json!({"ref": 6, "ch": "room", "ev": "typing"}),
            "events_not_allowed",
        ),
    ];
    expect_errors(&mut ws, cases).await;

    ws_send(&mut ws, json!({"ref": 1, "ch": "a:b", "msg": "x"})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        reply["message"],
        chatup_wire::channel::validate(b"a:b")
            .unwrap_err()
            .to_string()
    );
    ws_send(
        &mut ws,
        json!({"ref": 1, "ch": "room", "msg": "😀😀😀😀😀😀😀😀😀😀😀"}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], "too_long");
    assert!(
        reply["message"].as_str().unwrap().contains("11 characters")
            && reply["message"].as_str().unwrap().contains("10"),
        "{reply}"
    );

    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(ws_json(&mut ws).await["code"], "bad_request");
    ws.send(Message::Binary(vec![0xff, 0xfe].into()))
        .await
        .unwrap();
    assert_eq!(ws_json(&mut ws).await["code"], "invalid_utf8");
    // A UTF-8 binary frame is read like text.
    ws.send(Message::Binary(
        json!({"ref": 9, "ch": "room", "msg": "bin"})
            .to_string()
            .into_bytes()
            .into(),
    ))
    .await
    .unwrap();
    let ack = ws_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_u64()),
        (Some("ack"), Some(1))
    );
    // A frame far over any allowed message closes with 1009.
    ws.send(Message::text("x".repeat(1 << 20))).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, 1009);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_refuses_bad_and_expired_tokens_with_close_codes() {
    let s = start().await;
    for (token, code, close) in [
        ("garbage".to_string(), "bad_token", 4500),
        (expired_token(), "token_expired", 4501),
    ] {
        let mut ws = ws_connect(s.addr).await;
        ws.send(Message::text(token)).await.unwrap();
        let reply = ws_json(&mut ws).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], code);
        assert_eq!(ws_close_code(&mut ws).await, close);
    }
    // The token may also come as {"token": ..}.
    let mut ws = ws_connect(s.addr).await;
    ws_send(&mut ws, json!({"token": token(false)})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "auth", "user": {"color": "red", "name": "ann"}})
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_first_frame_that_is_not_a_token_is_closed_4503() {
    let s = start().await;
    for frame in [
        json!({"ref": 1, "ch": "room", "msg": "too early"}),
        json!({"token": 7}),
    ] {
        let mut ws = ws_connect(s.addr).await;
        ws_send(&mut ws, frame.clone()).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame}: {reply}"
        );
        assert_eq!(ws_close_code(&mut ws).await, 4503, "{frame}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_without_token_is_closed_4503() {
    let s = start_with(WsSettings {
        auth_timeout: Duration::from_millis(200),
        ..WsSettings::default()
    })
    .await;
    let mut ws = ws_connect(s.addr).await;
    assert_eq!(ws_close_code(&mut ws).await, 4503);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_reauthentication() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    ws_send(&mut ws, json!({"ref": 1, "ch": "r", "ev": "typing"})).await;
    assert_eq!(ws_json(&mut ws).await["code"], "events_not_allowed");
    ws_send(&mut ws, json!({"token": token(true)})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "auth");
    ws_send(
        &mut ws,
        json!({"ref": 2, "ch": "r", "ev": "typing", "data": {"on": true}}),
    )
    .await;
    let ack = ws_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(2))
    );
    // Event data over limits.max_event_bytes.
    ws_send(
        &mut ws,
        json!({"ref": 3, "ch": "r", "ev": "t", "data": "x".repeat(40)}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "too_long");
    // A bad token later ends the session like a bad first token.
    ws_send(&mut ws, json!({"token": expired_token()})).await;
    assert_eq!(ws_json(&mut ws).await["code"], "token_expired");
    assert_eq!(ws_close_code(&mut ws).await, 4501);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_pings_and_closes_silent_clients_4001() {
    let s = start_with(WsSettings {
        ping_interval: Duration::from_millis(150),
        ..WsSettings::default()
    })
    .await;
    let mut ws = ws_authed(s.addr, false).await;
    // Not reading: no pong goes back, so the server hears nothing after its ping.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut saw_ping = false;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_ping);
    assert_eq!(code, 4001);

    // A client that reads (and so answers pings) stays connected.
    let mut ws = ws_authed(s.addr, false).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(pings >= 2, "{pings}");
    ws_send(&mut ws, json!({"ref": 1, "ch": "r", "msg": "still here"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "ack");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn post_publishes_text_and_json() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let t = token(true);

    let r = post(
        s.addr,
        "/pub/room",
        Some(&t),
        "text/plain; charset=utf-8",
        "héllo".as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["ch"].as_str(), v["id"].as_u64()),
        (Some("room"), Some(1))
    );
    let ep = v["ep"].as_u64().unwrap();

    let r = post(
        s.addr,
        "/pub/room",
        Some(&t),
        "application/json",
        br#"{"msg":"json"}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"ch": "room", "id": 2, "ep": ep}));
    let r = post(
        s.addr,
        "/pub/room",
        Some(&t),
        "application/json",
        br#"{"ev":"poll","data":{"q":1}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // What `curl --data 'a+b=c'` sends: the raw body is the text, not decoded as a form.
    let r = post(
        s.addr,
        "/pub/room",
        Some(&t),
        "application/x-www-form-urlencoded",
        b"a+b=c",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let mut payloads = Vec::new();
    for _ in 0..4 {
        match next_frame(&mut w).await {
            ToWorker::Message { payload, .. } => payloads.push(String::from_utf8(payload).unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        payloads[0].ends_with(r#""msg":"héllo"}"#),
        "{}",
        payloads[0]
    );
    assert!(payloads[1].ends_with(r#""msg":"json"}"#), "{}", payloads[1]);
    assert!(
        payloads[2].ends_with(r#""ev":"poll","data":{"q":1}}"#),
        "{}",
        payloads[2]
    );
    assert!(
        payloads[3].ends_with(r#""msg":"a+b=c"}"#),
        "{}",
        payloads[3]
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn post_errors_have_the_documented_statuses() {
    let s = start().await;
    let t = token(false);
    let expired = expired_token();
    /// Token, path, content type, body, expected status and code.
    type Case<'a> = (Option<&'a str>, &'a str, &'a str, &'a [u8], u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (None, "/pub/room", "text/plain", b"hi", 401, "bad_token"),
        (
            Some("nonsense"),
            "/pub/room",
            "text/plain",
            b"hi",
            401,
            "bad_token",
        ),
        (
            Some(&expired),
            "/pub/room",
            "text/plain",
            b"hi",
            401,
            "token_expired",
        ),
        (
            Some(&t),
            "/pub/a:b",
            "text/plain",
            b"hi",
            400,
            "bad_channel",
        ),
        (Some(&t), "/pub/room", "text/plain", b"  \n", 400, "empty"),
        (
            Some(&t),
            "/pub/room",
            "text/plain",
            b"\xff\xfe",
            400,
            "invalid_utf8",
        ),
        (
            Some(&t),
            "/pub/room",
            "application/json",
            b"{",
            400,
            "bad_request",
        ),
        (
            Some(&t),
            "/pub/room",
            "application/json",
            b"[1]",
            400,
            "bad_request",
        ),
        (
            Some(&t),
            "/pub/room",
            "application/json",
            br#"{"ev":"x"}"#,
            403,
            "events_not_allowed",
        ),
        (
            Some(&t),
            "/pub/room",
            "text/plain",
            b"12345678901",
            413,
            "too_long",
        ),
        (
            Some(&t),
            "/pub/room",
            "multipart/form-data; boundary=x",
            b"a=b",
            415,
            "unsupported_media_type",
        ),
        (
            Some(&t),
            "/pub/room",
            "text/plain; charset=latin1",
            b"hi",
            415,
            "unsupported_media_type",
        ),
    ];
    for (token, path, ctype, body, status, code) in cases {
        let r = post(s.addr, path, token, ctype, body).await;
        assert_eq!(r.status, status, "{path} {ctype} {body:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        if status == 401 {
            assert_eq!(
                r.headers.get("www-authenticate").map(String::as_str),
                Some("Bearer")
            );
        }
    }
    // A huge body is refused without being read whole.
    let big = vec![b'x'; 1 << 20];
    let r = post(s.addr, "/pub/room", Some(&t), "text/plain", &big).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (413, Some("too_long"))
    );
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

// --- Presence ----------------------------------------------------------------------------

/// A token for user `sub` whose `_public` is `{"name": name}`.
fn user_token(sub: Option<&str>, name: &str, events: bool) -> String {
    let mut c = json!({"exp": now() + 600, "_public": {"name": name}});
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    if events {
        c["_events"] = json!(true);
    }
    sign(&c)
}

async fn ws_as(addr: SocketAddr, token: String) -> Ws {
    let mut ws = ws_connect(addr).await;
    ws.send(Message::text(token)).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "auth", "{reply}");
    ws
}

/// The next relay message's payload as JSON.
async fn relay_json(w: &mut Worker) -> Value {
    match next_frame(w).await {
        ToWorker::Message { payload, .. } => serde_json::from_slice(&payload).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Publishes `text` on `channel` through `ws` and checks the ack.
async fn ws_publish(ws: &mut Ws, channel: &str, text: &str) {
    ws_send(ws, json!({"ref": "m", "ch": channel, "msg": text})).await;
    let ack = ws_json(ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Closes `ws` and waits for the server's close frame, so the session has ended.
async fn ws_close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

#[tokio::test]
async fn join_and_leave_frames_are_answered_with_their_ref() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, false).await;
    let exchanges = [
        (
            json!({"ref": 1, "join": "room"}),
            json!({"type": "joined", "ref": 1, "ch": "room"}),
        ),
        // Again: still joined, not an error.
        (
            json!({"ref": "x", "join": "room"}),
            json!({"type": "joined", "ref": "x", "ch": "room"}),
        ),
        (
            json!({"ref": 2, "leave": "room"}),
            json!({"type": "left", "ref": 2, "ch": "room"}),
        ),
        (
            json!({"ref": 3, "leave": "room"}),
            json!({"type": "left", "ref": 3, "ch": "room"}),
        ),
        // No ref: none in the answer.
        (
            json!({"join": "other"}),
            json!({"type": "joined", "ch": "other"}),
        ),
    ];
    for (frame, answer) in exchanges {
        ws_send(&mut ws, frame).await;
        assert_eq!(ws_json(&mut ws).await, answer);
    }
    let errors = [
        (json!({"ref": 4, "join": "bad name"}), "bad_channel"),
        (json!({"ref": 5, "leave": "a:b"}), "bad_channel"),
        (json!({"ref": 6, "join": ""}), "bad_channel"),
        (json!({"ref": 7, "join": 1}), "bad_request"),
        (json!({"ref": 8, "join": "a", "leave": "b"}), "bad_request"),
        (
            json!({"ref": 9, "join": "a", "ch": "a", "msg": "x"}),
            "bad_request",
        ),
    ];
    expect_errors(&mut ws, errors).await;
    ws_send(&mut ws, json!({"ref": 10, "join": "a:b"})).await;
    assert_eq!(
        ws_json(&mut ws).await["message"],
        chatup_wire::channel::validate(b"a:b")
            .unwrap_err()
            .to_string()
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_and_leave_events_reach_subscribers_once_per_user() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let ann1 = ws_as(s.addr, user_token(Some("u-ann"), "ann", false)).await;
    let mut ann2 = ws_as(s.addr, user_token(Some("u-ann"), "ann", false)).await;
    let mut ann1 = ann1;

    ws_send(&mut ann1, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ann1).await["type"], "joined");
    let join = relay_json(&mut w).await;
    assert_eq!(join["ev"], "join", "{join}");
    assert_eq!(join["user"], json!({"name": "ann"}));
    assert_eq!(
        (join["ch"].as_str(), join["id"].as_u64()),
        (Some("room"), Some(1))
    );
    assert!(join.get("data").is_none(), "{join}");

    // The same user's second session: no second join. A marker proves nothing came between.
    ws_send(&mut ann2, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ann2).await["type"], "joined");
    ws_publish(&mut ann2, "room", "mark1").await;
    assert_eq!(relay_json(&mut w).await["msg"], "mark1");

    // The first session closes: the user is still there through the second.
    ws_close(ann1).await;
    ws_publish(&mut ann2, "room", "mark2").await;
    assert_eq!(relay_json(&mut w).await["msg"], "mark2");

    // Another user (no sub: told apart by _public) joins and leaves by frame.
    let mut bo = ws_as(s.addr, user_token(None, "bo", false)).await;
    ws_send(&mut bo, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut bo).await["type"], "joined");
    let join = relay_json(&mut w).await;
    assert_eq!(
        (join["ev"].as_str(), &join["user"]),
        (Some("join"), &json!({"name": "bo"}))
    );
    ws_send(&mut bo, json!({"ref": 2, "leave": "room"})).await;
    assert_eq!(ws_json(&mut bo).await["type"], "left");
    let leave = relay_json(&mut w).await;
    assert_eq!(
        (leave["ev"].as_str(), &leave["user"]),
        (Some("leave"), &json!({"name": "bo"}))
    );

    // The last session of ann closes: one leave.
    ws_close(ann2).await;
    let leave = relay_json(&mut w).await;
    assert_eq!(
        (leave["ev"].as_str(), &leave["user"]),
        (Some("leave"), &json!({"name": "ann"}))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn presence_events_can_be_turned_off() {
    let s = start_configured(WsSettings::default(), &["presence.events=false"]).await;
    let mut w = worker(&s.socket, "room").await;
    let mut ws = ws_authed(s.addr, false).await;
    ws_send(&mut ws, json!({"ref": 1, "join": "room"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "joined");
    ws_publish(&mut ws, "room", "first").await;
    let first = relay_json(&mut w).await;
    assert_eq!(
        (first["id"].as_u64(), first["msg"].as_str()),
        (Some(1), Some("first"))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn publishers_cannot_send_reserved_events() {
    let s = start().await;
    let mut ws = ws_authed(s.addr, true).await;
    for name in ["join", "leave", "resync"] {
        ws_send(&mut ws, json!({"ref": name, "ch": "room", "ev": name})).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_str()),
            (Some("bad_request"), Some(name)),
            "{reply}"
        );
        let body = json!({"ev": name}).to_string();
        let r = post(
            s.addr,
            "/pub/room",
            Some(&token(true)),
            "application/json",
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    s.stop().await.unwrap();
}

// --- Dispatcher --------------------------------------------------------------------------

async fn join(s: &Running, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http(s.addr, "POST", path, headers, body).await
}

fn allowed_origin(r: &HttpResponse) -> Option<&str> {
    r.headers
        .get("access-control-allow-origin")
        .map(String::as_str)
}

/// Sends worker `Stats` and waits until the sidecar has read them.
async fn report_stats(w: &mut Worker, counts: &[(&str, u32)]) {
    let channels: Vec<chatup_wire::ChannelCount> = counts
        .iter()
        .map(|(channel, subscribers)| chatup_wire::ChannelCount {
            channel: channel.to_string(),
            subscribers: *subscribers,
        })
        .collect();
    w.send(ToSidecar::Stats {
        subscribers: counts.iter().map(|(_, n)| n).sum(),
        totals: Default::default(),
        channels,
    })
    .await
    .unwrap();
    // Frames are handled in order: the answer to this Subscribe comes after the Stats.
    w.send(ToSidecar::Subscribe {
        channel: "sync".into(),
        want: 0,
        since: None,
    })
    .await
    .unwrap();
    assert!(matches!(next_frame(w).await, ToWorker::Backlog { .. }));
}

#[tokio::test]
async fn join_names_this_host_with_counts_and_history() {
    let s = start_configured(
        WsSettings::default(),
        &[
            "host.id=chat-test",
            "host.public_url=https://chat.example",
            "dispatch.history=2",
        ],
    )
    .await;
    let mut w1 = worker(&s.socket, "room").await;
    let mut w2 = worker(&s.socket, "elsewhere").await;
    report_stats(&mut w1, &[("room", 3), ("other", 5)]).await;
    report_stats(&mut w2, &[("room", 2)]).await;
    let t = token(false);
    for text in ["one", "two", "three"] {
        let r = post(s.addr, "/pub/room", Some(&t), "text/plain", text.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut ann = ws_as(s.addr, user_token(Some("a"), "ann", false)).await;
    let mut ann_again = ws_as(s.addr, user_token(Some("a"), "ann", false)).await;
    let mut bo = ws_as(s.addr, user_token(Some("b"), "bo", false)).await;
    for ws in [&mut ann, &mut ann_again, &mut bo] {
        ws_send(ws, json!({"join": "room"})).await;
        assert_eq!(ws_json(ws).await["type"], "joined");
    }

    let r = join(&s, "/join/room", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let v = r.json();
    assert_eq!(
        v["host"],
        json!({"id": "chat-test", "url": "https://chat.example",
               "sub": "wss://chat.example/sub/", "pub": "wss://chat.example/pub",
               "post": "https://chat.example/pub/"})
    );
    assert_eq!(v["channel"], "room");
    assert_eq!(v["subCount"], 5);
    assert_eq!(v["pubCount"], 2);
    // The last two messages, oldest first, as published: here the join events of ann and
    // bo came after "three".
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{v}");
    let ids: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [4, 5]);
    assert_eq!(history[0]["ev"], "join");
    assert_eq!(history[1]["user"], json!({"name": "bo"}));
    // The bytes are the very ones subscribers got.
    let mut from_relay = Vec::new();
    for _ in 0..5 {
        match next_frame(&mut w1).await {
            ToWorker::Message { payload, .. } => {
                from_relay.push(String::from_utf8(payload).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        r.body.contains(&from_relay[3]) && r.body.contains(&from_relay[4]),
        "{}",
        r.body
    );

    // Another channel: no messages, counts of its own.
    let v = join(&s, "/join/other", &[], b"").await.json();
    assert_eq!(
        (v["subCount"].as_u64(), v["pubCount"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(v["history"], json!([]));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_errors_and_exclusions() {
    let s = start().await;
    // Without host.id: the machine's name and the HTTP port; without public_url: paths.
    let v = join(&s, "/join/room", &[], b"").await.json();
    let id = v["host"]["id"].as_str().unwrap().to_owned();
    assert!(id.ends_with(&format!(":{}", s.addr.port())), "{id}");
    assert_eq!(
        v["host"],
        json!({"id": id, "url": "", "sub": "/sub/", "pub": "/pub", "post": "/pub/"})
    );

    let other = json!({"exclude": ["not-this-one"]}).to_string();
    let r = join(
        &s,
        "/join/room",
        &[("Content-Type", "application/json")],
        other.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["host"]["id"].as_str()),
        (200, Some(id.as_str()))
    );

    for body in [
        json!({"exclude": [id]}),
        json!({"exclude": id}),
        json!({"failed": id}),
        json!({"failed": ["x", id]}),
    ] {
        let r = join(
            &s,
            "/join/room",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 503, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "no_host");
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no live chat host"));
        assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    }
    for body in [
        &b"{"[..],
        b"[1]",
        br#"{"exclude": 5}"#,
        br#"{"exclude": [true]}"#,
    ] {
        let r = join(
            &s,
            "/join/room",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    let r = join(&s, "/join/a:b", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_channel"))
    );
    let r = join(&s, "/join/room", &[], &vec![b' '; 20_000]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // Only POST (and the preflight).
    let r = http(s.addr, "GET", "/join/room", &[], b"").await;
    assert_eq!(r.status, 405);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_is_not_served_without_the_dispatcher_role() {
    let s = start_configured(WsSettings::default(), &["roles.dispatcher=false"]).await;
    let r = join(&s, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = post(
        s.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn join_cors_follows_the_configured_origins() {
    let preflight_headers = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    // Off by default: no CORS header at all.
    let s = start().await;
    let r = join(&s, "/join/room", &[("Origin", "https://app.example")], b"").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert!(!r.headers.contains_key("access-control-allow-methods"));
    s.stop().await.unwrap();

    // Any origin.
    let s = start_configured(WsSettings::default(), &["dispatch.cors_origins=*"]).await;
    let r = join(&s, "/join/room", &[("Origin", "https://x.example")], b"").await;
    assert_eq!(allowed_origin(&r), Some("*"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(allowed_origin(&r), Some("*"));
    s.stop().await.unwrap();

    // A list: listed origins are echoed, others get nothing; the answer varies by Origin.
    let s = start_configured(
        WsSettings::default(),
        &["dispatch.cors_origins=https://app.example,https://other.example"],
    )
    .await;
    let r = join(&s, "/join/room", &[("Origin", "https://app.example")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(allowed_origin(&r), Some("https://app.example"));
    assert_eq!(r.headers.get("vary").map(String::as_str), Some("origin"));
    let r = join(&s, "/join/room", &[("Origin", "https://evil.example")], b"").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert_eq!(r.headers.get("vary").map(String::as_str), Some("origin"));
    // Errors carry the headers too, so the page can read them.
    let r = join(&s, "/join/a:b", &[("Origin", "https://other.example")], b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(allowed_origin(&r), Some("https://other.example"));
    let r = http(s.addr, "OPTIONS", "/join/room", &preflight_headers, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(allowed_origin(&r), Some("https://app.example"));
    assert_eq!(
        r.headers
            .get("access-control-allow-methods")
            .map(String::as_str),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        r.headers
            .get("access-control-allow-headers")
            .map(String::as_str),
        Some("content-type")
    );
    assert!(r.headers.contains_key("access-control-max-age"));
    let r = http(
        s.addr,
        "OPTIONS",
        "/join/room",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_dispatcher_alone_finds_the_hosts_reporting_to_redis() {
    let redis = crate::cluster::registry::tests::RedisServer::start();
    let url = format!("redis.url={}", redis.url());
    let host = start_configured(
        WsSettings::default(),
        &[
            &url,
            "host.id=chat-a",
            "host.public_url=http://a.example",
            "host.report_interval_ms=100",
            "host.ttl_ms=400",
            "roles.dispatcher=false",
        ],
    )
    .await;
    let dispatcher = start_configured(
        WsSettings::default(),
        &[
            &url,
            "roles.chat_host=false",
            "dispatch.history=5",
            // Without the chat-host role no publisher token is checked: no key is read.
            "auth.public_key_file=/nonexistent/jwt-public.pem",
        ],
    )
    .await;
    // No relay socket, no publisher endpoints.
    assert!(!dispatcher.socket.exists());
    assert_eq!(
        http(dispatcher.addr, "GET", "/pub", &[], b"").await.status,
        404
    );
    let r = post(
        dispatcher.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"x",
    )
    .await;
    assert_eq!(r.status, 404);
    // And the worker alone does not dispatch.
    assert_eq!(join(&host, "/join/room", &[], b"").await.status, 404);

    let mut w = worker(&host.socket, "room").await;
    report_stats(&mut w, &[("room", 6)]).await;
    let r = post(
        host.addr,
        "/pub/room",
        Some(&token(false)),
        "text/plain",
        b"hello",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Within a report interval or two the dispatcher sees the host and its counts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let r = join(&dispatcher, "/join/room", &[], b"").await;
        if r.status == 200 && r.json()["subCount"] == 6 {
            break r.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        v["host"],
        json!({"id": "chat-a", "url": "http://a.example", "sub": "ws://a.example/sub/",
               "pub": "ws://a.example/pub", "post": "http://a.example/pub/"})
    );
    assert_eq!(v["history"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["history"][0]["msg"], "hello");

    let r = join(&dispatcher, "/join/room", &[], br#"{"failed":"chat-a"}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("no_host"))
    );

    // A host that stops leaves the registry at once.
    host.stop().await.unwrap();
    let r = join(&dispatcher, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("no_host"))
    );
    dispatcher.stop().await.unwrap();

    // With Redis gone, the dispatcher says so.
    let dispatcher =
        start_configured(WsSettings::default(), &[&url, "roles.chat_host=false"]).await;
    drop(redis);
    let r = join(&dispatcher, "/join/room", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    dispatcher.stop().await.unwrap();
}

// --- Admin API -----------------------------------------------------------------------------

fn example_key(name: &str) -> String {
    format!(
        "{}/../nginx-conf/example-keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn admin_bearer() -> String {
    let claims = json!({"exp": now() + 600, "scope": "chatup:admin"});
    format!("Bearer {}", crate::admin::auth::tests::sign_admin(&claims))
}

#[tokio::test]
async fn the_admin_api_is_off_without_its_key() {
    let s = start().await;
    let bearer = admin_bearer();
    let calls: [(&str, &str, &[u8]); 4] = [
        ("POST", "/post", br#"{"channel":"a","msg":"x"}"#),
        ("GET", "/messages/a", b""),
        ("GET", "/stats/a", b""),
        ("GET", "/stats", b""),
    ];
    for (method, path, body) in calls {
        let r = http(
            s.addr,
            method,
            path,
            &[("Authorization", bearer.as_str())],
            body,
        )
        .await;
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body);
        let error = &r.json()["error"];
        assert_eq!(error["code"], "admin_disabled", "{method} {path}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin.public_key_file")),
            "{error}"
        );
    }
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").await.status, 200);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_posts_and_reads_back_in_process() {
    let admin_key = format!("admin.public_key_file={}", example_key("admin-public.pem"));
    let s = start_configured(WsSettings::default(), &[&admin_key]).await;
    let bearer = admin_bearer();
    let auth = [("Authorization", bearer.as_str())];
    let r = http(
        s.addr,
        "POST",
        "/post",
        &auth,
        br#"[{"channel":"a","msg":"one"},{"channels":["a","b"],"ev":"poll","data":{"q":1},"user":{"name":"op"}}]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let published = r.json()["published"].clone();
    let placed: Vec<(String, u64)> = published
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["ch"].as_str().unwrap().to_owned(),
                p["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(placed, [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]);
    let r = http(s.addr, "GET", "/messages/a?limit=1", &auth, b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The stored bytes, as subscribers get them: no user field without "user".
    let raw = &r.body;
    assert!(
        raw.contains(r#","user":{"name":"op"},"ev":"poll","data":{"q":1}}"#),
        "{raw}"
    );
    let page = r.json();
    assert_eq!(page["next"], 2);
    assert_eq!(page["epoch"], published[0]["ep"]);
    let r = http(s.addr, "GET", "/messages/a?before=2", &auth, b"").await;
    let page = r.json();
    assert_eq!(page["next"], Value::Null);
    let first = page["messages"][0].clone();
    assert_eq!(first["msg"], "one");
    assert!(first.get("user").is_none(), "{first}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_key_must_not_be_the_publishers_key() {
    let dir = tempfile::tempdir().unwrap();
    let sets = vec![
        format!("relay.socket={}", dir.path().join("relay.sock").display()),
        "http.listen=127.0.0.1:0".to_string(),
        format!("auth.public_key_file={}", example_key("jwt-public.pem")),
        format!("admin.public_key_file={}", example_key("jwt-public.pem")),
    ];
    let config = Config::load(None, Vec::new(), &sets).unwrap().config;
    let Err(e) = Sidecar::start(&config, WsSettings::default()).await else {
        panic!("the sidecar started with the publishers' key as admin key");
    };
    let message = e.to_string();
    assert!(
        message.contains("admin.public_key_file") && message.contains("same key"),
        "{message}"
    );
}

// --- Bans --------------------------------------------------------------------------------

/// Bans by user id (`sub`).
fn users(subs: &[&str]) -> Vec<Who> {
    subs.iter().map(|n| Who::User(n.to_string())).collect()
}

/// The text frames a session gets before its close frame, and the close.
async fn ws_frames_until_close(ws: &mut Ws) -> (Vec<Value>, (u16, String)) {
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
async fn ws_joined(addr: SocketAddr, token: String, channel: &str) -> Ws {
    let mut ws = ws_as(addr, token).await;
    ws_send(&mut ws, json!({"ref": "j", "join": channel})).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    ws
}

/// Expects `frame` to be answered with an error `code`; returns the answer.
async fn ws_refused(ws: &mut Ws, frame: Value, code: &str) -> Value {
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
async fn ws_close_frame(ws: &mut Ws) -> (u16, String) {
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

#[tokio::test]
async fn a_ban_kicks_the_users_sessions_in_the_channel_and_refuses_the_rest() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut joined = ws_joined(s.addr, ann(), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");
    let mut published = ws_as(s.addr, ann()).await;
    ws_publish(&mut published, "room", "hi").await;
    assert_eq!(relay_json(&mut w).await["msg"], "hi");
    let mut elsewhere = ws_joined(s.addr, ann(), "hall").await;
    // Banned by `_public.name` (no sub).
    let mut bo = ws_joined(s.addr, user_token(None, "bo", false), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");
    let mut cy = ws_joined(s.addr, user_token(Some("u-cy"), "cy", false), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");

    s.moderation
        .ban(
            "room",
            &[Who::User("u-ann".into()), Who::Name("bo".into())],
            None,
        )
        .await
        .unwrap();
    // Told why and until when (for ever: null), then closed.
    let (texts, close) = ws_frames_until_close(&mut joined).await;
    assert_eq!(close, (4502, "banned from room".to_string()));
    assert_eq!(
        texts.last().unwrap(),
        &json!({"type": "error", "code": "banned", "ch": "room", "until": null,
                "message": "you are banned from this channel permanently"})
    );
    for ws in [&mut published, &mut bo] {
        assert_eq!(
            ws_close_frame(ws).await,
            (4502, "banned from room".to_string())
        );
    }
    // The channel hears the removals (no `user`), and the kicked users leave.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = relay_json(&mut w).await;
        seen.push(format!(
            "{}:{}",
            m["ev"].as_str().unwrap(),
            m["data"].as_str().unwrap_or("")
        ));
        if m["ev"] == "rmUserMsg" {
            assert!(m.get("user").is_none(), "{m}");
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["leave:", "leave:", "rmUserMsg:bo", "rmUserMsg:u-ann"]
    );

    // Ann's session elsewhere stays, but cannot publish to the room nor join it.
    let err = ws_refused(
        &mut elsewhere,
        json!({"ref": 1, "ch": "room", "msg": "x"}),
        "banned",
    )
    .await;
    assert_eq!(err["ref"], 1);
    assert_eq!(
        err["message"],
        "you are banned from this channel permanently"
    );
    ws_refused(&mut elsewhere, json!({"ref": 2, "join": "room"}), "banned").await;
    ws_publish(&mut elsewhere, "hall", "ok").await;
    // And the refused join made no `join` event: the next thing the room hears is cy.
    ws_publish(&mut cy, "room", "cy here").await;
    assert_eq!(relay_json(&mut w).await["msg"], "cy here");
    let r = post(s.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "banned");

    // Unbanned: all works again.
    s.moderation
        .unban("room", &users(&["u-ann"]))
        .await
        .unwrap();
    ws_publish(&mut elsewhere, "room", "back").await;
    assert_eq!(relay_json(&mut w).await["msg"], "back");
    let r = post(s.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_ban_with_an_expiry_lapses_by_itself() {
    let s = start().await;
    let ann = user_token(Some("u-ann"), "ann", false);
    let started = std::time::Instant::now();
    let ban = s
        .moderation
        .ban("room", &users(&["u-ann"]), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(ban.until.is_some());
    let mut ws = ws_as(s.addr, ann).await;
    let err = ws_refused(
        &mut ws,
        json!({"ref": 1, "ch": "room", "msg": "x"}),
        "banned",
    )
    .await;
    let message = err["message"].as_str().unwrap();
    assert!(
        message.starts_with("you are banned from this channel until 20"),
        "{message}"
    );
    loop {
        ws_send(&mut ws, json!({"ref": 2, "ch": "room", "msg": "x"})).await;
        let reply = ws_json(&mut ws).await;
        if reply["type"] == "ack" {
            break;
        }
        assert_eq!(reply["code"], "banned", "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ban did not lapse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(950));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_ban_plugin_bans_kick_but_do_not_refuse() {
    let s = start_configured(WsSettings::default(), &["plugins.chain=rate_limit"]).await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut joined = ws_joined(s.addr, ann(), "room").await;
    s.moderation
        .ban("room", &users(&["u-ann"]), None)
        .await
        .unwrap();
    assert_eq!(ws_close_frame(&mut joined).await.0, 4502);
    let mut again = ws_joined(s.addr, ann(), "room").await;
    ws_publish(&mut again, "room", "still").await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_for_a_banned_user_closes_the_session() {
    let s = start().await;
    let mut ws = ws_joined(s.addr, user_token(Some("u-bo"), "bo", false), "room").await;
    s.moderation
        .ban("room", &users(&["u-ann"]), None)
        .await
        .unwrap();
    // Bo's session is untouched; the same user's fresh token is fine.
    ws_send(
        &mut ws,
        json!({"ref": 1, "token": user_token(Some("u-bo"), "bo", false)}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["type"], "auth");
    // Becoming ann, banned from a channel the session is in: refused and closed.
    ws_send(
        &mut ws,
        json!({"ref": 2, "token": user_token(Some("u-ann"), "ann", false)}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), &reply["ref"]),
        (Some("banned"), &json!(2)),
        "{reply}"
    );
    assert_eq!(
        ws_close_frame(&mut ws).await,
        (4502, "banned from room".to_string())
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_ban_made_on_one_host_kicks_the_session_on_another() {
    let redis = crate::cluster::registry::tests::RedisServer::start();
    let url = format!("redis.url={}", redis.url());
    let a = start_configured(WsSettings::default(), &[&url, "host.id=a"]).await;
    let b = start_configured(WsSettings::default(), &[&url, "host.id=b"]).await;
    let mut w = worker(&a.socket, "room").await;
    let ann = || user_token(Some("u-ann"), "ann", false);
    let mut on_b = ws_joined(b.addr, ann(), "room").await;
    assert_eq!(relay_json(&mut w).await["ev"], "join");

    // B's control subscription comes up asynchronously after start: wait for the first kick
    // to land, banning again (which is safe) until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        a.moderation
            .ban("room", &users(&["u-ann"]), None)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), ws_close_frame(&mut on_b)).await {
            Ok(frame) => {
                assert_eq!(frame, (4502, "banned from room".to_string()));
                break;
            }
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "B's session was not kicked"
            ),
        }
    }
    // The event reached the channel through Redis; B refuses ann from now on.
    let mut events = Vec::new();
    for _ in 0..2 {
        events.push(relay_json(&mut w).await);
    }
    assert!(
        events
            .iter()
            .any(|e| e["ev"] == "rmUserMsg" && e["data"] == "u-ann"),
        "{events:?}"
    );
    let r = post(b.addr, "/pub/room", Some(&ann()), "text/plain", b"x").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("banned"))
    );
    let mut again = ws_as(b.addr, ann()).await;
    ws_refused(&mut again, json!({"ref": 1, "join": "room"}), "banned").await;
    // Lifted on A, lifted on B.
    a.moderation
        .unban("room", &users(&["u-ann"]))
        .await
        .unwrap();
    ws_send(&mut again, json!({"ref": 2, "join": "room"})).await;
    assert_eq!(ws_json(&mut again).await["type"], "joined");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_on_both_endpoints() {
    let s = start().await;
    let mut w = worker(&s.socket, "room").await;
    let alice = user_token(Some("u1"), "alice", false);
    let post_keyed = |token: String, key: &'static str, text: &'static str| {
        let addr = s.addr;
        async move {
            let auth = format!("Bearer {token}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "text/plain"),
                ("Idempotency-Key", key),
            ];
            http(addr, "POST", "/pub/room", &headers, text.as_bytes()).await
        }
    };

    let first = post_keyed(alice.clone(), "k-1", "one").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first.get("duplicate"), None, "{first}");
    let ep = first["ep"].clone();
    // The retry, even with another text: the first answer, marked, and nothing published.
    let again = post_keyed(alice.clone(), "k-1", "one again").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.json(),
        json!({"ch": "room", "id": 1, "ep": ep, "duplicate": true})
    );
    // Same key over the WebSocket, same user and channel: the same publish.
    let mut ws = ws_as(s.addr, alice.clone()).await;
    ws_send(
        &mut ws,
        json!({"ref": 7, "ch": "room", "msg": "one", "key": "k-1"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": 7, "id": 1, "ep": ep, "duplicate": true})
    );
    // Another key, another channel, or another user: a new message each.
    ws_send(
        &mut ws,
        json!({"ref": 8, "ch": "room", "msg": "two", "key": "k-2"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ref": 8, "id": 2, "ep": ep})
    );
    ws_send(
        &mut ws,
        json!({"ref": 9, "ch": "other", "msg": "x", "key": "k-1"}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["id"], 1);
    let bob = post_keyed(user_token(Some("u2"), "alice", false), "k-1", "three").await;
    assert_eq!((bob.status, bob.json()["id"].clone()), (200, json!(3)));
    // A null key is no key.
    ws_send(
        &mut ws,
        json!({"ref": 10, "ch": "room", "msg": "four", "key": null}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["id"], 4);

    // Bad keys are refused before anything is published.
    expect_errors(
        &mut ws,
        [
            (
                json!({"ref": 11, "ch": "room", "msg": "x", "key": ""}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 12, "ch": "room", "msg": "x", "key": 5}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 13, "ch": "room", "msg": "x", "key": "a b"}),
                "bad_idempotency_key",
            ),
            (
                json!({"ref": 14, "ch": "room", "msg": "x", "key": "k".repeat(65)}),
                "bad_idempotency_key",
            ),
        ],
    )
    .await;
    for bad in ["has space", "{tag}", "k/1"] {
        let r = post_keyed(alice.clone(), bad, "x").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "bad_idempotency_key", "{bad}");
    }

    // The relay got each message once.
    let texts: Vec<Value> = [
        relay_json(&mut w).await,
        relay_json(&mut w).await,
        relay_json(&mut w).await,
        relay_json(&mut w).await,
    ]
    .iter()
    .map(|m| json!([m["id"], m["msg"]]))
    .collect();
    assert_eq!(
        texts,
        [
            json!([1, "one"]),
            json!([2, "two"]),
            json!([3, "three"]),
            json!([4, "four"])
        ]
    );
    ws_close(ws).await;
    s.stop().await.unwrap();
}
