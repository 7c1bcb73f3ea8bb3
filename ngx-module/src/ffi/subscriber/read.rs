//! Reading from the viewer: its frames (pings, pongs, close) and protocol errors.

use std::sync::Arc;

use chatup_wire::close;
use ngx::ffi::{NGX_AGAIN, NGX_LOG_INFO, NGX_OK};
use ngx::ngx_log_error;

use super::{close::finalize, write::flush, SubscriberConn};
use crate::ffi::worker::with_worker;
use crate::handshake::Transport;
use crate::ws::{self, ClientFrame, Opcode};

/// Bytes read from a client per recv.
const READ_CHUNK: usize = 4096;

/// Reads and handles what the client sent.
///
/// # Safety
/// `conn` must be a live subscriber.
pub(super) unsafe fn read_client(conn: *mut SubscriberConn) {
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
pub(super) unsafe fn handle_input(conn: *mut SubscriberConn, bytes: &[u8]) {
    // SAFETY: conn is live (caller's contract) and only touched from this thread.
    let conn = unsafe { &mut *conn };
    if conn.input_done {
        return;
    }
    if conn.transport != Transport::WebSocket {
        // An SSE client has nothing to say after its request: whatever comes is ignored.
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
