//! The browser client and the example page in a real browser: Debian's chromium driven by
//! playwright-core (scripts in client/e2e/, run with node) against real chat hosts (nginx
//! with the module, the sidecar) and Redis.
//!
//! A script asks for faults on stdout (`CONTROL <verb>`); this side does them and answers
//! `OK` on its stdin. `scripts/test` installs chromium, node and the npm packages; without
//! them these tests fail and say what is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chatup_tests::env::signal_pid;
use chatup_tests::token::{admin_token, token};
use chatup_tests::{repo_root, Chatup, Dispatcher, Options, RedisServer};

/// A whole script, faults included, must end within this.
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

/// Where a script leaves its screenshots.
fn artifacts(script: &str) -> PathBuf {
    repo_root().join("target/test-artifacts").join(script)
}

/// Runs client/e2e/`script`.mjs with `env`, doing each `CONTROL` request with `on_control`
/// (which returns the JSON to answer with, if any); fails when the script fails.
fn run_script(
    script: &str,
    env: &[(&str, String)],
    on_control: impl FnMut(&str) -> Option<String>,
) {
    run_script_into(script, &artifacts(script), env, on_control);
}

/// [`run_script`], leaving the screenshots in `shots`.
fn run_script_into(
    script: &str,
    shots: &Path,
    env: &[(&str, String)],
    mut on_control: impl FnMut(&str) -> Option<String>,
) {
    let client = repo_root().join("client");
    assert!(
        client.join("node_modules/playwright-core").is_dir(),
        "client/node_modules has no playwright-core: run `npm ci` in client/ (scripts/test does)"
    );
    assert!(
        Path::new(&chromium()).exists(),
        "no chromium at {} (apt-get install chromium; scripts/test does)",
        chromium()
    );
    let mut node = Command::new("node")
        .arg(client.join(format!("e2e/{script}.mjs")))
        .current_dir(&client)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CHATUP_ARTIFACTS", shots)
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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                panic!(
                    "{script}.mjs took longer than {DEADLINE:?}:\n{}",
                    output.join("\n")
                );
            }
        };
        println!("{line}");
        let Some(verb) = line.strip_prefix("CONTROL ") else {
            output.push(line);
            continue;
        };
        let answer = match on_control(verb) {
            Some(json) => format!("OK {json}"),
            None => "OK".to_owned(),
        };
        writeln!(answers, "{answer}").expect("answer node");
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "{script}.mjs failed ({status}):\n{}",
        output.join("\n")
    );
}

/// One host serving the example page; two users chat, markup stays text, the sidecar stops
/// and a worker dies (reconnecting, then caught up), one user is banned.
#[test]
fn the_example_page_in_chromium() {
    let root = repo_root();
    let redis = RedisServer::start();
    let demo_key = root.join("nginx-conf/example-keys/jwt-private.pem");
    let mut chatup = Chatup::start_with(
        Options::default()
            .redis(&redis.url())
            .workers(1)
            .server(&example_locations(&root))
            .sidecar_set(&format!("demo.private_key_file={}", demo_key.display())),
    );
    let env = [
        ("CHATUP_URL", chatup.public_url()),
        (
            "CHATUP_SIDECAR_URL",
            format!("http://{}", chatup.sidecar_addr()),
        ),
        ("CHATUP_ADMIN_TOKEN", admin_token()),
        ("CHATUP_FEED_TOKEN", token("feeder")),
    ];
    let mut killed = None;
    run_script("browser", &env, |verb| {
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
                killed = Some(workers[0]);
            }
            "restart-worker" => {
                signal_pid(chatup.master_pid(), libc::SIGCONT);
                let pid = killed.take().expect("restart-worker after kill-worker");
                chatup.wait_worker_replaced(pid, 1);
            }
            other => panic!("unknown control request {other:?}"),
        }
        None
    });
    for page in ["alice", "bob"] {
        let shot = artifacts("browser").join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot at {}",
            shot.display()
        );
    }
}

/// The example page as `scripts/run` serves it (two nginx workers, the memory broker, the
/// default plugin chain), two windows on one room: "Who is here" and the counts follow joins
/// and leaves, join and leave lines have a time, a reload is neither a leave nor a join, the
/// rate limit is said once, and no request fails.
#[test]
fn two_example_pages_agree_on_who_is_here() {
    const LEAVE_GRACE_MS: u64 = 5000;
    let root = repo_root();
    let demo_key = root.join("nginx-conf/example-keys/jwt-private.pem");
    let chatup = Chatup::start_with(
        Options::default()
            .workers(2)
            .plugins(&["ban", "rate_limit", "blacklist"])
            // The sidecar's defaults, which the harness changes for other tests.
            .leave_grace_ms(LEAVE_GRACE_MS)
            .server(&example_locations(&root))
            .sidecar_set(&format!("demo.private_key_file={}", demo_key.display())),
    );
    let env = [
        ("CHATUP_URL", chatup.public_url()),
        ("CHATUP_LEAVE_GRACE_MS", LEAVE_GRACE_MS.to_string()),
    ];
    let shots = artifacts("browser");
    run_script_into("page", &shots, &env, |verb| {
        panic!("unknown control request {verb:?}")
    });
    for page in ["example-a", "example-b"] {
        let shot = shots.join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot at {}",
            shot.display()
        );
    }
    drop(chatup);
}

