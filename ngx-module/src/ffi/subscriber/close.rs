//! Closing a subscriber and freeing what it holds, whether its request still owns the
//! connection or not.

use std::ffi::c_void;
use std::ptr;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_t, ngx_http_block_reading,
    ngx_http_close_connection, ngx_http_empty_handler, ngx_http_finalize_request,
    ngx_http_request_empty_handler, ngx_http_run_posted_requests, ngx_int_t, NGX_HTTP_CLOSE,
};

use super::{
    attached_of, events::on_read_attached, filtered::free_output, timer::timer_of, write::flush,
    SubscriberConn,
};
use crate::ffi::worker::forget_subscriber;
use crate::ffi::{cancel_timer, relay};

/// The request's pool is being destroyed while the connection is still the request's: the
/// subscriber leaves the hub.
pub(super) extern "C" fn on_request_freed(data: *mut c_void) {
    let conn = data.cast::<SubscriberConn>();
    // SAFETY: data is the SubscriberConn registered with this cleanup, freed only here or,
    // once the request is released (which disarms this cleanup), in `finalize`.
    unsafe {
        let c = (*conn).c;
        // The pool (and the timer in it) is about to go.
        let timer = timer_of(conn);
        cancel_timer(timer);
        // Events still pointing at us must not reach the freed subscriber. (nginx closes the
        // connection right after; this only matters if it did not.)
        let rev = (*c).read;
        let ours = on_read_attached as extern "C" fn(*mut ngx_event_t) as *const ();
        if (*rev).handler.map(|h| h as *const ()) == Some(ours) {
            (*rev).handler = Some(ngx_http_empty_handler);
            (*(*c).write).handler = Some(ngx_http_empty_handler);
        }
        let attached = attached_of((*conn).r);
        if !attached.is_null() {
            free_output(std::mem::replace(&mut (*attached).out, ptr::null_mut()));
        }
        if (*conn).key != usize::MAX {
            forget_subscriber((*conn).key);
            // Its last channels may have been unsubscribed.
            relay::flush();
        }
        drop(Box::from_raw(conn));
    }
}

/// Sends what can be sent at once (a close frame, at worker exit) and closes.
///
/// # Safety
/// `conn` must be a live subscriber.
pub unsafe fn close_now(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); flush reports whether it still is.
    unsafe {
        let carrier = carrier_of(conn);
        if flush(conn) {
            finalize(conn);
        }
        // The worker exits right after: the connection an HTTP/2 stream rode on would be
        // left open (its other streams, if any, go with it).
        if !carrier.is_null() && (*carrier).fd != -1 {
            ngx_close_connection(carrier);
        }
    }
}

/// The connection under a subscriber that is an HTTP/2 stream (a poll, or a filtered SSE
/// stream), or null. It lives in the cycle's connection table, so it can be looked at after
/// the stream is gone.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn carrier_of(conn: *mut SubscriberConn) -> *mut ngx_connection_t {
    #[cfg(ngx_feature = "http_v2")]
    // SAFETY: conn is live; while r is set it is its live request, and a live stream's
    // HTTP/2 connection is live.
    unsafe {
        let r = (*conn).r;
        if !r.is_null() && !(*r).stream.is_null() {
            return (*(*(*r).stream).connection).connection;
        }
    }
    let _ = conn;
    ptr::null_mut()
}

/// Closes the connection. `conn` is freed when this returns, and the subscriber has left the
/// hub.
///
/// # Safety
/// `conn` must be a live subscriber, and the worker state must not be in use.
pub(super) unsafe fn finalize(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); so are its connection and, while set, its
    // request.
    unsafe {
        let c = (*conn).c;
        let r = (*conn).r;
        if !r.is_null() {
            // Still the request's: nginx ends it, and the pool cleanup removes the
            // subscriber from the hub and frees conn.
            let timer = timer_of(conn);
            cancel_timer(timer);
            (*r).read_event_handler = Some(ngx_http_block_reading);
            (*r).write_event_handler = Some(ngx_http_request_empty_handler);
            ngx_http_finalize_request(r, NGX_HTTP_CLOSE as ngx_int_t);
            // Termination is posted; run it now, whatever event we are in.
            ngx_http_run_posted_requests(c);
            return;
        }
        let key = (*conn).key;
        (*c).data = ptr::null_mut();
        // Nothing of ours may run on the connection any more (a TLS shutdown may keep it
        // open a little longer, with its own handlers and timer).
        let rev = (*c).read;
        cancel_timer(rev);
        (*rev).handler = Some(ngx_http_empty_handler);
        (*(*c).write).handler = Some(ngx_http_empty_handler);
        drop(Box::from_raw(conn));
        forget_subscriber(key);
        // Its last channels may have been unsubscribed.
        relay::flush();
        // Deletes the connection's timers and posted events, keeps stub_status right.
        ngx_http_close_connection(c);
    }
}
