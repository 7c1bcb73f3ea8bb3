//! Moderation through real nginx and sidecars: the rate limit (one host, and counted across
//! two hosts through Redis; only what was published counts, whatever the plugins after it
//! or a publish-hook backend refuse or withhold), and bans made in Redis the way a host's admin API makes them
//! (the ban record, then the kick notice on the control channel), which every host obeys.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatup_tests::http::{build_request, request};
use chatup_tests::recorder::{Recorder, Reply};
use chatup_tests::token::{now, sign, sign_admin, token};
use chatup_tests::{
    Chatup, HttpResponse, Options, Publisher, RedisCluster, RedisServer, Subscriber, WAIT,
};
use serde_json::{json, Value};

/// A host allowing 3 messages per 2 s per user per channel.
fn limited(opts: Options) -> Chatup {
    Chatup::start_with(
        opts.plugins(&["ban", "rate_limit"])
            .sidecar_set("rate_limit.messages=3")
            .sidecar_set("rate_limit.per_seconds=2"),
    )
}

fn host(address: &str, id: &str, redis: &RedisServer) -> Options {
    Options::default()
        .address(address)
        .host_id(id)
        .redis(&redis.url())
}

#[track_caller]
fn assert_refused(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(
        (resp.status, resp.error_code().as_deref()),
        (status, Some(code)),
        "{}",
        resp.text()
    );
}

/// The `Retry-After` of a 429, checked to be whole seconds within the window.
#[track_caller]
fn retry_after(resp: &HttpResponse) -> u64 {
    let seconds: u64 = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {} {}", resp.status, resp.text()))
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&seconds), "Retry-After: {seconds}");
    seconds
}

/// Polls `attempt` every 50 ms until it returns true, at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !attempt().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_rate_limit_refuses_the_message_past_the_limit_until_the_window_slides() {
    let env = limited(Options::default());
    let alice = token("alice");
    let mut p = Publisher::connect_ok(&env, &alice).await;
    let first = Instant::now();
    for i in 1..=3 {
        p.publish("room", &format!("m{i}")).await;
    }
    let refused = p.request(json!({"ch": "room", "msg": "m4"})).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retryAfter"].as_u64().expect("retryAfter");
    assert!((1..=2).contains(&wait), "{refused}");
    assert_eq!(
        refused["message"],
        format!("at most 3 messages per 2 s in this channel; try again in {wait} s")
    );
    // Joins and leaves are not messages.
    for frame in [
        json!({"join": "room"}),
        json!({"leave": "room"}),
        json!({"join": "room"}),
    ] {
        let reply = p.request(frame).await;
        assert!(
            reply["type"] == "joined" || reply["type"] == "left",
            "{reply}"
        );
    }
    // Per channel and per user.
    p.publish("hall", "elsewhere").await;
    let bob = env.post_text("room", &token("bob"), b"bob").await;
    assert_eq!(bob.status, 200, "{}", bob.text());
    // POST gets the same refusal as a 429 with Retry-After.
    let resp = env.post_text("room", &alice, b"m5").await;
    assert_refused(&resp, 429, "rate_limited");
    retry_after(&resp);

    // Refusals did not count: once the first message is 2 s old, one more goes through.
    eventually(Duration::from_secs(5), "publishing again", || async {
        env.post_text("room", &alice, b"again").await.status == 200
    })
    .await;
    assert!(
        first.elapsed() >= Duration::from_millis(1900),
        "let through after {:?}",
        first.elapsed()
    );
    // Whatever else of the first three has left the window by now, at most two more fit
    // beside "again".
    let mut more = 0;
    loop {
        let resp = env.post_text("room", &alice, b"more").await;
        if resp.status != 200 {
            assert_refused(&resp, 429, "rate_limited");
            break;
        }
        more += 1;
        assert!(
            more <= 2,
            "{more} messages beside \"again\" within the window"
        );
    }
}

