//! Worker start and exit, and the worker's state.

use std::cell::RefCell;

use chatup_wire::close;
use ngx::ffi::{ngx_cycle_t, ngx_event_t, ngx_int_t, ngx_log_t, NGX_LOG_NOTICE, NGX_OK};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use super::module::Module;
use super::subscriber::{self, SubscriberConn};
use super::{free_timer, new_timer, relay};
use crate::admission::AdmissionError;
use crate::cache::CacheLimits;
use crate::hub::{Hub, SubscriberKey};

/// How often subscriber counts are reported to the sidecar (when they changed), and how
/// soon after a reload or quit begins the subscribers of an old worker are told to move.
const STATS_INTERVAL_MS: u64 = 1_000;

pub struct Worker {
    pub hub: Hub<*mut SubscriberConn>,
    pub relay: relay::Relay,
    /// Reused to coalesce several queued frames of a subscriber into one write.
    pub scratch: Vec<u8>,
    pub log: *mut ngx_log_t,
    stats_timer: *mut ngx_event_t,
    /// Graceful shutdown began and the subscribers were sent 1001.
    going_away: bool,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
    /// Subscribers closed (or whose request nginx ended) while the worker state was in use;
    /// they leave the hub at the next access, before anyone can reach their freed connection.
    static ORPHANS: RefCell<Vec<SubscriberKey>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the worker's state; `None` when there is none (the module is not in use
/// here) or it is already in use further up the stack.
pub fn with_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    WORKER.with(|cell| {
        let mut guard = cell.try_borrow_mut().ok()?;
        let worker = guard.as_mut()?;
        ORPHANS.with(|orphans| {
            if let Ok(mut orphans) = orphans.try_borrow_mut() {
                for key in orphans.drain(..) {
                    worker.hub.remove_subscriber(key);
                }
            }
        });
        Some(f(worker))
    })
}

/// Removes a subscriber from the hub, now or, if the state is busy, before its next use.
pub fn forget_subscriber(key: SubscriberKey) {
    if with_worker(|w| w.hub.remove_subscriber(key)).is_none() {
        ORPHANS.with(|orphans| {
            if let Ok(mut orphans) = orphans.try_borrow_mut() {
                orphans.push(key);
            }
        });
    }
}

pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: ngx_process is set by nginx before modules' init_process run.
    let process = unsafe { ngx::ffi::ngx_process } as u32;
    // Cache managers and loaders run init_process too; only workers serve subscribers.
    if process != ngx::ffi::NGX_PROCESS_WORKER && process != ngx::ffi::NGX_PROCESS_SINGLE {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: nginx passes the running cycle.
    let cycle = unsafe { &*cycle };
    let Some(conf) = Module::main_conf(cycle) else {
        return NGX_OK as ngx_int_t;
    };
    if !conf.enabled {
        return NGX_OK as ngx_int_t;
    }
    let log = cycle.log;
    let worker = Worker {
        hub: Hub::new(CacheLimits {
            messages: conf.cache_messages(),
            bytes: conf.cache_bytes(),
        }),
        relay: relay::Relay::new(conf.relay_socket(), log),
        scratch: Vec::new(),
        log,
        stats_timer: new_timer(Some(on_stats_timer), log),
        going_away: false,
    };
    let stats_timer = worker.stats_timer;
    WORKER.with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = Some(worker);
        }
    });
    // SAFETY: the timer was just created and lives until exit_process frees it.
    unsafe { ngx::ffi::ngx_add_timer(stats_timer, STATS_INTERVAL_MS as _) };
    relay::connect();
    NGX_OK as ngx_int_t
}

pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    let Some(closing) = with_worker(|w| w.hub.close_all(close::GOING_AWAY, "server going away"))
    else {
        return;
    };
    let count = closing.len();
    for (_, conn) in closing {
        // SAFETY: the hub only holds connections that are alive (closing one, or nginx
        // ending its request, removes it).
        unsafe { subscriber::close_now(conn) };
    }
    relay::shut_down();
    let taken = WORKER.with(|cell| cell.try_borrow_mut().ok().and_then(|mut w| w.take()));
    if let Some(worker) = taken {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            worker.log,
            "chatup: worker exiting, closed {} subscribers with 1001",
            count
        );
        // SAFETY: the timer came from new_timer and nothing refers to it any more.
        unsafe { free_timer(worker.stats_timer) };
    }
}

/// At reload or quit an old worker lives on while other connections (proxied publishers,
/// keep-alives) finish; its subscribers must not wait for that: they get 1001 now and
/// reconnect to a new worker. Called when nginx closes the idle connections (the relay's is
/// marked idle) at the start of the shutdown, and by the stats timer while exiting, in case
/// the relay was down then.
pub(super) fn tell_subscribers_to_move() {
    let closing = with_worker(|w| {
        if std::mem::replace(&mut w.going_away, true) {
            return Vec::new();
        }
        w.hub.close_all(close::GOING_AWAY, "server going away")
    })
    .unwrap_or_default();
    for (_, conn) in closing {
        // SAFETY: the hub only holds connections that are alive.
        unsafe { subscriber::flush(conn) };
    }
    subscriber::fail_admissions(&AdmissionError::GoingAway);
}

extern "C" fn on_stats_timer(ev: *mut ngx_event_t) {
    // SAFETY: ngx_exiting is written by this thread's cycle between events.
    if unsafe { ngx::ffi::ngx_exiting } != 0 {
        tell_subscribers_to_move();
    }
    with_worker(|w| {
        w.hub.sweep_lingering();
        w.hub.report_stats();
    });
    relay::flush();
    // SAFETY: ev is the worker's stats timer, alive until exit_process.
    unsafe { ngx::ffi::ngx_add_timer(ev, STATS_INTERVAL_MS as _) };
}
