//! The state of one nginx worker: its channels, their caches, its subscribers and what it
//! owes the sidecar. Plain Rust: the FFI layer feeds it events (a subscriber came or went,
//! a relay frame arrived) and then writes what it queued (subscriber frames, relay bytes).
//!
//! Generic over `H`, the handle the FFI layer needs to reach a subscriber's connection, so the
//! logic is tested without nginx.
//!
//! The hub also counts what it does for subscribers ([`Totals`]: messages delivered live,
//! messages replayed from the cache, slow subscribers closed) and reports the counts in its
//! `Stats` frames, per relay connection as the wire crate describes, for the sidecar's
//! metrics.

use std::collections::HashMap;
use std::sync::Arc;

use chatup_wire::{BacklogKind, ChannelCount, Entry, Position, ToSidecar, ToWorker, Totals};
use slab::Slab;

use crate::admission::{AdmissionError, Admissions};
use crate::cache::{CacheLimits, ChannelCache, Frame, Resync};
use crate::outbox::Outbox;
use crate::publish::{PublishError, PublishHeaders, Publishes, MAX_RELAY_BACKLOG};
use crate::since;
use crate::sse::{self, Framing};
use crate::ws::{self, Opcode};

/// Index of a subscriber in its worker's hub.
pub type SubscriberKey = usize;

/// One channel a subscriber asks for, and where it resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub channel: String,
    pub since: Option<Position>,
}

#[derive(Debug)]
struct Member {
    key: SubscriberKey,
    /// Ids up to this one were delivered elsewhere before: the subscriber resumed from a
    /// point this worker had not reached yet, and must not get them twice.
    skip_through: u64,
}

/// Sweeps ([`Hub::sweep_lingering`], one a second) a channel whose last subscriber was an
/// answered poll stays subscribed: the poller's next request, a moment later, finds it
/// cached instead of asking the sidecar (and its broker) again.
pub const POLL_LINGER_SWEEPS: u32 = 30;

#[derive(Debug)]
struct Channel {
    cache: ChannelCache,
    members: Vec<Member>,
    /// Subscribers that arrived before the sidecar told us anything about the channel.
    waiting: Vec<(SubscriberKey, Option<Position>)>,
    /// Without subscribers since its last poll was answered: sweeps left before it goes.
    lingering: Option<u32>,
}

impl Channel {
    fn audience(&self) -> usize {
        self.members.len() + self.waiting.len()
    }
}

/// How a subscriber's messages go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// WebSocket frames.
    WebSocket,
    /// SSE events, framed as nginx chose when it sent the header.
    EventStream(Framing),
    /// Kept (as WebSocket frames) until the FFI layer answers the poll with their payloads.
    Poll,
}

const NO_POSITION: Position = Position { epoch: 0, id: 0 };

#[derive(Debug)]
pub struct Subscriber<H> {
    pub handle: H,
    pub outbox: Outbox,
    channels: Vec<Box<str>>,
    /// Where the subscriber stands on each of `channels` (same order), for SSE event ids and
    /// poll answers (epoch 0: nowhere yet). Empty for a WebSocket, whose client keeps them.
    positions: Vec<Position>,
    delivery: Delivery,
    /// Set once a close frame is queued; nothing else is queued after it. For a poll: its
    /// answer is complete (full, or the worker is closing) and goes now.
    closing: Option<u16>,
    max_unsent: usize,
    /// Already in the hub's list of subscribers to flush.
    marked: bool,
    /// A poll that does not know where some channel stands (no `since` for it): answered
    /// as soon as its channels are known, empty or not, so that it learns where they stand.
    answer_when_known: bool,
}

impl<H> Subscriber<H> {
    pub fn closing(&self) -> Option<u16> {
        self.closing
    }

    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Where the subscriber stands on its channels, as SSE ids and poll answers say it.
    pub fn since(&self) -> String {
        let mut out = String::new();
        since::encode(
            self.channels
                .iter()
                .map(|c| &**c)
                .zip(self.positions.iter().copied()),
            &mut out,
        );
        out
    }

    /// A poll's answer: the messages queued and where they leave the subscriber. Empties the
    /// outbox.
    pub fn take_poll_answer(&mut self) -> Vec<u8> {
        let since = self.since();
        let body = sse::poll_body(self.outbox.frames().map(|f| ws::payload_of(f)), &since);
        self.outbox.clear();
        body
    }

    fn set_position(&mut self, channel: &str, position: Position) {
        if let Some(slot) = self.channels.iter().position(|c| &**c == channel) {
            if let Some(p) = self.positions.get_mut(slot) {
                *p = position;
            }
        }
    }

    /// Queues message `id` of `channel` (its WebSocket `frame`). `shared` is the SSE event
    /// every single-channel subscriber of this delivery gets alike, built once.
    fn offer(
        &mut self,
        channel: &str,
        position: Position,
        frame: &Frame,
        shared: &mut SharedEvents,
        totals: &mut Totals,
    ) -> bool {
        match self.delivery {
            Delivery::WebSocket => self.enqueue(frame, totals),
            Delivery::Poll => {
                let queued = self.enqueue(frame, totals);
                if queued {
                    self.set_position(channel, position);
                }
                queued
            }
            Delivery::EventStream(framing) => {
                if self.closing.is_some() {
                    return false;
                }
                self.set_position(channel, position);
                let event = if self.channels.len() == 1 {
                    shared.get(framing, || {
                        sse::message_event(&self.since(), ws::payload_of(frame), framing)
                    })
                } else {
                    sse::message_event(&self.since(), ws::payload_of(frame), framing)
                };
                self.enqueue(&event, totals)
            }
        }
    }

