//! `POST /pub/<ch>` in the sample's `chatup_publish` location: the nginx worker reads the
//! request and the sidecar answers it over the worker's relay connection. The answers are
//! the sidecar's own; the worker answers by itself a wrong method, the relay being down, or
//! no answer in time; a client that leaves while it waits costs the worker nothing.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use chatup_tests::env::signal_pid;
use chatup_tests::http::{build_request, request, try_request};
use chatup_tests::token::token;
use chatup_tests::{Chatup, Options, Subscriber};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

/// `chatup_relay_publishes_total` as the sidecar counts it now.
async fn relay_publishes(env: &Chatup) -> f64 {
    crate::metrics::scrape(env)
        .await
        .get("chatup_relay_publishes_total")
}

/// Fails on what a worker must never log while publishing.
fn assert_worker_healthy(env: &Chatup) {
    let log = env.error_log();
    for bad in ["[alert]", "[crit]", "exited on signal", "panicked"] {
        assert!(!log.contains(bad), "{bad} in the error log:\n{log}");
    }
}

#[tokio::test]
async fn post_publish_travels_over_the_relay_and_answers_as_the_sidecar_does() {
    let env = Chatup::start_with(Options::default().workers(1));
    let mut sub = Subscriber::connect(&env, "/sub/relayed").await;
    let before = relay_publishes(&env).await;

    let resp = env
        .post_text("relayed", &token("alice"), b"over the relay")
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let ack = resp.json();
    assert_eq!(ack["ch"], "relayed");
    let msg = sub.recv().await;
    assert_eq!(
        (&msg["id"], &msg["msg"]),
        (&ack["id"], &"over the relay".into())
    );

    // The sidecar's refusals, with their headers, unchanged.
    let resp = env.post_text("relayed", "not-a-jwt", b"x").await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    assert_eq!(resp.error_code().as_deref(), Some("bad_token"));
    let resp = env
        .post(
            "/pub/bad%20name",
            &[("Authorization", &format!("Bearer {}", token("alice")))],
            b"x",
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.error_code().as_deref(), Some("bad_channel"));

    // Every one of them went over the relay, none to the sidecar's HTTP port.
    assert_eq!(relay_publishes(&env).await - before, 3.0);
    assert_worker_healthy(&env);
}

#[tokio::test]
async fn other_methods_get_405_and_paths_without_a_channel_404() {
    let env = Chatup::start_with(Options::default().workers(1));
    for method in ["GET", "PUT", "DELETE"] {
        let resp = request(
            env.nginx_addr(),
            &build_request(method, "/pub/room", &[], None),
            WAIT,
        )
        .await;
        assert_eq!(resp.status, 405, "{method}: {}", resp.text());
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.error_code().as_deref(),
            Some("method_not_allowed"),
            "{method}"
        );
    }
    for path in ["/pub/", "/pub/a/b"] {
        let resp = env.post_text(&path[5..], &token("alice"), b"x").await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        assert_eq!(resp.error_code().as_deref(), Some("not_found"), "{path}");
    }
    assert_eq!(
        relay_publishes(&env).await,
        0.0,
        "nothing reached the sidecar"
    );
}

#[tokio::test]
async fn a_stopped_sidecar_gets_503_with_retry_after_until_it_is_back() {
    let mut env = Chatup::start_with(Options::default().workers(1));
    env.publish("down", "before").await;
    env.stop_sidecar();
    // The worker sees the relay close at once.
    let deadline = Instant::now() + WAIT;
    let resp = loop {
        let resp = env.post_text("down", &token("alice"), b"x").await;
        if resp.status != 200 || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.error_code().as_deref(), Some("unavailable"));
    // A sidecar that is back is reached at once, not at the worker's next retry.
    env.start_sidecar();
    let ack = env.publish("down", "after").await;
    assert_eq!(ack["ch"], "down");
    assert_worker_healthy(&env);
}

