//! Subscriber load: child processes that each hold a share of the subscribers, and the
//! [`Fleet`] that starts them and adds up what they measured.
//!
//! One process may hold at most ~20,000 open files here, so the subscribers are spread over
//! several `chatup-bench load` processes, each bound to its own loopback source addresses
//! (127.0.0.2, 127.0.0.3, …) so ephemeral ports do not run out. With several chat hosts,
//! every room's subscribers are spread evenly over the hosts' nginx. A child speaks JSON
//! lines: progress and a report on stdout, commands on stdin.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, Semaphore};

use crate::payload::{now_ns, read_delivery};
use crate::viewer::{Transport, Viewer};
use crate::wsclient::Frame;
use crate::BenchError;

/// Subscribers one load process holds at most (the file limit is 20,000).
pub const MAX_PER_PROCESS: usize = 15_000;
/// Connections one source address gives at most (about half the ephemeral range).
pub const MAX_PER_SOURCE: usize = 14_000;
/// Latency is recorded in microseconds up to a minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What a load process is asked to hold.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// nginx addresses, one per chat host.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<SocketAddr>,
    /// Host header for each address (default: the address).
    #[arg(long, value_delimiter = ',')]
    pub host: Vec<String>,
    /// Subscriber location prefix.
    #[arg(long, default_value = "/sub/")]
    pub sub_path: String,
    /// Channel names are this prefix and the room number.
    #[arg(long)]
    pub channel_prefix: String,
    /// Rooms the subscribers are spread over (subscriber g joins room g % rooms).
    #[arg(long)]
    pub rooms: usize,
    /// Global number of this process's first subscriber.
    #[arg(long)]
    pub first: usize,
    /// Subscribers this process holds.
    #[arg(long)]
    pub count: usize,
    /// Source addresses, used in turn.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Channels nobody publishes to that every subscriber watches besides its room.
    #[arg(long, default_value_t = 0)]
    pub quiet_channels: usize,
    /// A subscribe token every subscriber sends (`?token=`), for private channels.
    #[arg(long)]
    pub token: Option<String>,
    /// Reconnect a closed subscriber and resume with `since`, after a random wait of up to
    /// this many ms (as the browser client's jittered backoff spreads a reconnect storm).
    #[arg(long)]
    pub reconnect_ms: Option<u64>,
}

/// A line from a load process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromLoad {
    Progress(Progress),
    /// Every subscriber has connected or failed to.
    Ready(Progress),
    Report(LoadReport),
}

/// A command to a load process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToLoad {
    /// Report against what was acked: channel → runs of acked ids (first, last). A message
    /// whose ack never came is not counted lost when a viewer misses it.
    Report {
        acked: BTreeMap<String, Vec<(u64, u64)>>,
    },
    /// From now on, count the viewers that received a message sent at or after
    /// `sent_after_ns` (the publisher's stamp): after a sidecar restart, the viewers the
    /// new sidecar's messages reached.
    Watch { sent_after_ns: u64 },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub failed: u64,
    pub received: u64,
    /// Long polls answered (0 for the other transports).
    pub requests: u64,
    /// Subscribers the server closed (or whose connection broke) after the upgrade.
    pub closed: u64,
    /// Closed subscribers connected again (with `--reconnect-ms`), resuming with `since`.
    #[serde(default)]
    pub reconnected: u64,
    /// Subscribers that received a message sent after the mark of [`ToLoad::Watch`].
    #[serde(default)]
    pub caught_up: u64,
    /// The earliest send stamp (Unix ns) of the messages that caught them up, 0 before the
    /// first: when the first message after the mark was sent.
    #[serde(default)]
    pub caught_up_first_sent_ns: u64,
    /// When the latest of them caught up (Unix ns, 0 before the first): with every
    /// subscriber caught up, the moment deliveries flowed to all again.
    #[serde(default)]
    pub caught_up_last_ns: u64,
    /// The first few distinct errors (connecting, or reading after).
    pub errors: Vec<String>,
}

