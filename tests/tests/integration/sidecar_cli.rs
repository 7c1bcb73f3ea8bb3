//! The sidecar binary: startup warnings, the `token` subcommand, config errors.

use chatup_tests::env::{free_port, sidecar_bin, wait_timeout};
use chatup_tests::token::{cli_token, now, payload};
use chatup_tests::{Chatup, Publisher, Subscriber};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn warns_about_the_example_key() {
    let env = Chatup::start();
    let log = env.sidecar_log();
    let warned = log.lines().any(|l| {
        let l = l.to_lowercase();
        l.contains("warn") && l.contains("example")
    });
    assert!(
        warned,
        "no WARN about the example key in the sidecar log:\n{log}"
    );
}

#[tokio::test]
async fn tokens_from_the_token_subcommand_are_accepted() {
    let env = Chatup::start();
    let mut sub = Subscriber::connect(&env, "/sub/cli").await;

    let plain = cli_token(&["--name", "alice"]);
    let claims = payload(&plain);
    assert_eq!(claims["_public"], json!({"name": "alice"}), "{claims}");
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(
        (exp - now() - 3600).abs() < 60,
        "default ttl 3600: {claims}"
    );
    let resp = env.post_text("cli", &plain, b"from the cli").await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let rich = cli_token(&[
        "--name",
        "bob",
        "--sub",
        "u-42",
        "--ttl",
        "120",
        "--public",
        r#"{"color":"red"}"#,
        "--events",
    ]);
    let claims = payload(&rich);
    assert_eq!(claims["sub"], "u-42", "{claims}");
    assert_eq!(claims["_public"]["name"], "bob", "{claims}");
    assert_eq!(claims["_public"]["color"], "red", "{claims}");
    assert_eq!(claims["_events"], true, "{claims}");
    let exp = claims["exp"].as_i64().expect("exp");
    assert!((exp - now() - 120).abs() < 60, "ttl 120: {claims}");
    let mut p = Publisher::connect_ok(&env, &rich).await;
    let ack = p.request(json!({"ch": "cli", "ev": "typing"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let msgs = sub.recv_n(2).await;
    assert_eq!(msgs[0]["user"], json!({"name": "alice"}));
    assert_eq!(msgs[0]["msg"], "from the cli");
    assert_eq!(msgs[1]["user"]["color"], "red");
    assert_eq!(msgs[1]["ev"], "typing");
}

/// Runs the sidecar with `config` and expects it to fail at start; returns its stderr.
pub(crate) fn failing_start(config: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp folder");
    let path = dir.path().join("chatup.toml");
    std::fs::write(&path, config).expect("write config");
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(sidecar_bin())
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn the sidecar");
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sidecar kept running with a bad config:\n{config}\n{stderr}");
        }
        Some(s) => assert!(
            !s.success(),
            "exit 0 with a bad config:\n{config}\n{stderr}"
        ),
    }
    stderr
}

pub(crate) fn base_config(dir: &std::path::Path) -> String {
    format!(
        "[relay]\nsocket = {:?}\n[http]\nlisten = \"127.0.0.1:{}\"\n[auth]\npublic_key_file = {:?}\n",
        dir.join("relay.sock").display().to_string(),
        free_port(),
        chatup_tests::token::example_public_key().display().to_string()
    )
}

#[test]
fn bad_configs_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp folder");
    let base = base_config(dir.path());

    let err = failing_start(&format!("{base}colour = \"blue\"\n"), &[]);
    assert!(err.contains("colour"), "unknown key not named:\n{err}");

    let err = failing_start(&format!("{base}[bogus]\nx = 1\n"), &[]);
    assert!(err.contains("bogus"), "unknown section not named:\n{err}");

    let missing = dir.path().join("no-such-key.pem");
    let config = base.replace(
        &chatup_tests::token::example_public_key()
            .display()
            .to_string(),
        &missing.display().to_string(),
    );
    let err = failing_start(&config, &[]);
    assert!(
        err.contains("no-such-key.pem"),
        "missing key file not named:\n{err}"
    );

    let err = failing_start(
        &format!("{base}[limits]\nmax_message_chars = \"many\"\n"),
        &[],
    );
    assert!(
        err.contains("max_message_chars"),
        "bad value not named:\n{err}"
    );

    let err = failing_start(&base, &["--set", "auth.algorithms=none"]);
    assert!(!err.trim().is_empty(), "alg none refused with a message");

    let err = failing_start(&base, &["--set", "redis.url=localhost:6379"]);
    assert!(
        err.contains("redis.url") && err.contains("not a Redis URL"),
        "a Redis address without scheme is refused by name:\n{err}"
    );
}