    /// Queues a resync notice (its WebSocket `frame`) of `channel`, moving the subscriber to
    /// `position` first when given.
    fn offer_notice(
        &mut self,
        channel: &str,
        position: Option<Position>,
        frame: &Frame,
        totals: &mut Totals,
    ) {
        if let Some(p) = position {
            if self.delivery != Delivery::WebSocket {
                self.set_position(channel, p);
            }
        }
        match self.delivery {
            Delivery::WebSocket | Delivery::Poll => {
                self.enqueue(frame, totals);
            }
            Delivery::EventStream(framing) => {
                let event = sse::message_event(&self.since(), ws::payload_of(frame), framing);
                self.enqueue(&event, totals);
            }
        }
    }

    /// Queues a frame, or starts closing with 4000 (counted in `totals`) when the subscriber
    /// is too far behind. Returns whether the frame was queued.
    fn enqueue(&mut self, frame: &Frame, totals: &mut Totals) -> bool {
        if self.closing.is_some() {
            return false;
        }
        if self.outbox.unsent() + frame.len() > self.max_unsent {
            if self.delivery == Delivery::Poll {
                // The answer is full: it goes now, and the next poll resumes after it.
                self.closing = Some(chatup_wire::close::NORMAL);
                return false;
            }
            self.start_close(
                chatup_wire::close::SLOW_CONSUMER,
                "too slow: reconnect and resume",
            );
            totals.slow_closes += 1;
            return false;
        }
        self.outbox.push(frame.clone());
        true
    }

    /// Drops what was not started and queues a close frame (or SSE close event); a poll
    /// keeps what it has, to answer with.
    fn start_close(&mut self, code: u16, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        match self.delivery {
            Delivery::WebSocket => {
                self.outbox.drop_unstarted();
                self.outbox.push(Arc::from(ws::close_frame(code, reason)));
            }
            Delivery::EventStream(framing) => {
                self.outbox.drop_unstarted();
                self.outbox.push(sse::close_event(code, reason, framing));
            }
            Delivery::Poll => {}
        }
        self.closing = Some(code);
    }
}

/// The SSE event of one message for subscribers to that channel alone, built on first use.
#[derive(Default)]
struct SharedEvents {
    raw: Option<Frame>,
    chunked: Option<Frame>,
}

impl SharedEvents {
    fn get(&mut self, framing: Framing, build: impl FnOnce() -> Frame) -> Frame {
        let slot = match framing {
            Framing::Raw => &mut self.raw,
            Framing::Chunked => &mut self.chunked,
        };
        slot.get_or_insert_with(build).clone()
    }
}

pub struct Hub<H> {
    channels: HashMap<Box<str>, Channel>,
    subscribers: Slab<Subscriber<H>>,
    /// What each channel's cache keeps; its message count is also how many recent messages
    /// to ask the sidecar for when a channel is new to this worker.
    cache_limits: CacheLimits,
    /// Encoded frames for the sidecar, written by the FFI layer while the relay is up.
    relay_out: Vec<u8>,
    relay_up: bool,
    /// Subscribers with something new in their outbox.
    dirty: Vec<SubscriberKey>,
    /// The subscriber counts changed since the last `Stats` frame.
    counts_changed: bool,
    /// The ping frame, shared by every WebSocket subscriber's outbox.
    ping: Frame,
    /// The SSE ping comment, raw and chunked.
    sse_pings: [Frame; 2],
    /// What this worker did for its subscribers since it started.
    totals: Totals,
    /// `totals` as of the last `Stats` frame queued for the sidecar.
    reported: Totals,
    /// Private channels: the policy, held requests, admitted viewers.
    admissions: Admissions,
    /// `POST /pub/<ch>` requests waiting for the sidecar's answer.
    publishes: Publishes,
    /// `reported` when the current relay connection began: its `Stats` count from here, so
    /// that the sidecar, adding up connections, counts nothing twice.
    window_start: Totals,
}

impl<H: Copy> Hub<H> {
    pub fn new(cache_limits: impl Into<CacheLimits>) -> Self {
        Self {
            channels: HashMap::new(),
            subscribers: Slab::new(),
            cache_limits: cache_limits.into(),
            relay_out: Vec::new(),
            relay_up: false,
            dirty: Vec::new(),
            counts_changed: false,
            ping: Arc::from(ws::frame(Opcode::Ping, b"")),
            sse_pings: [sse::ping(Framing::Raw), sse::ping(Framing::Chunked)],
            totals: Totals::default(),
            reported: Totals::default(),
            window_start: Totals::default(),
            admissions: Admissions::default(),
            publishes: Publishes::default(),
        }
    }

    /// Publishes waiting for the sidecar: the answers to send.
    pub fn publishes(&mut self) -> &mut Publishes {
        &mut self.publishes
    }

    /// Sends a publish of `body` to `channel` to the sidecar; its answer comes back through
    /// [`Publishes::take_answers`] under the returned id.
    pub fn request_publish(
        &mut self,
        channel: &[u8],
        headers: PublishHeaders,
        body: Vec<u8>,
    ) -> Result<u64, PublishError> {
        if !self.relay_up {
            return Err(PublishError::SidecarDown);
        }
        if self.relay_out.len() > MAX_RELAY_BACKLOG {
            return Err(PublishError::Backlogged);
        }
        let id = self.publishes.start();
        let frame = ToSidecar::Publish(headers.into_request(id, channel, body));
        if chatup_wire::encode(&frame, &mut self.relay_out).is_err() {
            self.publishes.forget(id);
            return Err(PublishError::TooLarge(chatup_wire::MAX_FRAME_LEN));
        }
        Ok(id)
    }

