//! One test's nginx + sidecar (a chat host), in a temp folder, on free loopback ports; and a
//! dispatcher-only sidecar ([`Dispatcher`]) for tests with several hosts.
//!
//! Several hosts in one test each take their own loopback address ([`Options::address`]:
//! Linux routes all of 127/8 to `lo`), so each has a distinct public URL, as real hosts do.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::http::{build_request, HttpResponse};
use crate::procfs;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The folder holding `nginx`, `ngx_http_chatup_module.so` and `chatup-sidecar`:
/// `$CHATUP_BUILD_DIR`, or `build/` in the repository. Panics with what to do when an
/// artifact is missing.
pub fn build_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("CHATUP_BUILD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("build"));
        for name in ["nginx", "ngx_http_chatup_module.so", "chatup-sidecar"] {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} is missing: run scripts/setup first (or set CHATUP_BUILD_DIR to a folder \
                 holding nginx, ngx_http_chatup_module.so and chatup-sidecar)",
                path.display()
            );
        }
        dir
    })
    .clone()
}

pub fn nginx_bin() -> PathBuf {
    build_dir().join("nginx")
}

pub fn module_path() -> PathBuf {
    build_dir().join("ngx_http_chatup_module.so")
}

pub fn sidecar_bin() -> PathBuf {
    build_dir().join("chatup-sidecar")
}

pub fn example_keys() -> PathBuf {
    repo_root().join("nginx-conf/example-keys")
}

