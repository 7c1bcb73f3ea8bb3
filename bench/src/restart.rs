//! The sidecar restart of a fan-out run (`--restart-sidecar-at`): under publishing, every
//! host's sidecar is stopped with SIGTERM and a new one started with the same configuration
//! as soon as the old one has exited.
//!
//! The viewers stay connected to nginx meanwhile: each worker's relay reconnects to the new
//! sidecar and subscribes again from the last position it holds, and the sidecar answers
//! with the backlog from Redis. The publishers reconnect too ([`crate::publish`]). What is
//! measured: how long the old sidecar took to exit and the new one to be ready, when every
//! worker's relay was back, when every viewer got a message sent after the new sidecar
//! started (stamped by the load processes, so the figure does not depend on how often the
//! bench looks), the new sidecar's CPU until then, and how many relay subscriptions it saw:
//! one per channel per worker, not one per viewer.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::load::Fleet;
use crate::payload::now_ns;
use crate::procfs::CpuMeter;
use crate::publish::read_response;
use crate::stack::Stack;
use crate::BenchError;

/// How long the old sidecar may take to exit after SIGTERM (its own grace is 5 s).
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long the new sidecar may take to listen.
const READY_WAIT: Duration = Duration::from_secs(20);
/// How long the nginx workers' relays may take to connect to it (they retry at least once
/// a second).
const RELAYS_WAIT: Duration = Duration::from_secs(10);
/// How often the processes and the metrics are looked at while waiting for them.
const POLL: Duration = Duration::from_millis(5);

/// The restart of a run: when it is due, what happened, and when every viewer recovered.
pub struct SidecarRestart {
    /// Seconds into the publishing when the sidecars are stopped.
    at: f64,
    /// Channels each viewer watches (its room and the quiet ones): with the relay
    /// workers, what the new sidecar's subscription count is weighed against.
    channels: usize,
    /// Once the new sidecars listen.
    restarted: Option<Restarted>,
    /// Once every viewer got a message the new sidecars published.
    recovered: Option<Recovery>,
    /// The relay as the new sidecars saw it (at the recovery, else at the end).
    relay: Option<RelayView>,
    /// (seconds since the stop, viewers caught up) every half second: where the time goes.
    timeline: Vec<(f64, u64)>,
}

/// What the restart itself took.
struct Restarted {
    /// When SIGTERM was sent, on the bench's clock and as Unix ns (the load processes'
    /// clock, which stamps the catch-ups).
    stopped: Instant,
    stopped_ns: u64,
    /// Seconds from SIGTERM until every old sidecar had exited.
    exit_s: f64,
    /// Seconds from the new sidecars' start until each answered HTTP and had its relay
    /// socket.
    ready_s: f64,
    /// Seconds from SIGTERM until every nginx worker's relay was connected again; `None`
    /// when they were not within [`RELAYS_WAIT`].
    relays_back_s: Option<f64>,
    /// The new sidecars' CPU from their start.
    cpu: CpuMeter,
    /// Viewers the server had closed before the stop, to tell those closed by the restart.
    closed_before: u64,
}

/// When every viewer had a delivery again.
struct Recovery {
    /// Seconds from SIGTERM until the last viewer received a message sent after the new
    /// sidecars started.
    all_s: f64,
    /// Seconds from SIGTERM until the first such message was sent: how much of `all_s`
    /// was the publishers' (their reconnect, their rate).
    first_sent_s: f64,
    /// The new sidecars' CPU until then.
    sidecar_cpu: Duration,
}

/// The new sidecars' relay, from their `/metrics`.
struct RelayView {
    /// `chatup_relay_workers`: nginx workers connected.
    workers: u64,
    /// `chatup_broker_read_seconds_count{op="subscribe"}`: the broker subscriptions the
    /// relay made, one per `Subscribe` frame of a worker (a retry while the broker is down
    /// would count again; Redis stays up here).
    subscribes: u64,
}

