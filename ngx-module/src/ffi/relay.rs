//! The worker's Unix-socket connection to the sidecar: connect, reconnect (at once, then with
//! backoff up to 1 s: [`crate::backoff`] says why), read frames into the hub, write what the
//! hub queued, answer the requests the frames answer (admissions, publishes). While it is
//! down, subscribers stay connected; on reconnect the hub resubscribes from its last
//! positions.

use std::ffi::c_void;
use std::ptr;

use chatup_wire::{decode, ToWorker, WireError};
use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_t, ngx_get_connection, ngx_handle_read_event,
    ngx_handle_write_event, ngx_log_t, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN,
    NGX_OK,
};
use ngx::ngx_log_error;

use super::worker::with_worker;
use super::{free_timer, new_timer, now_ms, publish, subscriber};
use crate::backoff::{Backoff, HEALTHY_AFTER_MS};

const READ_CHUNK: usize = 64 * 1024;

pub struct Relay {
    path: String,
    log: *mut ngx_log_t,
    /// The connection while it is up; null while down.
    conn: *mut ngx_connection_t,
    connected_at: u64,
    backoff: Backoff,
    retry_timer: *mut ngx_event_t,
    /// Posted to write what was queued once the events at hand are handled (several
    /// publishes read in one turn of the event loop then go out in one write).
    flush_event: *mut ngx_event_t,
    /// Bytes received that do not make a whole frame yet.
    inbuf: Vec<u8>,
    /// The current outage was already logged at warning level; repeats go to info.
    outage_logged: bool,
}

impl Relay {
    pub fn new(path: &str, log: *mut ngx_log_t) -> Self {
        Self {
            path: path.to_owned(),
            log,
            conn: ptr::null_mut(),
            connected_at: 0,
            backoff: Backoff::default(),
            retry_timer: new_timer(Some(on_retry_timer), log),
            flush_event: new_timer(Some(on_flush_event), log),
            inbuf: Vec::new(),
            outage_logged: false,
        }
    }
}

fn unix_addr(path: &str) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return None;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Some((addr, len as libc::socklen_t))
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Tries to connect now; on failure schedules the next try.
pub fn connect() {
    if let Err(reason) = try_connect() {
        fail(&reason);
    }
}

/// Connects at once if the relay is down, without logging or touching the backoff when it
/// cannot: a publish that comes while the worker waits to retry finds a sidecar that is back
/// without waiting for the timer. Returns whether the relay is up.
pub fn connect_if_down() -> bool {
    let Some((up, timer)) = with_worker(|w| (!w.relay.conn.is_null(), w.relay.retry_timer)) else {
        return false;
    };
    if up {
        return true;
    }
    if try_connect().is_err() {
        return false;
    }
    if !timer.is_null() {
        // SAFETY: the retry timer lives as long as the worker state; the relay is up, so the
        // pending retry must not open a second connection.
        unsafe { super::cancel_timer(timer) };
    }
    true
}

/// Opens and registers the relay connection; the reason when it cannot.
fn try_connect() -> Result<(), String> {
    let Some((path, log, up)) =
        with_worker(|w| (w.relay.path.clone(), w.relay.log, !w.relay.conn.is_null()))
    else {
        return Ok(());
    };
    if up {
        return Ok(());
    }
    let fd = open_socket(&path)?;
    // SAFETY: fd is a connected socket we own; nginx takes it over.
    let c = unsafe { ngx_get_connection(fd, log) };
    if c.is_null() {
        // SAFETY: fd is ours and not registered anywhere.
        unsafe { libc::close(fd) };
        return Err("no free connection (raise worker_connections)".to_owned());
    }
    // SAFETY: c was just handed out by nginx for fd and is ours to set up.
    let registered = unsafe {
        (*c).log = log;
        (*(*c).read).log = log;
        (*(*c).write).log = log;
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        // Marked idle so that nginx, when the worker starts a graceful shutdown
        // (reload, quit), calls on_read at once with `close` set: the viewers are
        // told to move then, not at the next stats tick.
        (*c).set_idle(1);
        ngx_handle_read_event((*c).read, 0) == NGX_OK as isize
    };
    if !registered {
        // SAFETY: c is ours; closing releases fd too.
        unsafe { ngx_close_connection(c) };
        return Err("cannot watch the relay socket".to_owned());
    }
    let pid = std::process::id();
    with_worker(|w| {
        w.relay.conn = c;
        w.relay.connected_at = now_ms();
        w.relay.inbuf.clear();
        w.relay.outage_logged = false;
        w.hub.relay_connected(pid);
    });
    ngx_log_error!(NGX_LOG_NOTICE, log, "chatup: relay connected to {}", path);
    flush();
    Ok(())
}

