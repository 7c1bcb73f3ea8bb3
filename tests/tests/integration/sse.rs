//! Viewers over SSE: the same location as WebSocket, the same replay, resume, resync, ping,
//! slow-consumer and reload rules, with `id:` lines that resume every channel.

use chatup_tests::sse::{sse_request, SseStream};
use chatup_tests::{assert_resync, Chatup, Options};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_stream_replays_then_delivers_live_with_resumable_ids() {
    let env = Chatup::start();
    let ep = env.publish_n("news", 1, 3).await;
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/news", &[]).await;
    let head = &sse.response;
    assert!(head
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    let first = sse.next_block(QUIET * 10).await.expect("the retry block");
    assert_eq!(first.retry, Some(2000));
    let replay = sse.expect_messages(3).await;
    for (event, id) in replay.iter().zip(1u64..) {
        assert_eq!(
            event.id.as_deref(),
            Some(format!("news:{ep}:{id}").as_str())
        );
        let m = event.json();
        assert_eq!(
            (m["ch"].as_str(), m["id"].as_u64()),
            (Some("news"), Some(id))
        );
        assert_eq!(m["msg"], format!("m{id}"));
    }
    env.publish_n("news", 4, 4).await;
    let live = sse.expect_event().await;
    assert_eq!(live.id, Some(format!("news:{ep}:4")));
    assert_eq!(live.json()["msg"], "m4");
}

#[tokio::test]
async fn transport_sse_in_the_query_needs_no_accept_header_and_since_resumes() {
    let env = Chatup::start();
    let ep = env.publish_n("q", 1, 4).await;
    let req = format!("GET /sub/q?transport=sse&since=q:{ep}:2 HTTP/1.1\r\nHost: x\r\n\r\n");
    let Ok(mut sse) = SseStream::try_open(env.nginx_addr(), req.as_bytes(), None).await else {
        panic!("?transport=sse opens a stream");
    };
    let got: Vec<u64> = sse
        .expect_messages(2)
        .await
        .iter()
        .map(|e| e.json()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4]);
    sse.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_and_wins_over_since() {
    let env = Chatup::start();
    let ep_a = env.publish_n("a", 1, 2).await;
    let ep_b = env.publish_n("b", 1, 2).await;
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/a/b", &[]).await;
    let replay = sse.expect_messages(4).await;
    let last_id = replay.last().unwrap().id.clone().expect("an id");
    assert_eq!(last_id, format!("a:{ep_a}:2,b:{ep_b}:2"));
    drop(sse);

    // Published while the stream was away: on one channel only.
    env.publish_n("b", 3, 4).await;
    // The URL still says where the stream first started; Last-Event-ID is where it stopped.
    let header = format!("Last-Event-ID: {last_id}");
    let path = format!("/sub/a/b?since=a:{ep_a}:0,b:{ep_b}:0");
    let mut again = SseStream::open(env.nginx_addr(), &path, &[&header]).await;
    let resumed = again.expect_messages(2).await;
    let ids: Vec<(String, u64)> = resumed
        .iter()
        .map(|e| {
            let m = e.json();
            (
                m["ch"].as_str().unwrap().to_owned(),
                m["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids, vec![("b".to_owned(), 3), ("b".to_owned(), 4)]);
    // The quiet channel keeps its place in the id.
    assert_eq!(resumed[1].id, Some(format!("a:{ep_a}:2,b:{ep_b}:4")));
    again.expect_nothing(QUIET).await;
}

#[tokio::test]
async fn a_bad_last_event_id_is_a_400_that_says_why() {
    let env = Chatup::start();
    for (id, reason) in [
        ("x", "Last-Event-ID: \"x\" is not <channel>:<epoch>:<id>"),
        (
            "other:1:1",
            "Last-Event-ID: channel \"other\" is not in the path",
        ),
        (
            "c:1:one",
            "Last-Event-ID: \"c:1:one\" is not <channel>:<epoch>:<id>",
        ),
    ] {
        let header = format!("Last-Event-ID: {id}");
        let req = sse_request("/sub/c", &[&header]);
        let Err(Ok(resp)) = SseStream::try_open(env.nginx_addr(), &req, None).await else {
            panic!("Last-Event-ID {id:?} is refused");
        };
        assert_eq!(resp.status, 400, "{id}");
        assert_eq!(resp.text().trim_end(), reason);
    }
}

#[tokio::test]
async fn a_lost_epoch_arrives_as_a_resync_event() {
    let env = Chatup::start();
    let ep = env.publish_n("r", 1, 2).await;
    let header = format!("Last-Event-ID: r:{}:1", ep + 1);
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/r", &[&header]).await;
    let notice = sse.expect_event().await;
    assert_eq!(assert_resync(&notice.json(), "r", "epoch_changed"), ep);
    assert_eq!(
        notice.id,
        Some(format!("r:{ep}:0")),
        "resuming after it asks for the new epoch"
    );
    let replay = sse.expect_messages(2).await;
    assert_eq!(replay[1].id, Some(format!("r:{ep}:2")));
}

#[tokio::test]
async fn pings_are_comments_and_a_silent_client_stays() {
    let env = Chatup::start_with(Options::default().sub_location("chatup_ping_interval 200ms;"));
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/quiet", &[]).await;
    let mut pings = 0;
    // A WebSocket that never answered would have been closed after the second ping.
    while pings < 4 {
        let block = sse
            .next_block(Duration::from_secs(2))
            .await
            .expect("a ping");
        if block.comment {
            pings += 1;
        }
    }
    env.publish_n("quiet", 1, 1).await;
    assert_eq!(sse.expect_event().await.json()["msg"], "m1");
}

#[tokio::test]
async fn a_stream_that_stops_reading_is_closed_with_4000() {
    let env = Chatup::start_with(
        Options::default()
            .listen("sndbuf=4k")
            .server("location /slow/ {\n    chatup_subscribe;\n    chatup_max_unsent 16k;\n}"),
    );
    let req = sse_request("/slow/busy", &[]);
    let Ok(mut slow) = SseStream::try_open(env.nginx_addr(), &req, Some(4096)).await else {
        panic!("the stream opens");
    };
    let text = "m".repeat(900);
    env.publish("busy", "first").await;
    assert_eq!(slow.expect_event().await.json()["msg"], "first");
    for i in 2..=300 {
        env.publish("busy", &format!("{i} {text}")).await;
    }
    let (ended, events) = slow.read_to_end(Duration::from_secs(10)).await;
    assert!(ended, "the stream ends");
    let last = events.last().expect("events before the end");
    assert_eq!(last.event.as_deref(), Some("close"), "{last:?}");
    assert_eq!(last.json()["code"], 4000);
    let ids: Vec<u64> = events
        .iter()
        .filter(|e| e.event.is_none() && !e.data.is_empty())
        .map(|e| e.json()["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap: {ids:?}"
    );
    assert!(ids.last() < Some(&300), "it was behind when closed");
}

#[tokio::test]
async fn a_reload_ends_the_stream_with_1001_and_last_event_id_loses_nothing() {
    let env = Chatup::start();
    let ep = env.publish_n("live", 1, 2).await;
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/live", &[]).await;
    let replay = sse.expect_messages(2).await;
    let mut last_id = replay[1].id.clone().unwrap();
    env.reload();
    let (ended, events) = sse.read_to_end(Duration::from_secs(5)).await;
    assert!(ended, "the old worker ends the stream");
    let close = events.iter().find(|e| e.event.as_deref() == Some("close"));
    assert_eq!(close.expect("a close event").json()["code"], 1001);
    for e in events
        .iter()
        .filter(|e| e.event.is_none() && e.id.is_some())
    {
        last_id = e.id.clone().unwrap();
    }

    env.publish_n("live", 3, 5).await;
    let header = format!("Last-Event-ID: {last_id}");
    let mut again = SseStream::open(env.nginx_addr(), "/sub/live", &[&header]).await;
    let ids: Vec<u64> = again
        .expect_messages(3)
        .await
        .iter()
        .map(|e| e.json()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![3, 4, 5]);
    again.expect_nothing(QUIET).await;
    assert_eq!(last_id, format!("live:{ep}:2"));
}

#[tokio::test]
async fn a_request_for_no_transport_names_the_three() {
    let env = Chatup::start();
    let resp = chatup_tests::http::request(
        env.nginx_addr(),
        b"GET /sub/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(resp.status, 400);
    let text = resp.text();
    for needle in [
        "Upgrade: websocket",
        "Accept: text/event-stream",
        "?transport=poll",
    ] {
        assert!(text.contains(needle), "{text}");
    }
}
