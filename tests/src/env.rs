//! One test's nginx + sidecar, in a temp folder, on free loopback ports.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A loopback port nobody in this process was given before and that is free now. Ports come
/// from below the kernel's ephemeral range, so client sockets never sit on them.
pub fn free_port() -> u16 {
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
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
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
    pub fn sidecar_set(mut self, kv: &str) -> Self {
        self.sidecar_set.push(kv.to_owned());
        self
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }
}

/// A running nginx + sidecar pair for one test.
pub struct Chatup {
    dir: tempfile::TempDir,
    /// nginx's port on 127.0.0.1.
    pub port: u16,
    /// The sidecar's HTTP port on 127.0.0.1.
    pub sidecar_port: u16,
    opts: Options,
    nginx: Option<Child>,
    sidecar: Option<Child>,
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
            port: free_port(),
            sidecar_port: free_port(),
            opts,
            nginx: None,
            sidecar: None,
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

    pub fn nginx_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn sidecar_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sidecar_port))
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    fn sidecar_config(&self) -> String {
        let keys = example_keys();
        format!(
            "[relay]\nsocket = {socket:?}\nsocket_mode = \"0666\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [auth]\npublic_key_file = {key:?}\nalgorithms = [\"RS256\"]\nleeway_seconds = 5\n\n\
             [log]\nlevel = \"debug\"\nformat = \"text\"\n",
            socket = self.relay_socket().display().to_string(),
            port = self.sidecar_port,
            key = keys.join("jwt-public.pem").display().to_string(),
        )
    }

    fn nginx_config(&self) -> String {
        nginx_conf(
            self.dir.path(),
            &self.opts,
            self.port,
            self.sidecar_port,
            &self.relay_socket(),
        )
    }

    // ---- sidecar --------------------------------------------------------------------

    /// Starts the sidecar and waits until `/health` answers and the relay socket exists.
    pub fn start_sidecar(&mut self) {
        assert!(self.sidecar.is_none(), "the sidecar is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sidecar.log"))
            .expect("open sidecar.log");
        let mut cmd = Command::new(sidecar_bin());
        cmd.arg("--config").arg(self.path("chatup.toml"));
        for kv in &self.opts.sidecar_set {
            cmd.arg("--set").arg(kv);
        }
        cmd.arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().expect("spawn chatup-sidecar");
        self.sidecar = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .sidecar
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.sidecar = None;
                panic!(
                    "chatup-sidecar exited at start ({status}):\n{}",
                    self.sidecar_log()
                );
            }
            if self.relay_socket().exists() && health_ok(self.sidecar_addr()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chatup-sidecar not ready within {READY_TIMEOUT:?}:\n{}",
                self.sidecar_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to the sidecar and waits for it to exit (bounded); returns its status.
    pub fn stop_sidecar(&mut self) -> ExitStatus {
        let mut child = self.sidecar.take().expect("the sidecar is not running");
        signal_pid(child.id(), libc::SIGTERM);
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                kill_group(child.id());
                let _ = child.wait();
                panic!("chatup-sidecar did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
        }
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
        procfs::owner_of_connection(self.port, client_port, &self.all_worker_pids())
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
        let mut problems = self.grep_error_log("exited on signal");
        problems.extend(self.grep_error_log("[alert]"));
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

/// nginx.conf for a test.
fn nginx_conf(dir: &Path, opts: &Options, port: u16, sidecar_port: u16, relay: &Path) -> String {
    let d = dir.display();
    // Workers must be able to open the relay socket the sidecar (run by the same user) made.
    let user = if unsafe { libc::geteuid() } == 0 {
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
        listen 127.0.0.1:{port} reuseport{listen_extra};

        location /sub/ {{
            chatup_subscribe;
{sub_extra}        }}

        location = /pub {{
            proxy_pass http://127.0.0.1:{sidecar_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $chatup_connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}

        location /pub/ {{
            proxy_pass http://127.0.0.1:{sidecar_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location = /health {{
            proxy_pass http://127.0.0.1:{sidecar_port};
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
         scgi_temp_path {d}/sc;\n    chatup_relay_socket {d}/relay.sock;\n{http}\n    \
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
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
}

pub fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGKILL to the process group `pgid` (every child runs in its own group).
pub(crate) fn kill_group(pgid: u32) {
    // SAFETY: kill(2) on a process group we created with process_group(0).
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
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
