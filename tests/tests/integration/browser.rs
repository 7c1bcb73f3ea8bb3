//! The browser client and the example page in a real browser: Debian's chromium driven by
//! playwright-core (client/e2e/browser.mjs, run with node) against nginx with the module
//! (serving the page as `scripts/run` does), the sidecar with demo tokens on, and Redis.
//!
//! The script asks for faults on stdout (`CONTROL stop-sidecar`, `start-sidecar`,
//! `kill-worker`, `restart-worker`); this side does them and answers `OK` on its stdin. `scripts/test` installs
//! chromium, node and the npm packages; without them this test fails and says what is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chatup_tests::env::signal_pid;
use chatup_tests::token::{admin_token, token};
use chatup_tests::{repo_root, Chatup, Options, RedisServer};

/// The whole browser run, faults included, must end within this.
const DEADLINE: Duration = Duration::from_secs(240);

/// What `scripts/run` adds to nginx's server block for the page (scripts/run writes the same).
fn example_locations(root: &Path) -> String {
    format!(
        r#"
location = / {{ return 302 /client/example/$is_args$args; }}
location ~ ^/client/((src|dist|example)/.*)$ {{
    alias {root}/client/$1;
    types {{ text/html html; text/css css; text/javascript js mjs; application/json json; }}
}}
"#,
        root = root.display()
    )
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

#[test]
fn the_example_page_in_chromium() {
    let root = repo_root();
    let client = root.join("client");
    assert!(
        client.join("node_modules/playwright-core").is_dir(),
        "client/node_modules has no playwright-core: run `npm ci` in client/ (scripts/test does)"
    );
    assert!(
        Path::new(&chromium()).exists(),
        "no chromium at {} (apt-get install chromium; scripts/test does)",
        chromium()
    );

    let redis = RedisServer::start();
    let demo_key = root.join("nginx-conf/example-keys/jwt-private.pem");
    let mut chatup = Chatup::start_with(
        Options::default()
            .redis(&redis.url())
            .workers(1)
            .server(&example_locations(&root))
            .sidecar_set(&format!("demo.private_key_file={}", demo_key.display())),
    );
    let artifacts = root.join("target/test-artifacts/browser");

    let mut node = Command::new("node")
        .arg(client.join("e2e/browser.mjs"))
        .current_dir(&client)
        .env("CHATUP_URL", chatup.public_url())
        .env(
            "CHATUP_SIDECAR_URL",
            format!("http://{}", chatup.sidecar_addr()),
        )
        .env("CHATUP_ADMIN_TOKEN", admin_token())
        .env("CHATUP_FEED_TOKEN", token("feeder"))
        .env("CHATUP_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node (apt-get install nodejs; scripts/test does)");
    let mut answers = node.stdin.take().expect("node's stdin");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = node.stdout.take().expect("node's stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + DEADLINE;
    let mut output = Vec::new();
    let mut killed = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                panic!(
                    "the browser tests took longer than {DEADLINE:?}:\n{}",
                    output.join("\n")
                );
            }
        };
        println!("{line}");
        let Some(verb) = line.strip_prefix("CONTROL ") else {
            output.push(line);
            continue;
        };
        match verb {
            "stop-sidecar" => {
                chatup.stop_sidecar();
            }
            "start-sidecar" => chatup.start_sidecar(),
            "kill-worker" => {
                // The master is held, so no new worker takes the clients back until
                // `restart-worker`: messages published meanwhile must be caught up.
                let workers = chatup.worker_pids();
                assert_eq!(workers.len(), 1, "one nginx worker: {workers:?}");
                signal_pid(chatup.master_pid(), libc::SIGSTOP);
                chatup.crash_worker(workers[0]);
                killed = workers.first().copied();
            }
            "restart-worker" => {
                signal_pid(chatup.master_pid(), libc::SIGCONT);
                let pid = killed.take().expect("restart-worker after kill-worker");
                chatup.wait_worker_replaced(pid, 1);
            }
            other => panic!("unknown control request {other:?}"),
        }
        writeln!(answers, "OK").expect("answer node");
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "the browser tests failed ({status}):\n{}",
        output.join("\n")
    );
    for page in ["alice", "bob"] {
        let shot = artifacts.join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot at {}",
            shot.display()
        );
    }
}
