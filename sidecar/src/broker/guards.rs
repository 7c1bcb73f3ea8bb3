//! Guards: checks of the plugin chain that a broker applies in the same atomic step as the
//! publish ([`Broker::publish_guarded`](super::Broker::publish_guarded)), so that a
//! publish through Redis with the ban and rate-limit plugins is one round trip.
//!
//! A guard names the state it reads by its place in the broker's store (Redis keys): the
//! plugin that keeps that state builds the guard, so the key names stay with their owner
//! ([`crate::moderation::bans`], [`crate::plugins::rate_limit`]) and the broker only puts
//! them in its call. Every key a guard names carries the channel's hash tag, so in a Redis
//! Cluster it lives on the channel's shard with the broker's own keys.
//!
//! Only the Redis engine applies guards ([`Broker::applies_guards`](super::Broker::applies_guards));
//! with the memory broker the plugins check as they always did.

use std::time::Duration;

/// One check, applied in the order of the guards given (the order of `plugins.chain`):
/// the first that stops the message decides the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Stops the message when one of `fields` of `hash`, or of `legacy_fields` of
    /// `legacy_hash`, holds a ban in force at `now_ms`: a value of 0 (for ever) or a time
    /// after `now_ms`, in ms since the Unix epoch (see `moderation/bans.rs`).
    Ban {
        /// The channel's bans hash (`<prefix>:{<channel>}:bans:by-kind`).
        hash: String,
        /// The hash of bans by bare id that earlier versions wrote; read, never written.
        legacy_hash: String,
        /// The fields that would ban this publisher (`user:<sub>`, `name:<name>`).
        fields: Vec<String>,
        /// The same, in the legacy hash (the bare ids).
        legacy_fields: Vec<String>,
        /// The clock that judges a ban's lapse: the sidecar's, as for every ban lookup.
        now_ms: u64,
    },
    /// A sliding window of at most `messages` per `window`, counted in the sorted set
    /// `counts` (one member per published message, scored by its time on Redis's clock):
    /// the message takes a place under `member` only if it is published, in the same step.
    Rate {
        /// The publisher's sorted set in this channel (`<prefix>:{<channel>}:rate:<user>`).
        counts: String,
        /// Messages allowed per window.
        messages: u32,
        /// The window.
        window: Duration,
        /// The member the published message is counted under: `key:<key>` for a message
        /// with an idempotency key (its retries find it and pass), a random id otherwise.
        member: String,
        /// The message's (scoped) idempotency key: a place counted for it already, or held
        /// by an older host that has not settled it yet (`p:key:<key>`), lets it pass
        /// without taking another.
        key: Option<String>,
    },
}

/// Why a guard stopped a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// A [`Guard::Ban`] found a ban in force until this time (ms since the Unix epoch), or
    /// for ever (`None`).
    Banned { until: Option<u64> },
    /// A [`Guard::Rate`] found the window full; a place frees after `wait`.
    RateLimited { wait: Duration },
}

/// What [`Broker::publish_guarded`](super::Broker::publish_guarded) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// Every guard let the message pass: it was published (or was a repeat of a key).
    Passed(super::Publication),
    /// A guard stopped it: nothing was published or counted.
    Stopped(Stopped),
}
