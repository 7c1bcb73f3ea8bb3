//! `POST /pub/<ch>`: text and JSON bodies, and the documented error statuses.

use chatup_wire::ToWorker;
use serde_json::json;

use crate::support::*;

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
