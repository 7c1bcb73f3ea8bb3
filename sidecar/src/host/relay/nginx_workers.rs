//! The nginx workers connected to the relay and their latest counts: what the load
//! reports, the dispatcher and the metrics read. Named for nginx's worker processes, not the
//! chat-host role.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chatup_wire::{ChannelCount, Totals};

use crate::metrics::{Metrics, MetricsError};

/// The latest `Stats` of one connected worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxWorkerStats {
    /// The worker's process id, from its `Hello`.
    pub pid: u32,
    /// Its subscriber connections.
    pub subscribers: u32,
    /// Its subscribers per channel.
    pub channels: Vec<ChannelCount>,
    /// What it did for its subscribers during this connection (see [`Totals`]).
    pub totals: Totals,
}

/// The connected workers and their latest counts, for load reporting and metrics.
#[derive(Debug, Default)]
pub struct NginxWorkers {
    /// The workers' stats, and what the closed connections reported, under one lock so that
    /// a scrape never sees a closing connection's totals twice or not at all.
    table: Mutex<NginxWorkerTable>,
    /// What the relay sent and why connections ended, for metrics.
    pub traffic: RelayTraffic,
}

#[derive(Debug, Default)]
struct NginxWorkerTable {
    /// Keyed by relay connection, so a restarted worker reusing a pid is not confused
    /// with the old one.
    by_connection: HashMap<u64, NginxWorkerStats>,
    /// The last totals of every closed connection, added up: the host's totals never go
    /// down when a worker goes away.
    retired: Totals,
}

/// Counters of the relay's own work, read by [`crate::metrics`] at each scrape.
#[derive(Debug, Default)]
pub struct RelayTraffic {
    /// Live messages written to workers.
    pub live_messages: AtomicU64,
    /// Messages written to workers in backlogs (answers to `Subscribe`).
    pub backlog_messages: AtomicU64,
    /// Connections the worker closed.
    pub closed: AtomicU64,
    /// Connections dropped for a protocol or socket error.
    pub failed: AtomicU64,
    /// Connections dropped because the worker let its queue overflow.
    pub overflowed: AtomicU64,
    /// `POST /pub/<ch>` requests the workers carried over the relay (`Publish` frames).
    pub publishes: AtomicU64,
}

impl NginxWorkers {
    /// The current workers' stats.
    pub fn snapshot(&self) -> Vec<NginxWorkerStats> {
        let table = self.lock();
        table.by_connection.values().cloned().collect()
    }

    /// Subscribers on this host, summed over workers.
    pub fn total_subscribers(&self) -> u64 {
        let table = self.lock();
        table
            .by_connection
            .values()
            .map(|w| u64::from(w.subscribers))
            .sum()
    }

    /// Connected workers.
    pub fn connected(&self) -> usize {
        self.lock().by_connection.len()
    }

    /// What this host's workers did for their subscribers since this sidecar started:
    /// the connected workers' totals plus those of every closed connection.
    pub fn totals(&self) -> Totals {
        let table = self.lock();
        table
            .by_connection
            .values()
            .fold(table.retired, |sum, w| sum.plus(w.totals))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NginxWorkerTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set(&self, conn: u64, mut stats: NginxWorkerStats) {
        let mut table = self.lock();
        // A connection's totals only grow; a report that says otherwise changes nothing.
        if let Some(old) = table.by_connection.get(&conn) {
            stats.totals = stats.totals.max(old.totals);
        }
        table.by_connection.insert(conn, stats);
    }

    pub(super) fn remove(&self, conn: u64) {
        let mut table = self.lock();
        if let Some(gone) = table.by_connection.remove(&conn) {
            table.retired = table.retired.plus(gone.totals);
        }
    }

    /// Registers the metrics of the relay and of what the nginx workers report through it,
    /// read from these stats at each scrape.
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) -> Result<(), MetricsError> {
        let w = self.clone();
        metrics.read_gauge(
            "chatup_subscribers",
            "Subscriber connections on this host, as its nginx workers last reported them.",
            move || w.total_subscribers(),
        )?;
        let w = self.clone();
        metrics.read_gauge(
            "chatup_relay_workers",
            "nginx workers connected to this sidecar's relay socket.",
            move || w.connected() as u64,
        )?;
        let w = self.clone();
        metrics.read_counters(
            "chatup_messages_delivered_total",
            "Messages the nginx workers queued to subscribers, once per subscriber: \
             source=live as they arrived, source=replay from the cache to a subscriber that \
             connected or resumed. Reported by the workers about once a second.",
            "source",
            move || {
                let totals = w.totals();
                vec![("live", totals.delivered), ("replay", totals.replayed)]
            },
        )?;
        let w = self.clone();
        metrics.read_counter(
            "chatup_slow_subscriber_closes_total",
            "Subscribers the nginx workers closed (4000) because they fell too far behind.",
            move || w.totals().slow_closes,
        )?;
        let w = self.clone();
        metrics.read_counters(
            "chatup_relay_messages_sent_total",
            "Messages the relay wrote to nginx workers: via=live as published, via=backlog \
             in answer to a subscription.",
            "via",
            move || {
                let t = &w.traffic;
                vec![
                    ("live", t.live_messages.load(Ordering::Relaxed)),
                    ("backlog", t.backlog_messages.load(Ordering::Relaxed)),
                ]
            },
        )?;
        let w = self.clone();
        metrics.read_counter(
            "chatup_relay_publishes_total",
            "POST /pub/<channel> requests the nginx workers answered through the relay \
             (chatup_publish locations), whatever their outcome.",
            move || w.traffic.publishes.load(Ordering::Relaxed),
        )?;
        let w = self.clone();
        metrics.read_counters(
            "chatup_relay_disconnects_total",
            "nginx worker connections that ended, by reason: closed (by the worker), failed \
             (protocol or socket error), overflow (the worker let its queue fill up).",
            "reason",
            move || {
                let t = &w.traffic;
                vec![
                    ("closed", t.closed.load(Ordering::Relaxed)),
                    ("failed", t.failed.load(Ordering::Relaxed)),
                    ("overflow", t.overflowed.load(Ordering::Relaxed)),
                ]
            },
        )
    }
}
