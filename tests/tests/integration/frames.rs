//! Client frames the subscriber endpoint refuses, and the ones it answers; and the close
//! codes of the publisher endpoint (`/pub`, the sidecar behind nginx) for bad frames.

use chatup_tests::raw::{Frame, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use chatup_tests::token::{claims, sign, token};
use chatup_tests::{brief, Chatup, RawWs};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

async fn close_code_after(env: &Chatup, frames: &[Frame]) -> Option<u16> {
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/frames").await;
    for f in frames {
        ws.send(f).await;
    }
    let (close, _) = ws.expect_close(T).await;
    let code = close.close_code();
    // The server closes the TCP connection after its close frame (at the latest once
    // our close answer arrives).
    ws.send(&Frame::close(code.unwrap_or(1000), b"")).await;
    assert!(
        ws.wait_eof(T).await,
        "connection not closed after the close frame"
    );
    code
}

#[tokio::test]
async fn bad_client_frames_get_the_right_close_code() {
    let env = Chatup::start();
    let unmasked = Frame {
        masked: false,
        ..Frame::text("hi")
    };
    let rsv1 = Frame {
        rsv: 0b100,
        ..Frame::text("hi")
    };
    let rsv3 = Frame {
        rsv: 0b001,
        ..Frame::new(OP_PING, "x")
    };
    let big_ping = Frame::new(OP_PING, vec![b'p'; 200]);
    let fragmented_ping = Frame {
        fin: false,
        ..Frame::new(OP_PING, "x")
    };
    let first_half = Frame {
        fin: false,
        ..Frame::text("hel")
    };
    let second_half = Frame::new(OP_CONT, "lo");
    let stray_continuation = Frame::new(OP_CONT, "lo");
    let mut close_bad_utf8 = 1000u16.to_be_bytes().to_vec();
    close_bad_utf8.extend_from_slice(b"\xc3\x28 bad");
    let cases: Vec<(&str, Vec<Frame>, u16)> = vec![
        ("unmasked frame", vec![unmasked], 1002),
        ("RSV1 set", vec![rsv1], 1002),
        ("RSV3 on a ping", vec![rsv3], 1002),
        ("opcode 0x3", vec![Frame::new(0x3, "x")], 1002),
        ("opcode 0xB", vec![Frame::new(0xB, "x")], 1002),
        ("200-byte ping", vec![big_ping], 1002),
        ("fragmented ping", vec![fragmented_ping], 1002),
        ("fragmented text", vec![first_half, second_half], 1003),
        (
            "10 KB text frame",
            vec![Frame::text(vec![b'a'; 10 * 1024])],
            1009,
        ),
        (
            "10 KB binary frame",
            vec![Frame::new(OP_BINARY, vec![0u8; 10 * 1024])],
            1009,
        ),
        (
            "close reason not UTF-8",
            vec![Frame::new(OP_CLOSE, close_bad_utf8)],
            1007,
        ),
    ];
    let mut failures = Vec::new();
    for (what, frames, want) in cases {
        let got = close_code_after(&env, &frames).await;
        if got != Some(want) {
            failures.push(format!("{what}: expected close {want}, got {got:?}"));
        }
    }
    // A continuation frame with nothing to continue is a protocol error or unsupported
    // data; either way the connection is closed.
    let got = close_code_after(&env, &[stray_continuation]).await;
    if !matches!(got, Some(1002 | 1003)) {
        failures.push(format!(
            "stray continuation: expected close 1002 or 1003, got {got:?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn ping_gets_pong_and_close_is_echoed() {
    let env = Chatup::start();
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/pp").await;
    ws.send(&Frame::new(OP_PING, "abc")).await;
    let pong = ws.read_frame(T).await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"abc"[..]),
        "{pong:?}"
    );
    assert!(!pong.masked, "server frames are not masked");
    assert!(pong.fin);
    // 125 bytes is the largest allowed control payload.
    ws.send(&Frame::new(OP_PING, vec![7u8; 125])).await;
    let pong = ws.read_frame(T).await.expect("a pong");
    assert_eq!(pong.payload, vec![7u8; 125]);
    // An empty ping.
    ws.send(&Frame::new(OP_PING, Vec::new())).await;
    let pong = ws.read_frame(T).await.expect("a pong");
    assert_eq!((pong.opcode, pong.payload.len()), (OP_PONG, 0));

    // Text, binary and unsolicited pong frames from the client are ignored.
    ws.send(&Frame::text("hello?")).await;
    ws.send(&Frame::new(OP_BINARY, vec![1, 2, 3])).await;
    ws.send(&Frame::new(OP_PONG, "unsolicited")).await;
    ws.send(&Frame::new(OP_PING, "still there")).await;
    let pong = ws.read_frame(T).await.expect("a pong");
    assert_eq!(pong.payload, b"still there", "{pong:?}");

    // Live messages still flow.
    env.publish("pp", "hi").await;
    let msg = ws.expect_json(T).await;
    assert_eq!(msg["msg"], "hi");

    ws.send(&Frame::close(1000, b"bye")).await;
    let (close, _) = ws.expect_close(T).await;
    assert_eq!(close.close_code(), Some(1000), "close echoed: {close:?}");
    assert!(
        ws.wait_eof(T).await,
        "TCP connection closed after the close handshake"
    );

    // A close without a code is answered too.
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/pp").await;
    ws.send(&Frame::new(OP_CLOSE, Vec::new())).await;
    let (close, _) = ws.expect_close(T).await;
    assert!(
        matches!(close.close_code(), None | Some(1000) | Some(1005)),
        "empty close answered with {close:?}"
    );
    assert!(ws.wait_eof(T).await);
}

#[tokio::test]
async fn frames_split_across_packets_and_many_in_one_packet() {
    let env = Chatup::start();
    let mut ws = RawWs::connect(env.nginx_addr(), "/sub/split").await;
    // One ping, byte by byte.
    let bytes = Frame::new(OP_PING, "slow").encode();
    for b in bytes {
        ws.send_raw(&[b]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pong = ws.read_frame(T).await.expect("pong");
    assert_eq!(pong.payload, b"slow");
    // Three pings in one write.
    let mut bytes = Vec::new();
    for p in ["a", "b", "c"] {
        bytes.extend(Frame::new(OP_PING, p).encode());
    }
    ws.send_raw(&bytes).await;
    for p in ["a", "b", "c"] {
        let pong = ws.read_frame(T).await.expect("pong");
        assert_eq!(pong.payload, p.as_bytes());
    }
    // A 4096-byte text frame (the limit) is accepted and ignored.
    ws.send(&Frame::text(vec![b'x'; 4096])).await;
    ws.send(&Frame::new(OP_PING, "after")).await;
    let pong = ws.read_frame(T).await.expect("pong");
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"after");
}

/// A raw client on nginx's `/pub` (proxied to the sidecar); with `authed`, past the token.
async fn raw_publisher(env: &Chatup, authed: bool) -> RawWs {
    let mut ws = RawWs::connect(env.nginx_addr(), "/pub").await;
    if authed {
        ws.send(&Frame::text(token("raw"))).await;
        let auth = ws.expect_json(T).await;
        assert_eq!(auth["type"], "auth", "{auth}");
    }
    ws
}

/// Sends `frames` on `ws`; returns the close code that follows, with the text frames before
/// it. The connection must end after the close.
async fn publisher_close_after(mut ws: RawWs, frames: &[Frame]) -> (Option<u16>, Vec<String>) {
    for f in frames {
        ws.send(f).await;
    }
    let (close, before) = ws.expect_close(T).await;
    let code = close.close_code();
    ws.send(&Frame::close(code.unwrap_or(1000), b"")).await;
    assert!(
        ws.wait_eof(T).await,
        "connection not closed after the close frame"
    );
    let texts = before
        .iter()
        .filter(|f| f.opcode == OP_TEXT)
        .map(Frame::payload_text)
        .collect();
    (code, texts)
}

/// The publisher's frame limit is the sidecar's request limit: 64 KB with the default
/// message limits.
const PUB_LIMIT: usize = 64 * 1024;

#[tokio::test]
async fn bad_publisher_frames_through_nginx_get_the_right_close_code() {
    let env = Chatup::start();
    // A token too large to be read: a signed JWT whose _public is over the limit.
    let mut claims = claims("big");
    claims["_public"]["bio"] = "b".repeat(PUB_LIMIT).into();
    let big_token = sign(&claims);
    assert!(big_token.len() > PUB_LIMIT);
    let over = PUB_LIMIT + 1;
    let unmasked = |f: Frame| Frame { masked: false, ..f };
    let rsv = |bits: u8, f: Frame| Frame { rsv: bits, ..f };
    let first_half = Frame {
        fin: false,
        ..Frame::text(vec![b'a'; PUB_LIMIT / 2 + 1])
    };
    let second_half = Frame::new(OP_CONT, vec![b'a'; PUB_LIMIT / 2 + 1]);
    let fragmented_ping = Frame {
        fin: false,
        ..Frame::new(OP_PING, "x")
    };
    let not_utf8 = Frame::text(vec![b'a', 0xff, 0xfe]);
    let mut close_bad_utf8 = 1000u16.to_be_bytes().to_vec();
    close_bad_utf8.extend_from_slice(b"\xc3\x28 bad");
    // (what, past the token?, frames, close code)
    let cases: Vec<(&str, bool, Vec<Frame>, u16)> = vec![
        ("oversized token", false, vec![Frame::text(big_token)], 1009),
        (
            "oversized binary first frame",
            false,
            vec![Frame::new(OP_BINARY, vec![b'x'; over])],
            1009,
        ),
        (
            "unmasked first frame",
            false,
            vec![unmasked(Frame::text(token("a")))],
            1002,
        ),
        (
            "RSV1 on the first frame",
            false,
            vec![rsv(0b100, Frame::text(token("a")))],
            1002,
        ),
        ("opcode 0x3 first", false, vec![Frame::new(0x3, "x")], 1002),
        ("first frame not UTF-8", false, vec![not_utf8.clone()], 1007),
        (
            "oversized text frame",
            true,
            vec![Frame::text(vec![b'x'; over])],
            1009,
        ),
        (
            "oversized binary frame",
            true,
            vec![Frame::new(OP_BINARY, vec![0; over])],
            1009,
        ),
        (
            "oversized fragmented message",
            true,
            vec![first_half, second_half],
            1009,
        ),
        (
            "unmasked frame",
            true,
            vec![unmasked(Frame::text("{}"))],
            1002,
        ),
        ("RSV2 set", true, vec![rsv(0b010, Frame::text("{}"))], 1002),
        ("opcode 0xB", true, vec![Frame::new(0xB, "x")], 1002),
        (
            "200-byte ping",
            true,
            vec![Frame::new(OP_PING, vec![b'p'; 200])],
            1002,
        ),
        ("fragmented ping", true, vec![fragmented_ping], 1002),
        (
            "stray continuation",
            true,
            vec![Frame::new(OP_CONT, "x")],
            1002,
        ),
        ("text not UTF-8", true, vec![not_utf8], 1007),
        (
            "close reason not UTF-8",
            true,
            vec![Frame::new(OP_CLOSE, close_bad_utf8)],
            1007,
        ),
    ];
    let mut failures = Vec::new();
    for (what, authed, frames, want) in cases {
        eprintln!("publisher case: {what}");
        let ws = raw_publisher(&env, authed).await;
        let (got, texts) = publisher_close_after(ws, &frames).await;
        if got != Some(want) {
            failures.push(format!(
                "{what}: expected close {want}, got {got:?} after {texts:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sidecar still serves publishers.
    let mut ws = raw_publisher(&env, true).await;
    ws.send(&Frame::text(r#"{"ref":1,"ch":"after","msg":"still here"}"#))
        .await;
    let ack = ws.expect_json(T).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
}

#[tokio::test]
async fn a_first_publisher_frame_that_is_not_a_token_gets_4503_through_nginx() {
    let env = Chatup::start();
    let not_tokens = [
        Frame::text(r#"{"ref":1,"ch":"room","msg":"hi"}"#),
        Frame::text(r#"{"token":42}"#),
        Frame::text(r#"{"tok"#),
        Frame::new(OP_BINARY, vec![0xff, 0xfe]),
    ];
    for frame in not_tokens {
        let what = brief(&frame.payload_text());
        let ws = raw_publisher(&env, false).await;
        let (code, texts) = publisher_close_after(ws, &[frame]).await;
        assert_eq!(code, Some(4503), "{what}: {texts:?}");
        assert_eq!(
            texts.len(),
            1,
            "{what}: one error before the close: {texts:?}"
        );
        let error: serde_json::Value = serde_json::from_str(&texts[0]).expect("JSON");
        assert_eq!(error["type"], "error", "{what}: {error}");
        assert!(
            matches!(error["code"].as_str(), Some("bad_request" | "invalid_utf8")),
            "{what}: {error}"
        );
    }
    // A bad token, raw or in {"token":..}, is still a bad token (4500).
    for frame in [
        Frame::text("garbage"),
        Frame::text(r#"{"token":"garbage"}"#),
    ] {
        let what = brief(&frame.payload_text());
        let ws = raw_publisher(&env, false).await;
        let (code, texts) = publisher_close_after(ws, &[frame]).await;
        assert_eq!(code, Some(4500), "{what}: {texts:?}");
        assert!(texts[0].contains("bad_token"), "{what}: {texts:?}");
    }
}
