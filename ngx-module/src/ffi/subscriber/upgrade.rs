//! Answering a subscriber's request: the checks, a refusal's response (or a CORS
//! preflight's), or the 101 and the subscriber's registration and first event handlers. The
//! other transports start in [`super::stream`] (SSE) and [`super::poll`].

use std::ptr::addr_of_mut;

use ngx::ffi::{
    ngx_http_request_t, ngx_http_send_header, ngx_http_send_special, ngx_int_t, ngx_pcalloc,
    ngx_pool_cleanup_add, ngx_post_event, ngx_posted_events, ngx_uint_t, NGX_DONE, NGX_ERROR,
    NGX_HTTP_FLUSH, NGX_HTTP_GET, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_OPTIONS,
    NGX_HTTP_SWITCHING_PROTOCOLS, NGX_HTTP_VERSION_11, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Request};
use ngx::{ngx_log_error, ngx_string};

use super::{
    admit,
    close::on_request_freed,
    events::{on_attached_timer, on_read_attached, on_write_attached},
    read::handle_input,
    Attached, SubscriberConn, ACTION,
};
use crate::admission::{AdmissionError, Gate};
use crate::conf::LocConf;
use crate::ffi::module::Module;
use crate::ffi::relay;
pub(super) use crate::ffi::response::{push_header, send_body};
use crate::ffi::worker::with_worker;
use crate::handshake::{self, HandshakeError, Transport, UpgradeRequest};
use crate::hub::Delivery;

/// What a CORS preflight may ask for: `EventSource` resumes with `Last-Event-ID`.
const CORS_ALLOW_HEADERS: &str = "Last-Event-ID, Accept, Cache-Control";
/// How long a browser may keep a preflight's answer, in seconds.
const CORS_MAX_AGE: &str = "600";

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
    let mut accept = None;
    let mut last_event_id = None;
    let mut authorization = None;
    let mut origin = None;
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
        } else if name.eq_ignore_ascii_case(b"accept") {
            accept = value;
        } else if name.eq_ignore_ascii_case(b"last-event-id") {
            last_event_id = value;
        } else if name.eq_ignore_ascii_case(b"origin") {
            origin = value;
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = value;
        }
    }
    let cors = lc.cors_origin(origin);
    // SAFETY: r is live.
    if unsafe { (*r).method } == NGX_HTTP_OPTIONS as ngx_uint_t && cors.is_some() {
        // SAFETY: r is live and no response was sent yet.
        return unsafe { answer_preflight(r, cors) };
    }
    // SAFETY: r is live; uri and args are ngx_str_t views into its memory.
    let (uri, args, is_get, http_version, is_main) = unsafe {
        (
            (*r).uri.as_bytes(),
            (*r).args.as_bytes(),
            (*r).method == NGX_HTTP_GET as ngx_uint_t,
            (*r).http_version,
            (*r).main == r,
        )
    };
    let channels = uri.strip_prefix(lc.prefix.as_slice()).unwrap_or(b"");
    let request = UpgradeRequest {
        is_get: is_get && is_main,
        is_http11: http_version == NGX_HTTP_VERSION_11 as ngx_uint_t,
        upgrade,
        connection,
        version,
        key,
        accept,
        last_event_id,
        authorization,
        channels,
        args,
    };
    let accepted = match handshake::check(&request, lc.max_channels()) {
        Ok(accepted) => accepted,
        // SAFETY: r is live and no response was sent yet.
        Err(err) => return unsafe { refuse(r, &err, cors) },
    };
    let Some(gate) = with_worker(|w| w.hub.admissions().gate(&accepted.subscriptions)) else {
        let body = "chatup is not running in this nginx worker\n";
        // SAFETY: as above.
        return unsafe { send_text(r, 503, body, &cors_headers(cors)) };
    };
    // SAFETY: r is live and no response was sent yet.
    unsafe {
        match (gate, accepted.token.clone()) {
            (Gate::Public, _) | (Gate::Unknown, None) => dispatch(r, accepted, lc, cors, None),
            (Gate::Unknown, Some(_)) => admit::refuse(r, &AdmissionError::PolicyUnknown, cors),
            (Gate::Private(channels), None) => {
                let first = channels.into_iter().next().unwrap_or_default();
                admit::refuse(r, &AdmissionError::NoToken(first), cors)
            }
            (Gate::Private(_), Some(Err(reason))) => {
                refuse(r, &HandshakeError::Token(reason), cors)
            }
            (Gate::Private(channels), Some(Ok(token))) => {
                admit::hold(r, accepted, channels, token, cors)
            }
        }
    }
}

