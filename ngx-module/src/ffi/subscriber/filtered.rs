//! An SSE stream over HTTP/2 (or later): a stream of a multiplexed connection cannot be taken
//! from its request, so it keeps it, and its bytes go through nginx's output filters.
//!
//! One buffer at a time: the hub's queued bytes are copied into [`Output::data`] and handed
//! to the filters as one in-memory `ngx_buf_t` with `flush` set; the next copy waits until
//! nginx has sent it all (no `r->out`, the connection not `buffered`), which also keeps the
//! request's pool from growing with the stream's length. The write event nginx posts when
//! the stream can send again comes to [`on_write`]; a client that goes away ends the request
//! (`ngx_http_test_reading`), and the pool cleanup frees the subscriber.

use std::ptr::{self, addr_of_mut};

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_http_finalize_request, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_special, ngx_http_test_reading, ngx_int_t, ngx_post_event, ngx_posted_events,
    ngx_uint_t, NGX_DONE, NGX_ERROR, NGX_HTTP_LAST,
};

use super::close::finalize;
use super::timer::arm_close_timeout;
use super::upgrade::{register, Registration};
use super::{attached_of, conn_of, SubscriberConn};
use crate::ffi::worker::with_worker;
use crate::handshake::Accepted;

/// Largest copy handed to the filters at once.
const CHUNK_LIMIT: usize = 64 * 1024;

/// The buffer a filtered stream's bytes go out from.
pub struct Output {
    buf: ngx_buf_t,
    link: ngx_chain_t,
    /// What `buf` points into; left alone until nginx has sent it all.
    data: Vec<u8>,
}

/// Registers an SSE stream whose header was just sent on HTTP/2, keeping its request.
///
/// # Safety
/// `r` must be a live main request whose response header was just sent.
pub(super) unsafe fn take_over(
    r: *mut ngx_http_request_t,
    accepted: Accepted,
    registration: Registration,
) -> ngx_int_t {
    // SAFETY: r is live (caller's contract).
    unsafe {
        let Some(conn) = register(r, accepted, &registration) else {
            return NGX_ERROR as ngx_int_t;
        };
        (*conn).filtered = true;
        let attached = attached_of(r);
        if attached.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY (of the zeroed structs): ngx_buf_t and ngx_chain_t are plain C structs for
        // which all-zero is the empty value nginx itself starts from (ngx_calloc_buf).
        (*attached).out = Box::into_raw(Box::new(Output {
            buf: std::mem::zeroed(),
            link: std::mem::zeroed(),
            data: Vec::new(),
        }));
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(on_write);
        (*(*r).main).set_count((*(*r).main).count() + 1);
        // The replay goes out from the write event (the content handler must not end the
        // request).
        ngx_post_event((*(*r).connection).write, addr_of_mut!(ngx_posted_events));
        NGX_DONE as ngx_int_t
    }
}

/// Frees a filtered stream's output buffer (the request is being freed).
///
/// # Safety
/// `out` must come from [`take_over`] and not be used again.
pub(super) unsafe fn free_output(out: *mut Output) {
    if !out.is_null() {
        // SAFETY: caller's contract.
        drop(unsafe { Box::from_raw(out) });
    }
}

/// The stream may send again (nginx's request write handler).
extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: installed by take_over on a request of ours; nginx calls it with that live
    // request, whose ctx points at its subscriber until the pool cleanup frees both.
    unsafe {
        if let Some(conn) = conn_of(r) {
            super::write::flush(conn);
        }
    }
}

/// Hands what the hub queued to the output filters. Returns `false` when the request was
/// ended (then `conn` may be gone).
///
/// # Safety
/// `conn` must be a live filtered subscriber.
pub(super) unsafe fn flush(conn: *mut SubscriberConn) -> bool {
    // SAFETY: conn is live (caller's contract); so are its request and that request's ctx.
    unsafe {
        let r = (*conn).r;
        let attached = attached_of(r);
        if attached.is_null() || (*attached).out.is_null() {
            finalize(conn);
            return false;
        }
        let out = (*attached).out;
        let c = (*r).connection;
        let key = (*conn).key;
        loop {
            if !(*r).out.is_null() || (*c).buffered() != 0 {
                // Our last buffer is still on its way.
                if ngx_http_output_filter(r, ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                    finalize(conn);
                    return false;
                }
                if !(*r).out.is_null() || (*c).buffered() != 0 {
                    return true;
                }
            }
            let data = &mut (*out).data;
            data.clear();
            let closing = with_worker(|w| {
                let sub = w.hub.subscriber(key)?;
                sub.outbox.gather(data, CHUNK_LIMIT);
                sub.outbox.consume(data.len());
                Some(sub.closing().is_some())
            })
            .flatten();
            let Some(closing) = closing else {
                finalize(conn);
                return false;
            };
            if data.is_empty() {
                // An idle stream keeps no buffer.
                (*out).data = Vec::new();
                if closing {
                    // The close event is out: end the response (END_STREAM), not the
                    // connection.
                    let rc = ngx_http_send_special(r, NGX_HTTP_LAST as ngx_uint_t);
                    ngx_http_finalize_request(r, rc);
                    return false;
                }
                return true;
            }
            let buf = addr_of_mut!((*out).buf);
            *buf = std::mem::zeroed();
            (*buf).start = data.as_mut_ptr();
            (*buf).pos = (*buf).start;
            (*buf).last = (*buf).start.add(data.len());
            (*buf).end = (*buf).last;
            (*buf).set_memory(1);
            (*buf).set_flush(1);
            (*out).link = ngx_chain_t {
                buf,
                next: ptr::null_mut(),
            };
            if ngx_http_output_filter(r, addr_of_mut!((*out).link)) == NGX_ERROR as ngx_int_t {
                finalize(conn);
                return false;
            }
            if closing && (!(*r).out.is_null() || (*c).buffered() != 0) {
                arm_close_timeout(conn);
            }
        }
    }
}