impl SidecarRestart {
    pub fn new(at: f64, channels: usize) -> Self {
        Self {
            at,
            channels,
            restarted: None,
            recovered: None,
            relay: None,
            timeline: Vec::new(),
        }
    }

    /// Whether the restart happened and every viewer recovered (or the restart is still
    /// to come).
    pub fn settled(&self) -> bool {
        self.restarted.is_none() || self.recovered.is_some()
    }

    /// Restarts the sidecars when it is time, and notes when every viewer has recovered.
    pub async fn step(
        &mut self,
        stack: &mut Stack,
        fleet: &mut Fleet,
        started: Instant,
        scenario: &str,
    ) -> Result<(), BenchError> {
        match &self.restarted {
            None if started.elapsed().as_secs_f64() >= self.at => {
                self.restarted = Some(restart(stack, fleet, scenario).await?);
            }
            Some(r) if self.recovered.is_none() => {
                let p = fleet.totals();
                let t = r.stopped.elapsed().as_secs_f64();
                let all = p.caught_up >= p.connected;
                // Every half second, and the last point.
                let point = (round(t, 2), p.caught_up);
                match self.timeline.last_mut() {
                    Some(last) if last.0 == point.0 => *last = point,
                    Some(last) if !all && t - last.0 < 0.5 => {}
                    _ => self.timeline.push(point),
                }
                if all {
                    let since_stop = |ns: u64| ns.saturating_sub(r.stopped_ns) as f64 / 1e9;
                    let recovery = Recovery {
                        all_s: since_stop(p.caught_up_last_ns),
                        first_sent_s: since_stop(p.caught_up_first_sent_ns),
                        sidecar_cpu: r.cpu.used(),
                    };
                    eprintln!(
                        "[{scenario}] every viewer got messages again {:.2} s after the stop",
                        recovery.all_s
                    );
                    self.recovered = Some(recovery);
                    self.relay = Some(relay_view(stack).await?);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads the relay when the recovery never came (the figures say what the sidecar saw
    /// by the end).
    pub async fn finish(&mut self, stack: &Stack) -> Result<(), BenchError> {
        if self.restarted.is_some() && self.relay.is_none() {
            self.relay = Some(relay_view(stack).await?);
        }
        Ok(())
    }

    /// The `restart` object of the result; `closed` is every viewer close of the run.
    pub fn result(&self, closed: u64) -> Option<Value> {
        let r = self.restarted.as_ref()?;
        let recovered = self.recovered.as_ref();
        let relay = self.relay.as_ref();
        Some(json!({
            "restart_sidecar_at_s": self.at,
            "stop_to_exit_s": round(r.exit_s, 3),
            "ready_s": round(r.ready_s, 3),
            "relays_back_s": r.relays_back_s.map(|s| round(s, 3)),
            "first_fresh_sent_s": recovered.map(|v| round(v.first_sent_s, 3)),
            "recovery_s": recovered.map(|v| round(v.all_s, 3)),
            "sidecar_cpu_ms_until_recovered": recovered
                .map(|v| round(v.sidecar_cpu.as_secs_f64() * 1e3, 1)),
            "relay_workers": relay.map(|v| v.workers),
            "relay_subscribes": relay.map(|v| v.subscribes),
            // 1 when each worker subscribed once to each channel, as the viewers stayed;
            // more when a worker's viewers all left and came back (a private channel's).
            "relay_subscribes_per_worker_channel": relay.map(|v| {
                round(v.subscribes as f64 / (v.workers * self.channels as u64).max(1) as f64, 2)
            }),
            "viewers_closed": closed.saturating_sub(r.closed_before),
            "timeline_s_caught_up": self.timeline,
        }))
    }
}

/// Stops every sidecar, starts new ones once the old have exited, and waits until they
/// listen and the workers' relays are connected to them.
async fn restart(
    stack: &mut Stack,
    fleet: &mut Fleet,
    scenario: &str,
) -> Result<Restarted, BenchError> {
    let closed_before = fleet.totals().closed;
    let stopped = Instant::now();
    let stopped_ns = now_ns();
    stack.terminate_sidecars();
    eprintln!("[{scenario}] sidecar stopped (SIGTERM)");
    while !stack.sidecars_exited() {
        if stopped.elapsed() > EXIT_WAIT {
            return Err(BenchError::Protocol(format!(
                "the sidecar did not exit within {} s of SIGTERM",
                EXIT_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let exit_s = stopped.elapsed().as_secs_f64();
    // Every old sidecar is gone: a message sent from now on is the new ones'.
    fleet.watch(now_ns()).await?;
    let launched = Instant::now();
    stack.start_sidecars()?;
    let cpu = CpuMeter::start(&stack.sidecar_pids());
    while !stack.sidecars_ready()? {
        if launched.elapsed() > READY_WAIT {
            return Err(BenchError::Protocol(format!(
                "the new sidecar did not listen within {} s",
                READY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let ready_s = launched.elapsed().as_secs_f64();
    eprintln!("[{scenario}] new sidecar ready in {ready_s:.3} s");
    let workers = stack.worker_pids().len() as u64;
    let mut relays_back_s = None;
    while launched.elapsed() < READY_WAIT + RELAYS_WAIT {
        if relay_view(stack).await?.workers >= workers {
            relays_back_s = Some(stopped.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Restarted {
        stopped,
        stopped_ns,
        exit_s,
        ready_s,
        relays_back_s,
        cpu,
        closed_before,
    })
}

/// The relay of every host's sidecar, added up.
async fn relay_view(stack: &Stack) -> Result<RelayView, BenchError> {
    let mut view = RelayView {
        workers: 0,
        subscribes: 0,
    };
    for addr in stack.sidecar_addrs() {
        let text = scrape(addr).await?;
        view.workers += metric_sum(&text, "chatup_relay_workers", "");
        view.subscribes += metric_sum(
            &text,
            "chatup_broker_read_seconds_count",
            r#"op="subscribe""#,
        );
    }
    Ok(view)
}

/// The sidecar's `/metrics` at `addr` (it needs no token).
async fn scrape(addr: std::net::SocketAddr) -> Result<String, BenchError> {
    let failed = |e: &dyn std::fmt::Display| {
        BenchError::Protocol(format!("scrape the sidecar's /metrics at {addr}: {e}"))
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        read_response(&mut BufReader::new(stream)).await
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| failed(&"no answer in 5 s"))?
        .map_err(|e| failed(&e))?;
    if status != 200 {
        return Err(failed(&format!("status {status}")));
    }
    String::from_utf8(body).map_err(|e| failed(&e))
}

/// The sum of the samples of metric `name` whose labels contain `label` (every sample
/// with an empty `label`), in a Prometheus text scrape.
fn metric_sum(scrape: &str, name: &str, label: &str) -> u64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            if metric != name || !labels.contains(label) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let scrape = "# HELP chatup_relay_workers nginx workers\n\
                      # TYPE chatup_relay_workers gauge\n\
                      chatup_relay_workers 2\n\
                      chatup_relay_workers_other 9\n\
                      chatup_broker_read_seconds_count{broker=\"redis\",op=\"history\"} 7\n\
                      chatup_broker_read_seconds_count{broker=\"redis\",op=\"subscribe\"} 4\n\
                      chatup_broker_read_seconds_sum{broker=\"redis\",op=\"subscribe\"} 0.5\n";
        assert_eq!(metric_sum(scrape, "chatup_relay_workers", ""), 2);
        assert_eq!(
            metric_sum(
                scrape,
                "chatup_broker_read_seconds_count",
                r#"op="subscribe""#
            ),
            4
        );
        assert_eq!(
            metric_sum(scrape, "chatup_broker_read_seconds_count", ""),
            11
        );
        assert_eq!(metric_sum(scrape, "chatup_absent", ""), 0);
    }
}
