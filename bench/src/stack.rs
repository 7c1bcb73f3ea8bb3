//! The server under test: either a chatup deployment the bench starts itself (from
//! `build/`, in a temp folder, on free loopback ports), or one an operator already runs
//! (`--url`).
//!
//! A deployment the bench starts is one or more chat hosts, each a complete nginx (with the
//! module) and sidecar with its own ports, relay socket and `[host] id`. With the memory
//! broker there is exactly one host; with `--broker redis` every host's sidecar uses the
//! same Redis: one the bench starts (no persistence, in its temp folder) or the operator's
//! (`--redis-url`).
//!
//! The hosts differ by port, all on 127.0.0.1: every 127/8 address goes through the same
//! loopback device and TCP stack, so separate addresses would measure the same path, and
//! the source addresses the subscriber load binds (127.0.0.2 and up) stay apart from the
//! servers'.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatup_tests::ChildGuard;

use crate::payload::run_stamp;
use crate::procfs;
use crate::BenchError;

/// Where a broker keeps channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// The sidecar's embedded broker (one host, no Redis).
    Memory,
    /// Redis: every host's sidecar shares one Redis (the bench's own, or --redis-url).
    Redis,
}

/// How the bench starts its own stack.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Folder with nginx, ngx_http_chatup_module.so and chatup-sidecar (what scripts/setup
    /// makes). Default: $CHATUP_BUILD_DIR, else the folder of this program when it holds
    /// them, else ./build.
    #[arg(long, value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
    /// nginx worker processes (on each host).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Broker of the sidecars.
    #[arg(long, value_enum, default_value_t = Broker::Memory)]
    pub broker: Broker,
    /// Chat hosts (nginx + sidecar each, on their own ports). More than one needs
    /// --broker redis.
    #[arg(
        long,
        default_value_t = 1,
        conflicts_with = "url",
        value_parser = clap::value_parser!(u32).range(1..=16)
    )]
    pub hosts: u32,
    /// With --broker redis: use this Redis (`redis://[user:password@]host:port[/db]`)
    /// instead of starting one. The bench's keys get a prefix of their own and expire.
    #[arg(long, value_name = "URL", conflicts_with = "url")]
    pub redis_url: Option<String>,
    /// With --redis-url: the redis-server's pid, to read its CPU (same machine only).
    #[arg(long, value_name = "PID", requires = "redis_url")]
    pub redis_pid: Option<u32>,
    /// `chatup_cache_messages`.
    #[arg(long, default_value_t = 100)]
    pub cache: u32,
    /// Folder with jwt-private.pem / jwt-public.pem. Default: the example keys.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Moderation plugins every publish goes through, comma-separated: `ban`,
    /// `rate_limit` (with a bound the load never reaches, so it counts but never refuses),
    /// `blacklist` (a few words and a muted one, none in the bench's text). Default: none,
    /// the core publish path.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        conflicts_with = "url"
    )]
    pub plugins: Vec<String>,
    /// Make every channel private (`[private] channels = ["*"]`, the subscribe key of
    /// --keys): each viewer then connects with a subscribe token, which the sidecar
    /// verifies before nginx answers.
    #[arg(long, conflicts_with = "url")]
    pub private: bool,
    /// Keep the stack's temp folder (configs and logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// The plugins `--plugins` may name.
const BENCH_PLUGINS: &[&str] = &["ban", "rate_limit", "blacklist"];

/// A deployment the bench started; dropping it stops every process.
pub struct Stack {
    dir: Option<tempfile::TempDir>,
    /// Stopped before Redis, so no sidecar sees it go.
    hosts: Vec<Host>,
    redis: Option<RedisServer>,
    pub private_key: PathBuf,
    /// With --private: the subscribe key's private half, which signs the viewers' token.
    pub subscribe_key: Option<PathBuf>,
}

/// One chat host: nginx with the module and its sidecar.
struct Host {
    /// Stopped before the sidecar (field order), as an operator would.
    nginx: ChildGuard,
    sidecar: ChildGuard,
    /// The sidecar binary, to start another with the same configuration (a restart).
    sidecar_program: PathBuf,
    port: u16,
    sidecar_port: u16,
    relay: PathBuf,
    folder: PathBuf,
}

