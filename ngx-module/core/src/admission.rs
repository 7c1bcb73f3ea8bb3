//! Private channels in a worker: which channels need a subscribe token (the `Policy` the
//! sidecar sends first on every relay connection), the requests waiting for the sidecar's
//! verdict (`Admit` → `Admitted`), and the admitted viewers the sidecar may close
//! (`CloseViewer`) and must hear leave (`Left`).
//!
//! A request for public channels never comes here: its path and cost are those of a world
//! without private channels. One for a private channel is held, unanswered, until the
//! sidecar has checked its token (and its bans): nothing of the channel is sent, and a
//! refusal is an HTTP status with the reason, before any 101 or event stream.

use std::collections::{HashMap, HashSet};

use chatup_wire::private::Policy;

use crate::hub::{SubscriberKey, Subscription};

/// What a request needs before it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every channel of the request is public: go on.
    Public,
    /// These channels are private: the sidecar must admit the request first.
    Private(Vec<String>),
    /// The worker has not heard the sidecar's policy yet (just started, sidecar down).
    Unknown,
}

/// Why a request for a private channel is refused by the worker itself, or not answered by
/// the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "token_required: channel {0:?} is private: subscribe with a subscribe token \
         (?token=<jwt>, or Authorization: Bearer <jwt>)"
    )]
    NoToken(String),
    #[error(
        "unavailable: this nginx worker has not heard from chatup-sidecar yet, so it cannot \
         check a subscribe token; retry in a moment"
    )]
    PolicyUnknown,
    #[error("unavailable: chatup-sidecar is not reachable to check the subscribe token; retry")]
    SidecarDown,
    #[error("unavailable: chatup-sidecar did not answer in time; retry")]
    TimedOut,
    #[error("unavailable: the server is going away; retry")]
    GoingAway,
}

impl AdmissionError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken(_) => 401,
            _ => 503,
        }
    }

    /// Seconds after which a retry may succeed (`Retry-After`), when that is the cure.
    pub fn retry_after(&self) -> Option<u32> {
        (self.status() == 503).then_some(1)
    }
}

/// How long a request may wait for the sidecar's verdict, in milliseconds.
pub const ADMISSION_TIMEOUT_MS: u64 = 5_000;

/// A verdict for a held request: `Ok` admits it; `Err` is the status and the reason.
pub type Verdict = (u64, Result<(), (u16, String)>);

/// The worker's side of private channels.
#[derive(Debug, Default)]
pub struct Admissions {
    /// The private channel patterns, once the sidecar said them.
    policy: Option<Policy>,
    next_id: u64,
    /// Requests whose `Admit` went out and whose verdict has not come back.
    pending: HashSet<u64>,
    /// Verdicts for held requests, for the FFI layer to answer them.
    verdicts: Vec<Verdict>,
    /// Admitted viewers, by admission id.
    admitted: HashMap<u64, SubscriberKey>,
    /// The same, by subscriber: kept here rather than in every subscriber, so that public
    /// viewers carry nothing for private channels.
    by_key: HashMap<SubscriberKey, u64>,
}

impl Admissions {
    /// What `subscriptions` need before they are answered.
    pub fn gate(&self, subscriptions: &[Subscription]) -> Gate {
        let Some(policy) = &self.policy else {
            return Gate::Unknown;
        };
        if policy.is_empty() {
            return Gate::Public;
        }
        let private: Vec<String> = subscriptions
            .iter()
            .filter(|s| policy.is_private(&s.channel))
            .map(|s| s.channel.clone())
            .collect();
        if private.is_empty() {
            Gate::Public
        } else {
            Gate::Private(private)
        }
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// Sets the policy the sidecar sent; returns whether it differs from the last one (then
    /// the subscribers already there are checked again).
    pub(crate) fn set_policy(&mut self, patterns: &[String]) -> bool {
        // A pattern this worker cannot read makes every channel private: better refused
        // than shown to whom it is not for.
        let policy =
            Policy::parse(patterns).unwrap_or_else(|_| Policy::parse(&["*"]).unwrap_or_default());
        let changed = self.policy.as_ref() != Some(&policy);
        self.policy = Some(policy);
        changed
    }

    /// A new admission id for a held request.
    pub(crate) fn start(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.insert(self.next_id);
        self.next_id
    }

    /// The sidecar's verdict on `id`; returns whether it admitted a request nobody waits
    /// for any more (the sidecar must then hear that it left).
    pub(crate) fn answered(&mut self, id: u64, status: u16, reason: String) -> bool {
        if !self.pending.remove(&id) {
            return status == 0;
        }
        let verdict = if status == 0 {
            Ok(())
        } else {
            Err((status, reason))
        };
        self.verdicts.push((id, verdict));
        false
    }

    /// The held request `id` went away, or timed out: its verdict is no longer wanted.
    pub fn forget(&mut self, id: u64) -> bool {
        self.pending.remove(&id)
    }

    /// Fails every held request (the relay broke, or the worker is going away).
    pub(crate) fn fail_pending(&mut self, error: &AdmissionError) {
        for id in self.pending.drain() {
            self.verdicts
                .push((id, Err((error.status(), error.to_string()))));
        }
    }

    /// The verdicts to answer.
    pub fn take_verdicts(&mut self) -> Vec<Verdict> {
        std::mem::take(&mut self.verdicts)
    }

    pub(crate) fn admit(&mut self, id: u64, key: SubscriberKey) {
        self.admitted.insert(id, key);
        self.by_key.insert(key, id);
    }

    /// The subscriber `key` leaves: its admission id, if it was admitted.
    pub(crate) fn left_by_key(&mut self, key: SubscriberKey) -> Option<u64> {
        if self.by_key.is_empty() {
            return None;
        }
        let id = self.by_key.remove(&key)?;
        self.admitted.remove(&id);
        Some(id)
    }

    /// Whether the subscriber `key` was admitted.
    pub(crate) fn holds_key(&self, key: SubscriberKey) -> bool {
        self.by_key.contains_key(&key)
    }

    pub(crate) fn subscriber_of(&self, id: u64) -> Option<SubscriberKey> {
        self.admitted.get(&id).copied()
    }

    /// Whether `id` names an admitted viewer still in the hub.
    pub fn is_admitted(&self, id: u64) -> bool {
        self.admitted.contains_key(&id)
    }

    /// Admitted viewers: the relay broke, so the sidecar forgot them; they stay.
    pub(crate) fn admitted_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.admitted.keys().copied()
    }
}
