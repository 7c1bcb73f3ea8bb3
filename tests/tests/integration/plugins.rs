//! The content plugins through real nginx and a real sidecar: the blacklist (on one host,
//! and shared by two hosts through a real Redis), the webhook (to a recording HTTP server
//! standing in for Slack) and the publish hook (to a recording server standing in for the
//! operator's backend).

use std::time::{Duration, Instant};

use chatup_tests::http::{build_request, request};
use chatup_tests::recorder::{Recorder, Reply, Request};
use chatup_tests::token::{events_token, token};
use chatup_tests::HttpResponse;
use chatup_tests::{assert_message, free_port, Chatup, Options, Publisher, RedisServer};
use chatup_tests::{Subscriber, WAIT};
use serde_json::{json, Value};

/// A host with these `--set` settings on top of the defaults.
fn host(sets: &[&str]) -> Chatup {
    Chatup::start_with(
        sets.iter()
            .fold(Options::default(), |opts, kv| opts.sidecar_set(kv)),
    )
}

/// Sends `frame` on the WebSocket and checks that it is refused with `code`; returns the
/// error's message.
async fn refused(publisher: &mut Publisher, frame: Value, code: &str) -> String {
    let reply = publisher.request(frame.clone()).await;
    assert_eq!(reply["type"], "error", "{frame} was not refused: {reply}");
    assert_eq!(reply["code"], code, "{frame}: {reply}");
    reply["message"].as_str().unwrap_or_default().to_owned()
}

fn msg(text: &str) -> Value {
    json!({"ch": "room", "msg": text})
}

