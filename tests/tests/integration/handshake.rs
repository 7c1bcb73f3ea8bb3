//! Handshake errors get their 4xx at once, never a hang.

use chatup_tests::raw::{accept_for, random_key, upgrade_request};
use chatup_tests::{Chatup, RawWs};
use std::time::{Duration, Instant};

async fn answer(env: &Chatup, request: String) -> chatup_tests::HttpResponse {
    let started = Instant::now();
    let resp = match RawWs::handshake(env.nginx_addr(), request.as_bytes(), None).await {
        Ok(ws) => panic!("accepted: {:?}\nrequest: {request}", ws.response),
        Err(Ok(resp)) => resp,
        Err(Err(e)) => panic!("{e}\nrequest: {request}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}: {request}",
        started.elapsed()
    );
    resp
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

#[tokio::test]
async fn handshake_errors_are_answered_quickly() {
    let env = Chatup::start();
    let key = random_key();
    let up = ("Upgrade", "websocket");
    let conn = ("Connection", "Upgrade");
    let ver = ("Sec-WebSocket-Version", "13");
    let k = ("Sec-WebSocket-Key", key.as_str());
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "no Upgrade header",
            req("GET", "/sub/hs", &[conn, ver, k]),
            400,
        ),
        (
            "no Connection: upgrade",
            req("GET", "/sub/hs", &[up, ver, k]),
            400,
        ),
        (
            "Upgrade: h2c",
            req("GET", "/sub/hs", &[("Upgrade", "h2c"), conn, ver, k]),
            400,
        ),
        ("no key", req("GET", "/sub/hs", &[up, conn, ver]), 400),
        (
            "key not base64",
            req(
                "GET",
                "/sub/hs",
                &[up, conn, ver, ("Sec-WebSocket-Key", "not a key!")],
            ),
            400,
        ),
        (
            "key of 8 bytes",
            req(
                "GET",
                "/sub/hs",
                &[up, conn, ver, ("Sec-WebSocket-Key", "AAAAAAAAAAA=")],
            ),
            400,
        ),
        ("plain GET", req("GET", "/sub/hs", &[]), 400),
        (
            "version 8",
            req(
                "GET",
                "/sub/hs",
                &[up, conn, ("Sec-WebSocket-Version", "8"), k],
            ),
            426,
        ),
        (
            "POST",
            req(
                "POST",
                "/sub/hs",
                &[up, conn, ver, k, ("Content-Length", "0")],
            ),
            405,
        ),
        (
            "since without a position",
            req("GET", "/sub/hs?since=hs", &[up, conn, ver, k]),
            400,
        ),
        (
            "since with 2 fields",
            req("GET", "/sub/hs?since=hs:1", &[up, conn, ver, k]),
            400,
        ),
        (
            "since with a word for epoch",
            req("GET", "/sub/hs?since=hs:x:1", &[up, conn, ver, k]),
            400,
        ),
        (
            "since with a negative id",
            req("GET", "/sub/hs?since=hs:1:-1", &[up, conn, ver, k]),
            400,
        ),
        (
            "since with a bad channel",
            req("GET", "/sub/hs?since=h%20s:1:1", &[up, conn, ver, k]),
            400,
        ),
        (
            "since with an overflowing id",
            req(
                "GET",
                "/sub/hs?since=hs:1:99999999999999999999999",
                &[up, conn, ver, k],
            ),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, status) in cases {
        let resp = answer(&env, request).await;
        if resp.status != status {
            failures.push(format!(
                "{what}: expected {status}, got {} {:?}",
                resp.status,
                resp.text()
            ));
        }
        if status == 426 && resp.header("sec-websocket-version") != Some("13") {
            failures.push(format!(
                "{what}: 426 without Sec-WebSocket-Version: 13 ({:?})",
                resp.headers
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn good_handshakes_are_accepted() {
    let env = Chatup::start();
    let ws = RawWs::connect(env.nginx_addr(), "/sub/hs").await;
    assert_eq!(ws.response.status, 101);
    assert!(
        ws.response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{:?}",
        ws.response.headers
    );
    // Header names and values in other cases, and Connection as a token list (as
    // browsers send it).
    let key = random_key();
    let request = format!(
        "GET /sub/hs HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: WebSocket\r\n\
         connection: keep-alive, Upgrade\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: {key}\r\nOrigin: http://example.test\r\n\r\n"
    );
    match RawWs::handshake(env.nginx_addr(), request.as_bytes(), None).await {
        Ok(ws) => assert_eq!(
            ws.response.header("sec-websocket-accept"),
            Some(accept_for(&key).as_str())
        ),
        Err(e) => panic!("refused: {e:?}"),
    }
    // A frame sent in the same packet as the request is not lost.
    let mut bytes = upgrade_request("/sub/hs", &key);
    bytes.extend_from_slice(
        &chatup_tests::Frame::new(chatup_tests::raw::OP_PING, b"early".to_vec()).encode(),
    );
    let mut ws = RawWs::handshake(env.nginx_addr(), &bytes, None)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"));
    let pong = ws.read_frame(Duration::from_secs(5)).await.expect("a pong");
    assert_eq!(pong.opcode, chatup_tests::raw::OP_PONG, "{pong:?}");
    assert_eq!(pong.payload, b"early");
}

#[tokio::test]
async fn a_subscriber_url_outside_the_prefix_is_not_upgraded() {
    let env = Chatup::start();
    let key = random_key();
    let resp = answer(
        &env,
        String::from_utf8(upgrade_request("/nope/room", &key)).expect("utf8"),
    )
    .await;
    assert_eq!(resp.status, 404, "{}", resp.text());
}
