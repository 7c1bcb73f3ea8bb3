//! A subscriber's connection: the content handler that upgrades it, then its read, write and
//! timer events.
//!
//! Right after the 101 the connection still belongs to its HTTP request, kept alive by a
//! raised count. The request's module ctx ([`Attached`], in its pool) points at the
//! subscriber and holds the ping timer, and a cleanup on its pool removes the subscriber from
//! the hub should nginx end the request. At the connection's first event once the 101 is out
//! and nothing else holds the request, the request is released: nginx logs it and frees its
//! pool, and the connection's header buffers are freed too. From then on the connection is
//! the module's alone: `c->data` is its [`SubscriberConn`], its read and write handlers are
//! ours, the read event's timer is the ping (or close) timer, and closing removes the
//! subscriber from the hub, then goes through `ngx_http_close_connection`.

use std::cell::Cell;
use std::ffi::c_void;
use std::mem::offset_of;
use std::ptr::{self, addr_of_mut};
use std::sync::Arc;

use chatup_wire::close;
use ngx::ffi::{
    ngx_chain_t, ngx_connection_t, ngx_create_temp_buf, ngx_event_t, ngx_http_block_reading,
    ngx_http_close_connection, ngx_http_connection_t, ngx_http_empty_handler,
    ngx_http_finalize_request, ngx_http_free_request, ngx_http_output_filter,
    ngx_http_request_empty_handler, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_send_header, ngx_http_send_special, ngx_int_t, ngx_list_push, ngx_msec_int_t,
    ngx_pcalloc, ngx_pfree, ngx_pool_cleanup_add, ngx_post_event, ngx_posted_events,
    ngx_table_elt_t, ngx_uint_t, NGX_AGAIN, NGX_DONE, NGX_ERROR, NGX_HTTP_CLOSE, NGX_HTTP_FLUSH,
    NGX_HTTP_GET, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SWITCHING_PROTOCOLS,
    NGX_HTTP_VERSION_11, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Request};
use ngx::{ngx_log_error, ngx_string};

use super::cancel_timer;
use super::worker::{forget_subscriber, with_worker};
use crate::handshake::{self, HandshakeError, UpgradeRequest};
use crate::hub::SubscriberKey;
use crate::ws::{self, ClientFrame, Opcode};
use crate::Module;

/// Longest a closing connection waits for its close frame to drain and the client's reply.
const CLOSE_TIMEOUT_MS: u64 = 10_000;
/// Largest single write when several frames are queued.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Bytes read from a client per recv.
const READ_CHUNK: usize = 4096;
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
    /// The client sent a frame since the last ping.
    heard: bool,
    /// A ping was sent and its answer is due before the next one.
    ping_due: bool,
    /// The client's close frame arrived, or it broke the protocol: its input is ignored.
    input_done: bool,
    /// The close timeout is running (on the timer, instead of the ping).
    closing_armed: bool,
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
}

thread_local! {
    /// Whether this worker already said that some module keeps subscribers' requests alive.
    static KEPT_LOGGED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the response to a WebSocket upgrade, or answers why not.
pub extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls the content handler with a live request on this thread.
    unsafe { handle(r) }
}

unsafe fn handle(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is the live request nginx passed to the content handler.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let Some(lc) = Module::location_conf(req) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let rc = req.discard_request_body();
    if rc.0 != NGX_OK as ngx_int_t {
        return rc.0;
    }
    // SAFETY: r is live.
    if unsafe { (*r).discard_body() } != 0 {
        // A body is still arriving: its bytes would be taken for WebSocket frames.
        // SAFETY: r is live and no response was sent yet.
        return unsafe { refuse_body(r) };
    }
    let mut upgrade = None;
    let mut connection = None;
    let mut version = None;
    let mut key = None;
    for (name, value) in req.headers_in_iterator() {
        let name = name.as_bytes();
        let value = Some(value.as_bytes());
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = value;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection = value;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            version = value;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            key = value;
        }
    }
    // SAFETY: r is live; uri and args are ngx_str_t views into its memory.
    let (uri, args, is_get, is_http11, is_main) = unsafe {
        (
            (*r).uri.as_bytes(),
            (*r).args.as_bytes(),
            (*r).method == NGX_HTTP_GET as ngx_uint_t,
            (*r).http_version == NGX_HTTP_VERSION_11 as ngx_uint_t,
            (*r).main == r,
        )
    };
    let channels = uri.strip_prefix(lc.prefix.as_slice()).unwrap_or(b"");
    let request = UpgradeRequest {
        is_get: is_get && is_main,
        is_http11,
        upgrade,
        connection,
        version,
        key,
        channels,
        args,
    };
    let accepted = match handshake::check(&request, lc.max_channels()) {
        Ok(accepted) => accepted,
        // SAFETY: r is live and no response was sent yet.
        Err(err) => return unsafe { refuse(r, &err) },
    };
    if with_worker(|_| ()).is_none() {
        // SAFETY: as above.
        return unsafe { send_text(r, 503, "chatup is not running in this nginx worker\n", &[]) };
    }
    // SAFETY: r is live and no response was sent yet.
    unsafe { upgrade_connection(r, accepted, lc.ping_interval_ms(), lc.max_unsent()) }
}

