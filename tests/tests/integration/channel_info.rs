//! The public channel endpoints, `GET /channels/<ch>` and `/channels/<ch>/users`, through
//! nginx: counts and joined users on one host and summed over two hosts with Redis, paging,
//! bad channels and queries, CORS and caching headers.

use std::time::Duration;

use chatup_tests::token::token;
use chatup_tests::{two_host_room, Subscriber, WAIT};
use chatup_tests::{Chatup, Dispatcher, HttpResponse, Options, Publisher, RedisServer};
use serde_json::{json, Value};

async fn get(env: &Chatup, path: &str) -> HttpResponse {
    env.get(path, &[]).await
}

/// `GET path` through `env`'s nginx until `done` holds for the 200 answer (hosts report
/// periodically, and answers are cached for a report interval).
async fn poll(env: &Chatup, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = get(env, path).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        let answer = resp.json();
        if done(&answer) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never got there: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(answer: &Value) -> Vec<String> {
    answer["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {answer}"))
        .iter()
        .map(|u| u["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn counts_and_users_of_one_host_through_nginx() {
    let env = Chatup::start();
    let _viewer = Subscriber::connect(&env, "/sub/room").await;
    let mut sessions = Vec::new();
    for name in ["carol", "alice", "bob"] {
        let mut p = Publisher::connect_ok(&env, &token(name)).await;
        p.join("room").await;
        sessions.push(p);
    }
    // Connected but joined nowhere: counted by no channel.
    let _idle = Publisher::connect_ok(&env, &token("dave")).await;

    let counts = poll(&env, "/channels/room", |c| {
        c["subCount"] == 1 && c["pubCount"] == 3
    })
    .await;
    assert_eq!(
        counts,
        json!({"channel": "room", "subCount": 1, "pubCount": 3})
    );
    let resp = get(&env, "/channels/room").await;
    assert_eq!(resp.header("cache-control"), Some("public, max-age=1"));
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        resp.headers
    );
    // Without dispatch.cors_origins, no CORS header.
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // A cache-busting query is ignored.
    let resp = get(&env, "/channels/room?_=12345").await;
    assert_eq!(resp.json(), counts);
    let empty = get(&env, "/channels/nobody-here").await;
    assert_eq!(
        empty.json(),
        json!({"channel": "nobody-here", "subCount": 0, "pubCount": 0})
    );

    let users = poll(&env, "/channels/room/users", |u| u["total"] == 3).await;
    assert_eq!(names(&users), ["alice", "bob", "carol"]);
    assert_eq!(users["users"][0], json!({"name": "alice"}));
    assert_eq!(
        (&users["channel"], &users["skip"], &users["limit"]),
        (&json!("room"), &json!(0), &json!(100))
    );
    // The same order as the admin API's list.
    let stats = env.admin("GET", "/stats/room", None).await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    assert_eq!(stats.json()["publishers"], users["users"]);
    // Paging.
    let page = get(&env, "/channels/room/users?skip=1&limit=1").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("cache-control"), Some("public, max-age=1"));
    let page = page.json();
    assert_eq!(names(&page), ["bob"]);
    assert_eq!(
        (&page["total"], &page["skip"], &page["limit"]),
        (&json!(3), &json!(1), &json!(1))
    );
    let page = get(&env, "/channels/room/users?limit=2&skip=2")
        .await
        .json();
    assert_eq!(names(&page), ["carol"]);
    let page = get(&env, "/channels/room/users?skip=3").await.json();
    assert!(names(&page).is_empty(), "{page}");
    assert_eq!(page["total"], 3);
    let page = get(&env, "/channels/room/users?limit=1000").await.json();
    assert_eq!(names(&page).len(), 3);

    // A publisher who leaves is gone once the answer is no longer fresh.
    let reply = sessions[0].request(json!({"leave": "room"})).await;
    assert_eq!(reply["type"], "left", "{reply}");
    let users = poll(&env, "/channels/room/users", |u| u["total"] == 2).await;
    assert_eq!(names(&users), ["alice", "bob"]);
    poll(&env, "/channels/room", |c| c["pubCount"] == 2).await;
}

