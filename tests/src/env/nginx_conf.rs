//! nginx.conf for a test's host, built on the packaged locations (`nginx-conf/*.conf`), and
//! `nginx -t` runs for the tests of the configuration.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::options::Options;
use super::paths::{module_path, nginx_bin, nginx_conf_dir};
use super::ports::free_port;
use crate::process::wait_timeout;

/// The `user` line of an nginx.conf started by root: its workers must be able to open the
/// relay socket the sidecar (run by the same user) made. Empty for anyone else.
pub fn user_directive() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    }
}

/// The `*_temp_path` lines of an nginx.conf whose files live in `dir` (under `temp/`, which
/// the caller makes): nginx's defaults are under its prefix, not writable by a test.
pub fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
"
    )
}

/// nginx.conf for a test.
pub(super) fn nginx_conf(
    dir: &Path,
    opts: &Options,
    listen: SocketAddr,
    sidecar: SocketAddr,
    relay: &Path,
) -> String {
    let d = dir.display();
    let user = user_directive();
    let temp_paths = temp_paths(dir);
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
{temp_paths}
    chatup_relay_socket {relay};
{cache}{http_extra}
    map $http_upgrade $chatup_connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    # Tests reach the admin API and /metrics from anywhere on loopback.
    geo $chatup_admin_denied {{
        default 0;
    }}
    geo $chatup_metrics_denied {{
        default 0;
    }}

    upstream chatup_sidecar {{
        server {sidecar};
    }}

    server {{
        listen {listen} reuseport{listen_extra};

        location /sub/ {{
            chatup_subscribe;
{sub_extra}        }}

        # The packaged locations, as nginx-conf/chatup.conf includes them, and the demo
        # tokens (only served with demo.private_key_file set).
        include {locations}/chatup-publish-locations.conf;
        include {locations}/chatup-locations.conf;
        include {locations}/chatup-demo-locations.conf;
{server_extra}
    }}
}}
"#,
        module = opts.nginx.module.display(),
        workers = opts.workers,
        relay = relay.display(),
        http_extra = indent(&opts.http_extra, 4),
        sub_extra = indent(&opts.sub_extra, 12),
        listen_extra = opts.listen_extra,
        server_extra = indent_block(&opts.server_extra, 8),
        locations = nginx_conf_dir().display(),
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
    nginx_test(&conf_path)
}

/// Runs `nginx -t -c <conf>` with the conf's folder as prefix (where relative `include`s
/// are found). Returns (success, output).
pub fn nginx_test(conf: &Path) -> (bool, String) {
    nginx_test_using(&nginx_bin(), conf)
}

/// Runs `binary -t` on `conf_text`, written to a temp folder that is also its prefix.
/// Returns (success, output).
pub fn nginx_test_with(binary: &Path, conf_text: &str) -> (bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("chatup-conftest-")
        .tempdir()
        .expect("create a temp folder");
    fs::create_dir(dir.path().join("logs")).expect("create logs/");
    let conf = dir.path().join("nginx.conf");
    fs::write(&conf, conf_text).expect("write nginx.conf");
    nginx_test_using(binary, &conf)
}

/// [`nginx_test`] with another nginx binary.
pub fn nginx_test_using(binary: &Path, conf: &Path) -> (bool, String) {
    let dir = conf.parent().expect("the conf is in a folder");
    let mut child = Command::new(binary)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(dir.join("error.log"))
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

/// A self-signed certificate for localhost and its key, made in `dir` (`cert.pem`,
/// `key.pem`) with openssl: for the TLS servers of the tests and the samples' placeholders.
pub fn self_signed_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-noenc", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