/// Answers a refused upgrade with its status and reason.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn refuse(r: *mut ngx_http_request_t, err: &HandshakeError) -> ngx_int_t {
    // SAFETY: r is live (caller's contract), and so are its connection and log.
    let log = unsafe { (*(*r).connection).log };
    ngx_log_error!(NGX_LOG_INFO, log, "chatup: subscribe refused: {}", err);
    let body = format!("{err}\n");
    let extra: &[(&str, &str)] = match err {
        HandshakeError::WsVersion => &[("Sec-WebSocket-Version", "13")],
        HandshakeError::Method => &[("Allow", "GET")],
        _ => &[],
    };
    // SAFETY: caller's contract.
    unsafe { send_text(r, err.status(), &body, extra) }
}

/// Sends a complete text/plain response.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn send_text(
    r: *mut ngx_http_request_t,
    status: u16,
    body: &str,
    extra: &[(&str, &str)],
) -> ngx_int_t {
    // SAFETY: r is live; everything allocated comes from its pool and lives as long as it.
    unsafe {
        (*r).headers_out.status = status as ngx_uint_t;
        (*r).headers_out.content_type = ngx_string!("text/plain; charset=utf-8");
        (*r).headers_out.content_type_len = (*r).headers_out.content_type.len;
        (*r).headers_out.content_length_n = body.len() as _;
        for (name, value) in extra {
            if !push_header(r, name, value) {
                return NGX_ERROR as ngx_int_t;
            }
        }
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let buf = ngx_create_temp_buf((*r).pool, body.len());
        if buf.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*buf).last, body.len());
        (*buf).last = (*buf).last.add(body.len());
        (*buf).set_last_buf(1);
        (*buf).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}

/// Adds a response header.
///
/// # Safety
/// `r` must be a live request whose header was not sent yet.
unsafe fn push_header(r: *mut ngx_http_request_t, name: &str, value: &str) -> bool {
    // SAFETY: r is live; the list element is filled completely before use.
    unsafe {
        let h = ngx_list_push(addr_of_mut!((*r).headers_out.headers)).cast::<ngx_table_elt_t>();
        if h.is_null() {
            return false;
        }
        if ngx::ffi::add_to_ngx_table(h, (*r).pool, name, value).is_none() {
            return false;
        }
        #[cfg(nginx1_23)]
        {
            (*h).next = ptr::null_mut();
        }
    }
    true
}

/// Answers an upgrade that came with a body still being read.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn refuse_body(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live (caller's contract), and so are its connection and log.
    let log = unsafe { (*(*r).connection).log };
    ngx_log_error!(
        NGX_LOG_INFO,
        log,
        "chatup: subscribe refused: the upgrade request has a body"
    );
    // SAFETY: caller's contract.
    unsafe { send_text(r, 400, "a WebSocket upgrade request has no body\n", &[]) }
}

