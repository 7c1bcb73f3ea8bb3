//! The server under test: either a chatup stack the bench starts itself (nginx with the
//! module and the sidecar, from `build/`, in a temp folder, on free loopback ports), or one
//! an operator already runs (`--url`).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::BenchError;

/// Where a broker keeps channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// The sidecar's embedded broker (one host, no Redis).
    Memory,
}

/// How the bench starts its own stack.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Folder with nginx, ngx_http_chatup_module.so and chatup-sidecar (what scripts/setup
    /// makes). Default: $CHATUP_BUILD_DIR, else the folder of this program when it holds
    /// them, else ./build.
    #[arg(long, value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
    /// nginx worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Broker of the sidecar.
    #[arg(long, value_enum, default_value_t = Broker::Memory)]
    pub broker: Broker,
    /// `chatup_cache_messages`.
    #[arg(long, default_value_t = 100)]
    pub cache: u32,
    /// Folder with jwt-private.pem / jwt-public.pem. Default: the example keys.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Keep the stack's temp folder (configs and logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// A stack the bench started; dropping it stops both processes.
pub struct Stack {
    dir: Option<tempfile::TempDir>,
    nginx: Child,
    sidecar: Child,
    pub port: u16,
    pub private_key: PathBuf,
}

impl StackArgs {
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

    /// Starts the sidecar, then nginx, and waits until both answer.
    pub fn start(&self) -> Result<Stack, BenchError> {
        let build = self.resolve_build_dir()?;
        let keys = self.resolve_keys(&build)?;
        let dir = tempfile::Builder::new().prefix("chatup-bench-").tempdir()?;
        let d = dir.path();
        fs::create_dir_all(d.join("temp"))?;
        let port = free_port()?;
        let sidecar_port = free_port()?;
        let relay = d.join("relay.sock");
        let abs = |p: PathBuf| fs::canonicalize(&p).unwrap_or(p);
        let (build, keys) = (abs(build), abs(keys));

        fs::write(
            d.join("chatup.toml"),
            format!(
                "[relay]\nsocket = {relay:?}\nsocket_mode = \"0666\"\n\n\
                 [http]\nlisten = \"127.0.0.1:{sidecar_port}\"\n\n\
                 [auth]\npublic_key_file = {public:?}\n\n[log]\nlevel = \"warn\"\n",
                relay = relay.display().to_string(),
                public = keys.join("jwt-public.pem").display().to_string(),
            ),
        )?;
        fs::write(
            d.join("nginx.conf"),
            nginx_conf(
                d,
                &build,
                self.workers,
                self.cache,
                port,
                sidecar_port,
                &relay,
            ),
        )?;

        let sidecar = Command::new(build.join("chatup-sidecar"))
            .arg("--config")
            .arg(d.join("chatup.toml"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(d.join("sidecar.log"))?)
            .stderr(fs::File::create(d.join("sidecar.err"))?)
            .spawn()?;
        let nginx = Command::new(build.join("nginx"))
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("nginx.err"))?)
            .spawn()?;
        let mut stack = Stack {
            dir: Some(dir),
            nginx,
            sidecar,
            port,
            private_key: keys.join("jwt-private.pem"),
        };
        if self.keep {
            if let Some(dir) = stack.dir.take() {
                eprintln!("stack folder kept: {}", dir.keep().display());
            }
        }
        stack.wait_ready(sidecar_port, self.workers as usize, &relay)?;
        Ok(stack)
    }
}

impl Stack {
    fn folder(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| d.path().display().to_string())
            .unwrap_or_else(|| "(kept folder)".into())
    }

    fn wait_ready(
        &mut self,
        sidecar_port: u16,
        workers: usize,
        relay: &Path,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.sidecar.try_wait() {
                return Err(BenchError::Setup(format!(
                    "chatup-sidecar exited ({status}); see its log in {}",
                    self.folder()
                )));
            }
            if let Ok(Some(status)) = self.nginx.try_wait() {
                return Err(BenchError::Setup(format!(
                    "nginx exited ({status}); see error.log and nginx.err in {}",
                    self.folder()
                )));
            }
            let up = TcpStream::connect(("127.0.0.1", sidecar_port)).is_ok()
                && relay.exists()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.worker_pids().len() == workers;
            if up {
                // Workers connect their relay as they start; give them a moment.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "nginx and the sidecar did not come up within 20 s; logs in {}",
                    self.folder()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        procfs::children_of(self.nginx.id())
    }

    pub fn sidecar_pid(&self) -> u32 {
        self.sidecar.id()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.nginx, &mut self.sidecar] {
            // SAFETY: kill(2) with the pid of a child we have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

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
    // SAFETY: geteuid(2) cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let proxy =
        format!("proxy_pass http://127.0.0.1:{sidecar_port};\n            proxy_http_version 1.1;");
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
    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;

    chatup_relay_socket {relay};
    chatup_cache_messages {cache};

    map $http_upgrade $chatup_connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;

        location /sub/ {{
            chatup_subscribe;
        }}

        location = /pub {{
            {proxy}
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $chatup_connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}

        location /pub/ {{
            {proxy}
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        module = build.join("ngx_http_chatup_module.so").display(),
        relay = relay.display(),
    )
}
