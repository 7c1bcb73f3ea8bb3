//! The thin layer between nginx and the plain-Rust core. Everything here runs on the worker's
//! single event-loop thread; nothing is shared with other threads.
//!
//! - [`module`]: the module table; [`directives`]: the setters and the command table.
//! - [`subscriber`]: a viewer's connection, from the upgrade to its close.
//! - [`publish`]: a `POST /pub/<ch>` held while the sidecar answers it through the relay.
//! - [`response`]: complete responses (refusals, poll and publish answers).
//! - [`relay`]: the connection to the sidecar; [`worker`]: worker start, exit, state.

pub mod directives;
pub mod module;
pub mod publish;
pub mod relay;
pub mod response;
pub mod subscriber;
pub mod worker;

use std::ptr;

use ngx::ffi::{ngx_connection_t, ngx_event_handler_pt, ngx_event_t, ngx_log_t};

/// A standalone timer event that lives as long as the worker.
///
/// `ngx_event_t::data` must point at something shaped like a connection, because nginx's
/// debug logging reads a connection's fd from it; a timer that belongs to no connection gets
/// a blank one (fd -1).
pub fn new_timer(handler: ngx_event_handler_pt, log: *mut ngx_log_t) -> *mut ngx_event_t {
    // SAFETY: ngx_connection_t and ngx_event_t are plain C structs for which all-zero is a
    // valid, inert value (it is how nginx itself allocates them, with ngx_pcalloc).
    let (mut ident, mut ev): (Box<ngx_connection_t>, Box<ngx_event_t>) =
        unsafe { (Box::new(std::mem::zeroed()), Box::new(std::mem::zeroed())) };
    ident.fd = -1;
    ev.handler = handler;
    ev.log = log;
    ev.data = Box::into_raw(ident).cast();
    // Never keep a worker alive at reload or shutdown just for this timer.
    ev.set_cancelable(1);
    Box::into_raw(ev)
}

/// Frees a timer made by [`new_timer`], removing it from the timer tree first.
///
/// # Safety
/// `ev` must come from [`new_timer`] and not be used afterwards.
pub unsafe fn free_timer(ev: *mut ngx_event_t) {
    if ev.is_null() {
        return;
    }
    // SAFETY: the caller hands over a live timer from new_timer, which we own.
    unsafe {
        cancel_timer(ev);
        let ident = (*ev).data.cast::<ngx_connection_t>();
        (*ev).data = ptr::null_mut();
        drop(Box::from_raw(ident));
        drop(Box::from_raw(ev));
    }
}

/// Takes `ev` out of the timer tree if it is there.
///
/// # Safety
/// `ev` must be a live event of this worker.
pub unsafe fn cancel_timer(ev: *mut ngx_event_t) {
    // SAFETY: ev is live (caller's contract); the timer tree belongs to this thread.
    unsafe {
        if (*ev).timer_set() != 0 {
            ngx::ffi::ngx_del_timer(ev);
        }
    }
}

/// nginx's cached clock, in milliseconds.
pub fn now_ms() -> u64 {
    // SAFETY: ngx_current_msec is only written by this thread's event loop between events.
    unsafe { ngx::ffi::ngx_current_msec as u64 }
}
