//! [`Dispatcher`]: a sidecar with only the dispatcher role, for tests with several hosts.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::options::Options;
use super::paths::example_keys;
use super::ports::free_port_on;
use super::sidecar::{http_status, spawn_sidecar};
use super::READY_TIMEOUT;
use crate::http::{build_request, HttpResponse};
use crate::process::{terminate, wait_ready, ChildGuard};

/// A sidecar with only the dispatcher role (`roles.chat_host = false`, `roles.dispatcher =
/// true`): what a deployment runs behind its load balancer to send clients to chat hosts.
/// It finds the hosts through Redis, so it needs [`Options::redis`] or
/// [`Options::redis_cluster`]; of the rest of [`Options`] only `address` and `sidecar_set`
/// apply. It has no relay socket (no nginx workers) and serves `POST /join/<channel>`.
///
/// Like [`Chatup`], it lives in its own temp folder, prints its log when the test fails,
/// fails the test if it panicked, and is stopped on drop.
pub struct Dispatcher {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    opts: Options,
    child: Option<ChildGuard>,
}

impl Dispatcher {
    /// A dispatcher on a free port of 127.0.0.1 using the Redis at `redis_url`.
    pub fn start(redis_url: &str) -> Self {
        Self::start_with(Options::default().redis(redis_url))
    }

    /// A dispatcher on a free port of 127.0.0.1 using the Redis Cluster seeded by `nodes`.
    pub fn start_cluster(nodes: &[String]) -> Self {
        Self::start_with(Options::default().redis_cluster(nodes))
    }

    pub fn start_with(opts: Options) -> Self {
        assert!(
            !opts.redis_url.is_empty() || !opts.redis_cluster.is_empty(),
            "a dispatcher finds the chat hosts through Redis: give it Options::redis or \
             Options::redis_cluster"
        );
        let dir = tempfile::Builder::new()
            .prefix("chatup-dispatcher-")
            .tempdir()
            .expect("create a temp folder");
        let addr = SocketAddr::from((opts.address, free_port_on(opts.address)));
        let mut d = Self {
            dir,
            addr,
            opts,
            child: None,
        };
        let keys = example_keys();
        // The relay socket is unused without the worker role, but kept in the temp folder so
        // a sidecar that opened it anyway could not touch the system default path.
        let config = format!(
            "[relay]\nsocket = {socket:?}\n\n\
             [http]\nlisten = \"{addr}\"\n\n\
             [auth]\npublic_key_file = {key:?}\nalgorithms = [\"RS256\"]\nleeway_seconds = 5\n\n\
             [admin]\npublic_key_file = {admin_key:?}\n\n\
             {redis}\n\
             [roles]\nchat_host = false\ndispatcher = true\n\n\
             [log]\nlevel = \"debug\"\nformat = \"text\"\n",
            socket = d.path("relay.sock").display().to_string(),
            key = keys.join("jwt-public.pem").display().to_string(),
            admin_key = keys.join("admin-public.pem").display().to_string(),
            redis = d.opts.redis_toml(),
        );
        fs::write(d.path("chatup.toml"), config).expect("write chatup.toml");
        d.start_again();
        d
    }

    /// A path inside this dispatcher's temp folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where it listens for HTTP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::running)
    }

    /// Starts the process (again, after [`stop`](Self::stop) or [`kill`](Self::kill)) on the
    /// same address with the same configuration, and waits until it answers HTTP. Any answer
    /// to `GET /health` counts: whether a dispatcher that sees no hosts calls itself healthy
    /// is for the tests of the dispatcher to check, not for the harness to presume.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the dispatcher is already running");
        self.child = Some(spawn_sidecar(
            &self.path("chatup.toml"),
            &self.opts.sidecar_set,
            &self.path("sidecar.log"),
        ));
        let addr = self.addr;
        let log = self.path("sidecar.log");
        let started = wait_ready(
            &mut self.child,
            "the dispatcher",
            READY_TIMEOUT,
            || http_status(addr, "/health").is_some(),
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        if let Err(status) = started {
            panic!("the dispatcher exited at start ({status}):\n{}", self.log());
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("the dispatcher is not running");
        terminate(child, "the dispatcher")
    }

    /// [`stop`](Self::stop) (which must succeed), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "the dispatcher exited with {status} on SIGTERM"
        );
        self.start_again();
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let child = self.child.take().expect("the dispatcher is not running");
        child.kill();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("sidecar.log")).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `POST /join/<ch>`, with `body` as JSON (e.g. naming a failed host) or no body.
    pub async fn join(&self, ch: &str, body: Option<&serde_json::Value>) -> HttpResponse {
        let path = format!("/join/{ch}");
        let request = match body {
            Some(body) => build_request(
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                Some(body.to_string().as_bytes()),
            ),
            None => build_request("POST", &path, &[], Some(b"")),
        };
        crate::http::request(self.addr, &request, crate::WAIT).await
    }

    /// Any request to the dispatcher: `method path` with `headers` and an optional body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        crate::http::request(
            self.addr,
            &build_request(method, path, headers, body),
            crate::WAIT,
        )
        .await
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Stopped (SIGTERM, then SIGKILL if it lingers) before its log is read.
        self.child = None;
        let panics: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect();
        let failed = std::thread::panicking();
        if failed || !panics.is_empty() {
            let text = self.log();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(300);
            eprintln!(
                "---- dispatcher {} log, in {} ({} lines{}):\n{}",
                self.addr,
                self.dir.path().display(),
                lines.len(),
                if skip > 0 { ", last 300" } else { "" },
                lines[skip..].join("\n")
            );
        }
        if !failed && !panics.is_empty() {
            panic!("the dispatcher panicked: {panics:#?}");
        }
        if std::env::var_os("CHATUP_KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("create a temp folder"),
            );
            eprintln!("kept {}", dir.keep().display());
        }
    }
}
