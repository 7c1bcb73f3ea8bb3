//! Process and socket facts from /proc (Linux).

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Pids whose parent is `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if ppid(pid) == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The parent of `pid`, from /proc/<pid>/stat.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Whether `pid` runs (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    !matches!(stat[close + 1..].split_whitespace().next(), Some("Z" | "X"))
}

/// The process title (argv joined with spaces; nginx rewrites it to e.g.
/// "nginx: worker process").
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The inode of the server-side TCP socket on `server` (a loopback address and port) whose
/// peer is a loopback client on `client_port`.
pub fn server_socket_inode(server: SocketAddrV4, client_port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    // /proc/net/tcp prints an address as its 32 bits in host (little-endian) order.
    let hex = |ip: Ipv4Addr| format!("{:08X}", u32::from_le_bytes(ip.octets()));
    let local = format!("{}:{:04X}", hex(*server.ip()), server.port());
    let remote_port = format!(":{client_port:04X}");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // The client's address is whichever loopback address the kernel picked.
        if f.len() > 9 && f[1] == local && f[2].ends_with(&remote_port) {
            return f[9].parse().ok().filter(|&i| i != 0);
        }
    }
    None
}

/// Whether process `pid` has a file descriptor on socket `inode`.
pub fn has_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| target.to_string_lossy() == want)
            .unwrap_or(false)
    })
}

/// Which of `candidates` holds the server side of the loopback connection from
/// `client_port` to `server`.
pub fn owner_of_connection(
    server: SocketAddrV4,
    client_port: u16,
    candidates: &[u32],
) -> Option<u32> {
    let inode = server_socket_inode(server, client_port)?;
    candidates
        .iter()
        .copied()
        .find(|&pid| has_socket(pid, inode))
}
