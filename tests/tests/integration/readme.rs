//! Every curl example of the README, run exactly as written (from the repository root, with
//! `CHATUP` pointing at a running chatup), one command at a time, in README order.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatup_tests::env::repo_root;
use chatup_tests::{Chatup, Options, Subscriber, WAIT};
use serde_json::{json, Value};

/// The ```sh blocks of README.md that run curl, in order.
fn curl_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .filter(|b| b.contains("curl "))
        .map(str::to_owned)
        .collect()
}

/// A block's variable assignments (`NAME=...` lines, which every command needs) and its
/// commands, each with its continuation lines joined; comments dropped.
fn split(block: &str) -> (String, Vec<String>) {
    let mut prelude = String::new();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if current.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let assignment = trimmed
                .split_once('=')
                .is_some_and(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            if assignment {
                prelude.push_str(line);
                prelude.push('\n');
                continue;
            }
        }
        current.push_str(line);
        current.push('\n');
        if !trimmed.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.is_empty(),
        "the block ends inside a command: {current}"
    );
    (prelude, commands)
}

fn bash(chatup: &Chatup, prelude: &str, command: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{prelude}\n{command}"))
        .current_dir(repo_root())
        .env("CHATUP", chatup.public_url());
    cmd
}

fn run(chatup: &Chatup, prelude: &str, command: &str) -> String {
    let out = bash(chatup, prelude, command).output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}exited with {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.trim().is_empty(), "{command}printed nothing");
    if let Ok(json) = serde_json::from_str::<Value>(&stdout) {
        assert!(json.get("error").is_none(), "{command}answered {stdout}");
    }
    stdout
}

/// A command that does not end by itself (a subscriber), run in the background with its
/// output going to `out`.
fn spawn(chatup: &Chatup, prelude: &str, command: &str, out: &Path) -> Child {
    let file = std::fs::File::create(out).expect("create the output file");
    bash(chatup, prelude, command)
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("run bash")
}

