//! Child processes the harness starts (nginx, sidecars, Redis servers and sentinels), each
//! owned by a [`ChildGuard`] that stops it when dropped, so a failing test never leaves one
//! behind; and the signals and bounded waits around them.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What dropping a [`ChildGuard`] does to a process still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL.
    Terminate,
    /// SIGKILL at once.
    Kill,
}

/// A running child process, stopped when the guard is dropped: SIGTERM and up to
/// [`STOP_TIMEOUT`] to exit, then SIGKILL ([`kill_on_drop`](Self::kill_on_drop): SIGKILL at
/// once).
///
/// A child made with [`spawn`](Self::spawn) leads a process group of its own, and SIGKILL
/// goes to the whole group, so what it forked (nginx's workers) goes with it. One made with
/// [`adopt`](Self::adopt) stays in its parent's group, so a Ctrl-C in the terminal reaches
/// it too, and only the child itself is signalled.
#[derive(Debug)]
pub struct ChildGuard {
    /// `None` once consumed by [`kill`](Self::kill) or
    /// [`wait_or_kill`](Self::wait_or_kill).
    child: Option<Child>,
    /// Whether the child leads its own process group (its pid is the group's id).
    group: bool,
    on_drop: OnDrop,
}

impl ChildGuard {
    /// Spawns `cmd` in a process group of its own.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.process_group(0).spawn()?;
        Ok(Self {
            child: Some(child),
            group: true,
            on_drop: OnDrop::Terminate,
        })
    }

    /// Guards a child spawned in the caller's process group.
    pub fn adopt(child: Child) -> Self {
        Self {
            child: Some(child),
            group: false,
            on_drop: OnDrop::Terminate,
        }
    }

    /// Dropping the guard kills the process at once (a server whose state no test needs, such
    /// as a Redis without persistence).
    pub fn kill_on_drop(mut self) -> Self {
        self.on_drop = OnDrop::Kill;
        self
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is guarded until consumed")
    }

    pub fn id(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the child is guarded until consumed")
            .id()
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: i32) {
        signal_pid(self.id(), sig);
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(self.child(), timeout)
    }

    /// SIGKILL (to the group when it has one), then reaps the process.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("the child is guarded until consumed");
        sigkill(&mut child, self.group);
        child.wait().expect("wait for a killed child")
    }

    /// Waits up to `timeout` for the exit: `Ok` with its status, or `Err` with the status
    /// after SIGKILL when it took longer.
    pub fn wait_or_kill(mut self, timeout: Duration) -> Result<ExitStatus, ExitStatus> {
        match self.wait_timeout(timeout) {
            Some(status) => {
                self.child = None;
                Ok(status)
            }
            None => Err(self.kill()),
        }
    }

    /// SIGTERM, then [`wait_or_kill`](Self::wait_or_kill).
    pub fn terminate(self, timeout: Duration) -> Result<ExitStatus, ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_or_kill(timeout)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            if self.on_drop == OnDrop::Terminate {
                signal_pid(child.id(), libc::SIGTERM);
                if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                    sigkill(&mut child, self.group);
                }
            } else {
                sigkill(&mut child, self.group);
            }
            let _ = child.wait();
        }
        if self.group {
            // What a leader forked (a crashed master's workers) must not outlive it.
            kill_group(child.id());
        }
    }
}

fn sigkill(child: &mut Child, group: bool) {
    if group {
        kill_group(child.id());
    } else {
        let _ = child.kill();
    }
}

/// Sends `sig` to `pid`.
pub fn signal_pid(pid: u32, sig: i32) {
    let sig = Signal::try_from(sig).expect("a signal number");
    // The process may have exited already.
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// SIGKILL to the process group `pgid`.
pub(crate) fn kill_group(pgid: u32) {
    // The group may be gone already.
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `ready` until it holds; `Err` with the exit status (and `child` emptied) when the
/// process exits first. Panics with `what` and `log()` after `timeout`.
pub fn wait_ready(
    child: &mut Option<ChildGuard>,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.as_mut().and_then(ChildGuard::exited) {
            *child = None;
            return Err(status);
        }
        if ready() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {timeout:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM and waits (bounded) for the exit; a process that outlives the wait is
/// killed and fails the test.
pub fn terminate(child: ChildGuard, what: &str) -> ExitStatus {
    match child.terminate(STOP_TIMEOUT) {
        Ok(status) => status,
        Err(_) => panic!("{what} did not exit within {STOP_TIMEOUT:?} of SIGTERM"),
    }
}