    /// Fails the publishes waiting for the sidecar (the worker is going away).
    pub fn fail_publishes(&mut self, error: &PublishError) {
        self.publishes.fail_pending(error);
    }

    /// Private channels: what a request needs, the verdicts to answer.
    pub fn admissions(&mut self) -> &mut Admissions {
        &mut self.admissions
    }

    /// Asks the sidecar whether `token` opens `channels`; the verdict comes back through
    /// [`Admissions::take_verdicts`] under the returned id.
    pub fn request_admission(
        &mut self,
        channels: Vec<String>,
        token: String,
    ) -> Result<u64, AdmissionError> {
        if !self.relay_up {
            return Err(AdmissionError::SidecarDown);
        }
        let id = self.admissions.start();
        self.send_relay(&ToSidecar::Admit {
            id,
            channels,
            token,
        });
        Ok(id)
    }

    /// The subscriber `key` is the viewer the sidecar admitted as `id`.
    pub fn set_admission(&mut self, key: SubscriberKey, id: u64) {
        if self.subscribers.contains(key) {
            self.admissions.admit(id, key);
        }
    }

    /// A viewer admitted as `id` never became a subscriber (its request failed).
    pub fn admitted_viewer_gone(&mut self, id: u64) {
        if !self.admissions.is_admitted(id) {
            self.send_relay(&ToSidecar::Left { id });
        }
    }

    /// Fails the held requests (the worker is going away).
    pub fn fail_admissions(&mut self, error: &AdmissionError) {
        self.admissions.fail_pending(error);
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// What this worker did for its subscribers since it started.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn subscriber(&mut self, key: SubscriberKey) -> Option<&mut Subscriber<H>> {
        self.subscribers.get_mut(key)
    }

    /// Registers a subscriber and queues its replay for every channel already known.
    pub fn add_subscriber(
        &mut self,
        handle: H,
        subscriptions: Vec<Subscription>,
        max_unsent: usize,
        delivery: Delivery,
    ) -> SubscriberKey {
        let positions = if delivery == Delivery::WebSocket {
            Vec::new()
        } else {
            subscriptions
                .iter()
                .map(|s| s.since.unwrap_or(NO_POSITION))
                .collect()
        };
        let mut outbox = Outbox::default();
        if let Delivery::EventStream(framing) = delivery {
            outbox.push(sse::preamble(framing));
        }
        let key = self.subscribers.insert(Subscriber {
            handle,
            outbox,
            // Known before the replays, which move the positions.
            channels: subscriptions
                .iter()
                .map(|s| s.channel.as_str().into())
                .collect(),
            positions,
            delivery,
            closing: None,
            max_unsent,
            marked: false,
            answer_when_known: delivery == Delivery::Poll
                && subscriptions.iter().any(|s| s.since.is_none()),
        });
        for Subscription { channel, since } in subscriptions {
            let name: Box<str> = channel.into();
            let channel = match self.channels.get_mut(&name) {
                Some(channel) => {
                    channel.lingering = None;
                    channel
                }
                None => {
                    self.send_relay(&ToSidecar::Subscribe {
                        channel: name.to_string(),
                        want: self.backlog_want(),
                        since: None,
                    });
                    self.channels.entry(name.clone()).or_insert(Channel {
                        cache: ChannelCache::new(self.cache_limits),
                        members: Vec::new(),
                        waiting: Vec::new(),
                        lingering: None,
                    })
                }
            };
            if channel.cache.is_known() {
                let sub = &mut self.subscribers[key];
                let member = replay_to(sub, key, &name, &channel.cache, since, &mut self.totals);
                channel.members.push(member);
            } else {
                channel.waiting.push((key, since));
            }
        }
        self.mark(key);
        self.counts_changed = true;
        key
    }

    /// Forgets a subscriber; channels left without subscribers are unsubscribed.
    pub fn remove_subscriber(&mut self, key: SubscriberKey) -> Option<H> {
        let sub = self.subscribers.try_remove(key)?;
        // Public viewers cost nothing here: the map is empty without private channels.
        if let Some(id) = self.admissions.left_by_key(key) {
            self.send_relay(&ToSidecar::Left { id });
        }
        for name in sub.channels {
            let Some(channel) = self.channels.get_mut(&name) else {
                continue;
            };
            channel.members.retain(|m| m.key != key);
            channel.waiting.retain(|(k, _)| *k != key);
            if channel.audience() == 0 {
                if sub.delivery == Delivery::Poll {
                    channel.lingering = Some(POLL_LINGER_SWEEPS);
                } else {
                    self.channels.remove(&name);
                    self.send_relay(&ToSidecar::Unsubscribe {
                        channel: name.into(),
                    });
                }
            }
        }
        self.counts_changed = true;
        Some(sub.handle)
    }

    /// Whether a poll should be answered now: its answer is complete (full, or the worker is
    /// closing), or every one of its channels is known (so that one answer covers them all)
    /// and it has messages, or it must learn where a channel stands.
    pub fn poll_is_ready(&self, key: SubscriberKey) -> bool {
        let Some(sub) = self.subscribers.get(key) else {
            return true;
        };
        if sub.closing.is_some() {
            return true;
        }
        (!sub.outbox.is_empty() || sub.answer_when_known)
            && sub
                .channels
                .iter()
                .all(|name| self.channels.get(name).is_none_or(|ch| ch.cache.is_known()))
    }

