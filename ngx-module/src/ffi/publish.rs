//! `POST /pub/<ch>` in a `chatup_publish` location ([`crate::publish`]).
//!
//! The content handler checks the path and method, then has nginx read the body
//! (`ngx_http_read_client_request_body`, which holds a reference on the request until the
//! body handler finalizes it). The body handler gathers the body (from memory, or from the
//! temporary file nginx spooled a large one to), sends a `Publish` frame on the worker's
//! relay connection and holds the request: its [`Waiting`] in the request's pool, with a
//! timer and a pool cleanup, and an entry in [`WAITING`] by publish id. The sidecar's
//! `Published` (read by `relay.rs`) is sent as the response and the request finalized. A
//! client that goes away meanwhile is noticed (`ngx_http_test_reading`), and nginx freeing
//! the request removes its entry: a late answer finds nobody and is dropped. The relay down
//! (after one attempt to connect at once) or lost gets the request a 503, no answer within
//! `PUBLISH_TIMEOUT_MS` a 504.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::size_of;

use ngx::ffi::{
    ngx_buf_t, ngx_event_t, ngx_http_discard_request_body, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_empty_handler, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_http_test_reading, ngx_int_t, ngx_pcalloc,
    ngx_pool_cleanup_add, ngx_pool_cleanup_t, ngx_read_file, NGX_DONE, NGX_ERROR,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, Request};
use ngx::ngx_log_error;

use super::module::Module;
use super::response::send_body;
use super::worker::with_worker;
use super::{cancel_timer, relay};
use crate::publish::{self, PublishError, PublishHeaders, Response, PUBLISH_TIMEOUT_MS};

/// The type of every publish answer.
const CONTENT_TYPE: &str = "application/json";

/// A held publish, in its request's pool. The timer comes first: the timer handler finds the
/// rest from the event's address.
#[repr(C)]
struct Waiting {
    timer: ngx_event_t,
    r: *mut ngx_http_request_t,
    id: u64,
    /// Frees the worker's entry if nginx ends the request first; disarmed when we do.
    cleanup: *mut ngx_pool_cleanup_t,
}

thread_local! {
    /// The held publishes, by publish id. Apart from the worker state so that nginx freeing a
    /// request, whatever it is doing, can always take it out: it is borrowed only for an
    /// insert or a remove, never across a call into nginx.
    static WAITING: RefCell<HashMap<u64, *mut Waiting>> = RefCell::new(HashMap::new());
}

fn take_waiting(id: u64) -> Option<*mut Waiting> {
    WAITING.with(|map| map.try_borrow_mut().ok()?.remove(&id))
}

/// The content handler of `chatup_publish` locations.
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
    // SAFETY: r is live; method_name and uri are ngx_str_t views into its memory.
    let (method, uri) = unsafe { ((*r).method_name.as_bytes(), (*r).uri.as_bytes()) };
    let refusal = match publish::route(method, uri, &lc.prefix) {
        Err(e) => Some(e),
        // Not worth reading a body the relay cannot take; a sidecar that is back is
        // reached now, not at the worker's next retry.
        Ok(_) => match with_worker(|w| w.hub.relay_is_up()) {
            None => Some(PublishError::NotRunning),
            Some(false) if !relay::connect_if_down() => Some(PublishError::SidecarDown),
            Some(_) => None,
        },
    };
    if let Some(e) = refusal {
        // SAFETY: r is live and no response was sent yet.
        if unsafe { ngx_http_discard_request_body(r) } != NGX_OK as ngx_int_t {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: as above.
        return unsafe { send_error(r, &e) };
    }
    // SAFETY: r is live. nginx takes a reference on the request until on_body finalizes it.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(on_body)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

/// The body is read: send it to the sidecar and wait, or answer now.
unsafe extern "C" fn on_body(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with the live request whose body it read.
    unsafe {
        if let Err(e) = hold(r) {
            let rc = send_error(r, &e);
            ngx_http_finalize_request(r, rc);
        }
    }
}

/// Sends the publish and holds the request until its answer.
///
/// # Safety
/// `r` must be a live request whose body was read and that has no response sent.
unsafe fn hold(r: *mut ngx_http_request_t) -> Result<(), PublishError> {
    // SAFETY: r is live (caller's contract).
    let req = unsafe { Request::from_ngx_http_request(r) };
    let lc = Module::location_conf(req).ok_or(PublishError::Unreadable)?;
    // SAFETY: r is live; its body was read (caller's contract).
    let body = unsafe { read_body(r) }.ok_or(PublishError::Unreadable)?;
    let mut headers = PublishHeaders::default();
    for (name, value) in req.headers_in_iterator() {
        headers.offer(name.as_bytes(), value.as_bytes());
    }
    // SAFETY: r is live; uri is an ngx_str_t view into its memory.
    let uri = unsafe { (*r).uri.as_bytes() };
    let channel = uri.strip_prefix(lc.prefix.as_slice()).unwrap_or(b"");
    let id = with_worker(|w| w.hub.request_publish(channel, headers, body))
        .ok_or(PublishError::NotRunning)??;
    // Publishes read in the same turn of the event loop share one write.
    relay::flush_soon();
    // SAFETY: r is live (caller's contract); what is allocated lives in its pool.
    let held = unsafe {
        let c = (*r).connection;
        let waiting = ngx_pcalloc((*r).pool, size_of::<Waiting>()).cast::<Waiting>();
        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if waiting.is_null() || cleanup.is_null() {
            false
        } else {
            (*waiting).r = r;
            (*waiting).id = id;
            (*waiting).cleanup = cleanup;
            (*waiting).timer.handler = Some(on_timeout);
            (*waiting).timer.data = c.cast();
            (*waiting).timer.log = (*c).log;
            // Not cancelable: a worker that is shutting down waits for the answer (at most
            // PUBLISH_TIMEOUT_MS) rather than drop a publish the sidecar may have made.
            let kept = WAITING.with(|map| {
                map.try_borrow_mut()
                    .map(|mut map| map.insert(id, waiting))
                    .is_ok()
            });
            if kept {
                (*cleanup).handler = Some(on_request_freed);
                (*cleanup).data = waiting.cast();
                ngx::ffi::ngx_add_timer(&mut (*waiting).timer, PUBLISH_TIMEOUT_MS as _);
                (*r).read_event_handler = Some(ngx_http_test_reading);
                (*r).write_event_handler = Some(ngx_http_request_empty_handler);
            }
            kept
        }
    };
    if !held {
        with_worker(|w| w.hub.publishes().forget(id));
        return Err(PublishError::Unreadable);
    }
    Ok(())
}

/// The request body, gathered from its buffers: in memory, or in the temporary file nginx
/// wrote a body larger than `client_body_buffer_size` to (read back as nginx's own proxy
/// reads it, from the page cache it was just written to). `None` if it cannot be read.
///
/// # Safety
/// `r` must be a live request whose body was read.
unsafe fn read_body(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    // SAFETY: r is live; its request_body and the chain's buffers and file live in its pool.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return Some(body);
        }
        let mut cl = (*rb).bufs;
        while !cl.is_null() {
            let b: *mut ngx_buf_t = (*cl).buf;
            cl = (*cl).next;
            if b.is_null() {
                continue;
            }
            let in_memory = (*b).temporary() != 0 || (*b).memory() != 0 || (*b).mmap() != 0;
            if in_memory {
                let len = usize::try_from((*b).last.offset_from((*b).pos)).ok()?;
                if len > 0 {
                    body.extend_from_slice(std::slice::from_raw_parts((*b).pos, len));
                }
            } else if (*b).in_file() != 0 && !(*b).file.is_null() {
                let len = usize::try_from((*b).file_last - (*b).file_pos).ok()?;
                let start = body.len();
                body.resize(start + len, 0);
                let mut done = 0;
                while done < len {
                    let n = ngx_read_file(
                        (*b).file,
                        body.as_mut_ptr().add(start + done),
                        len - done,
                        (*b).file_pos + done as i64,
                    );
                    let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
                    done += n;
                }
            }
        }
    }
    Some(body)
}

