//! A request for private channels, held until the sidecar has checked its subscribe token
//! (`crate::admission`). Nothing is sent meanwhile: the verdict either lets the request go
//! on as any other (101, event stream or poll), admitted, or refuses it with its status and
//! reason. A client that goes away meanwhile is noticed (`ngx_http_test_reading`); a
//! sidecar that does not answer within `ADMISSION_TIMEOUT_MS` gets the request a 503.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::size_of;

use ngx::ffi::{
    ngx_event_t, ngx_http_block_reading, ngx_http_finalize_request, ngx_http_request_empty_handler,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_http_test_reading, ngx_int_t,
    ngx_pcalloc, ngx_pool_cleanup_add, ngx_pool_cleanup_t, NGX_DONE, NGX_ERROR,
};
use ngx::http::{HttpModuleLocationConf, Request};

use super::poll::allowed_origin;
use super::upgrade::{cors_headers, dispatch, send_text};
use crate::admission::{AdmissionError, ADMISSION_TIMEOUT_MS};
use crate::ffi::module::Module;
use crate::ffi::worker::with_worker;
use crate::ffi::{cancel_timer, relay};
use crate::handshake::Accepted;

/// A held request, in its pool. The timer comes first: the timer handler finds the rest
/// from the event's address.
#[repr(C)]
pub struct Held {
    timer: ngx_event_t,
    r: *mut ngx_http_request_t,
    id: u64,
    /// Frees the worker's entry if nginx ends the request first; disarmed when we do.
    cleanup: *mut ngx_pool_cleanup_t,
}

/// What the worker keeps of a held request until its verdict.
struct HeldRequest {
    held: *mut Held,
    accepted: Accepted,
}

thread_local! {
    /// The held requests, by admission id. Apart from the worker state so that nginx
    /// freeing a request, whatever it is doing, can always take it out: it is borrowed only
    /// for an insert or a remove, never across a call into nginx.
    static HELD: RefCell<HashMap<u64, HeldRequest>> = RefCell::new(HashMap::new());
}

fn take_held(id: u64) -> Option<HeldRequest> {
    HELD.with(|held| held.try_borrow_mut().ok()?.remove(&id))
}

/// Sends the request's token to the sidecar and holds the request.
///
/// # Safety
/// `r` must be a live main request with no response sent.
pub(super) unsafe fn hold(
    r: *mut ngx_http_request_t,
    accepted: Accepted,
    channels: Vec<String>,
    token: String,
    cors: Option<&[u8]>,
) -> ngx_int_t {
    let id = match with_worker(|w| w.hub.request_admission(channels, token)) {
        Some(Ok(id)) => id,
        // SAFETY: caller's contract.
        Some(Err(err)) => return unsafe { refuse(r, &err, cors) },
        None => return NGX_ERROR as ngx_int_t,
    };
    relay::flush();
    // SAFETY: r is live (caller's contract); what is allocated lives in its pool.
    unsafe {
        let c = (*r).connection;
        let held = ngx_pcalloc((*r).pool, size_of::<Held>()).cast::<Held>();
        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if held.is_null() || cleanup.is_null() {
            with_worker(|w| w.hub.admissions().forget(id));
            return NGX_ERROR as ngx_int_t;
        }
        (*held).r = r;
        (*held).id = id;
        (*held).cleanup = cleanup;
        (*held).timer.handler = Some(on_timeout);
        (*held).timer.data = c.cast();
        (*held).timer.log = (*c).log;
        (*held).timer.set_cancelable(1);
        (*cleanup).handler = Some(on_request_freed);
        (*cleanup).data = held.cast();
        let kept = HELD.with(|map| {
            map.try_borrow_mut()
                .map(|mut map| map.insert(id, HeldRequest { held, accepted }))
                .is_ok()
        });
        if !kept {
            (*cleanup).handler = None;
            with_worker(|w| w.hub.admissions().forget(id));
            return NGX_ERROR as ngx_int_t;
        }
        ngx::ffi::ngx_add_timer(&mut (*held).timer, ADMISSION_TIMEOUT_MS as _);
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        (*(*r).main).set_count((*(*r).main).count() + 1);
    }
    NGX_DONE as ngx_int_t
}

