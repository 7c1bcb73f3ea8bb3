//! [`RedisServer`]: one `redis-server` process (alone, a replica, or a cluster node).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::resp::{command, info_field, Reply};
use super::{READY_TIMEOUT, REBIND_TIMEOUT};
use crate::env::free_port_on;
use crate::env::ports::parse_loopback;
use crate::process::{signal_pid, wait_ready, ChildGuard, STOP_TIMEOUT};

/// A [`RedisServer::freeze`] in force; it ends with [`thaw`](Self::thaw) or on drop, so a
/// failing test never leaves a stopped server behind.
#[derive(Debug)]
pub struct Frozen {
    /// The stopped server's pid, until it is continued.
    pid: Option<u32>,
}

impl Frozen {
    /// Lets the server run again (SIGCONT).
    pub fn thaw(mut self) {
        self.continue_server();
    }

    fn continue_server(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal_pid(pid, libc::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.continue_server();
    }
}

/// A `redis-server` process on a loopback address, in a temp folder, without persistence.
pub struct RedisServer {
    /// Owns the folder when the server is alone; a cluster node lives in its cluster's.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    pub(super) ip: Ipv4Addr,
    pub(super) port: u16,
    /// The cluster bus port (`cluster-port`), for cluster nodes.
    pub(super) bus_port: Option<u16>,
    /// Arguments beyond the common ones (cluster settings).
    extra: Vec<String>,
    /// `None` while stopped or killed.
    pub(super) child: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Starts a server on a free port of the loopback address `ip` (e.g. "127.0.0.5").
    pub fn start_on(ip: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("chatup-redis-")
            .tempdir()
            .expect("create a temp folder");
        let dir = tmp.path().to_path_buf();
        Self::launch(Some(tmp), dir, parse_loopback(ip), None, Vec::new())
    }

    /// Starts a replica of `primary` on a free port of 127.0.0.1 and waits until its link to
    /// the primary is up.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("chatup-redis-replica-")
            .tempdir()
            .expect("create a temp folder");
        let dir = tmp.path().to_path_buf();
        let extra = vec![
            "--replicaof".to_owned(),
            primary.ip.to_string(),
            primary.port.to_string(),
        ];
        let replica = Self::launch(Some(tmp), dir, Ipv4Addr::LOCALHOST, None, extra);
        let deadline = Instant::now() + READY_TIMEOUT;
        while info_field(&replica.cli(&["INFO", "replication"]), "master_link_status").as_deref()
            != Some("up")
        {
            assert!(
                Instant::now() < deadline,
                "replica {} did not sync with {} within {READY_TIMEOUT:?}",
                replica.addr(),
                primary.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// The role the server reports (`master`, `slave`).
    pub fn role(&self) -> Option<String> {
        let info = self.command(&["INFO", "replication"]).ok()?.text();
        info_field(&info, "role")
    }

    /// Starts a cluster-enabled node (no slots yet) in `dir`; it deems a silent node
    /// failed after `node_timeout`.
    pub(super) fn start_cluster_node(dir: PathBuf, node_timeout: Duration) -> Self {
        fs::create_dir_all(&dir).expect("create the node's folder");
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
        ]
        .map(String::from)
        .into_iter()
        .chain([node_timeout.as_millis().to_string()])
        .collect();
        let ip = Ipv4Addr::LOCALHOST;
        Self::launch(None, dir, ip, Some(free_port_on(ip)), extra)
    }

    fn launch(
        tmp: Option<tempfile::TempDir>,
        dir: PathBuf,
        ip: Ipv4Addr,
        bus_port: Option<u16>,
        extra: Vec<String>,
    ) -> Self {
        let mut server = Self {
            tmp,
            dir,
            ip,
            port: free_port_on(ip),
            bus_port,
            extra,
            child: None,
        };
        // Another process may take the port between the check and redis-server's bind: then
        // try other ports instead of failing the test.
        for _ in 0..5 {
            if server.spawn_and_wait() {
                return server;
            }
            server.port = free_port_on(ip);
            if server.bus_port.is_some() {
                server.bus_port = Some(free_port_on(ip));
            }
        }
        panic!(
            "redis-server could not bind a free port in 5 tries:\n{}",
            server.log()
        );
    }

    /// Spawns redis-server and waits until it answers PING. Returns false if it exited because
    /// its port was taken; panics on any other failure.
    fn spawn_and_wait(&mut self) -> bool {
        assert!(self.child.is_none(), "redis-server is already running");
        let log_start = fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.stdout"))
            .expect("open redis.stdout");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg(self.ip.to_string())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path());
        if let Some(bus) = self.bus_port {
            cmd.arg("--cluster-port").arg(bus.to_string());
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed and on PATH?): {e}"));
        // No persistence: nothing is lost by killing it.
        self.child = Some(child.kill_on_drop());
        let (addr, log) = (self.addr(), self.log_path());
        let started = wait_ready(
            &mut self.child,
            &format!("redis-server on {addr}"),
            READY_TIMEOUT,
            || matches!(command(addr, &["PING"]), Ok(Reply::Status(s)) if s == "PONG"),
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        match started {
            Ok(()) => true,
            Err(status) => {
                let log = self.log();
                let this_run = log.get(log_start as usize..).unwrap_or(&log);
                if this_run.contains("Address already in use") {
                    return false;
                }
                panic!(
                    "redis-server exited at start ({status}):\n{}\n{log}",
                    fs::read_to_string(self.dir.join("redis.stdout")).unwrap_or_default()
                );
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://<ip>:<port>`, the form the sidecar's `redis.url` takes.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.ip, self.port)
    }

    /// The folder holding the log (and, for a cluster node, `nodes.conf`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::running)
    }

    /// Sends one command (see [`command`]).
    pub fn command(&self, args: &[&str]) -> io::Result<Reply> {
        command(self.addr(), args)
    }

    /// Runs one command and returns its reply as text ([`Reply::text`]; an error reply is its
    /// message). Panics when the server cannot be reached.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        match self.command(args) {
            Ok(reply) => reply.text(),
            Err(e) => panic!("redis {args:?} on {}: {e}\n{}", self.addr(), self.log()),
        }
    }