impl Progress {
    fn add(&mut self, other: &Progress) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.received += other.received;
        self.requests += other.requests;
        self.closed += other.closed;
        self.reconnected += other.reconnected;
        self.caught_up += other.caught_up;
        self.caught_up_first_sent_ns =
            match (self.caught_up_first_sent_ns, other.caught_up_first_sent_ns) {
                (0, theirs) => theirs,
                (ours, 0) => ours,
                (ours, theirs) => ours.min(theirs),
            };
        self.caught_up_last_ns = self.caught_up_last_ns.max(other.caught_up_last_ns);
        for e in &other.errors {
            self.note_error(e);
        }
    }

    /// Keeps `error` when it is new and fewer than five are kept.
    fn note_error(&mut self, error: &str) {
        if self.errors.len() < 5 && !self.errors.iter().any(|e| e == error) {
            self.errors.push(error.to_owned());
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub progress: Progress,
    /// Acked messages a connected subscriber never got.
    pub lost: u64,
    /// Messages received twice or out of order.
    pub duplicates: u64,
    /// Times a subscriber's next id skipped one or more (each a missed message).
    pub gaps: u64,
    /// Close codes (or "io" for a broken connection) and how many subscribers got them.
    pub close_codes: BTreeMap<String, u64>,
    /// Publish-to-deliver latency in µs, hdrhistogram V2, base64, one per chat host (in
    /// the order of the plan's targets).
    pub latency: Vec<String>,
}

impl LoadReport {
    /// Adds up the counts of `other` (not its latency).
    fn add_counts(&mut self, other: &LoadReport) {
        self.progress.add(&other.progress);
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.gaps += other.gaps;
        for (code, n) in &other.close_codes {
            *self.close_codes.entry(code.clone()).or_default() += n;
        }
    }
}

/// One subscriber's account of its room.
#[derive(Debug, Clone, Default)]
struct SubStat {
    room: usize,
    connected: bool,
    /// The id after the last one received, 0 before the first.
    next: u64,
    /// The epoch of the last message received.
    ep: u64,
    /// Distinct ids received in order.
    ids: Vec<(u64, u64)>,
    duplicates: u64,
    gaps: u64,
    /// Whether it received a message sent after the watch mark ([`ToLoad::Watch`]).
    caught_up: bool,
}

impl SubStat {
    fn record(&mut self, id: u64) {
        if id < self.next {
            self.duplicates += 1;
            return;
        }
        if self.next != 0 && id > self.next {
            self.gaps += 1;
        }
        // Runs of consecutive ids, so a subscriber's memory does not grow per message.
        match self.ids.last_mut() {
            Some((_, last)) if *last + 1 == id => *last = id,
            _ => self.ids.push((id, id)),
        }
        self.next = id + 1;
    }

    fn received_within(&self, first: u64, last: u64) -> u64 {
        self.ids
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(first), b.min(last));
                if a > b {
                    0
                } else {
                    b - a + 1
                }
            })
            .sum()
    }
}

struct LoadState {
    subs: Vec<SubStat>,
    progress: Progress,
    close_codes: BTreeMap<String, u64>,
    /// One per chat host.
    latency: Vec<Histogram<u64>>,
    /// The mark of [`ToLoad::Watch`], once given.
    watch_after_ns: Option<u64>,
}

impl LoadState {
    /// Subscribers that have connected or failed to.
    fn attempts_done(&self) -> u64 {
        self.progress.connected + self.progress.failed
    }

    /// Counts subscriber `i` caught up when a message sent at `sent_ns` is its first since
    /// the watch mark; `now_ns` is when it arrived.
    fn note_catch_up(&mut self, i: usize, sent_ns: u64, now_ns: u64) {
        let Some(after) = self.watch_after_ns else {
            return;
        };
        let sub = &mut self.subs[i];
        if sent_ns < after || sub.caught_up {
            return;
        }
        sub.caught_up = true;
        let p = &mut self.progress;
        p.caught_up += 1;
        if p.caught_up_first_sent_ns == 0 || sent_ns < p.caught_up_first_sent_ns {
            p.caught_up_first_sent_ns = sent_ns;
        }
        p.caught_up_last_ns = p.caught_up_last_ns.max(now_ns);
    }
}

type Shared = Rc<RefCell<LoadState>>;

