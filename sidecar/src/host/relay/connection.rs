//! One nginx worker's relay connection: it answers the worker's `Hello` with the private
//! channel `Policy`, reads its frames (`Subscribe`, `Unsubscribe`, `Stats`, `Admit`,
//! `Left`), answers each `Subscribe` with one `Backlog` and each `Admit` with one
//! `Admitted`, writes the subscribed channels' live messages from its bounded queue in id
//! order, each id once, closes admitted viewers whose token expired (`CloseViewer`),
//! answers each `Publish` (a `POST /pub/<ch>` the worker read) with one `Published`, and
//! stops when the worker closes, breaks the protocol, overflows its queue, or at shutdown.
//!
//! Publishes run on this connection's task, many at once ([`FuturesUnordered`]), through
//! the very checks of the HTTP route (`host::publish::post::answer`); their answers go back
//! as they are ready, in any order, several per write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatup_wire::{
    BacklogKind, Position, PublishAnswer, PublishRequest, ToSidecar, ToWorker, Totals,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::codec::{CodecError, WireCodec};
use super::{NginxWorkerStats, NginxWorkers};
use crate::broker::{Backlog, Broker, BrokerError, Event, Subscriber};
use crate::host::publish::post::{self, PostAnswer, PostRequest};
use crate::host::publish::App;
use crate::host::viewers::{ViewerKick, Viewers};
use crate::http::channel;
use crate::jwt::Identity;
use crate::private::{Grant, Refusal};
use crate::publish_error::{ErrorCode, PublishError};

/// How long a new connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long queued messages may take to reach a worker at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Live events written per batch before flushing the socket.
const WRITE_BATCH: usize = 256;

/// How often a subscription the broker could not take (Redis down) is tried again. The
/// worker's connection stays up meanwhile, so its other channels keep flowing.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// How often admitted viewers' tokens are checked for expiry.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Publishes of one worker in progress at once; past it, more are refused as `unavailable`
/// (nginx's `worker_connections` keeps a sound worker far below).
const MAX_PUBLISHES: usize = 16_384;

/// An admission's outcome, back from its task.
type Verdict = (u64, Vec<String>, Result<Grant, Refusal>);

/// A viewer this connection's worker admitted to private channels.
struct AdmittedViewer {
    /// The private channels of its request.
    channels: Vec<String>,
    /// Who it is, and when its token expires.
    identity: Identity,
}

/// Where a worker stands in a subscribed channel: what has been sent to it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    epoch: u64,
    /// Highest id sent or already covered by the backlog; live messages up to it are dropped.
    last_id: u64,
}

/// Why a connection ends.
enum Stop {
    /// The worker closed it.
    Closed,
    /// The worker broke the protocol or the socket failed (already logged).
    Failed,
    /// The worker could not keep up with its queue.
    Overflow,
    /// The sidecar is shutting down.
    Shutdown,
}

/// One worker's connection.
pub(super) struct Connection {
    /// Number of the connection in this process, for logs and the stats registry.
    id: u64,
    /// Frames from the worker.
    reader: FramedRead<OwnedReadHalf, WireCodec<ToSidecar, ToWorker>>,
    /// Frames to the worker; written only by this task, so frames never interleave.
    writer: FramedWrite<OwnedWriteHalf, WireCodec<ToSidecar, ToWorker>>,
    /// Where subscriptions go.
    broker: Arc<dyn Broker>,
    /// Where this worker's `Stats` are kept.
    workers: Arc<NginxWorkers>,
    /// This connection's handle in the broker; its queue is `queue`.
    subscriber: Subscriber,
    queue: mpsc::Receiver<Event>,
    /// The channels the worker is subscribed to.
    channels: HashMap<String, Sent>,
    /// Subscriptions the broker could not take yet, tried again every [`SUBSCRIBE_RETRY`].
    pending: HashMap<String, Pending>,
    /// Whether the last subscription failed, so the log says it once, and once more when
    /// the broker takes them again.
    subscribe_failing: bool,
    /// Cancelled at shutdown: flush what is queued and close.
    shutdown: CancellationToken,
    /// Admits viewers to private channels (`None`: every channel is public).
    viewers: Option<Arc<Viewers>>,
    /// Admissions answered by their tasks, to be written in this task.
    verdicts: (mpsc::Sender<Verdict>, mpsc::Receiver<Verdict>),
    /// The worker's viewers admitted to private channels, by admission id.
    admitted: HashMap<u64, AdmittedViewer>,
    /// Kicks of admitted viewers (bans), from every host.
    kicks: Option<broadcast::Receiver<ViewerKick>>,
    /// Publishes the worker's `chatup_publish` locations (`None`: refused as unavailable).
    app: Option<Arc<App>>,
    /// The worker's publishes in progress, each ending in its answer.
    publishes: FuturesUnordered<BoxFuture<'static, PublishAnswer>>,
}

/// What answers a worker's requests besides its subscriptions.
pub(super) struct Answerers {
    /// Admits viewers to private channels (`None`: every channel is public).
    pub(super) viewers: Option<Arc<Viewers>>,
    /// Publishes the worker's `chatup_publish` locations (`None`: refused as unavailable).
    pub(super) app: Option<Arc<App>>,
}

/// A subscription waiting for the broker.
struct Pending {
    want: u32,
    since: Option<Position>,
}

