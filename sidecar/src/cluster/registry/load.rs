//! What the registry reads of this host's load. The chat host implements it
//! ([`crate::host::load::HostLoad`]: its nginx workers' viewer counts and its presence), so
//! that the shared registry never depends on the chat-host role.

use std::collections::HashMap;

use crate::cluster::members::Members;

use super::{ChannelCounts, JoinedPublisher};

/// Where this host's numbers come from: what [`LocalDirectory`](super::LocalDirectory)
/// answers with and what the [`Reporter`](super::Reporter) writes to Redis.
pub trait HostLoadSource: Send + Sync + 'static {
    /// Viewer connections on this host's nginx workers.
    fn total_subscribers(&self) -> u64;

    /// Authenticated publisher sessions on this host (joined to channels or not).
    fn total_publishers(&self) -> u64;

    /// One channel's numbers on this host.
    fn channel(&self, channel: &str) -> ChannelCounts;

    /// Every channel with viewers or publishers on this host; a count that is 0 is one the
    /// host has none of.
    fn channels(&self) -> HashMap<String, ChannelCounts>;

    /// The publishers joined to `channel` on this host, in no order.
    fn publishers(&self, channel: &str) -> Vec<JoinedPublisher>;

    /// Every channel's joined publishers: what the [`Reporter`](super::Reporter) mirrors.
    fn all_members(&self) -> Members;

    /// The viewers admitted to the private `channel` on this host, in no order.
    fn viewers(&self, _channel: &str) -> Vec<JoinedPublisher> {
        Vec::new()
    }

    /// Every private channel's admitted viewers: what the reporter mirrors beside
    /// [`all_members`](Self::all_members).
    fn all_viewers(&self) -> Members {
        Members::new()
    }
}
