//! Viewers of private channels on this host: whether one may watch (its subscribe token,
//! then the channel's bans), asked by an nginx worker before it answers the viewer's
//! request (`Admit`); and the kicks that close admitted viewers (a ban, on every host: the
//! control bus brings it here, [`kick_on_notice`], and each relay connection closes its
//! matching viewers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chatup_wire::private::Policy;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cluster::control::{follow_notices, Notice};
use crate::cluster::members::Members;
use crate::cluster::registry::JoinedPublisher;
use crate::jwt::Identity;
use crate::moderation::{Moderation, ModerationError};
use crate::private::{Grant, PrivateChannels, Refusal};

/// Kicks a slow relay connection may fall behind by before it misses some.
const KICK_QUEUE: usize = 256;

/// Per private channel, user key (`sub:<sub>`) → (`{"sub":…,"user":…}`, how many of that
/// user's viewers watch it here).
type Watching = HashMap<String, HashMap<Arc<str>, (Arc<str>, u32)>>;

/// Close the admitted viewers these users or names are, in `channel` (or in every channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerKick {
    /// `None`: every private channel.
    pub channel: Option<String>,
    /// By the token's `sub`.
    pub users: Vec<String>,
    /// By the token's `_public.name`.
    pub names: Vec<String>,
    /// The close code and reason the viewers get.
    pub code: u16,
    pub reason: String,
}

impl ViewerKick {
    /// Whether a viewer of `channels` with `identity` is kicked.
    pub fn matches(&self, channels: &[String], identity: &Identity) -> bool {
        let here = self
            .channel
            .as_ref()
            .is_none_or(|c| channels.iter().any(|v| v == c));
        let who = identity.user_id().is_some_and(|u| self.users.contains(&u))
            || identity
                .public_name()
                .is_some_and(|n| self.names.contains(&n));
        here && who
    }
}

/// Admits viewers to private channels.
pub struct Viewers {
    /// The private channels and the key of their tokens.
    private: PrivateChannels,
    /// Bans: a banned user may not watch a private channel either (with `ban` in
    /// `plugins.chain`, as for joins).
    moderation: Arc<Moderation>,
    /// Kicks for every relay connection of this host.
    kicks: broadcast::Sender<ViewerKick>,
    /// Who watches which private channel here: per channel, user key (`sub:<sub>`) →
    /// (`{"sub":…,"user":…}`, how many of that user's viewers).
    watching: Mutex<Watching>,
}

impl Viewers {
    pub fn new(private: PrivateChannels, moderation: Arc<Moderation>) -> Arc<Self> {
        Arc::new(Self {
            private,
            moderation,
            kicks: broadcast::channel(KICK_QUEUE).0,
            watching: Mutex::default(),
        })
    }

    fn watching(&self) -> MutexGuard<'_, Watching> {
        // The map stays whole whatever panicked while holding it.
        self.watching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An admitted viewer of `channels` now watches.
    pub fn watch(&self, channels: &[String], identity: &Identity) {
        let Some(sub) = identity.user_id() else {
            return;
        };
        let key: Arc<str> = format!("sub:{sub}").into();
        let entry: Arc<str> = format!(
            "{{\"sub\":{},\"user\":{}}}",
            serde_json::Value::String(sub),
            identity.user
        )
        .into();
        let mut watching = self.watching();
        for channel in channels {
            let users = watching.entry(channel.clone()).or_default();
            users
                .entry(key.clone())
                .or_insert_with(|| (entry.clone(), 0))
                .1 += 1;
        }
    }

    /// An admitted viewer of `channels` is gone.
    pub fn unwatch(&self, channels: &[String], identity: &Identity) {
        let Some(sub) = identity.user_id() else {
            return;
        };
        let key = format!("sub:{sub}");
        let mut watching = self.watching();
        for channel in channels {
            let Some(users) = watching.get_mut(channel) else {
                continue;
            };
            if let Some((_, count)) = users.get_mut(key.as_str()) {
                *count -= 1;
                if *count == 0 {
                    users.remove(key.as_str());
                }
            }
            if users.is_empty() {
                watching.remove(channel);
            }
        }
    }