fn open_socket(path: &str) -> Result<i32, String> {
    let (addr, len) = unix_addr(path).ok_or_else(|| format!("socket path too long: {path}"))?;
    // SAFETY: plain socket creation; the fd is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(format!("socket(): {}", errno_text()));
    }
    // SAFETY: addr is a valid sockaddr_un of length len. A Unix-socket connect completes
    // or fails at once (EAGAIN means the sidecar's backlog is full: try again later).
    let rc = unsafe { libc::connect(fd, ptr::addr_of!(addr).cast(), len) };
    if rc != 0 {
        let err = format!("connect({path}): {}", errno_text());
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    Ok(fd)
}

/// Logs a failed attempt and schedules the next one.
fn fail(reason: &str) {
    let Some((log, first, delay, timer)) = with_worker(|w| {
        let first = !w.relay.outage_logged;
        w.relay.outage_logged = true;
        let delay = w.relay.backoff.next_delay_ms(ngx::ffi::ngx_random() as u64);
        (w.relay.log, first, delay, w.relay.retry_timer)
    }) else {
        return;
    };
    let level = if first { NGX_LOG_WARN } else { NGX_LOG_INFO };
    ngx_log_error!(
        level,
        log,
        "chatup: relay unavailable ({}); subscribers stay connected, retrying in {} ms",
        reason,
        delay
    );
    // A 0 ms timer fires on the next turn of the event loop: at once, but not from inside
    // the read or write handler that saw the connection break.
    // SAFETY: the retry timer lives as long as the worker state.
    unsafe { ngx::ffi::ngx_add_timer(timer, delay as _) };
}

extern "C" fn on_retry_timer(_ev: *mut ngx_event_t) {
    connect();
}

/// Drops the connection and schedules a reconnect.
fn disconnect(reason: &str) {
    let Some(c) = with_worker(|w| {
        let c = std::mem::replace(&mut w.relay.conn, ptr::null_mut());
        if now_ms().saturating_sub(w.relay.connected_at) >= HEALTHY_AFTER_MS {
            w.relay.backoff.reset();
        }
        w.relay.inbuf = Vec::new();
        w.hub.relay_disconnected();
        c
    }) else {
        return;
    };
    if !c.is_null() {
        // SAFETY: c is the relay connection, now forgotten by the worker state.
        unsafe { ngx_close_connection(c) };
    }
    // Requests waiting for the sidecar's verdict or answer get a 503 now.
    subscriber::answer_verdicts();
    publish::answer_waiting();
    fail(&format!("relay lost: {reason}"));
}

/// Closes the relay for good (worker exit).
pub fn shut_down() {
    let Some((c, timer, flush_event)) = with_worker(|w| {
        let c = std::mem::replace(&mut w.relay.conn, ptr::null_mut());
        let timer = std::mem::replace(&mut w.relay.retry_timer, ptr::null_mut());
        let flush_event = std::mem::replace(&mut w.relay.flush_event, ptr::null_mut());
        (c, timer, flush_event)
    }) else {
        return;
    };
    if !c.is_null() {
        // SAFETY: c is the relay connection, now forgotten by the worker state.
        unsafe { ngx_close_connection(c) };
    }
    // SAFETY: both came from new_timer and the state no longer refers to them; a posted
    // event leaves the posted queue before it is freed.
    unsafe {
        if !flush_event.is_null() && (*flush_event).posted() != 0 {
            ngx::ffi::ngx_delete_posted_event(flush_event);
        }
        free_timer(flush_event);
        free_timer(timer);
    }
}

/// Writes what the hub queued for the sidecar once the events of this turn of the event
/// loop are handled.
pub fn flush_soon() {
    let Some(ev) = with_worker(|w| w.relay.flush_event) else {
        return;
    };
    if ev.is_null() {
        return;
    }
    // SAFETY: the flush event lives as long as the worker state (freed by shut_down, which
    // takes it out of the posted queue first); the queue belongs to this thread.
    unsafe { ngx::ffi::ngx_post_event(ev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events)) };
}