/// Sends the 101, registers the subscriber and takes over the connection's events.
///
/// # Safety
/// `r` must be a live main request with no response sent.
unsafe fn upgrade_connection(
    r: *mut ngx_http_request_t,
    accepted: handshake::Accepted,
    ping_interval_ms: u64,
    max_unsent: usize,
) -> ngx_int_t {
    // SAFETY: r is live (caller's contract); all pointers below come from it.
    unsafe {
        let c = (*r).connection;
        (*r).headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS as ngx_uint_t;
        (*r).headers_out.status_line = ngx_string!("101 Switching Protocols");
        (*r).headers_out.content_length_n = -1;
        if !push_header(r, "Upgrade", "websocket")
            || !push_header(r, "Sec-WebSocket-Accept", &accepted.accept_key)
        {
            return NGX_ERROR as ngx_int_t;
        }
        (*r).set_keepalive(0);
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return rc;
        }
        if ngx_http_send_special(r, NGX_HTTP_FLUSH as ngx_uint_t) == NGX_ERROR as ngx_int_t {
            return NGX_ERROR as ngx_int_t;
        }
        ngx::ffi::ngx_tcp_nodelay(c);

        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if cleanup.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let conn = Box::into_raw(Box::new(SubscriberConn {
            c,
            r,
            key: usize::MAX,
            inbuf: Vec::new(),
            ping_interval_ms: u32::try_from(ping_interval_ms).unwrap_or(u32::MAX),
            heard: false,
            ping_due: false,
            input_done: false,
            closing_armed: false,
        }));
        (*cleanup).handler = Some(on_request_freed);
        (*cleanup).data = conn.cast();

        let Some(key) = with_worker(|w| {
            w.hub
                .add_subscriber(conn, accepted.subscriptions, max_unsent)
        }) else {
            return NGX_ERROR as ngx_int_t;
        };
        (*conn).key = key;
        // A channel new to this worker was just subscribed: tell the sidecar now.
        super::relay::flush();
        let attached = ngx_pcalloc((*r).pool, std::mem::size_of::<Attached>()).cast::<Attached>();
        if attached.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*attached).conn = conn;
        let timer = addr_of_mut!((*attached).timer);
        (*timer).handler = Some(on_attached_timer);
        (*timer).data = c.cast();
        (*timer).log = (*c).log;
        (*timer).set_cancelable(1);
        Request::from_ngx_http_request(r).set_module_ctx(attached.cast(), Module::module());

        // Frames that arrived with the upgrade request sit in its header buffer, which is
        // freed with the request: decode them now (what they ask for goes out with the
        // first write).
        let hin = (*r).header_in;
        if !hin.is_null() && (*hin).pos < (*hin).last {
            let len = (*hin).last.offset_from((*hin).pos) as usize;
            let early = std::slice::from_raw_parts((*hin).pos, len);
            handle_input(conn, early);
            (*hin).pos = (*hin).last;
        }

        (*(*c).log).action = ACTION.as_ptr().cast_mut();
        let rev = (*c).read;
        let wev = (*c).write;
        // The connection's events come to us from now on, not to nginx's request handler.
        (*rev).handler = Some(on_read_attached);
        (*wev).handler = Some(on_write_attached);
        if ping_interval_ms > 0 {
            ngx::ffi::ngx_add_timer(timer, (*conn).ping_interval_ms as _);
        }
        // Keep the request alive after the content phase, until it is released.
        (*(*r).main).set_count((*(*r).main).count() + 1);

        // The replay goes out from the write event, which also releases the request (the
        // content handler must not finalize it).
        ngx_post_event(wev, addr_of_mut!(ngx_posted_events));
        if (*rev).ready() != 0 {
            ngx_post_event(rev, addr_of_mut!(ngx_posted_events));
        }
        if ngx::ffi::ngx_handle_read_event(rev, 0) != NGX_OK as isize {
            return NGX_ERROR as ngx_int_t;
        }
        NGX_DONE as ngx_int_t
    }
}

/// The request's pool is being destroyed while the connection is still the request's: the
/// subscriber leaves the hub.
extern "C" fn on_request_freed(data: *mut c_void) {
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
        if (*conn).key != usize::MAX {
            forget_subscriber((*conn).key);
            // Its last channels may have been unsubscribed.
            super::relay::flush();
        }
        drop(Box::from_raw(conn));
    }
}

