//! `chatup-bench report`: turns the JSON lines of a benchmark run into the results section
//! of BENCHMARKS.md, with each target marked met or missed.
//!
//! Only the part between the two marker lines is rewritten, so the hand-written parts of
//! the file (method notes, profiles, before/after of changes) survive a new run.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::BenchError;

pub const BEGIN: &str = "<!-- chatup-bench report: begin (generated, do not edit) -->";
pub const END: &str = "<!-- chatup-bench report: end -->";

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// JSON lines written by the scenarios (one result per line).
    pub results: PathBuf,
    /// Markdown file whose generated section is replaced (created when missing);
    /// without it the section goes to stdout.
    #[arg(long, value_name = "FILE")]
    pub into: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(&args.results)
        .map_err(|e| BenchError::Setup(format!("read {}: {e}", args.results.display())))?;
    let mut runs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| {
            BenchError::Setup(format!("{} line {}: {e}", args.results.display(), n + 1))
        })?;
        runs.push(value);
    }
    let section = render(&runs, &args.results);
    match &args.into {
        None => print!("{section}"),
        Some(path) => write_into(path, &section)?,
    }
    Ok(())
}

/// Replaces the generated section of `path` (or adds it); a missing file is created, one
/// that cannot be read is left alone.
fn write_into(path: &Path, section: &str) -> Result<(), BenchError> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(BenchError::Setup(format!("read {}: {e}", path.display()))),
    };
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &old[..b], &old[e + END.len()..])
        }
        _ if old.is_empty() => format!("# chatup benchmarks\n\n{section}\n"),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// The bound a target sets, in whole units.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(u32),
    AtLeast(u32),
}

impl Bound {
    fn met(self, x: f64) -> bool {
        match self {
            Bound::AtMost(b) => x <= f64::from(b),
            Bound::AtLeast(b) => x >= f64::from(b),
        }
    }
}

impl fmt::Display for Bound {
    /// `≤ 5`, `≥ 20,000`.
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sign, b) = match *self {
            Bound::AtMost(b) => ('≤', b),
            Bound::AtLeast(b) => ('≥', b),
        };
        let digits = b.to_string();
        write!(out, "{sign} ")?;
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.write_char(',')?;
            }
            out.write_char(digit)?;
        }
        Ok(())
    }
}

/// A target: what it measures, the bound, and where the figure comes from.
struct Target {
    name: &'static str,
    /// Picks the run the target is judged on (the last that applies).
    applies: fn(&Value) -> bool,
    /// Where the figure is in that run.
    path: &'static [&'static str],
    /// What the figure is divided by to be in `unit`.
    scale: f64,
    bound: Bound,
    unit: &'static str,
}

impl Target {
    /// The figure of the last run the target applies to.
    fn figure(&self, runs: &[Value]) -> Option<f64> {
        Some(f(latest(runs, self.applies)?, self.path)? / self.scale)
    }
}

/// The last of `runs` that `pick` picks.
fn latest(runs: &[Value], pick: impl Fn(&Value) -> bool) -> Option<&Value> {
    runs.iter().rev().find(|r| pick(r))
}

/// The value at `path` in `v` (a key that is a number indexes an array).
fn lookup<'a>(v: &'a Value, path: &[impl AsRef<str>]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Array(items) => items.get(k.as_ref().parse::<usize>().ok()?),
        _ => v.get(k.as_ref()),
    })
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    lookup(v, path)?.as_f64()
}

/// The targets are the WebSocket's; runs of other transports (and older results, which
/// do not say) are shown beside them.
fn is_ws(v: &Value) -> bool {
    v["transport"].as_str().unwrap_or("ws") == "ws"
}

fn is_fanout_5000(v: &Value) -> bool {
    is_ws(v)
        && v["scenario"] == "fanout"
        && v["subscribers"] == 5000
        && v["server"]["workers"] == 1
        && f(v, &["rate_per_room"]) == Some(10.0)
}