/// Waits until the background command's output holds `needle` (or `WAIT` passed), stops
/// it and returns what it printed.
async fn stop_after(mut child: Child, out: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut printed = String::new();
    while Instant::now() < deadline {
        printed = String::from_utf8_lossy(&std::fs::read(out).unwrap_or_default()).into_owned();
        if printed.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    printed
}

#[tokio::test]
async fn the_curl_examples_of_the_readme_run_as_written() {
    // The plugins of a default configuration, and the private channels, as scripts/run has
    // them.
    let chatup = Chatup::start_with(
        Options::default()
            .plugins(&["ban", "rate_limit", "blacklist"])
            .private(&["user.{sub}", "members-*"]),
    );
    let blocks = curl_blocks();
    assert_eq!(
        blocks.len(),
        6,
        "first publish, SSE, long-poll, private channels, /join, admin: {blocks:#?}"
    );

    // A first publish and subscribe: the curl subscriber sees what the curl publisher sent.
    let (prelude, commands) = split(&blocks[0]);
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(
        commands[0].contains("Upgrade: websocket"),
        "{}",
        commands[0]
    );
    // Frames are binary to curl, which refuses to print them to a terminal without it.
    assert!(
        commands[0].contains("--output -"),
        "the subscribe example needs --output -: {}",
        commands[0]
    );
    let frames_file = chatup.path("curl-subscriber.out");
    let subscriber = spawn(&chatup, &prelude, &commands[0], &frames_file);
    let mut viewer = Subscriber::connect(&chatup, "/sub/lobby").await;
    let accepted = run(&chatup, &prelude, &commands[1]);
    assert_eq!(serde_json::from_str::<Value>(&accepted).unwrap()["id"], 1);
    assert_eq!(viewer.recv().await["msg"], "hello, lobby");
    // The curl subscriber shows the same message in its raw frames (live, or replayed from
    // the cache when its upgrade came after the publish).
    let needle = "\"msg\":\"hello, lobby\"";
    let frames = stop_after(subscriber, &frames_file, needle).await;
    assert!(frames.contains(needle), "{frames:?}");

    // The same message over SSE (replayed from the cache), with its resumable id.
    let (prelude, commands) = split(&blocks[1]);
    assert_eq!(commands.len(), 1, "{commands:?}");
    let events_file = chatup.path("curl-sse.out");
    let stream = spawn(&chatup, &prelude, &commands[0], &events_file);
    let events = stop_after(stream, &events_file, needle).await;
    assert!(events.starts_with("retry: 2000\n"), "{events:?}");
    assert!(events.contains("\nid: lobby:"), "{events:?}");
    assert!(events.contains(needle), "{events:?}");

    // And by long-poll: at once from the cache; the second example's since names an epoch
    // that is not this run's, so it is answered at once too, with a resync first.
    let (prelude, commands) = split(&blocks[2]);
    assert_eq!(commands.len(), 2, "{commands:?}");
    let polled: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[0])).unwrap();
    assert_eq!(polled["messages"][0]["msg"], "hello, lobby", "{polled}");
    assert!(
        polled["since"]
            .as_str()
            .is_some_and(|s| s.starts_with("lobby:")),
        "{polled}"
    );
    let again: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[1])).unwrap();
    assert_eq!(again["messages"][0]["ev"], "resync", "{again}");

    // Private channels: refused without the subscribe token, answered with it.
    let (prelude, commands) = split(&blocks[3]);
    assert!(prelude.contains("SUBTOKEN="), "{prelude}");
    assert_eq!(commands.len(), 2, "{commands:?}");
    let refused = run(&chatup, &prelude, &commands[0]);
    assert!(
        refused.starts_with("token_required: channel \"user.alice\" is private"),
        "{refused}"
    );
    let admitted: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[1]))
        .unwrap_or_else(|e| panic!("the admitted poll answers JSON ({e})"));
    assert_eq!(admitted["messages"], json!([]), "{admitted}");
    assert!(
        admitted["since"]
            .as_str()
            .is_some_and(|s| s.starts_with("user.alice:") && s.contains(",members-club:")),
        "{admitted}"
    );

    // Choosing a host.
    let (prelude, commands) = split(&blocks[4]);
    assert_eq!(commands.len(), 3, "{commands:?}");
    let joined: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[0])).unwrap();
    assert_eq!(joined["channel"], "lobby", "{joined}");
    assert_eq!(joined["history"][0]["msg"], "hello, lobby", "{joined}");
    // The channel's counts and users.
    let counts: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[1])).unwrap();
    assert_eq!(counts["channel"], "lobby", "{counts}");
    assert!(counts["subCount"].as_u64().is_some(), "{counts}");
    let users: Value = serde_json::from_str(&run(&chatup, &prelude, &commands[2])).unwrap();
    assert_eq!(
        (&users["channel"], &users["limit"]),
        (&Value::from("lobby"), &Value::from(10)),
        "{users}"
    );

    // The admin API.
    let (prelude, commands) = split(&blocks[5]);
    assert!(prelude.contains("ADMIN="), "{prelude}");
    assert!(commands.len() >= 6, "{commands:?}");
    let mut outputs = Vec::new();
    for command in &commands {
        outputs.push(run(&chatup, &prelude, command));
    }
    let output_of = |path: &str| {
        outputs
            .iter()
            .zip(&commands)
            .find(|(_, c)| c.contains(path))
            .map(|(o, _)| o.as_str())
            .unwrap_or_else(|| panic!("the admin block calls {path}"))
    };
    // What the posts and bans published reached the channel's viewers.
    let heard = viewer.recv_n(5).await;
    let texts: Vec<&str> = heard
        .iter()
        .map(|m| m["msg"].as_str().or(m["ev"].as_str()).unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        [
            "hello",
            "notice",
            "from the backend",
            "rmUserMsg",
            "rmUserMsg"
        ]
    );
    assert_eq!(
        (&heard[3]["data"], &heard[3]["by"]),
        (&json!("user-42"), &json!("user"))
    );
    // The original format bans by public name.
    assert_eq!(
        (&heard[4]["data"], &heard[4]["by"]),
        (&json!("Zoe"), &json!("name"))
    );
    let removed: Value = serde_json::from_str(output_of("/users/")).expect("/users is JSON");
    assert_eq!(removed["disconnected"], "user-42", "{removed}");
    let health: Value = serde_json::from_str(output_of("/health")).expect("/health is JSON");
    assert_eq!(health["status"], "ok");
    // hello, notice (to two channels), from the backend.
    let admin_posts = output_of("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("chatup_messages_published_total{kind=\"admin\"} "));
    assert_eq!(admin_posts, Some("4"));
}
