//! Starting an SSE stream: its 200 and headers, then the same registration and release as a
//! WebSocket. Its bytes go out raw after release; when nginx chose chunked encoding for the
//! response, the hub frames each event as a chunk (`sse::Framing`).

use ngx::ffi::{
    ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_uint_t, NGX_ERROR,
    NGX_HTTP_VERSION_11, NGX_OK,
};

use super::upgrade::{cors_headers, push_header, take_over, Registration};
use crate::conf::LocConf;
use crate::handshake::{Accepted, Transport};
use crate::hub::Delivery;
use crate::sse::Framing;

const CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// Sends the stream's header and takes the connection over.
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
    // SAFETY: r is live (caller's contract); the header values live in its pool.
    unsafe {
        (*r).headers_out.status = 200;
        (*r).headers_out.content_type = ngx::ffi::ngx_str_t {
            len: CONTENT_TYPE.len(),
            data: CONTENT_TYPE.as_ptr().cast_mut(),
        };
        (*r).headers_out.content_type_len = (*r).headers_out.content_type.len;
        (*r).headers_out.content_length_n = -1;
        let mut headers = cors_headers(cors);
        headers.push(("Cache-Control", "no-cache".to_owned()));
        // A proxy in front that is nginx too must not buffer the stream.
        headers.push(("X-Accel-Buffering", "no".to_owned()));
        for (name, value) in &headers {
            if !push_header(r, name, value) {
                return NGX_ERROR as ngx_int_t;
            }
        }
        // Over HTTP/1.x the stream ends with the connection.
        (*r).set_keepalive(0);
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return rc;
        }
        let framing = if (*r).chunked() != 0 {
            Framing::Chunked
        } else {
            Framing::Raw
        };
        let registration = Registration {
            transport: Transport::EventStream,
            delivery: Delivery::EventStream(framing),
            timer_ms: lc.ping_interval_ms(),
            max_unsent: lc.max_unsent(),
            admission,
        };
        if (*r).http_version > NGX_HTTP_VERSION_11 as ngx_uint_t {
            return super::filtered::take_over(r, accepted, registration);
        }
        take_over(r, accepted, registration)
    }
}