impl Connection {
    pub(super) fn new(
        id: u64,
        stream: UnixStream,
        broker: Arc<dyn Broker>,
        workers: Arc<NginxWorkers>,
        queue_size: usize,
        shutdown: CancellationToken,
        answers: Answerers,
    ) -> Self {
        let Answerers { viewers, app } = answers;
        let (r, w) = stream.into_split();
        let (subscriber, queue) = Subscriber::new(queue_size);
        Self {
            id,
            reader: FramedRead::new(r, WireCodec::default()),
            writer: FramedWrite::new(w, WireCodec::default()),
            broker,
            workers,
            subscriber,
            queue,
            channels: HashMap::new(),
            pending: HashMap::new(),
            subscribe_failing: false,
            shutdown,
            kicks: viewers.as_ref().map(|v| v.kicks()),
            viewers,
            verdicts: mpsc::channel(1024),
            admitted: HashMap::new(),
            app,
            publishes: FuturesUnordered::new(),
        }
    }

    /// Serves the worker from its `Hello` until the connection stops, then drops its
    /// subscriptions and stats.
    pub(super) async fn run(mut self) {
        let pid = match self.hello().await {
            Ok(pid) => pid,
            // A bare connect-and-close is how a starting sidecar probes for a live socket.
            Err(None) => {
                debug!("relay connection closed before Hello");
                return;
            }
            Err(Some(why)) => {
                warn!("closing relay connection: {why}");
                return;
            }
        };
        tracing::Span::current().record("pid", pid);
        let private = self
            .viewers
            .as_ref()
            .map(|v| v.policy().patterns().to_vec())
            .unwrap_or_default();
        if self.send(vec![ToWorker::Policy { private }]).await.is_err() {
            warn!("closing relay connection: cannot send the private channel policy");
            return;
        }
        info!("nginx worker connected");
        self.workers.set(
            self.id,
            NginxWorkerStats {
                pid,
                subscribers: 0,
                channels: Vec::new(),
                totals: Totals::default(),
            },
        );

        let stop = self.serve(pid).await;
        let traffic = &self.workers.traffic;
        let ended = match stop {
            Stop::Closed => Some(&traffic.closed),
            Stop::Failed => Some(&traffic.failed),
            Stop::Overflow => Some(&traffic.overflowed),
            Stop::Shutdown => None,
        };
        if let Some(counter) = ended {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match stop {
            Stop::Closed => info!("nginx worker disconnected"),
            Stop::Failed => {}
            Stop::Overflow => warn!(
                queued = self.queue.len(),
                "nginx worker cannot keep up with its messages; disconnecting it \
                 (it reconnects and resumes)"
            ),
            Stop::Shutdown => {
                // Answer the publishes under way and deliver what is already queued,
                // briefly, then close.
                let flush = async {
                    self.finish_publishes().await;
                    self.flush_queue().await;
                };
                if tokio::time::timeout(SHUTDOWN_FLUSH, flush).await.is_err() {
                    debug!("worker did not take its last messages in time");
                }
                info!("closed relay connection for shutdown");
            }
        }
        for channel in std::mem::take(&mut self.channels).into_keys() {
            self.broker
                .unsubscribe(&channel, self.subscriber.id())
                .await;
        }
        // The worker closes its admitted viewers when the connection comes back.
        let admitted: Vec<u64> = self.admitted.keys().copied().collect();
        for id in admitted {
            self.forget_viewer(id);
        }
        self.workers.remove(self.id);
    }

    /// Waits for `Hello` and checks its version; returns the worker's pid, or why not (`None`
    /// when the peer just closed).
    async fn hello(&mut self) -> Result<u32, Option<String>> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(Some("shutting down".into())),
            first = tokio::time::timeout(HELLO_TIMEOUT, self.reader.next()) => first,
        };
        match first {
            Err(_) => Err(Some(format!(
                "no Hello within {}s",
                HELLO_TIMEOUT.as_secs()
            ))),
            Ok(None) => Err(None),
            Ok(Some(Err(e))) => Err(Some(e.to_string())),
            Ok(Some(Ok(ToSidecar::Hello { version, pid }))) if version == PROTOCOL_VERSION => {
                Ok(pid)
            }
            Ok(Some(Ok(ToSidecar::Hello { version, pid }))) => Err(Some(format!(
                "worker pid {pid} speaks relay protocol version {version}, this sidecar \
                 speaks {PROTOCOL_VERSION}; upgrade the module and the sidecar together"
            ))),
            Ok(Some(Ok(other))) => Err(Some(format!(
                "the first frame must be Hello, got {}",
                frame_name(&other)
            ))),
        }
    }

    async fn serve(&mut self, pid: u32) -> Stop {
        let overflowed = self.subscriber.overflowed().clone();
        let mut retry = tokio::time::interval(SUBSCRIBE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(EXPIRY_SWEEP);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                _ = overflowed.cancelled() => return Stop::Overflow,
                Some(first) = self.publishes.next(), if !self.publishes.is_empty() => {
                    let mut answers = vec![ToWorker::Published(first)];
                    while let Some(Some(answer)) = self.publishes.next().now_or_never() {
                        answers.push(ToWorker::Published(answer));
                    }
                    if let Err(stop) = self.send(answers).await {
                        return stop;
                    }
                }
                Some((id, channels, verdict)) = self.verdicts.1.recv() => {
                    if let Err(stop) = self.answer_admission(id, channels, verdict).await {
                        return stop;
                    }
                }
                kick = next_kick(&mut self.kicks) => {
                    if let Err(stop) = self.kick(kick).await {
                        return stop;
                    }
                }
                _ = expiry.tick(), if !self.admitted.is_empty() => {
                    if let Err(stop) = self.close_expired().await {
                        return stop;
                    }
                }
                _ = retry.tick(), if !self.pending.is_empty() => {
                    for (channel, p) in std::mem::take(&mut self.pending) {
                        if let Err(stop) = self.subscribe(channel, p.want, p.since).await {
                            return stop;
                        }
                    }
                }
                frame = self.reader.next() => {
                    let frame = match frame {
                        None => return Stop::Closed,
                        Some(Err(CodecError::Io(e))) => {
                            warn!("relay read failed: {e}");
                            return Stop::Failed;
                        }
                        Some(Err(e)) => {
                            warn!("closing relay connection: {e}");
                            return Stop::Failed;
                        }
                        Some(Ok(frame)) => frame,
                    };
                    if let Err(stop) = self.handle_frame(frame, pid).await {
                        return stop;
                    }
                }
                event = self.queue.recv() => {
                    let Some(event) = event else { return Stop::Failed };
                    let mut out = Vec::new();
                    self.handle_event(event, &mut out);
                    while out.len() < WRITE_BATCH {
                        match self.queue.try_recv() {
                            Ok(event) => self.handle_event(event, &mut out),
                            Err(_) => break,
                        }
                    }
                    if let Err(stop) = self.send(out).await {
                        return stop;
                    }
                }
            }
        }
    }

    async fn handle_frame(&mut self, frame: ToSidecar, pid: u32) -> Result<(), Stop> {
        match frame {
            ToSidecar::Hello { .. } => {
                warn!("closing relay connection: a second Hello");
                Err(Stop::Failed)
            }
            ToSidecar::Subscribe {
                channel,
                want,
                since,
            } => self.subscribe(channel, want, since).await,
            ToSidecar::Unsubscribe { channel } => {
                self.pending.remove(&channel);
                if self.channels.remove(&channel).is_some() {
                    self.broker
                        .unsubscribe(&channel, self.subscriber.id())
                        .await;
                    debug!(channel, "unsubscribed");
                }
                Ok(())
            }
            ToSidecar::Stats {
                subscribers,
                totals,
                channels,
            } => {
                debug!(
                    subscribers,
                    channels = channels.len(),
                    delivered = totals.delivered,
                    "worker stats"
                );
                self.workers.set(
                    self.id,
                    NginxWorkerStats {
                        pid,
                        subscribers,
                        channels,
                        totals,
                    },
                );
                Ok(())
            }
            ToSidecar::Admit {
                id,
                channels,
                token,
            } => {
                let Some(viewers) = self.viewers.clone() else {
                    let refusal = Refusal::Unavailable("no channel is private on this host".into());
                    return self.answer_admission(id, channels, Err(refusal)).await;
                };
                // The ban store may take a while: the connection goes on meanwhile.
                let verdicts = self.verdicts.0.clone();
                tokio::spawn(async move {
                    let verdict = viewers.admit(&token, &channels).await;
                    let _ = verdicts.send((id, channels, verdict)).await;
                });
                Ok(())
            }
            ToSidecar::Left { id } => {
                if let Some(gone) = self.forget_viewer(id) {
                    debug!(id, channels = ?gone.channels, "private viewer left");
                }
                Ok(())
            }
            ToSidecar::Publish(request) => {
                self.workers
                    .traffic
                    .publishes
                    .fetch_add(1, Ordering::Relaxed);
                let id = request.id;
                match (&self.app, self.publishes.len() < MAX_PUBLISHES) {
                    (Some(app), true) => self.publishes.push(publish(app.clone(), request)),
                    (app, _) => {
                        let why = if app.is_none() {
                            "this sidecar does not publish for its nginx workers"
                        } else {
                            "too many publishes at once from this nginx worker; retry"
                        };
                        let refusal = PublishError::new(ErrorCode::Unavailable, why).retry_after(1);
                        let answer = answer_frame(id, post::refusal(refusal));
                        return self.send(vec![ToWorker::Published(answer)]).await;
                    }
                }
                Ok(())
            }
        }
    }

    /// Answers the publishes under way (at shutdown: they had their checks started).
    async fn finish_publishes(&mut self) {
        let mut answers = Vec::new();
        while let Some(answer) = self.publishes.next().await {
            answers.push(ToWorker::Published(answer));
        }
        for frame in answers {
            if self.writer.feed(frame).await.is_err() {
                return;
            }
        }
        let _ = self.writer.flush().await;
    }

    /// Tells the worker whether its viewer `id` is admitted, and keeps it if it is.
    async fn answer_admission(
        &mut self,
        id: u64,
        channels: Vec<String>,
        verdict: Result<Grant, Refusal>,
    ) -> Result<(), Stop> {
        let (status, reason) = match verdict {
            Ok(grant) => {
                debug!(id, ?channels, sub = ?grant.identity.sub, "private viewer admitted");
                if let Some(viewers) = &self.viewers {
                    viewers.watch(&channels, &grant.identity);
                }
                self.admitted.insert(
                    id,
                    AdmittedViewer {
                        channels,
                        identity: grant.identity,
                    },
                );
                (0, String::new())
            }
            Err(refusal) => {
                debug!(id, ?channels, "private viewer refused: {refusal}");
                (refusal.status(), format!("{}: {refusal}", refusal.code()))
            }
        };
        self.send(vec![ToWorker::Admitted { id, status, reason }])
            .await
    }

    /// Forgets an admitted viewer: it left, or is being closed.
    fn forget_viewer(&mut self, id: u64) -> Option<AdmittedViewer> {
        let gone = self.admitted.remove(&id)?;
        if let Some(viewers) = &self.viewers {
            viewers.unwatch(&gone.channels, &gone.identity);
        }
        Some(gone)
    }

    /// Closes the admitted viewers a kick names.
    async fn kick(&mut self, kick: ViewerKick) -> Result<(), Stop> {
        let kicked: Vec<u64> = self
            .admitted
            .iter()
            .filter(|(_, v)| kick.matches(&v.channels, &v.identity))
            .map(|(id, _)| *id)
            .collect();
        let mut frames = Vec::with_capacity(kicked.len());
        for id in kicked {
            self.forget_viewer(id);
            frames.push(ToWorker::CloseViewer {
                id,
                code: kick.code,
                reason: kick.reason.clone(),
            });
        }
        if !frames.is_empty() {
            info!(channel = ?kick.channel, closed = frames.len(), "closed kicked viewers");
        }
        self.send(frames).await
    }

    /// Closes the admitted viewers whose token has expired (with the configured leeway
    /// already spent by the verifier at admission, none more here).
    async fn close_expired(&mut self) -> Result<(), Stop> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expired: Vec<u64> = self
            .admitted
            .iter()
            .filter(|(_, v)| v.identity.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut frames = Vec::with_capacity(expired.len());
        for id in expired {
            self.forget_viewer(id);
            frames.push(ToWorker::CloseViewer {
                id,
                code: chatup_wire::close::SUBSCRIBE_TOKEN_EXPIRED,
                reason: "subscribe token expired".into(),
            });
        }
        self.send(frames).await
    }

    async fn subscribe(
        &mut self,
        channel: String,
        want: u32,
        since: Option<Position>,
    ) -> Result<(), Stop> {
        if let Err(e) = chatup_wire::channel::validate(channel.as_bytes()) {
            warn!(channel, "ignoring Subscribe with a bad channel name: {e}");
            return Ok(());
        }
        let backlog = match self
            .broker
            .subscribe(&channel, want, since, &self.subscriber)
            .await
        {
            Ok(b) => {
                if std::mem::replace(&mut self.subscribe_failing, false) {
                    info!(channel, "subscribing works again");
                }
                b
            }
            Err(BrokerError::Unavailable(e)) => {
                // Only this channel waits; the worker's others keep flowing.
                if !std::mem::replace(&mut self.subscribe_failing, true) {
                    warn!(
                        channel,
                        "cannot subscribe: {e}; retrying every {}s",
                        SUBSCRIBE_RETRY.as_secs()
                    );
                } else {
                    debug!(channel, "cannot subscribe yet: {e}");
                }
                self.pending.insert(channel, Pending { want, since });
                return Ok(());
            }
            Err(e) => {
                // The worker keeps its subscribers and retries on reconnect.
                error!(channel, "cannot subscribe: {e}; closing relay connection");
                return Err(Stop::Failed);
            }
        };
        let backlog = fit_backlog(&channel, backlog);
        debug!(
            channel,
            since = %since.map(|p| p.to_string()).unwrap_or_default(),
            kind = ?backlog.kind,
            messages = backlog.messages.len(),
            "subscribed"
        );
        self.channels.insert(
            channel.clone(),
            Sent {
                epoch: backlog.epoch,
                last_id: backlog.head,
            },
        );
        self.send(vec![ToWorker::Backlog {
            channel,
            epoch: backlog.epoch,
            kind: backlog.kind,
            messages: backlog.messages,
        }])
        .await
    }

    /// Turns a live event into frames for the worker, dropping what it already has.
    fn handle_event(&mut self, event: Event, out: &mut Vec<ToWorker>) {
        match event {
            Event::Message(p) => {
                let Some(sent) = self.channels.get_mut(&*p.channel) else {
                    return; // Unsubscribed since it was queued.
                };
                if p.epoch != sent.epoch {
                    out.push(ToWorker::EpochReset {
                        channel: p.channel.to_string(),
                        epoch: p.epoch,
                    });
                    *sent = Sent {
                        epoch: p.epoch,
                        last_id: 0,
                    };
                }
                if p.id <= sent.last_id {
                    return;
                }
                sent.last_id = p.id;
                out.push(ToWorker::Message {
                    channel: p.channel.to_string(),
                    epoch: p.epoch,
                    id: p.id,
                    payload: p.payload.to_vec(),
                });
            }
            Event::EpochReset { channel, epoch } => {
                let Some(sent) = self.channels.get_mut(&*channel) else {
                    return;
                };
                if sent.epoch != epoch {
                    *sent = Sent { epoch, last_id: 0 };
                    out.push(ToWorker::EpochReset {
                        channel: channel.to_string(),
                        epoch,
                    });
                }
            }
        }
    }

    /// Writes frames, giving up if the worker stops reading long enough for its queue to
    /// overflow, or at shutdown.
    async fn send(&mut self, frames: Vec<ToWorker>) -> Result<(), Stop> {
        if frames.is_empty() {
            return Ok(());
        }
        let (mut live, mut backlog) = (0, 0);
        for frame in &frames {
            match frame {
                ToWorker::Message { .. } => live += 1,
                ToWorker::Backlog { messages, .. } => backlog += messages.len() as u64,
                ToWorker::EpochReset { .. }
                | ToWorker::Policy { .. }
                | ToWorker::Admitted { .. }
                | ToWorker::CloseViewer { .. }
                | ToWorker::Published(_) => {}
            }
        }
        let traffic = &self.workers.traffic;
        let overflowed = self.subscriber.overflowed().clone();
        let writer = &mut self.writer;
        let write = async move {
            for frame in frames {
                writer.feed(frame).await?;
            }
            writer.flush().await
        };
        tokio::select! {
            result = write => {
                if result.is_ok() {
                    traffic.live_messages.fetch_add(live, Ordering::Relaxed);
                    traffic.backlog_messages.fetch_add(backlog, Ordering::Relaxed);
                }
                result.map_err(|e| {
                    warn!("relay write failed: {e}");
                    Stop::Failed
                })
            }
            _ = overflowed.cancelled() => Err(Stop::Overflow),
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
        }
    }

    /// Sends everything still queued (used at shutdown).
    async fn flush_queue(&mut self) {
        let mut out = Vec::new();
        while let Ok(event) = self.queue.try_recv() {
            self.handle_event(event, &mut out);
        }
        for frame in out {
            if self.writer.feed(frame).await.is_err() {
                return;
            }
        }
        let _ = self.writer.flush().await;
    }
}