/// A port on 127.0.0.1 nobody in this process was given before and that is free now; see
/// [`free_port_on`].
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A port for a listener on `ip`: never given before in this process (for any address), and
/// free now on `ip` and on every other address (the wildcard bind fails when any address
/// has a listener on it), so hosts on 127.0.0.2 and 127.0.0.3 never collide, nor with other
/// test processes. Ports come from below the kernel's ephemeral range, so client sockets
/// never sit on them.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32);
    for _ in 0..10_000 {
        // xorshift: cheap, good enough to spread ports between test processes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 12_000 + (seed % 20_000) as u16;
        let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind((ip, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
        {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// What a test changes in the default setup.
#[derive(Debug, Clone)]
pub struct Options {
    /// nginx worker processes.
    pub workers: u32,
    /// `chatup_cache_messages`; `None` leaves the module's default.
    pub cache_messages: Option<u32>,
    /// Extra directives in the `http` block (e.g. `chatup_ping_interval 1s;`).
    pub http_extra: String,
    /// Extra directives in `location /sub/`.
    pub sub_extra: String,
    /// Extra parameters of the `listen` directive (e.g. `sndbuf=4k`).
    pub listen_extra: String,
    /// Extra directives (e.g. more `location` blocks) in the `server` block.
    pub server_extra: String,
    /// `--set key=value` arguments for the sidecar (e.g. `history.size=5`).
    pub sidecar_set: Vec<String>,
    /// Start the sidecar (and wait for it) before nginx.
    pub start_sidecar: bool,
    /// The loopback address nginx and the sidecar's HTTP listen on; one per host when a test
    /// runs several.
    pub address: Ipv4Addr,
    /// `redis.url`; empty: not written (memory broker unless `redis_cluster` is set).
    pub redis_url: String,
    /// `redis.cluster_nodes`; empty: not written.
    pub redis_cluster: Vec<String>,
    /// `redis.sentinels` and `redis.sentinel_master`; empty: not written.
    pub redis_sentinels: Vec<String>,
    /// `host.id`; `None` leaves the sidecar's default (hostname and port).
    pub host_id: Option<String>,
    /// `plugins.chain`. The harness default is `["ban"]`: tests publish quickly, and the
    /// sidecar's default rate limit would refuse them; tests of the rate limit add it.
    pub plugins: Vec<String>,
    /// `presence.leave_grace_ms`. The harness default is 0: tests close a publisher and
    /// wait for its `leave` at once; tests of the grace set it.
    pub leave_grace_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 2,
            cache_messages: None,
            http_extra: String::new(),
            sub_extra: String::new(),
            listen_extra: String::new(),
            server_extra: String::new(),
            sidecar_set: Vec::new(),
            start_sidecar: true,
            address: Ipv4Addr::LOCALHOST,
            redis_url: String::new(),
            redis_cluster: Vec::new(),
            redis_sentinels: Vec::new(),
            host_id: None,
            plugins: vec!["ban".to_owned()],
            leave_grace_ms: 0,
        }
    }
}

impl Options {
    pub fn cache_messages(mut self, n: u32) -> Self {
        self.cache_messages = Some(n);
        self
    }
    pub fn http(mut self, directives: &str) -> Self {
        self.http_extra.push_str(directives);
        self.http_extra.push('\n');
        self
    }
    pub fn sub_location(mut self, directives: &str) -> Self {
        self.sub_extra.push_str(directives);
        self.sub_extra.push('\n');
        self
    }
    pub fn listen(mut self, params: &str) -> Self {
        self.listen_extra.push(' ');
        self.listen_extra.push_str(params);
        self
    }
    pub fn server(mut self, directives: &str) -> Self {
        self.server_extra.push_str(directives);
        self.server_extra.push('\n');
        self
    }
    /// A chat host of a multi-host test: on `address`, named `id`, on the Redis at
    /// `redis_url`, reporting its load every 200 ms so tests stay short (the expiry keeps its
    /// default, 3 s).
    pub fn host_on_redis(address: &str, id: &str, redis_url: &str) -> Self {
        Self::default()
            .address(address)
            .host_id(id)
            .redis(redis_url)
            .sidecar_set("host.report_interval_ms=200")
    }

    /// A chat host of a multi-host test on the Redis Cluster seeded by `nodes`: on
    /// `address`, named `id`.
    pub fn host_on_cluster(address: &str, id: &str, nodes: &[String]) -> Self {
        Self::default()
            .address(address)
            .host_id(id)
            .redis_cluster(nodes)
    }

    /// A chat host of a multi-host test on the primary watched by the sentinels at
    /// `sentinels` (as [`crate::redis::SENTINEL_MASTER`]): on `address`, named `id`.
    pub fn host_on_sentinel(address: &str, id: &str, sentinels: &[String]) -> Self {
        let mut options = Self::default().address(address).host_id(id);
        options.redis_sentinels = sentinels.to_vec();
        options
    }

    pub fn sidecar_set(mut self, kv: &str) -> Self {
        self.sidecar_set.push(kv.to_owned());
        self
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }
    /// Listen on loopback address `ip` (e.g. "127.0.0.2") instead of 127.0.0.1.
    pub fn address(mut self, ip: &str) -> Self {
        self.address = parse_loopback(ip);
        self
    }
    /// Use the Redis at `url` (`redis.url`).
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_url = url.to_owned();
        self
    }
    /// Use the Redis Cluster with these seed nodes (`redis.cluster_nodes`).
    pub fn redis_cluster(mut self, nodes: &[String]) -> Self {
        self.redis_cluster = nodes.to_vec();
        self
    }
    /// This host's name among hosts (`host.id`).
    pub fn host_id(mut self, id: &str) -> Self {
        self.host_id = Some(id.to_owned());
        self
    }
    /// The sidecar's `presence.leave_grace_ms`.
    pub fn leave_grace_ms(mut self, ms: u64) -> Self {
        self.leave_grace_ms = ms;
        self
    }

    /// The sidecar's `plugins.chain` (e.g. `&["ban", "rate_limit"]`).
    pub fn plugins(mut self, chain: &[&str]) -> Self {
        self.plugins = chain.iter().map(|p| p.to_string()).collect();
        self
    }

    /// The `[redis]` section for these options; empty when no Redis is configured.
    fn redis_toml(&self) -> String {
        let mut out = String::new();
        if !self.redis_url.is_empty()
            || !self.redis_cluster.is_empty()
            || !self.redis_sentinels.is_empty()
        {
            out.push_str("[redis]\n");
        }
        if !self.redis_sentinels.is_empty() {
            let _ = writeln!(out, "sentinels = {:?}", self.redis_sentinels);
            let _ = writeln!(out, "sentinel_master = {:?}", crate::redis::SENTINEL_MASTER);
        }
        if !self.redis_url.is_empty() {
            let _ = writeln!(out, "url = {:?}", self.redis_url);
        }
        if !self.redis_cluster.is_empty() {
            let _ = writeln!(out, "cluster_nodes = {:?}", self.redis_cluster);
        }
        out
    }
}

pub(crate) fn parse_loopback(ip: &str) -> Ipv4Addr {
    let addr: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("{ip:?} is not an IPv4 address"));
    assert!(addr.is_loopback(), "{ip} is not a loopback address (127/8)");
    addr
}

