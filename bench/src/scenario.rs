//! The scenarios and their results.
//!
//! Every delivery scenario has the same shape: subscribers connect (spread over load
//! processes), a source publishes at a fixed rate for a while, the bench waits for the
//! deliveries to drain, then adds up what every subscriber saw: loss, duplicates and
//! publish-to-deliver latency. The server's CPU is read from /proc over the publishing
//! window, so the figure that matters, CPU per delivery, does not depend on how fast the
//! generator sharing the machine is.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::floor::{FloorCommand, FloorEvent};
use crate::load::{id_count, room_channel, Fleet, LoadPlan};
use crate::procfs::{self, CpuMeter, CpuTimes};
use crate::publish::{self, Pace, PublishPlan};
use crate::restart::SidecarRestart;
use crate::stack::{redact, Broker, Stack, StackArgs};
use crate::viewer::Transport;
use crate::BenchError;

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// N idle subscribers: connect rate and nginx worker memory per subscriber.
    Idle(IdleArgs),
    /// N subscribers in one room, R messages/s: deliveries/s, latency, loss, CPU per delivery.
    Fanout(FanoutArgs),
    /// M rooms of K subscribers each, R messages/s in every room.
    Rooms(RoomsArgs),
    /// P publisher sockets flooding the sidecar: acked messages/s and ack latency.
    Publish(PublishArgs),
    /// The kernel floor: a minimal server writing the same frame to N open sockets.
    Floor(FloorArgs),
    /// Redis's primary killed under traffic: time until viewers get messages again.
    Failover(crate::failover::FailoverArgs),
}

impl Scenario {
    /// Runs the scenario: one result, or one per `--transport`, each on a fresh stack.
    pub async fn run(self) -> Result<Vec<Value>, BenchError> {
        let mut results = Vec::new();
        match self {
            Scenario::Idle(a) => {
                for &transport in &a.viewers.transport {
                    results.push(idle(&a, transport).await?);
                }
            }
            Scenario::Fanout(a) => {
                for &transport in &a.viewers.transport {
                    let spec = DeliverySpec {
                        name: "fanout",
                        rooms: 1,
                        subscribers: a.subscribers,
                        rate_per_room: a.rate,
                        message: a.message.clone(),
                        publishers: a.publishers,
                        transport,
                        quiet_channels: a.viewers.quiet_channels,
                        reload_at: a.reload_at,
                        restart_sidecar_at: a.restart_sidecar_at,
                        reconnect_ms: a.reconnect_ms,
                    };
                    results.push(deliver(&a.target, spec).await?);
                }
            }
            Scenario::Rooms(a) => {
                for &transport in &a.viewers.transport {
                    let spec = DeliverySpec {
                        name: "rooms",
                        rooms: a.rooms,
                        subscribers: a.rooms * a.per_room,
                        rate_per_room: a.rate,
                        message: a.message.clone(),
                        publishers: a.publishers,
                        transport,
                        quiet_channels: a.viewers.quiet_channels,
                        reload_at: None,
                        restart_sidecar_at: None,
                        reconnect_ms: 0,
                    };
                    results.push(deliver(&a.target, spec).await?);
                }
            }
            Scenario::Publish(a) => results.push(publish_flood(a).await?),
            Scenario::Floor(a) => results.push(floor(a).await?),
            Scenario::Failover(a) => results.push(crate::failover::failover(a).await?),
        }
        Ok(results)
    }
}

/// How the viewers of a scenario subscribe.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewerArgs {
    /// Viewer transports, comma-separated (ws, sse, poll): the scenario runs once for each,
    /// in this order, on a fresh stack, and prints one result line each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws")]
    pub transport: Vec<Transport>,
    /// Channels nobody publishes to that every viewer watches besides its room: an SSE
    /// viewer's event ids then name every channel, so its events are its own.
    #[arg(long, default_value_t = 0)]
    pub quiet_channels: usize,
}

