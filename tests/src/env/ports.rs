//! Loopback ports and addresses for the processes of a test.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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
pub(crate) fn parse_loopback(ip: &str) -> Ipv4Addr {
    let addr: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("{ip:?} is not an IPv4 address"));
    assert!(addr.is_loopback(), "{ip} is not a loopback address (127/8)");
    addr
}
