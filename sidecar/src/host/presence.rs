//! Presence: which authenticated publishers are in which channels on this host.
//!
//! A WebSocket publisher joins and leaves channels explicitly (`{"join":..}`,
//! `{"leave":..}`, see [`crate::host::publish::ws`]); closing the session leaves them all. A user
//! is counted once per channel however many sessions (tabs, devices) it has here: the key is
//! the token's `sub`, or the encoded `_public` object when there is no `sub`.
//!
//! The counts feed the host registry ([`crate::cluster::registry`]) and so the dispatcher's
//! `pubCount`. With `presence.events` on, the user's first session entering a channel on
//! this host publishes an event `join`, and its last session leaving publishes `leave`, both
//! carrying the user's `_public` object as `user`, through the broker like any message.
//!
//! A user whose last session drops (the client closed it, or the connection broke) lingers
//! for `presence.leave_grace_ms`: still counted and listed, its `leave` not yet announced.
//! If it joins again meanwhile (a page reload, a short network break), nothing is announced
//! at all; otherwise the pump announces the `leave` when the grace ends. An explicit leave,
//! a ban, a change of user and a shutdown leave at once.
//!
//! Counting is synchronous under one short lock, so a [`Session`] can leave everything from
//! `Drop`. Events are handed, in the order of the transitions, to one [`EventPump`] task that
//! publishes them one after the other: a channel's `join` and `leave` for a user are never
//! reordered, and a slow or unreachable broker never holds up a join. When the pump's queue
//! is full (the broker is failing) further events are dropped and counted in the log; the
//! counts stay exact.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::jwt::Identity;
use crate::message::{now_ms, Body, Tail};
use crate::metrics::{Metrics, MetricsError};
use crate::publish_error::{ErrorCode, PublishError};

/// Channels one publisher session may be in at once: bounds what one token can make a host
/// remember.
pub const MAX_CHANNELS_PER_SESSION: usize = 256;

/// Presence events waiting to be published; past it new ones are dropped.
const EVENT_QUEUE: usize = 4096;

/// How long the pump goes on publishing the `leave` events of sessions closed by a
/// shutdown, once the shutdown has begun.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// The event names presence publishes (reserved: publishers cannot send them).
pub const JOIN_EVENT: &str = "join";
pub const LEAVE_EVENT: &str = "leave";

/// Why a join or leave was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The channel name breaks the shared rule (the message says why).
    #[error("{0}")]
    BadChannel(String),
    /// The session is already in [`MAX_CHANNELS_PER_SESSION`] channels.
    #[error("this session is already in {MAX_CHANNELS_PER_SESSION} channels; leave one first")]
    TooManyChannels,
}

impl From<PresenceError> for PublishError {
    fn from(e: PresenceError) -> Self {
        let code = match e {
            PresenceError::BadChannel(_) => ErrorCode::BadChannel,
            PresenceError::TooManyChannels => ErrorCode::TooManyChannels,
        };
        Self::new(code, e.to_string())
    }
}

/// How a user is told apart from others: `sub`, else the `_public` JSON. The two kinds are
/// prefixed so that a `sub` can never equal someone's `_public` text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UserKey(Arc<str>);

impl UserKey {
    fn of(identity: &Identity) -> Self {
        Self(match &identity.sub {
            Some(sub) => format!("sub:{sub}").into(),
            None => format!("public:{}", identity.user).into(),
        })
    }
}

/// One user in one channel on this host.
#[derive(Debug)]
struct Member {
    /// Its sessions here that joined the channel; the entry goes when it reaches 0.
    sessions: u32,
    /// The `_public` object of the session that joined first: the `leave` event carries
    /// the same `user` as the `join` did.
    user: Arc<str>,
    /// Set while its last session has gone and the leave waits out the grace: the number
    /// of that wait, so that the end of an older, cancelled wait changes nothing.
    lingering: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Channel → users in it.
    channels: HashMap<String, HashMap<UserKey, Member>>,
    /// Authenticated publisher sessions connected to this host, joined or not: part of the
    /// host's load.
    sessions: u64,
    /// Numbers the waits of lingering members ([`Member::lingering`]).
    next_linger: u64,
}

