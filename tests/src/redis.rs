//! Real Redis for multi-host tests: one server ([`RedisServer`]) or a cluster of masters
//! ([`RedisCluster`]), each node a `redis-server` from `PATH` in its own temp folder, on free
//! loopback ports, without persistence (a restart loses every key, as a crashed cache would).
//!
//! Tests check what the sidecar left in Redis with [`RedisServer::cli`] and friends, which
//! speak RESP over a plain `TcpStream` ([`command`]): no Redis client crate, and blocking
//! calls that take a millisecond, so they are fine inside async tests too.
//!
//! Every wait is bounded; the server's log is printed when a test fails; dropping a server
//! kills it.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::env::{free_port_on, kill_group, parse_loopback, signal_pid, wait_ready, wait_timeout};

/// How long a Redis server may take to answer PING after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart keeps retrying while its old port is still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to agree that every slot is served.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one command's connect, write and read.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The cluster nodes' `cluster-node-timeout` in tests: short, so a failover happens within a
/// test's patience (Redis's default is 15 s).
pub const TEST_NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The sentinels' `down-after-milliseconds` in tests (Debian's sentinel.conf has 30 s).
pub const TEST_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

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

// ---- RESP ---------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …` (the text without the `-`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…`; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` is the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as `redis-cli --raw` prints it: strings and numbers as they are, errors as
    /// their message, nil as the empty string, arrays one element a line.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join("\n")
            }
        }
    }

    /// The elements of an array reply as text (one element for any other reply, none for nil).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect(),
            Reply::Array(None) | Reply::Bulk(None) => Vec::new(),
            other => vec![other.text()],
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Sends one command to the Redis at `addr` on a new connection and reads its reply. An error
/// reply is `Ok(Reply::Error)`; `Err` means the server could not be reached or spoke
/// something other than RESP.
pub fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        req.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        req.extend_from_slice(arg.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req)?;
    read_reply(&mut BufReader::new(stream))
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "reply line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    let Some((&kind, rest)) = line.split_first() else {
        return Err(bad("empty reply line".into()));
    };
    let rest = String::from_utf8_lossy(rest).into_owned();
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| bad(format!("not a number in a reply: {s:?}")))
    };
    match kind {
        b'+' => Ok(Reply::Status(rest)),
        b'-' => Ok(Reply::Error(rest)),
        b':' => Ok(Reply::Int(number(&rest)?)),
        b'$' => {
            let Ok(len) = usize::try_from(number(&rest)?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let Ok(len) = usize::try_from(number(&rest)?) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(bad(format!(
            "unknown reply type {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(&line)
        ))),
    }
}

/// The value of `field` in an INFO-style reply (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|v| v.strip_prefix(':'))
            .map(str::to_owned)
    })
}

// ---- one server ---------------------------------------------------------------------------

/// A `redis-server` process on a loopback address, in a temp folder, without persistence.
pub struct RedisServer {
    /// Owns the folder when the server is alone; a cluster node lives in its cluster's.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    ip: Ipv4Addr,
    port: u16,
    /// The cluster bus port (`cluster-port`), for cluster nodes.
    bus_port: Option<u16>,
    /// Arguments beyond the common ones (cluster settings).
    extra: Vec<String>,
    child: Option<Child>,
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
    fn start_cluster_node(dir: PathBuf, node_timeout: Duration) -> Self {
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
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed and on PATH?): {e}"));
        self.child = Some(child);
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
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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
        let mut child = self.child.take().expect("redis-server is not running");
        signal_pid(child.id(), libc::SIGTERM);
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                eprintln!(
                    "redis-server on {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed",
                    self.addr()
                );
                kill_group(child.id());
                child.wait().expect("wait for redis-server")
            }
        }
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
        let mut child = self.child.take().expect("redis-server is not running");
        kill_group(child.id());
        let _ = child.wait();
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
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.wait();
        }
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

// ---- cluster --------------------------------------------------------------------------------

/// A Redis Cluster on 127.0.0.1: masters with the slots split evenly, and optionally
/// replicas that take over when their master fails.
pub struct RedisCluster {
    // Declared before `dir` so the nodes are killed before their folder is removed.
    nodes: Vec<RedisServer>,
    dir: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts three masters and forms a cluster of them.
    pub fn start() -> Self {
        Self::start_masters(3)
    }

    /// Starts `n` masters and forms a cluster of them: each node gets an even share of the
    /// slots and its own config epoch, node 0 meets the others, then every node must see
    /// `cluster_state:ok` (bounded).
    pub fn start_masters(n: usize) -> Self {
        Self::start_with_replicas(n, 0)
    }