    /// Counts down the channels kept for pollers; unsubscribes those whose time is up.
    pub fn sweep_lingering(&mut self) {
        let mut expired = Vec::new();
        for (name, channel) in &mut self.channels {
            if let Some(left) = channel.lingering.as_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    expired.push(name.clone());
                }
            }
        }
        for name in expired {
            self.channels.remove(&name);
            self.send_relay(&ToSidecar::Unsubscribe {
                channel: name.into(),
            });
        }
    }

    /// Queues a frame for one subscriber (a pong, a ping).
    pub fn send_to(&mut self, key: SubscriberKey, frame: Frame) {
        if let Some(sub) = self.subscribers.get_mut(key) {
            sub.enqueue(&frame, &mut self.totals);
            self.mark(key);
        }
    }

    /// Queues a ping for one subscriber (a comment for SSE; nothing for a poll).
    pub fn send_ping(&mut self, key: SubscriberKey) {
        let Some(sub) = self.subscribers.get(key) else {
            return;
        };
        let ping = match sub.delivery {
            Delivery::WebSocket => self.ping.clone(),
            Delivery::EventStream(Framing::Raw) => self.sse_pings[0].clone(),
            Delivery::EventStream(Framing::Chunked) => self.sse_pings[1].clone(),
            Delivery::Poll => return,
        };
        self.send_to(key, ping);
    }

    /// Queues a close frame for a subscriber, after which nothing else is sent to it.
    pub fn close(&mut self, key: SubscriberKey, code: u16, reason: &str) {
        if let Some(sub) = self.subscribers.get_mut(key) {
            sub.start_close(code, reason);
            self.mark(key);
        }
    }

    /// Closes every subscriber with `code` (worker shutdown); returns their handles.
    pub fn close_all(&mut self, code: u16, reason: &str) -> Vec<(SubscriberKey, H)> {
        let keys: Vec<_> = self
            .subscribers
            .iter()
            .map(|(k, s)| (k, s.handle))
            .collect();
        for (key, _) in &keys {
            self.close(*key, code, reason);
        }
        keys
    }

    /// Subscribers with new frames to write, each once.
    pub fn take_dirty(&mut self) -> Vec<(SubscriberKey, H)> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for key in self.dirty.drain(..) {
            if let Some(sub) = self.subscribers.get_mut(key) {
                sub.marked = false;
                out.push((key, sub.handle));
            }
        }
        out
    }

    fn mark(&mut self, key: SubscriberKey) {
        if let Some(sub) = self.subscribers.get_mut(key) {
            mark(sub, key, &mut self.dirty);
        }
    }

    /// Whether the relay connection is up (frames queued now reach the sidecar).
    pub fn relay_is_up(&self) -> bool {
        self.relay_up
    }

    /// Bytes waiting for the sidecar.
    pub fn relay_output(&mut self) -> &mut Vec<u8> {
        &mut self.relay_out
    }

    /// A new relay connection: say hello and (re)subscribe every channel from where it stands.
    pub fn relay_connected(&mut self, pid: u32) {
        self.relay_up = true;
        self.relay_out.clear();
        self.send_relay(&ToSidecar::Hello {
            version: chatup_wire::PROTOCOL_VERSION,
            pid,
        });
        let want = self.backlog_want();
        let subscribes: Vec<_> = self
            .channels
            .iter()
            .map(|(name, ch)| ToSidecar::Subscribe {
                channel: name.to_string(),
                want,
                since: ch.cache.position(),
            })
            .collect();
        for frame in &subscribes {
            self.send_relay(frame);
        }
        self.window_start = self.reported;
        self.counts_changed = true;
        // The sidecar that admitted them is gone with its connection: they come back with
        // their token (or a fresh one) and resume.
        let admitted: Vec<SubscriberKey> = self
            .admissions
            .admitted_ids()
            .filter_map(|id| self.admissions.subscriber_of(id))
            .collect();
        for key in admitted {
            self.close(
                key,
                chatup_wire::close::GOING_AWAY,
                "chatup-sidecar reconnected: subscribe again",
            );
        }
    }

    pub fn relay_disconnected(&mut self) {
        self.relay_up = false;
        self.relay_out.clear();
        self.admissions.fail_pending(&AdmissionError::SidecarDown);
        self.publishes.fail_pending(&PublishError::SidecarDown);
    }

    /// Queues a `Stats` frame when counts or totals changed since the last one.
    pub fn report_stats(&mut self) {
        if !(self.counts_changed || self.totals != self.reported) || !self.relay_up {
            return;
        }
        self.counts_changed = false;
        self.reported = self.totals;
        let channels = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.audience() > 0)
            .map(|(name, ch)| ChannelCount {
                channel: name.to_string(),
                subscribers: ch.audience() as u32,
            })
            .collect();
        self.send_relay(&ToSidecar::Stats {
            subscribers: self.subscribers.len() as u32,
            totals: self.totals.since(self.window_start),
            channels,
        });
    }

    /// How many recent messages to ask for with a `Subscribe`: what the cache keeps.
    fn backlog_want(&self) -> u32 {
        u32::try_from(self.cache_limits.messages).unwrap_or(u32::MAX)
    }

    fn send_relay(&mut self, frame: &ToSidecar) {
        if self.relay_up {
            // Channel names are validated at subscribe time, so encoding cannot fail.
            let _ = chatup_wire::encode(frame, &mut self.relay_out);
        }
    }

    /// Applies a frame from the sidecar, queueing frames for the subscribers concerned.
    pub fn handle_relay_frame(&mut self, frame: ToWorker) {
        match frame {
            ToWorker::Message {
                channel,
                epoch,
                id,
                payload,
            } => {
                let Some(ch) = self.channels.get_mut(channel.as_str()) else {
                    return;
                };
                if !ch.cache.is_known() {
                    // The backlog always comes first; a message before it belongs to an
                    // earlier subscription of this channel.
                    return;
                }
                let (subscribers, dirty, totals) =
                    (&mut self.subscribers, &mut self.dirty, &mut self.totals);
                if epoch != ch.cache.epoch() {
                    reset_epoch(ch, &channel, epoch, subscribers, dirty, totals);
                }
                deliver(ch, &channel, id, &payload, subscribers, dirty, totals);
            }
            ToWorker::Backlog {
                channel,
                epoch,
                kind,
                messages,
            } => self.apply_backlog(&channel, epoch, kind, messages),
            ToWorker::EpochReset { channel, epoch } => {
                if let Some(ch) = self.channels.get_mut(channel.as_str()) {
                    if ch.cache.is_known() && ch.cache.epoch() != epoch {
                        let (subscribers, dirty) = (&mut self.subscribers, &mut self.dirty);
                        reset_epoch(ch, &channel, epoch, subscribers, dirty, &mut self.totals);
                    }
                }
            }
            ToWorker::Policy { private } => {
                if self.admissions.set_policy(&private) {
                    self.close_unadmitted();
                }
            }
            ToWorker::Admitted { id, status, reason } => {
                if self.admissions.answered(id, status, reason) {
                    self.send_relay(&ToSidecar::Left { id });
                }
            }
            ToWorker::CloseViewer { id, code, reason } => {
                if let Some(key) = self.admissions.subscriber_of(id) {
                    self.close(key, code, &reason);
                }
            }
            ToWorker::Published(answer) => self.publishes.answered(answer),
        }
    }

    /// Closes the subscribers on a channel the policy makes private that no admission let
    /// in (they came before the policy was known, or it changed), before anything of the
    /// channel reaches them.
    fn close_unadmitted(&mut self) {
        let Some(policy) = self.admissions.policy() else {
            return;
        };
        let outsiders: Vec<SubscriberKey> = self
            .subscribers
            .iter()
            .filter(|(key, s)| {
                !self.admissions.holds_key(*key) && s.channels.iter().any(|c| policy.is_private(c))
            })
            .map(|(key, _)| key)
            .collect();
        for key in outsiders {
            self.close(
                key,
                chatup_wire::close::PRIVATE_CHANNEL,
                "private channel: subscribe with a token",
            );
        }
    }

    fn apply_backlog(&mut self, name: &str, epoch: u64, kind: BacklogKind, messages: Vec<Entry>) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let (subscribers, dirty, totals) =
            (&mut self.subscribers, &mut self.dirty, &mut self.totals);
        if !ch.cache.is_known() {
            ch.cache.reset(epoch);
        } else if epoch != ch.cache.epoch() || kind == BacklogKind::EpochChanged {
            reset_epoch(ch, name, epoch, subscribers, dirty, totals);
        } else if kind == BacklogKind::Truncated {
            let notice = resync_frame(name, Resync::HistoryTruncated, epoch);
            broadcast(&ch.members, name, None, &notice, subscribers, dirty, totals);
        }
        // Members get the messages they missed (a relay reconnect) as if live.
        for entry in messages {
            deliver(
                ch,
                name,
                entry.id,
                &entry.payload,
                subscribers,
                dirty,
                totals,
            );
        }
        for (key, since) in std::mem::take(&mut ch.waiting) {
            let Some(sub) = subscribers.get_mut(key) else {
                continue;
            };
            ch.members
                .push(replay_to(sub, key, name, &ch.cache, since, totals));
            mark(sub, key, dirty);
        }
    }
}