/// Which way a user moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Join,
    Leave,
}

impl Move {
    fn event(self) -> &'static str {
        match self {
            Self::Join => JOIN_EVENT,
            Self::Leave => LEAVE_EVENT,
        }
    }
}

/// A presence event waiting to be published.
#[derive(Debug)]
struct Notice {
    channel: String,
    user: Arc<str>,
    kind: Move,
    /// For a lingering member's leave: who and which wait, checked again when the grace
    /// ends ([`Presence::expire`]); `None`: publish as it comes.
    linger: Option<(UserKey, u64)>,
    /// Told once the event is published (or could not be), so that the session waits for
    /// its `join` before publishing what it says in the channel.
    done: Option<oneshot::Sender<()>>,
}

/// Resolves when a presence event has been published (or dropped).
pub type Published = oneshot::Receiver<()>;

/// The presence of this host's publishers. Shared by the publisher sessions (which change
/// it) and the host registry (which reports it).
#[derive(Debug)]
pub struct Presence {
    /// Counts; every critical section is a few map operations.
    state: Mutex<State>,
    /// The pump's queue; `None` when `presence.events` is off.
    events: Option<mpsc::Sender<Notice>>,
    /// Events dropped because the queue was full, for the log.
    dropped: AtomicU64,
    /// `presence.leave_grace_ms`; zero (or no events) leaves at once.
    leave_grace: Duration,
}

/// Publishes presence events in order; spawn [`EventPump::run`] once.
pub struct EventPump {
    /// The other end of [`Presence::events`].
    queue: mpsc::Receiver<Notice>,
}

impl Presence {
    /// A presence registry; with `events`, also the pump that publishes its events. Users
    /// leave at once.
    pub fn new(events: bool) -> (Arc<Self>, Option<EventPump>) {
        Self::with_leave_grace(events, Duration::ZERO)
    }

    /// [`new`](Self::new), with users whose sessions dropped lingering for `leave_grace`
    /// (when `events` is on: without events nobody is told, so there is nothing to spare).
    pub fn with_leave_grace(events: bool, leave_grace: Duration) -> (Arc<Self>, Option<EventPump>) {
        let (sender, pump) = if events {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            (Some(tx), Some(EventPump { queue: rx }))
        } else {
            (None, None)
        };
        let presence = Arc::new(Self {
            state: Mutex::default(),
            events: sender,
            dropped: AtomicU64::new(0),
            leave_grace: if events { leave_grace } else { Duration::ZERO },
        });
        (presence, pump)
    }

    /// Registers an authenticated publisher session. Dropping the [`Session`] leaves every
    /// channel it joined.
    pub fn connect(self: &Arc<Self>, identity: &Identity) -> Session {
        self.lock().sessions += 1;
        Session {
            presence: self.clone(),
            key: UserKey::of(identity),
            user: identity.user.clone(),
            channels: BTreeSet::new(),
            dropped: false,
        }
    }

    /// Distinct users in `channel` on this host.
    pub fn publishers(&self, channel: &str) -> u64 {
        self.lock()
            .channels
            .get(channel)
            .map_or(0, |users| users.len() as u64)
    }

    /// Authenticated publisher sessions connected to this host (joined to channels or not).
    pub fn total(&self) -> u64 {
        self.lock().sessions
    }