    /// Who watches the private `channel` here, each user once.
    pub fn of_channel(&self, channel: &str) -> Vec<JoinedPublisher> {
        self.watching()
            .get(channel)
            .map(|users| {
                users
                    .iter()
                    .map(|(key, (user, _))| JoinedPublisher {
                        key: key.to_string(),
                        user: user.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every private channel's viewers here, for the registry.
    pub fn all(&self) -> Members {
        self.watching()
            .iter()
            .map(|(channel, users)| {
                let users = users
                    .iter()
                    .map(|(key, (user, _))| (key.clone(), user.clone()))
                    .collect();
                (channel.clone(), users)
            })
            .collect()
    }

    /// Viewers of `private` with bans in memory (tests).
    #[cfg(test)]
    pub fn in_memory(private: PrivateChannels) -> Arc<Self> {
        let broker =
            crate::broker::memory::MemoryBroker::new(crate::broker::memory::MemoryOptions {
                history_size: 10,
                ttl: std::time::Duration::from_secs(60),
            });
        let control = crate::cluster::control::Control::memory();
        let bans = crate::moderation::Bans::memory();
        Self::new(
            private,
            Arc::new(Moderation::new(bans, control, broker, true)),
        )
    }

    /// The kicks a relay connection acts on.
    pub fn kicks(&self) -> broadcast::Receiver<ViewerKick> {
        self.kicks.subscribe()
    }

    /// Closes the matching admitted viewers on every relay connection of this host.
    pub fn kick(&self, kick: ViewerKick) {
        // No receiver: no nginx worker is connected, nobody to close.
        let _ = self.kicks.send(kick);
    }

    /// The private channel patterns each nginx worker is sent.
    pub fn policy(&self) -> &Policy {
        self.private.policy()
    }

    /// Whether the holder of `token` may watch `channels` (the private ones of its request).
    pub async fn admit(&self, token: &str, channels: &[String]) -> Result<Grant, Refusal> {
        let grant = self.private.check(token, channels)?;
        if self.moderation.enforced() {
            for channel in channels {
                let ban = self
                    .moderation
                    .bans()
                    .ban_of(channel, &grant.identity)
                    .await
                    .map_err(|e| match e {
                        ModerationError::Unavailable(m) | ModerationError::BadRequest(m) => {
                            Refusal::Unavailable(m)
                        }
                    })?;
                if let Some((who, ban)) = ban {
                    debug!(channel, %who, "viewer refused: banned");
                    return Err(Refusal::Banned {
                        channel: channel.clone(),
                        until: ban.until,
                    });
                }
            }
        }
        Ok(grant)
    }
}

/// Turns the control bus's kicks (a ban, sent by whichever host the admin API ran on) into
/// viewer kicks on this host, until `shutdown`.
pub async fn kick_on_notice(
    notices: broadcast::Receiver<Notice>,
    viewers: Arc<Viewers>,
    shutdown: CancellationToken,
) {
    follow_notices(notices, shutdown, |notice| match notice {
        Notice::Kick(kick) => {
            if !viewers.policy().is_private(&kick.channel) {
                return;
            }
            let reason = match kick.until {
                Some(until) => format!("banned until {until}"),
                None => "banned".to_owned(),
            };
            viewers.kick(ViewerKick {
                channel: Some(kick.channel),
                users: kick.users,
                names: kick.names,
                code: chatup_wire::close::BANNED,
                reason,
            });
        }
        Notice::Disconnect(disconnect) => viewers.kick(ViewerKick {
            channel: None,
            users: disconnect.users,
            names: Vec::new(),
            code: chatup_wire::close::USER_REMOVED,
            reason: "user removed by the operator".into(),
        }),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{identity_of, subscribe_channels};

    #[test]
    fn viewers_are_listed_once_per_user_while_one_of_their_sockets_watches() {
        let viewers = Viewers::in_memory(subscribe_channels(&["members-*"]));
        let alice = identity_of(Some("alice"), r#"{"name":"Alice"}"#);
        let two = vec!["members-a".to_owned(), "members-b".to_owned()];
        viewers.watch(&two, &alice);
        viewers.watch(&two[..1], &alice);
        let listed = viewers.of_channel("members-a");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "sub:alice");
        assert_eq!(listed[0].user, r#"{"sub":"alice","user":{"name":"Alice"}}"#);
        viewers.unwatch(&two, &alice);
        assert_eq!(
            viewers.of_channel("members-a").len(),
            1,
            "one socket still watches"
        );
        assert!(viewers.of_channel("members-b").is_empty());
        viewers.unwatch(&two[..1], &alice);
        assert!(viewers.all().is_empty());
    }

    #[test]
    fn a_kick_matches_by_user_or_name_in_its_channel() {
        let kick = ViewerKick {
            channel: Some("members-x".into()),
            users: vec!["u1".into()],
            names: vec!["Zoe".into()],
            code: 4502,
            reason: "banned".into(),
        };
        let here = vec!["members-x".to_owned(), "lobby".to_owned()];
        let elsewhere = vec!["members-y".to_owned()];
        assert!(kick.matches(&here, &identity_of(Some("u1"), "{}")));
        assert!(kick.matches(&here, &identity_of(Some("u2"), r#"{"name":"Zoe"}"#)));
        assert!(!kick.matches(&here, &identity_of(Some("u2"), r#"{"name":"Ann"}"#)));
        assert!(!kick.matches(&elsewhere, &identity_of(Some("u1"), "{}")));
        let everywhere = ViewerKick {
            channel: None,
            ..kick
        };
        assert!(everywhere.matches(&elsewhere, &identity_of(Some("u1"), "{}")));
    }
}