fn mark<H>(sub: &mut Subscriber<H>, key: SubscriberKey, dirty: &mut Vec<SubscriberKey>) {
    if !sub.marked {
        sub.marked = true;
        dirty.push(key);
    }
}

/// Queues what a subscriber resuming from `since` must get from `cache` (counted as
/// replayed).
fn replay_to<H>(
    sub: &mut Subscriber<H>,
    key: SubscriberKey,
    name: &str,
    cache: &ChannelCache,
    since: Option<Position>,
    totals: &mut Totals,
) -> Member {
    let (resync, frames) = cache.replay(since);
    let mut frames = frames.peekable();
    if sub.delivery != Delivery::WebSocket {
        // Where the replay starts from: the resume point, when it is honoured; else just
        // before the first message replayed (or the channel's end, when there is none).
        let start = match since {
            Some(p) if resync.is_none() => p,
            _ => Position {
                epoch: cache.epoch(),
                id: frames
                    .peek()
                    .map_or(cache.last_id(), |(id, _)| id.saturating_sub(1)),
            },
        };
        sub.set_position(name, start);
    }
    if let Some(reason) = resync {
        sub.offer_notice(
            name,
            None,
            &resync_frame(name, reason, cache.epoch()),
            totals,
        );
    }
    for (id, frame) in frames {
        let position = Position {
            epoch: cache.epoch(),
            id,
        };
        if sub.offer(name, position, frame, &mut SharedEvents::default(), totals) {
            totals.replayed += 1;
        }
    }
    let skip_through = match since {
        Some(p) if p.epoch == cache.epoch() && p.id > cache.last_id() => p.id,
        _ => 0,
    };
    Member { key, skip_through }
}

/// Caches a message and queues it for every member that has not had it (counted as
/// delivered).
fn deliver<H>(
    ch: &mut Channel,
    name: &str,
    id: u64,
    payload: &[u8],
    subscribers: &mut Slab<Subscriber<H>>,
    dirty: &mut Vec<SubscriberKey>,
    totals: &mut Totals,
) {
    if id <= ch.cache.last_id() {
        return;
    }
    let frame: Frame = Arc::from(ws::frame(Opcode::Text, payload));
    ch.cache.push(id, frame.clone());
    let position = Position {
        epoch: ch.cache.epoch(),
        id,
    };
    let mut shared = SharedEvents::default();
    for m in &ch.members {
        if id <= m.skip_through {
            continue;
        }
        if let Some(sub) = subscribers.get_mut(m.key) {
            if sub.offer(name, position, &frame, &mut shared, totals) {
                totals.delivered += 1;
            }
            mark(sub, m.key, dirty);
        }
    }
}

