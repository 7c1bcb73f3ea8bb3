//! Writing what the hub queued for the subscriber, and waiting for the socket when it is
//! full.

use std::ptr;

use ngx::ffi::{ngx_http_output_filter, ngx_int_t, NGX_AGAIN, NGX_ERROR, NGX_OK};

use super::{close::finalize, timer::arm_close_timeout, SubscriberConn};
use crate::ffi::worker::with_worker;
use crate::handshake::Transport;

/// Largest single write when several frames are queued.
const COALESCE_LIMIT: usize = 64 * 1024;

enum Written {
    /// Everything queued is out.
    Drained {
        closing: bool,
    },
    /// The socket is full; the write event will resume.
    Pending {
        closing: bool,
    },
    Failed,
}

/// Writes what the subscriber has queued. Returns `false` when the connection was closed
/// (then `conn` is gone).
///
/// # Safety
/// `conn` must be a live subscriber.
pub unsafe fn flush(conn: *mut SubscriberConn) -> bool {
    // SAFETY: conn is live (caller's contract); r (while set) and c belong to it.
    unsafe {
        if (*conn).transport == Transport::Poll {
            return super::poll::flush(conn);
        }
        if (*conn).filtered {
            return super::filtered::flush(conn);
        }
        let r = (*conn).r;
        let c = (*conn).c;
        // The 101 response may still sit in nginx's output chain: it goes first.
        if !r.is_null() && (!(*r).out.is_null() || (*c).buffered() != 0) {
            if ngx_http_output_filter(r, ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                finalize(conn);
                return false;
            }
            if !(*r).out.is_null() || (*c).buffered() != 0 {
                return watch_writes(conn);
            }
        }
        let Some(send) = (*c).send else {
            finalize(conn);
            return false;
        };
        let key = (*conn).key;
        let written = with_worker(|w| {
            let Some(sub) = w.hub.subscriber(key) else {
                return Written::Failed;
            };
            let closing = sub.closing().is_some();
            let written = loop {
                if sub.outbox.is_empty() {
                    break Written::Drained { closing };
                }
                let n = if sub.outbox.has_several() {
                    w.scratch.clear();
                    sub.outbox.gather(&mut w.scratch, COALESCE_LIMIT);
                    send(c, w.scratch.as_mut_ptr(), w.scratch.len())
                } else {
                    let front = sub.outbox.front();
                    send(c, front.as_ptr().cast_mut(), front.len())
                };
                if n > 0 {
                    sub.outbox.consume(n as usize);
                } else if n == NGX_AGAIN as isize {
                    break Written::Pending { closing };
                } else {
                    break Written::Failed;
                }
            };
            if w.scratch.capacity() > 2 * COALESCE_LIMIT {
                w.scratch = Vec::new();
            }
            written
        })
        .unwrap_or(Written::Failed);
        match written {
            Written::Failed => {
                finalize(conn);
                false
            }
            Written::Pending { closing } => {
                if closing {
                    arm_close_timeout(conn);
                }
                watch_writes(conn)
            }
            Written::Drained { closing: false } => true,
            Written::Drained { closing: true } => {
                if (*conn).input_done || (*conn).transport != Transport::WebSocket {
                    // The client's close came first (or it broke the protocol), or the
                    // transport has no close handshake: done.
                    finalize(conn);
                    return false;
                }
                // Our close is out; wait for the client's (or its EOF) until the timeout.
                arm_close_timeout(conn);
                true
            }
        }
    }
}

/// # Safety
/// `conn` must be a live subscriber.
unsafe fn watch_writes(conn: *mut SubscriberConn) -> bool {
    // SAFETY: conn is live; its connection too.
    unsafe {
        let c = (*conn).c;
        if ngx::ffi::ngx_handle_write_event((*c).write, 0) != NGX_OK as isize {
            finalize(conn);
            return false;
        }
    }
    true
}
