//! [`Chatup`]: one test's chat host, nginx with the module and a sidecar, in a temp folder
//! on free ports of a loopback address.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::nginx_conf::nginx_conf;
use super::options::Options;
use super::paths::example_keys;
use super::ports::free_port_on;
use super::sidecar::{health_ok, spawn_sidecar};
use super::READY_TIMEOUT;
use crate::process::{signal_pid, terminate, wait_ready, ChildGuard, STOP_TIMEOUT};
use crate::procfs;
use crate::redis::RedisCluster;

/// A running nginx + sidecar pair for one test.
pub struct Chatup {
    dir: tempfile::TempDir,
    /// nginx's port on [`address`](Self::address).
    pub port: u16,
    /// The sidecar's HTTP port on [`address`](Self::address).
    pub sidecar_port: u16,
    opts: Options,
    nginx: Option<ChildGuard>,
    sidecar: Option<ChildGuard>,
    /// Workers the test killed on purpose: their "exited on signal 9" alerts are expected.
    killed_workers: Vec<u32>,
}

impl Chatup {
    /// Starts the default setup (2 workers, module defaults).
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chatup-test-")
            .tempdir()
            .expect("create a temp folder");
        let mut env = Self {
            dir,
            port: free_port_on(opts.address),
            sidecar_port: free_port_on(opts.address),
            opts,
            nginx: None,
            sidecar: None,
            killed_workers: Vec::new(),
        };
        fs::create_dir_all(env.path("temp")).expect("create temp/");
        fs::write(env.path("chatup.toml"), env.sidecar_config()).expect("write chatup.toml");
        fs::write(env.path("nginx.conf"), env.nginx_config()).expect("write nginx.conf");
        if env.opts.start_sidecar {
            env.start_sidecar();
        }
        env.start_nginx();
        env
    }

    /// Two hosts on `cluster`: "a" on 127.0.0.2 and "b" on 127.0.0.3.
    pub fn two_on_cluster(cluster: &RedisCluster) -> (Self, Self) {
        let nodes = cluster.nodes();
        let start = |address: &str, id: &str| {
            Self::start_with(Options::host_on_cluster(address, id, &nodes))
        };
        (start("127.0.0.2", "a"), start("127.0.0.3", "b"))
    }

    /// A path inside this test's temp folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn relay_socket(&self) -> PathBuf {
        self.path("relay.sock")
    }

    /// The loopback address this host's nginx and sidecar listen on.
    pub fn address(&self) -> Ipv4Addr {
        self.opts.address
    }

    pub fn nginx_addr(&self) -> SocketAddr {
        SocketAddr::from((self.opts.address, self.port))
    }

    pub fn sidecar_addr(&self) -> SocketAddr {
        SocketAddr::from((self.opts.address, self.sidecar_port))
    }

    /// `ws://<address>:<port><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.nginx_addr())
    }

    /// `http://<address>:<port>`: where clients reach this host's nginx, written to the
    /// sidecar's `host.public_url` so a dispatcher hands out real URLs.
    pub fn public_url(&self) -> String {
        format!("http://{}", self.nginx_addr())
    }

    /// The `host.id` this host was given, if any.
    pub fn host_id(&self) -> Option<&str> {
        self.opts.host_id.as_deref()
    }

    fn sidecar_config(&self) -> String {
        let keys = example_keys();
        let mut host = format!("[host]\npublic_url = {:?}\n", self.public_url());
        if let Some(id) = &self.opts.host_id {
            let _ = writeln!(host, "id = {id:?}");
        }
        format!(
            "[relay]\nsocket = {socket:?}\nsocket_mode = \"0666\"\n\n\
             [http]\nlisten = \"{listen}\"\n\n\
             [auth]\npublic_key_file = {key:?}\nalgorithms = [\"RS256\"]\nleeway_seconds = 5\n\n\
             [admin]\npublic_key_file = {admin_key:?}\n\n\
             {redis}\n{host}\n\
             [plugins]\nchain = {plugins:?}\n\n\
             [presence]\nleave_grace_ms = {grace}\n\n\
             [log]\nlevel = \"debug\"\nformat = \"text\"\n",
            socket = self.relay_socket().display().to_string(),
            listen = self.sidecar_addr(),
            key = keys.join("jwt-public.pem").display().to_string(),
            admin_key = keys.join("admin-public.pem").display().to_string(),
            redis = self.opts.redis_toml(),
            plugins = self.opts.plugins,
            grace = self.opts.leave_grace_ms,
        )
    }

    fn nginx_config(&self) -> String {
        nginx_conf(
            self.dir.path(),
            &self.opts,
            self.nginx_addr(),
            self.sidecar_addr(),
            &self.relay_socket(),
        )
    }

    // ---- sidecar --------------------------------------------------------------------

    /// Starts the sidecar and waits until `/health` answers and the relay socket exists.
    pub fn start_sidecar(&mut self) {
        assert!(self.sidecar.is_none(), "the sidecar is already running");
        let child = spawn_sidecar(
            &self.path("chatup.toml"),
            &self.opts.sidecar_set,
            &self.path("sidecar.log"),
        );
        self.sidecar = Some(child);
        let (socket, addr) = (self.relay_socket(), self.sidecar_addr());
        let log = self.path("sidecar.log");
        let started = wait_ready(
            &mut self.sidecar,
            "chatup-sidecar",
            READY_TIMEOUT,
            || socket.exists() && health_ok(addr),
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        if let Err(status) = started {
            panic!(
                "chatup-sidecar exited at start ({status}):\n{}",
                self.sidecar_log()
            );
        }
    }

    /// Sends SIGTERM to the sidecar and waits for it to exit (bounded); returns its status.
    pub fn stop_sidecar(&mut self) -> ExitStatus {
        let child = self.sidecar.take().expect("the sidecar is not running");
        terminate(child, "chatup-sidecar")
    }

    /// Stops the sidecar (SIGTERM) and starts a new one with the same configuration.
    pub fn restart_sidecar(&mut self) {
        let status = self.stop_sidecar();
        assert!(
            status.success(),
            "chatup-sidecar exited with {status} on SIGTERM"
        );
        self.start_sidecar();
    }

    pub fn sidecar_pid(&self) -> Option<u32> {
        self.sidecar.as_ref().map(ChildGuard::id)
    }

    // ---- the whole host -------------------------------------------------------------

    /// Stops this host as an operator would: nginx (SIGTERM, fast shutdown: subscribers are
    /// disconnected), then the sidecar (SIGTERM). Either may already be stopped. Panics if
    /// one exits with a failure, so a clean stop is part of what a test checks.
    pub fn stop_host(&mut self) {
        if self.nginx.is_some() {
            let status = self.stop_nginx(libc::SIGTERM);
            assert!(
                status.success(),
                "nginx exited with {status} on SIGTERM:\n{}",
                self.error_log()
            );
        }
        if self.sidecar.is_some() {
            let status = self.stop_sidecar();
            assert!(
                status.success(),
                "chatup-sidecar exited with {status} on SIGTERM"
            );
        }
    }

    /// Kills nginx (master and workers) and the sidecar with SIGKILL, as when a machine dies:
    /// nothing is closed or deregistered, so others notice only through timeouts.
    pub fn kill_host(&mut self) {
        for child in [self.nginx.take(), self.sidecar.take()]
            .into_iter()
            .flatten()
        {
            child.kill();
        }
    }

    /// Starts whatever of this host is not running (the sidecar first, then nginx) with the
    /// same configuration, addresses and ports, after [`stop_host`](Self::stop_host) or
    /// [`kill_host`](Self::kill_host).
    pub fn start_host(&mut self) {
        if self.sidecar.is_none() {
            self.start_sidecar();
        }
        if self.nginx.is_none() {
            self.start_nginx();
        }
    }

    // ---- nginx ----------------------------------------------------------------------

    fn nginx_command(&self) -> Command {
        let mut cmd = Command::new(&self.opts.nginx.binary);
        cmd.arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.path("nginx.conf"))
            .arg("-e")
            .arg(self.path("error.log"));
        cmd
    }

    fn start_nginx(&mut self) {
        assert!(self.nginx.is_none(), "nginx is already running");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("nginx.stderr"))
            .expect("open nginx.stderr");
        let child = ChildGuard::spawn(
            self.nginx_command()
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out),
        )
        .expect("spawn nginx");
        self.nginx = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.nginx.as_mut().and_then(ChildGuard::exited) {
                self.nginx = None;
                panic!(
                    "nginx exited at start ({status}):\n{}\n{}",
                    fs::read_to_string(self.path("nginx.stderr")).unwrap_or_default(),
                    self.error_log()
                );
            }
            if self.worker_pids().len() == self.opts.workers as usize
                && TcpStream::connect_timeout(&self.nginx_addr(), Duration::from_millis(200))
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not ready within {READY_TIMEOUT:?}:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nginx master's pid.
    pub fn master_pid(&self) -> u32 {
        self.nginx.as_ref().expect("nginx is not running").id()
    }

    /// The master's worker processes that are not shutting down.
    pub fn worker_pids(&self) -> Vec<u32> {
        let Some(master) = self.nginx.as_ref().map(ChildGuard::id) else {
            return Vec::new();
        };
        procfs::children(master)
            .into_iter()
            .filter(|&pid| {
                let title = procfs::cmdline(pid);
                title.contains("worker process") && !title.contains("shutting down")
            })
            .collect()
    }

    /// Kills worker `pid` with SIGKILL, as a crash would, and waits until the master has
    /// started its replacement. The master's alert about it is expected, not a failure.
    pub fn kill_worker(&mut self, pid: u32) {
        let workers = self.worker_pids().len();
        self.crash_worker(pid);
        self.wait_worker_replaced(pid, workers);
    }

    /// Kills worker `pid` with SIGKILL and returns at once (the master's alert about it is
    /// expected). With the master stopped (SIGSTOP) no replacement starts until SIGCONT, so
    /// the worker's clients stay away as long as a test needs.
    pub fn crash_worker(&mut self, pid: u32) {
        let workers = self.all_worker_pids();
        assert!(workers.contains(&pid), "{pid} is not a worker: {workers:?}");
        self.killed_workers.push(pid);
        signal_pid(pid, libc::SIGKILL);
    }

    /// Waits until `pid` is gone and `workers` workers run again.
    pub fn wait_worker_replaced(&self, pid: u32, workers: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let now = self.worker_pids();
            if now.len() == workers && !now.contains(&pid) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new worker within {READY_TIMEOUT:?} of killing {pid}:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every child of the master (workers, including those shutting down).
    pub fn all_worker_pids(&self) -> Vec<u32> {
        self.nginx
            .as_ref()
            .map(|c| procfs::children(c.id()))
            .unwrap_or_default()
    }

    /// The pid of the nginx worker that accepted the client connection whose local port
    /// is `client_port`.
    pub fn worker_of(&self, client_port: u16) -> Option<u32> {
        let server = std::net::SocketAddrV4::new(self.opts.address, self.port);
        procfs::owner_of_connection(server, client_port, &self.all_worker_pids())
    }

    /// SIGHUP to the master; waits until a full set of new workers runs. Returns the old
    /// workers' pids.
    pub fn reload(&self) -> Vec<u32> {
        let old = self.worker_pids();
        signal_pid(self.master_pid(), libc::SIGHUP);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let now = self.worker_pids();
            if now.len() == self.opts.workers as usize && now.iter().all(|p| !old.contains(p)) {
                return old;
            }
            assert!(
                Instant::now() < deadline,
                "no new workers within {READY_TIMEOUT:?} of SIGHUP:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until none of `pids` is alive; false on timeout.
    pub fn wait_gone(&self, pids: &[u32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pids.iter().all(|&p| !procfs::alive(p)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the nginx master and waits (bounded) for it to exit.
    pub fn stop_nginx(&mut self, sig: i32) -> ExitStatus {
        self.signal_nginx(sig);
        self.wait_nginx_exit()
    }

    /// Sends `sig` to the nginx master.
    pub fn signal_nginx(&self, sig: i32) {
        signal_pid(self.master_pid(), sig);
    }

    /// Waits (bounded) for the nginx master to exit.
    pub fn wait_nginx_exit(&mut self) -> ExitStatus {
        let child = self.nginx.take().expect("nginx is not running");
        child.wait_or_kill(STOP_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "nginx did not exit within {STOP_TIMEOUT:?}:\n{}",
                self.error_log()
            )
        })
    }

    /// Whether nginx (the master) is still running.
    pub fn nginx_running(&mut self) -> bool {
        self.nginx.as_mut().is_some_and(ChildGuard::running)
    }

    /// Whether the sidecar is still running.
    pub fn sidecar_running(&mut self) -> bool {
        self.sidecar.as_mut().is_some_and(ChildGuard::running)
    }

    // ---- logs -----------------------------------------------------------------------

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    pub fn sidecar_log(&self) -> String {
        fs::read_to_string(self.path("sidecar.log")).unwrap_or_default()
    }

    /// Lines of the nginx error log containing `needle`.
    pub fn grep_error_log(&self, needle: &str) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the nginx error log has a line containing `needle`.
    pub fn wait_for_error_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.grep_error_log(needle).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sidecar log has a line containing `needle`.
    pub fn wait_for_sidecar_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sidecar_log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump_logs(&self) {
        let mut out = String::new();
        let _ = writeln!(out, "---- test folder: {}", self.dir.path().display());
        for (name, file) in [
            ("nginx error log", "error.log"),
            ("nginx stderr", "nginx.stderr"),
            ("sidecar log", "sidecar.log"),
        ] {
            let text = fs::read_to_string(self.path(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(300);
            let _ = writeln!(
                out,
                "---- {name} ({} lines{}):",
                lines.len(),
                if skip > 0 { ", last 300" } else { "" }
            );
            for line in &lines[skip..] {
                let _ = writeln!(out, "{line}");
            }
        }
        eprintln!("{out}");
    }

    /// Stops nginx, then the sidecar (their guards: SIGTERM, then SIGKILL if they linger).
    fn shutdown(&mut self) {
        self.nginx = None;
        self.sidecar = None;
    }
}

impl Drop for Chatup {
    fn drop(&mut self) {
        self.shutdown();
        // Whatever the test checked, these must never happen.
        let expected: Vec<String> = self
            .killed_workers
            .iter()
            .map(|pid| format!("worker process {pid} exited on signal 9"))
            .collect();
        let mut problems = self.grep_error_log("exited on signal");
        problems.extend(self.grep_error_log("[alert]"));
        problems.retain(|line| !expected.iter().any(|e| line.contains(e.as_str())));
        problems.extend(
            self.sidecar_log()
                .lines()
                .filter(|l| l.contains("panicked"))
                .map(str::to_owned),
        );
        if std::thread::panicking() {
            self.dump_logs();
        } else if !problems.is_empty() {
            self.dump_logs();
            panic!("nginx alerts, crashes or sidecar panics: {problems:#?}");
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
