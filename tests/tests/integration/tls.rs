//! `CHATUP_TLS=1 scripts/run`: nginx-conf/chatup-tls.conf with the self-signed certificate
//! the script makes. curl, trusting that certificate alone, subscribes over wss:// (HTTP/1.1)
//! and publishes over https:// (HTTP/2); the plain-HTTP port redirects to HTTPS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chatup_tests::process::terminate;
use chatup_tests::{build_dir, free_port, repo_root, token, ChildGuard};
use serde_json::Value;

/// How long scripts/run may take to start (it makes the certificate first).
const START: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

/// A running `CHATUP_TLS=1 scripts/run`, writing into a folder of its own (not build/run).
struct Run {
    script: Option<ChildGuard>,
    dir: tempfile::TempDir,
    /// HTTPS.
    port: u16,
    /// Plain HTTP, which redirects.
    http_port: u16,
}

impl Run {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chatup-tls-run-")
            .tempdir()
            .expect("create a temp folder");
        let (port, http_port, sidecar_port) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(repo_root().join("scripts/run"));
        // Only the variables this test sets reach the script (and through it the sidecar).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CHATUP_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("CHATUP_TLS", "1")
            .env("CHATUP_PORT", port.to_string())
            .env("CHATUP_HTTP_PORT", http_port.to_string())
            .env("CHATUP_SIDECAR_PORT", sidecar_port.to_string())
            .env("CHATUP_RUN_DIR", dir.path().join("run"))
            .env("CHATUP_BUILD_DIR", build_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"));
        let script = ChildGuard::spawn(&mut cmd).expect("run scripts/run");
        let mut run = Self {
            script: Some(script),
            dir,
            port,
            http_port,
        };
        let deadline = Instant::now() + START;
        // The last line it prints once nginx and the sidecar are ready.
        while !run.stdout().contains("/pub/lobby\n") {
            let script = run.script.as_mut().expect("running");
            if let Some(status) = script.exited() {
                panic!("scripts/run exited with {status}:\n{}", run.logs());
            }
            assert!(
                Instant::now() < deadline,
                "scripts/run not ready within {START:?}:\n{}",
                run.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        run
    }

    fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join(name)).unwrap_or_default())
            .into_owned()
    }

    fn stdout(&self) -> String {
        self.read("stdout")
    }

    fn logs(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}\nnginx error.log:\n{}",
            self.stdout(),
            self.read("stderr"),
            self.read("run/logs/error.log")
        )
    }

    /// The certificate the script made, which the clients trust.
    fn cert(&self) -> PathBuf {
        self.dir.path().join("run/tls/cert.pem")
    }

    fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// curl trusting the script's certificate alone (no system store, no -k).
    fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--capath",
            "/nonexistent",
            "--cacert",
        ])
        .arg(self.cert())
        .stdin(Stdio::null());
        cmd
    }

    /// SIGTERM to the script, which stops nginx and the sidecar; their ports close.
    fn stop(mut self) {
        let script = self.script.take().expect("running");
        terminate(script, "scripts/run");
        assert!(
            self.read("stderr").contains("run: stopped"),
            "{}",
            self.logs()
        );
        for port in [self.port, self.http_port] {
            assert!(
                TcpStream::connect(("127.0.0.1", port)).is_err(),
                "127.0.0.1:{port} still answers after scripts/run stopped"
            );
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("curl runs")
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text frames a WebSocket server sent (unmasked, unfragmented, as the module sends
/// them), from the raw bytes after the 101 response's head.
fn text_frames(mut bytes: &[u8]) -> Vec<String> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        let Some(payload) = bytes.get(head..head + len) else {
            break;
        };
        if bytes[0] == 0x81 {
            frames.push(String::from_utf8_lossy(payload).into_owned());
        }
        bytes = &bytes[head + len..];
    }
    frames
}

/// Waits until the subscriber's output (`file`) holds a text frame, and returns the first.
fn first_text_frame(file: &Path, run: &Run) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = std::fs::read(file).unwrap_or_default();
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            if let Some(frame) = text_frames(&raw[end + 4..]).into_iter().next() {
                return (head, frame);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no message reached the wss:// subscriber within {WAIT:?}; it received {:?}\n{}",
            String::from_utf8_lossy(&raw),
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scripts_run_with_tls_serves_wss_https_over_http2_and_redirects_plain_http() {
    let run = Run::start();
    let printed = run.stdout();
    let cert = run.cert();
    for needle in [
        format!("wss://127.0.0.1:{}/sub/", run.port),
        format!("POST https://127.0.0.1:{}/pub/", run.port),
        format!("--cacert {}", cert.display()),
        format!("http://127.0.0.1:{}/", run.http_port),
    ] {
        assert!(
            printed.contains(&needle),
            "scripts/run does not print {needle}:\n{printed}"
        );
    }

    // A WebSocket over TLS: curl speaks HTTP/1.1 for the upgrade, prints the raw frames.
    let channel = "tls-lobby";
    let frames = run.dir.path().join("subscriber.out");
    let subscriber = ChildGuard::spawn(
        run.curl()
            .args(["--max-time", "30", "--http1.1", "--include", "--no-buffer"])
            .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
            .args(["-H", "Sec-WebSocket-Version: 13"])
            .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
            .arg("--output")
            .arg(&frames)
            .arg(run.https(&format!("/sub/{channel}"))),
    )
    .expect("run curl")
    .kill_on_drop();

    // The publish, over HTTP/2.
    let text = format!("over TLS {}", std::process::id());
    let token = token::token("alice");
    let published = output(
        run.curl()
            .args(["--http2", "-w", "\n%{http_version}"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--data", &text])
            .arg(run.https(&format!("/pub/{channel}"))),
    );
    let answer = stdout_of(&published);
    assert!(
        published.status.success(),
        "the https:// publish failed: {answer}{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let (body, version) = answer
        .rsplit_once('\n')
        .expect("the body, then the version");
    assert_eq!(
        version, "2",
        "the publish did not negotiate HTTP/2: {answer}"
    );
    let ack: Value = serde_json::from_str(body).expect("the publish answers JSON");
    assert_eq!(
        (&ack["ch"], &ack["id"]),
        (&Value::from(channel), &Value::from(1)),
        "{ack}"
    );

    // The subscriber receives exactly that message (live, or replayed when its upgrade came
    // after the publish).
    let (head, frame) = first_text_frame(&frames, &run);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let message: Value = serde_json::from_str(&frame).expect("a message is JSON");
    assert_eq!(message["ch"], channel, "{message}");
    assert_eq!(message["id"], 1, "{message}");
    assert_eq!(message["ep"], ack["ep"], "{message}");
    assert_eq!(message["msg"], text.as_str(), "{message}");
    assert_eq!(message["user"]["name"], "alice", "{message}");
    drop(subscriber);

    // Nothing else is trusted: without the certificate, curl refuses the server's.
    let untrusted = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
            .arg(run.https("/health")),
    );
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl should fail to verify a self-signed certificate: {}",
        String::from_utf8_lossy(&untrusted.stderr)
    );

    // The plain port answers 301 to the same path and query on the HTTPS port.
    let redirect = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{redirect_url}"])
            .arg(format!(
                "http://127.0.0.1:{}/sub/{channel}?transport=poll",
                run.http_port
            )),
    );
    assert_eq!(
        stdout_of(&redirect),
        format!(
            "301 {}",
            run.https(&format!("/sub/{channel}?transport=poll"))
        )
    );

    run.stop();
}
