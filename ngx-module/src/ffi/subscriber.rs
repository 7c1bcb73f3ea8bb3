//! A subscriber's connection: the content handler that upgrades it, then its read, write and
//! timer events. The request is kept alive (its count raised) and finalized when the socket
//! closes; a cleanup on its pool removes the subscriber from the hub, whoever closes it.

use std::ffi::c_void;
use std::mem::offset_of;
use std::ptr::{self, addr_of_mut};
use std::sync::Arc;

use chatup_wire::close;
use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_event_t, ngx_http_block_reading,
    ngx_http_finalize_request, ngx_http_output_filter, ngx_http_request_empty_handler,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_http_send_header, ngx_http_send_special,
    ngx_int_t, ngx_list_push, ngx_pool_cleanup_add, ngx_post_event, ngx_posted_events,
    ngx_table_elt_t, ngx_uint_t, NGX_AGAIN, NGX_DONE, NGX_ERROR, NGX_HTTP_CLOSE, NGX_HTTP_FLUSH,
    NGX_HTTP_GET, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SWITCHING_PROTOCOLS,
    NGX_HTTP_VERSION_11, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Request};
use ngx::{ngx_log_error, ngx_string};

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

pub struct SubscriberConn {
    r: *mut ngx_http_request_t,
    key: SubscriberKey,
    /// Ping interval, or the close timeout once closing.
    timer: ngx_event_t,
    ping_interval_ms: u64,
    /// The client sent a frame since the last ping.
    heard: bool,
    /// A ping was sent and its answer is due before the next one.
    ping_due: bool,
    /// Part of a client frame carried over to the next read.
    inbuf: Vec<u8>,
    /// The client's close frame arrived, or it broke the protocol: its input is ignored.
    input_done: bool,
    /// The close timeout is running.
    closing_armed: bool,
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
            r,
            key: usize::MAX,
            timer: std::mem::zeroed(),
            ping_interval_ms,
            heard: false,
            ping_due: false,
            inbuf: Vec::new(),
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

        Request::from_ngx_http_request(r).set_module_ctx(conn.cast(), Module::module());
        let timer = addr_of_mut!((*conn).timer);
        (*timer).handler = Some(on_timer);
        (*timer).data = c.cast();
        (*timer).log = (*c).log;
        (*timer).set_cancelable(1);
        if ping_interval_ms > 0 {
            ngx::ffi::ngx_add_timer(timer, ping_interval_ms as _);
        }

        (*(*c).log).action = c"serving a chatup subscriber".as_ptr().cast_mut();
        (*r).read_event_handler = Some(on_read);
        (*r).write_event_handler = Some(on_write);
        // Keep the request alive after the content phase.
        (*(*r).main).set_count((*(*r).main).count() + 1);

        // The replay goes out from the write event: the content handler must not finalize.
        ngx_post_event((*c).write, addr_of_mut!(ngx_posted_events));
        // Frames may have arrived with the upgrade request (in header_in) or be waiting.
        let hin = (*r).header_in;
        if (!hin.is_null() && (*hin).pos < (*hin).last) || (*(*c).read).ready() != 0 {
            ngx_post_event((*c).read, addr_of_mut!(ngx_posted_events));
        }
        if ngx::ffi::ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            return NGX_ERROR as ngx_int_t;
        }
        NGX_DONE as ngx_int_t
    }
}

/// The request's pool is being destroyed: the subscriber leaves the hub.
extern "C" fn on_request_freed(data: *mut c_void) {
    let conn = data.cast::<SubscriberConn>();
    // SAFETY: data is the SubscriberConn registered with this cleanup, freed only here.
    unsafe {
        let timer = addr_of_mut!((*conn).timer);
        if (*timer).timer_set() != 0 {
            ngx::ffi::ngx_del_timer(timer);
        }
        if (*conn).key != usize::MAX {
            forget_subscriber((*conn).key);
            // Its last channels may have been unsubscribed.
            super::relay::flush();
        }
        drop(Box::from_raw(conn));
    }
}

