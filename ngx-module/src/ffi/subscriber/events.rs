//! The connection's event handlers: one set while the connection still belongs to its
//! request (`*_attached`), one once it is released; both lead to reading, writing and the
//! timer.

use std::mem::offset_of;

use ngx::ffi::{ngx_connection_t, ngx_event_t, ngx_http_request_t};

use super::{
    close::finalize, conn_of, read::read_client, release::try_release, timer::on_timer,
    write::flush, Attached, SubscriberConn,
};

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
pub(super) extern "C" fn on_read_attached(ev: *mut ngx_event_t) {
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
pub(super) extern "C" fn on_attached_timer(ev: *mut ngx_event_t) {
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
pub(super) extern "C" fn on_write_attached(ev: *mut ngx_event_t) {
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
pub(super) extern "C" fn on_read(ev: *mut ngx_event_t) {
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
pub(super) extern "C" fn on_write(ev: *mut ngx_event_t) {
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