/// The run's broker; runs against `--url` (and older results) say none: memory.
fn broker(v: &Value) -> &str {
    v["server"]["broker"].as_str().unwrap_or("memory")
}

/// The run's chat hosts (1 when the result does not say).
fn hosts(v: &Value) -> u64 {
    v["server"]["hosts"].as_u64().unwrap_or(1)
}

fn is_fanout_100_at_1000(v: &Value) -> bool {
    is_ws(v)
        && v["scenario"] == "fanout"
        && v["subscribers"] == 100
        && f(v, &["rate_per_room"]) == Some(1000.0)
}

fn is_sidecar_path(v: &Value) -> bool {
    is_fanout_100_at_1000(v) && broker(v) == "memory" && hosts(v) == 1
}

fn is_redis_path(v: &Value) -> bool {
    is_fanout_100_at_1000(v) && broker(v) == "redis" && hosts(v) == 2
}

fn is_idle_50k(v: &Value) -> bool {
    is_ws(v) && v["scenario"] == "idle" && v["subscribers"] == 50_000 && v["server"]["workers"] == 4
}

fn is_publish_one_sidecar(v: &Value) -> bool {
    v["scenario"] == "publish"
        && broker(v) == "memory"
        && hosts(v) == 1
        && v["via"].as_str().unwrap_or("ws") == "ws"
}

const TARGETS: &[Target] = &[
    Target {
        name: "idle: worker RSS per subscriber, 50,000 subscribers, 4 workers",
        applies: is_idle_50k,
        path: &["rss_per_subscriber_bytes"],
        scale: 1024.0,
        bound: Bound::AtMost(3),
        unit: "KB",
    },
    Target {
        name: "fanout 5,000 × 10 msg/s, 1 worker: nginx CPU per delivery",
        applies: is_fanout_5000,
        path: &["nginx_cpu_us_per_delivery"],
        scale: 1.0,
        bound: Bound::AtMost(5),
        unit: "µs",
    },
    Target {
        name: "fanout 5,000 × 10 msg/s, 1 worker: latency p50",
        applies: is_fanout_5000,
        path: &["latency_ms", "p50"],
        scale: 1.0,
        bound: Bound::AtMost(15),
        unit: "ms",
    },
    Target {
        name: "fanout 5,000 × 10 msg/s, 1 worker: latency p99",
        applies: is_fanout_5000,
        path: &["latency_ms", "p99"],
        scale: 1.0,
        bound: Bound::AtMost(30),
        unit: "ms",
    },
    Target {
        name: "through the sidecar (memory broker), 100 subscribers × 1,000 msg/s: latency p99",
        applies: is_sidecar_path,
        path: &["latency_ms", "p99"],
        scale: 1.0,
        bound: Bound::AtMost(5),
        unit: "ms",
    },
    Target {
        name: "through Redis, 2 hosts, 100 subscribers × 1,000 msg/s: latency p99",
        applies: is_redis_path,
        path: &["latency_ms", "p99"],
        scale: 1.0,
        bound: Bound::AtMost(10),
        unit: "ms",
    },
    Target {
        name: "publish: acked messages/s through one sidecar",
        applies: is_publish_one_sidecar,
        path: &["acked_per_s"],
        scale: 1.0,
        bound: Bound::AtLeast(20_000),
        unit: "msg/s",
    },
];

/// Messages lost in a run (for the publish scenario: ids skipped or never acked).
fn lost(v: &Value) -> f64 {
    if v["scenario"] == "publish" {
        f(v, &["id_gaps"]).unwrap_or(0.0) + f(v, &["unacked"]).unwrap_or(0.0)
    } else {
        f(v, &["lost"]).unwrap_or(0.0)
    }
}