/// A latency histogram in µs, 1 µs to a minute, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// How many ids `first..=last` holds.
pub fn id_count((first, last): (u64, u64)) -> u64 {
    last - first + 1
}

/// A set of ids kept as sorted runs of consecutive ids, so that the acks of a long run take
/// a few pairs rather than one entry per message. Acks come mostly in order (the last run
/// grows), but several publishers of a channel may answer out of order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdRuns {
    /// Disjoint, non-adjacent `(first, last)` runs, in order.
    runs: Vec<(u64, u64)>,
}

impl IdRuns {
    /// Adds `id`; false when it was already there.
    pub fn insert(&mut self, id: u64) -> bool {
        // The first run that ends at or after `id`.
        let i = self.runs.partition_point(|&(_, last)| last < id);
        if self.runs.get(i).is_some_and(|&(first, _)| first <= id) {
            return false;
        }
        let joins_previous = i > 0 && self.runs[i - 1].1 + 1 == id;
        let joins_next = self.runs.get(i).is_some_and(|&(first, _)| first == id + 1);
        match (joins_previous, joins_next) {
            (true, true) => {
                self.runs[i - 1].1 = self.runs[i].1;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = id,
            (false, true) => self.runs[i].0 = id,
            (false, false) => self.runs.insert(i, (id, id)),
        }
        true
    }

    /// How many ids it holds.
    pub fn count(&self) -> u64 {
        self.runs.iter().copied().map(id_count).sum()
    }

    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
}

/// The chat host (index into the plan's targets) of global subscriber `global`: the
/// subscribers of each room go to the hosts in turn, so every room spans every host.
pub fn host_of(global: usize, rooms: usize, hosts: usize) -> usize {
    (global / rooms.max(1)) % hosts.max(1)
}

/// Channel name of room `room`.
pub fn room_channel(prefix: &str, room: usize) -> String {
    format!("{prefix}{room}")
}

/// A small random source for the reconnect waits (xorshift): no two subscribers of a storm
/// wait alike, and a run is repeatable.
struct Jitter(u64);

impl Jitter {
    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Entry point of `chatup-bench load`: runs until stdin closes.
pub fn run_child(args: LoadArgs) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, child_main(args))
}