impl StackArgs {
    /// Refuses combinations that cannot work, before anything is started.
    pub fn check(&self) -> Result<(), BenchError> {
        if self.broker == Broker::Memory && self.hosts > 1 {
            return Err(BenchError::Setup(format!(
                "--hosts {} needs --broker redis: the memory broker keeps channels inside one \
                 sidecar, so it serves exactly one host",
                self.hosts
            )));
        }
        if self.broker == Broker::Memory && self.redis_url.is_some() {
            return Err(BenchError::Setup(
                "--redis-url needs --broker redis (the memory broker uses no Redis)".into(),
            ));
        }
        if let Some(other) = self
            .plugins
            .iter()
            .find(|p| !BENCH_PLUGINS.contains(&p.as_str()))
        {
            return Err(BenchError::Setup(format!(
                "--plugins {other:?}: the bench can run {} (webhook and publish_hook need an \
                 endpoint of the operator's)",
                BENCH_PLUGINS.join(", ")
            )));
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(BenchError::Setup(format!(
                    "--redis-url {:?}: use redis://host:port (or unix:///path/to/redis.sock)",
                    redact(url)
                )));
            }
        }
        Ok(())
    }

    fn resolve_build_dir(&self) -> Result<PathBuf, BenchError> {
        let holds_all = |d: &Path| {
            ["nginx", "ngx_http_chatup_module.so", "chatup-sidecar"]
                .iter()
                .all(|f| d.join(f).is_file())
        };
        if let Some(explicit) = self.build_dir.as_ref() {
            return if holds_all(explicit) {
                Ok(explicit.clone())
            } else {
                Err(BenchError::Setup(format!(
                    "{} does not hold nginx, ngx_http_chatup_module.so and chatup-sidecar \
                     (run scripts/setup)",
                    explicit.display()
                )))
            };
        }
        let candidates = [
            std::env::var_os("CHATUP_BUILD_DIR").map(PathBuf::from),
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf)),
            Some(PathBuf::from("build")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|d| holds_all(d))
            .ok_or_else(|| {
                BenchError::Setup(
                    "no build folder with nginx, ngx_http_chatup_module.so and chatup-sidecar: \
                 run scripts/setup, or pass --build-dir, or --url for a running chatup"
                        .into(),
                )
            })
    }

    fn resolve_keys(&self, build: &Path) -> Result<PathBuf, BenchError> {
        let candidates = [
            self.keys.clone(),
            Some(build.join("../nginx-conf/example-keys")),
            Some(PathBuf::from("nginx-conf/example-keys")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|d| d.join("jwt-private.pem").is_file() && d.join("jwt-public.pem").is_file())
            .ok_or_else(|| {
                BenchError::Setup(
                    "no jwt-private.pem + jwt-public.pem found: pass --keys DIR".into(),
                )
            })
    }

    /// Starts Redis (when the bench runs its own), then each host's sidecar and nginx, and
    /// waits until all of them answer.
    pub fn start(&self) -> Result<Stack, BenchError> {
        self.check()?;
        let build = self.resolve_build_dir()?;
        let keys = self.resolve_keys(&build)?;
        let dir = tempfile::Builder::new().prefix("chatup-bench-").tempdir()?;
        let d = dir.path().to_path_buf();
        let abs = |p: PathBuf| fs::canonicalize(&p).unwrap_or(p);
        let (build, keys) = (abs(build), abs(keys));
        let mut stack = Stack {
            dir: Some(dir),
            hosts: Vec::new(),
            redis: None,
            private_key: keys.join("jwt-private.pem"),
            subscribe_key: self.private.then(|| keys.join("subscribe-private.pem")),
        };
        if self.private && !keys.join("subscribe-public.pem").is_file() {
            return Err(BenchError::Setup(format!(
                "--private needs subscribe-private.pem and subscribe-public.pem in {}",
                keys.display()
            )));
        }
        if self.keep {
            if let Some(dir) = stack.dir.take() {
                eprintln!("stack folder kept: {}", dir.keep().display());
            }
        }
        let redis_url = match (self.broker, &self.redis_url) {
            (Broker::Memory, _) => None,
            (Broker::Redis, Some(url)) => Some(url.clone()),
            (Broker::Redis, None) => {
                let server = RedisServer::start(&d.join("redis"))?;
                let url = format!("redis://{}", server.addr);
                stack.redis = Some(server);
                Some(url)
            }
        };
        let redis = redis_url.map(|url| RedisLink {
            url,
            key_prefix: format!("chatup-bench-{}", run_stamp()),
        });

        for i in 0..self.hosts as usize {
            let host = self.start_host(&d.join(format!("host{i}")), i, &build, &keys, &redis)?;
            stack.hosts.push(host);
        }
        for host in &mut stack.hosts {
            host.wait_ready(self.workers as usize)?;
        }
        // Workers connect their relay as they start; give them a moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(stack)
    }

    fn start_host(
        &self,
        d: &Path,
        index: usize,
        build: &Path,
        keys: &Path,
        redis: &Option<RedisLink>,
    ) -> Result<Host, BenchError> {
        fs::create_dir_all(d.join("temp"))?;
        let port = free_port()?;
        let sidecar_port = free_port()?;
        let relay = d.join("relay.sock");

        let mut toml = format!(
            "[relay]\nsocket = {relay:?}\nsocket_mode = \"0666\"\n\n\
             [http]\nlisten = \"127.0.0.1:{sidecar_port}\"\n\n\
             [auth]\npublic_key_file = {public:?}\n\n\
             # The plugins of --plugins (none: the core publish path); the rate limit has\n\
             # a bound the load never reaches, so it counts every message but refuses none.\n\
             [plugins]\nchain = {chain:?}\n\n\
             [rate_limit]\nmessages = 1000000000\nper_seconds = 1\n\n\
             [blacklist]\nwords = [\"spam\", \"scam\", \"casino\"]\nmuted = [\"darn\"]\n\n\
             [log]\nlevel = \"warn\"\n",
            relay = relay.display().to_string(),
            public = keys.join("jwt-public.pem").display().to_string(),
            chain = self.plugins,
        );
        if self.private {
            toml.push_str(&format!(
                "\n[private]\nchannels = [\"*\"]\npublic_key_file = {:?}\n",
                keys.join("subscribe-public.pem").display().to_string()
            ));
        }
        if let Some(redis) = redis {
            // Keys of their own (this run's prefix) that do not outlive the run by much,
            // for when the Redis is the operator's.
            toml.push_str(&format!(
                "\n[redis]\nurl = {url:?}\nkey_prefix = {prefix:?}\n\n\
                 [history]\nttl_seconds = {REDIS_KEY_TTL_SECONDS}\n\n\
                 [host]\nid = \"bench-{index}\"\npublic_url = \"http://127.0.0.1:{port}\"\n",
                url = redis.url,
                prefix = redis.key_prefix,
            ));
        }
        fs::write(d.join("chatup.toml"), toml)?;
        for (name, text) in LOCATIONS {
            fs::write(d.join(name), text)?;
        }
        fs::write(
            d.join("nginx.conf"),
            nginx_conf(
                d,
                build,
                self.workers,
                self.cache,
                port,
                sidecar_port,
                &relay,
            ),
        )?;

        let sidecar_program = build.join("chatup-sidecar");
        let sidecar = spawn_sidecar(&sidecar_program, d)?;
        let nginx = ChildGuard::adopt(
            Command::new(build.join("nginx"))
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(d.join("nginx.err"))?)
                .spawn()?,
        );
        Ok(Host {
            nginx,
            sidecar,
            sidecar_program,
            port,
            sidecar_port,
            relay,
            folder: d.to_path_buf(),
        })
    }
}