/// Frees the request once the 101 is out and nothing but us holds it; the connection is then
/// ours. Does nothing when it is already released or cannot be yet.
///
/// # Safety
/// `conn` must be a live subscriber, called from one of its connection's event handlers
/// (no nginx request code of this connection further up the stack).
unsafe fn try_release(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); while r is set, it is the live request.
    unsafe {
        let r = (*conn).r;
        if r.is_null() {
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

/// The subscriber's ping (or close) timer: in the request's ctx while it has one, then the
/// connection's read event.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn timer_of(conn: *mut SubscriberConn) -> *mut ngx_event_t {
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

/// The subscriber of a connection that still belongs to its request.
///
/// # Safety
/// `ev` must be an event of a live connection whose `data` is its request.
unsafe fn attached_conn(ev: *mut ngx_event_t) -> Option<*mut SubscriberConn> {
    // SAFETY: caller's contract; the request's main request holds our ctx.
    unsafe {
        let c = (*ev).data.cast::<ngx_connection_t>();
        let r = (*c).data.cast::<ngx_http_request_t>();
        if r.is_null() {
            return None;
        }
        conn_of((*r).main)
    }
}

/// The subscriber of a released connection.
///
/// # Safety
/// `ev` must be an event of a live connection whose `data` is its `SubscriberConn`.
unsafe fn released_conn(ev: *mut ngx_event_t) -> Option<*mut SubscriberConn> {
    // SAFETY: caller's contract.
    let conn = unsafe {
        (*(*ev).data.cast::<ngx_connection_t>())
            .data
            .cast::<SubscriberConn>()
    };
    (!conn.is_null()).then_some(conn)
}

/// `conn`, unless nginx asks its connection to close (worker_shutdown_timeout ran out, for
/// one): then the subscriber is closed and `None` returned.
///
/// # Safety
/// `conn`, when given, must be a live subscriber, from one of its connection's event handlers.
unsafe fn open_conn(conn: Option<*mut SubscriberConn>) -> Option<*mut SubscriberConn> {
    let conn = conn?;
    // SAFETY: conn is live (caller's contract), and so is its connection.
    unsafe {
        if (*(*conn).c).close() != 0 {
            finalize(conn);
            return None;
        }
    }
    Some(conn)
}

/// Read event (and ping timer) while the connection still belongs to its request.
extern "C" fn on_read_attached(ev: *mut ngx_event_t) {
    // SAFETY: installed by upgrade_connection on the connection's read event; until the
    // request is released, c->data is the request (nginx restores nothing else there).
    unsafe {
        let Some(conn) = open_conn(attached_conn(ev)) else {
            return;
        };
        // A timeout on this event is not ours yet (ours is in the request's ctx).
        (*ev).set_timedout(0);
        try_release(conn);
        read_client(conn);
    }
}

/// The ping (or close) timer while the connection still belongs to its request.
extern "C" fn on_attached_timer(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only installed on Attached::timer, so ev points into a live
    // Attached, whose conn is live (the pool cleanup deletes the timer before either goes).
    unsafe {
        let attached = ev
            .cast::<u8>()
            .sub(offset_of!(Attached, timer))
            .cast::<Attached>();
        let conn = (*attached).conn;
        // ev (in the request's pool) may be freed from here on.
        try_release(conn);
        on_timer(conn);
    }
}

/// Write event while the connection still belongs to its request.
extern "C" fn on_write_attached(ev: *mut ngx_event_t) {
    // SAFETY: as for on_read_attached, on the write event.
    unsafe {
        let Some(conn) = open_conn(attached_conn(ev)) else {
            return;
        };
        // A limit_rate delay of the 101 ended (as ngx_http_request_handler does).
        if (*ev).delayed() != 0 && (*ev).timedout() != 0 {
            (*ev).set_delayed(0);
            (*ev).set_timedout(0);
        }
        try_release(conn);
        flush(conn);
    }
}

/// Read event (and ping timer) of a released connection.
extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: installed by try_release, which made c->data the SubscriberConn; finalize
    // detaches it from the connection's events before freeing it.
    unsafe {
        let Some(conn) = open_conn(released_conn(ev)) else {
            return;
        };
        read_event(conn, ev);
    }
}

/// Write event of a released connection.
extern "C" fn on_write(ev: *mut ngx_event_t) {
    // SAFETY: as for on_read.
    unsafe {
        let Some(conn) = open_conn(released_conn(ev)) else {
            return;
        };
        flush(conn);
    }
}

/// # Safety
/// `conn` must be a live subscriber and `ev` its connection's read event.
unsafe fn read_event(conn: *mut SubscriberConn, ev: *mut ngx_event_t) {
    // SAFETY: caller's contract.
    unsafe {
        if (*ev).timedout() != 0 {
            (*ev).set_timedout(0);
            on_timer(conn);
        } else {
            read_client(conn);
        }
    }
}

/// The ping interval passed, or the close timeout.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn on_timer(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); flush reports whether it still is.
    unsafe {
        if (*conn).closing_armed {
            finalize(conn);
            return;
        }
        let key = (*conn).key;
        if (*conn).ping_due && !(*conn).heard {
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

/// Reads and handles what the client sent.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn read_client(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); c belongs to it.
    unsafe {
        let c = (*conn).c;
        let Some(recv) = (*c).recv else {
            finalize(conn);
            return;
        };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let n = recv(c, chunk.as_mut_ptr(), chunk.len());
            if n > 0 {
                handle_input(conn, &chunk[..n as usize]);
                continue;
            }
            if n == NGX_AGAIN as isize {
                break;
            }
            // 0: the client went away; NGX_ERROR: the socket failed.
            finalize(conn);
            return;
        }
        if ngx::ffi::ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            finalize(conn);
            return;
        }
        // Pongs and close frames queued above; a finished close handshake ends here too.
        flush(conn);
    }
}

