//! A long poll: answered at once when its replay has something to say, else held until a
//! message arrives, the worker closes it (reload, shutdown) or `chatup_poll_timeout` runs
//! out. Its request is never released: nginx writes the answer through its output filters
//! (so HTTP/2 works too), and notices a client that goes away (`ngx_http_test_reading`),
//! which frees the subscriber through the pool cleanup.

use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_request_empty_handler, ngx_http_request_t,
    ngx_http_test_reading, ngx_int_t, NGX_DONE, NGX_ERROR,
};
use ngx::http::{HttpModuleLocationConf, Request};

use super::timer::timer_of;
use super::upgrade::{cors_headers, register, send_body, Registration};
use super::SubscriberConn;
use crate::conf::LocConf;
use crate::ffi::module::Module;
use crate::ffi::worker::with_worker;
use crate::ffi::{cancel_timer, relay};
use crate::handshake::{Accepted, Transport};
use crate::hub::Delivery;

const CONTENT_TYPE: &str = "application/json";

/// Registers the poll; answers at once or holds the request.
///
/// # Safety
/// `r` must be a live main request with no response sent.
pub(super) unsafe fn start(
    r: *mut ngx_http_request_t,
    accepted: Accepted,
    lc: &LocConf,
    cors: Option<&[u8]>,
    admission: Option<u64>,
) -> ngx_int_t {
    let registration = Registration {
        transport: Transport::Poll,
        delivery: Delivery::Poll,
        timer_ms: lc.poll_timeout_ms(),
        max_unsent: lc.max_unsent(),
        admission,
    };
    // SAFETY: r is live (caller's contract).
    unsafe {
        let Some(conn) = register(r, accepted, &registration) else {
            return NGX_ERROR as ngx_int_t;
        };
        if is_ready(conn) {
            // Still in the content handler: nginx finalizes with what this returns.
            return answer(conn, cors);
        }
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        (*(*r).main).set_count((*(*r).main).count() + 1);
        NGX_DONE as ngx_int_t
    }
}

/// The hub queued something for a held poll (or closed it): answers when there is an answer.
/// Returns `false` when the request was finalized (then `conn` may be gone).
///
/// # Safety
/// `conn` must be a live poll subscriber whose request is held.
pub(super) unsafe fn flush(conn: *mut SubscriberConn) -> bool {
    // SAFETY: caller's contract.
    unsafe {
        if !is_ready(conn) {
            return true;
        }
        finish(conn);
    }
    false
}

/// `chatup_poll_timeout` ran out: answers with whatever there is (maybe nothing).
///
/// # Safety
/// `conn` must be a live poll subscriber whose request is held.
pub(super) unsafe fn on_timeout(conn: *mut SubscriberConn) {
    // SAFETY: caller's contract.
    unsafe { finish(conn) }
}

/// Answers a held poll and ends its request.
///
/// # Safety
/// `conn` must be a live poll subscriber whose request is held.
unsafe fn finish(conn: *mut SubscriberConn) {
    // SAFETY: caller's contract; r is the held request.
    unsafe {
        let r = (*conn).r;
        let cors = allowed_origin(r);
        let rc = answer(conn, cors.as_deref());
        // Drops the count the content handler added; nginx sends what is left and frees
        // the request, whose pool cleanup frees conn.
        ngx_http_finalize_request(r, rc);
    }
}

/// Whether the poll has its answer (see `Hub::poll_is_ready`).
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn is_ready(conn: *mut SubscriberConn) -> bool {
    // SAFETY: caller's contract.
    let key = unsafe { (*conn).key };
    with_worker(|w| w.hub.poll_is_ready(key)).unwrap_or(true)
}

/// Takes the poll out of the hub and sends its answer; returns the output's status for
/// `ngx_http_finalize_request`.
///
/// # Safety
/// `conn` must be a live poll subscriber whose request has no response sent.
unsafe fn answer(conn: *mut SubscriberConn, cors: Option<&[u8]>) -> ngx_int_t {
    // SAFETY: caller's contract.
    unsafe {
        let r = (*conn).r;
        let key = std::mem::replace(&mut (*conn).key, usize::MAX);
        cancel_timer(timer_of(conn));
        let body = with_worker(|w| {
            let body = w.hub.subscriber(key).map(|s| s.take_poll_answer());
            // Out of the hub at once: nothing more is queued for an answered poll, and the
            // key may serve another subscriber before nginx frees this request.
            w.hub.remove_subscriber(key);
            body
        })
        .flatten();
        // Its channels may have been unsubscribed.
        relay::flush();
        let Some(body) = body else {
            return NGX_ERROR as ngx_int_t;
        };
        (*r).read_event_handler = Some(ngx::ffi::ngx_http_block_reading);
        let mut headers = cors_headers(cors);
        headers.push(("Cache-Control", "no-store".to_owned()));
        send_body(r, 200, CONTENT_TYPE, &body, &headers)
    }
}

/// The CORS origin to answer a held request with, looked up again at answer time.
///
/// # Safety
/// `r` must be a live request of a subscribe location.
pub(super) unsafe fn allowed_origin(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    // SAFETY: r is live (caller's contract).
    let req = unsafe { Request::from_ngx_http_request(r) };
    let lc: &LocConf = Module::location_conf(req)?;
    let origin = req
        .headers_in_iterator()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(b"origin"))
        .map(|(_, value)| value.as_bytes());
    lc.cors_origin(origin).map(<[u8]>::to_vec)
}