fn num(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn render(runs: &[Value], source: &Path) -> String {
    let mut md = String::new();
    // Writing to a String does not fail.
    let _ = write_section(&mut md, runs, source);
    md
}

fn write_section(md: &mut String, runs: &[Value], source: &Path) -> fmt::Result {
    writeln!(md, "{BEGIN}\n")?;
    let machine = runs
        .iter()
        .find_map(|r| r["machine"].as_str())
        .unwrap_or("unknown machine");
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "Machine: {machine}. Raw results: `{}`.\n",
        source.display()
    )?;
    write_targets(md, runs)?;
    writeln!(md, "\n### Runs\n")?;
    for run in runs {
        write_run(md, run)?;
    }
    writeln!(md, "{END}")
}

/// The targets table, then the module's CPU as a multiple of the kernel floor.
fn write_targets(md: &mut String, runs: &[Value]) -> fmt::Result {
    writeln!(md, "### Targets\n")?;
    writeln!(md, "| target | bound | measured | met |")?;
    writeln!(md, "|---|---|---|---|")?;
    for t in TARGETS {
        let figure = t.figure(runs);
        let met = figure.map_or("not run", |x| verdict(t.bound.met(x)));
        let (unit, measured) = (t.unit, num(figure));
        writeln!(
            md,
            "| {} | {} {unit} | {measured} {unit} | {met} |",
            t.name, t.bound
        )?;
    }
    let total_lost: f64 = runs.iter().map(lost).sum();
    writeln!(
        md,
        "| zero loss in every scenario | 0 | {} | {} |",
        num(Some(total_lost)),
        verdict(total_lost == 0.0)
    )?;
    let floor = latest(runs, |r| r["scenario"] == "floor")
        .and_then(|r| f(r, &["server_cpu_us_per_delivery"]));
    let module = latest(runs, is_fanout_5000).and_then(|r| f(r, &["nginx_cpu_us_per_delivery"]));
    if let (Some(floor), Some(module)) = (floor, module) {
        writeln!(
            md,
            "\nThe kernel floor here is {} µs per delivery; the module spends {} µs, \
             **{:.2}×** the floor.",
            num(Some(floor)),
            num(Some(module)),
            module / floor
        )?;
    }
    Ok(())
}

/// One run: its command and a table of the figures it has.
fn write_run(md: &mut String, run: &Value) -> fmt::Result {
    let scenario = run["scenario"].as_str().unwrap_or("?");
    writeln!(md, "#### {scenario}\n")?;
    writeln!(
        md,
        "```sh\n{}\n```\n",
        run["command"].as_str().unwrap_or("?")
    )?;
    writeln!(md, "| figure | value |\n|---|---|")?;
    for (label, path) in figures(scenario, run) {
        let shown = match lookup(run, &path) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => num(n.as_f64()),
            Some(Value::Object(m)) if m.is_empty() => "none".into(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        writeln!(md, "| {label} | {shown} |")?;
    }
    writeln!(md)
}

/// A figure's label and its path in the result (an array is indexed by a number).
type Row = (String, Vec<String>);

/// Figures whose label and path are fixed.
type Fixed = &'static [(&'static str, &'static [&'static str])];

fn rows(list: Fixed) -> Vec<Row> {
    list.iter()
        .map(|(l, p)| (l.to_string(), p.iter().map(|k| k.to_string()).collect()))
        .collect()
}

const SERVER: Fixed = &[
    ("hosts", &["server", "hosts"]),
    ("broker", &["server", "broker"]),
];

const IDLE: Fixed = &[
    ("transport", &["transport"]),
    ("quiet channels per viewer", &["quiet_channels"]),
    ("subscribers", &["subscribers"]),
    ("nginx workers", &["server", "workers"]),
    ("hosts", &["server", "hosts"]),
    ("connected", &["connected"]),
    ("failed", &["failed"]),
    ("connects/s", &["connects_per_s"]),
    ("worker RSS before (KB)", &["worker_rss_before_kb"]),
    ("worker RSS after (KB)", &["worker_rss_after_kb"]),
    ("RSS per subscriber (bytes)", &["rss_per_subscriber_bytes"]),
    ("closed while idle", &["closed_while_idle"]),
];