/// Answers the held requests whose verdict came (or that the relay's loss failed).
pub fn answer_verdicts() {
    loop {
        let Some(verdicts) = with_worker(|w| w.hub.admissions().take_verdicts()) else {
            return;
        };
        if verdicts.is_empty() {
            return;
        }
        for (id, verdict) in verdicts {
            let Some(held) = take_held(id) else {
                if verdict.is_ok() {
                    // Admitted, but the request is gone.
                    with_worker(|w| w.hub.admitted_viewer_gone(id));
                }
                continue;
            };
            let refusal = verdict.err().map(|(status, reason)| (status, reason, None));
            // SAFETY: an entry in `held` is a request still alive: its pool cleanup removes
            // the entry when nginx frees it.
            unsafe { resume(held, refusal) };
        }
        relay::flush();
    }
}

/// Takes the request back from the hold and answers it: on with the subscription, or the
/// refusal (status, reason, `Retry-After`).
///
/// # Safety
/// `held` must be the entry of a live held request, removed from the worker's map.
unsafe fn resume(held: HeldRequest, refusal: Option<(u16, String, Option<u32>)>) {
    // SAFETY: caller's contract: the request and its pool (with Held) are alive.
    unsafe {
        let h = held.held;
        let r = (*h).r;
        let id = (*h).id;
        let c = (*r).connection;
        cancel_timer(&mut (*h).timer);
        (*(*h).cleanup).handler = None;
        (*r).read_event_handler = Some(ngx_http_block_reading);
        let cors = allowed_origin(r);
        let rc = match refusal {
            Some((status, reason, retry_after)) => {
                let mut headers = cors_headers(cors.as_deref());
                if let Some(secs) = retry_after {
                    headers.push(("Retry-After", secs.to_string()));
                } else if status == 503 {
                    headers.push(("Retry-After", "1".to_owned()));
                }
                if status == 401 {
                    headers.push(("WWW-Authenticate", "Bearer".to_owned()));
                }
                send_text(r, status, &format!("{reason}\n"), &headers)
            }
            None => {
                let req = Request::from_ngx_http_request(r);
                match Module::location_conf(req) {
                    Some(lc) => dispatch(r, held.accepted, lc, cors.as_deref(), Some(id)),
                    None => NGX_ERROR as ngx_int_t,
                }
            }
        };
        // A viewer admitted but not registered (its request failed): the sidecar forgets it.
        with_worker(|w| w.hub.admitted_viewer_gone(id));
        // Drops the count `hold` added, as the content phase would have.
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
}

/// Refuses a request the worker itself cannot admit.
///
/// # Safety
/// `r` must be a live request with no response sent.
pub(super) unsafe fn refuse(
    r: *mut ngx_http_request_t,
    err: &AdmissionError,
    cors: Option<&[u8]>,
) -> ngx_int_t {
    let mut headers = cors_headers(cors);
    if let Some(secs) = err.retry_after() {
        headers.push(("Retry-After", secs.to_string()));
    }
    if err.status() == 401 {
        headers.push(("WWW-Authenticate", "Bearer".to_owned()));
    }
    // SAFETY: caller's contract.
    unsafe { send_text(r, err.status(), &format!("{err}\n"), &headers) }
}

/// The sidecar did not answer in time.
extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: this handler is only installed on Held::timer, the first field of a Held in a
    // live request's pool (the pool cleanup deletes the timer before the pool goes).
    unsafe {
        let h = ev.cast::<Held>();
        let id = (*h).id;
        with_worker(|w| w.hub.admissions().forget(id));
        if let Some(held) = take_held(id) {
            let err = AdmissionError::TimedOut;
            resume(
                held,
                Some((err.status(), err.to_string(), err.retry_after())),
            );
        }
    }
}

/// nginx frees a held request (the client went away, or the worker is exiting).
unsafe extern "C" fn on_request_freed(data: *mut std::ffi::c_void) {
    // SAFETY: data is the Held this cleanup was registered with, still in the pool.
    unsafe {
        let h = data.cast::<Held>();
        cancel_timer(&mut (*h).timer);
        let id = (*h).id;
        take_held(id);
        // Busy further up the stack: the verdict, when it comes, finds no request and the
        // sidecar is told the viewer left.
        with_worker(|w| w.hub.admissions().forget(id));
    }
}

/// Fails every held request (the worker is going away).
pub fn fail_all(error: &AdmissionError) {
    with_worker(|w| w.hub.fail_admissions(error));
    answer_verdicts();
}