/// Where the load goes and how it is spread.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// A running chatup's nginx (`http://host:port`); without it the bench starts its own
    /// stack from build/.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the nginx master's pid, to read its workers' CPU and memory.
    #[arg(long, value_name = "PID", requires = "url")]
    pub nginx_pid: Option<u32>,
    /// With --url: the sidecar's pid, to read its CPU.
    #[arg(long, value_name = "PID", requires = "url")]
    pub sidecar_pid: Option<u32>,
    /// With --url: a publisher JWT (else one is signed with --key).
    #[arg(long, requires = "url")]
    pub token: Option<String>,
    /// With --url: the RSA private key (PEM) the sidecar's public key matches.
    #[arg(long, value_name = "PEM", requires = "url", conflicts_with = "token")]
    pub key: Option<PathBuf>,
    /// With --url: a subscribe token every viewer connects with (`?token=`), for a host
    /// whose channels are private.
    #[arg(long, value_name = "JWT", requires = "url")]
    pub subscribe_token: Option<String>,
    /// Subscriber location.
    #[arg(long, default_value = "/sub/")]
    pub sub_path: String,
    /// Publisher WebSocket location.
    #[arg(long, default_value = "/pub")]
    pub pub_path: String,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Subscriber load processes (default: one per 15,000 subscribers).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// First source address is 127.0.0.<N>; one more per 14,000 subscribers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=200))]
    pub source_base: u8,
    /// Handshakes in flight per load process.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// The messages of the scenarios that publish.
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    /// Bytes of message text.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub duration: f64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Seconds to hold them before reading memory.
    #[arg(long, default_value_t = 3.0, value_parser = parse_pause)]
    pub hold: f64,
    #[command(flatten)]
    pub viewers: ViewerArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subscribers in the room.
    #[arg(long, default_value_t = 5_000)]
    pub subscribers: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub message: MessageArgs,
    /// Publisher sockets sharing the rate.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[command(flatten)]
    pub viewers: ViewerArgs,
    /// The reconnect storm: this many seconds into the publishing, reload nginx
    /// (`nginx -s reload`: the old workers close every viewer with 1001), and report how
    /// long until every viewer is back, resumed with `since`. Viewers then reconnect after
    /// a random wait of up to `--reconnect-ms`.
    #[arg(long, value_parser = parse_seconds)]
    pub reload_at: Option<f64>,
    /// The sidecar restart: this many seconds into the publishing, stop every host's
    /// sidecar (SIGTERM) and start a new one with the same configuration as soon as it has
    /// exited. Viewers stay connected to nginx (its workers' relays reconnect and subscribe
    /// again from where they stand) and publishers reconnect. The result's `restart` says
    /// how long until every viewer got a message sent after the new sidecar started
    /// (`recovery_s`), how long the new one took to listen (`ready_s`) and how many relay
    /// subscriptions it received (`relay_subscribes`: one per channel per nginx worker).
    /// Needs the bench's own stack and --broker redis: the memory broker's history and ids
    /// die with the sidecar, so the new one would start every channel over in a new epoch
    /// and nothing could resume.
    #[arg(
        long,
        value_parser = parse_seconds,
        value_name = "S",
        conflicts_with_all = ["reload_at", "url"]
    )]
    pub restart_sidecar_at: Option<f64>,
    /// With --reload-at: the spread of the viewers' reconnects, in ms (the browser client's
    /// first retry waits up to its `reconnectDelay`, 500 ms). With --restart-sidecar-at,
    /// the same for viewers the server closes then (a private channel's, whose admission
    /// went with the old sidecar).
    #[arg(long, default_value_t = 500)]
    pub reconnect_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Subscribers in each room.
    #[arg(long, default_value_t = 50)]
    pub per_room: usize,
    /// Messages per second in each room.
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub message: MessageArgs,
    /// Publisher sockets sharing the rate.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    #[command(flatten)]
    pub viewers: ViewerArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Publisher sockets.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Messages each socket keeps in flight (sent, not yet acked).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Channels the messages go to, in turn.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// How publishers send: a WebSocket on `/pub` (the token sent once), or
    /// `POST /pub/<channel>` on keep-alive connections (the token with every request;
    /// `--window` requests pipelined on each).
    #[arg(long, value_enum, default_value = "ws")]
    pub via: publish::Via,
    #[command(flatten)]
    pub message: MessageArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Subscribers (open sockets written to).
    #[arg(long, default_value_t = 5_000)]
    pub subscribers: usize,
    /// Frames per second to each socket.
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Bytes of message text in the frame.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Subscriber load processes (default: one per 15,000 subscribers).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// First source address is 127.0.0.<N>.
    #[arg(long, default_value_t = 2)]
    pub source_base: u8,
}

/// A span of time: more than 0 s, at most a day.
fn parse_seconds(text: &str) -> Result<f64, String> {
    parse_number(
        text,
        |s| s > 0.0 && s <= 86_400.0,
        "a number of seconds from 0 to 86400",
    )
}

/// A pause: 0 s up to a day.
fn parse_pause(text: &str) -> Result<f64, String> {
    parse_number(
        text,
        |s| (0.0..=86_400.0).contains(&s),
        "a number of seconds from 0 to 86400",
    )
}

/// A rate: more than 0 a second.
fn parse_rate(text: &str) -> Result<f64, String> {
    parse_number(text, |r| r > 0.0 && r.is_finite(), "a rate above 0")
}

fn parse_number(text: &str, fits: impl Fn(f64) -> bool, what: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if fits(x) => Ok(x),
        _ => Err(format!("{text:?} is not {what}")),
    }
}

/// The server under test, however it came to be: the stack the bench started, or `--url`
/// (the pids, token and key then come from the arguments).
struct Target {
    /// Each chat host's nginx address and Host header; publishers of a delivery run use
    /// the first.
    hosts: Vec<(SocketAddr, String)>,
    stack: Option<Stack>,
    args: TargetArgs,
}

impl Target {
    fn open(args: &TargetArgs) -> Result<Self, BenchError> {
        let (hosts, stack) = match &args.url {
            Some(url) => (vec![url_host(url)?], None),
            None => {
                let stack = args.stack.start()?;
                let hosts = stack
                    .addrs()
                    .into_iter()
                    .map(|a| (a, a.to_string()))
                    .collect();
                (hosts, Some(stack))
            }
        };
        Ok(Self {
            hosts,
            stack,
            args: args.clone(),
        })
    }

