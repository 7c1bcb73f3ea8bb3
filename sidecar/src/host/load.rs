//! This host's load as the host registry reads it ([`HostLoadSource`]): viewers from the
//! nginx workers' `Stats`, publishers from [`Presence`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::members::Members;
use crate::cluster::registry::{ChannelCounts, HostLoadSource, JoinedPublisher};
use crate::host::presence::Presence;
use crate::host::relay::NginxWorkers;
use crate::host::viewers::Viewers;

/// Where this host's numbers come from.
#[derive(Clone)]
pub struct HostLoad {
    /// Viewer counts, from the nginx workers' `Stats`.
    pub workers: Arc<NginxWorkers>,
    /// Publisher sessions and joined users.
    pub presence: Arc<Presence>,
    /// Who watches private channels.
    pub viewers: Arc<Viewers>,
}

impl HostLoadSource for HostLoad {
    fn total_subscribers(&self) -> u64 {
        self.workers.total_subscribers()
    }

    fn total_publishers(&self) -> u64 {
        self.presence.total()
    }

    fn channel(&self, channel: &str) -> ChannelCounts {
        let subscribers = self
            .workers
            .snapshot()
            .iter()
            .flat_map(|w| &w.channels)
            .filter(|c| c.channel == channel)
            .map(|c| u64::from(c.subscribers))
            .sum();
        ChannelCounts {
            subscribers,
            publishers: self.presence.publishers(channel),
        }
    }

    fn channels(&self) -> HashMap<String, ChannelCounts> {
        let mut channels: HashMap<String, ChannelCounts> = HashMap::new();
        for worker in self.workers.snapshot() {
            for c in worker.channels {
                if c.subscribers > 0 {
                    channels.entry(c.channel).or_default().subscribers += u64::from(c.subscribers);
                }
            }
        }
        for (channel, users) in self.presence.snapshot() {
            if users > 0 {
                channels.entry(channel).or_default().publishers = users;
            }
        }
        channels
    }

    fn publishers(&self, channel: &str) -> Vec<JoinedPublisher> {
        self.presence
            .members(channel)
            .into_iter()
            .map(|(key, user)| JoinedPublisher {
                key: key.to_string(),
                user: user.to_string(),
            })
            .collect()
    }

    fn all_members(&self) -> Members {
        self.presence.all_members()
    }

    fn viewers(&self, channel: &str) -> Vec<JoinedPublisher> {
        self.viewers.of_channel(channel)
    }

    fn all_viewers(&self) -> Members {
        self.viewers.all()
    }
}