/// The subscriber of a request this module upgraded.
///
/// # Safety
/// `r` must be a live request.
unsafe fn conn_of(r: *mut ngx_http_request_t) -> Option<*mut SubscriberConn> {
    // SAFETY: r is live; our ctx slot holds a SubscriberConn or nothing.
    let req = unsafe { Request::from_ngx_http_request(r) };
    req.get_module_ctx::<SubscriberConn>(Module::module())
        .map(|c| ptr::from_ref(c).cast_mut())
}

extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the write handler with the live request.
    if let Some(conn) = unsafe { conn_of(r) } {
        // SAFETY: the ctx is alive as long as its request.
        unsafe { flush(conn) };
    }
}

extern "C" fn on_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the read handler with the live request.
    if let Some(conn) = unsafe { conn_of(r) } {
        // SAFETY: the ctx is alive as long as its request.
        unsafe { read_client(conn) };
    }
}

extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only installed on SubscriberConn::timer, so ev points into a
    // live SubscriberConn (its cleanup deletes the timer before freeing it).
    unsafe {
        let conn = ev
            .cast::<u8>()
            .sub(offset_of!(SubscriberConn, timer))
            .cast::<SubscriberConn>();
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
            let ping: Arc<[u8]> = Arc::from(ws::frame(Opcode::Ping, b""));
            with_worker(|w| w.hub.send_to(key, ping));
        }
        if flush(conn) && !(*conn).closing_armed {
            ngx::ffi::ngx_add_timer(ev, (*conn).ping_interval_ms as _);
        }
    }
}

/// Reads and handles what the client sent.
///
/// # Safety
/// `conn` must be a live subscriber.
unsafe fn read_client(conn: *mut SubscriberConn) {
    // SAFETY: conn is live (caller's contract); r and c belong to it.
    unsafe {
        let r = (*conn).r;
        let c = (*r).connection;
        let hin = (*r).header_in;
        if !hin.is_null() && (*hin).pos < (*hin).last {
            let len = (*hin).last.offset_from((*hin).pos) as usize;
            let early = std::slice::from_raw_parts((*hin).pos, len).to_vec();
            (*hin).pos = (*hin).last;
            handle_input(conn, &early);
        }
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
                // SAFETY: the request and its connection are alive while conn is.
                let log = unsafe { (*(*conn.r).connection).log };
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
        if conn.inbuf.is_empty() && conn.inbuf.capacity() > 256 {
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
    // SAFETY: conn is live (caller's contract); r and c belong to it.
    unsafe {
        let r = (*conn).r;
        let c = (*r).connection;
        // The 101 response may still sit in nginx's output chain: it goes first.
        if !(*r).out.is_null() || (*c).buffered() != 0 {
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
    // SAFETY: conn is live; its timer belongs to it.
    unsafe {
        if !(*conn).closing_armed {
            (*conn).closing_armed = true;
            ngx::ffi::ngx_add_timer(addr_of_mut!((*conn).timer), CLOSE_TIMEOUT_MS as _);
        }
    }
}

/// # Safety
/// `conn` must be a live subscriber.
unsafe fn watch_writes(conn: *mut SubscriberConn) -> bool {
    // SAFETY: conn is live; its request and connection too.
    unsafe {
        let c = (*(*conn).r).connection;
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

/// Closes the connection. `conn` is freed when this returns.
///
/// # Safety
/// `conn` must be a live subscriber, and the worker state must not be in use.
unsafe fn finalize(conn: *mut SubscriberConn) {
    // SAFETY: conn and its request are live until the posted termination runs below.
    unsafe {
        let r = (*conn).r;
        let c = (*r).connection;
        let timer = addr_of_mut!((*conn).timer);
        if (*timer).timer_set() != 0 {
            ngx::ffi::ngx_del_timer(timer);
        }
        (*r).read_event_handler = Some(ngx_http_block_reading);
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        ngx_http_finalize_request(r, NGX_HTTP_CLOSE as ngx_int_t);
        // Termination is posted; run it now, whatever event we are in. nginx checks
        // c->destroyed afterwards, so this is safe inside its own request handler too.
        ngx_http_run_posted_requests(c);
    }
}