#[tokio::test]
async fn the_rate_limit_is_counted_across_hosts_through_redis() {
    let redis = RedisServer::start();
    let a = limited(host("127.0.0.2", "a", &redis));
    let b = limited(host("127.0.0.3", "b", &redis));
    let alice = token("alice");
    for i in 1..=3 {
        let resp = a
            .post_text("room", &alice, format!("m{i}").as_bytes())
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let resp = b.post_text("room", &alice, b"m4").await;
    assert_refused(&resp, 429, "rate_limited");
    retry_after(&resp);
    let mut p = Publisher::connect_ok(&b, &alice).await;
    let refused = p.request(json!({"ch": "room", "msg": "m4"})).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["retryAfter"].as_u64().is_some(), "{refused}");
    let keys = redis.keys("chatup:{room}:rate:*");
    assert_eq!(keys, ["chatup:{room}:rate:user-alice"]);

    eventually(Duration::from_secs(5), "publishing again on B", || async {
        b.post_text("room", &alice, b"again").await.status == 200
    })
    .await;
}

/// Every plugin after the limiter, with this rate limit: `blacklist.words=spam`, the publish
/// hook on `hook`, and a webhook on `slack` that withholds messages with "alert".
fn long_chain(opts: Options, messages: u32, hook: &Recorder, slack: &Recorder) -> Chatup {
    Chatup::start_with(
        opts.plugins(&["ban", "rate_limit", "blacklist", "publish_hook", "webhook"])
            .sidecar_set(&format!("rate_limit.messages={messages}"))
            .sidecar_set("rate_limit.per_seconds=60")
            .sidecar_set("blacklist.words=spam")
            .sidecar_set(&format!("publish_hook.url={}", hook.url("/check")))
            .sidecar_set(&format!("webhook.url={}", slack.url("/hook")))
            .sidecar_set("webhook.triggers=alert")
            .sidecar_set("webhook.broadcast=false"),
    )
}

/// Posts `text` as alice to `room` through each of `hosts` in turn, expecting `status`
/// (and `code` when refused).
async fn post_each(hosts: &[&Chatup], n: usize, text: &str, status: u16, code: Option<&str>) {
    let alice = token("alice");
    for i in 0..n {
        let env = hosts[i % hosts.len()];
        let resp = env.post_text("room", &alice, text.as_bytes()).await;
        match code {
            Some(code) => assert_refused(&resp, status, code),
            None => assert_eq!(resp.status, status, "{text} #{i}: {}", resp.text()),
        }
    }
}

/// With a limit of 10: 3 messages the backend rejects, a blacklisted one and a withheld one,
/// then 10 accepted ones all get 200; the 11th gets 429.
/// (A withheld message is answered 202.)
async fn refused_by_later_plugins_do_not_count(hosts: &[&Chatup], hook: &Recorder) {
    for _ in 0..3 {
        hook.then(Reply::json(
            &json!({"action": "reject", "message": "not this"}),
        ));
    }
    post_each(hosts, 3, "rejected", 403, Some("rejected")).await;
    post_each(hosts, 1, "spam", 422, Some("blacklisted")).await;
    post_each(hosts, 1, "alert", 202, None).await;
    post_each(hosts, 10, "hello", 200, None).await;
    post_each(hosts, 1, "one too many", 429, Some("rate_limited")).await;
    // The backend saw all but the blacklisted message and the last, refused first.
    assert_eq!(hook.requests().len(), 3 + 1 + 10);
}

#[tokio::test]
async fn messages_refused_after_the_rate_limit_do_not_count_on_one_host() {
    let (hook, slack) = (Recorder::start(), Recorder::start());
    hook.reply(Reply::status(204));
    let env = long_chain(Options::default(), 10, &hook, &slack);
    refused_by_later_plugins_do_not_count(&[&env], &hook).await;
}

#[tokio::test]
async fn messages_refused_after_the_rate_limit_do_not_count_through_redis() {
    let redis = RedisServer::start();
    let (hook, slack) = (Recorder::start(), Recorder::start());
    hook.reply(Reply::status(204));
    let a = long_chain(host("127.0.0.2", "a", &redis), 10, &hook, &slack);
    let b = long_chain(host("127.0.0.3", "b", &redis), 10, &hook, &slack);
    refused_by_later_plugins_do_not_count(&[&a, &b], &hook).await;
    // Given-back slots leave nothing behind: the 10 published messages.
    let held = redis.cli(&["ZCARD", "chatup:{room}:rate:user-alice"]);
    assert_eq!(held.trim(), "10");
}

/// The default chain with a limit of 9: a blacklisted message, then 9 accepted ones all get
/// 200; the 10th gets 429.
async fn a_blacklisted_message_does_not_count(hosts: &[&Chatup]) {
    post_each(hosts, 1, "spam", 422, Some("blacklisted")).await;
    post_each(hosts, 9, "hello", 200, None).await;
    post_each(hosts, 1, "one too many", 429, Some("rate_limited")).await;
}