/// Sends the worker's own answer to a publish.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn send_error(r: *mut ngx_http_request_t, e: &PublishError) -> ngx_int_t {
    // SAFETY: r is live (caller's contract), and so are its connection and log.
    let log = unsafe { (*(*r).connection).log };
    ngx_log_error!(
        NGX_LOG_INFO,
        log,
        "chatup: publish answered {}: {}",
        e.status(),
        e
    );
    // SAFETY: caller's contract.
    unsafe { send(r, &Response::from(e)) }
}

/// Sends a publish's response.
///
/// # Safety
/// `r` must be a live request with no response sent.
unsafe fn send(r: *mut ngx_http_request_t, response: &Response) -> ngx_int_t {
    let headers: Vec<(&str, String)> = response
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    // SAFETY: caller's contract.
    unsafe { send_body(r, response.status, CONTENT_TYPE, &response.body, &headers) }
}

/// Answers the held publishes whose answer came (or that the relay's loss failed).
pub fn answer_waiting() {
    loop {
        let Some(answers) = with_worker(|w| w.hub.publishes().take_answers()) else {
            return;
        };
        if answers.is_empty() {
            return;
        }
        for (id, answer) in answers {
            let Some(waiting) = take_waiting(id) else {
                continue;
            };
            let response = match answer {
                Ok(answer) => publish::response(answer),
                Err(e) => Response::from(&e),
            };
            // SAFETY: an entry of WAITING is a request still alive: its pool cleanup removes
            // the entry when nginx frees it.
            unsafe { resume(waiting, &response) };
        }
    }
}

/// Takes the request back from the wait and answers it.
///
/// # Safety
/// `waiting` must be the entry of a live held request, removed from [`WAITING`].
unsafe fn resume(waiting: *mut Waiting, response: &Response) {
    // SAFETY: caller's contract: the request and its pool (with Waiting) are alive.
    unsafe {
        let r = (*waiting).r;
        let c = (*r).connection;
        cancel_timer(&mut (*waiting).timer);
        (*(*waiting).cleanup).handler = None;
        (*r).read_event_handler = Some(ngx::ffi::ngx_http_block_reading);
        let rc = send(r, response);
        // Drops the reference the body reading took, as the body handler would have.
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}

/// The sidecar did not answer in time.
extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only installed on Waiting::timer, the first field of a Waiting
    // in a live request's pool (the pool cleanup deletes the timer before the pool goes).
    unsafe {
        let waiting = ev.cast::<Waiting>();
        let id = (*waiting).id;
        with_worker(|w| w.hub.publishes().forget(id));
        if let Some(waiting) = take_waiting(id) {
            resume(waiting, &Response::from(&PublishError::TimedOut));
        }
    }
}

/// nginx frees a held request (the client went away, or the worker is exiting).
unsafe extern "C" fn on_request_freed(data: *mut std::ffi::c_void) {
    // SAFETY: data is the Waiting this cleanup was registered with, still in the pool.
    unsafe {
        let waiting = data.cast::<Waiting>();
        cancel_timer(&mut (*waiting).timer);
        let id = (*waiting).id;
        take_waiting(id);
        // Busy further up the stack: the answer, when it comes, finds no request.
        with_worker(|w| w.hub.publishes().forget(id));
    }
}