/// A room on two hosts behind a dispatcher; the page's host is killed and the page moves to
/// the other one.
#[test]
fn the_page_switches_host_when_its_host_dies() {
    let redis = RedisServer::start();
    let host = |address: &str, id: &str| {
        Chatup::start_with(Options::host_on_redis(address, id, &redis.url()))
    };
    let mut first = Some(host("127.0.0.2", "first"));
    let mut second = None;
    let dispatcher = Dispatcher::start_with(
        Options::default()
            .redis(&redis.url())
            .sidecar_set("dispatch.cors_origins=*")
            .sidecar_set("host.report_interval_ms=200"),
    );
    let env = [
        ("CHATUP_DISPATCHER_URL", dispatcher.url()),
        ("CHATUP_ADMIN_TOKEN", admin_token()),
    ];
    run_script("hosts", &env, |verb| {
        match verb {
            "start-second-host" => second = Some(host("127.0.0.3", "second")),
            "kill-first-host" => first.as_mut().expect("the first host").kill_host(),
            other => panic!("unknown control request {other:?}"),
        }
        None
    });
    drop(second);
}

/// A page on its own origin pointed at a dispatcher that does not allow that origin, at a
/// closed port, at a server that never answers, and at a host that cannot be reached: the
/// page says `reconnecting` and why, init() rejects with the cause, and the client keeps
/// trying (the dispatcher, once it allows the origin, gets the page connected).
#[test]
fn the_page_says_why_it_cannot_connect() {
    let redis = RedisServer::start();
    let _host = Chatup::start_with(Options::host_on_redis("127.0.0.2", "only", &redis.url()));
    let mut dispatcher = Dispatcher::start_with(
        Options::default()
            .redis(&redis.url())
            .sidecar_set("host.report_interval_ms=200"),
    );
    let env = [("CHATUP_DISPATCHER_URL", dispatcher.url())];
    run_script("failures", &env, |verb| {
        match verb.split_once(' ') {
            Some(("allow-origin", origin)) => {
                let config = dispatcher.path("chatup.toml");
                let mut toml = std::fs::read_to_string(&config).expect("read chatup.toml");
                toml.push_str(&format!("\n[dispatch]\ncors_origins = [{origin:?}]\n"));
                std::fs::write(&config, toml).expect("write chatup.toml");
                dispatcher.restart();
            }
            _ => panic!("unknown control request {verb:?}"),
        }
        None
    });
}

/// The example page without WebSocket chats over SSE, without WebSocket and EventSource over
/// long-poll, and neither loses nor repeats a message across an nginx reload.
#[test]
fn the_page_chats_without_websocket() {
    let root = repo_root();
    let demo_key = root.join("nginx-conf/example-keys/jwt-private.pem");
    let chatup = Chatup::start_with(
        Options::default()
            .workers(2)
            .server(&example_locations(&root))
            .sidecar_set(&format!("demo.private_key_file={}", demo_key.display())),
    );
    let env = [
        ("CHATUP_URL", chatup.public_url()),
        ("CHATUP_FEED_TOKEN", token("feeder")),
    ];
    run_script("transports", &env, |verb| {
        match verb {
            "reload" => {
                chatup.reload();
            }
            other => panic!("unknown control request {other:?}"),
        }
        None
    });
}

/// Direct messages on the example page: two users exchange one through their own private
/// channels; a third cannot watch either.
#[test]
fn the_page_exchanges_direct_messages() {
    let root = repo_root();
    let keys = root.join("nginx-conf/example-keys");
    let chatup = Chatup::start_with(
        Options::default()
            .workers(2)
            .server(&example_locations(&root))
            .private(&["user.{sub}"])
            .sidecar_set(&format!(
                "demo.private_key_file={}",
                keys.join("jwt-private.pem").display()
            ))
            .sidecar_set(&format!(
                "demo.subscribe_key_file={}",
                keys.join("subscribe-private.pem").display()
            )),
    );
    let env = [("CHATUP_URL", chatup.public_url())];
    run_script("direct", &env, |verb| {
        panic!("unknown control request {verb:?}")
    });
}