/// Starts a new epoch for a channel and tells its members that their positions are void.
fn reset_epoch<H>(
    ch: &mut Channel,
    name: &str,
    epoch: u64,
    subscribers: &mut Slab<Subscriber<H>>,
    dirty: &mut Vec<SubscriberKey>,
    totals: &mut Totals,
) {
    ch.cache.reset(epoch);
    for m in &mut ch.members {
        m.skip_through = 0;
    }
    let notice = resync_frame(name, Resync::EpochChanged, epoch);
    let start = Position { epoch, id: 0 };
    broadcast(
        &ch.members,
        name,
        Some(start),
        &notice,
        subscribers,
        dirty,
        totals,
    );
}

/// Queues a resync notice of channel `name` for every member, moving them to `position`
/// first when given.
fn broadcast<H>(
    members: &[Member],
    name: &str,
    position: Option<Position>,
    notice: &Frame,
    subscribers: &mut Slab<Subscriber<H>>,
    dirty: &mut Vec<SubscriberKey>,
    totals: &mut Totals,
) {
    for m in members {
        if let Some(sub) = subscribers.get_mut(m.key) {
            sub.offer_notice(name, position, notice, totals);
            mark(sub, m.key, dirty);
        }
    }
}

/// The event telling a subscriber its resume point could not be honoured.
pub fn resync_frame(channel: &str, reason: Resync, epoch: u64) -> Frame {
    // Channel names are validated to a charset that needs no JSON escaping.
    let json = format!(
        r#"{{"ch":"{channel}","ev":"resync","data":{{"reason":"{}","ep":{epoch}}}}}"#,
        reason.as_str()
    );
    Arc::from(ws::frame(Opcode::Text, json.as_bytes()))
}

#[cfg(test)]
mod test_support {
    use super::{Hub, ToSidecar};

    /// The frames the hub queued for the sidecar, taken out of its relay output; a frame
    /// that does not decode fails the test.
    pub(super) fn relay_frames(hub: &mut Hub<u32>) -> Vec<ToSidecar> {
        let buf = std::mem::take(hub.relay_output());
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((f, n)) =
            chatup_wire::decode::<ToSidecar>(&buf[at..]).expect("a relay frame")
        {
            out.push(f);
            at += n;
        }
        out
    }
}

#[cfg(test)]
mod transport_tests;

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod publish_tests;

#[cfg(test)]
mod tests {
    use super::test_support::relay_frames;
    use super::*;

    const BIG: usize = 1 << 20;

    fn sub(channel: &str, since: Option<(u64, u64)>) -> Subscription {
        Subscription {
            channel: channel.into(),
            since: since.map(|(epoch, id)| Position { epoch, id }),
        }
    }

    fn msg(channel: &str, epoch: u64, id: u64) -> ToWorker {
        ToWorker::Message {
            channel: channel.into(),
            epoch,
            id,
            payload: format!("m{id}").into_bytes(),
        }
    }

    fn backlog(channel: &str, epoch: u64, kind: BacklogKind, ids: &[u64]) -> ToWorker {
        ToWorker::Backlog {
            channel: channel.into(),
            epoch,
            kind,
            messages: ids
                .iter()
                .map(|id| Entry {
                    id: *id,
                    payload: format!("m{id}").into_bytes(),
                })
                .collect(),
        }
    }

