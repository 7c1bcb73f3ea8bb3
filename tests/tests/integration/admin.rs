//! The admin API through nginx: POST /post (Bearer and array-token bodies), GET
//! /messages/<ch>, GET /stats/<ch> and /stats across hosts, GET /health, and the ways a call
//! is refused (bad tokens, bad bodies, the API turned off).

use std::process::{Command, Stdio};
use std::time::Duration;

use chatup_tests::env::{free_port, sidecar_bin, wait_timeout};
use chatup_tests::http::{build_request, request};
use chatup_tests::token::{
    admin_token, example_public_key, now, sign_admin, token, token_signed_by_other_key,
};
use chatup_tests::{
    assert_key_order, Chatup, Dispatcher, HttpResponse, Options, Publisher, RedisServer,
};
use chatup_tests::{two_host_room, Subscriber, WAIT};
use serde_json::{json, Value};

/// `method path` through `env`'s nginx.
async fn call(
    env: &Chatup,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    request(
        env.nginx_addr(),
        &build_request(method, path, headers, body),
        WAIT,
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` with a valid admin token.
async fn admin_get(env: &Chatup, path: &str) -> HttpResponse {
    ends_with_newline(env.admin("GET", path, None).await)
}

/// Admin JSON answers end with a newline (curl in a terminal).
#[track_caller]
fn ends_with_newline(resp: HttpResponse) -> HttpResponse {
    if resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        assert!(
            resp.text().ends_with('\n'),
            "a JSON answer without a final newline: {:?}",
            resp.text()
        );
    }
    resp
}

/// `GET path` with a valid admin token; panics unless it answers 200; the JSON answer.
async fn admin_get_ok(env: &Chatup, path: &str) -> Value {
    let resp = admin_get(env, path).await;
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp.json()
}

/// `POST /post` with a valid admin token and `body` as JSON.
async fn admin_post(env: &Chatup, body: &Value) -> HttpResponse {
    ends_with_newline(env.admin("POST", "/post", Some(body)).await)
}

/// `POST /post` whose body is an admin JWT carrying `requests` (the original format).
async fn token_post(env: &Chatup, requests: &Value) -> HttpResponse {
    call(
        env,
        "POST",
        "/post",
        &[],
        Some(sign_admin(requests).as_bytes()),
    )
    .await
}

/// Checks a JSON error answer and returns its message.
#[track_caller]
fn assert_error(resp: &HttpResponse, status: u16, code: &str) -> String {
    assert_eq!(resp.status, status, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
        .to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}

/// `(ch, id)` of each entry of a `/post` answer.
fn placed(answer: &Value) -> Vec<(String, u64)> {
    answer["published"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"published\" list in {answer}"))
        .iter()
        .map(|p| {
            assert!(p["ep"].as_u64().is_some(), "{p}");
            (
                p["ch"].as_str().unwrap_or("").to_owned(),
                p["id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(c, i)| (c.to_string(), *i)).collect()
}

#[tokio::test]
async fn post_reaches_the_subscribers_of_every_channel_with_bearer_and_array_tokens() {
    let env = Chatup::start();
    let mut sub_a = Subscriber::connect(&env, "/sub/news").await;
    let mut sub_b = Subscriber::connect(&env, "/sub/sport").await;

    let resp = admin_post(
        &env,
        &json!({"channels": ["news", "sport"], "msg": "hello all", "user": {"name": "Moderator"}}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(placed(&answer), pairs(&[("news", 1), ("sport", 1)]));
    for (sub, ch) in [(&mut sub_a, "news"), (&mut sub_b, "sport")] {
        let msg = sub.recv().await;
        assert_eq!(msg["ch"], ch, "{msg}");
        assert_eq!(msg["id"], 1, "{msg}");
        assert_eq!(msg["msg"], "hello all", "{msg}");
        assert_eq!(msg["user"], json!({"name": "Moderator"}), "{msg}");
        assert!(msg["t"].as_u64().is_some(), "{msg}");
        assert_key_order(sub.raw.last().expect("a raw frame"));
    }
    let ep_news = answer["published"][0]["ep"].clone();

    // An event without a sender: no user field at all.
    let resp = admin_post(
        &env,
        &json!({"channel": "news", "ev": "notice", "data": {"level": 2}}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(placed(&resp.json()), pairs(&[("news", 2)]));
    let msg = sub_a.recv().await;
    assert_eq!(msg["ev"], "notice", "{msg}");
    assert_eq!(msg["data"], json!({"level": 2}), "{msg}");
    assert_eq!(msg["ep"], ep_news, "{msg}");
    assert!(msg.get("user").is_none(), "{msg}");
    assert!(msg.get("msg").is_none(), "{msg}");

    // Several requests in one Bearer call: published in request order.
    let resp = admin_post(
        &env,
        &json!([
            {"channel": "sport", "msg": "first"},
            {"channel": "news", "msg": "second"},
            {"channel": "sport", "msg": "third"},
        ]),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        placed(&resp.json()),
        pairs(&[("sport", 2), ("news", 3), ("sport", 3)])
    );
    let texts: Vec<Value> = sub_b
        .recv_n(2)
        .await
        .iter()
        .map(|m| m["msg"].clone())
        .collect();
    assert_eq!(texts, [json!("first"), json!("third")]);
    assert_eq!(sub_a.recv().await["msg"], "second");

    // The original format: the body is an admin JWT whose payload is the request array.
    let resp = token_post(
        &env,
        &json!([
            {"channel": "news", "msg": "from a token", "user": {"name": "Backend"}},
            {"channel": "sport", "ev": "score", "data": [2, 1]},
        ]),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(placed(&resp.json()), pairs(&[("news", 4), ("sport", 4)]));
    let msg = sub_a.recv().await;
    assert_eq!(
        (&msg["msg"], &msg["user"]),
        (&json!("from a token"), &json!({"name": "Backend"})),
        "{msg}"
    );
    let msg = sub_b.recv().await;
    assert_eq!(
        (&msg["ev"], &msg["data"]),
        (&json!("score"), &json!([2, 1]))
    );
    assert!(msg.get("user").is_none(), "{msg}");

    // The same, sent as application/jwt.
    let body = sign_admin(&json!([{"channel": "news", "msg": "typed"}]));
    let resp = call(
        &env,
        "POST",
        "/post",
        &[("Content-Type", "application/jwt")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sub_a.recv().await["msg"], "typed");

    // Posts are history like any message: a late subscriber gets them.
    let mut late = Subscriber::connect(&env, "/sub/sport").await;
    let ids: Vec<Value> = late
        .recv_n(4)
        .await
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3), json!(4)]);
    sub_a.expect_no_message(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn wrong_tokens_are_refused_with_401_and_a_message() {
    let env = Chatup::start();
    let admin_claims = json!({"exp": now() + 600, "scope": "chatup:admin"});
    let user_token = token("alice");
    let expired = sign_admin(&json!({"exp": now() - 600, "scope": "chatup:admin"}));
    let other_key = token_signed_by_other_key(&admin_claims);
    let basic = "Basic YWRtaW46c2VjcmV0".to_owned();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "a publisher's token",
            Some(bearer(&user_token)),
            "bad_token",
        ),
        (
            "an expired admin token",
            Some(bearer(&expired)),
            "token_expired",
        ),
        (
            "a token signed by another key",
            Some(bearer(&other_key)),
            "bad_token",
        ),
        ("no Authorization header", None, "missing_token"),
        ("the Basic scheme", Some(basic), "missing_token"),
    ];
    let calls: [(&str, &str); 5] = [
        ("POST", "/post"),
        ("GET", "/messages/room"),
        ("GET", "/stats/room"),
        ("GET", "/stats"),
        ("GET", "/messages/room?limit=5"),
    ];
    for (what, auth, code) in &cases {
        for (method, path) in calls {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(auth) = auth {
                headers.push(("Authorization", auth.as_str()));
            }
            let body = (method == "POST").then_some(&br#"{"channel":"room","msg":"x"}"#[..]);
            let resp = call(&env, method, path, &headers, body).await;
            assert_eq!(resp.status, 401, "{what}, {method} {path}: {}", resp.text());
            let message = assert_error(&resp, 401, code);
            assert!(message.len() > 10, "{what}: {message}");
            assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"), "{what}");
        }
    }
    // A body-token signed with the publishers' key, or by another key.
    for (what, body) in [
        (
            "publishers' key",
            chatup_tests::token::sign(&json!([{"channel": "room", "msg": "x"}])),
        ),
        (
            "another key",
            token_signed_by_other_key(&json!([{"channel": "room", "msg": "x"}])),
        ),
    ] {
        let resp = call(&env, "POST", "/post", &[], Some(body.as_bytes())).await;
        let message = assert_error(&resp, 401, "bad_token");
        assert!(message.contains("signature"), "{what}: {message}");
    }
    // Nothing of the above was published.
    let page = admin_get_ok(&env, "/messages/room").await;
    assert_eq!(page["messages"], json!([]), "{page}");
}

#[tokio::test]
async fn malformed_requests_are_400_and_publish_nothing() {
    let env = Chatup::start();
    let auth = bearer(&admin_token());
    let json_headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let bodies: [(&str, &[u8], &str); 9] = [
        (
            "malformed JSON",
            b"{\"channel\": \"room\", \"msg\": ",
            "not valid JSON",
        ),
        ("an empty body", b"", "empty"),
        ("a string", b"\"hello\"", "not a string"),
        (
            "a number channel",
            br#"{"channel": 5, "msg": "x"}"#,
            "\"channel\" must be a string",
        ),
        (
            "a number msg",
            br#"{"channel": "room", "msg": 5}"#,
            "\"msg\" must be a string",
        ),
        (
            "user not an object",
            br#"{"channel": "room", "msg": "x", "user": "op"}"#,
            "\"user\" must be an object",
        ),
        (
            "a reserved event",
            br#"{"channel": "room", "ev": "join"}"#,
            "reserved",
        ),
        (
            "a bad channel",
            br#"{"channel": "no spaces", "msg": "x"}"#,
            "no spaces",
        ),
        (
            "one bad item among good ones",
            br#"[{"channel": "room", "msg": "ok"}, {"channel": "room", "msg": ""}]"#,
            "item 2",
        ),
    ];
    for (what, body, expected) in bodies {
        let resp = call(&env, "POST", "/post", &json_headers, Some(body)).await;
        let message = assert_error(&resp, 400, "bad_request");
        assert!(
            message.contains(expected),
            "{what}: {message:?} lacks {expected:?}"
        );
    }
    // Too long for [limits] (default 1000 characters).
    let resp = admin_post(&env, &json!({"channel": "room", "msg": "x".repeat(1001)})).await;
    let message = assert_error(&resp, 400, "bad_request");
    assert!(
        message.contains("1001") && message.contains("1000"),
        "{message}"
    );
    // More than 1000 channel × message pairs.
    let channels: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let resp = admin_post(&env, &json!({"channels": channels, "msg": "x"})).await;
    let message = assert_error(&resp, 400, "bad_request");
    assert!(message.contains("at most 1000"), "{message}");
    // A body-token whose payload is not an array.
    let resp = call(
        &env,
        "POST",
        "/post",
        &[],
        Some(sign_admin(&json!({"channel": "room", "msg": "x"})).as_bytes()),
    )
    .await;
    assert_error(&resp, 400, "bad_request");
    // A bad item in a body-token.
    let resp = token_post(
        &env,
        &json!([{"channel": "room", "msg": "ok"}, {"channel": "room"}]),
    )
    .await;
    let message = assert_error(&resp, 400, "bad_request");
    assert!(message.contains("item 2"), "{message}");

    // Bad channels and query values on the GET endpoints.
    for (path, expected) in [
        ("/messages/no%20spaces", "channel"),
        ("/messages/room?limit=0", "\"limit\""),
        ("/messages/room?limit=1001", "\"limit\""),
        ("/messages/room?limit=ten", "\"limit\""),
        ("/messages/room?before=-3", "\"before\""),
        ("/messages/room?befor=3", "\"befor\""),
        ("/stats/room?skip=-1", "\"skip\""),
        ("/stats/room?limit=0", "\"limit\""),
        ("/stats/room?limit=1.5", "\"limit\""),
        ("/stats/bad%2Fname", "channel"),
        ("/stats?channel=room", "no query parameters"),
    ] {
        let resp = admin_get(&env, path).await;
        let message = assert_error(&resp, 400, "bad_request");
        assert!(
            message.contains(expected),
            "{path}: {message:?} lacks {expected:?}"
        );
    }

    // Nothing was published by any of it.
    let page = admin_get_ok(&env, "/messages/room").await;
    assert_eq!(page["messages"], json!([]), "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");
}

#[tokio::test]
async fn messages_come_newest_first_in_pages() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/room").await;
    for i in 1..=7 {
        if i % 2 == 1 {
            env.publish("room", &format!("m{i}")).await;
        } else {
            let resp = admin_post(&env, &json!({"channel": "room", "msg": format!("m{i}")})).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    let received = sub.recv_n(7).await;
    let epoch = received[0]["ep"].clone();

    let ids = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {page}"))
            .iter()
            .map(|m| m["id"].as_u64().unwrap_or(0))
            .collect()
    };
    let resp = admin_get(&env, "/messages/room?limit=3").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The stored bytes themselves, exactly as the subscriber got them.
    let body = resp.text();
    for raw in &sub.raw[4..] {
        assert!(body.contains(raw.as_str()), "{raw} not in {body}");
    }
    let page = resp.json();
    assert_eq!(page["channel"], "room");
    assert_eq!(page["epoch"], epoch);
    assert_eq!(ids(&page), [7, 6, 5]);
    assert_eq!(page["messages"][0], received[6]);
    assert_eq!(page["next"], 5);

    let page = admin_get_ok(&env, "/messages/room?before=5&limit=3").await;
    assert_eq!(ids(&page), [4, 3, 2]);
    assert_eq!(page["next"], 2);
    let page = admin_get_ok(&env, "/messages/room?limit=3&before=2").await;
    assert_eq!(ids(&page), [1]);
    assert_eq!(page["messages"][0]["msg"], "m1");
    assert_eq!(page["next"], Value::Null);
    // Exactly the rest: no next page either.
    let page = admin_get_ok(&env, "/messages/room?before=4&limit=3").await;
    assert_eq!(ids(&page), [3, 2, 1]);
    assert_eq!(page["next"], Value::Null);

    let page = admin_get_ok(&env, "/messages/room").await;
    assert_eq!(ids(&page), [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(page["next"], Value::Null);
    let reversed: Vec<Value> = received.iter().rev().cloned().collect();
    assert_eq!(page["messages"], Value::Array(reversed));

    let page = admin_get_ok(&env, "/messages/empty").await;
    assert_eq!(ids(&page), Vec::<u64>::new());
    assert_eq!(page["next"], Value::Null);
}

fn names(stats: &Value) -> Vec<String> {
    stats["publishers"]
        .as_array()
        .unwrap_or_else(|| panic!("no publishers in {stats}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Asks `path` until `done` holds for the answer (hosts report periodically).
async fn poll(env: &Chatup, path: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = admin_get_ok(env, path).await;
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

#[tokio::test]
async fn stats_list_the_publishers_of_every_live_host_once() {
    let redis = RedisServer::start();
    let host = |address: &str, id: &str| {
        Chatup::start_with(
            Options::host_on_redis(address, id, &redis.url()).sidecar_set("host.ttl_ms=1000"),
        )
    };
    let a = host("127.0.0.2", "a");
    let mut b = host("127.0.0.3", "b");
    let mut on_a = Subscriber::connect(&a, "/sub/announce").await;
    let mut on_b = Subscriber::connect(&b, "/sub/announce").await;
    // alice is on both hosts; bob on a; carol on b; dave on b, in another channel.
    let (_viewers, mut sessions) = two_host_room(&a, &b).await;

    let stats = poll(&a, "/stats/room", WAIT, |s| {
        s["total"] == 3 && s["subCount"] == 3
    })
    .await;
    assert_eq!(stats["channel"], "room");
    // pubCount counts per host (alice twice); the list names each user once, sorted.
    assert_eq!(stats["pubCount"], 4, "{stats}");
    assert_eq!(names(&stats), ["alice", "bob", "carol"]);
    assert_eq!(stats["publishers"][0], json!({"name": "alice"}));
    assert_eq!((&stats["skip"], &stats["limit"]), (&json!(0), &json!(100)));
    // Any host answers the same, and so does a dispatcher-only sidecar.
    let from_b = admin_get_ok(&b, "/stats/room").await;
    assert_eq!(from_b, stats);
    let dispatcher = Dispatcher::start(&redis.url());
    let auth = bearer(&admin_token());
    let resp = dispatcher
        .request("GET", "/stats/room", &[("Authorization", &auth)], None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), stats);
    let health = dispatcher.request("GET", "/health", &[], None).await.json();
    assert_eq!(
        (&health["roles"], &health["broker"]),
        (&json!(["dispatcher", "admin"]), &json!("redis")),
        "{health}"
    );
    // A post through the dispatcher reaches viewers on both hosts.
    let resp = dispatcher
        .request(
            "POST",
            "/post",
            &[("Authorization", &auth)],
            Some(br#"{"channel":"announce","msg":"to every host"}"#),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for sub in [&mut on_a, &mut on_b] {
        let msg = sub.recv().await;
        assert_eq!(
            (&msg["id"], &msg["msg"]),
            (&json!(1), &json!("to every host"))
        );
    }
    // Paging.
    let page = admin_get_ok(&a, "/stats/room?skip=1&limit=1").await;
    assert_eq!(names(&page), ["bob"]);
    assert_eq!(
        (&page["skip"], &page["limit"], &page["total"]),
        (&json!(1), &json!(1), &json!(3))
    );
    assert_eq!(
        names(&admin_get_ok(&a, "/stats/room?skip=2&limit=5").await),
        ["carol"]
    );
    assert!(names(&admin_get_ok(&a, "/stats/room?skip=3").await).is_empty());
    let other = admin_get_ok(&a, "/stats/other").await;
    assert_eq!(names(&other), ["dave"]);
    assert_eq!(
        (&other["pubCount"], &other["subCount"]),
        (&json!(1), &json!(0))
    );

    // Per host: viewers and publisher sessions.
    let totals = poll(&a, "/stats", WAIT, |t| {
        t["pubCount"] == 5 && t["subCount"] == 5
    })
    .await;
    let hosts = totals["hosts"].as_array().expect("hosts");
    let summary: Vec<(Value, Value, Value, Value)> = hosts
        .iter()
        .map(|h| {
            assert!(h["reportedAt"].as_u64().is_some(), "{h}");
            (
                h["id"].clone(),
                h["url"].clone(),
                h["subCount"].clone(),
                h["pubCount"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("a"), json!(a.public_url()), json!(3), json!(2)),
            (json!("b"), json!(b.public_url()), json!(2), json!(3)),
        ]
    );

    // b dies without a word: once its entry expires, its publishers are gone from the list.
    b.kill_host();
    let died = tokio::time::Instant::now();
    let stats = poll(&a, "/stats/room", WAIT, |s| s["total"] == 2).await;
    assert!(
        died.elapsed() >= Duration::from_millis(500),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(names(&stats), ["alice", "bob"]);
    assert_eq!(
        (&stats["pubCount"], &stats["subCount"]),
        (&json!(2), &json!(2))
    );
    assert!(names(&admin_get_ok(&a, "/stats/other").await).is_empty());
    let totals = admin_get_ok(&a, "/stats").await;
    let ids: Vec<&Value> = totals["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| &h["id"])
        .collect();
    assert_eq!(ids, [&json!("a")]);
    assert_eq!(
        (&totals["subCount"], &totals["pubCount"]),
        (&json!(3), &json!(2))
    );

    // A publisher leaving is seen at the next report.
    let mut bob = sessions.remove(2);
    let reply = bob.request(json!({"leave": "room"})).await;
    assert_eq!(reply["type"], "left", "{reply}");
    let stats = poll(&a, "/stats/room", WAIT, |s| s["total"] == 1).await;
    assert_eq!(names(&stats), ["alice"]);
}

#[tokio::test]
async fn stats_of_a_single_host_with_the_memory_broker() {
    let env = Chatup::start_with(Options::default().host_id("solo"));
    let _viewer = Subscriber::connect(&env, "/sub/room").await;
    let mut p = Publisher::connect_ok(&env, &token("alice")).await;
    p.join("room").await;
    let _idle = Publisher::connect_ok(&env, &token("bob")).await;
    let stats = poll(&env, "/stats/room", WAIT, |s| s["subCount"] == 1).await;
    assert_eq!(
        stats,
        json!({"channel": "room", "subCount": 1, "pubCount": 1, "total": 1,
               "publishers": [{"name": "alice"}], "skip": 0, "limit": 100,
               "viewerTotal": 0, "viewers": []})
    );
    let totals = admin_get_ok(&env, "/stats").await;
    assert_eq!(
        (&totals["subCount"], &totals["pubCount"]),
        (&json!(1), &json!(2)),
        "{totals}"
    );
    assert_eq!(totals["hosts"][0]["id"], "solo", "{totals}");
}

#[tokio::test]
async fn health_says_unavailable_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let env = Chatup::start_with(
        Options::default()
            .host_id("h1")
            .redis(&redis.url())
            .sidecar_set("redis.timeout_ms=500"),
    );
    let resp = call(&env, "GET", "/health", &[], None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"status": "ok", "host": "h1", "roles": ["worker", "dispatcher", "admin"],
               "broker": "redis"})
    );

    redis.stop();
    let resp = call(&env, "GET", "/health", &[], None).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["broker"], "redis", "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| r.contains("Redis")),
        "{body}"
    );
    assert_eq!(resp.header("Retry-After"), Some("1"));

    redis.start_again();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let resp = call(&env, "GET", "/health", &[], None).await;
        if resp.status == 200 {
            assert_eq!(resp.json()["status"], "ok");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", resp.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without Redis there is nothing to check.
    let memory = Chatup::start();
    let body = call(&memory, "GET", "/health", &[], None).await.json();
    assert_eq!(
        (&body["status"], &body["broker"]),
        (&json!("ok"), &json!("memory"))
    );
}

#[tokio::test]
async fn the_admin_api_is_off_without_its_key() {
    let env = Chatup::start_with(Options::default().sidecar_set("admin.public_key_file="));
    let auth = bearer(&admin_token());
    for (method, path) in [
        ("POST", "/post"),
        ("GET", "/messages/room"),
        ("GET", "/stats/room"),
        ("GET", "/stats"),
    ] {
        let body = (method == "POST").then_some(&br#"{"channel":"room","msg":"x"}"#[..]);
        let resp = call(&env, method, path, &[("Authorization", &auth)], body).await;
        let message = assert_error(&resp, 503, "admin_disabled");
        assert!(message.contains("admin.public_key_file"), "{message}");
    }
    // Publishing and health are unaffected.
    env.publish("room", "still works").await;
    assert_eq!(call(&env, "GET", "/health", &[], None).await.status, 200);
}

#[test]
fn the_sidecar_refuses_the_publishers_key_as_admin_key() {
    let dir = tempfile::tempdir().expect("temp folder");
    let public = example_public_key().display().to_string();
    let config = format!(
        "[relay]\nsocket = {:?}\n[http]\nlisten = \"127.0.0.1:{}\"\n[auth]\npublic_key_file = {public:?}\n\
         [admin]\npublic_key_file = {public:?}\n",
        dir.path().join("relay.sock").display().to_string(),
        free_port(),
    );
    let path = dir.path().join("chatup.toml");
    std::fs::write(&path, &config).expect("write config");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(sidecar_bin())
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn the sidecar");
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the sidecar runs with the publishers' key as admin key:\n{stderr}");
    };
    assert!(!status.success(), "exit 0:\n{stderr}");
    assert!(
        stderr.contains("admin.public_key_file") && stderr.contains("same key"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("relay.sock").exists(),
        "nothing was served"
    );
}
