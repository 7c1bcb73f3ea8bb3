//! `chatup-bench failover`: how long viewers hear nothing when Redis's primary dies.
//!
//! Starts a Redis Cluster (3 masters, 3 replicas) or a primary with a replica behind three
//! Redis Sentinels, two chat hosts (nginx + sidecar each) on it and two viewers per host,
//! publishes through both hosts at a steady rate, SIGKILLs the primary that holds the
//! channel and measures, per viewer, the time from the kill to the first delivery of a
//! message published after it. It also counts what the viewers lost or got twice of what
//! was acknowledged. The processes come from the integration harness (`chatup-tests`).

use std::time::Duration;

use chatup_tests::traffic::{self, Plan};
use chatup_tests::{Options, RedisCluster, RedisSentinel};
use serde_json::{json, Value};

use crate::BenchError;

/// The Redis deployment whose primary is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// 3 masters + 3 replicas; the master of the channel's slot is killed.
    Cluster,
    /// A primary and a replica watched by 3 sentinels (quorum 2); the primary is killed.
    Sentinel,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    #[arg(long, value_enum)]
    pub engine: Engine,
    /// How long the primary is silent before it is deemed failed: the nodes'
    /// `cluster-node-timeout`, or the sentinels' `down-after-milliseconds`.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Publishes per second, alternating between the two hosts.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Seconds of publishing after the kill (the failover must fit in it).
    #[arg(long, default_value_t = 15)]
    pub after: u64,
}

const CHANNEL: &str = "failover";

pub async fn failover(a: FailoverArgs) -> Result<Value, BenchError> {
    if a.timeout_ms == 0 || a.rate == 0 || a.after == 0 {
        return Err(BenchError::Setup(
            "--timeout-ms, --rate and --after must be at least 1".into(),
        ));
    }
    let timeout = Duration::from_millis(a.timeout_ms);
    let plan = Plan {
        channel: CHANNEL.into(),
        rate: a.rate,
        before: Duration::from_secs(2),
        after: Duration::from_secs(a.after),
        settle: Duration::from_secs(15),
    };
    let live = format!("chatup:{{{CHANNEL}}}:live");
    let (report, setting) = match a.engine {
        Engine::Cluster => {
            let mut cluster = RedisCluster::start_with(3, 1, timeout);
            let nodes = cluster.nodes();
            let (a, b, mut subs) = traffic::two_hosts(
                |address, id| Options::host_on_cluster(address, id, &nodes),
                CHANNEL,
            )
            .await;
            let owner = cluster.node_index_for(&live);
            let report = traffic::run(&[&a, &b], &mut subs, &plan, || {
                cluster.node_mut(owner).kill()
            })
            .await;
            (report, "cluster-node-timeout")
        }
        Engine::Sentinel => {
            let mut redis = RedisSentinel::start_with(timeout);
            let sentinels = redis.sentinel_urls();
            let (a, b, mut subs) = traffic::two_hosts(
                |address, id| Options::host_on_sentinel(address, id, &sentinels),
                CHANNEL,
            )
            .await;
            let report = traffic::run(&[&a, &b], &mut subs, &plan, || redis.nodes[0].kill()).await;
            (report, "down-after-milliseconds")
        }
    };
    let recovery_ms: Vec<Option<f64>> = report
        .recovery()
        .iter()
        .map(|d| d.map(|d| d.as_secs_f64() * 1000.0))
        .collect();
    let received: Vec<usize> = report.received.iter().map(Vec::len).collect();
    let lost: usize = report.missing().iter().sum();
    let duplicates: usize = report.duplicates().iter().sum();
    Ok(json!({
        "scenario": "failover",
        "engine": match a.engine { Engine::Cluster => "cluster", Engine::Sentinel => "sentinel" },
        "setting": setting,
        "timeout_ms": a.timeout_ms,
        "rate": a.rate,
        "acked": report.acked.len(),
        "acked_after_kill": report.acked_after_fault(),
        "refused": report.failed.len(),
        "received_per_viewer": received,
        "lost": lost,
        "duplicates": duplicates,
        "resyncs": report.events.iter().flatten().filter(|e| e["ev"] == "resync").count(),
        "recovery_ms_min": recovery_ms.iter().flatten().copied().reduce(f64::min),
        "recovery_ms_max": recovery_ms.iter().flatten().copied().reduce(f64::max),
        "viewers_never_recovered": recovery_ms.iter().filter(|r| r.is_none()).count(),
    }))
}
