//! Client frames the subscriber endpoint refuses, and the ones it answers.

use chatup_tests::raw::{Frame, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG};
use chatup_tests::{Chatup, RawWs};
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