/// How many lines of the sidecar's log contain `needle`.
fn log_lines(env: &Chatup, needle: &str) -> usize {
    env.sidecar_log()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

// ---- blacklist --------------------------------------------------------------------------

#[tokio::test]
async fn the_blacklist_refuses_blocked_words_and_masks_muted_ones_in_any_case() {
    let env = host(&[
        "plugins.chain=blacklist",
        "blacklist.words=spam,Дурак,bad phrase",
        "blacklist.muted=darn,straße",
        "blacklist.mask=#",
    ]);
    let mut sub = Subscriber::connect(&env, "/sub/room").await;
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;

    for text in ["buy SPAM now", "ты ДУРАК!", "a Bad\n phrase", "(spam)"] {
        let message = refused(&mut publisher, msg(text), "blacklisted").await;
        // The refusal does not name the word.
        assert_eq!(message, "the message contains a blocked word", "{text:?}");
    }
    let resp = env
        .post_text("room", &token("bob"), "дурак".as_bytes())
        .await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("blacklisted"));

    // Words inside other words pass; muted words are masked, the rest kept as it was.
    let ack = publisher
        .publish("room", "Darn, the STRAẞE is closed; spammers, дураки")
        .await;
    assert_eq!(ack["id"], 1, "{ack}");
    let posted = env.publish("room", "darned DARN!").await;
    assert_eq!(posted["id"], 2, "{posted}");
    let got = sub.recv_n(2).await;
    assert_message(
        &got[0],
        "room",
        1,
        "####, the ###### is closed; spammers, дураки",
    );
    assert_message(&got[1], "room", 2, "darned ####!");
    // Nothing refused reached the channel.
    sub.expect_no_message(Duration::from_millis(300)).await;

    // Events are not text: they pass untouched.
    let mut events = Publisher::connect_ok(&env, &events_token("carol")).await;
    let ack = events
        .request(json!({"ch": "room", "ev": "spam", "data": {"say": "darn spam"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = sub.recv().await;
    assert_eq!(event["data"], json!({"say": "darn spam"}), "{event}");
}

/// Publishes `text` on `env` with POST until the status is `status`; returns how long it took.
async fn until_status(env: &Chatup, text: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let resp = env
            .post_text("room", &token("alice"), text.as_bytes())
            .await;
        if resp.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{text:?} on {}: still {} {} after {within:?}",
            env.public_url(),
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_blacklist_change_in_redis_applies_on_every_host_within_two_seconds() {
    let redis = RedisServer::start();
    let at = |address: &str, id: &str| {
        Chatup::start_with(
            Options::default()
                .address(address)
                .host_id(id)
                .redis(&redis.url())
                .sidecar_set("plugins.chain=blacklist")
                .sidecar_set("blacklist.words=spam"),
        )
    };
    let a = at("127.0.0.2", "a");
    let b = at("127.0.0.3", "b");
    assert_eq!(b.publish("room", "eggs").await["id"], 1);
    let mut sub = Subscriber::connect(&b, "/sub/menu").await;
    // Let the subscription reach Redis before anything is published there.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Added through host A's admin API.
    let resp = blacklist(
        &a,
        "POST",
        Some(&json!({"words": ["Eggs"], "muted": ["ham"]})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"words": {"config": ["spam"], "managed": ["eggs"]},
               "muted": {"config": [], "managed": ["ham"]}})
    );
    let changed = Instant::now();
    for env in [&a, &b] {
        until_status(env, "EGGS!", 422, Duration::from_secs(3)).await;
    }
    assert!(
        changed.elapsed() < Duration::from_millis(2500),
        "the change took {:?} to reach both hosts",
        changed.elapsed()
    );
    b.publish("menu", "Ham and cheese").await;
    let got = sub.recv().await;
    assert_eq!(got["msg"], "*** and cheese", "{got}");

    // Removing applies the same way; the config file's words stay and cannot be removed.
    let resp = blacklist(&a, "DELETE", Some(&json!({"words": ["spam"]}))).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("config"), "{}", resp.text());
    let resp = blacklist(&b, "DELETE", Some(&json!({"words": ["eggs"]}))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let listed = blacklist(&a, "GET", None).await;
    assert_eq!(
        listed.json()["words"]["managed"],
        json!([]),
        "{}",
        listed.text()
    );
    for env in [&a, &b] {
        until_status(env, "eggs", 200, Duration::from_secs(3)).await;
        let resp = env.post_text("room", &token("alice"), b"spam").await;
        assert_eq!(resp.status, 422, "{}", resp.text());
    }
}

/// `method /blacklist` through `env`'s nginx with a valid admin token.
async fn blacklist(env: &Chatup, method: &str, body: Option<&Value>) -> HttpResponse {
    env.admin(method, "/blacklist", body).await
}

#[tokio::test]
async fn the_blacklist_api_needs_an_admin_token_checks_its_input_and_says_when_it_is_off() {
    let env = host(&["plugins.chain=blacklist", "blacklist.muted=darn"]);
    let resp = blacklist(&env, "POST", Some(&json!({"words": ["Spam"]}))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Applied at once on this host.
    let resp = env.post_text("room", &token("alice"), b"SPAM!").await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    for (body, needle) in [
        (json!({"words": [""]}), "empty"),
        (json!({"words": "spam"}), "invalid type"),
        (json!({"verbs": ["x"]}), "unknown field"),
        (json!(["spam"]), "must be an object"),
    ] {
        let resp = blacklist(&env, "POST", Some(&body)).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        assert!(resp.text().contains(needle), "{body}: {}", resp.text());
    }
    let resp = request(
        env.nginx_addr(),
        &build_request(
            "GET",
            "/blacklist",
            &[("Authorization", &format!("Bearer {}", token("alice")))],
            None,
        ),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.text());

    let off = host(&["plugins.chain=ban"]);
    let resp = blacklist(&off, "GET", None).await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert!(resp.text().contains("plugins.chain"), "{}", resp.text());
}

// ---- webhook ----------------------------------------------------------------------------

#[tokio::test]
async fn the_webhook_posts_slack_json_and_retries_after_a_500_but_not_a_404() {
    let slack = Recorder::start();
    slack.then(Reply::status(500));
    let env = host(&[
        "plugins.chain=webhook",
        &format!("webhook.url={}", slack.url("/services/T0/B0/secret")),
        "webhook.triggers=help me,alert",
        "webhook.retries=2",
    ]);
    let mut sub = Subscriber::connect(&env, "/sub/room").await;
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    let text = "please HELP  me: a < b & c > d";
    assert_eq!(publisher.publish("room", text).await["id"], 1);
    // No trigger, no post ("helpful", "alerts" are other words).
    assert_eq!(publisher.publish("room", "helpful alerts").await["id"], 2);

    let got = slack.wait_for(2, WAIT).await;
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/services/T0/B0/secret");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let body = got[0].json();
    assert_eq!(got[1].json(), body, "the retry sends the same post");
    assert_eq!(
        body["text"],
        "*alice* in #room: please HELP  me: a &lt; b &amp; c &gt; d"
    );
    assert!(body["chatup"]["t"].is_u64(), "{body}");
    let mut details = body["chatup"].clone();
    details["t"] = json!(0);
    assert_eq!(
        details,
        json!({"channel": "room", "user": {"name": "alice"}, "sub": "user-alice",
               "msg": text, "trigger": "help me", "t": 0})
    );
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(200), "retried after {gap:?}");
    // The messages went to the channel as usual.
    let msgs = sub.recv_n(2).await;
    assert_message(&msgs[0], "room", 1, text);
    assert_message(&msgs[1], "room", 2, "helpful alerts");

    // A 404 will not get better: not retried.
    slack.reply(Reply::status(404));
    publisher.publish("room", "ALERT!").await;
    slack.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(slack.requests().len(), 3, "a 404 was retried");
    assert!(env.wait_for_sidecar_log("webhook post answered 404", WAIT));
    // The secret part of the URL is never logged.
    assert!(
        !env.sidecar_log().contains("secret"),
        "the webhook URL was logged"
    );
}

#[tokio::test]
async fn a_slow_webhook_does_not_slow_publishing() {
    let slack = Recorder::start();
    slack.reply(Reply::raw(200, "ok").delayed(Duration::from_secs(2)));
    let env = host(&[
        "plugins.chain=webhook",
        &format!("webhook.url={}", slack.url("/hook")),
        "webhook.triggers=alert",
    ]);
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    let started = Instant::now();
    assert_eq!(publisher.publish("room", "alert one").await["id"], 1);
    assert_eq!(publisher.publish("room", "alert two").await["id"], 2);
    let resp = env.post_text("room", &token("bob"), b"alert three").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "three publishes took {took:?} while the webhook takes 2 s to answer"
    );
    // The first post is at the endpoint, unanswered, while the publishers have their acks.
    let first = slack.wait_for(1, WAIT).await;
    assert_eq!(first[0].json()["chatup"]["msg"], "alert one");
    // One sender: the posts go one after the other, in order.
    let all = slack.wait_for(3, Duration::from_secs(10)).await;
    let texts: Vec<Value> = all
        .iter()
        .map(|r| r.json()["chatup"]["msg"].clone())
        .collect();
    assert_eq!(texts, ["alert one", "alert two", "alert three"]);
    let gap = all[1].at - all[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "second post after {gap:?}"
    );
}

#[tokio::test]
async fn a_webhook_without_broadcast_withholds_the_message() {
    let slack = Recorder::start();
    let env = host(&[
        "plugins.chain=webhook",
        &format!("webhook.url={}", slack.url("/hook")),
        "webhook.triggers=alert",
        "webhook.broadcast=false",
    ]);
    let mut sub = Subscriber::connect(&env, "/sub/room").await;
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;

    let ack = publisher.request(msg("ALERT now")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["withheld"], true, "{ack}");
    assert!(ack.get("id").is_none() && ack.get("ep").is_none(), "{ack}");
    let resp = env.post_text("room", &token("bob"), b"alert again").await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_eq!(resp.json(), json!({"ch": "room", "withheld": true}));

    // The moderator sees both; the channel sees neither.
    let got = slack.wait_for(2, WAIT).await;
    assert_eq!(got[1].json()["text"], "*bob* in #room: alert again");
    let ack = publisher.publish("room", "hello").await;
    assert_eq!(ack["id"], 1, "withheld messages take no id: {ack}");
    let first = sub.recv().await;
    assert_message(&first, "room", 1, "hello");
    sub.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn queued_webhook_posts_go_out_at_shutdown_within_a_short_grace() {
    let slack = Recorder::start();
    let mut env = host(&[
        "plugins.chain=webhook",
        &format!("webhook.url={}", slack.url("/hook")),
        "webhook.triggers=alert",
    ]);
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    // The first post holds the sender for 1 s; the second is still queued at SIGTERM.
    slack.then(Reply::status(200).delayed(Duration::from_secs(1)));
    publisher.publish("room", "alert one").await;
    publisher.publish("room", "alert two").await;
    slack.wait_for(1, WAIT).await;
    let status = env.stop_sidecar();
    assert!(status.success(), "{status}");
    assert_eq!(
        slack.requests().len(),
        2,
        "the queued post was lost at shutdown"
    );

    // An endpoint that never answers in time does not hold the shutdown past the grace.
    let stuck = Recorder::start();
    stuck.reply(Reply::status(200).delayed(Duration::from_secs(30)));
    let mut env = host(&[
        "plugins.chain=webhook",
        &format!("webhook.url={}", stuck.url("/hook")),
        "webhook.triggers=alert",
        "webhook.timeout_ms=30000",
    ]);
    let mut publisher = Publisher::connect_ok(&env, &token("alice")).await;
    publisher.publish("room", "alert").await;
    stuck.wait_for(1, WAIT).await;
    drop(publisher);
    let started = Instant::now();
    let status = env.stop_sidecar();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}

// ---- publish hook -----------------------------------------------------------------------

#[tokio::test]
async fn the_publish_hook_accepts_rejects_and_rewrites() {
    let backend = Recorder::start();
    for reply in [
        Reply::status(204),
        Reply::json(&json!({"action": "accept"})),
        Reply::json(&json!({"action": "reject", "message": "no links, please"})),
        Reply::json(&json!({"action": "rewrite", "msg": "[redacted]"})),
        Reply::json(&json!({"action": "rewrite", "msg": "far too long for the limit"})),
        Reply::json(&json!({"action": "rewrite", "data": {"b": 2}})),
    ] {
        backend.then(reply);
    }
    let env = host(&[
        "plugins.chain=publish_hook",
        &format!("publish_hook.url={}", backend.url("/check")),
        "limits.max_message_chars=20",
    ]);
    let mut sub = Subscriber::connect(&env, "/sub/room").await;
    let mut publisher = Publisher::connect_ok(&env, &events_token("alice")).await;

    assert_eq!(publisher.publish("room", "one").await["id"], 1);
    assert_eq!(env.publish("room", "two").await["id"], 2);
    let message = refused(&mut publisher, msg("see http://x"), "rejected").await;
    assert_eq!(message, "no links, please");
    assert_eq!(publisher.publish("room", "secret").await["id"], 3);
    // A rewrite beyond limits.max_message_chars is the backend's failure (fail closed).
    refused(&mut publisher, msg("long"), "hook_unavailable").await;
    let ack = publisher
        .request(json!({"ch": "room", "ev": "typing", "data": {"a": 1}}))
        .await;
    assert_eq!(ack["id"], 4, "{ack}");

    let got = sub.recv_n(4).await;
    assert_message(&got[0], "room", 1, "one");
    assert_message(&got[1], "room", 2, "two");
    assert_message(&got[2], "room", 3, "[redacted]");
    assert_eq!(got[3]["ev"], "typing", "{}", got[3]);
    assert_eq!(got[3]["data"], json!({"b": 2}), "{}", got[3]);
    sub.expect_no_message(Duration::from_millis(300)).await;

    let asked: Vec<Request> = backend.requests();
    assert_eq!(asked.len(), 6);
    for r in &asked {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/check"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let alice = |body: Value| {
        let mut request =
            json!({"channel": "room", "user": {"name": "alice"}, "sub": "user-alice"});
        for (k, v) in body.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    };
    assert_eq!(asked[0].json(), alice(json!({"msg": "one"})));
    assert_eq!(asked[1].json(), alice(json!({"msg": "two"})));
    assert_eq!(asked[2].json(), alice(json!({"msg": "see http://x"})));
    assert_eq!(
        asked[5].json(),
        alice(json!({"ev": "typing", "data": {"a": 1}}))
    );
}

/// Two hosts on `url`, one failing closed and one failing open.
fn closed_and_open(url: &str, timeout_ms: u64) -> (Chatup, Chatup) {
    let with = |fail_open: bool| {
        host(&[
            "plugins.chain=publish_hook",
            &format!("publish_hook.url={url}"),
            &format!("publish_hook.timeout_ms={timeout_ms}"),
            &format!("publish_hook.fail_open={fail_open}"),
        ])
    };
    (with(false), with(true))
}

/// A backend failing for `closed` and `open`: the first refuses, the second publishes.
async fn fails_closed_and_open(closed: &Chatup, open: &Chatup, failure: &str) {
    let started = Instant::now();
    let resp = closed.post_text("room", &token("alice"), b"hello").await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("hook_unavailable"));
    let mut publisher = Publisher::connect_ok(closed, &token("alice")).await;
    refused(&mut publisher, msg("hello"), "hook_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusals took {:?}",
        started.elapsed()
    );

    let mut sub = Subscriber::connect(open, "/sub/room").await;
    let started = Instant::now();
    assert_eq!(open.publish("room", "hello").await["id"], 1);
    let mut publisher = Publisher::connect_ok(open, &token("alice")).await;
    assert_eq!(publisher.publish("room", "again").await["id"], 2);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publishing took {:?}",
        started.elapsed()
    );
    let got = sub.recv_n(2).await;
    assert_message(&got[0], "room", 1, "hello");
    assert_message(&got[1], "room", 2, "again");

    // Logged, at most once per 10 s however often it fails.
    assert!(
        closed.wait_for_sidecar_log(failure, WAIT),
        "{failure:?} not logged"
    );
    assert_eq!(log_lines(closed, "publish hook failed"), 1);
    assert_eq!(log_lines(closed, "refusing with hook_unavailable"), 1);
    assert!(
        open.wait_for_sidecar_log(failure, WAIT),
        "{failure:?} not logged"
    );
    assert_eq!(log_lines(open, "publish hook failed"), 1);
    assert_eq!(log_lines(open, "publishing unchanged"), 1);
}

#[tokio::test]
async fn a_publish_hook_that_times_out_fails_closed_or_open_as_configured() {
    let backend = Recorder::start();
    backend.reply(Reply::status(204).delayed(Duration::from_millis(1500)));
    let (closed, open) = closed_and_open(&backend.url("/check"), 200);
    fails_closed_and_open(&closed, &open, "no answer within 200 ms").await;
    assert!(backend.requests().len() >= 4);
}

#[tokio::test]
async fn a_publish_hook_backend_that_is_down_fails_closed_or_open_as_configured() {
    // Nothing listens there: connections are refused.
    let url = format!("http://127.0.0.1:{}/check", free_port());
    let (closed, open) = closed_and_open(&url, 1000);
    fails_closed_and_open(&closed, &open, "publish hook failed: the request failed").await;
}

#[tokio::test]
async fn a_publish_hook_answering_garbage_or_an_error_status_is_a_failure() {
    let backend = Recorder::start();
    let closed = host(&[
        "plugins.chain=publish_hook",
        &format!("publish_hook.url={}", backend.url("/check")),
    ]);
    for reply in [
        Reply::status(500),
        Reply::raw(200, "not json"),
        Reply::json(&json!({"action": "allow"})),
    ] {
        backend.reply(reply.clone());
        let resp = closed.post_text("room", &token("alice"), b"hello").await;
        assert_eq!(resp.status, 503, "{reply:?}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("hook_unavailable"));
    }
    assert_eq!(backend.requests().len(), 3);
}
