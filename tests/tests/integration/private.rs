//! Private channels: a subscribe token opens them, checked by the sidecar before nginx
//! answers; every refusal is an HTTP status with its reason, before any 101 or event
//! stream, and nothing of the channel is sent. Public channels need nothing.

use chatup_tests::sse::{poll, sse_request, SseStream};
use chatup_tests::token::{now, sign, sign_subscribe, subscribe_token, token_signed_by_other_key};
use chatup_tests::ws::Subscriber;
use chatup_tests::{Chatup, HttpResponse, Options};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Each user's own channel and the members rooms are private.
const PATTERNS: [&str; 2] = ["user.{sub}", "members-*"];

fn private_env() -> Chatup {
    Chatup::start_with(Options::default().private(&PATTERNS))
}

/// A chat host of a multi-host test on `redis`, with the same private channels.
fn private_host(address: &str, id: &str, redis: &chatup_tests::RedisServer) -> Chatup {
    Chatup::start_with(Options::host_on_redis(address, id, &redis.url()).private(&PATTERNS))
}

/// A WebSocket subscribe to `path` right after a sidecar restart or a reload: until the
/// worker hears the sidecar again, a request with a token is answered 503 (retry).
async fn connect_when_ready(env: &Chatup, path: &str) -> Subscriber {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match Subscriber::try_connect(env, path).await {
            Ok(sub) => return sub,
            Err(Ok(resp)) if resp.status == 503 && std::time::Instant::now() < deadline => {
                assert_eq!(resp.header("retry-after"), Some("1"), "{}", resp.text());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("subscribe to {path}: {:?}", other.map(|r| r.text())),
        }
    }
}