    fn worker_pids(&self) -> Vec<u32> {
        match (&self.stack, self.args.nginx_pid) {
            (Some(stack), _) => stack.worker_pids(),
            (None, Some(master)) => procfs::children_of(master),
            (None, None) => Vec::new(),
        }
    }

    /// Every host's nginx master: the bench's, else the one `--nginx-pid` names.
    fn nginx_masters(&self) -> Vec<u32> {
        match (&self.stack, self.args.nginx_pid) {
            (Some(stack), _) => stack.nginx_masters(),
            (None, Some(master)) => vec![master],
            (None, None) => Vec::new(),
        }
    }

    fn sidecar_pids(&self) -> Vec<u32> {
        match &self.stack {
            Some(stack) => stack.sidecar_pids(),
            None => self.args.sidecar_pid.into_iter().collect(),
        }
    }

    /// The redis-server the bench started, else the one `--redis-pid` names.
    fn redis_pids(&self) -> Vec<u32> {
        let started = self.stack.as_ref().and_then(Stack::redis_pid);
        started.or(self.args.stack.redis_pid).into_iter().collect()
    }

    /// The publishers' token; against `--url`, first checks that the host does not limit
    /// its user's publishes (the sidecar's default `rate_limit` allows 10 per 10 s, which
    /// would refuse most of a benchmark's messages) and says so up front if it does.
    async fn publisher_token(&self) -> Result<String, BenchError> {
        let token = self.token()?;
        if self.args.url.is_some() {
            let url = self.pub_urls().into_iter().next().unwrap_or_default();
            let channel = run_prefix("probe");
            if let Some(seen) = publish::probe_rate_limit(&url, &token, &channel).await? {
                eprintln!(
                    "chatup-bench: WARNING: the host at --url limits publishes per user \
                     ({seen}). Most of this run's messages will be refused. Benchmark a \
                     sidecar without \"rate_limit\" in plugins.chain (for example \
                     --set 'plugins.chain=[\"ban\"]'), or with a [rate_limit] above the \
                     rate you measure."
                );
            }
        }
        Ok(token)
    }

    fn token(&self) -> Result<String, BenchError> {
        let key = match &self.stack {
            Some(stack) => Some(&stack.private_key),
            None => self.args.key.as_ref(),
        };
        match (&self.args.token, key) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(key)) => publish::mint_token(key),
            (None, None) => Err(BenchError::Setup(
                "publishing to --url needs --token or --key".into(),
            )),
        }
    }

    /// The viewers' subscribe token: minted for a private stack, else `--subscribe-token`.
    fn subscribe_token(&self) -> Result<Option<String>, BenchError> {
        match self.stack.as_ref().and_then(|s| s.subscribe_key.as_ref()) {
            Some(key) => publish::mint_subscribe_token(key).map(Some),
            None => Ok(self.args.subscribe_token.clone()),
        }
    }

    /// The publisher WebSocket URL of each host.
    fn pub_urls(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|(_, host)| format!("ws://{host}{}", self.args.pub_path))
            .collect()
    }

    fn load_plan(
        &self,
        prefix: &str,
        rooms: usize,
        subscribers: usize,
        transport: Transport,
        quiet_channels: usize,
    ) -> Result<LoadPlan, BenchError> {
        Ok(LoadPlan {
            targets: self.hosts.clone(),
            sub_path: self.args.sub_path.clone(),
            channel_prefix: prefix.to_owned(),
            rooms,
            subscribers,
            processes: self.args.processes,
            source_base: self.args.source_base,
            concurrency: self.args.concurrency,
            transport,
            quiet_channels,
            token: self.subscribe_token()?,
            reconnect_ms: None,
        })
    }

    /// What the result says about the server.
    fn describe(&self) -> Value {
        match &self.stack {
            Some(_) => {
                let stack = &self.args.stack;
                let mut server = json!({
                    "started_by_bench": true,
                    "workers": stack.workers,
                    "broker": stack.broker,
                    "hosts": stack.hosts,
                    "cache_messages": stack.cache,
                    "plugins": stack.plugins,
                });
                if stack.private {
                    server["private_channels"] = json!(["*"]);
                }
                if stack.broker == Broker::Redis {
                    server["redis"] = match &stack.redis_url {
                        None => json!({"started_by_bench": true}),
                        Some(url) => json!({"started_by_bench": false, "url": redact(url)}),
                    };
                }
                server
            }
            None => json!({
                "started_by_bench": false,
                "url": self.args.url,
                "workers": self.worker_pids().len(),
            }),
        }
    }
}

