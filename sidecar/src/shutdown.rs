//! Shutdown: SIGTERM and SIGINT start a graceful stop, a second signal ends the process at
//! once.
//!
//! Every long-running task watches one [`CancellationToken`](tokio_util::sync::CancellationToken); the token is cancelled when a
//! signal arrives, and the server then waits (boundedly) for its tasks to say goodbye.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signal handlers, installed up front so that no signal is missed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