    /// Registers the number of publisher sessions, read at each scrape.
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) -> Result<(), MetricsError> {
        let presence = self.clone();
        metrics.read_gauge(
            "chatup_publisher_sessions",
            "Authenticated WebSocket publisher sessions (GET /pub) on this sidecar.",
            move || presence.total(),
        )
    }

    /// Distinct users per channel, for every channel with at least one.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.lock()
            .channels
            .iter()
            .map(|(channel, users)| (channel.clone(), users.len() as u64))
            .collect()
    }

    /// The users in `channel` on this host: (user key, `_public` JSON), in no order. The key
    /// tells users apart across hosts (`sub:<sub>`, else `public:<_public>`).
    pub fn members(&self, channel: &str) -> Vec<(Arc<str>, Arc<str>)> {
        self.lock()
            .channels
            .get(channel)
            .map_or_else(Vec::new, |users| {
                users
                    .iter()
                    .map(|(key, member)| (key.0.clone(), member.user.clone()))
                    .collect()
            })
    }

    /// Every channel's users, as [`members`](Self::members) gives them: what the host
    /// registry mirrors to Redis.
    pub fn all_members(&self) -> HashMap<String, HashMap<Arc<str>, Arc<str>>> {
        self.lock()
            .channels
            .iter()
            .map(|(channel, users)| {
                let users = users
                    .iter()
                    .map(|(key, member)| (key.0.clone(), member.user.clone()))
                    .collect();
                (channel.clone(), users)
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot panic halfway through an update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `key` in (or out of) `channel`; on the user's first join or last leave, queues
    /// the event while still holding the lock, so events queue in transition order. Returns
    /// what resolves once that event is out, when there is one. A last leave with `linger`
    /// (the session dropped) keeps the user for the grace and hands the pump a leave to
    /// check when it ends; a join meanwhile takes the user back without an event.
    fn apply(
        &self,
        channel: &str,
        key: &UserKey,
        user: &Arc<str>,
        kind: Move,
        linger: bool,
    ) -> Option<Published> {
        let mut state = self.lock();
        let linger = linger && !self.leave_grace.is_zero();
        let wait = state.next_linger;
        let mut lingers = None;
        let notice_user = match kind {
            Move::Join => {
                let users = state.channels.entry(channel.to_owned()).or_default();
                let member = users.entry(key.clone()).or_insert_with(|| Member {
                    sessions: 0,
                    user: user.clone(),
                    lingering: None,
                });
                member.sessions += 1;
                let back = member.lingering.take().is_some();
                (member.sessions == 1 && !back).then(|| member.user.clone())
            }
            Move::Leave => {
                let users = state.channels.get_mut(channel)?;
                let member = users.get_mut(key)?;
                member.sessions = member.sessions.saturating_sub(1);
                let gone = (member.sessions == 0).then(|| member.user.clone());
                if gone.is_some() && linger {
                    member.lingering = Some(wait);
                    lingers = Some((key.clone(), wait));
                } else if gone.is_some() {
                    users.remove(key);
                    if users.is_empty() {
                        state.channels.remove(channel);
                    }
                }
                gone
            }
        };
        let user = notice_user?;
        if lingers.is_some() {
            state.next_linger += 1;
            debug!(channel, user = %key.0, "left; the leave waits out the grace");
        } else {
            debug!(channel, user = %key.0, event = kind.event(), "presence changed");
        }
        let (done, published) = oneshot::channel();
        let queued = self.queue(Notice {
            channel: channel.to_owned(),
            user,
            kind,
            linger: lingers.clone(),
            done: Some(done),
        });
        if !queued {
            if let Some((key, wait)) = lingers {
                // Nothing will end the grace: the user leaves now, unannounced (as a
                // dropped event would be).
                Self::remove_lingering(&mut state, channel, &key, wait);
            }
        }
        queued.then_some(published)
    }

    /// Ends the grace of `key`'s wait `wait` in `channel`: if the user is still lingering
    /// in that wait, it leaves now and its `_public` object is returned for the event.
    fn expire(&self, channel: &str, key: &UserKey, wait: u64) -> Option<Arc<str>> {
        let mut state = self.lock();
        let user = Self::remove_lingering(&mut state, channel, key, wait)?;
        debug!(channel, user = %key.0, event = LEAVE_EVENT, "presence changed");
        Some(user)
    }

    fn remove_lingering(
        state: &mut State,
        channel: &str,
        key: &UserKey,
        wait: u64,
    ) -> Option<Arc<str>> {
        let users = state.channels.get_mut(channel)?;
        if users.get(key)?.lingering != Some(wait) {
            return None;
        }
        let member = users.remove(key)?;
        if users.is_empty() {
            state.channels.remove(channel);
        }
        Some(member.user)
    }

    /// Hands the event to the pump; false when there is none or it was dropped.
    fn queue(&self, notice: Notice) -> bool {
        let Some(events) = &self.events else {
            return false;
        };
        match events.try_send(notice) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(notice)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    warn!(
                        channel = notice.channel,
                        dropped,
                        "presence events are not being published fast enough (is the broker \
                         reachable?); dropping some"
                    );
                }
                false
            }
            // The pump stopped (shutdown): nothing will publish it any more.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// One publisher session's presence. Dropping it leaves every joined channel.
#[derive(Debug)]
pub struct Session {
    /// The registry it is counted in.
    presence: Arc<Presence>,
    /// Who it counts as.
    key: UserKey,
    /// Its `_public` object, for the `join` event.
    user: Arc<str>,
    /// The channels it joined, left again when the session ends.
    channels: BTreeSet<String>,
    /// Set by [`dropped`](Self::dropped): the client went away and may be back, so its
    /// channels are left after the grace.
    dropped: bool,
}

impl Session {
    /// Joins `channel`. Joining a channel the session is already in changes nothing and is
    /// not an error. When this makes a `join` event, returns what resolves once it is out.
    ///
    /// Bans are not checked here: the publisher session asks them first
    /// ([`crate::moderation::Moderation::may_join`]), since that may take a Redis call.
    pub fn join(
        &mut self,
        _identity: &Identity,
        channel: &str,
    ) -> Result<Option<Published>, PresenceError> {
        chatup_wire::channel::validate(channel.as_bytes())
            .map_err(|e| PresenceError::BadChannel(e.to_string()))?;
        if self.channels.contains(channel) {
            return Ok(None);
        }
        if self.channels.len() >= MAX_CHANNELS_PER_SESSION {
            return Err(PresenceError::TooManyChannels);
        }
        let published = self
            .presence
            .apply(channel, &self.key, &self.user, Move::Join, false);
        self.channels.insert(channel.to_owned());
        Ok(published)
    }

    /// Leaves `channel`. Leaving a channel the session is not in is not an error. When this
    /// makes a `leave` event, returns what resolves once it is out.
    pub fn leave(&mut self, channel: &str) -> Result<Option<Published>, PresenceError> {
        chatup_wire::channel::validate(channel.as_bytes())
            .map_err(|e| PresenceError::BadChannel(e.to_string()))?;
        if !self.channels.remove(channel) {
            return Ok(None);
        }
        Ok(self
            .presence
            .apply(channel, &self.key, &self.user, Move::Leave, false))
    }

    /// The client closed the session or its connection broke (rather than being closed by
    /// the server): when it ends, its user lingers for the grace before leaving.
    pub fn dropped(&mut self) {
        self.dropped = true;
    }

    /// The channels this session is in.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// The session authenticated again. When the new token names another user, the old one
    /// leaves every channel and the new one joins them (the publisher session has checked
    /// the new user's bans first).
    pub fn reidentify(&mut self, identity: &Identity) {
        let key = UserKey::of(identity);
        if key == self.key {
            // Same user: a refreshed `_public` is used for channels joined from now on.
            self.user = identity.user.clone();
            return;
        }
        let channels = std::mem::take(&mut self.channels);
        for channel in &channels {
            self.presence
                .apply(channel, &self.key, &self.user, Move::Leave, false);
        }
        self.key = key;
        self.user = identity.user.clone();
        for channel in channels {
            if self.join(identity, &channel).is_err() {
                debug!(channel, "the new identity may not stay in the channel");
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in std::mem::take(&mut self.channels) {
            self.presence
                .apply(&channel, &self.key, &self.user, Move::Leave, self.dropped);
        }
        let mut state = self.presence.lock();
        state.sessions = state.sessions.saturating_sub(1);
    }
}

impl EventPump {
    /// Publishes queued events one at a time until the queue closes, or after `shutdown`
    /// once every session has gone and its `leave` events are out (at most
    /// one second later).
    pub async fn run(
        mut self,
        presence: Arc<Presence>,
        broker: Arc<dyn Broker>,
        shutdown: CancellationToken,
    ) {
        // Leaves waiting out the grace, oldest first: the grace is one length, so they end
        // in this order.
        let mut lingering: VecDeque<(tokio::time::Instant, Notice)> = VecDeque::new();
        let grace = presence.leave_grace;
        loop {
            let next_end = lingering.front().map(|(end, _)| *end);
            let notice = tokio::select! {
                _ = shutdown.cancelled() => break,
                () = sleep_until(next_end) => {
                    if let Some((_, notice)) = lingering.pop_front() {
                        end_grace(&presence, broker.as_ref(), notice).await;
                    }
                    continue;
                }
                notice = self.queue.recv() => match notice {
                    Some(notice) => notice,
                    None => return,
                },
            };
            if notice.linger.is_some() {
                lingering.push_back((tokio::time::Instant::now() + grace, notice));
            } else {
                publish(broker.as_ref(), notice).await;
            }
        }
        // Shutting down: nobody is coming back here, so every lingering user leaves now.
        for (_, notice) in lingering.drain(..) {
            end_grace(&presence, broker.as_ref(), notice).await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        loop {
            // Read the session count first: a session queues its leaves before it stops
            // counting, so with no session left the queue already holds them all.
            let idle = presence.total() == 0;
            match self.queue.try_recv() {
                Ok(notice) if notice.linger.is_some() => {
                    end_grace(&presence, broker.as_ref(), notice).await;
                }
                Ok(notice) => publish(broker.as_ref(), notice).await,
                Err(_) if idle => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let left = self.queue.len();
        if left > 0 {
            info!(left, "presence events not published at shutdown");
        }
    }
}

/// Resolves at `end`, never without one.
async fn sleep_until(end: Option<tokio::time::Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

/// The grace of a lingering leave is over: publishes the leave unless the user came back.
async fn end_grace(presence: &Presence, broker: &dyn Broker, mut notice: Notice) {
    if let Some((key, wait)) = notice.linger.take() {
        if presence.expire(&notice.channel, &key, wait).is_some() {
            publish(broker, notice).await;
        }
    }
}

/// Publishes one presence event, then tells the waiting session, if any; failures are
/// logged (the counts are unaffected).
async fn publish(broker: &dyn Broker, mut notice: Notice) {
    publish_event(broker, &notice).await;
    if let Some(done) = notice.done.take() {
        // The session may have stopped waiting.
        let _ = done.send(());
    }
}

async fn publish_event(broker: &dyn Broker, notice: &Notice) {
    let body = Body::Event {
        name: notice.kind.event().to_owned(),
        data: None,
    };
    let tail = match Tail::encode(now_ms(), &notice.user, &body) {
        Ok(tail) => tail,
        Err(e) => {
            warn!(
                channel = notice.channel,
                "cannot encode a presence event: {e}"
            );
            return;
        }
    };
    match broker.publish(&notice.channel, &tail).await {
        Ok(published) => debug!(
            channel = notice.channel,
            id = published.id,
            event = notice.kind.event(),
            "presence event published"
        ),
        Err(e) => warn!(
            channel = notice.channel,
            event = notice.kind.event(),
            "cannot publish a presence event: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::broker::{Event, Subscriber};
    use crate::test_support::identity_of as identity;

    fn drain(pump: &mut EventPump) -> Vec<(String, String, Move)> {
        let mut out = Vec::new();
        while let Ok(n) = pump.queue.try_recv() {
            out.push((n.channel, n.user.to_string(), n.kind));
        }
        out
    }

    /// `presence`'s pump running into a memory broker, and a viewer of "r" reading what it
    /// publishes.
    struct Pumping {
        /// The broker the pump publishes to, kept for the test's length.
        _broker: Arc<MemoryBroker>,
        /// The viewer's registration, kept so that the broker goes on delivering to `rx`.
        _subscriber: Subscriber,
        /// What the viewer of "r" receives.
        rx: mpsc::Receiver<Event>,
        /// Stops the pump.
        shutdown: CancellationToken,
        /// The pump's task, awaited by `stop`.
        task: tokio::task::JoinHandle<()>,
    }

    impl Pumping {
        async fn start(presence: &Arc<Presence>, pump: Option<EventPump>) -> Self {
            let broker = MemoryBroker::new(MemoryOptions {
                history_size: 10,
                ttl: Duration::from_secs(60),
            });
            let (subscriber, rx) = Subscriber::new(16);
            broker.subscribe("r", 0, None, &subscriber).await.unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(pump.unwrap().run(
                presence.clone(),
                broker.clone(),
                shutdown.clone(),
            ));
            Self {
                _broker: broker,
                _subscriber: subscriber,
                rx,
                shutdown,
                task,
            }
        }

        /// The next two messages' payloads, each within 5 s.
        async fn next_two(&mut self) -> Vec<String> {
            let mut got = Vec::new();
            for _ in 0..2 {
                let event = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                    .await
                    .unwrap()
                    .unwrap();
                let Event::Message(p) = event else {
                    panic!("{event:?}")
                };
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
            got
        }

        /// Shuts the pump down and waits (at most 5 s) for it to end.
        async fn stop(&mut self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), &mut self.task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[test]
    fn users_are_counted_once_per_channel_and_events_follow_first_and_last() {
        let (presence, pump) = Presence::new(true);
        let mut pump = pump.unwrap();
        let ann = identity(Some("1"), r#"{"name":"ann"}"#);
        let mut a1 = presence.connect(&ann);
        let mut a2 = presence.connect(&ann);
        assert_eq!(presence.total(), 2);
        a1.join(&ann, "room").unwrap();
        a2.join(&ann, "room").unwrap();
        a1.join(&ann, "room").unwrap(); // again: nothing changes
        assert_eq!(presence.publishers("room"), 1);
        assert_eq!(
            drain(&mut pump),
            vec![("room".into(), r#"{"name":"ann"}"#.into(), Move::Join)]
        );
        a1.leave("room").unwrap();
        a1.leave("room").unwrap(); // not in it any more: fine
        assert_eq!(presence.publishers("room"), 1);
        assert!(drain(&mut pump).is_empty());
        drop(a2);
        assert_eq!(presence.publishers("room"), 0);
        assert_eq!(presence.total(), 1);
        assert_eq!(
            drain(&mut pump),
            vec![("room".into(), r#"{"name":"ann"}"#.into(), Move::Leave)]
        );
        assert!(presence.snapshot().is_empty());
        drop(a1);
        assert_eq!(presence.total(), 0);
    }

    #[test]
    fn without_sub_the_public_object_is_the_key() {
        let (presence, _) = Presence::new(false);
        let bo = identity(None, r#"{"name":"bo"}"#);
        let cy = identity(None, r#"{"name":"cy"}"#);
        // A sub equal to someone's _public text is still someone else.
        let odd = identity(Some(r#"{"name":"bo"}"#), r#"{"name":"bo"}"#);
        let mut s1 = presence.connect(&bo);
        let mut s2 = presence.connect(&bo);
        let mut s3 = presence.connect(&cy);
        let mut s4 = presence.connect(&odd);
        for (s, who) in [
            (&mut s1, &bo),
            (&mut s2, &bo),
            (&mut s3, &cy),
            (&mut s4, &odd),
        ] {
            s.join(who, "r").unwrap();
        }
        assert_eq!(presence.publishers("r"), 3);
        assert_eq!(presence.snapshot(), HashMap::from([("r".to_string(), 3)]));
    }

    #[test]
    fn members_are_listed_once_with_the_first_public_object() {
        let (presence, _) = Presence::new(false);
        let ann = identity(Some("1"), r#"{"name":"ann"}"#);
        let mut ann_later = ann.clone();
        ann_later.user = r#"{"name":"ann2"}"#.into();
        let bo = identity(None, r#"{"name":"bo"}"#);
        let mut s1 = presence.connect(&ann);
        let mut s2 = presence.connect(&ann_later);
        let mut s3 = presence.connect(&bo);
        s1.join(&ann, "r").unwrap();
        s2.join(&ann_later, "r").unwrap();
        s3.join(&bo, "r").unwrap();
        s3.join(&bo, "other").unwrap();
        let mut members = presence.members("r");
        members.sort();
        let expected: Vec<(Arc<str>, Arc<str>)> = vec![
            (r#"public:{"name":"bo"}"#.into(), r#"{"name":"bo"}"#.into()),
            ("sub:1".into(), r#"{"name":"ann"}"#.into()),
        ];
        assert_eq!(members, expected);
        assert!(presence.members("none").is_empty());
        let all = presence.all_members();
        assert_eq!(all.len(), 2);
        assert_eq!(all["r"].len(), 2);
        assert_eq!(
            all["other"],
            HashMap::from([(
                Arc::<str>::from(r#"public:{"name":"bo"}"#),
                Arc::<str>::from(r#"{"name":"bo"}"#)
            )])
        );
        drop(s3);
        assert_eq!(presence.members("r").len(), 1);
        assert!(!presence.all_members().contains_key("other"));
    }

    #[test]
    fn bad_names_and_too_many_channels_are_refused() {
        let (presence, _) = Presence::new(false);
        let ann = identity(Some("1"), "{}");
        let mut s = presence.connect(&ann);
        assert!(matches!(
            s.join(&ann, "a b"),
            Err(PresenceError::BadChannel(_))
        ));
        assert!(matches!(s.leave(""), Err(PresenceError::BadChannel(_))));
        for i in 0..MAX_CHANNELS_PER_SESSION {
            s.join(&ann, &format!("c{i}")).unwrap();
        }
        assert_eq!(
            s.join(&ann, "one-more").err(),
            Some(PresenceError::TooManyChannels)
        );
        // Already joined is still fine at the limit.
        s.join(&ann, "c0").unwrap();
        assert_eq!(presence.snapshot().len(), MAX_CHANNELS_PER_SESSION);
        drop(s);
        assert!(presence.snapshot().is_empty());
    }

    #[test]
    fn reidentifying_as_someone_else_moves_the_memberships() {
        let (presence, pump) = Presence::new(true);
        let mut pump = pump.unwrap();
        let ann = identity(Some("1"), r#"{"n":"ann"}"#);
        let bo = identity(Some("2"), r#"{"n":"bo"}"#);
        let mut s = presence.connect(&ann);
        s.join(&ann, "r").unwrap();
        let mut ann_again = ann.clone();
        ann_again.user = r#"{"n":"ann2"}"#.into();
        s.reidentify(&ann_again);
        assert_eq!(drain(&mut pump).len(), 1); // only the first join
        s.reidentify(&bo);
        assert_eq!(
            drain(&mut pump),
            vec![
                ("r".into(), r#"{"n":"ann"}"#.into(), Move::Leave),
                ("r".into(), r#"{"n":"bo"}"#.into(), Move::Join),
            ]
        );
        assert_eq!(s.channels().collect::<Vec<_>>(), ["r"]);
        assert_eq!(presence.publishers("r"), 1);
    }

    #[test]
    fn a_dropped_user_lingers_and_a_join_takes_it_back_without_events() {
        let (presence, pump) = Presence::with_leave_grace(true, Duration::from_secs(60));
        let mut pump = pump.unwrap();
        let ann = identity(Some("1"), r#"{"n":"ann"}"#);
        let mut s = presence.connect(&ann);
        s.join(&ann, "r").unwrap();
        assert_eq!(drain(&mut pump).len(), 1);
        s.dropped();
        drop(s);
        // Still counted; the pump holds a leave to check when the grace ends.
        assert_eq!(presence.publishers("r"), 1);
        let held: Vec<_> = std::iter::from_fn(|| pump.queue.try_recv().ok()).collect();
        assert_eq!(held.len(), 1);
        let (key, wait) = held[0].linger.clone().unwrap();
        let mut back = presence.connect(&ann);
        back.join(&ann, "r").unwrap();
        assert!(
            drain(&mut pump).is_empty(),
            "no join for a user who came back"
        );
        assert_eq!(
            presence.expire("r", &key, wait),
            None,
            "the old wait is over"
        );
        assert_eq!(presence.publishers("r"), 1);
        // An explicit leave is at once, even with a grace.
        back.leave("r").unwrap();
        assert_eq!(
            drain(&mut pump),
            vec![("r".into(), r#"{"n":"ann"}"#.into(), Move::Leave)]
        );
        assert_eq!(presence.publishers("r"), 0);
        // A session the server closes (not marked dropped) leaves at once too.
        back.join(&ann, "r").unwrap();
        drain(&mut pump);
        drop(back);
        let gone: Vec<_> = std::iter::from_fn(|| pump.queue.try_recv().ok()).collect();
        assert_eq!(gone.len(), 1);
        assert!(gone[0].linger.is_none());
        assert_eq!(presence.publishers("r"), 0);
    }

    /// Ann joins "r" and her session drops (rather than being closed): she lingers.
    async fn ann_drops_out(presence: &Arc<Presence>) {
        let ann = identity(Some("1"), r#"{"n":"ann"}"#);
        let mut s = presence.connect(&ann);
        s.join(&ann, "r").unwrap().unwrap().await.unwrap();
        s.dropped();
        drop(s);
    }

    #[tokio::test]
    async fn a_lingering_user_leaves_when_the_grace_ends() {
        let (presence, pump) = Presence::with_leave_grace(true, Duration::from_millis(200));
        let mut pumping = Pumping::start(&presence, pump).await;
        ann_drops_out(&presence).await;
        assert_eq!(presence.publishers("r"), 1);
        let got = pumping.next_two().await;
        assert!(got[1].ends_with(r#""ev":"leave"}"#), "{}", got[1]);
        assert_eq!(presence.publishers("r"), 0);
        pumping.stop().await;
    }

    #[tokio::test]
    async fn a_shutdown_ends_every_grace_at_once() {
        let (presence, pump) = Presence::with_leave_grace(true, Duration::from_secs(60));
        let mut pumping = Pumping::start(&presence, pump).await;
        ann_drops_out(&presence).await;
        pumping.stop().await;
        let mut got = Vec::new();
        while let Ok(Event::Message(p)) = pumping.rx.try_recv() {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].ends_with(r#""ev":"leave"}"#), "{}", got[1]);
        assert_eq!(presence.publishers("r"), 0);
    }

    #[tokio::test]
    async fn the_pump_publishes_events_in_order() {
        let (presence, pump) = Presence::new(true);
        let mut pumping = Pumping::start(&presence, pump).await;
        let ann = identity(Some("1"), r#"{"n":"ann"}"#);
        let mut s = presence.connect(&ann);
        s.join(&ann, "r").unwrap();
        drop(s);
        let got = pumping.next_two().await;
        assert!(
            got[0].ends_with(r#","user":{"n":"ann"},"ev":"join"}"#),
            "{}",
            got[0]
        );
        assert!(
            got[1].ends_with(r#","user":{"n":"ann"},"ev":"leave"}"#),
            "{}",
            got[1]
        );
        pumping.stop().await;
    }
}