/// The address and Host header of `--url`.
fn url_host(url: &str) -> Result<(SocketAddr, String), BenchError> {
    let hostport = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "--url {url:?}: use http://host:port (TLS is not measured)"
            ))
        })?
        .trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| BenchError::Setup(format!("--url {url:?}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| BenchError::Setup(format!("--url {url:?}: no IPv4 address")))?;
    Ok((addr, hostport.to_owned()))
}

/// Channel names unique to this run, so no earlier history or cache is replayed.
fn run_prefix(scenario: &str) -> String {
    format!("bench-{scenario}-{}-r", crate::payload::run_stamp())
}

fn sum_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| procfs::rss_bytes(*p)).sum()
}

/// Connects every subscriber, printing progress; returns the seconds it took.
async fn connect_all(fleet: &mut Fleet, scenario: &str, total: usize) -> Result<f64, BenchError> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut last_connected = 0;
    let mut last_change = Instant::now();
    while !fleet.all_ready() {
        fleet.next_event(Duration::from_millis(250)).await?;
        let p = fleet.totals();
        if p.connected + p.failed != last_connected {
            last_connected = p.connected + p.failed;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Protocol(format!(
                "connecting stalled at {} of {total} for 60 s",
                p.connected
            )));
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{scenario}] connecting: {}/{total} connected, {} failed",
                p.connected, p.failed
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let p = fleet.totals();
    eprintln!(
        "[{scenario}] {} connected, {} failed in {seconds:.1} s",
        p.connected, p.failed
    );
    if p.connected == 0 {
        return Err(BenchError::Protocol(format!(
            "no subscriber could connect: {}",
            p.errors.join("; ")
        )));
    }
    Ok(seconds)
}

pub async fn idle(args: &IdleArgs, transport: Transport) -> Result<Value, BenchError> {
    let target = Target::open(&args.target)?;
    let workers = target.worker_pids();
    let rss_before = sum_rss(&workers);
    let prefix = run_prefix("idle");
    let quiet = args.viewers.quiet_channels;
    let plan = target.load_plan(&prefix, args.rooms, args.subscribers, transport, quiet)?;
    let private = plan.token.is_some();
    let mut fleet = Fleet::spawn(&plan)?;
    let steal_start = CpuTimes::now();
    // The server's CPU while the viewers connect: per connect, what a handshake costs
    // (with --private, the token's verification included).
    let nginx_cpu = CpuMeter::start(&workers);
    let sidecar_cpu = CpuMeter::start(&target.sidecar_pids());
    let connect_seconds = connect_all(&mut fleet, "idle", args.subscribers).await?;
    let (nginx_used, sidecar_used) = (nginx_cpu.used(), sidecar_cpu.used());
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    fleet.poll()?;
    let rss_after = sum_rss(&workers);
    let per_worker: Vec<Value> = workers
        .iter()
        .map(|p| json!({"pid": p, "rss_kb": procfs::rss_bytes(*p).unwrap_or(0) / 1024}))
        .collect();
    let steal = CpuTimes::now().steal_pct_since(&steal_start);
    let p = fleet.totals();
    fleet.stop().await;
    let connected = p.connected.max(1);
    let per_sub = rss_after.saturating_sub(rss_before) as f64 / connected as f64;
    let mut result = json!({
        "scenario": "idle",
        "transport": transport,
        "server": target.describe(),
        "subscribers": args.subscribers,
        "rooms": args.rooms,
        "connected": p.connected,
        "failed": p.failed,
        "closed_while_idle": p.closed,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_s": round(p.connected as f64 / connect_seconds, 0),
        "private": private,
        "nginx_cpu_us_per_connect": cpu_per(&nginx_cpu, nginx_used, connected),
        "sidecar_cpu_us_per_connect": cpu_per(&sidecar_cpu, sidecar_used, connected),
        "worker_rss_before_kb": rss_before / 1024,
        "worker_rss_after_kb": rss_after / 1024,
        "workers": per_worker,
        "rss_per_subscriber_bytes": if workers.is_empty() { Value::Null } else { round(per_sub, 0).into() },
        "steal_pct": round(steal, 1),
        "errors": p.errors,
    });
    if quiet > 0 {
        result["quiet_channels"] = quiet.into();
    }
    Ok(result)
}

/// Microseconds of `used` per one of `count`, or null when the meter reads no process.
fn cpu_per(meter: &CpuMeter, used: Duration, count: u64) -> Value {
    if meter.is_empty() {
        return Value::Null;
    }
    round(used.as_secs_f64() * 1e6 / count.max(1) as f64, 2).into()
}

/// A delivery run: rooms × subscribers, a rate per room.
struct DeliverySpec {
    name: &'static str,
    rooms: usize,
    subscribers: usize,
    rate_per_room: f64,
    message: MessageArgs,
    publishers: usize,
    transport: Transport,
    quiet_channels: usize,
    /// Reload nginx this many seconds into the publishing (the reconnect storm).
    reload_at: Option<f64>,
    /// Restart the sidecars this many seconds into the publishing.
    restart_sidecar_at: Option<f64>,
    /// The viewers' reconnect spread, in ms, with `reload_at` or `restart_sidecar_at`.
    reconnect_ms: u64,
}