fn default_chain(opts: Options) -> Chatup {
    Chatup::start_with(
        opts.plugins(&["ban", "rate_limit", "blacklist"])
            .sidecar_set("rate_limit.messages=9")
            .sidecar_set("rate_limit.per_seconds=60")
            .sidecar_set("blacklist.words=spam"),
    )
}

#[tokio::test]
async fn a_blacklisted_message_does_not_count_with_the_default_chain() {
    a_blacklisted_message_does_not_count(&[&default_chain(Options::default())]).await;
    let redis = RedisServer::start();
    let a = default_chain(host("127.0.0.2", "a", &redis));
    let b = default_chain(host("127.0.0.3", "b", &redis));
    a_blacklisted_message_does_not_count(&[&a, &b]).await;
}

// ---- bans -----------------------------------------------------------------------------------

/// Bans `user` from `channel` for `expire` (or for ever) through `env`'s admin API.
async fn ban(env: &Chatup, channel: &str, user: &str, expire: Option<Duration>) {
    let mut body = json!({"channel": channel, "users": [user]});
    if let Some(expire) = expire {
        body["expire"] = json!(expire.as_secs());
    }
    let resp = env.admin("POST", "/ban", Some(&body)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let banned = &resp.json()["banned"];
    assert_eq!(banned[0]["channel"], channel, "{banned}");
    assert_eq!(banned[0]["user"], user, "{banned}");
    assert_eq!(banned[0]["until"].is_null(), expire.is_none(), "{banned}");
}

/// Lifts the ban of `user` in `channel` through `env`'s admin API.
async fn unban(env: &Chatup, channel: &str, user: &str) {
    let body = json!({"channel": channel, "users": [user]});
    let resp = env.admin("DELETE", "/ban", Some(&body)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"unbanned": [{"channel": channel, "user": user}]})
    );
}

/// Waits until `n` hosts listen on the control channel.
async fn control_listeners(redis: &RedisServer, n: usize) {
    eventually(WAIT, "the hosts listening for kicks", || async {
        let reply = redis.cli(&["PUBSUB", "NUMSUB", "chatup:control"]);
        reply.lines().nth(1) == Some(&n.to_string())
    })
    .await;
}

async fn joined(env: &Chatup, user: &str, channel: &str) -> Publisher {
    let mut p = Publisher::connect_ok(env, &token(user)).await;
    let reply = p.request(json!({"join": channel})).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    p
}