/// A WebSocket subscribe to `path` that must be refused; its response.
async fn refused_ws(env: &Chatup, path: &str) -> HttpResponse {
    match Subscriber::try_connect(env, path).await {
        Err(Ok(resp)) => resp,
        Err(Err(e)) => panic!("subscribe to {path} failed instead of a refusal: {e}"),
        Ok(_) => panic!("subscribe to {path} was accepted"),
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_before_the_101_with_its_reason() {
    let env = private_env();
    env.publish_n("members-club", 1, 2).await;
    let alice = |channels: &[&str]| subscribe_token("alice", channels, 600);
    let forged = {
        let good = alice(&["members-club"]);
        let other = subscribe_token("mallory", &["members-*"], 600);
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        parts.join(".")
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("missing", String::new(), 401, "token_required"),
        (
            "expired",
            sign_subscribe(&json!({"sub": "alice", "exp": now() - 600, "channels": ["*"]})),
            401,
            "token_expired",
        ),
        ("forged", forged, 401, "signature"),
        (
            "wrong key (a publisher token)",
            sign(&json!({"sub": "alice", "exp": now() + 600, "channels": ["*"]})),
            401,
            "signature",
        ),
        (
            "other key",
            token_signed_by_other_key(&json!({"sub": "alice", "exp": now() + 600})),
            401,
            "signature",
        ),
        (
            "other channel",
            alice(&["members-other"]),
            403,
            "does not open",
        ),
        (
            "someone else's own channel",
            alice(&["*"]),
            403,
            "does not open",
        ),
        ("not a JWT", "a%20b".into(), 400, "base64url"),
    ];
    for (what, token, status, reason) in cases {
        let channel = if what == "someone else's own channel" {
            "user.bob"
        } else {
            "members-club"
        };
        let path = if token.is_empty() {
            format!("/sub/{channel}")
        } else {
            format!("/sub/{channel}?token={token}")
        };
        let resp = refused_ws(&env, &path).await;
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert!(
            resp.text().contains(reason),
            "{what}: {reason:?} not in {:?}",
            resp.text()
        );
        assert!(
            !resp.text().contains("\"msg\""),
            "{what}: nothing of the channel is sent"
        );
    }
}

#[tokio::test]
async fn a_good_token_opens_its_channels_and_public_ones_need_none() {
    let env = private_env();
    let ep = env.publish_n("members-club", 1, 3).await;
    env.publish_n("lobby", 1, 1).await;
    let token = subscribe_token("alice", &["members-club"], 600);
    // One request, a private and a public channel, and the user's own channel.
    let path = format!("/sub/members-club/lobby/user.alice?token={token}");
    let mut sub = Subscriber::connect(&env, &path).await;
    let replay = sub.recv_n(4).await;
    let got: Vec<(String, u64)> = replay
        .iter()
        .map(|m| {
            (
                m["ch"].as_str().unwrap().to_owned(),
                m["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(got.contains(&("members-club".into(), 3)), "{got:?}");
    assert!(got.contains(&("lobby".into(), 1)), "{got:?}");
    env.publish("user.alice", "for alice").await;
    let dm = sub.recv().await;
    assert_eq!(
        (dm["ch"].as_str(), dm["msg"].as_str()),
        (Some("user.alice"), Some("for alice"))
    );
    // A public channel needs no token at all.
    let mut public = Subscriber::connect(&env, "/sub/lobby").await;
    assert_eq!(public.recv().await["id"], 1);
    // The same token in a header (for clients that can set one) and with since.
    let resp = poll(
        env.nginx_addr(),
        &format!("/sub/members-club?transport=poll&since=members-club:{ep}:2&token={token}"),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["messages"][0]["id"], 3);
}

#[tokio::test]
async fn sse_and_long_poll_are_refused_and_admitted_alike() {
    let env = private_env();
    env.publish_n("members-club", 1, 2).await;
    let good = subscribe_token("alice", &["members-*"], 600);
    let other = subscribe_token("alice", &["members-other"], 600);

    let refused = poll(env.nginx_addr(), "/sub/members-club?transport=poll", WAIT).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.text().contains("token_required"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let refused = poll(
        env.nginx_addr(),
        &format!("/sub/members-club?transport=poll&token={other}"),
        WAIT,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    let req = sse_request(
        "/sub/members-club",
        &[&format!("Authorization: Bearer {other}")],
    );
    match SseStream::try_open(env.nginx_addr(), &req, None).await {
        Err(Ok(resp)) => {
            assert_eq!(resp.status, 403, "{}", resp.text());
            assert!(resp.text().contains("does not open"), "{}", resp.text());
        }
        Err(Err(e)) => panic!("SSE refusal failed: {e}"),
        Ok(_) => panic!("an SSE stream opened with a token for another channel"),
    }
    let header = format!("Authorization: Bearer {good}");
    let mut sse = SseStream::open(env.nginx_addr(), "/sub/members-club", &[&header]).await;
    let replay = sse.expect_messages(2).await;
    assert_eq!(replay[1].json()["id"], 2);
    let answer = poll(
        env.nginx_addr(),
        &format!("/sub/members-club?transport=poll&token={good}"),
        WAIT,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn a_viewer_whose_token_expires_is_closed_with_4002() {
    let env = private_env();
    let token = subscribe_token("alice", &["members-club"], 2);
    let mut sub = Subscriber::connect(&env, &format!("/sub/members-club?token={token}")).await;
    let (code, _) = sub.expect_close(Duration::from_secs(8)).await;
    assert_eq!(code, Some(4002), "fetch a new token, reconnect and resume");
}

#[tokio::test]
async fn a_banned_user_may_not_watch_a_private_channel() {
    let env = private_env();
    let resp = env
        .admin(
            "POST",
            "/ban",
            Some(&json!({"channel": "members-club", "users": ["alice"]})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let token = subscribe_token("alice", &["members-club"], 600);
    let resp = refused_ws(&env, &format!("/sub/members-club?token={token}")).await;
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("banned"), "{}", resp.text());
    // Another user still may.
    let bob = subscribe_token("bob", &["members-club"], 600);
    Subscriber::connect(&env, &format!("/sub/members-club?token={bob}")).await;
}

#[tokio::test]
async fn a_ban_closes_the_users_private_viewers_on_every_host() {
    use chatup_tests::RedisServer;
    let redis = RedisServer::start();
    let a = private_host("127.0.0.2", "a", &redis);
    let b = private_host("127.0.0.3", "b", &redis);
    let alice = subscribe_token("alice", &["members-club"], 600);
    let bob = subscribe_token("bob", &["members-club"], 600);
    // Alice watches on host B (her own channel too), Bob on B, Alice also on A.
    let mut alice_b =
        Subscriber::connect(&b, &format!("/sub/members-club/user.alice?token={alice}")).await;
    let mut alice_own = Subscriber::connect(&b, &format!("/sub/user.alice?token={alice}")).await;
    let mut bob_b = Subscriber::connect(&b, &format!("/sub/members-club?token={bob}")).await;
    let mut alice_a = Subscriber::connect(&a, &format!("/sub/members-club?token={alice}")).await;

    // Banned from members-club through host A's admin API, for a minute.
    let resp = a
        .admin(
            "POST",
            "/ban",
            Some(&json!({"channel": "members-club", "users": ["alice"], "expire": 60})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for (what, sub) in [("on host B", &mut alice_b), ("on host A", &mut alice_a)] {
        let (code, _) = sub.expect_close(WAIT).await;
        assert_eq!(code, Some(4502), "alice's viewer {what}");
    }
    // Not banned from her own channel, and Bob is not banned at all: he sees the ban's
    // rmUserMsg, then what follows.
    alice_own
        .expect_no_message(Duration::from_millis(300))
        .await;
    let removal = bob_b.recv().await;
    assert_eq!(
        (removal["ev"].as_str(), removal["data"].as_str()),
        (Some("rmUserMsg"), Some("alice"))
    );
    b.publish("members-club", "still here").await;
    assert_eq!(bob_b.recv().await["msg"], "still here");
    // She cannot come back while the ban lasts, on either host.
    for env in [&a, &b] {
        let resp = refused_ws(env, &format!("/sub/members-club?token={alice}")).await;
        assert_eq!(resp.status, 403, "{}", resp.text());
        assert!(resp.text().starts_with("banned"), "{}", resp.text());
    }
}

#[tokio::test]
async fn the_operator_sees_who_watches_a_private_channel_and_nobody_else_does() {
    use chatup_tests::token::admin_token;
    use chatup_tests::RedisServer;
    let redis = RedisServer::start();
    let a = private_host("127.0.0.2", "a", &redis);
    let b = private_host("127.0.0.3", "b", &redis);
    a.publish_n("members-club", 1, 2).await;
    let alice = subscribe_token("alice", &["members-club"], 600);
    let bob = subscribe_token("bob", &["members-club"], 600);
    let _alice_b = Subscriber::connect(&b, &format!("/sub/members-club?token={alice}")).await;
    let mut bob_a = Subscriber::connect(&a, &format!("/sub/members-club?token={bob}")).await;
    // Another socket of Alice's, on the other host: she is listed once.
    let _alice_a = Subscriber::connect(&a, &format!("/sub/members-club?token={alice}")).await;

    let listed = |v: &serde_json::Value| -> Vec<String> {
        v["viewers"]
            .as_array()
            .unwrap_or_else(|| panic!("no viewers in {v}"))
            .iter()
            .map(|u| {
                format!(
                    "{}/{}",
                    u["sub"].as_str().unwrap(),
                    u["user"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stats = a.admin("GET", "/stats/members-club", None).await;
        assert_eq!(stats.status, 200, "{}", stats.text());
        let stats = stats.json();
        if listed(&stats) == ["alice/alice", "bob/bob"] {
            assert_eq!(stats["viewerTotal"], 2, "{stats}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "viewers never listed: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The public user list of a private channel: refused without the operator's token.
    let refused = b.get("/channels/members-club/users", &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("private_channel"));
    let viewer_token = format!("Bearer {alice}");
    let refused = b
        .get(
            "/channels/members-club/users",
            &[("Authorization", &viewer_token)],
        )
        .await;
    assert_eq!(
        refused.status, 403,
        "a subscribe token is not the operator's"
    );
    let admin = format!("Bearer {}", admin_token());
    let users = b
        .get("/channels/members-club/users", &[("Authorization", &admin)])
        .await;
    assert_eq!(users.status, 200, "{}", users.text());
    assert_eq!(users.header("cache-control"), Some("no-store"));
    assert_eq!(listed(&users.json()), ["alice/alice", "bob/bob"]);
    // /join names a host but sends none of a private channel's history.
    let joined = b.post("/join/members-club", &[], b"").await;
    assert_eq!(joined.status, 200, "{}", joined.text());
    assert_eq!(joined.json()["history"], json!([]), "{}", joined.text());
    let joined = b.post("/join/lobby", &[], b"").await;
    assert_eq!(joined.status, 200);

    // Bob leaves: he is no longer listed.
    bob_a.close(1000).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stats = a.admin("GET", "/stats/members-club", None).await.json();
        if listed(&stats) == ["alice/alice"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob still listed: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn removing_a_user_closes_their_publishers_and_private_viewers_with_4505() {
    use chatup_tests::token::token;
    use chatup_tests::Publisher;
    let env = private_env();
    // The publisher token of "alice" has sub "user-alice"; her subscribe token the same.
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    let subscribe = subscribe_token("user-alice", &["members-club"], 600);
    let mut viewer =
        Subscriber::connect(&env, &format!("/sub/members-club?token={subscribe}")).await;
    let bob = subscribe_token("bob", &["members-club"], 600);
    let mut other = Subscriber::connect(&env, &format!("/sub/members-club?token={bob}")).await;

    let resp = env.admin("DELETE", "/users/user-alice", None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["disconnected"], "user-alice");
    let (code, _) = viewer.expect_close(WAIT).await;
    assert_eq!(code, Some(4505), "her private viewer");
    let (code, _) = publisher.expect_close(WAIT).await;
    assert_eq!(code, Some(4505), "her publisher session");
    other.expect_no_message(Duration::from_millis(300)).await;
    let too_long = format!("/users/{}", "x".repeat(300));
    assert_eq!(env.admin("DELETE", &too_long, None).await.status, 400);
}

#[tokio::test]
async fn one_token_opens_the_channel_on_whichever_host_the_dispatcher_names() {
    use chatup_tests::{Dispatcher, RedisServer};
    let redis = RedisServer::start();
    let a = private_host("127.0.0.2", "a", &redis);
    let b = private_host("127.0.0.3", "b", &redis);
    let dispatcher = Dispatcher::start_with(
        Options::default()
            .address("127.0.0.4")
            .redis(&redis.url())
            .private(&PATTERNS),
    );
    a.publish_n("members-club", 1, 3).await;
    let token = subscribe_token("alice", &["members-club"], 600);

    // Wait until both hosts are listed, then ask for one and, excluding it, the other.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() < 2 {
        let exclude = json!({ "exclude": seen.clone() });
        let resp = dispatcher.join("members-club", Some(&exclude)).await;
        if resp.status == 200 {
            let answer = resp.json();
            // A private channel's history is for admitted viewers only.
            assert_eq!(answer["history"], json!([]), "{answer}");
            let id = answer["host"]["id"].as_str().unwrap().to_owned();
            let sub = answer["host"]["sub"].as_str().unwrap().to_owned();
            let env = if id == "a" { &a } else { &b };
            assert_eq!(
                sub,
                format!("{}/sub/", env.public_url().replace("http://", "ws://"))
            );
            let mut viewer =
                Subscriber::connect(env, &format!("/sub/members-club?token={token}")).await;
            let replay = viewer.recv_n(3).await;
            assert_eq!(replay[2]["id"], 3, "the replay on host {id}");
            // Without the token, refused on that host too.
            let refused = refused_ws(env, "/sub/members-club").await;
            assert_eq!(refused.status, 401, "{}", refused.text());
            seen.push(id);
        }
        assert!(std::time::Instant::now() < deadline, "hosts seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
    // The dispatcher keeps a private channel's users to the operator.
    let users = dispatcher
        .request("GET", "/channels/members-club/users", &[], None)
        .await;
    assert_eq!(users.status, 403, "{}", users.text());
}

#[tokio::test]
async fn only_its_user_joins_a_users_own_channel_but_anyone_writes_to_it() {
    use chatup_tests::token::token;
    use chatup_tests::Publisher;
    let env = private_env();
    // Publisher tokens of "alice" and "carol" have sub user-alice and user-carol.
    let mut alice = Publisher::connect_ok(&env, &token("alice")).await;
    alice.join("user.user-alice").await;
    let mut carol = Publisher::connect_ok(&env, &token("carol")).await;
    let reply = carol.request(json!({"join": "user.user-alice"})).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("only that user joins it"),
        "{reply}"
    );
    // A direct message: Carol writes to Alice's channel, which Alice watches.
    let subscribe = subscribe_token("user-alice", &[], 600);
    let mut inbox =
        Subscriber::connect(&env, &format!("/sub/user.user-alice?token={subscribe}")).await;
    let sent = carol.publish("user.user-alice", "hi alice").await;
    assert!(sent["id"].is_u64(), "{sent}");
    // Her own join came first (presence events reach the channel's viewers).
    let mut got = inbox.recv().await;
    if got["ev"] == "join" {
        got = inbox.recv().await;
    }
    assert_eq!(
        (got["msg"].as_str(), got["user"]["name"].as_str()),
        (Some("hi alice"), Some("carol"))
    );
}

#[tokio::test]
async fn a_public_channel_ignores_a_sites_own_authorization_and_token() {
    let env = private_env();
    env.publish_n("lobby", 1, 1).await;
    // Behind a site's HTTP basic authentication every request carries its Authorization,
    // and a page may add a token of its own: neither concerns a public channel.
    let basic = "Authorization: Basic dXNlcjpwYXNz";
    let mut sse =
        SseStream::open(env.nginx_addr(), "/sub/lobby?token=not%20a%20jwt", &[basic]).await;
    assert_eq!(sse.expect_messages(1).await[0].json()["id"], 1);
    let mut ws = Subscriber::connect(&env, "/sub/lobby?token=%%%").await;
    assert_eq!(ws.recv().await["id"], 1);
    // On a private channel, basic authentication is no token at all.
    let req = sse_request("/sub/members-club", &[basic]);
    match SseStream::try_open(env.nginx_addr(), &req, None).await {
        Err(Ok(resp)) => {
            assert_eq!(resp.status, 401, "{}", resp.text());
            assert!(resp.text().starts_with("token_required"), "{}", resp.text());
        }
        Err(Err(e)) => panic!("{e}"),
        Ok(_) => panic!("a private channel opened without a subscribe token"),
    }
}

#[tokio::test]
async fn an_admitted_viewer_comes_back_after_a_sidecar_restart_and_a_reload() {
    let mut env = private_env();
    let ep = env.publish_n("members-club", 1, 2).await;
    let token = subscribe_token("alice", &["members-club"], 600);
    let mut viewer = Subscriber::connect(&env, &format!("/sub/members-club?token={token}")).await;
    assert_eq!(viewer.recv_n(2).await[1]["id"], 2);

    // The restarted sidecar no longer knows the viewer: it is closed with 1001, comes back
    // with its token through a fresh admission, and resumes (the memory broker's history
    // starts again: the resume point names the old epoch, so a resync comes first).
    env.restart_sidecar();
    let (code, _) = viewer.expect_close(WAIT).await;
    assert_eq!(code, Some(1001));
    let since = format!("members-club:{ep}:2");
    let mut again = connect_when_ready(
        &env,
        &format!("/sub/members-club?since={since}&token={token}"),
    )
    .await;
    env.publish("members-club", "after the restart").await;
    let mut got = again.recv().await;
    if got["ev"] == "resync" {
        got = again.recv().await;
    }
    assert_eq!(got["msg"], "after the restart", "{got}");

    // An nginx reload: 1001, then back through a new worker's admission.
    env.reload();
    let (code, _) = again.expect_close(WAIT).await;
    assert_eq!(code, Some(1001));
    let mut third = connect_when_ready(&env, &format!("/sub/members-club?token={token}")).await;
    env.publish("members-club", "after the reload").await;
    let texts: Vec<String> = third
        .recv_n(2)
        .await
        .iter()
        .filter_map(|m| m["msg"].as_str().map(str::to_owned))
        .collect();
    assert!(texts.contains(&"after the reload".to_owned()), "{texts:?}");
}