/// A running nginx + sidecar pair for one test.
pub struct Chatup {
    dir: tempfile::TempDir,
    /// nginx's port on [`address`](Self::address).
    pub port: u16,
    /// The sidecar's HTTP port on [`address`](Self::address).
    pub sidecar_port: u16,
    opts: Options,
    nginx: Option<Child>,
    sidecar: Option<Child>,
    /// Workers the test killed on purpose: their "exited on signal 9" alerts are expected.
    killed_workers: Vec<u32>,
}

const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

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
        self.sidecar.as_ref().map(Child::id)
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
            let mut child = child;
            kill_group(child.id());
            let _ = child.wait();
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
        let mut cmd = Command::new(nginx_bin());
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
        let child = self
            .nginx_command()
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn nginx");
        self.nginx = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .nginx
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
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
        let Some(master) = self.nginx.as_ref().map(Child::id) else {
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
        let mut child = self.nginx.take().expect("nginx is not running");
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                kill_group(child.id());
                let _ = child.wait();
                panic!(
                    "nginx did not exit within {STOP_TIMEOUT:?}:\n{}",
                    self.error_log()
                );
            }
        }
    }

    /// Whether nginx (the master) is still running.
    pub fn nginx_running(&mut self) -> bool {
        self.nginx
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the sidecar is still running.
    pub fn sidecar_running(&mut self) -> bool {
        self.sidecar
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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

    fn shutdown(&mut self) {
        if let Some(mut child) = self.nginx.take() {
            signal_pid(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                kill_group(child.id());
                let _ = child.wait();
            }
            // Workers of a killed master must not outlive the test.
            kill_group(child.id());
        }
        if let Some(mut child) = self.sidecar.take() {
            signal_pid(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                kill_group(child.id());
                let _ = child.wait();
            }
        }
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

/// A sidecar with only the dispatcher role (`roles.worker = false`, `roles.dispatcher =
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
    child: Option<Child>,
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
             [roles]\nworker = false\ndispatcher = true\n\n\
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
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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
        let mut child = self.child.take().expect("the dispatcher is not running");
        kill_group(child.id());
        let _ = child.wait();
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
        if let Some(mut child) = self.child.take() {
            signal_pid(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                kill_group(child.id());
                let _ = child.wait();
            }
        }
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

/// Spawns `chatup-sidecar --config <config> [--set kv]… run` in its own process group, its
/// stdout and stderr appended to `log`.
fn spawn_sidecar(config: &Path, set: &[String], log: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let mut cmd = Command::new(sidecar_bin());
    cmd.arg("--config").arg(config);
    for kv in set {
        cmd.arg("--set").arg(kv);
    }
    cmd.arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .process_group(0);
    cmd.spawn().expect("spawn chatup-sidecar")
}

/// nginx.conf for a test.
fn nginx_conf(
    dir: &Path,
    opts: &Options,
    listen: SocketAddr,
    sidecar: SocketAddr,
    relay: &Path,
) -> String {
    let d = dir.display();
    // Workers must be able to open the relay socket the sidecar (run by the same user) made.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    let cache = opts
        .cache_messages
        .map(|n| format!("    chatup_cache_messages {n};\n"))
        .unwrap_or_default();
    format!(
        r#"load_module {module};
daemon off;
master_process on;
worker_processes {workers};
{user}pid {d}/nginx.pid;
error_log {d}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;

    chatup_relay_socket {relay};
{cache}{http_extra}
    map $http_upgrade $chatup_connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen {listen} reuseport{listen_extra};

        location /sub/ {{
            chatup_subscribe;
{sub_extra}        }}

        location = /pub {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $chatup_connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}

        location /pub/ {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location = /health {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        # The dispatcher (POST /join/<ch>). The client's Host reaches it, for answers that
        # name the origin the client used.
        location /join/ {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}

        # Public channel info (GET /channels/<ch>[/users]), as nginx-conf/chatup.conf
        # proxies it.
        location /channels/ {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}

        # Demo tokens (only served with demo.private_key_file set).
        location = /demo/token {{
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        # The admin API, as nginx-conf/chatup.conf proxies it.
        location ~ ^/(post|ban|unban|bans/.+|messages/.+|stats|stats/.+|blacklist|metrics)$ {{
            client_max_body_size 2m;
            proxy_pass http://{sidecar};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
{server_extra}
    }}
}}
"#,
        module = module_path().display(),
        workers = opts.workers,
        relay = relay.display(),
        http_extra = indent(&opts.http_extra, 4),
        sub_extra = indent(&opts.sub_extra, 12),
        listen_extra = opts.listen_extra,
        server_extra = indent_block(&opts.server_extra, 8),
    )
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{}{}\n", " ".repeat(by), l.trim()))
        .collect()
}

/// Indents every line of a block of configuration by `by` spaces.
fn indent_block(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{}\n", " ".repeat(by), l.trim()))
        .collect()
}

/// Runs `nginx -t` on a configuration made of the module, an http block holding
/// `http_directives`, and a server holding `server_directives`. Returns (success, output).
pub fn nginx_config_test(http_directives: &str, server_directives: &str) -> (bool, String) {
    nginx_config_test_with_relay_socket("relay.sock", http_directives, server_directives)
}

/// [`nginx_config_test`] with `chatup_relay_socket` at `socket` under the test's temp folder
/// (e.g. `missing/relay.sock`: a folder that does not exist).
pub fn nginx_config_test_with_relay_socket(
    socket: &str,
    http_directives: &str,
    server_directives: &str,
) -> (bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("chatup-conftest-")
        .tempdir()
        .expect("create a temp folder");
    let d = dir.path().display();
    let conf = format!(
        "load_module {module};\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/cb;\n    \
         proxy_temp_path {d}/px;\n    fastcgi_temp_path {d}/fc;\n    uwsgi_temp_path {d}/uw;\n    \
         scgi_temp_path {d}/sc;\n    chatup_relay_socket {d}/{socket};\n{http}\n    \
         server {{\n        listen 127.0.0.1:{port};\n{server}\n    }}\n}}\n",
        module = module_path().display(),
        http = indent(http_directives, 4),
        server = indent(server_directives, 8),
        port = free_port(),
    );
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut child = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nginx -t");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("nginx -t did not finish within 20 s");
    });
    let mut output = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut output);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut output);
    }
    (status.success(), output)
}

