//! The subscriber's one timer: the ping, or, once closing, the close timeout; a poll's
//! timeout.

use std::ptr::addr_of_mut;

use chatup_wire::close;
use ngx::ffi::ngx_event_t;

use super::{attached_of, close::finalize, write::flush, SubscriberConn};
use crate::ffi::worker::with_worker;
use crate::handshake::Transport;

/// Longest a closing connection waits for its close frame to drain and the client's reply.
const CLOSE_TIMEOUT_MS: u64 = 10_000;

/// The subscriber's ping (or close) timer: in the request's ctx while it has one, then the
/// connection's read event.
///
/// # Safety
/// `conn` must be a live subscriber.
pub(super) unsafe fn timer_of(conn: *mut SubscriberConn) -> *mut ngx_event_t {
    // SAFETY: conn is live; while r is set it is the live request and its ctx an Attached.
    unsafe {
        let r = (*conn).r;
        if !r.is_null() {
            let attached = attached_of(r);
            if !attached.is_null() {
                return addr_of_mut!((*attached).timer);
            }
        }
        (*(*conn).c).read
    }
}

/// The ping interval passed, or the close timeout.
///
/// # Safety
/// `conn` must be a live subscriber.
pub(super) unsafe fn on_timer(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); flush reports whether it still is.
    unsafe {
        if (*conn).closing_armed {
            finalize(conn);
            return;
        }
        let key = (*conn).key;
        if (*conn).transport == Transport::Poll {
            super::poll::on_timeout(conn);
            return;
        }
        // Only a WebSocket answers pings; a stream's comment only keeps proxies awake.
        let answers = (*conn).transport == Transport::WebSocket;
        if answers && (*conn).ping_due && !(*conn).heard {
            with_worker(|w| w.hub.close(key, close::PING_TIMEOUT, "no answer to ping"));
        } else {
            (*conn).heard = false;
            (*conn).ping_due = true;
            with_worker(|w| w.hub.send_ping(key));
        }
        if flush(conn) && !(*conn).closing_armed && (*conn).ping_interval_ms > 0 {
            ngx::ffi::ngx_add_timer(timer_of(conn), (*conn).ping_interval_ms as _);
        }
    }
}

/// Starts the close timeout on the subscriber's timer, once (it replaces the ping).
///
/// # Safety
/// `conn` must be a live subscriber.
pub(super) unsafe fn arm_close_timeout(conn: *mut SubscriberConn) {
    // SAFETY: conn is live, and so is its timer.
    unsafe {
        if !(*conn).closing_armed {
            (*conn).closing_armed = true;
            ngx::ffi::ngx_add_timer(timer_of(conn), CLOSE_TIMEOUT_MS as _);
        }
    }
}
