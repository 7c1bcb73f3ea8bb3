//! [`RedisSentinel`]: a primary and its replica watched by three Redis Sentinels.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::resp::{command, Reply};
use super::server::RedisServer;
use super::{CLUSTER_TIMEOUT, READY_TIMEOUT, TEST_DOWN_AFTER};
use crate::env::free_port_on;
use crate::process::{wait_ready, ChildGuard};

/// The name the sentinels of [`RedisSentinel`] know the primary by.
pub const SENTINEL_MASTER: &str = "chatup";

/// A primary with one replica, watched by three Redis Sentinels (Debian's `redis-sentinel`)
/// with a quorum of two, all on 127.0.0.1.
pub struct RedisSentinel {
    /// Node 0 starts as the primary, node 1 as its replica.
    pub nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

/// One `redis-sentinel` process.
struct SentinelProcess {
    dir: tempfile::TempDir,
    port: u16,
    /// Held for its drop, which kills the sentinel.
    _process: ChildGuard,
}

impl RedisSentinel {
    /// Sentinels that declare the primary down after [`TEST_DOWN_AFTER`].
    pub fn start() -> Self {
        Self::start_with(TEST_DOWN_AFTER)
    }

    /// Sentinels that declare the primary down after `down_after` without an answer
    /// (`down-after-milliseconds`).
    pub fn start_with(down_after: Duration) -> Self {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        let sentinels = (0..3)
            .map(|_| SentinelProcess::start(&primary, down_after))
            .collect();
        let sentinel = Self {
            nodes: vec![primary, replica],
            sentinels,
        };
        // Every sentinel must know the replica and the other sentinels before a failover
        // can be agreed on.
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let ready = sentinel.sentinels.iter().all(|s| {
                let master = s.command(&["SENTINEL", "MASTER", SENTINEL_MASTER]);
                let fields = master.map(|r| r.strings()).unwrap_or_default();
                let field = |name: &str| {
                    fields
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| fields.get(i + 1))
                        .cloned()
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            });
            if ready {
                return sentinel;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find the replica and each other within {CLUSTER_TIMEOUT:?}:\n{}",
                sentinel.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:<port>` of each sentinel, for the sidecar's `redis.sentinels`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The index of the node the sentinels name as primary (all must agree), if any.
    pub fn primary_index(&self) -> Option<usize> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                let reply = s
                    .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
                    .ok()?;
                reply.strings().get(1)?.parse().ok()
            })
            .collect();
        let port = named.first().copied().flatten()?;
        if named.iter().any(|p| *p != Some(port)) {
            return None;
        }
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Waits until the sentinels agree on a primary other than node `old` and that node
    /// answers as a primary; returns its index.
    #[track_caller]
    pub fn wait_promoted(&self, old: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.primary_index() {
                if i != old && self.nodes[i].role().as_deref() == Some("master") {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica was promoted within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.sentinels {
            let _ = writeln!(
                out,
                "---- sentinel 127.0.0.1:{}:\n{}",
                s.port,
                fs::read_to_string(s.dir.path().join("sentinel.log")).unwrap_or_default()
            );
        }
        out
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

impl SentinelProcess {
    fn start(primary: &RedisServer, down_after: Duration) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chatup-sentinel-")
            .tempdir()
            .expect("create a temp folder");
        for _ in 0..5 {
            let port = free_port_on(Ipv4Addr::LOCALHOST);
            // Sentinel rewrites its config file, so each gets its own.
            let conf = dir.path().join("sentinel.conf");
            fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {SENTINEL_MASTER} {ip} {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} {down_after}\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir = dir.path().display(),
                    ip = primary.ip,
                    primary_port = primary.port,
                    down_after = down_after.as_millis(),
                ),
            )
            .expect("write sentinel.conf");
            let child = ChildGuard::spawn(
                Command::new("redis-sentinel")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .unwrap_or_else(|e| {
                panic!("spawn redis-sentinel (is Debian's redis-sentinel installed?): {e}")
            });
            let mut child = Some(child.kill_on_drop());
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = dir.path().join("sentinel.log");
            let started = wait_ready(
                &mut child,
                &format!("redis-sentinel on {addr}"),
                READY_TIMEOUT,
                || matches!(command(addr, &["PING"]), Ok(Reply::Status(s)) if s == "PONG"),
                || fs::read_to_string(&log).unwrap_or_default(),
            );
            if let (Ok(()), Some(process)) = (started, child) {
                return Self {
                    dir,
                    port,
                    _process: process,
                };
            }
        }
        panic!("redis-sentinel could not start on a free port in 5 tries");
    }

    fn command(&self, args: &[&str]) -> io::Result<Reply> {
        command(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)), args)
    }
}