    /// Drains a subscriber's outbox into the text payloads it would receive.
    fn received(hub: &mut Hub<u32>, key: SubscriberKey) -> Vec<String> {
        let sub = hub.subscriber(key).unwrap();
        let mut bytes = Vec::new();
        sub.outbox.gather(&mut bytes, usize::MAX);
        sub.outbox.consume(bytes.len());
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (op, len, header) = match rest[1] {
                126 => (rest[0], u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                n => (rest[0], n as usize, 2),
            };
            let payload = &rest[header..header + len];
            out.push(match op {
                0x81 => String::from_utf8(payload.to_vec()).unwrap(),
                0x88 => format!("close {}", u16::from_be_bytes([payload[0], payload[1]])),
                other => format!("opcode {other:#x}"),
            });
            rest = &rest[header + len..];
        }
        out
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_subscriber_subscribes_and_waits_for_the_backlog() {
        let mut hub = Hub::new(3);
        hub.relay_connected(7);
        assert_eq!(relay_frames(&mut hub).len(), 1); // hello
        let a = hub.add_subscriber(1u32, vec![sub("room", None)], BIG, Delivery::WebSocket);
        assert_eq!(
            relay_frames(&mut hub),
            vec![ToSidecar::Subscribe {
                channel: "room".into(),
                want: 3,
                since: None
            }]
        );
        assert!(received(&mut hub, a).is_empty());
        hub.handle_relay_frame(backlog("room", 9, BacklogKind::Recent, &[4, 5]));
        assert_eq!(received(&mut hub, a), strings(&["m4", "m5"]));
        hub.handle_relay_frame(msg("room", 9, 6));
        assert_eq!(received(&mut hub, a), strings(&["m6"]));
        // A second subscriber is served from the cache, no new Subscribe.
        let b = hub.add_subscriber(2, vec![sub("room", None)], BIG, Delivery::WebSocket);
        assert!(relay_frames(&mut hub).is_empty());
        assert_eq!(received(&mut hub, b), strings(&["m4", "m5", "m6"]));
    }

    #[test]
    fn resume_and_duplicates() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[1, 2, 3]));
        received(&mut hub, a);
        hub.handle_relay_frame(msg("c", 9, 3)); // duplicate
        assert!(received(&mut hub, a).is_empty());
        let b = hub.add_subscriber(2, vec![sub("c", Some((9, 2)))], BIG, Delivery::WebSocket);
        assert_eq!(received(&mut hub, b), strings(&["m3"]));
        // Resumed ahead of this worker: ids up to 5 were seen elsewhere.
        let ahead = hub.add_subscriber(3, vec![sub("c", Some((9, 5)))], BIG, Delivery::WebSocket);
        assert!(received(&mut hub, ahead).is_empty());
        for id in 4..=6 {
            hub.handle_relay_frame(msg("c", 9, id));
        }
        assert_eq!(received(&mut hub, ahead), strings(&["m6"]));
        assert_eq!(received(&mut hub, b), strings(&["m4", "m5", "m6"]));
        let old = hub.add_subscriber(4, vec![sub("c", Some((8, 2)))], BIG, Delivery::WebSocket);
        let got = received(&mut hub, old);
        assert!(
            got[0].contains(r#""reason":"epoch_changed","ep":9"#),
            "{got:?}"
        );
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn relay_reconnect_resubscribes_from_the_last_position_and_fills_the_gap() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(
            1u32,
            vec![sub("c", None), sub("d", None)],
            BIG,
            Delivery::WebSocket,
        );
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[1, 2]));
        received(&mut hub, a);
        hub.relay_disconnected();
        // Nothing is sent while the relay is down.
        hub.add_subscriber(2, vec![sub("e", None)], BIG, Delivery::WebSocket);
        assert!(relay_frames(&mut hub).is_empty());
        hub.relay_connected(1);
        let mut frames = relay_frames(&mut hub);
        frames.sort_by_key(|f| format!("{f:?}"));
        assert!(frames.contains(&ToSidecar::Subscribe {
            channel: "c".into(),
            want: 10,
            since: Some(Position { epoch: 9, id: 2 })
        }));
        assert!(frames.contains(&ToSidecar::Subscribe {
            channel: "d".into(),
            want: 10,
            since: None
        }));
        assert!(frames.contains(&ToSidecar::Subscribe {
            channel: "e".into(),
            want: 10,
            since: None
        }));
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Continued, &[2, 3, 4]));
        assert_eq!(received(&mut hub, a), strings(&["m3", "m4"]));
        // The sidecar came back with a new epoch: subscribers are told, then get it all.
        hub.relay_disconnected();
        hub.relay_connected(1);
        hub.handle_relay_frame(backlog("c", 11, BacklogKind::EpochChanged, &[1]));
        let got = received(&mut hub, a);
        assert!(got[0].contains("epoch_changed"), "{got:?}");
        assert_eq!(got[1], "m1");
        hub.handle_relay_frame(backlog("c", 11, BacklogKind::Truncated, &[5]));
        let got = received(&mut hub, a);
        assert!(got[0].contains("history_truncated"), "{got:?}");
        assert_eq!(got[1], "m5");
    }

    #[test]
    fn last_subscriber_leaving_unsubscribes() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        let b = hub.add_subscriber(2, vec![sub("c", None)], BIG, Delivery::WebSocket);
        relay_frames(&mut hub);
        hub.remove_subscriber(a);
        assert!(relay_frames(&mut hub).is_empty());
        hub.report_stats();
        assert_eq!(
            relay_frames(&mut hub),
            vec![ToSidecar::Stats {
                subscribers: 1,
                totals: Totals::default(),
                channels: vec![ChannelCount {
                    channel: "c".into(),
                    subscribers: 1
                }]
            }]
        );
        hub.report_stats();
        assert!(relay_frames(&mut hub).is_empty(), "stats only when changed");
        hub.remove_subscriber(b);
        assert_eq!(
            relay_frames(&mut hub),
            vec![ToSidecar::Unsubscribe {
                channel: "c".into()
            }]
        );
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.remove_subscriber(b), None);
    }

    #[test]
    fn slow_subscriber_is_closed_with_4000_and_others_keep_going() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let slow = hub.add_subscriber(1u32, vec![sub("c", None)], 10, Delivery::WebSocket);
        let fast = hub.add_subscriber(2, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[]));
        for id in 1..=5 {
            hub.handle_relay_frame(msg("c", 9, id));
            received(&mut hub, fast);
        }
        assert_eq!(hub.subscriber(slow).unwrap().closing(), Some(4000));
        assert_eq!(
            hub.totals().slow_closes,
            1,
            "one close, however many frames it missed"
        );
        assert!(
            hub.totals().delivered < 10,
            "frames not queued are not counted"
        );
        let got = received(&mut hub, slow);
        assert_eq!(got.last().unwrap(), "close 4000");
        hub.handle_relay_frame(msg("c", 9, 6));
        assert!(
            received(&mut hub, slow).is_empty(),
            "nothing after the close"
        );
        assert_eq!(received(&mut hub, fast), strings(&["m6"]));
    }

    /// The totals of every `Stats` frame in the relay output, last first.
    fn reported_totals(hub: &mut Hub<u32>) -> Vec<Totals> {
        let mut out: Vec<Totals> = relay_frames(hub)
            .into_iter()
            .filter_map(|f| match f {
                ToSidecar::Stats { totals, .. } => Some(totals),
                _ => None,
            })
            .collect();
        out.reverse();
        out
    }

    #[test]
    fn messages_are_counted_once_per_subscriber_that_gets_them() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        // The first backlog reaches `a` from the cache: replayed.
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[1, 2]));
        assert_eq!(received(&mut hub, a).len(), 2);
        let b = hub.add_subscriber(2, vec![sub("c", None)], BIG, Delivery::WebSocket);
        // Resumed at 2: nothing to replay, and ids up to 4 come to `ahead` from elsewhere.
        let ahead = hub.add_subscriber(3, vec![sub("c", Some((9, 4)))], BIG, Delivery::WebSocket);
        assert_eq!(
            hub.totals(),
            Totals {
                delivered: 0,
                replayed: 4,
                slow_closes: 0
            }
        );
        for id in 3..=5 {
            hub.handle_relay_frame(msg("c", 9, id));
        }
        hub.handle_relay_frame(msg("c", 9, 5)); // a duplicate is not delivered again
        assert_eq!(received(&mut hub, a), strings(&["m3", "m4", "m5"]));
        assert_eq!(received(&mut hub, b).len(), 5);
        assert_eq!(received(&mut hub, ahead), strings(&["m5"]));
        // a and b got 3 each, `ahead` 1; pings and resync notices are not messages.
        hub.send_ping(a);
        hub.handle_relay_frame(ToWorker::EpochReset {
            channel: "c".into(),
            epoch: 10,
        });
        assert_eq!(
            hub.totals(),
            Totals {
                delivered: 7,
                replayed: 4,
                slow_closes: 0
            }
        );
        relay_frames(&mut hub);
        hub.report_stats();
        assert_eq!(reported_totals(&mut hub), vec![hub.totals()]);
    }

    #[test]
    fn stats_go_out_when_only_the_totals_changed() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[]));
        hub.report_stats();
        relay_frames(&mut hub);
        hub.report_stats();
        assert!(relay_frames(&mut hub).is_empty(), "nothing changed");
        hub.handle_relay_frame(msg("c", 9, 1));
        received(&mut hub, a);
        hub.report_stats();
        assert_eq!(
            reported_totals(&mut hub),
            vec![Totals {
                delivered: 1,
                ..Totals::default()
            }]
        );
    }

    #[test]
    fn totals_of_all_relay_connections_add_up_to_what_the_worker_did() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[1]));
        hub.handle_relay_frame(msg("c", 9, 2));
        hub.report_stats();
        let first = reported_totals(&mut hub)[0];
        assert_eq!(first.delivered, 1);
        assert_eq!(first.replayed, 1);
        // Counted after the last report, then the relay breaks: not lost, not repeated.
        hub.handle_relay_frame(msg("c", 9, 3));
        hub.relay_disconnected();
        // While the relay is down a newcomer is served from the cache.
        hub.add_subscriber(2, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.report_stats();
        assert!(relay_frames(&mut hub).is_empty());
        hub.relay_connected(1);
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Continued, &[4]));
        hub.report_stats();
        let second = reported_totals(&mut hub)[0];
        assert_eq!(
            second,
            Totals {
                delivered: 1 + 2,
                replayed: 3,
                slow_closes: 0
            }
        );
        assert_eq!(first.plus(second), hub.totals());
        // Within one connection the totals only grow.
        hub.handle_relay_frame(msg("c", 9, 5));
        hub.report_stats();
        let third = reported_totals(&mut hub)[0];
        assert_eq!(third.delivered, second.delivered + 2);
        assert_eq!(first.plus(third), hub.totals());
        received(&mut hub, a);
    }

    #[test]
    fn dirty_list_names_each_subscriber_once() {
        let mut hub = Hub::new(10);
        let a = hub.add_subscriber(
            5u32,
            vec![sub("c", None), sub("d", None)],
            BIG,
            Delivery::WebSocket,
        );
        hub.relay_connected(1);
        hub.handle_relay_frame(backlog("c", 1, BacklogKind::Recent, &[1]));
        hub.handle_relay_frame(backlog("d", 1, BacklogKind::Recent, &[1]));
        assert_eq!(hub.take_dirty(), vec![(a, 5)]);
        assert!(hub.take_dirty().is_empty());
        hub.close(a, 1001, "");
        assert_eq!(hub.take_dirty(), vec![(a, 5)]);
        assert_eq!(received(&mut hub, a).last().unwrap(), "close 1001");
    }

    #[test]
    fn pings_share_one_frame() {
        let mut hub = Hub::new(10);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        let b = hub.add_subscriber(2u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.send_ping(a);
        hub.send_ping(b);
        assert_eq!(received(&mut hub, a), strings(&["opcode 0x89"]));
        assert_eq!(received(&mut hub, b), strings(&["opcode 0x89"]));
        assert_eq!(Arc::strong_count(&hub.ping), 1, "sent frames are released");
    }

    #[test]
    fn messages_for_unknown_channels_or_before_the_backlog_are_ignored() {
        let mut hub = Hub::new(10);
        hub.relay_connected(1);
        let a = hub.add_subscriber(1u32, vec![sub("c", None)], BIG, Delivery::WebSocket);
        hub.handle_relay_frame(msg("c", 9, 1));
        hub.handle_relay_frame(msg("zzz", 9, 1));
        assert!(received(&mut hub, a).is_empty());
        hub.handle_relay_frame(backlog("c", 9, BacklogKind::Recent, &[1]));
        assert_eq!(received(&mut hub, a), strings(&["m1"]));
        hub.handle_relay_frame(ToWorker::EpochReset {
            channel: "c".into(),
            epoch: 10,
        });
        hub.handle_relay_frame(msg("c", 10, 1));
        let got = received(&mut hub, a);
        assert!(got[0].contains("epoch_changed") && got[0].contains("\"ep\":10"));
        assert_eq!(got[1], "m1");
    }
}