impl DeliverySpec {
    /// Deliveries that are due when every subscriber is connected.
    fn expected(&self, published: &BTreeMap<String, (u64, u64)>, prefix: &str) -> u64 {
        (0..self.rooms)
            .map(|room| {
                let subs = self.subscribers / self.rooms
                    + usize::from(room < self.subscribers % self.rooms);
                let count = published
                    .get(&room_channel(prefix, room))
                    .map_or(0, |range| id_count(*range));
                subs as u64 * count
            })
            .sum()
    }
}

async fn deliver(target_args: &TargetArgs, spec: DeliverySpec) -> Result<Value, BenchError> {
    if spec.rooms == 0 || spec.subscribers == 0 {
        return Err(BenchError::Setup(
            "rooms and subscribers must be at least 1".into(),
        ));
    }
    if spec.restart_sidecar_at.is_some() && target_args.stack.broker != Broker::Redis {
        return Err(BenchError::Setup(
            "--restart-sidecar-at needs --broker redis: the memory broker keeps the channels' \
             history and ids inside the sidecar, so a new sidecar starts every channel over \
             in a new epoch and the viewers have nothing to resume from; with Redis the \
             history outlives the sidecar"
                .into(),
        ));
    }
    let mut target = Target::open(target_args)?;
    let token = target.publisher_token().await?;
    let prefix = run_prefix(spec.name);
    let mut plan = target.load_plan(
        &prefix,
        spec.rooms,
        spec.subscribers,
        spec.transport,
        spec.quiet_channels,
    )?;
    if spec.reload_at.is_some() || spec.restart_sidecar_at.is_some() {
        plan.reconnect_ms = Some(spec.reconnect_ms);
    }
    // Memory before the viewers and once they are all connected (before any message): what
    // an idle viewer costs the workers and the sidecar.
    let (workers, sidecars) = (target.worker_pids(), target.sidecar_pids());
    let rss_before = (sum_rss(&workers), sum_rss(&sidecars));
    let mut fleet = Fleet::spawn(&plan)?;
    let connect_seconds = connect_all(&mut fleet, spec.name, spec.subscribers).await?;
    let rss_connected = (sum_rss(&workers), sum_rss(&sidecars));

    let nginx_cpu = CpuMeter::start(&target.worker_pids());
    let sidecar_cpu = CpuMeter::start(&target.sidecar_pids());
    let redis_cpu = CpuMeter::start(&target.redis_pids());
    let load_cpu = CpuMeter::start(&fleet.pids);
    let machine_start = CpuTimes::now();

    // Publishers use the first host only: with several hosts, the subscribers on the
    // others get every message through the broker.
    let plan = PublishPlan {
        via: publish::Via::Ws,
        urls: target.pub_urls().into_iter().take(1).collect(),
        token,
        channels: (0..spec.rooms).map(|r| room_channel(&prefix, r)).collect(),
        size: spec.message.size,
        sockets: spec.publishers,
        pace: Pace::Rate(spec.rate_per_room * spec.rooms as f64),
        duration: Duration::from_secs_f64(spec.message.duration),
    };
    let publishing = tokio::spawn(async move { publish::run(&plan).await });
    let started = Instant::now();
    let mut last_received = fleet.totals().received;
    let mut last_print = Instant::now();
    let mut storm = Storm::default();
    let channels = 1 + spec.quiet_channels;
    let mut restart = spec
        .restart_sidecar_at
        .map(|at| SidecarRestart::new(at, channels));
    while !publishing.is_finished() {
        fleet.next_event(Duration::from_millis(250)).await?;
        storm.step(&spec, &target, &fleet, started)?;
        if let (Some(restart), Some(stack)) = (&mut restart, &mut target.stack) {
            restart.step(stack, &mut fleet, started, spec.name).await?;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let p = fleet.totals();
            eprintln!(
                "[{}] {:.0} s: {} delivered ({:.0}/s), nginx CPU {:.0}%",
                spec.name,
                started.elapsed().as_secs_f64(),
                p.received,
                (p.received - last_received) as f64 / last_print.elapsed().as_secs_f64(),
                100.0 * nginx_cpu.used().as_secs_f64() / started.elapsed().as_secs_f64(),
            );
            last_received = p.received;
            last_print = Instant::now();
        }
    }
    let stats = publishing
        .await
        .map_err(|e| BenchError::Protocol(format!("publisher task: {e}")))??;
    let expected = spec.expected(&stats.published, &prefix);
    // A storm still under way: until every viewer is back (at most a minute).
    let give_up = Instant::now() + Duration::from_secs(60);
    while storm.reloaded.is_some() && storm.all_back.is_none() && Instant::now() < give_up {
        fleet.next_event(Duration::from_millis(250)).await?;
        storm.step(&spec, &target, &fleet, started)?;
    }
    // A recovery from the restart still under way: the same.
    if let (Some(restart), Some(stack)) = (&mut restart, &mut target.stack) {
        while !restart.settled() && Instant::now() < give_up {
            fleet.next_event(Duration::from_millis(250)).await?;
            restart.step(stack, &mut fleet, started, spec.name).await?;
        }
        restart.finish(stack).await?;
    }
    drain(&mut fleet, expected, spec.name).await?;
    let nginx_used = nginx_cpu.used();
    let sidecar_used = sidecar_cpu.used();
    let redis_used = redis_cpu.used();
    let load_used = load_cpu.used();
    let machine_end = CpuTimes::now();
    let window = started.elapsed().as_secs_f64();

    let (report, latency, per_host) = fleet.report(&stats.acked_runs()).await?;
    fleet.stop().await;
    let delivered = report.progress.received;
    let published: u64 = stats.published.values().copied().map(id_count).sum();
    let mut result = json!({
        "scenario": spec.name,
        "transport": spec.transport,
        "server": target.describe(),
        "subscribers": spec.subscribers,
        "rooms": spec.rooms,
        "rate_per_room": spec.rate_per_room,
        "size": spec.message.size,
        "duration_s": spec.message.duration,
        "connected": report.progress.connected,
        "connect_failed": report.progress.failed,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_s": round(report.progress.connected as f64 / connect_seconds.max(1e-9), 0),
        "published": published,
        "acked": stats.acked,
        "publish_errors": stats.errors,
        "expected_deliveries": expected,
        "deliveries": delivered,
        "deliveries_per_s": round(delivered as f64 / spec.message.duration, 0),
        "lost": report.lost,
        "duplicates": report.duplicates,
        "gaps": report.gaps,
        "closed": report.close_codes,
        "latency_ms": percentiles_ms(&latency),
        "ack_latency_ms": percentiles_ms(&stats.ack_latency),
        "steal_pct": round(machine_end.steal_pct_since(&machine_start), 1),
        "machine_busy_pct": round(machine_end.busy_pct_since(&machine_start), 1),
        "window_s": round(window, 2),
        "load_cpu_us_per_delivery": per(load_used, delivered),
        "errors": report.progress.errors,
    });
    // `<name>_cpu_s` and `<name>_cpu_us_per_<what>`, for the processes that were measured.
    for (name, meter, used, what, count) in [
        ("nginx", &nginx_cpu, nginx_used, "delivery", delivered),
        ("sidecar", &sidecar_cpu, sidecar_used, "message", published),
        ("redis", &redis_cpu, redis_used, "message", published),
    ] {
        if !meter.is_empty() {
            result[format!("{name}_cpu_s")] = round(used.as_secs_f64(), 3).into();
            result[format!("{name}_cpu_us_per_{what}")] = per(used, count);
        }
    }
    let connected = report.progress.connected.max(1) as f64;
    for (name, pids, before, after) in [
        ("worker", &workers, rss_before.0, rss_connected.0),
        ("sidecar", &sidecars, rss_before.1, rss_connected.1),
    ] {
        if !pids.is_empty() {
            result[format!("{name}_rss_before_kb")] = (before / 1024).into();
            result[format!("{name}_rss_connected_kb")] = (after / 1024).into();
            result[format!("{name}_rss_per_subscriber_bytes")] =
                round(after.saturating_sub(before) as f64 / connected, 0).into();
        }
    }
    if stats.reconnects + stats.failed_reconnects > 0 {
        result["publisher_reconnects"] = stats.reconnects.into();
        result["publisher_failed_reconnects"] = stats.failed_reconnects.into();
    }
    if let Some(restart_result) = restart
        .as_ref()
        .and_then(|r| r.result(report.progress.closed))
    {
        // The meter read the old sidecars, which are gone: per message it would mislead.
        if let Some(obj) = result.as_object_mut() {
            obj.remove("sidecar_cpu_us_per_message");
            obj.remove("sidecar_cpu_s");
        }
        result["restart"] = restart_result;
    }
    if let Some(storm_result) = storm.result(&spec, report.progress.reconnected) {
        // The old workers' meters stop at the reload: per delivery it would mislead.
        if let Some(obj) = result.as_object_mut() {
            obj.remove("nginx_cpu_us_per_delivery");
            obj.remove("nginx_cpu_s");
        }
        result["storm"] = storm_result;
    }
    if spec.quiet_channels > 0 {
        result["quiet_channels"] = spec.quiet_channels.into();
    }
    if spec.transport == Transport::Poll {
        let requests = report.progress.requests;
        result["polls_answered"] = requests.into();
        result["polls_answered_per_s"] = round(requests as f64 / spec.message.duration, 0).into();
        result["nginx_cpu_us_per_poll"] = per(nginx_used, requests);
    }
    if per_host.len() > 1 {
        // Host 0 takes the publishers; the others get every message through the broker.
        result["latency_ms_by_host"] = per_host.iter().map(percentiles_ms).collect();
    }
    Ok(result)
}