#[test]
fn an_unreachable_redis_stops_the_start_and_is_named() {
    let dir = tempfile::tempdir().expect("temp folder");
    let base = base_config(dir.path());
    // Nothing listens there: free_port only hands out ports it could bind.
    let url = format!("redis://user:secret@127.0.0.1:{}", free_port());
    let err = failing_start(&base, &["--set", &format!("redis.url={url}")]);
    let shown = url.replace("user:secret@", "");
    assert!(
        err.contains(&format!("Redis at {shown} is unavailable")),
        "the error names the address:\n{err}"
    );
    assert!(
        !err.contains("secret"),
        "the password is not logged:\n{err}"
    );
}

#[test]
fn help_exits_zero() {
    let out = Command::new(sidecar_bin())
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run --help");
    assert!(out.status.success(), "--help exit status {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("token"),
        "--help mentions the token subcommand:\n{text}"
    );
}

#[tokio::test]
async fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().expect("temp folder");
    let file_port = free_port();
    let env_port = free_port();
    let flag_port = free_port();
    let config = format!(
        "[relay]\nsocket = {:?}\n[http]\nlisten = \"127.0.0.1:{file_port}\"\n[auth]\npublic_key_file = {:?}\n",
        dir.path().join("relay.sock").display().to_string(),
        chatup_tests::token::example_public_key().display().to_string()
    );
    let path = dir.path().join("chatup.toml");
    std::fs::write(&path, config).expect("write config");
    let run = |with_env: bool, with_flag: bool| {
        let mut cmd = Command::new(sidecar_bin());
        cmd.arg("--config").arg(&path);
        if with_flag {
            cmd.arg("--set")
                .arg(format!("http.listen=127.0.0.1:{flag_port}"));
        }
        if with_env {
            cmd.env("CHATUP_HTTP_LISTEN", format!("127.0.0.1:{env_port}"));
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the sidecar")
    };
    for (with_env, with_flag, port) in [
        (false, false, file_port),
        (true, false, env_port),
        (true, true, flag_port),
    ] {
        let mut child = run(with_env, with_flag);
        let mut up = false;
        for _ in 0..100 {
            let req = chatup_tests::http::build_request("GET", "/health", &[], None);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if let Ok(resp) =
                chatup_tests::http::try_request(addr, &req, Duration::from_millis(500)).await
            {
                assert_eq!(resp.status, 200);
                assert_eq!(resp.json()["status"], "ok");
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        chatup_tests::env::signal_pid(child.id(), libc::SIGTERM);
        let status = wait_timeout(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        assert!(
            up,
            "env {with_env} flag {with_flag}: no /health on port {port}"
        );
        assert!(status.is_some_and(|s| s.success()), "exit 0 on SIGTERM");
    }
}

#[tokio::test]
async fn health_through_nginx() {
    let env = Chatup::start();
    let resp = env.get("/health", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let health = resp.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["broker"], "memory", "{health}");
    assert_eq!(
        health["roles"],
        json!(["worker", "dispatcher", "admin"]),
        "{health}"
    );
}

#[tokio::test]
async fn the_old_chat_host_key_still_works_and_warns_once() {
    let env = Chatup::start_with(chatup_tests::Options::default().sidecar_set("roles.worker=true"));
    let resp = env.get("/health", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["roles"],
        json!(["worker", "dispatcher", "admin"]),
        "{}",
        resp.text()
    );
    let log = env.sidecar_log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("roles.worker")).collect();
    assert_eq!(warnings.len(), 1, "one deprecation warning:\n{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("roles.chat_host"),
        "the warning names the new key:\n{log}"
    );
}

#[test]
fn old_and_new_chat_host_keys_that_disagree_stop_the_start() {
    let dir = tempfile::tempdir().expect("temp folder");
    let base = base_config(dir.path());
    let err = failing_start(
        &format!("{base}[roles]\nworker = false\n"),
        &["--set", "roles.chat_host=true"],
    );
    assert!(
        err.contains("`roles.worker`") && err.contains("`roles.chat_host`"),
        "both keys are named:\n{err}"
    );
}