async fn child_main(args: LoadArgs) -> Result<(), BenchError> {
    let rooms = args.rooms.max(1);
    let state = Rc::new(RefCell::new(LoadState {
        subs: (0..args.count)
            .map(|i| SubStat {
                room: (args.first + i) % rooms,
                ..SubStat::default()
            })
            .collect(),
        progress: Progress::default(),
        close_codes: BTreeMap::new(),
        latency: args.addr.iter().map(|_| new_histogram()).collect(),
        watch_after_ns: None,
    }));
    let permits = Rc::new(Semaphore::new(args.concurrency.max(1)));
    for i in 0..args.count {
        let global = args.first + i;
        let mut path = format!(
            "{}{}",
            args.sub_path,
            room_channel(&args.channel_prefix, global % rooms)
        );
        for q in 0..args.quiet_channels {
            path.push('/');
            path.push_str(&room_channel(&format!("{}quiet", args.channel_prefix), q));
        }
        if let Some(token) = &args.token {
            path.push_str("?token=");
            path.push_str(token);
        }
        let source = (!args.sources.is_empty()).then(|| args.sources[global % args.sources.len()]);
        let state = state.clone();
        let permits = permits.clone();
        let target = host_of(global, args.rooms, args.addr.len());
        let addr = args.addr[target];
        let host = args
            .host
            .get(target)
            .cloned()
            .unwrap_or_else(|| addr.to_string());
        let transport = args.transport;
        let reconnect_ms = args.reconnect_ms;
        let channel = room_channel(&args.channel_prefix, global % rooms);
        tokio::task::spawn_local(async move {
            let permit = permits.acquire().await.ok();
            let seed = (global as u64) << 8 | 7;
            let connected = Viewer::connect(transport, addr, source, &host, &path, seed).await;
            drop(permit);
            let mut client = match connected {
                Ok(client) => client,
                Err(e) => {
                    let mut st = state.borrow_mut();
                    st.progress.failed += 1;
                    st.progress.note_error(&e.to_string());
                    return;
                }
            };
            state.borrow_mut().progress.connected += 1;
            let mut jitter = Jitter(seed | 1);
            loop {
                subscribe(client, &state, i, target).await;
                let Some(spread) = reconnect_ms else { return };
                // Resume where this subscriber stopped, after a random wait.
                client = loop {
                    let wait = jitter.below(spread.max(1));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let resume = {
                        let st = state.borrow();
                        let sub = &st.subs[i];
                        let mut resumed = path.clone();
                        if sub.next > 0 {
                            resumed.push(if resumed.contains('?') { '&' } else { '?' });
                            resumed.push_str(&format!(
                                "since={channel}:{}:{}",
                                sub.ep,
                                sub.next - 1
                            ));
                        }
                        resumed
                    };
                    match Viewer::connect(transport, addr, source, &host, &resume, seed).await {
                        Ok(client) => break client,
                        Err(e) => state.borrow_mut().progress.note_error(&e.to_string()),
                    }
                };
                state.borrow_mut().progress.reconnected += 1;
            }
        });
    }

    let printer = {
        let state = state.clone();
        let count = args.count as u64;
        tokio::task::spawn_local(async move {
            let mut announced = false;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (progress, done) = {
                    let st = state.borrow();
                    (st.progress.clone(), st.attempts_done() >= count)
                };
                let line = if done && !announced {
                    announced = true;
                    FromLoad::Ready(progress)
                } else {
                    FromLoad::Progress(progress)
                };
                if crate::emit_line(&line).is_err() {
                    return;
                }
            }
        })
    };

    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = commands.next_line().await? {
        match serde_json::from_str::<ToLoad>(&line) {
            Ok(ToLoad::Report { acked }) => {
                let report = report(&state.borrow(), &args, &acked)?;
                crate::emit_line(&FromLoad::Report(report))?;
            }
            Ok(ToLoad::Watch { sent_after_ns }) => {
                state.borrow_mut().watch_after_ns = Some(sent_after_ns);
            }
            Err(e) => eprintln!("chatup-bench load: bad command {line:?}: {e}"),
        }
    }
    printer.abort();
    Ok(())
}

/// Subscriber `i` (of this process) on chat host `target`: counts what it receives until
/// the connection ends, then how it ended.
async fn subscribe(mut client: Viewer, state: &Shared, i: usize, target: usize) {
    state.borrow_mut().subs[i].connected = true;
    let ended = loop {
        match client.next_frame().await {
            Ok(Frame::Text(payload)) => {
                let Some(delivery) = read_delivery(payload) else {
                    continue;
                };
                let mut st = state.borrow_mut();
                st.progress.received += 1;
                st.subs[i].record(delivery.id);
                if let Some(ep) = delivery.ep {
                    st.subs[i].ep = ep;
                }
                if let Some(sent) = delivery.sent_ns {
                    let now = now_ns();
                    let us = now.saturating_sub(sent) / 1000;
                    st.latency[target].saturating_record(us.clamp(1, MAX_LATENCY_US));
                    st.note_catch_up(i, sent, now);
                }
            }
            Ok(Frame::Answered) => state.borrow_mut().progress.requests += 1,
            Ok(Frame::Close(code)) => break code.to_string(),
            Err(e) => {
                state.borrow_mut().progress.note_error(&e.to_string());
                break "io".to_owned();
            }
        }
    };
    let mut st = state.borrow_mut();
    st.progress.closed += 1;
    *st.close_codes.entry(ended).or_default() += 1;
}