#[tokio::test]
async fn a_ban_kicks_the_users_sessions_on_every_host_and_refuses_what_follows() {
    let redis = RedisServer::start();
    let a = Chatup::start_with(host("127.0.0.2", "a", &redis));
    let b = Chatup::start_with(host("127.0.0.3", "b", &redis));
    control_listeners(&redis, 2).await;
    let mut sub = Subscriber::connect(&a, "/sub/room").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut on_a = joined(&a, "alice", "room").await;
    let mut on_b = Publisher::connect_ok(&b, &token("alice")).await;
    on_b.publish("room", "hi from b").await;
    let mut bob = joined(&b, "bob", "room").await;
    let mut in_hall = joined(&b, "alice", "hall").await;
    let heard = sub.recv_n(3).await;
    let kinds: Vec<&str> = heard
        .iter()
        .map(|m| m["ev"].as_str().or(m["msg"].as_str()).unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["join", "hi from b", "join"], "{heard:?}");

    ban(&a, "room", "user-alice", None).await;
    for (name, p) in [("on A", &mut on_a), ("on B", &mut on_b)] {
        let (code, _) = p.expect_close(WAIT).await;
        assert_eq!(code, Some(4502), "alice's session {name}");
    }
    // Bob and alice's session in another channel stay.
    let refused = in_hall.request(json!({"ch": "room", "msg": "x"})).await;
    assert_eq!(refused["code"], "banned", "{refused}");
    assert_eq!(
        refused["message"],
        "you are banned from this channel permanently"
    );
    let refused = in_hall.request(json!({"join": "room"})).await;
    assert_eq!(refused["code"], "banned", "{refused}");
    in_hall.publish("hall", "fine").await;
    assert_refused(
        &a.post_text("room", &token("alice"), b"x").await,
        403,
        "banned",
    );
    // Up to bob's next message the room heard alice leave, and no join from her.
    bob.publish("room", "bob here").await;
    let mut rest: Vec<Value> = Vec::new();
    while rest.last().is_none_or(|m| m["msg"] != "bob here") {
        rest.push(sub.recv().await);
    }
    assert!(
        rest.iter().all(|m| m["ev"] != "join"),
        "a join came from the refused frame: {rest:?}"
    );
    assert!(
        rest.iter()
            .any(|m| m["ev"] == "leave" && m["user"]["name"] == "alice"),
        "{rest:?}"
    );
    // Viewers were told to hide her messages.
    assert!(
        rest.iter()
            .any(|m| m["ev"] == "rmUserMsg" && m["data"] == "user-alice" && m["by"] == "user"),
        "{rest:?}"
    );
    let listed = b.admin("GET", "/bans/room", None).await;
    assert_eq!(
        listed.json(),
        json!({"channel": "room", "bans": [{"user": "user-alice", "until": null}]})
    );

    unban(&b, "room", "user-alice").await;
    let listed = a.admin("GET", "/bans/room", None).await;
    assert_eq!(listed.json()["bans"], json!([]), "{}", listed.text());
    let mut back = joined(&b, "alice", "room").await;
    back.publish("room", "back").await;
    let resp = a.post_text("room", &token("alice"), b"again").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn a_ban_with_an_expiry_lapses() {
    let redis = RedisServer::start();
    let env = Chatup::start_with(host("127.0.0.2", "a", &redis));
    control_listeners(&redis, 1).await;
    let alice = token("alice");
    let started = Instant::now();
    ban(&env, "room", "user-alice", Some(Duration::from_secs(1))).await;
    let resp = env.post_text("room", &alice, b"x").await;
    assert_refused(&resp, 403, "banned");
    // The end, machine-readable too.
    assert!(
        resp.json()["error"]["until"].as_u64().is_some(),
        "{}",
        resp.text()
    );
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.starts_with("you are banned from this channel until "),
        "{message}"
    );
    eventually(Duration::from_secs(5), "the ban lapsing", || async {
        env.post_text("room", &alice, b"x").await.status == 200
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_ban_kicks_across_hosts_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = Chatup::two_on_cluster(&cluster);
    // The control channel is a sharded one, on the shard of its hash tag.
    let control = cluster.node(cluster.node_index_for("chatup:{control}"));
    eventually(WAIT, "both hosts listening for kicks", || async {
        let reply = control.cli(&["PUBSUB", "SHARDNUMSUB", "chatup:{control}"]);
        reply.lines().nth(1) == Some("2")
    })
    .await;
    let mut on_b = joined(&b, "alice", "room").await;

    ban(&a, "room", "user-alice", None).await;
    let (code, _) = on_b.expect_close(WAIT).await;
    assert_eq!(code, Some(4502));
    assert_refused(
        &a.post_text("room", &token("alice"), b"x").await,
        403,
        "banned",
    );
}

#[tokio::test]
async fn bans_in_the_original_format_and_bad_ban_calls_on_one_host() {
    let env = Chatup::start();
    let mut alice = joined(&env, "alice", "room").await;
    // The original system's body: a JWT whose payload is the array of bans.
    // Its `name` is the public name, `_public.name`.
    let body = sign_admin(&json!([{"name": "alice", "channel": "room", "expire": 60}]));
    let resp = request(
        env.nginx_addr(),
        &build_request("POST", "/ban", &[], Some(body.as_bytes())),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["banned"][0]["name"], "alice", "{}", resp.text());
    let until = resp.json()["banned"][0]["until"]
        .as_u64()
        .expect("an expiry");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    assert!(
        (now + 55_000..=now + 61_000).contains(&until),
        "{until} vs {now}"
    );
    let (code, _) = alice.expect_close(WAIT).await;
    assert_eq!(code, Some(4502));
    let listed = env.admin("GET", "/bans/room", None).await;
    assert_eq!(listed.json()["bans"][0]["until"], json!(until));

    for (body, needle) in [
        (json!({"channel": "room"}), "no users or names given"),
        (
            json!({"channel": "room", "users": [], "names": []}),
            "no users or names given",
        ),
        (json!({"channel": "room", "names": [""]}), "a name is empty"),
        (json!([{"channel": "room", "name": " "}]), "a name is empty"),
        (
            json!({"channel": "room", "users": [""]}),
            "a user id is empty",
        ),
        (json!({"channel": "a b", "users": ["x"]}), "channel"),
        (
            json!({"channel": "room", "users": ["x"], "expire": 0}),
            "at least 1 second",
        ),
        (
            json!({"channel": "room", "users": ["x"], "ttl": 5}),
            "unknown field",
        ),
    ] {
        let resp = env.admin("POST", "/ban", Some(&body)).await;
        assert_refused(&resp, 400, "bad_request");
        assert!(resp.text().contains(needle), "{body}: {}", resp.text());
    }
    let user_token = format!("Bearer {}", token("alice"));
    let resp = request(
        env.nginx_addr(),
        &build_request(
            "POST",
            "/ban",
            &[("Authorization", &user_token)],
            Some(br#"{"channel":"room","users":["user-bob"]}"#),
        ),
        WAIT,
    )
    .await;
    assert_refused(&resp, 401, "bad_token");

    // Lifted with the original format too.
    let body = sign_admin(&json!([{"name": "alice", "channel": "room"}]));
    let resp = request(
        env.nginx_addr(),
        &build_request("POST", "/unban", &[], Some(body.as_bytes())),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    joined(&env, "alice", "room").await;
}

/// A token with both a `sub` and a `_public.name`.
fn token_of(sub: &str, name: &str) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "iat": now(), "_public": {"name": name}}))
}