    /// Starts `masters` masters and `replicas` replicas of each (nodes `masters..` are the
    /// replicas, node `masters + r * masters + i` a replica of master `i`), forms the
    /// cluster and waits until every replica's link to its master is up (bounded).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, TEST_NODE_TIMEOUT)
    }

    /// [`start_with_replicas`](Self::start_with_replicas) with the nodes'
    /// `cluster-node-timeout` (how long a master is silent before its replica takes over).
    pub fn start_with(masters: usize, replicas: usize, node_timeout: Duration) -> Self {
        let n = masters;
        assert!(n >= 1, "a cluster needs at least one master");
        let dir = tempfile::Builder::new()
            .prefix("chatup-redis-cluster-")
            .tempdir()
            .expect("create a temp folder");
        let nodes: Vec<RedisServer> = (0..n * (1 + replicas))
            .map(|i| {
                RedisServer::start_cluster_node(dir.path().join(format!("node{i}")), node_timeout)
            })
            .collect();
        let cluster = Self {
            nodes,
            dir: Some(dir),
        };
        for (i, node) in cluster.nodes[..n].iter().enumerate() {
            let first = i * usize::from(SLOTS) / n;
            let last = (i + 1) * usize::from(SLOTS) / n - 1;
            cluster.expect_ok(
                node,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
            // Distinct epochs up front, as redis-cli --cluster create does, instead of waiting
            // for the nodes to resolve the collision among themselves.
            cluster.expect_ok(node, &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]);
        }
        let first = &cluster.nodes[0];
        for node in &cluster.nodes[1..] {
            let bus = node.bus_port.expect("cluster nodes have a bus port");
            cluster.expect_ok(
                first,
                &[
                    "CLUSTER",
                    "MEET",
                    &node.ip.to_string(),
                    &node.port.to_string(),
                    &bus.to_string(),
                ],
            );
        }
        cluster.wait_ok(CLUSTER_TIMEOUT);
        for (j, replica) in cluster.nodes[n..].iter().enumerate() {
            let master_id = cluster.nodes[j % n].cli(&["CLUSTER", "MYID"]);
            cluster.expect_ok(replica, &["CLUSTER", "REPLICATE", &master_id]);
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for replica in &cluster.nodes[n..] {
            while info_field(&replica.cli(&["INFO", "replication"]), "master_link_status")
                .as_deref()
                != Some("up")
            {
                assert!(
                    Instant::now() < deadline,
                    "replica {} did not sync with its master within {CLUSTER_TIMEOUT:?}",
                    replica.addr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster.wait_ok(CLUSTER_TIMEOUT);
        cluster
    }

    #[track_caller]
    fn expect_ok(&self, node: &RedisServer, args: &[&str]) {
        let reply = node.cli(args);
        assert_eq!(reply, "OK", "{args:?} on {}", node.addr());
    }

    /// Waits until every running node reports `cluster_state:ok`, knows all nodes and sees
    /// every slot assigned; panics with each node's CLUSTER INFO after `timeout`.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len().to_string();
        loop {
            let infos: Vec<String> = self
                .running_nodes()
                .map(|node| match node.command(&["CLUSTER", "INFO"]) {
                    Ok(reply) => reply.text(),
                    Err(e) => format!("unreachable: {e}"),
                })
                .collect();
            let ok = infos.iter().all(|info| {
                info_field(info, "cluster_state").as_deref() == Some("ok")
                    && info_field(info, "cluster_known_nodes").as_deref() == Some(n.as_str())
                    && info_field(info, "cluster_slots_assigned").as_deref()
                        == Some(SLOTS.to_string().as_str())
            });
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let mut out = String::new();
                for (node, info) in self.running_nodes().zip(&infos) {
                    let _ = writeln!(out, "---- CLUSTER INFO of {}:\n{info}", node.addr());
                }
                panic!("the Redis cluster is not ok within {timeout:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs of every node, `redis://127.0.0.1:<port>`, for the sidecar's
    /// `redis.cluster_nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (in start order), e.g. to stop or restart it.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The hash slot of `key`, as the cluster computes it (honours `{hash tags}`).
    #[track_caller]
    pub fn slot_of(&self, key: &str) -> u16 {
        let text = self.cli(&["CLUSTER", "KEYSLOT", key]);
        text.parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} answered {text:?}"))
    }

    /// The index (into [`node`](Self::node)) of the master serving the slot of `key`.
    #[track_caller]
    pub fn node_index_for(&self, key: &str) -> usize {
        let slot = i64::from(self.slot_of(key));
        let reply = self
            .live_node()
            .command(&["CLUSTER", "SLOTS"])
            .expect("CLUSTER SLOTS");
        let Reply::Array(Some(ranges)) = reply else {
            panic!("CLUSTER SLOTS answered {reply:?}");
        };
        for range in ranges {
            let Reply::Array(Some(fields)) = range else {
                continue;
            };
            let (Some(Reply::Int(first)), Some(Reply::Int(last)), Some(Reply::Array(Some(master)))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            if (*first..=*last).contains(&slot) {
                let port = match master.get(1) {
                    Some(Reply::Int(p)) => *p,
                    other => panic!("no port in CLUSTER SLOTS entry: {other:?}"),
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == port)
                    .unwrap_or_else(|| panic!("slot {slot} is served by unknown port {port}"));
            }
        }
        panic!("no node serves slot {slot} (of {key:?})");
    }

    /// The URL of the master serving the slot of `key`.
    #[track_caller]
    pub fn node_for_slot_of(&self, key: &str) -> String {
        self.nodes[self.node_index_for(key)].url()
    }

    /// Runs one command on the cluster as `redis-cli -c` would: sent to a running node and
    /// re-sent where a `MOVED` or `ASK` reply points. Returns the reply as text.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let mut addr = self.live_node().addr();
        for _ in 0..5 {
            let reply =
                command(addr, args).unwrap_or_else(|e| panic!("redis {args:?} on {addr}: {e}"));
            match &reply {
                Reply::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    let target = e.rsplit(' ').next().unwrap_or_default();
                    addr = target
                        .parse()
                        .unwrap_or_else(|_| panic!("cannot follow redirect {e:?}"));
                    if e.starts_with("ASK ") {
                        let _ = command(addr, &["ASKING"]);
                    }
                }
                _ => return reply.text(),
            }
        }
        panic!("redis {args:?}: too many redirects");
    }

    /// The keys matching `pattern` on every node, sorted (a cluster's KEYS is per node).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .flat_map(|n| n.keys(pattern))
            .collect();
        keys.sort();
        keys
    }

    fn live_node(&self) -> &RedisServer {
        self.running_nodes()
            .next()
            .expect("no node of the cluster is running")
    }

    fn running_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Waits until a running node other than `old` serves the slot of `key` as a master and
    /// every running node agrees (a replica was promoted after `old` failed); returns its
    /// index. Panics after `timeout`.
    #[track_caller]
    pub fn wait_new_owner(&self, key: &str, old: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let owners: Vec<Option<usize>> = self
                .running_nodes()
                .map(|node| self.owner_seen_by(node, key))
                .collect();
            if let Some(Some(owner)) = owners.first() {
                if *owner != old
                    && self.nodes[*owner].child.is_some()
                    && owners.iter().all(|o| *o == Some(*owner))
                {
                    return *owner;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new owner of {key:?} within {timeout:?}: the running nodes see {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The index of the master that `node` says serves the slot of `key`.
    fn owner_seen_by(&self, node: &RedisServer, key: &str) -> Option<usize> {
        let slot = i64::from(self.slot_of(key));
        let Ok(Reply::Array(Some(ranges))) = node.command(&["CLUSTER", "SLOTS"]) else {
            return None;
        };
        ranges.iter().find_map(|range| {
            let Reply::Array(Some(fields)) = range else {
                return None;
            };
            match (fields.first(), fields.get(1), fields.get(2)) {
                (Some(Reply::Int(first)), Some(Reply::Int(last)), Some(Reply::Array(Some(m))))
                    if (*first..=*last).contains(&slot) =>
                {
                    let Some(Reply::Int(port)) = m.get(1) else {
                        return None;
                    };
                    self.nodes.iter().position(|n| i64::from(n.port) == *port)
                }
                _ => None,
            }
        })
    }

    /// Moves the slot of `key` with its keys to master `to`, while the cluster serves it, as
    /// `redis-cli --cluster reshard` does for each slot: the target imports, the source
    /// migrates, keys are moved in batches with MIGRATE, then every master is told the new
    /// owner. Returns the previous owner's index.
    #[track_caller]
    pub fn move_slot_of(&self, key: &str, to: usize) -> usize {
        let slot = self.slot_of(key).to_string();
        let from = self.node_index_for(key);
        assert_ne!(from, to, "{key:?} is already served by node {to}");
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let source_id = source.cli(&["CLUSTER", "MYID"]);
        let target_id = target.cli(&["CLUSTER", "MYID"]);
        self.expect_ok(
            target,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
        );
        self.expect_ok(
            source,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
        );
        loop {
            let keys = source
                .command(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .expect("CLUSTER GETKEYSINSLOT")
                .strings();
            if keys.is_empty() {
                break;
            }
            let (ip, port) = (target.ip.to_string(), target.port.to_string());
            let mut args = vec!["MIGRATE", &ip, &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            self.expect_ok(source, &args);
        }
        // The target first, so it answers for the slot before the source sends clients there.
        self.expect_ok(target, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        self.expect_ok(source, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        for node in self.running_nodes() {
            if node.port != source.port && node.port != target.port {
                let _ = node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
            }
        }
        from
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Kill every node at once, so none spends its last moments logging the others'
        // deaths. Each node prints its own log afterwards if the test failed (the folder is
        // removed only after the nodes are dropped).
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill_group(child.id());
                let _ = child.wait();
            }
        }
        if std::env::var_os("CHATUP_KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}

// ---- sentinel -------------------------------------------------------------------------------

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
    child: Option<Child>,
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
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("spawn redis-sentinel (is Debian's redis-sentinel installed?): {e}")
                });
            let mut child = Some(child);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = dir.path().join("sentinel.log");
            let started = wait_ready(
                &mut child,
                &format!("redis-sentinel on {addr}"),
                READY_TIMEOUT,
                || matches!(command(addr, &["PING"]), Ok(Reply::Status(s)) if s == "PONG"),
                || fs::read_to_string(&log).unwrap_or_default(),
            );
            if started.is_ok() {
                return Self { dir, port, child };
            }
        }
        panic!("redis-sentinel could not start on a free port in 5 tries");
    }

    fn command(&self, args: &[&str]) -> io::Result<Reply> {
        command(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)), args)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}