fn report(
    st: &LoadState,
    args: &LoadArgs,
    acked: &BTreeMap<String, Vec<(u64, u64)>>,
) -> Result<LoadReport, BenchError> {
    let no_runs = Vec::new();
    let rooms: Vec<&Vec<(u64, u64)>> = (0..args.rooms.max(1))
        .map(|room| {
            acked
                .get(&room_channel(&args.channel_prefix, room))
                .unwrap_or(&no_runs)
        })
        .collect();
    let mut lost = 0;
    let mut duplicates = 0;
    let mut gaps = 0;
    for sub in st.subs.iter().filter(|s| s.connected) {
        duplicates += sub.duplicates;
        gaps += sub.gaps;
        for &(first, last) in rooms[sub.room] {
            lost += id_count((first, last)) - sub.received_within(first, last);
        }
    }
    let mut latency = Vec::with_capacity(st.latency.len());
    for histogram in &st.latency {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(histogram, &mut bytes)
            .map_err(|e| BenchError::Protocol(format!("serialize the histogram: {e:?}")))?;
        latency.push(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(LoadReport {
        progress: st.progress.clone(),
        lost,
        duplicates,
        gaps,
        close_codes: st.close_codes.clone(),
        latency,
    })
}

fn merge(sum: &mut Histogram<u64>, h: &Histogram<u64>) -> Result<(), BenchError> {
    sum.add(h)
        .map_err(|e| BenchError::Protocol(format!("merge histograms: {e:?}")))
}

/// Decodes a report's latency histogram.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, BenchError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| BenchError::Protocol(format!("histogram base64: {e}")))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| BenchError::Protocol(format!("histogram: {e:?}")))
}

/// How the subscribers are laid out over rooms, processes and source addresses.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Each chat host's nginx address and the Host header for it.
    pub targets: Vec<(SocketAddr, String)>,
    pub sub_path: String,
    pub channel_prefix: String,
    pub rooms: usize,
    pub subscribers: usize,
    /// Load processes; 0 picks enough for the file limit.
    pub processes: usize,
    /// First source address is 127.0.0.<source_base>.
    pub source_base: u8,
    pub concurrency: usize,
    pub transport: Transport,
    pub quiet_channels: usize,
    /// The subscribe token of private channels.
    pub token: Option<String>,
    /// Closed subscribers reconnect and resume, spread over this many ms.
    pub reconnect_ms: Option<u64>,
}

impl LoadPlan {
    fn process_count(&self) -> usize {
        let needed = self.subscribers.div_ceil(MAX_PER_PROCESS).max(1);
        self.processes.max(needed).min(self.subscribers.max(1))
    }

    fn sources(&self) -> Vec<IpAddr> {
        let n = self.subscribers.div_ceil(MAX_PER_SOURCE).max(1);
        (0..n)
            .map(|i| IpAddr::from([127, 0, 0, self.source_base.saturating_add(i as u8)]))
            .collect()
    }
}

/// The running load processes.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<(usize, FromLoad)>,
    latest: Vec<Progress>,
    ready: Vec<bool>,
    pub pids: Vec<u32>,
}

impl Fleet {
    /// Starts the load processes; they begin connecting at once.
    pub fn spawn(plan: &LoadPlan) -> Result<Self, BenchError> {
        let exe = std::env::current_exe()?;
        let n = plan.process_count();
        let sources = plan.sources();
        let sources_arg: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let addrs: Vec<String> = plan.targets.iter().map(|(a, _)| a.to_string()).collect();
        let hosts: Vec<&str> = plan.targets.iter().map(|(_, h)| h.as_str()).collect();
        let (tx, events) = mpsc::unbounded_channel();
        let mut fleet = Self {
            children: Vec::new(),
            stdins: Vec::new(),
            events,
            latest: vec![Progress::default(); n],
            ready: vec![false; n],
            pids: Vec::new(),
        };
        let mut first = 0;
        for k in 0..n {
            let count = plan.subscribers / n + usize::from(k < plan.subscribers % n);
            let mut child = Command::new(&exe)
                .arg("load")
                .args(["--addr", &addrs.join(",")])
                .args(["--host", &hosts.join(",")])
                .args(["--sub-path", &plan.sub_path])
                .args(["--channel-prefix", &plan.channel_prefix])
                .args(["--rooms", &plan.rooms.to_string()])
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--sources", &sources_arg.join(",")])
                .args(["--concurrency", &plan.concurrency.to_string()])
                .args(["--transport", plan.transport.name()])
                .args(["--quiet-channels", &plan.quiet_channels.to_string()])
                .args(plan.token.iter().flat_map(|t| ["--token", t.as_str()]))
                .args(
                    plan.reconnect_ms
                        .iter()
                        .flat_map(|ms| ["--reconnect-ms".to_owned(), ms.to_string()]),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            first += count;
            fleet.pids.extend(child.id());
            let stdout = child
                .stdout
                .take()
                .ok_or(BenchError::Protocol("a load process has no stdout".into()))?;
            let stdin = child
                .stdin
                .take()
                .ok_or(BenchError::Protocol("a load process has no stdin".into()))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<FromLoad>(&line) {
                        Ok(event) => {
                            if tx.send((k, event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("load process {k}: {e}: {line}"),
                    }
                }
            });
            fleet.children.push(child);
            fleet.stdins.push(stdin);
        }
        Ok(fleet)
    }

    fn absorb(&mut self, k: usize, event: FromLoad) -> Option<LoadReport> {
        match event {
            FromLoad::Progress(p) => self.latest[k] = p,
            FromLoad::Ready(p) => {
                self.latest[k] = p;
                self.ready[k] = true;
            }
            FromLoad::Report(r) => return Some(r),
        }
        None
    }

    /// Takes in a line that is not a report (none was asked for).
    fn absorb_progress(&mut self, k: usize, event: FromLoad) -> Result<(), BenchError> {
        match self.absorb(k, event) {
            None => Ok(()),
            Some(r) => Err(BenchError::Protocol(format!(
                "unexpected report from load process {k}: {r:?}"
            ))),
        }
    }

    /// Takes in whatever the processes said since the last call.
    pub fn poll(&mut self) -> Result<(), BenchError> {
        loop {
            match self.events.try_recv() {
                Ok((k, event)) => self.absorb_progress(k, event)?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(BenchError::Protocol("every load process has exited".into()))
                }
            }
        }
    }