/// GET /health on `addr` answers 200.
fn health_ok(addr: SocketAddr) -> bool {
    http_status(addr, "/health") == Some(200)
}

/// The status of `GET <path>` on `addr`, or `None` if nothing answered HTTP (blocking, for
/// readiness loops; each try is bounded).
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let line = buf.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Polls `ready` until it holds; `Err` with the exit status (and `child` emptied) when the
/// process exits first. Panics with `what` and `log()` after `timeout`.
pub fn wait_ready(
    child: &mut Option<Child>,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            *child = None;
            return Err(status);
        }
        if ready() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {timeout:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM and waits (bounded) for the exit; a process that outlives the wait is
/// killed and fails the test.
pub fn terminate(mut child: Child, what: &str) -> ExitStatus {
    signal_pid(child.id(), libc::SIGTERM);
    match wait_timeout(&mut child, STOP_TIMEOUT) {
        Some(status) => status,
        None => {
            kill_group(child.id());
            let _ = child.wait();
            panic!("{what} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
    }
}

pub fn signal_pid(pid: u32, sig: i32) {
    let sig = Signal::try_from(sig).expect("a signal number");
    // The process may have exited already.
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// SIGKILL to the process group `pgid` (every child runs in its own group).
pub(crate) fn kill_group(pgid: u32) {
    // The group may be gone already.
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
