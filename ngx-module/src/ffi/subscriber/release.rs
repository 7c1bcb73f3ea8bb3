//! Taking the connection from its request once the 101 is out: the request is freed, the
//! connection's header buffers too, and the connection's events become ours.

use std::cell::Cell;
use std::ptr::{self, addr_of_mut};

use ngx::ffi::{
    ngx_connection_t, ngx_http_connection_t, ngx_http_free_request, ngx_int_t, ngx_msec_int_t,
    ngx_pfree, NGX_LOG_NOTICE, NGX_OK,
};
use ngx::ngx_log_error;

use super::{
    events::{on_read, on_write},
    timer::timer_of,
    SubscriberConn, ACTION,
};
use crate::ffi::cancel_timer;
use crate::handshake::Transport;

thread_local! {
    /// Whether this worker already said that some module keeps subscribers' requests alive.
    static KEPT_LOGGED: Cell<bool> = const { Cell::new(false) };
}

/// Frees the request once the 101 is out and nothing but us holds it; the connection is then
/// ours. Does nothing when it is already released or cannot be yet.
///
/// # Safety
/// `conn` must be a live subscriber, called from one of its connection's event handlers
/// (no nginx request code of this connection further up the stack).
pub(super) unsafe fn try_release(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); while r is set, it is the live request.
    unsafe {
        let r = (*conn).r;
        if r.is_null() || (*conn).transport == Transport::Poll || (*conn).filtered {
            return;
        }
        let c = (*conn).c;
        if (*r).count() != 1
            || (*r).blocked() != 0
            || !(*r).out.is_null()
            || (*c).buffered() != 0
            || !(*r).postponed.is_null()
            || !(*r).posted_requests.is_null()
            || (*r).discard_body() != 0
        {
            // The 101 is still going out, or something else uses the request: next event.
            return;
        }
        // Another module's cleanup (limit_conn counting connections, for one) expects the
        // request to live as long as the connection: then keep it.
        let mut ours = ptr::null_mut();
        let mut cln = (*(*r).pool).cleanup;
        while !cln.is_null() {
            if (*cln).data == conn.cast() {
                ours = cln;
            } else if (*cln).handler.is_some() {
                note_kept((*c).log);
                return;
            }
            cln = (*cln).next;
        }
        let mut hcln = (*r).cleanup;
        while !hcln.is_null() {
            // A finished upstream (a mirror's, say) leaves its entry with no handler.
            if (*hcln).handler.is_some() {
                note_kept((*c).log);
                return;
            }
            hcln = (*hcln).next;
        }
        if ours.is_null() {
            return;
        }
        (*ours).handler = None;
        let hc = (*r).http_connection;
        // The timer moves to the read event, which nothing else uses from now on.
        let rev = (*c).read;
        cancel_timer(rev);
        (*rev).set_timedout(0);
        (*rev).set_cancelable(1);
        let timer = timer_of(conn);
        if (*timer).timer_set() != 0 {
            let left =
                (*timer).timer.key.wrapping_sub(ngx::ffi::ngx_current_msec) as ngx_msec_int_t;
            ngx::ffi::ngx_del_timer(timer);
            ngx::ffi::ngx_add_timer(rev, left.max(1) as _);
        }

        // Logs the request (status 101) and destroys its pool; the error log's context
        // lives in the connection's pool and forgets the request.
        ngx_http_free_request(r, 0);
        (*conn).r = ptr::null_mut();
        (*c).data = conn.cast();
        // ngx_http_free_request marks the connection destroyed; it lives on, as ours.
        (*c).set_destroyed(0);
        (*(*c).log).action = ACTION.as_ptr().cast_mut();
        (*(*c).read).handler = Some(on_read);
        let wev = (*c).write;
        (*wev).handler = Some(on_write);
        // A send_timeout or limit_rate delay nginx may have set while writing the 101.
        cancel_timer(wev);
        (*wev).set_delayed(0);
        free_header_buffers(c, hc);
    }
}

/// Frees the connection's header buffers, as nginx does for an idle keep-alive connection.
///
/// # Safety
/// `c` must be a live HTTP connection without a request; `hc` its HTTP connection or null.
unsafe fn free_header_buffers(c: *mut ngx_connection_t, hc: *mut ngx_http_connection_t) {
    // SAFETY: c is live (caller's contract); its buffers were allocated from its pool, and
    // ngx_pfree only frees the large allocations it finds there.
    unsafe {
        let pool = (*c).pool;
        let b = (*c).buffer;
        if !b.is_null() && !(*b).start.is_null() {
            if ngx_pfree(pool, (*b).start.cast()) == NGX_OK as ngx_int_t {
                (*b).start = ptr::null_mut();
                (*b).end = ptr::null_mut();
                (*b).pos = ptr::null_mut();
                (*b).last = ptr::null_mut();
            } else {
                (*b).pos = (*b).start;
                (*b).last = (*b).start;
            }
        }
        if hc.is_null() {
            return;
        }
        // Large header buffers (large_client_header_buffers), free or busy.
        for list in [addr_of_mut!((*hc).free), addr_of_mut!((*hc).busy)] {
            let mut cl = *list;
            while !cl.is_null() {
                let next = (*cl).next;
                let buf = (*cl).buf;
                if !buf.is_null() && !(*buf).start.is_null() {
                    ngx_pfree(pool, (*buf).start.cast());
                }
                // ngx_free_chain: the link goes back to the pool's free list.
                (*cl).next = (*pool).chain;
                (*pool).chain = cl;
                cl = next;
            }
            *list = ptr::null_mut();
        }
        (*hc).nbusy = 0;
    }
}

/// Says once per worker that subscribers keep their requests (more memory each).
fn note_kept(log: *mut ngx::ffi::ngx_log_t) {
    if !KEPT_LOGGED.with(|k| k.replace(true)) {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "chatup: another module (limit_conn or the like) holds subscribers' requests: \
             they keep their request memory until they close"
        );
    }
}