/// The reconnect storm of a delivery run: the reload, and when every viewer was back.
#[derive(Default)]
struct Storm {
    /// When nginx was told to reload, and the viewers closed and reconnected by then.
    reloaded: Option<(Instant, u64, u64)>,
    /// The sidecar's CPU from the reload until every viewer was back.
    sidecar_cpu: Option<CpuMeter>,
    sidecar_used: Duration,
    /// Seconds from the reload until every viewer had reconnected and resumed.
    all_back: Option<f64>,
    /// (seconds since the reload, viewers closed, viewers back) every half second: where
    /// the time goes.
    timeline: Vec<(f64, u64, u64)>,
}

impl Storm {
    /// Reloads nginx when it is time, and notes when every viewer is back.
    fn step(
        &mut self,
        spec: &DeliverySpec,
        target: &Target,
        fleet: &Fleet,
        started: Instant,
    ) -> Result<(), BenchError> {
        let Some(at) = spec.reload_at else {
            return Ok(());
        };
        let p = fleet.totals();
        match self.reloaded {
            None if started.elapsed().as_secs_f64() >= at => {
                let masters = target.nginx_masters();
                if masters.is_empty() {
                    return Err(BenchError::Setup(
                        "--reload-at needs the nginx master (--nginx-pid with --url)".into(),
                    ));
                }
                self.sidecar_cpu = Some(CpuMeter::start(&target.sidecar_pids()));
                for pid in masters {
                    let status = std::process::Command::new("kill")
                        .args(["-HUP", &pid.to_string()])
                        .status()?;
                    if !status.success() {
                        return Err(BenchError::Protocol(format!("kill -HUP {pid} failed")));
                    }
                }
                eprintln!(
                    "[{}] nginx reloaded; {} viewers to come back",
                    spec.name, p.connected
                );
                self.reloaded = Some((Instant::now(), p.closed, p.reconnected));
            }
            Some((at, closed, reconnected)) if self.all_back.is_none() => {
                let (closed, back) = (p.closed - closed, p.reconnected - reconnected);
                let t = at.elapsed().as_secs_f64();
                if self
                    .timeline
                    .last()
                    .is_none_or(|(last, ..)| t - last >= 0.5)
                {
                    self.timeline.push((round(t, 2), closed, back));
                }
                if closed >= p.connected && back >= closed {
                    let seconds = at.elapsed().as_secs_f64();
                    if let Some(meter) = &self.sidecar_cpu {
                        self.sidecar_used = meter.used();
                    }
                    eprintln!("[{}] every viewer back after {seconds:.2} s", spec.name);
                    self.all_back = Some(seconds);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn result(&self, spec: &DeliverySpec, reconnected: u64) -> Option<Value> {
        self.reloaded?;
        Some(json!({
            "reload_at_s": spec.reload_at,
            "reconnect_ms": spec.reconnect_ms,
            "reconnected": reconnected,
            "all_back_s": self.all_back.map(|s| round(s, 2)),
            "sidecar_cpu_ms_until_back": round(self.sidecar_used.as_secs_f64() * 1e3, 1),
            "timeline_s_closed_back": self.timeline,
        }))
    }
}

/// Waits until `expected` deliveries arrived, or nothing more arrives for 3 s.
async fn drain(fleet: &mut Fleet, expected: u64, scenario: &str) -> Result<(), BenchError> {
    let mut last = fleet.totals().received;
    let mut last_change = Instant::now();
    loop {
        let received = fleet.totals().received;
        if received >= expected {
            return Ok(());
        }
        if received != last {
            last = received;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_secs(3) {
            eprintln!("[{scenario}] {received} of {expected} deliveries arrived; no more came");
            return Ok(());
        }
        fleet.next_event(Duration::from_millis(100)).await?;
    }
}

pub async fn publish_flood(args: PublishArgs) -> Result<Value, BenchError> {
    if args.channels == 0 || args.publishers == 0 {
        return Err(BenchError::Setup(
            "channels and publishers must be at least 1".into(),
        ));
    }
    let target = Target::open(&args.target)?;
    let prefix = run_prefix("publish");
    // Publisher sockets go to the hosts in turn.
    let plan = PublishPlan {
        via: args.via,
        urls: target.pub_urls(),
        token: target.publisher_token().await?,
        channels: (0..args.channels)
            .map(|r| room_channel(&prefix, r))
            .collect(),
        size: args.message.size,
        sockets: args.publishers,
        pace: Pace::Window(args.window),
        duration: Duration::from_secs_f64(args.message.duration),
    };
    let nginx_cpu = CpuMeter::start(&target.worker_pids());
    let sidecar_cpu = CpuMeter::start(&target.sidecar_pids());
    let redis_cpu = CpuMeter::start(&target.redis_pids());
    let machine_start = CpuTimes::now();
    eprintln!(
        "[publish] {} {} publishers, {} in flight each, for {} s",
        args.publishers,
        args.via.name(),
        args.window,
        args.message.duration
    );
    let stats = publish::run(&plan).await?;
    let (sidecar_used, nginx_used, redis_used) =
        (sidecar_cpu.used(), nginx_cpu.used(), redis_cpu.used());
    let machine_end = CpuTimes::now();
    let gaps: u64 = stats
        .published
        .iter()
        .map(|(ch, range)| {
            let acked = stats.acked_ids.get(ch).map_or(0, |ids| ids.count());
            id_count(*range).saturating_sub(acked)
        })
        .sum();
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    let mut result = json!({
        "scenario": "publish",
        "via": args.via.name(),
        "server": target.describe(),
        "publishers": args.publishers,
        "window": args.window,
        "channels": args.channels,
        "size": args.message.size,
        "duration_s": args.message.duration,
        "sent": stats.sent,
        "acked": stats.acked,
        "acked_per_s": round(stats.acked as f64 / secs, 0),
        "errors": stats.errors,
        "unacked": stats.sent.saturating_sub(stats.acked + stats.errors.values().sum::<u64>()),
        "id_gaps": gaps,
        "ack_latency_ms": percentiles_ms(&stats.ack_latency),
        "sidecar_cpu_us_per_message": per(sidecar_used, stats.acked),
        "nginx_cpu_us_per_message": per(nginx_used, stats.acked),
        "steal_pct": round(machine_end.steal_pct_since(&machine_start), 1),
        "machine_busy_pct": round(machine_end.busy_pct_since(&machine_start), 1),
    });
    if !redis_cpu.is_empty() {
        result["redis_cpu_us_per_message"] = per(redis_used, stats.acked);
    }
    if stats.reconnects + stats.failed_reconnects > 0 {
        result["reconnects"] = stats.reconnects.into();
        result["failed_reconnects"] = stats.failed_reconnects.into();
    }
    Ok(result)
}

pub async fn floor(args: FloorArgs) -> Result<Value, BenchError> {
    let exe = std::env::current_exe()?;
    let mut server = tokio::process::Command::new(exe)
        .arg("floor-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    let mut stdin = server
        .stdin
        .take()
        .ok_or_else(|| BenchError::Protocol("floor server without stdin".into()))?;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| BenchError::Protocol("floor server without stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next_event = async || -> Result<FloorEvent, BenchError> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| BenchError::Protocol("the floor server went quiet".into()))??
            .ok_or_else(|| BenchError::Protocol("the floor server exited".into()))?;
        Ok(serde_json::from_str(&line)?)
    };
    let FloorEvent::Listening { addr } = next_event().await? else {
        return Err(BenchError::Protocol(
            "the floor server did not listen".into(),
        ));
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| BenchError::Protocol(format!("floor address {addr:?}: {e}")))?;
    let channel = "floor".to_owned();
    let plan = LoadPlan {
        targets: vec![(addr, addr.to_string())],
        sub_path: "/sub/".into(),
        channel_prefix: channel.clone(),
        rooms: 1,
        subscribers: args.subscribers,
        processes: args.processes,
        source_base: args.source_base,
        concurrency: 100,
        transport: Transport::Ws,
        quiet_channels: 0,
        token: None,
        reconnect_ms: None,
    };
    let mut fleet = Fleet::spawn(&plan)?;
    let connect_seconds = connect_all(&mut fleet, "floor", args.subscribers).await?;
    let channel_name = room_channel(&channel, 0);
    let command = serde_json::to_string(&FloorCommand::Send {
        channel: channel_name.clone(),
        rate: args.rate,
        seconds: args.duration,
        size: args.size,
    })?;
    let server_cpu = CpuMeter::start(&[pid]);
    let load_cpu = CpuMeter::start(&fleet.pids);
    let machine_start = CpuTimes::now();
    stdin.write_all(format!("{command}\n").as_bytes()).await?;
    stdin.flush().await?;
    let sent = loop {
        tokio::select! {
            event = next_event() => match event? {
                FloorEvent::Sent(sent) => break sent,
                FloorEvent::Listening { .. } => {}
            },
            progress = fleet.next_event(Duration::from_secs(1)) => progress?,
        }
    };
    let expected = sent.sockets as u64 * id_count((sent.first, sent.last));
    drain(&mut fleet, expected, "floor").await?;
    let server_used = server_cpu.used();
    let load_used = load_cpu.used();
    let machine_end = CpuTimes::now();
    let sent_ids = BTreeMap::from([(channel_name, vec![(sent.first, sent.last)])]);
    let (report, latency, _) = fleet.report(&sent_ids).await?;
    fleet.stop().await;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    let delivered = report.progress.received;
    Ok(json!({
        "scenario": "floor",
        "subscribers": args.subscribers,
        "rate": args.rate,
        "size": args.size,
        "frame_bytes": sent.frame_bytes,
        "duration_s": args.duration,
        "connect_seconds": round(connect_seconds, 2),
        "expected_deliveries": expected,
        "deliveries": delivered,
        "short_writes": sent.short_writes,
        "lost": report.lost,
        "latency_ms": percentiles_ms(&latency),
        "server_cpu_s": round(server_used.as_secs_f64(), 3),
        "server_cpu_us_per_delivery": per(server_used, delivered),
        "load_cpu_us_per_delivery": per(load_used, delivered),
        "steal_pct": round(machine_end.steal_pct_since(&machine_start), 1),
        "machine_busy_pct": round(machine_end.busy_pct_since(&machine_start), 1),
    }))
}

fn percentiles_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}

fn per(used: Duration, count: u64) -> Value {
    if count == 0 {
        return Value::Null;
    }
    round(used.as_secs_f64() * 1e6 / count as f64, 3).into()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