/// Drops the oldest backlog messages that would push the frame past the protocol's limit
/// (only possible with a very large history); a resume then reports `Truncated`.
fn fit_backlog(channel: &str, mut backlog: Backlog) -> Backlog {
    // kind byte, channel, epoch, backlog kind, count; then id and length per message.
    let fixed = 1 + 2 + channel.len() + 8 + 1 + 4;
    let mut size = fixed
        + backlog
            .messages
            .iter()
            .map(|e| 12 + e.payload.len())
            .sum::<usize>();
    let mut drop = 0;
    while size > MAX_FRAME_LEN && drop < backlog.messages.len() {
        size -= 12 + backlog.messages[drop].payload.len();
        drop += 1;
    }
    if drop > 0 {
        warn!(
            channel,
            dropped = drop,
            "backlog exceeds the relay frame limit of {MAX_FRAME_LEN} bytes; \
             sending only the newest messages"
        );
        backlog.messages.drain(..drop);
        if backlog.kind == BacklogKind::Continued {
            backlog.kind = BacklogKind::Truncated;
        }
    }
    backlog
}

/// The next kick, or never without private channels.
async fn next_kick(kicks: &mut Option<broadcast::Receiver<ViewerKick>>) -> ViewerKick {
    let Some(receiver) = kicks else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(kick) => return kick,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "viewer kicks came faster than this connection took them"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

fn frame_name(frame: &ToSidecar) -> &'static str {
    match frame {
        ToSidecar::Hello { .. } => "Hello",
        ToSidecar::Subscribe { .. } => "Subscribe",
        ToSidecar::Unsubscribe { .. } => "Unsubscribe",
        ToSidecar::Stats { .. } => "Stats",
        ToSidecar::Admit { .. } => "Admit",
        ToSidecar::Left { .. } => "Left",
        ToSidecar::Publish(_) => "Publish",
    }
}