    /// The keys matching `pattern`, sorted.
    #[track_caller]
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self
            .command(&["KEYS", pattern])
            .unwrap_or_else(|e| panic!("redis KEYS on {}: {e}", self.addr()));
        let mut keys = reply.strings();
        keys.sort();
        keys
    }

    /// Sends SIGTERM and waits for the exit; kills the server if it takes longer than
    /// `STOP_TIMEOUT`. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("redis-server is not running");
        child.terminate(STOP_TIMEOUT).unwrap_or_else(|killed| {
            eprintln!(
                "redis-server on {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed",
                self.addr()
            );
            killed
        })
    }

    /// Freezes the server with SIGSTOP until the returned guard thaws it (SIGCONT), or is
    /// dropped: its connections stay open and commands wait in them unanswered, as with a
    /// server stalled by a slow command or a paused VM. They all run once it thaws.
    pub fn freeze(&self) -> Frozen {
        let pid = self.pid().expect("redis-server is not running");
        signal_pid(pid, libc::SIGSTOP);
        Frozen { pid: Some(pid) }
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed, clients see resets).
    pub fn kill(&mut self) {
        let child = self.child.take().expect("redis-server is not running");
        child.kill();
    }

    /// Starts the server again on the same address and port with the same options (after
    /// [`stop`](Self::stop) or [`kill`](Self::kill)). Without persistence it comes back empty;
    /// a cluster node keeps its `nodes.conf`, so it rejoins its cluster. Keeps trying for
    /// a while if the port is not free yet.
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        while !self.spawn_and_wait() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind {} again within {REBIND_TIMEOUT:?}:\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log (every run of it, appended).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn dump_log(&self) {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(100);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "---- redis-server {} log ({} lines{}), in {}:",
            self.addr(),
            lines.len(),
            if skip > 0 { ", last 100" } else { "" },
            self.dir.display()
        );
        for line in &lines[skip..] {
            let _ = writeln!(out, "{line}");
        }
        eprintln!("{out}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.child = None;
        if std::thread::panicking() {
            self.dump_log();
        }
        if let Some(tmp) = self.tmp.take() {
            if std::env::var_os("CHATUP_KEEP_TEST_DIRS").is_some() {
                eprintln!("kept {}", tmp.keep().display());
            }
        }
    }
}