#[tokio::test]
async fn bad_channels_and_queries_are_400_and_say_why() {
    let env = Chatup::start();
    let long = "a".repeat(129);
    for path in [
        "/channels/a$b".to_owned(),
        "/channels/a%2Fb".to_owned(),
        "/channels/a:b/users".to_owned(),
        format!("/channels/{long}"),
        format!("/channels/{long}/users"),
    ] {
        let resp = get(&env, &path).await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("bad_channel"), "{path}");
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(message.contains("channel"), "{path}: {message}");
        assert_eq!(resp.header("cache-control"), None, "{path}");
    }
    for (query, names) in [
        ("limit=0", "\"limit\""),
        ("limit=1001", "\"limit\""),
        ("limit=ten", "\"limit\""),
        ("limit=", "\"limit\""),
        ("skip=-1", "\"skip\""),
        ("limit=5&limit=6", "\"limit\""),
        ("page=2", "\"page\""),
    ] {
        let path = format!("/channels/room/users?{query}");
        let resp = get(&env, &path).await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("bad_request"), "{path}");
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(message.contains(names), "{path}: {message}");
    }
    // Only GET is served (the sample nginx configuration refuses other methods already).
    let resp = env.post("/channels/room", &[], b"").await;
    assert_eq!(resp.status, 405, "{}", resp.text());
}

#[tokio::test]
async fn cors_follows_dispatch_cors_origins() {
    let env = Chatup::start_with(
        Options::default()
            .sidecar_set("dispatch.cors_origins=https://app.example,https://other.example"),
    );
    for path in ["/channels/room", "/channels/room/users"] {
        let resp = env.get(path, &[("Origin", "https://app.example")]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{path}: {:?}",
            resp.headers
        );
        assert!(
            resp.header("vary")
                .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
            "{path}: {:?}",
            resp.headers
        );
        let resp = env.get(path, &[("Origin", "https://evil.example")]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(resp.header("access-control-allow-origin"), None, "{path}");
    }
    // Errors carry them too, so that a page can read what went wrong.
    let resp = env
        .get("/channels/a$b", &[("Origin", "https://other.example")])
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://other.example")
    );

    let any = Chatup::start_with(Options::default().sidecar_set("dispatch.cors_origins=*"));
    let resp = any
        .get("/channels/room", &[("Origin", "https://anywhere.example")])
        .await;
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn counts_and_users_merge_over_two_hosts_with_redis() {
    let mut redis = RedisServer::start();
    let host = |address: &str, id: &str| {
        Chatup::start_with(Options::host_on_redis(address, id, &redis.url()))
    };
    let a = host("127.0.0.2", "a");
    let b = host("127.0.0.3", "b");
    // alice is on both hosts; bob on a; carol on b; dave on b in another channel.
    let (_viewers, _sessions) = two_host_room(&a, &b).await;

    // pubCount counts per host (alice twice), as /join does; users lists each user once.
    let counts = poll(&a, "/channels/room", |c| {
        c["subCount"] == 3 && c["pubCount"] == 4
    })
    .await;
    let users = poll(&a, "/channels/room/users", |u| u["total"] == 3).await;
    assert_eq!(names(&users), ["alice", "bob", "carol"]);
    // Any host answers the same, and so does a dispatcher-only sidecar.
    let from_b = poll(&b, "/channels/room", |c| c["subCount"] == 3).await;
    assert_eq!(from_b, counts);
    let dispatcher = Dispatcher::start_with(
        Options::default()
            .redis(&redis.url())
            .sidecar_set("host.report_interval_ms=200"),
    );
    let resp = dispatcher.request("GET", "/channels/room", &[], None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), counts);
    let resp = dispatcher
        .request("GET", "/channels/room/users?skip=1&limit=5", &[], None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(names(&resp.json()), ["bob", "carol"]);
    let other = poll(&a, "/channels/other/users", |u| u["total"] == 1).await;
    assert_eq!(names(&other), ["dave"]);

    // Redis down: 503 unavailable with Retry-After, once the cached answers are stale.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = dispatcher.request("GET", "/channels/room", &[], None).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("unavailable"));
    assert_eq!(resp.header("retry-after"), Some("1"));
}