/// Answers an accepted request by its transport; `admission` is the id under which the
/// sidecar admitted it to private channels.
///
/// # Safety
/// `r` must be a live main request with no response sent.
pub(super) unsafe fn dispatch(
    r: *mut ngx_http_request_t,
    accepted: handshake::Accepted,
    lc: &LocConf,
    cors: Option<&[u8]>,
    admission: Option<u64>,
) -> ngx_int_t {
    // SAFETY: caller's contract.
    unsafe {
        match accepted.transport {
            Transport::WebSocket => upgrade_connection(
                r,
                accepted,
                lc.ping_interval_ms(),
                lc.max_unsent(),
                admission,
            ),
            Transport::EventStream => super::stream::start(r, accepted, lc, cors, admission),
            Transport::Poll => super::poll::start(r, accepted, lc, cors, admission),
        }
    }
}

/// The CORS response headers for an allowed origin.
pub(super) fn cors_headers(cors: Option<&[u8]>) -> Vec<(&'static str, String)> {
    match cors {
        Some(origin) => vec![
            (
                "Access-Control-Allow-Origin",
                String::from_utf8_lossy(origin).into_owned(),
            ),
            ("Vary", "Origin".to_owned()),
        ],
        None => Vec::new(),
    }
}

/// Answers a CORS preflight from an allowed origin.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn answer_preflight(r: *mut ngx_http_request_t, cors: Option<&[u8]>) -> ngx_int_t {
    let mut headers = cors_headers(cors);
    headers.push(("Access-Control-Allow-Methods", "GET".to_owned()));
    headers.push((
        "Access-Control-Allow-Headers",
        CORS_ALLOW_HEADERS.to_owned(),
    ));
    headers.push(("Access-Control-Max-Age", CORS_MAX_AGE.to_owned()));
    // SAFETY: caller's contract.
    unsafe { send_body(r, 204, "text/plain; charset=utf-8", b"", &headers) }
}

/// Answers a refused upgrade with its status and reason.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn refuse(
    r: *mut ngx_http_request_t,
    err: &HandshakeError,
    cors: Option<&[u8]>,
) -> ngx_int_t {
    // SAFETY: r is live (caller's contract), and so are its connection and log.
    let log = unsafe { (*(*r).connection).log };
    ngx_log_error!(NGX_LOG_INFO, log, "chatup: subscribe refused: {}", err);
    let body = format!("{err}\n");
    let mut extra = cors_headers(cors);
    match err {
        HandshakeError::WsVersion => extra.push(("Sec-WebSocket-Version", "13".to_owned())),
        HandshakeError::Method => extra.push(("Allow", "GET".to_owned())),
        _ => {}
    }
    // SAFETY: caller's contract.
    unsafe { send_text(r, err.status(), &body, &extra) }
}

/// Sends a complete text/plain response.
///
/// # Safety
/// `r` must be a live request with no response sent.
pub(super) unsafe fn send_text(
    r: *mut ngx_http_request_t,
    status: u16,
    body: &str,
    extra: &[(&str, String)],
) -> ngx_int_t {
    // SAFETY: caller's contract.
    unsafe {
        send_body(
            r,
            status,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            extra,
        )
    }
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
    unsafe { send_text(r, 400, "a subscriber's request has no body\n", &[]) }
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
    admission: Option<u64>,
) -> ngx_int_t {
    // SAFETY: r is live (caller's contract); all pointers below come from it.
    unsafe {
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
        let registered = Registration {
            transport: Transport::WebSocket,
            delivery: Delivery::WebSocket,
            timer_ms: ping_interval_ms,
            max_unsent,
            admission,
        };
        take_over(r, accepted, registered)
    }
}

