//! The README's admin examples, run exactly as written (from the repository root, with
//! `CHATUP` pointing at a running chatup), one command at a time.

use std::process::Command;

use chatup_tests::env::repo_root;
use chatup_tests::{Chatup, Options, Subscriber};
use serde_json::Value;

/// The first ```sh block of README.md whose first line starts with `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let mut blocks = readme.split("```sh\n").skip(1);
    blocks
        .find(|b| b.starts_with(first_line))
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("README.md has no ```sh block starting with {first_line:?}"))
        .to_owned()
}

/// The block's variable lines (up to the first blank line) and its commands, each with
/// its continuation lines joined; comments dropped.
fn split(block: &str) -> (String, Vec<String>) {
    let (prelude, rest) = block
        .split_once("\n\n")
        .expect("a blank line after the variables");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in rest.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
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
    (prelude.to_owned(), commands)
}

fn run(chatup: &Chatup, prelude: &str, command: &str) -> String {
    let script = format!("set -euo pipefail\n{prelude}\n{command}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo_root())
        .env("CHATUP", chatup.public_url())
        .output()
        .expect("run bash");
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

#[tokio::test]
async fn the_admin_examples_of_the_readme_run_as_written() {
    // The plugins of a default configuration, as scripts/run has them.
    let chatup =
        Chatup::start_with(Options::default().plugins(&["ban", "rate_limit", "blacklist"]));
    let mut lobby = Subscriber::connect(&chatup, "/sub/lobby").await;
    let (prelude, commands) = split(&readme_block("CHATUP=${CHATUP:-"));
    assert!(commands.len() >= 6, "{commands:?}");
    let mut outputs = Vec::new();
    for command in &commands {
        outputs.push(run(&chatup, &prelude, command));
    }
    // What the posts published reached the channel's viewers.
    let texts: Vec<String> = lobby
        .recv_n(3)
        .await
        .iter()
        .map(|m| {
            m["msg"]
                .as_str()
                .or(m["ev"].as_str())
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["hello", "notice", "from the backend"]);
    let health = outputs
        .iter()
        .zip(&commands)
        .find(|(_, c)| c.contains("/health"))
        .map(|(o, _)| serde_json::from_str::<Value>(o).expect("/health answers JSON"))
        .expect("the block checks /health");
    assert_eq!(health["status"], "ok");
}
