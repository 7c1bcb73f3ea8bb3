//! Starting a `chatup-sidecar` process, and the HTTP probe that says it is ready.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::paths::sidecar_bin;
use crate::process::ChildGuard;

/// Spawns `chatup-sidecar --config <config> [--set kv]… run` in its own process group, its
/// stdout and stderr appended to `log`.
pub(super) fn spawn_sidecar(config: &Path, set: &[String], log: &Path) -> ChildGuard {
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
        .stderr(log);
    ChildGuard::spawn(&mut cmd).expect("spawn chatup-sidecar")
}

/// GET /health on `addr` answers 200.
pub(super) fn health_ok(addr: SocketAddr) -> bool {
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