/// One `Publish`, checked and published as the HTTP route would, ending in its answer.
fn publish(app: Arc<App>, request: PublishRequest) -> BoxFuture<'static, PublishAnswer> {
    async move {
        let limit = app.publisher.limits().max_request_bytes();
        let PublishRequest {
            id,
            channel,
            authorization,
            content_type,
            idempotency_key,
            body,
        } = request;
        let request = PostRequest {
            channel: channel::checked(&channel).map_err(PublishError::from),
            authorization: authorization.as_deref(),
            content_type: content_type.as_deref(),
            idempotency_key: idempotency_key.as_deref(),
            body: (body.len() <= limit).then(|| body.into()),
        };
        answer_frame(id, post::answer(&app, request).await)
    }
    .boxed()
}

/// The `Published` frame of an answer.
fn answer_frame(id: u64, answer: PostAnswer) -> PublishAnswer {
    PublishAnswer {
        id,
        status: answer.status.as_u16(),
        headers: answer
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect(),
        body: answer.body,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatup_wire::{ChannelCount, Entry};
    use tokio_util::codec::Framed;

    use super::super::test_support::{
        closed, connect, next, publish, publish_frame, start, start_publishing, subscribe, Worker,
    };
    use super::*;
    use crate::test_support::{good_claims, sign};

    /// The JSON body of an answer.
    fn json(answer: &PublishAnswer) -> serde_json::Value {
        serde_json::from_slice(&answer.body).expect("a JSON body")
    }

    fn header<'a>(answer: &'a PublishAnswer, name: &str) -> Option<&'a str> {
        answer
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn publishes_are_answered_by_id_with_the_http_routes_checks() {
        let f = start_publishing().await;
        let mut w = connect(&f.path).await;
        w.send(subscribe("room", 0, None)).await.unwrap();
        assert!(matches!(next(&mut w).await, ToWorker::Backlog { .. }));
        let token = sign(&good_claims());
        // Many at once, in one write: good ones, and one of each refusal.
        let texts = ["a", "b", "c", "d", "e"];
        for (i, text) in texts.iter().enumerate() {
            w.feed(publish_frame(10 + i as u64, "room", Some(&token), text))
                .await
                .unwrap();
        }
        w.feed(publish_frame(20, "room", None, "x")).await.unwrap();
        w.feed(publish_frame(21, "room", Some(&token), "far too long"))
            .await
            .unwrap();
        w.feed(publish_frame(22, "bad name", Some(&token), "x"))
            .await
            .unwrap();
        let mut json_body = publish_frame(23, "room", Some(&token), r#"{"msg":"j"}"#);
        if let ToSidecar::Publish(p) = &mut json_body {
            p.content_type = Some(b"application/json; charset=utf-8".to_vec());
            p.idempotency_key = Some(b"key-1".to_vec());
        }
        w.feed(json_body).await.unwrap();
        w.flush().await.unwrap();

        let mut answers = HashMap::new();
        let mut messages = HashMap::new();
        while answers.len() < 9 || messages.len() < 6 {
            match next(&mut w).await {
                ToWorker::Published(a) => {
                    assert!(answers.insert(a.id, a).is_none(), "one answer per id");
                }
                ToWorker::Message { id, payload, .. } => {
                    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    messages.insert(id, payload["msg"].as_str().unwrap().to_owned());
                }
                other => panic!("{other:?}"),
            }
        }
        // Each accepted publish's answer names the message that carries its own text.
        for (i, text) in texts.iter().enumerate() {
            let a = &answers[&(10 + i as u64)];
            assert_eq!(a.status, 200, "{}", json(a));
            let body = json(a);
            assert_eq!(body["ch"], "room");
            let id = body["id"].as_u64().unwrap();
            assert_eq!(messages[&id], *text);
        }
        assert_eq!(messages[&json(&answers[&23])["id"].as_u64().unwrap()], "j");
        let refused = |id: u64| {
            let a = &answers[&id];
            (
                a.status,
                json(a)["error"]["code"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(refused(20), (401, "bad_token".into()));
        assert_eq!(header(&answers[&20], "www-authenticate"), Some("Bearer"));
        assert_eq!(refused(21), (413, "too_long".into()));
        assert_eq!(refused(22), (400, "bad_channel".into()));
        assert_eq!(
            f.workers.traffic.publishes.load(Ordering::Relaxed),
            9,
            "every Publish counted"
        );

        // A retry with the same key publishes nothing and names the first message.
        let mut again = publish_frame(24, "room", Some(&token), r#"{"msg":"j"}"#);
        if let ToSidecar::Publish(p) = &mut again {
            p.content_type = Some(b"application/json".to_vec());
            p.idempotency_key = Some(b"key-1".to_vec());
        }
        w.send(again).await.unwrap();
        let ToWorker::Published(a) = next(&mut w).await else {
            panic!("expected the answer");
        };
        assert_eq!((a.id, a.status), (24, 200));
        assert_eq!(json(&a)["duplicate"], true);
        assert_eq!(json(&a)["id"], json(&answers[&23])["id"]);
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_body_over_the_publishers_limit_is_too_long() {
        let f = start_publishing().await;
        let mut w = connect(&f.path).await;
        let token = sign(&good_claims());
        let big = "x".repeat(64 * 1024 + 1);
        w.send(publish_frame(1, "room", Some(&token), &big))
            .await
            .unwrap();
        let ToWorker::Published(a) = next(&mut w).await else {
            panic!("expected the answer");
        };
        assert_eq!(a.status, 413);
        let message = json(&a)["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("larger than"), "{message}");
        // A bad token is still what is said first.
        w.send(publish_frame(2, "room", Some("nope"), &big))
            .await
            .unwrap();
        let ToWorker::Published(a) = next(&mut w).await else {
            panic!("expected the answer");
        };
        assert_eq!((a.id, a.status), (2, 401));
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_relay_without_a_publisher_answers_unavailable() {
        let f = start(16).await;
        let mut w = connect(&f.path).await;
        w.send(publish_frame(5, "room", Some("t"), "x"))
            .await
            .unwrap();
        let ToWorker::Published(a) = next(&mut w).await else {
            panic!("expected the answer");
        };
        assert_eq!((a.id, a.status), (5, 503));
        assert_eq!(json(&a)["error"]["code"], "unavailable");
        assert_eq!(header(&a, "retry-after"), Some("1"));
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn subscribe_gets_backlog_then_live_messages() {
        let f = start(1024).await;
        for i in 0..7 {
            publish(&f.broker, "room", &format!("m{i}")).await;
        }
        let mut w = connect(&f.path).await;
        w.send(subscribe("room", 3, None)).await.unwrap();
        let ToWorker::Backlog {
            channel,
            epoch,
            kind,
            messages,
        } = next(&mut w).await
        else {
            panic!("expected a backlog");
        };
        assert_eq!(channel, "room");
        assert_eq!(kind, BacklogKind::Recent);
        assert_eq!(
            messages.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        let payload = String::from_utf8(messages[2].payload.clone()).unwrap();
        assert_eq!(
            payload,
            format!(r#"{{"ch":"room","id":7,"ep":{epoch},"t":1,"user":{{}},"msg":"m6"}}"#)
        );

        publish(&f.broker, "room", "live").await;
        match next(&mut w).await {
            ToWorker::Message {
                channel,
                epoch: e,
                id,
                payload,
            } => {
                assert_eq!((channel.as_str(), e, id), ("room", epoch, 8));
                assert!(String::from_utf8(payload)
                    .unwrap()
                    .contains("\"msg\":\"live\""));
            }
            other => panic!("expected a message, got {other:?}"),
        }

        // Resume from a position: Continued with exactly what follows.
        let mut w2 = connect(&f.path).await;
        w2.send(subscribe("room", 0, Some(Position { epoch, id: 6 })))
            .await
            .unwrap();
        match next(&mut w2).await {
            ToWorker::Backlog { kind, messages, .. } => {
                assert_eq!(kind, BacklogKind::Continued);
                assert_eq!(
                    messages,
                    vec![
                        Entry {
                            id: 7,
                            payload: messages[0].payload.clone()
                        },
                        Entry {
                            id: 8,
                            payload: messages[1].payload.clone()
                        }
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        // Too old: Truncated; other epoch: EpochChanged; both with the whole history (4..=8).
        for (since, expect) in [
            (Position { epoch, id: 1 }, BacklogKind::Truncated),
            (
                Position {
                    epoch: epoch ^ 1,
                    id: 8,
                },
                BacklogKind::EpochChanged,
            ),
        ] {
            w2.send(subscribe("room", 0, Some(since))).await.unwrap();
            match next(&mut w2).await {
                ToWorker::Backlog { kind, messages, .. } => {
                    assert_eq!(kind, expect);
                    assert_eq!(
                        messages.iter().map(|e| e.id).collect::<Vec<_>>(),
                        vec![4, 5, 6, 7, 8]
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn live_stream_has_no_gap_or_duplicate_while_publishing() {
        let f = start(100_000).await;
        let mut w = connect(&f.path).await;
        let broker = f.broker.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..500 {
                publish(&broker, "busy", &i.to_string()).await;
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        w.send(subscribe("busy", 100, None)).await.unwrap();
        publisher.await.unwrap();
        let mut ids = match next(&mut w).await {
            ToWorker::Backlog { messages, .. } => messages.iter().map(|e| e.id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        while ids.last() != Some(&500) {
            match next(&mut w).await {
                ToWorker::Message { id, .. } => ids.push(id),
                other => panic!("{other:?}"),
            }
        }
        let first = ids.first().copied().unwrap_or(1);
        assert_eq!(ids, (first..=500).collect::<Vec<_>>());
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn resubscribing_does_not_repeat_messages_and_unsubscribe_stops_them() {
        let f = start(1024).await;
        let mut w = connect(&f.path).await;
        w.send(subscribe("a", 10, None)).await.unwrap();
        assert!(matches!(next(&mut w).await, ToWorker::Backlog { .. }));
        publish(&f.broker, "a", "1").await;
        assert!(matches!(
            next(&mut w).await,
            ToWorker::Message { id: 1, .. }
        ));
        w.send(subscribe("a", 10, None)).await.unwrap();
        assert!(
            matches!(next(&mut w).await, ToWorker::Backlog { ref messages, .. } if messages.len() == 1)
        );
        publish(&f.broker, "a", "2").await;
        assert!(matches!(
            next(&mut w).await,
            ToWorker::Message { id: 2, .. }
        ));

        w.send(ToSidecar::Unsubscribe {
            channel: "a".into(),
        })
        .await
        .unwrap();
        // A frame after the Unsubscribe proves it was handled before the next publish.
        w.send(subscribe("b", 0, None)).await.unwrap();
        assert!(
            matches!(next(&mut w).await, ToWorker::Backlog { ref channel, .. } if channel == "b")
        );
        publish(&f.broker, "a", "3").await;
        publish(&f.broker, "b", "x").await;
        match next(&mut w).await {
            ToWorker::Message { channel, id, .. } => assert_eq!((channel.as_str(), id), ("b", 1)),
            other => panic!("{other:?}"),
        }
        f.shutdown.cancel();
    }

    fn totals(delivered: u64, replayed: u64, slow_closes: u64) -> Totals {
        Totals {
            delivered,
            replayed,
            slow_closes,
        }
    }

    fn stats(subscribers: u32, totals: Totals) -> ToSidecar {
        ToSidecar::Stats {
            subscribers,
            totals,
            channels: vec![ChannelCount {
                channel: "room".into(),
                subscribers,
            }],
        }
    }

    /// Sends a frame after the ones already sent and waits for its answer: the relay has
    /// handled everything before it.
    async fn sync(w: &mut Worker) {
        w.send(subscribe("sync", 0, None)).await.unwrap();
        assert!(
            matches!(next(w).await, ToWorker::Backlog { ref channel, .. } if channel == "sync")
        );
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 5s");
    }

    #[tokio::test]
    async fn stats_are_kept_per_worker_and_dropped_on_disconnect() {
        let f = start(16).await;
        let mut w = connect(&f.path).await;
        w.send(stats(3, totals(10, 2, 1))).await.unwrap();
        sync(&mut w).await;
        let snapshot = f.workers.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].pid, 4242);
        assert_eq!(snapshot[0].subscribers, 3);
        assert_eq!(f.workers.total_subscribers(), 3);
        assert_eq!(f.workers.connected(), 1);
        assert_eq!(f.workers.totals(), totals(10, 2, 1));
        drop(w);
        wait_until("the disconnect", || f.workers.snapshot().is_empty()).await;
        assert_eq!(f.workers.connected(), 0);
        assert_eq!(f.workers.traffic.closed.load(Ordering::Relaxed), 1);
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn host_totals_add_up_connections_and_never_go_down() {
        let f = start(16).await;
        let mut a = connect(&f.path).await;
        let mut b = connect(&f.path).await;
        a.send(stats(1, totals(10, 2, 1))).await.unwrap();
        b.send(stats(1, totals(5, 0, 0))).await.unwrap();
        sync(&mut a).await;
        sync(&mut b).await;
        assert_eq!(f.workers.totals(), totals(15, 2, 1));
        // A report lower than the last one of its connection is not believed.
        a.send(stats(1, totals(4, 3, 0))).await.unwrap();
        sync(&mut a).await;
        assert_eq!(f.workers.totals(), totals(15, 3, 1));
        // A closed connection's totals stay counted; its successor counts from zero.
        drop(a);
        wait_until("the disconnect", || f.workers.connected() == 1).await;
        assert_eq!(f.workers.totals(), totals(15, 3, 1));
        let mut again = connect(&f.path).await;
        again.send(stats(1, totals(2, 0, 0))).await.unwrap();
        sync(&mut again).await;
        assert_eq!(f.workers.totals(), totals(17, 3, 1));
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn messages_written_to_workers_are_counted() {
        let f = start(1024).await;
        for i in 0..3 {
            publish(&f.broker, "room", &format!("old {i}")).await;
        }
        let mut w = connect(&f.path).await;
        w.send(subscribe("room", 2, None)).await.unwrap();
        assert!(matches!(next(&mut w).await, ToWorker::Backlog { .. }));
        for i in 0..4 {
            publish(&f.broker, "room", &format!("new {i}")).await;
            assert!(matches!(next(&mut w).await, ToWorker::Message { .. }));
        }
        let traffic = &f.workers.traffic;
        wait_until("the count", || {
            traffic.live_messages.load(Ordering::Relaxed) == 4
        })
        .await;
        assert_eq!(traffic.backlog_messages.load(Ordering::Relaxed), 2);
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn refuses_missing_hello_and_wrong_version() {
        let f = start(16).await;
        let stream = UnixStream::connect(&f.path).await.unwrap();
        let mut w: Worker = Framed::new(stream, WireCodec::default());
        w.send(subscribe("room", 0, None)).await.unwrap();
        assert!(closed(&mut w).await);

        // A newer worker, and one from before the current version (an old module).
        for version in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1] {
            let stream = UnixStream::connect(&f.path).await.unwrap();
            let mut w: Worker = Framed::new(stream, WireCodec::default());
            w.send(ToSidecar::Hello { version, pid: 1 }).await.unwrap();
            assert!(closed(&mut w).await, "version {version} accepted");
        }
        assert!(f.workers.snapshot().is_empty());

        // Garbage after a good Hello closes too.
        let mut w = connect(&f.path).await;
        w.get_mut()
            .try_write(&[0, 0, 0, 1, 0x7f])
            .expect("write garbage");
        assert!(closed(&mut w).await);
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn bad_channel_names_are_ignored() {
        let f = start(16).await;
        let mut w = connect(&f.path).await;
        w.send(subscribe("bad name", 0, None)).await.unwrap();
        w.send(subscribe("good", 0, None)).await.unwrap();
        assert!(
            matches!(next(&mut w).await, ToWorker::Backlog { ref channel, .. } if channel == "good")
        );
        f.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_worker_that_does_not_read_is_disconnected() {
        let f = start(4).await;
        let mut w = connect(&f.path).await;
        w.send(subscribe("flood", 0, None)).await.unwrap();
        assert!(matches!(next(&mut w).await, ToWorker::Backlog { .. }));
        // Stop reading; publish far more than the socket buffers and the queue hold.
        let big = "x".repeat(900);
        for _ in 0..5000 {
            publish(&f.broker, "flood", &big).await;
        }
        // The publisher was never blocked (we got here), and the worker gets dropped.
        assert!(closed(&mut w).await);
        let overflowed = &f.workers.traffic.overflowed;
        wait_until("the count", || overflowed.load(Ordering::Relaxed) == 1).await;
        // A reconnect resumes where it stopped.
        let mut w = connect(&f.path).await;
        w.send(subscribe("flood", 0, None)).await.unwrap();
        assert!(matches!(next(&mut w).await, ToWorker::Backlog { .. }));
        f.shutdown.cancel();
    }

    #[test]
    fn oversized_backlogs_keep_the_newest_messages() {
        let big = vec![b'x'; 6 << 20];
        let backlog = Backlog {
            epoch: 1,
            head: 3,
            kind: BacklogKind::Continued,
            messages: (1..=3)
                .map(|id| Entry {
                    id,
                    payload: big.clone(),
                })
                .collect(),
        };
        let fitted = fit_backlog("c", backlog);
        assert_eq!(fitted.kind, BacklogKind::Truncated);
        assert_eq!(
            fitted.messages.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let mut out = Vec::new();
        chatup_wire::encode(
            &ToWorker::Backlog {
                channel: "c".into(),
                epoch: 1,
                kind: fitted.kind,
                messages: fitted.messages,
            },
            &mut out,
        )
        .unwrap();
    }
}