/// How a subscriber is registered.
pub(super) struct Registration {
    pub transport: Transport,
    pub delivery: Delivery,
    /// The first run of its timer (the ping, or a poll's timeout); 0: none.
    pub timer_ms: u64,
    pub max_unsent: usize,
    /// The sidecar admitted it to private channels under this id.
    pub admission: Option<u64>,
}

/// Registers the subscriber of a request whose response header is sent (a 101, or an SSE
/// stream's 200) and takes over the connection's events.
///
/// # Safety
/// `r` must be a live main request whose header was just sent, on HTTP/1.x.
pub(super) unsafe fn take_over(
    r: *mut ngx_http_request_t,
    accepted: handshake::Accepted,
    registration: Registration,
) -> ngx_int_t {
    // SAFETY: r is live (caller's contract); all pointers below come from it.
    unsafe {
        let c = (*r).connection;
        if ngx_http_send_special(r, NGX_HTTP_FLUSH as ngx_uint_t) == NGX_ERROR as ngx_int_t {
            return NGX_ERROR as ngx_int_t;
        }
        ngx::ffi::ngx_tcp_nodelay(c);
        let Some(conn) = register(r, accepted, &registration) else {
            return NGX_ERROR as ngx_int_t;
        };

        // Bytes that arrived with the request sit in its header buffer, which is freed with
        // the request: decode them now (what they ask for goes out with the first write).
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

/// Creates the subscriber of a request: its [`SubscriberConn`], its hub entry (with its
/// replay), the request's ctx with the timer (started), and the pool cleanup that frees them
/// while the request owns the connection.
///
/// # Safety
/// `r` must be a live main request.
pub(super) unsafe fn register(
    r: *mut ngx_http_request_t,
    accepted: handshake::Accepted,
    registration: &Registration,
) -> Option<*mut SubscriberConn> {
    // SAFETY: r is live (caller's contract); all pointers below come from it.
    unsafe {
        let c = (*r).connection;
        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if cleanup.is_null() {
            return None;
        }
        let conn = Box::into_raw(Box::new(SubscriberConn {
            c,
            r,
            key: usize::MAX,
            inbuf: Vec::new(),
            ping_interval_ms: match registration.transport {
                Transport::Poll => 0,
                _ => u32::try_from(registration.timer_ms).unwrap_or(u32::MAX),
            },
            transport: registration.transport,
            heard: false,
            ping_due: false,
            input_done: false,
            closing_armed: false,
            filtered: false,
        }));
        (*cleanup).handler = Some(on_request_freed);
        (*cleanup).data = conn.cast();

        let key = with_worker(|w| {
            let key = w.hub.add_subscriber(
                conn,
                accepted.subscriptions,
                registration.max_unsent,
                registration.delivery,
            );
            if let Some(id) = registration.admission {
                w.hub.set_admission(key, id);
            }
            key
        })?;
        (*conn).key = key;
        // A channel new to this worker was just subscribed: tell the sidecar now.
        relay::flush();
        let attached = ngx_pcalloc((*r).pool, std::mem::size_of::<Attached>()).cast::<Attached>();
        if attached.is_null() {
            return None;
        }
        (*attached).conn = conn;
        let timer = addr_of_mut!((*attached).timer);
        (*timer).handler = Some(on_attached_timer);
        (*timer).data = c.cast();
        (*timer).log = (*c).log;
        (*timer).set_cancelable(1);
        Request::from_ngx_http_request(r).set_module_ctx(attached.cast(), Module::module());
        if registration.timer_ms > 0 {
            ngx::ffi::ngx_add_timer(timer, registration.timer_ms as _);
        }
        Some(conn)
    }
}
