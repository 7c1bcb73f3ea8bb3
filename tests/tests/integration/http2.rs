//! SSE and long-poll are plain HTTP, unlike WebSocket: they work through `listen ... ssl` with
//! `http2 on`, here with curl as the client (a real HTTP/2 stack over TLS). Publishing goes
//! to the test's plain-HTTP server as usual.

use chatup_tests::{Chatup, Options};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// chatup with a second server for viewers, with TLS and HTTP/2; its address.
fn start_tls(dir: &Path) -> (Chatup, String) {
    start_tls_with(dir, Options::default())
}

/// [`start_tls`] with `opts`.
fn start_tls_with(dir: &Path, opts: Options) -> (Chatup, String) {
    let (cert, key) = chatup_tests::env::self_signed_certificate(dir);
    let (cert, key) = (cert.display(), key.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let env = Chatup::start_with(opts.http(&format!(
        "server {{\n    listen 127.0.0.1:{port} ssl;\n    http2 on;\n    \
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
         location /sub/ {{ chatup_subscribe; }}\n}}"
    )));
    (env, format!("127.0.0.1:{port}"))
}

/// curl over HTTP/2, its output line by line.
struct Curl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Curl {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-k", "--http2"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl runs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first that `pred` accepts.
    fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => {
                    let done = pred(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no {what} from curl; it printed {seen:#?}"),
            }
        }
    }

    /// Whether curl's output ended (the response ended) within the wait.
    fn ended(&self) -> bool {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sse_streams_over_http2_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (env, tls) = start_tls(dir.path());
    let ack = env.publish("h2", "before").await;
    let ep = ack["ep"].as_u64().unwrap();
    let url = format!("https://{tls}/sub/h2");
    let curl = Curl::spawn(&["-i", "-H", "Accept: text/event-stream", &url]);
    let head = curl.until("a status line", |l| l.starts_with("HTTP/"));
    assert_eq!(head.last().map(|l| l.trim_end()), Some("HTTP/2 200"));
    let replay = curl.until("the replay", |l| l.contains("\"before\""));
    assert!(replay.contains(&"retry: 2000".to_owned()), "{replay:#?}");
    assert!(replay.contains(&format!("id: h2:{ep}:1")), "{replay:#?}");
    env.publish("h2", "live over h2").await;
    let live = curl.until("the live message", |l| l.contains("live over h2"));
    assert!(live.contains(&format!("id: h2:{ep}:2")), "{live:#?}");

    // A reload ends the stream (END_STREAM after the close event), not the connection.
    env.reload();
    let close = curl.until("the close event", |l| l.starts_with("data: {\"code\""));
    assert!(close.contains(&"event: close".to_owned()), "{close:#?}");
    assert!(close.last().unwrap().contains("1001"));
    assert!(curl.ended(), "the response ends");
}

#[tokio::test]
async fn long_poll_answers_over_http2_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (env, tls) = start_tls(dir.path());
    let ack = env.publish("p2", "one").await;
    let ep = ack["ep"].as_u64().unwrap();
    let base = format!("https://{tls}/sub/p2?transport=poll");
    let now = Curl::spawn(&["-w", "\\n%{http_version}\\n", &base]);
    let lines = now.until("the version", |l| l == "2");
    let answer: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON answer");
    assert_eq!(answer["messages"][0]["msg"], "one");
    assert_eq!(answer["since"], format!("p2:{ep}:1"));

    // Held over HTTP/2 until a message comes.
    let held_url = format!("{base}&since=p2:{ep}:1");
    let held = Curl::spawn(&[&held_url]);
    std::thread::sleep(Duration::from_millis(300));
    env.publish("p2", "two").await;
    let lines = held.until("the held answer", |l| l.contains("\"messages\""));
    let answer: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(answer["messages"][0]["msg"], "two");
    assert_eq!(answer["since"], format!("p2:{ep}:2"));

    // A reload answers a held poll at once, and leaves no HTTP/2 connection behind.
    let again_url = format!("{base}&since=p2:{ep}:2");
    let again = Curl::spawn(&[&again_url]);
    std::thread::sleep(Duration::from_millis(300));
    env.reload();
    let lines = again.until("the answer at reload", |l| l.contains("\"messages\""));
    let answer: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(answer["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn private_channels_are_held_and_answered_over_http2() {
    use chatup_tests::token::subscribe_token;
    let dir = tempfile::tempdir().unwrap();
    let (env, tls) = start_tls_with(dir.path(), Options::default().private(&["members-*"]));
    env.publish("members-h2", "secret").await;
    let good = subscribe_token("alice", &["members-h2"], 600);
    let other = subscribe_token("alice", &["members-else"], 600);

    // Refused with the reason, over HTTP/2, nothing of the channel sent.
    let url = format!("https://{tls}/sub/members-h2?transport=poll&token={other}");
    let refused = Curl::spawn(&["-w", "\n%{http_code} %{http_version}\n", &url]);
    let lines = refused.until("the status", |l| l.ends_with(" 2"));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("403 2"),
        "{lines:#?}"
    );
    assert!(lines[0].starts_with("forbidden: "), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("secret")), "{lines:#?}");

    // Admitted: the stream, held until the sidecar's verdict, then as any other.
    let url = format!("https://{tls}/sub/members-h2?token={good}");
    let stream = Curl::spawn(&["-i", "-H", "Accept: text/event-stream", &url]);
    let head = stream.until("a status line", |l| l.starts_with("HTTP/"));
    assert_eq!(head.last().map(|l| l.trim_end()), Some("HTTP/2 200"));
    stream.until("the replay", |l| l.contains("\"secret\""));
    env.publish("members-h2", "live").await;
    stream.until("the live message", |l| l.contains("\"live\""));
    let url = format!("https://{tls}/sub/members-h2?transport=poll&token={good}");
    let poll = Curl::spawn(&[&url]);
    let lines = poll.until("the answer", |l| l.contains("\"messages\""));
    assert!(lines.last().unwrap().contains("\"secret\""), "{lines:#?}");
}
