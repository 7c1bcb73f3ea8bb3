//! A subscriber: a viewer's connection, from its HTTP request to its close. A WebSocket and
//! an SSE stream over HTTP/1.x go through every phase below; a long poll ([`poll`]) and an
//! SSE stream over HTTP/2 ([`filtered`]) keep their request to the end.
//!
//! Lifecycle, by phase (one file each):
//! 1. [`upgrade`]: nginx calls [`content_handler`] for a request to a `chatup_subscribe`
//!    location. A refused handshake gets its status and a text body, and the request ends as
//!    any other. A request for a private channel is first held ([`admit`]: its `Held` in the
//!    request's pool, with a timer and a pool cleanup) until the sidecar's verdict, then
//!    refused, or goes on from here. An accepted one gets the 101, a boxed [`SubscriberConn`] and a hub entry
//!    (its channels and outbox). The request's module ctx ([`Attached`], in the request's
//!    pool) points at the subscriber and holds the ping timer (`on_attached_timer`); a
//!    cleanup on the request's pool (`on_request_freed`) is registered; the request's count
//!    is raised so it outlives the content phase; the connection's read and write handlers
//!    become `on_read_attached` and `on_write_attached`, and the write event is posted.
//! 2. [`release`]: the connection still belongs to its request (`c->data` is the request).
//!    At each of its events ([`events`]), once the 101 is out and nothing else holds the
//!    request, it is released: the pool cleanup is disarmed, the ping timer moves to the
//!    read event, nginx logs and frees the request (its pool, with the ctx), and the
//!    connection's header buffers are freed. Then `c->data` is the [`SubscriberConn`] and
//!    the handlers are `on_read` and `on_write`. Should another module keep the request
//!    (limit_conn's cleanup, say), it is never released: the subscriber stays attached.
//! 3. Serving: [`read`] decodes the viewer's frames (pongs queued, close answered),
//!    [`write`] flushes what the hub queued, [`timer`] pings, or times out a close.
//! 4. [`close`]: `finalize` (or `close_now` at worker exit, after one last flush). Attached,
//!    it cancels the timer and has nginx end the request. Released, it points the
//!    connection's handlers at `ngx_http_empty_handler` and closes it itself.
//!
//! Who frees what:
//! - the request and its pool (ctx, timer): nginx, at release or when the request ends;
//! - the [`SubscriberConn`] (with its read buffer) and the hub entry (with the outbox):
//!   `on_request_freed` while attached, `finalize` once released; leaving the hub may
//!   unsubscribe channels, so both flush the relay. Should the worker state be in use then,
//!   the entry goes at its next use (`forget_subscriber`);
//! - the connection and its pool: nginx, with the request (`ngx_http_close_request`) while
//!   attached, `ngx_http_close_connection` from `finalize` once released.

mod admit;
mod close;
mod events;
mod filtered;
mod poll;
mod read;
mod release;
mod stream;
mod timer;
mod upgrade;
mod write;

use std::ptr;

use ngx::ffi::{ngx_connection_t, ngx_event_t, ngx_http_request_t};
use ngx::http::HttpModule;

use crate::ffi::module::Module;
use crate::handshake::Transport;
use crate::hub::SubscriberKey;

pub use admit::{answer_verdicts, fail_all as fail_admissions};
pub use close::close_now;
pub use upgrade::content_handler;
pub use write::flush;

/// What the error log says the connection was doing.
const ACTION: &std::ffi::CStr = c"serving a chatup subscriber";

/// What the module keeps per subscriber connection (besides its hub entry).
pub struct SubscriberConn {
    c: *mut ngx_connection_t,
    /// The HTTP request until it is released; null after.
    r: *mut ngx_http_request_t,
    key: SubscriberKey,
    /// Part of a client frame carried over to the next read.
    inbuf: Vec<u8>,
    ping_interval_ms: u32,
    /// What the subscriber reads and how it is answered: a WebSocket reads frames and is
    /// pinged, an SSE stream reads nothing, a poll is never released and answers once.
    transport: Transport,
    /// The client sent a frame since the last ping.
    heard: bool,
    /// A ping was sent and its answer is due before the next one.
    ping_due: bool,
    /// The client's close frame arrived, or it broke the protocol: its input is ignored.
    input_done: bool,
    /// The close timeout is running (on the timer, instead of the ping).
    closing_armed: bool,
    /// An SSE stream over HTTP/2 (or later): it keeps its request, and its bytes go through
    /// nginx's output filters ([`filtered`]).
    filtered: bool,
}

// What stays of each subscriber once its request is released; keep it small.
const _: () = assert!(std::mem::size_of::<SubscriberConn>() <= 64);

/// The request's module ctx while the connection is still the request's (in its pool).
struct Attached {
    conn: *mut SubscriberConn,
    /// The ping (or close) timer until the request is released. Not the read event's timer
    /// yet: nginx code still working on the request (a mirror subrequest's upstream, for one)
    /// may delete that one.
    timer: ngx_event_t,
    /// What a filtered stream has handed to the output filters (null for the others); freed
    /// with the request.
    out: *mut filtered::Output,
}

/// The subscriber of a request this module upgraded.
///
/// # Safety
/// `r` must be a live request.
unsafe fn conn_of(r: *mut ngx_http_request_t) -> Option<*mut SubscriberConn> {
    // SAFETY: r is live (caller's contract).
    let attached = unsafe { attached_of(r) };
    // SAFETY: a non-null ctx of ours is an Attached in the request's pool.
    let conn = (!attached.is_null()).then(|| unsafe { (*attached).conn })?;
    (!conn.is_null()).then_some(conn)
}

/// Our module ctx of a request: an [`Attached`], or null.
///
/// # Safety
/// `r` must be a live request.
unsafe fn attached_of(r: *mut ngx_http_request_t) -> *mut Attached {
    // SAFETY: r is live; its ctx array has a slot for every module.
    unsafe {
        let ctx = (*r).ctx;
        if ctx.is_null() {
            return ptr::null_mut();
        }
        (*ctx.add(Module::module().ctx_index)).cast()
    }
}