const PUBLISH: Fixed = &[
    ("publishers send over", &["via"]),
    ("publisher sockets", &["publishers"]),
    ("in flight per socket", &["window"]),
    ("acked", &["acked"]),
    ("acked/s", &["acked_per_s"]),
    ("errors", &["errors"]),
    ("unacked", &["unacked"]),
    ("id gaps", &["id_gaps"]),
    (
        "sidecar CPU per message (µs)",
        &["sidecar_cpu_us_per_message"],
    ),
    ("nginx CPU per message (µs)", &["nginx_cpu_us_per_message"]),
    ("redis CPU per message (µs)", &["redis_cpu_us_per_message"]),
];

const FLOOR: Fixed = &[
    ("subscribers", &["subscribers"]),
    ("frames/s to each", &["rate"]),
    ("frame bytes", &["frame_bytes"]),
    ("deliveries", &["deliveries"]),
    ("lost", &["lost"]),
    (
        "server CPU per delivery (µs)",
        &["server_cpu_us_per_delivery"],
    ),
    (
        "generator CPU per delivery (µs)",
        &["load_cpu_us_per_delivery"],
    ),
];

const FAILOVER: Fixed = &[
    ("Redis", &["engine"]),
    ("primary deemed failed after (ms)", &["timeout_ms"]),
    ("that setting", &["setting"]),
    ("messages/s", &["rate"]),
    ("acked", &["acked"]),
    ("acked after the kill", &["acked_after_kill"]),
    ("refused (503) during the failover", &["refused"]),
    ("acked messages lost, all viewers", &["lost"]),
    ("duplicates, all viewers", &["duplicates"]),
    ("resync events", &["resyncs"]),
    (
        "kill to first delivery of a later message, fastest viewer (ms)",
        &["recovery_ms_min"],
    ),
    ("same, slowest viewer (ms)", &["recovery_ms_max"]),
    ("viewers that never recovered", &["viewers_never_recovered"]),
];

/// Fanout and rooms.
const DELIVERY: Fixed = &[
    ("transport", &["transport"]),
    ("quiet channels per viewer", &["quiet_channels"]),
    ("subscribers", &["subscribers"]),
    ("rooms", &["rooms"]),
    ("nginx workers", &["server", "workers"]),
    ("connects/s", &["connects_per_s"]),
    (
        "worker RSS per connected viewer (bytes)",
        &["worker_rss_per_subscriber_bytes"],
    ),
    (
        "sidecar RSS per connected viewer (bytes)",
        &["sidecar_rss_per_subscriber_bytes"],
    ),
    ("messages/s per room", &["rate_per_room"]),
    ("published", &["published"]),
    ("deliveries", &["deliveries"]),
    ("deliveries/s", &["deliveries_per_s"]),
    ("polls answered", &["polls_answered"]),
    ("polls answered/s", &["polls_answered_per_s"]),
    ("lost", &["lost"]),
    ("duplicates", &["duplicates"]),
    ("gaps in a viewer's ids", &["gaps"]),
    ("closed by the server", &["closed"]),
    (
        "nginx CPU per delivery (µs)",
        &["nginx_cpu_us_per_delivery"],
    ),
    (
        "nginx CPU per poll answered (µs)",
        &["nginx_cpu_us_per_poll"],
    ),
    (
        "sidecar CPU per message (µs)",
        &["sidecar_cpu_us_per_message"],
    ),
    ("redis CPU per message (µs)", &["redis_cpu_us_per_message"]),
    (
        "generator CPU per delivery (µs)",
        &["load_cpu_us_per_delivery"],
    ),
    ("nginx reloaded at (s)", &["storm", "reload_at_s"]),
    ("viewers reconnected and resumed", &["storm", "reconnected"]),
    ("reload to every viewer back (s)", &["storm", "all_back_s"]),
    (
        "sidecar CPU until every viewer was back (ms)",
        &["storm", "sidecar_cpu_ms_until_back"],
    ),
    (
        "sidecar restarted at (s)",
        &["restart", "restart_sidecar_at_s"],
    ),
    (
        "SIGTERM to the old sidecar's exit (s)",
        &["restart", "stop_to_exit_s"],
    ),
    (
        "new sidecar ready after its start (s)",
        &["restart", "ready_s"],
    ),
    (
        "stop to every worker's relay connected again (s)",
        &["restart", "relays_back_s"],
    ),
    (
        "stop to every viewer receiving again (s)",
        &["restart", "recovery_s"],
    ),
    (
        "relay subscriptions the new sidecar received",
        &["restart", "relay_subscribes"],
    ),
    (
        "new sidecar CPU until every viewer received again (ms)",
        &["restart", "sidecar_cpu_ms_until_recovered"],
    ),
    ("publisher reconnects", &["publisher_reconnects"]),
];