extern "C" fn on_flush_event(_ev: *mut ngx_event_t) {
    flush();
}

/// Writes what the hub queued for the sidecar.
pub fn flush() {
    let Some(result) = with_worker(|w| {
        let c = w.relay.conn;
        if c.is_null() {
            return Ok(None);
        }
        let out = w.hub.relay_output();
        while !out.is_empty() {
            // SAFETY: c is the live relay connection and out a valid buffer.
            let n = unsafe { libc::write((*c).fd, out.as_ptr().cast::<c_void>(), out.len()) };
            if n > 0 {
                out.drain(..n as usize);
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    // SAFETY: as above; ready=0 makes nginx wait for the next write event.
                    unsafe { (*(*c).write).set_ready(0) };
                    break;
                }
                _ => return Err(format!("write: {err}")),
            }
        }
        Ok(Some(c))
    }) else {
        return;
    };
    match result {
        Ok(Some(c)) => {
            // SAFETY: c is the live relay connection.
            if unsafe { ngx_handle_write_event((*c).write, 0) } != NGX_OK as isize {
                disconnect("cannot watch the relay socket");
            }
        }
        Ok(None) => {}
        Err(reason) => disconnect(&reason),
    }
}

extern "C" fn on_write(_ev: *mut ngx_event_t) {
    flush();
}

extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: ev is the relay's read event, whose data is its live connection.
    let shutting_down = unsafe {
        let c = (*ev).data.cast::<ngx_connection_t>();
        let closing = !c.is_null() && (*c).close() != 0;
        if closing {
            // Set by nginx's closing of idle connections at a graceful shutdown; the
            // relay itself stays until the worker exits.
            (*c).set_close(0);
        }
        closing
    };
    if shutting_down {
        super::worker::tell_subscribers_to_move();
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let Some(c) = with_worker(|w| w.relay.conn) else {
            return;
        };
        if c.is_null() {
            return;
        }
        // SAFETY: c is the live relay connection and chunk a writable buffer.
        let n = unsafe { libc::read((*c).fd, chunk.as_mut_ptr().cast::<c_void>(), chunk.len()) };
        if n == 0 {
            disconnect("the sidecar closed the connection");
            return;
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    // SAFETY: ev is the relay's read event; ready=0 waits for more data.
                    unsafe {
                        (*ev).set_ready(0);
                        if ngx_handle_read_event(ev, 0) != NGX_OK as isize {
                            disconnect("cannot watch the relay socket");
                        }
                    }
                    break;
                }
                _ => {
                    disconnect(&format!("read: {err}"));
                    return;
                }
            }
        }
        let received = &chunk[..n as usize];
        let outcome = with_worker(|w| apply_frames(w, received));
        match outcome {
            Some(Ok(dirty)) => {
                for (_, conn) in dirty {
                    // SAFETY: the hub only hands out connections that are alive.
                    unsafe { subscriber::flush(conn) };
                }
                subscriber::answer_verdicts();
                publish::answer_waiting();
            }
            Some(Err(err)) => {
                if let Some(log) = with_worker(|w| w.relay.log) {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        log,
                        "chatup: bad frame from the sidecar: {}",
                        err
                    );
                }
                disconnect("protocol error");
                return;
            }
            None => return,
        }
    }
    // Resubscribes or stats queued while handling frames.
    flush();
}

type Dirty = Vec<(usize, *mut subscriber::SubscriberConn)>;

fn apply_frames(w: &mut super::worker::Worker, received: &[u8]) -> Result<Dirty, WireError> {
    let relay = &mut w.relay;
    relay.inbuf.extend_from_slice(received);
    let mut at = 0;
    let result = loop {
        match decode::<ToWorker>(&relay.inbuf[at..]) {
            Ok(Some((frame, used))) => {
                at += used;
                w.hub.handle_relay_frame(frame);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    relay.inbuf.drain(..at);
    if relay.inbuf.is_empty() && relay.inbuf.capacity() > READ_CHUNK {
        relay.inbuf = Vec::new();
    }
    result.map(|()| w.hub.take_dirty())
}