/// Starts the sidecar of the host in `folder` with its `chatup.toml`; its output goes on
/// at the end of the folder's logs, so a restarted sidecar's follows the first's.
fn spawn_sidecar(program: &Path, folder: &Path) -> Result<ChildGuard, BenchError> {
    let log = |name: &str| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(folder.join(name))
    };
    // The processes stay in the bench's process group, so a Ctrl-C stops them too.
    Ok(ChildGuard::adopt(
        Command::new(program)
            .arg("--config")
            .arg(folder.join("chatup.toml"))
            .stdin(Stdio::null())
            .stdout(log("sidecar.log")?)
            .stderr(log("sidecar.err")?)
            .spawn()?,
    ))
}

/// A Redis the sidecars are pointed at.
struct RedisLink {
    url: String,
    key_prefix: String,
}

/// How long a channel's keys live after its last publish when the bench uses Redis: enough
/// for any run, short enough that an operator's Redis forgets the bench soon.
const REDIS_KEY_TTL_SECONDS: u64 = 600;

/// A Redis URL without its password, fit for a result line.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Stack {
    /// Each host's nginx address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.hosts
            .iter()
            .map(|h| SocketAddr::from(([127, 0, 0, 1], h.port)))
            .collect()
    }

    /// The nginx master of every host.
    pub fn nginx_masters(&self) -> Vec<u32> {
        self.hosts.iter().map(|h| h.nginx.id()).collect()
    }

    /// The nginx workers of every host.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.hosts
            .iter()
            .flat_map(|h| procfs::children_of(h.nginx.id()))
            .collect()
    }

    /// Every host's sidecar.
    pub fn sidecar_pids(&self) -> Vec<u32> {
        self.hosts.iter().map(|h| h.sidecar.id()).collect()
    }

    /// The redis-server the bench started, if it did.
    pub fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(|r| r.child.id())
    }

    /// Every host's sidecar HTTP address (its `/metrics`).
    pub fn sidecar_addrs(&self) -> Vec<SocketAddr> {
        self.hosts
            .iter()
            .map(|h| SocketAddr::from(([127, 0, 0, 1], h.sidecar_port)))
            .collect()
    }

    /// Sends SIGTERM to every host's sidecar: the first half of a restart.
    pub fn terminate_sidecars(&self) {
        for host in &self.hosts {
            host.sidecar
                .signal(nix::sys::signal::Signal::SIGTERM as i32);
        }
    }

    /// Whether every host's sidecar has exited.
    pub fn sidecars_exited(&mut self) -> bool {
        self.hosts.iter_mut().all(|h| !h.sidecar.running())
    }

    /// Starts a new sidecar on every host, with the configuration and ports of the one
    /// before (which must have exited).
    pub fn start_sidecars(&mut self) -> Result<(), BenchError> {
        for host in &mut self.hosts {
            host.sidecar = spawn_sidecar(&host.sidecar_program, &host.folder)?;
        }
        Ok(())
    }

    /// Whether every host's sidecar answers on its HTTP port and has its relay socket; an
    /// error with its log when one has exited.
    pub fn sidecars_ready(&mut self) -> Result<bool, BenchError> {
        for host in &mut self.hosts {
            still_running(
                &mut host.sidecar,
                "chatup-sidecar",
                &host.folder.join("sidecar.err"),
            )?;
            let up =
                host.relay.exists() && TcpStream::connect(("127.0.0.1", host.sidecar_port)).is_ok();
            if !up {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Host {
    fn folder(&self) -> String {
        if self.folder.exists() {
            self.folder.display().to_string()
        } else {
            "(removed temp folder)".into()
        }
    }

    fn wait_ready(&mut self, workers: usize) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            still_running(
                &mut self.sidecar,
                "chatup-sidecar",
                &self.folder.join("sidecar.err"),
            )?;
            still_running(&mut self.nginx, "nginx", &self.folder.join("error.log"))?;
            let up = TcpStream::connect(("127.0.0.1", self.sidecar_port)).is_ok()
                && self.relay.exists()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && procfs::children_of(self.nginx.id()).len() == workers;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "nginx and the sidecar did not come up within 20 s; logs in {} (--keep \
                     keeps them)",
                    self.folder()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An error with the end of `log` when `child` (`name`) has exited.
fn still_running(child: &mut ChildGuard, name: &str, log: &Path) -> Result<(), BenchError> {
    match child.exited() {
        Some(status) => Err(BenchError::Setup(format!(
            "{name} exited ({status}); its log: {}",
            tail(log)
        ))),
        None => Ok(()),
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Every guard stops its process (SIGTERM, up to 10 s, then SIGKILL): the hosts, then
        // Redis, before the folder they write in is removed.
        self.hosts.clear();
        self.redis = None;
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    if tail.is_empty() {
        format!("{} is empty", path.display())
    } else {
        tail
    }
}

/// A redis-server the bench runs: a free port of 127.0.0.1, no persistence, its folder
/// inside the bench's.
struct RedisServer {
    child: ChildGuard,
    addr: SocketAddr,
}

impl RedisServer {
    fn start(dir: &Path) -> Result<Self, BenchError> {
        fs::create_dir_all(dir)?;
        let program = redis_server_program()?;
        // Another process may take the free port before redis-server binds it: try others.
        let mut last_error = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let log = dir.join("redis.log");
            let _ = fs::remove_file(&log);
            let child = Command::new(&program)
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("redis.err"))?)
                .spawn()
                .map_err(|e| {
                    BenchError::Setup(format!(
                        "start {}: {e} (scripts/setup installs redis-server)",
                        program.display()
                    ))
                })?;
            let mut child = ChildGuard::adopt(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.exited() {
                    last_error = format!("redis-server exited ({status}): {}", tail(&log));
                    break;
                }
                if ping(addr) {
                    return Ok(Self { child, addr });
                }
                if Instant::now() > deadline {
                    drop(child);
                    return Err(BenchError::Setup(format!(
                        "redis-server on {addr} did not answer PING within 10 s: {}",
                        tail(&log)
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        Err(BenchError::Setup(last_error))
    }
}

/// redis-server from PATH, else /usr/bin/redis-server.
fn redis_server_program() -> Result<PathBuf, BenchError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BenchError::Setup(
                "--broker redis starts a redis-server, and none is installed (scripts/setup \
                 installs it); or pass --redis-url for a running Redis"
                    .into(),
            )
        })
}

/// Whether a Redis answers PING at `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The locations nginx-conf/chatup.conf includes: built in, so the bench runs from anywhere.
const LOCATIONS: [(&str, &str); 2] = [
    (
        "chatup-locations.conf",
        include_str!("../../nginx-conf/chatup-locations.conf"),
    ),
    (
        "chatup-publish-locations.conf",
        include_str!("../../nginx-conf/chatup-publish-locations.conf"),
    ),
];

fn nginx_conf(
    dir: &Path,
    build: &Path,
    workers: u32,
    cache: u32,
    port: u16,
    sidecar_port: u16,
    relay: &Path,
) -> String {
    let d = dir.display();
    let user = chatup_tests::env::user_directive();
    let temp_paths = chatup_tests::env::temp_paths(dir);
    format!(
        r#"load_module {module};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
{user}pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 19000;
}}

http {{
    access_log off;
{temp_paths}
    chatup_relay_socket {relay};
    chatup_cache_messages {cache};

    map $http_upgrade $chatup_connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    geo $chatup_admin_denied {{
        default 0;
    }}
    geo $chatup_metrics_denied {{
        default 0;
    }}

    # Kept-alive connections to the sidecar, as nginx-conf/chatup.conf has them: without,
    # every POST /pub opens one.
    upstream chatup_sidecar {{
        server 127.0.0.1:{sidecar_port};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;

        location /sub/ {{
            chatup_subscribe;
        }}

        # The packaged locations, written next to this file.
        include chatup-publish-locations.conf;
        include chatup-locations.conf;
    }}
}}
"#,
        module = build.join("ngx_http_chatup_module.so").display(),
        relay = relay.display(),
    )
}