/// Every scenario ends with these.
const MACHINE: Fixed = &[
    ("CPU steal (%)", &["steal_pct"]),
    ("machine busy (%)", &["machine_busy_pct"]),
];

/// Percentile rows of the latency histogram at `key`, labelled `what`.
fn latency_rows(key: &str, what: &str) -> Vec<Row> {
    [
        ("p50", "p50"),
        ("p90", "p90"),
        ("p99", "p99"),
        ("p99.9", "p999"),
        ("max", "max"),
    ]
    .iter()
    .map(|(label, field)| {
        (
            format!("{what} {label} (ms)"),
            vec![key.to_owned(), field.to_string()],
        )
    })
    .collect()
}

/// p50 and p99 of the subscribers on each chat host (host 0 takes the publishers).
fn per_host_rows(run: &Value) -> Vec<Row> {
    let hosts = run["latency_ms_by_host"].as_array().map_or(0, Vec::len);
    (0..hosts)
        .flat_map(|h| {
            ["p50", "p99"].map(|q| {
                (
                    format!("latency {q} on host {h} (ms)"),
                    vec!["latency_ms_by_host".into(), h.to_string(), q.into()],
                )
            })
        })
        .collect()
}

/// The rows of a run's table, in order.
fn figures(scenario: &str, run: &Value) -> Vec<Row> {
    let parts = match scenario {
        "idle" => vec![rows(IDLE)],
        "publish" => vec![
            rows(SERVER),
            rows(PUBLISH),
            latency_rows("ack_latency_ms", "ack latency"),
        ],
        "floor" => vec![rows(FLOOR), latency_rows("latency_ms", "latency")],
        "failover" => vec![rows(FAILOVER)],
        _ => vec![
            rows(SERVER),
            rows(DELIVERY),
            latency_rows("latency_ms", "latency"),
            per_host_rows(run),
            latency_rows("ack_latency_ms", "ack latency"),
        ],
    };
    let mut list = parts.concat();
    list.extend(rows(MACHINE));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fanout(cpu: f64, p50: f64, lost: u64) -> Value {
        json!({"scenario":"fanout","subscribers":5000,"rate_per_room":10.0,
               "server":{"workers":1},"nginx_cpu_us_per_delivery":cpu,
               "latency_ms":{"p50":p50,"p99":20.0},"lost":lost,"command":"chatup-bench fanout"})
    }

    #[test]
    fn marks_targets_met_and_missed() {
        let floor = json!({"scenario":"floor","server_cpu_us_per_delivery":2.0,"lost":0});
        let md = render(&[floor, fanout(4.0, 20.0, 0)], Path::new("r.jsonl"));
        assert!(
            md.contains("nginx CPU per delivery | ≤ 5 µs | 4.00 µs | yes |"),
            "{md}"
        );
        assert!(
            md.contains("latency p50 | ≤ 15 ms | 20.0 ms | **no** |"),
            "{md}"
        );
        assert!(md.contains("publish: acked messages/s through one sidecar | ≥ 20,000 msg/s | – msg/s | not run |"), "{md}");
        assert!(md.contains("**2.00×** the floor"), "{md}");
        assert!(
            md.contains("| zero loss in every scenario | 0 | 0.00 | yes |"),
            "{md}"
        );
        // An SSE run of the same load is shown, not judged against the WebSocket's target.
        let mut sse = fanout(9.0, 20.0, 0);
        sse["transport"] = "sse".into();
        let md = render(&[fanout(4.0, 20.0, 0), sse], Path::new("r.jsonl"));
        assert!(
            md.contains("nginx CPU per delivery | ≤ 5 µs | 4.00 µs | yes |"),
            "{md}"
        );
        assert!(md.contains("| transport | sse |"), "{md}");
        let lossy = render(&[fanout(4.0, 10.0, 3)], Path::new("r.jsonl"));
        assert!(
            lossy.contains("| zero loss in every scenario | 0 | 3.00 | **no** |"),
            "{lossy}"
        );
    }

    #[test]
    fn memory_and_redis_runs_are_judged_apart() {
        let run = |broker: &str, hosts: u64, p99: f64| {
            json!({"scenario":"fanout","subscribers":100,"rate_per_room":1000.0,
                   "server":{"workers":1,"broker":broker,"hosts":hosts},
                   "latency_ms":{"p50":1.0,"p99":p99},"lost":0,
                   "latency_ms_by_host":[{"p50":1.5,"p99":p99},{"p50":2.5,"p99":p99}],
                   "redis_cpu_us_per_message":12.5,"command":"chatup-bench fanout"})
        };
        let publish = |broker: &str, hosts: u64, acked: f64| {
            json!({"scenario":"publish","server":{"broker":broker,"hosts":hosts},
                   "acked_per_s":acked,"id_gaps":0,"unacked":0,"command":"chatup-bench publish"})
        };
        // The Redis runs come last, as in scripts/bench.
        let md = render(
            &[
                run("memory", 1, 2.0),
                publish("memory", 1, 150_000.0),
                run("redis", 2, 12.0),
                publish("redis", 2, 30_000.0),
            ],
            Path::new("r.jsonl"),
        );
        assert!(
            md.contains("(memory broker), 100 subscribers × 1,000 msg/s: latency p99 | ≤ 5 ms | 2.00 ms | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| through Redis, 2 hosts, 100 subscribers × 1,000 msg/s: latency p99 | ≤ 10 ms | 12.0 ms | **no** |"),
            "{md}"
        );
        assert!(
            md.contains("through one sidecar | ≥ 20,000 msg/s | 150000 msg/s | yes |"),
            "{md}"
        );
        assert!(md.contains("| broker | redis |"), "{md}");
        assert!(md.contains("| hosts | 2.00 |"), "{md}");
        assert!(md.contains("| redis CPU per message (µs) | 12.5 |"), "{md}");
        assert!(md.contains("| latency p50 on host 1 (ms) | 2.50 |"), "{md}");

        // Without a Redis run its target is "not run", whatever else ran.
        let md = render(&[run("memory", 1, 2.0)], Path::new("r.jsonl"));
        assert!(
            md.contains("| through Redis, 2 hosts, 100 subscribers × 1,000 msg/s: latency p99 | ≤ 10 ms | – ms | not run |"),
            "{md}"
        );
    }

    #[test]
    fn replaces_only_the_generated_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        std::fs::write(
            &path,
            format!("# B\n\nmethod\n\n{BEGIN}\nold\n{END}\n\nnotes\n"),
        )
        .unwrap();
        write_into(&path, &format!("{BEGIN}\nnew\n{END}")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# B\n\nmethod\n\n{BEGIN}\nnew\n{END}\n\nnotes\n")
        );
    }
}