/// Decodes client frames from newly received bytes.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn handle_input(conn: *mut SubscriberConn, bytes: &[u8]) {
    // SAFETY: conn is live (caller's contract) and only touched from this thread.
    let conn = unsafe { &mut *conn };
    if conn.input_done {
        return;
    }
    conn.inbuf.extend_from_slice(bytes);
    let key = conn.key;
    let mut at = 0;
    while at < conn.inbuf.len() {
        match ws::decode_client_frame(&mut conn.inbuf[at..]) {
            Ok(Some((frame, used))) => {
                at += used;
                conn.heard = true;
                match frame {
                    ClientFrame::Ping(payload) => {
                        let pong: Arc<[u8]> = Arc::from(ws::frame(Opcode::Pong, payload));
                        with_worker(|w| w.hub.send_to(key, pong));
                    }
                    ClientFrame::Pong | ClientFrame::Data => {}
                    ClientFrame::Close { code } => {
                        conn.input_done = true;
                        let echo = code.unwrap_or(close::NORMAL);
                        with_worker(|w| w.hub.close(key, echo, ""));
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(err) => {
                // SAFETY: the connection is alive while conn is.
                let log = unsafe { (*conn.c).log };
                ngx_log_error!(NGX_LOG_INFO, log, "chatup: closing subscriber: {}", err);
                conn.input_done = true;
                let reason = err.to_string();
                with_worker(|w| w.hub.close(key, err.close_code(), &reason));
                break;
            }
        }
    }
    if conn.input_done {
        conn.inbuf = Vec::new();
    } else {
        conn.inbuf.drain(..at);
        // Idle subscribers should not keep a read buffer around.
        if conn.inbuf.is_empty() && conn.inbuf.capacity() > 0 {
            conn.inbuf = Vec::new();
        }
    }
}

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
                if (*conn).input_done {
                    // The client's close came first (or it broke the protocol): done.
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
unsafe fn arm_close_timeout(conn: *mut SubscriberConn) {
    // SAFETY: conn is live, and so is its timer.
    unsafe {
        if !(*conn).closing_armed {
            (*conn).closing_armed = true;
            ngx::ffi::ngx_add_timer(timer_of(conn), CLOSE_TIMEOUT_MS as _);
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

/// Sends what can be sent at once (a close frame, at worker exit) and closes.
///
/// # Safety
/// `conn` must be a live subscriber.
pub unsafe fn close_now(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); flush reports whether it still is.
    unsafe {
        if flush(conn) {
            finalize(conn);
        }
    }
}

/// Closes the connection. `conn` is freed when this returns, and the subscriber has left the
/// hub.
///
/// # Safety
/// `conn` must be a live subscriber, and the worker state must not be in use.
unsafe fn finalize(conn: *mut SubscriberConn) {
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
        super::relay::flush();
        // Deletes the connection's timers and posted events, keeps stub_status right.
        ngx_http_close_connection(c);
    }
}