    /// The sum of the latest progress of every process.
    pub fn totals(&self) -> Progress {
        let mut sum = Progress::default();
        for p in &self.latest {
            sum.add(p);
        }
        sum
    }

    pub fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    /// Waits for the next line from any process.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<(), BenchError> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some((k, event))) => self.absorb_progress(k, event),
            Ok(None) => Err(BenchError::Protocol("every load process has exited".into())),
            Err(_) => Ok(()),
        }
    }

    /// Tells every process to count the subscribers that receive a message sent at or
    /// after `sent_after_ns` ([`Progress::caught_up`]).
    pub async fn watch(&mut self, sent_after_ns: u64) -> Result<(), BenchError> {
        self.command(&ToLoad::Watch { sent_after_ns }).await
    }

    async fn command(&mut self, command: &ToLoad) -> Result<(), BenchError> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        for stdin in &mut self.stdins {
            stdin.write_all(&line).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Asks every process for its report against `acked` (channel → runs of acked ids) and
    /// adds them up; the latency comes merged, and per chat host.
    pub async fn report(
        &mut self,
        acked: &BTreeMap<String, Vec<(u64, u64)>>,
    ) -> Result<(LoadReport, Histogram<u64>, Vec<Histogram<u64>>), BenchError> {
        self.command(&ToLoad::Report {
            acked: acked.clone(),
        })
        .await?;
        let mut total = LoadReport::default();
        let mut latency = new_histogram();
        let mut per_host: Vec<Histogram<u64>> = Vec::new();
        let mut pending = self.stdins.len();
        while pending > 0 {
            let (k, event) = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .map_err(|_| BenchError::Protocol("a load process did not report".into()))?
                .ok_or_else(|| BenchError::Protocol("a load process exited".into()))?;
            let Some(r) = self.absorb(k, event) else {
                continue;
            };
            pending -= 1;
            total.add_counts(&r);
            for (host, text) in r.latency.iter().enumerate() {
                let h = decode_histogram(text)?;
                if per_host.len() <= host {
                    per_host.resize_with(host + 1, new_histogram);
                }
                merge(&mut latency, &h)?;
                merge(&mut per_host[host], &h)?;
            }
        }
        Ok((total, latency, per_host))
    }

    /// Closes every subscriber (the processes exit when their stdin closes).
    pub async fn stop(mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_runs_gaps_and_duplicates() {
        let mut s = SubStat::default();
        for id in [1, 2, 3, 5, 6, 6, 4, 9] {
            s.record(id);
        }
        assert_eq!(s.ids, vec![(1, 3), (5, 6), (9, 9)]);
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.gaps, 2, "4 missing after 3, 7 and 8 after 6");
        assert_eq!(s.received_within(1, 9), 6);
        assert_eq!(s.received_within(2, 5), 3);
        assert_eq!(s.received_within(10, 20), 0);
    }

    #[test]
    fn id_runs_merge_out_of_order_ids() {
        let mut runs = IdRuns::default();
        for id in [5, 6, 2, 8, 7, 3] {
            assert!(runs.insert(id), "{id} is new");
        }
        assert!(!runs.insert(6), "6 is there already");
        assert_eq!(runs.runs(), &[(2, 3), (5, 8)]);
        assert!(runs.insert(4), "4 joins both neighbours");
        assert_eq!(runs.runs(), &[(2, 8)]);
        assert!(runs.insert(10));
        assert!(runs.insert(1));
        assert_eq!(runs.runs(), &[(1, 8), (10, 10)]);
        assert_eq!(runs.count(), 9);
    }

    #[test]
    fn subscribers_catch_up_on_messages_sent_after_the_mark() {
        let mut st = LoadState {
            subs: vec![SubStat::default(), SubStat::default()],
            progress: Progress::default(),
            close_codes: BTreeMap::new(),
            latency: Vec::new(),
            watch_after_ns: None,
        };
        st.note_catch_up(0, 500, 510);
        assert_eq!(st.progress.caught_up, 0, "no mark yet");
        st.watch_after_ns = Some(1000);
        st.note_catch_up(0, 999, 1005);
        assert_eq!(st.progress.caught_up, 0, "sent before the mark");
        st.note_catch_up(0, 1200, 1300);
        st.note_catch_up(0, 1250, 1350);
        st.note_catch_up(1, 1100, 1400);
        let p = &st.progress;
        assert_eq!(p.caught_up, 2, "each subscriber once");
        assert_eq!(p.caught_up_first_sent_ns, 1100);
        assert_eq!(p.caught_up_last_ns, 1400);

        let mut sum = Progress::default();
        sum.add(&Progress {
            caught_up: 1,
            caught_up_first_sent_ns: 2000,
            caught_up_last_ns: 2100,
            ..Progress::default()
        });
        sum.add(p);
        sum.add(&Progress::default());
        assert_eq!(
            (
                sum.caught_up,
                sum.caught_up_first_sent_ns,
                sum.caught_up_last_ns
            ),
            (3, 1100, 2100)
        );
    }

    #[test]
    fn plans_processes_and_sources() {
        let plan = LoadPlan {
            targets: vec![("127.0.0.1:1".parse().unwrap(), "h".into())],
            sub_path: "/sub/".into(),
            channel_prefix: "c".into(),
            rooms: 1,
            subscribers: 50_000,
            processes: 0,
            source_base: 2,
            concurrency: 10,
            transport: Transport::Ws,
            quiet_channels: 0,
            token: None,
            reconnect_ms: None,
        };
        assert_eq!(plan.process_count(), 4);
        let sources = plan.sources();
        assert_eq!(sources.len(), 4);
        assert_eq!(sources[0], IpAddr::from([127, 0, 0, 2]));
        let small = LoadPlan {
            subscribers: 3,
            processes: 8,
            ..plan
        };
        assert_eq!(small.process_count(), 3);
    }

    #[test]
    fn spreads_each_room_over_the_hosts() {
        // One room: subscribers alternate between two hosts.
        let hosts: Vec<usize> = (0..6).map(|g| host_of(g, 1, 2)).collect();
        assert_eq!(hosts, vec![0, 1, 0, 1, 0, 1]);
        // Two rooms (g % 2) over two hosts: each room still has both hosts.
        let pairs: Vec<(usize, usize)> = (0..8).map(|g| (g % 2, host_of(g, 2, 2))).collect();
        for room in 0..2 {
            for host in 0..2 {
                let n = pairs.iter().filter(|p| **p == (room, host)).count();
                assert_eq!(n, 2, "room {room} host {host}: {pairs:?}");
            }
        }
        // One host: everyone on it.
        assert!((0..10).all(|g| host_of(g, 3, 1) == 0));
    }
}