#[tokio::test]
async fn a_silent_sidecar_gets_504_and_clients_that_leave_cost_the_worker_nothing() {
    let env = Chatup::start_with(Options::default().workers(1));
    let mut sub = Subscriber::connect(&env, "/sub/frozen").await;
    let first = env.publish("frozen", "first").await;
    assert_eq!(sub.recv().await["msg"], "first");
    let pid = env.sidecar_pid().expect("the sidecar runs");
    // The sidecar stops reading: the relay stays connected, no answer comes.
    signal_pid(pid, libc::SIGSTOP);

    // One client waits the whole timeout; others leave while they wait.
    let auth = format!("Bearer {}", token("alice"));
    let waiting = {
        let req = build_request(
            "POST",
            "/pub/frozen",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            Some(b"waited"),
        );
        let addr = env.nginx_addr();
        tokio::spawn(async move { try_request(addr, &req, Duration::from_secs(20)).await })
    };
    for i in 0..5 {
        let mut stream = tokio::net::TcpStream::connect(env.nginx_addr())
            .await
            .unwrap();
        let body = format!("gone {i}");
        let req = build_request(
            "POST",
            "/pub/frozen",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            Some(body.as_bytes()),
        );
        stream.write_all(&req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
    }
    let started = Instant::now();
    let resp = waiting.await.unwrap().expect("an answer");
    signal_pid(pid, libc::SIGCONT);
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.error_code().as_deref(), Some("unavailable"));
    assert!(started.elapsed() < Duration::from_secs(15));

    // The sidecar wakes and answers requests nobody waits for: dropped. The worker goes on:
    // the next publish is answered with its own id.
    let ack = env.publish("frozen", "next").await;
    // The frozen publishes were made once the sidecar woke (the 504 said they may be).
    let mut seen = HashMap::new();
    while seen.len() < 7 {
        let msg = sub.recv().await;
        seen.insert(
            msg["msg"].as_str().unwrap().to_owned(),
            msg["id"].as_u64().unwrap(),
        );
    }
    assert_eq!(seen["next"], ack["id"].as_u64().unwrap(), "{seen:?}");
    assert!(seen.contains_key("waited"), "{seen:?}");
    assert!(
        (0..5).all(|i| seen.contains_key(&format!("gone {i}"))),
        "{seen:?}"
    );
    assert!(seen.values().all(|&id| id > first["id"].as_u64().unwrap()));
    assert_eq!(env.worker_pids().len(), 1);
    assert_worker_healthy(&env);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_large_ones_are_read_back_whole() {
    let env = Chatup::start_with(
        Options::default()
            .workers(1)
            .sidecar_set("limits.max_message_chars=30000"),
    );
    let mut sub = Subscriber::connect(&env, "/sub/big").await;
    // client_max_body_size 64k in the sample.
    let resp = env
        .post_text("big", &token("alice"), &vec![b'x'; 65 * 1024 + 1])
        .await;
    assert_eq!(resp.status, 413, "{}", resp.text());
    // Larger than client_body_buffer_size (16k): nginx spools it, the worker reads it back.
    let text: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let resp = env.post_text("big", &token("alice"), text.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let msg = sub.recv().await;
    assert_eq!(msg["id"], resp.json()["id"]);
    assert_eq!(msg["msg"].as_str(), Some(text.as_str()));
    assert_worker_healthy(&env);
}

#[tokio::test]
async fn concurrent_publishes_on_one_worker_each_get_their_own_answer() {
    let env = Chatup::start_with(Options::default().workers(1));
    let mut sub = Subscriber::connect(&env, "/sub/many").await;
    let auth = format!("Bearer {}", token("alice"));
    let n = 200;
    let mut tasks = Vec::new();
    for i in 0..n {
        let req = build_request(
            "POST",
            "/pub/many",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            Some(format!("text {i}").as_bytes()),
        );
        let addr = env.nginx_addr();
        tasks.push(tokio::spawn(async move {
            (i, request(addr, &req, Duration::from_secs(20)).await)
        }));
    }
    let mut answered = HashMap::new();
    for task in tasks {
        let (i, resp) = task.await.unwrap();
        assert_eq!(resp.status, 200, "{i}: {}", resp.text());
        let id = resp.json()["id"].as_u64().unwrap();
        assert!(
            answered.insert(id, format!("text {i}")).is_none(),
            "id {id} twice"
        );
    }
    let mut received = HashMap::new();
    for _ in 0..n {
        let msg = sub.recv().await;
        received.insert(
            msg["id"].as_u64().unwrap(),
            msg["msg"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(
        answered, received,
        "each answer's id is that of its own text"
    );
    assert_worker_healthy(&env);
}

/// chatup with a second server, with TLS and HTTP/2, that includes the sample's publish
/// locations; its address.
fn start_h2(dir: &std::path::Path, opts: Options) -> (Chatup, String) {
    let (cert, key) = chatup_tests::env::self_signed_certificate(dir);
    let port = chatup_tests::free_port();
    let locations = chatup_tests::env::nginx_conf_dir().join("chatup-publish-locations.conf");
    let env = Chatup::start_with(opts.workers(1).http(&format!(
        "server {{\n    listen 127.0.0.1:{port} ssl;\n    http2 on;\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    include {};\n}}",
        cert.display(),
        key.display(),
        locations.display()
    )));
    (env, format!("127.0.0.1:{port}"))
}

/// `curl --http2` with `args`: the status line and the body.
fn curl_h2(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--http2", "-i", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").trim().to_owned();
    (status, body.to_owned())
}

/// [`curl_h2`] POSTing `data` (curl's `--data-binary`: `@path` reads a file) with `auth` and
/// `content_type`, off the runtime's threads.
async fn post_h2(url: &str, auth: &str, content_type: &str, data: &str) -> (String, String) {
    let content_type = format!("Content-Type: {content_type}");
    let args = [url, auth, &content_type, data].map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let [url, auth, content_type, data] = &args;
        curl_h2(&["-H", auth, "-H", content_type, "--data-binary", data, url])
    })
    .await
    .expect("curl's thread")
}

#[tokio::test]
async fn post_publish_works_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let (env, tls) = start_h2(
        dir.path(),
        Options::default().sidecar_set("limits.max_message_chars=30000"),
    );
    let mut sub = Subscriber::connect(&env, "/sub/h2pub").await;
    let url = format!("https://{tls}/pub/h2pub");
    let auth = format!("Authorization: Bearer {}", token("alice"));
    let big: String = (0..20_000)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    let body_file = dir.path().join("body.txt");
    std::fs::write(&body_file, &big).unwrap();
    let from_file = format!("@{}", body_file.display());
    let (status, body) = post_h2(&url, &auth, "application/json", r#"{"msg":"over h2"}"#).await;
    assert_eq!(status, "HTTP/2 200", "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let msg = sub.recv().await;
    assert_eq!((&msg["id"], &msg["msg"]), (&ack["id"], &"over h2".into()));

    // A body larger than the body buffer over HTTP/2 too; and GET is 405.
    let (status, body) = post_h2(&url, &auth, "text/plain", &from_file).await;
    assert_eq!(status, "HTTP/2 200", "{body}");
    assert_eq!(sub.recv().await["msg"].as_str(), Some(big.as_str()));
    let (status, body) = tokio::task::spawn_blocking(move || curl_h2(&[&url]))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/2 405", "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    assert_worker_healthy(&env);
}
