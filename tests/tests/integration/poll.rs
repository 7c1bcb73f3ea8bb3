//! Viewers over long-poll: an answer at once when there is something after `since`, else
//! the request is held until a message comes, the worker closes, or `chatup_poll_timeout`.

use chatup_tests::sse::poll;
use chatup_tests::{assert_resync, Chatup, Options};
use serde_json::Value;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn ids(answer: &Value) -> Vec<(String, u64)> {
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {answer}"))
        .iter()
        .map(|m| {
            (
                m["ch"].as_str().unwrap().to_owned(),
                m["id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn since(answer: &Value) -> String {
    answer["since"].as_str().expect("since").to_owned()
}

#[tokio::test]
async fn a_poll_answers_at_once_then_holds_until_a_message_comes() {
    let env = Chatup::start();
    let ep = env.publish_n("p", 1, 3).await;
    let first = poll(env.nginx_addr(), "/sub/p?transport=poll", WAIT).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let answer = first.json();
    assert_eq!(
        ids(&answer),
        vec![("p".into(), 1), ("p".into(), 2), ("p".into(), 3)]
    );
    assert_eq!(since(&answer), format!("p:{ep}:3"));

    let addr = env.nginx_addr();
    let path = format!("/sub/p?transport=poll&since={}", since(&answer));
    let held = tokio::spawn(async move { poll(addr, &path, WAIT).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "nothing new: the poll is held");
    env.publish_n("p", 4, 4).await;
    let answer = held.await.unwrap().json();
    assert_eq!(ids(&answer), vec![("p".into(), 4)]);
    assert_eq!(since(&answer), format!("p:{ep}:4"));
}

#[tokio::test]
async fn a_held_poll_ends_empty_at_the_timeout_with_the_same_since() {
    let env = Chatup::start_with(Options::default().sub_location("chatup_poll_timeout 500ms;"));
    let ep = env.publish_n("t", 1, 1).await;
    let started = Instant::now();
    let path = format!("/sub/t?transport=poll&since=t:{ep}:1");
    let answer = poll(env.nginx_addr(), &path, WAIT).await.json();
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "held until the timeout"
    );
    assert_eq!(
        answer,
        serde_json::json!({"messages": [], "since": format!("t:{ep}:1")})
    );
}

#[tokio::test]
async fn nothing_is_lost_between_polls_on_many_channels() {
    let env = Chatup::start();
    let ep_a = env.publish_n("a", 1, 1).await;
    let ep_b = env.publish_n("b", 1, 1).await;
    let first = poll(env.nginx_addr(), "/sub/a/b?transport=poll", WAIT)
        .await
        .json();
    assert_eq!(since(&first), format!("a:{ep_a}:1,b:{ep_b}:1"));
    // Published between two polls.
    env.publish_n("b", 2, 3).await;
    env.publish_n("a", 2, 2).await;
    let path = format!("/sub/a/b?transport=poll&since={}", since(&first));
    let mut got = Vec::new();
    let mut at = since(&first);
    while got.len() < 3 {
        let answer = poll(env.nginx_addr(), &path.replace(&since(&first), &at), WAIT)
            .await
            .json();
        got.extend(ids(&answer));
        at = since(&answer);
    }
    got.sort();
    assert_eq!(got, vec![("a".into(), 2), ("b".into(), 2), ("b".into(), 3)]);
    assert_eq!(at, format!("a:{ep_a}:2,b:{ep_b}:3"));
}

#[tokio::test]
async fn a_stale_since_gets_a_resync_in_the_answer() {
    let env = Chatup::start();
    let ep = env.publish_n("r", 1, 2).await;
    let path = format!("/sub/r?transport=poll&since=r:{}:1", ep + 1);
    let answer = poll(env.nginx_addr(), &path, WAIT).await.json();
    let messages = answer["messages"].as_array().unwrap();
    assert_eq!(assert_resync(&messages[0], "r", "epoch_changed"), ep);
    assert_eq!(messages.len(), 3, "{answer}");
    assert_eq!(since(&answer), format!("r:{ep}:2"));
}

#[tokio::test]
async fn a_reload_answers_held_polls_at_once() {
    let env = Chatup::start();
    let ep = env.publish_n("h", 1, 1).await;
    let addr = env.nginx_addr();
    let path = format!("/sub/h?transport=poll&since=h:{ep}:1");
    let held = tokio::spawn(async move { poll(addr, &path, WAIT).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    env.reload();
    let answer = held.await.unwrap().json();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not held until the timeout"
    );
    assert_eq!(
        answer,
        serde_json::json!({"messages": [], "since": format!("h:{ep}:1")})
    );
}

#[tokio::test]
async fn bad_polls_are_refused_with_the_reason() {
    let env = Chatup::start();
    for (path, status, reason) in [
        ("/sub/?transport=poll", 400, "no channel in the path"),
        (
            "/sub/a?transport=poll&since=a:1",
            400,
            "since: \"a:1\" is not <channel>:<epoch>:<id>",
        ),
        (
            "/sub/a?transport=comet",
            400,
            "transport \"comet\" is not one of ws, sse, poll",
        ),
    ] {
        let resp = poll(env.nginx_addr(), path, WAIT).await;
        assert_eq!(resp.status, status, "{path}");
        assert!(resp.text().contains(reason), "{path}: {}", resp.text());
    }
}

#[tokio::test]
async fn cors_is_answered_for_the_allowed_origin_only() {
    let env = Chatup::start_with(
        Options::default().sub_location("chatup_allow_origin \"https://page.example\";"),
    );
    env.publish_n("c", 1, 1).await;
    let get = |origin: &str| {
        format!(
            "GET /sub/c?transport=poll HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let addr = env.nginx_addr();
    let allowed =
        chatup_tests::http::request(addr, get("https://page.example").as_bytes(), WAIT).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://page.example")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other =
        chatup_tests::http::request(addr, get("https://evil.example").as_bytes(), WAIT).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);

    let preflight = chatup_tests::http::request(
        addr,
        b"OPTIONS /sub/c HTTP/1.1\r\nHost: x\r\nOrigin: https://page.example\r\n\
          Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: last-event-id\r\n\
          Connection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://page.example")
    );
    assert!(preflight
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("Last-Event-ID")));

    let sse_req = chatup_tests::sse::sse_request("/sub/c", &["Origin: https://page.example"]);
    let Ok(sse) = chatup_tests::SseStream::try_open(addr, &sse_req, None).await else {
        panic!("the stream opens");
    };
    assert_eq!(
        sse.response.header("access-control-allow-origin"),
        Some("https://page.example")
    );
}

#[tokio::test]
async fn an_answer_holds_at_most_max_unsent_and_the_next_poll_resumes_after_it() {
    let env = Chatup::start_with(Options::default().sub_location("chatup_max_unsent 1k;"));
    let text = "x".repeat(300);
    for i in 1..=10u64 {
        let ack = env.publish("big", &format!("{i} {text}")).await;
        assert_eq!(ack["id"], i);
    }
    let mut path = "/sub/big?transport=poll".to_owned();
    let mut got = Vec::new();
    let mut answers = 0;
    while got.len() < 10 {
        let answer = poll(env.nginx_addr(), &path, WAIT).await.json();
        let batch = ids(&answer);
        assert!(
            !batch.is_empty() && batch.len() < 10,
            "a partial answer: {answer}"
        );
        got.extend(batch.into_iter().map(|(_, id)| id));
        path = format!("/sub/big?transport=poll&since={}", since(&answer));
        answers += 1;
    }
    assert_eq!(
        got,
        (1..=10).collect::<Vec<u64>>(),
        "in order, none lost or repeated"
    );
    assert!(answers >= 3, "{answers} answers");
}