async fn joined_as(env: &Chatup, token: &str, channel: &str) -> Publisher {
    let mut p = Publisher::connect_ok(env, token).await;
    p.join(channel).await;
    p
}

/// Reads `sub` until a message matching `wanted` (skipping others).
async fn heard(sub: &mut Subscriber, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = sub.recv().await;
        if wanted(&m) {
            return m;
        }
    }
}

#[tokio::test]
async fn a_ban_by_name_in_the_original_format_kicks_and_refuses_a_user_who_has_a_sub_too() {
    let redis = RedisServer::start();
    let a = Chatup::start_with(host("127.0.0.2", "a", &redis));
    let b = Chatup::start_with(host("127.0.0.3", "b", &redis));
    control_listeners(&redis, 2).await;
    let mut sub = Subscriber::connect(&a, "/sub/room").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let zoe = token_of("u-17", "Zoe");
    // Her live socket is on B; the ban is made on A.
    let mut on_b = joined_as(&b, &zoe, "room").await;
    let body = sign_admin(&json!([{"name": "Zoe", "channel": "room", "expire": 600}]));
    let resp = request(
        a.nginx_addr(),
        &build_request("POST", "/ban", &[], Some(body.as_bytes())),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let until = resp.json()["banned"][0]["until"].as_u64().expect("until");
    assert_eq!(
        resp.json(),
        json!({"banned": [{"channel": "room", "name": "Zoe", "until": until}]})
    );

    let (code, texts) = on_b.expect_close(WAIT).await;
    assert_eq!(code, Some(4502), "{texts:?}");
    // Told until when before the close.
    let last = texts.last().expect("a frame before the close");
    assert_eq!(
        (&last["type"], &last["code"], &last["ch"], &last["until"]),
        (
            &json!("error"),
            &json!("banned"),
            &json!("room"),
            &json!(until)
        ),
        "{last}"
    );
    for env in [&a, &b] {
        let resp = env.post_text("room", &zoe, b"x").await;
        assert_refused(&resp, 403, "banned");
        assert_eq!(
            resp.json()["error"]["until"],
            json!(until),
            "{}",
            resp.text()
        );
    }
    let mut again = Publisher::connect_ok(&a, &zoe).await;
    let refused = again.request(json!({"join": "room"})).await;
    assert_eq!(
        (&refused["code"], &refused["until"]),
        (&json!("banned"), &json!(until)),
        "{refused}"
    );
    // Viewers hide her messages by her name.
    let removal = heard(&mut sub, |m| m["ev"] == "rmUserMsg").await;
    assert_eq!(
        (&removal["data"], &removal["by"]),
        (&json!("Zoe"), &json!("name"))
    );
    let listed = b.admin("GET", "/bans/room", None).await;
    assert_eq!(
        listed.json(),
        json!({"channel": "room", "bans": [{"name": "Zoe", "until": until}]})
    );
}

/// Makes a ban (`POST`) or lifts one (`DELETE`) through `env`'s admin API, and checks the
/// whole answer.
async fn ban_call(env: &Chatup, method: &str, body: Value, answer: Value) {
    let resp = env.admin(method, "/ban", Some(&body)).await;
    assert_eq!(resp.json(), answer);
}

#[tokio::test]
async fn bans_by_user_and_by_name_match_only_their_kind_and_lift_by_kind() {
    let redis = RedisServer::start();
    let a = Chatup::start_with(host("127.0.0.2", "a", &redis));
    let b = Chatup::start_with(host("127.0.0.3", "b", &redis));
    control_listeners(&redis, 2).await;
    let zoe = token_of("u-17", "Zoe");
    let other_zoe = token_of("u-99", "Zoe");
    let named_like_her_id = token_of("u-5", "u-17");
    let mut zoe_on_b = joined_as(&b, &zoe, "room").await;
    let mut other_on_b = joined_as(&b, &other_zoe, "room").await;
    let mut named_on_b = joined_as(&b, &named_like_her_id, "room").await;

    // By user id: only the token whose `sub` is u-17.
    ban_call(
        &a,
        "POST",
        json!({"channel": "room", "users": ["u-17"]}),
        json!({"banned": [{"channel": "room", "user": "u-17", "until": null}]}),
    )
    .await;
    let (code, _) = zoe_on_b.expect_close(WAIT).await;
    assert_eq!(code, Some(4502));
    other_on_b.publish("room", "another Zoe").await;
    named_on_b.publish("room", "named u-17").await;
    assert_refused(&a.post_text("room", &zoe, b"x").await, 403, "banned");

    // By name: every Zoe, on every host; lifted by name, the ban by user stays.
    ban_call(
        &a,
        "POST",
        json!({"channel": "room", "names": ["Zoe"]}),
        json!({"banned": [{"channel": "room", "name": "Zoe", "until": null}]}),
    )
    .await;
    let (code, _) = other_on_b.expect_close(WAIT).await;
    assert_eq!(code, Some(4502));
    assert_refused(&b.post_text("room", &other_zoe, b"x").await, 403, "banned");
    named_on_b.publish("room", "still here").await;
    let listed = a.admin("GET", "/bans/room", None).await;
    assert_eq!(
        listed.json()["bans"],
        json!([{"user": "u-17", "until": null}, {"name": "Zoe", "until": null}])
    );
    ban_call(
        &b,
        "DELETE",
        json!({"channel": "room", "names": ["Zoe"]}),
        json!({"unbanned": [{"channel": "room", "name": "Zoe"}]}),
    )
    .await;
    let back = a.post_text("room", &other_zoe, b"back").await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_refused(&a.post_text("room", &zoe, b"x").await, 403, "banned");
}

#[tokio::test]
async fn bans_stored_by_bare_id_before_an_upgrade_still_hold_and_lift() {
    let redis = RedisServer::start();
    let env = Chatup::start_with(host("127.0.0.2", "a", &redis));
    // As an earlier version stored them: field = the id (sub, else the name), value = until.
    let later = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
        + 600_000)
        .to_string();
    redis.cli(&["HSET", "chatup:{room}:bans", "Zoe", &later, "u-9", "0"]);
    let zoe = token_of("u-17", "Zoe");
    let nine = token_of("u-9", "Nina");
    assert_refused(&env.post_text("room", &zoe, b"x").await, 403, "banned");
    assert_refused(&env.post_text("room", &nine, b"x").await, 403, "banned");
    let ok = env.post_text("room", &token("alice"), b"x").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let listed = env.admin("GET", "/bans/room", None).await;
    assert_eq!(
        listed.json()["bans"],
        json!([
            {"legacy": "Zoe", "until": later.parse::<u64>().unwrap()},
            {"legacy": "u-9", "until": null}
        ])
    );
    // Lifted by either kind.
    for body in [
        json!({"channel": "room", "names": ["Zoe"]}),
        json!({"channel": "room", "users": ["u-9"]}),
    ] {
        let resp = env.admin("DELETE", "/ban", Some(&body)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    for t in [&zoe, &nine] {
        let resp = env.post_text("room", t, b"free").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}
