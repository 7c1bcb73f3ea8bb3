//! This host's live WebSocket publisher sessions, by what bans match them by (their
//! token's `sub` and its `_public.name`: [`Who::of`]), so that a ban closes them at once:
//! the kick.
//!
//! Each session ([`ws`](super::ws)) registers while it is open and reports the channels it
//! joins, leaves and publishes to. A kick for (channel, users, names), from the control
//! bus ([`kick_on_notice`]), closes every session of those users or names that joined the
//! channel or published to it: the session sends a `banned` error saying until when, then
//! closes with 4502 (`chatup_wire::close::BANNED`: "do not reconnect"). A session remembers the last [`MAX_PUBLISHED_CHANNELS`] channels it
//! published to (joins are already bounded by presence); past that, the oldest is
//! forgotten and a kick there leaves the session open, but the `ban` plugin still refuses
//! what it publishes. Sessions whose token has neither `sub` nor `_public.name` cannot be
//! kicked and are not listed. `POST /pub/<ch>` is one
//! request, so there is nothing to kick.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cluster::control::{follow_notices, Kick, Notice};
use crate::host::presence::MAX_CHANNELS_PER_SESSION;
use crate::jwt::Identity;
use crate::moderation::Who;

/// Channels a session remembers having published to.
pub const MAX_PUBLISHED_CHANNELS: usize = MAX_CHANNELS_PER_SESSION;

/// The open sessions of this host, by user and by name.
#[derive(Debug, Default)]
pub struct Sessions {
    /// User or name → the open sessions here of tokens with that `sub` or `_public.name`.
    users: Mutex<HashMap<Who, Vec<Arc<Entry>>>>,
    /// Tells sessions apart within a user.
    next_id: AtomicU64,
}

/// One session, as the registry sees it.
#[derive(Debug)]
struct Entry {
    id: u64,
    /// Where it is: a kick applies to these channels only.
    channels: Mutex<Channels>,
    /// Set by a kick; the session waits on it.
    kicked: watch::Sender<Option<Kicked>>,
}

/// Why a session was kicked: what it tells the client before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kicked {
    /// The channel the session is banned from (empty when the user was removed).
    pub channel: String,
    /// When the ban lapses, in ms since the Unix epoch; `None`: never.
    pub until: Option<u64>,
    /// The operator removed the user (`DELETE /users/<user>`), from every channel.
    pub removed: bool,
}

#[derive(Debug, Default)]
struct Channels {
    /// Joined and not left.
    joined: HashSet<String>,
    /// Published to, oldest first, at most [`MAX_PUBLISHED_CHANNELS`].
    published: VecDeque<String>,
    /// The same, for lookups.
    published_set: HashSet<String>,
}

impl Channels {
    fn contains(&self, channel: &str) -> bool {
        self.joined.contains(channel) || self.published_set.contains(channel)
    }
}

/// A session's place in the registry; dropping it takes the session out.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<Sessions>,
    entry: Arc<Entry>,
    /// What it is listed under (none: not listed).
    keys: Vec<Who>,
    /// Changes when the session is kicked.
    kicked: watch::Receiver<Option<Kicked>>,
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Lists a session of `identity` until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, identity: &Identity) -> Registration {
        let (kicked, watch) = watch::channel(None);
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            channels: Mutex::default(),
            kicked,
        });
        let keys = Who::of(identity);
        self.list(&keys, &entry);
        Registration {
            sessions: self.clone(),
            entry,
            keys,
            kicked: watch,
        }
    }

    fn list(&self, keys: &[Who], entry: &Arc<Entry>) {
        let mut map = self.lock();
        for key in keys {
            map.entry(key.clone()).or_default().push(entry.clone());
        }
    }

    /// Closes the sessions of the kick's users and names that joined or published to its
    /// channel; returns how many.
    pub fn kick(&self, kick: &Kick) -> usize {
        let why = Kicked {
            channel: kick.channel.clone(),
            until: kick.until,
            removed: false,
        };
        let map = self.lock();
        let mut kicked = HashSet::new();
        for who in kick.whom() {
            for entry in map.get(&who).into_iter().flatten() {
                // A session listed by both its user and its name is kicked once.
                if lock(&entry.channels).contains(&kick.channel) && kicked.insert(entry.id) {
                    entry.kicked.send_replace(Some(why.clone()));
                }
            }
        }
        kicked.len()
    }

    /// Closes every session of `users` (by `sub`); returns how many.
    pub fn disconnect(&self, users: &[String]) -> usize {
        let why = Kicked {
            channel: String::new(),
            until: None,
            removed: true,
        };
        let map = self.lock();
        let mut kicked = HashSet::new();
        for user in users {
            for entry in map.get(&Who::User(user.clone())).into_iter().flatten() {
                if kicked.insert(entry.id) {
                    entry.kicked.send_replace(Some(why.clone()));
                }
            }
        }
        kicked.len()
    }

    /// Open sessions listed here (with a `sub` or a `_public.name`).
    pub fn len(&self) -> usize {
        let map = self.lock();
        let ids: HashSet<u64> = map.values().flatten().map(|e| e.id).collect();
        ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Who, Vec<Arc<Entry>>>> {
        // No critical section here panics; the map stays usable if one ever did.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unlist(&self, keys: &[Who], id: u64) {
        let mut map = self.lock();
        for key in keys {
            if let Some(entries) = map.get_mut(key) {
                entries.retain(|e| e.id != id);
                if entries.is_empty() {
                    map.remove(key);
                }
            }
        }
    }
}

impl Registration {
    /// The session joined `channel`.
    pub fn joined(&self, channel: &str) {
        lock(&self.entry.channels).joined.insert(channel.to_owned());
    }

    /// Whether the session is in `channel`.
    pub fn is_joined(&self, channel: &str) -> bool {
        lock(&self.entry.channels).joined.contains(channel)
    }

    /// The session left `channel` (it may still have published there).
    pub fn left(&self, channel: &str) {
        lock(&self.entry.channels).joined.remove(channel);
    }

    /// The session publishes to `channel`.
    pub fn published(&self, channel: &str) {
        let mut channels = lock(&self.entry.channels);
        if channels.published_set.contains(channel) {
            return;
        }
        if channels.published.len() >= MAX_PUBLISHED_CHANNELS {
            if let Some(oldest) = channels.published.pop_front() {
                channels.published_set.remove(&oldest);
            }
        }
        channels.published.push_back(channel.to_owned());
        channels.published_set.insert(channel.to_owned());
    }

    /// The channels the session is in or published to, for checks against bans.
    pub fn channels(&self) -> Vec<String> {
        let channels = lock(&self.entry.channels);
        let mut all: Vec<String> = channels.joined.iter().cloned().collect();
        all.extend(
            channels
                .published
                .iter()
                .filter(|c| !channels.joined.contains(*c))
                .cloned(),
        );
        all
    }

    /// The session authenticated again, maybe as another user: it is listed under the new
    /// user and name from now on.
    pub fn reidentify(&mut self, identity: &Identity) {
        let keys = Who::of(identity);
        if keys == self.keys {
            return;
        }
        self.sessions.unlist(&self.keys, self.entry.id);
        self.sessions.list(&keys, &self.entry);
        self.keys = keys;
    }

    /// Resolves with the channel and term once the session is kicked.
    pub async fn kicked(&mut self) -> Kicked {
        let reason = match self.kicked.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in the entry this registration holds: never dropped first.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.sessions.unlist(&keys, self.entry.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kicks this host's sessions as the control bus says, until `shutdown`.
pub async fn kick_on_notice(
    notices: broadcast::Receiver<Notice>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) {
    follow_notices(notices, shutdown, |notice| match notice {
        Notice::Kick(kick) => {
            let closed = sessions.kick(&kick);
            if closed > 0 {
                info!(channel = kick.channel, users = ?kick.users, names = ?kick.names, closed, "kicked banned publishers");
            } else {
                debug!(channel = kick.channel, users = ?kick.users, names = ?kick.names, "no session here to kick");
            }
        }
        Notice::Disconnect(disconnect) => {
            let closed = sessions.disconnect(&disconnect.users);
            info!(users = ?disconnect.users, closed, "disconnected removed users' publishers");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::identity_of as identity;
    use std::time::Duration;

    fn kick(channel: &str, users: &[&str], names: &[&str]) -> Kick {
        Kick {
            channel: channel.into(),
            users: users.iter().map(|n| n.to_string()).collect(),
            names: names.iter().map(|n| n.to_string()).collect(),
            until: Some(42),
        }
    }

    fn is_kicked(r: &Registration) -> Option<Kicked> {
        r.kicked.borrow().clone()
    }

    #[test]
    fn a_removed_user_loses_every_session_by_sub_only() {
        let sessions = Sessions::new();
        let ann = sessions.register(&identity(Some("ann"), r#"{"name":"Ann"}"#));
        let other = sessions.register(&identity(Some("bo"), r#"{"name":"ann"}"#));
        other.joined("room");
        assert_eq!(sessions.disconnect(&["ann".into()]), 1);
        assert_eq!(
            ann.kicked.borrow().clone(),
            Some(Kicked {
                channel: String::new(),
                until: None,
                removed: true,
            })
        );
        assert_eq!(
            other.kicked.borrow().clone(),
            None,
            "a name is not a user id"
        );
    }

    #[test]
    fn kicks_reach_the_users_sessions_in_that_channel_only() {
        let sessions = Sessions::new();
        let ann = identity(Some("ann"), r#"{"name":"Ann"}"#);
        let by_name = identity(None, r#"{"name":"bo"}"#);
        let nameless = identity(None, r#"{"color":"red"}"#);
        let joined = sessions.register(&ann);
        let published = sessions.register(&ann);
        let elsewhere = sessions.register(&ann);
        let left = sessions.register(&ann);
        let bo = sessions.register(&by_name);
        let anon = sessions.register(&nameless);
        assert_eq!(sessions.len(), 5, "the nameless session is not listed");
        joined.joined("room");
        published.published("room");
        elsewhere.joined("hall");
        left.joined("room");
        left.left("room");
        bo.joined("room");
        anon.joined("room");

        // By user and by name at once: each session once.
        assert_eq!(
            sessions.kick(&kick("room", &["ann", "nobody"], &["Ann"])),
            2
        );
        let room = Some(Kicked {
            channel: "room".into(),
            until: Some(42),
            removed: false,
        });
        assert_eq!(is_kicked(&joined), room);
        assert_eq!(is_kicked(&published), room);
        for untouched in [&elsewhere, &left, &bo, &anon] {
            assert_eq!(is_kicked(untouched), None);
        }
        // A user id does not match a name, nor a name a user id.
        assert_eq!(sessions.kick(&kick("room", &["bo"], &[])), 0);
        assert_eq!(sessions.kick(&kick("hall", &[], &["ann"])), 0);
        assert_eq!(sessions.kick(&kick("room", &[], &["bo"])), 1);
        assert!(is_kicked(&bo).is_some());
        // The name of a token that has a `sub` too.
        assert_eq!(sessions.kick(&kick("hall", &[], &["Ann"])), 1);
        assert!(is_kicked(&elsewhere).is_some());

        drop((joined, published, elsewhere, left, bo, anon));
        assert!(sessions.is_empty());
        assert!(sessions.lock().is_empty());
    }

    #[test]
    fn published_channels_are_bounded_and_reidentifying_moves_the_session() {
        let sessions = Sessions::new();
        let mut s = sessions.register(&identity(Some("ann"), "{}"));
        for i in 0..=MAX_PUBLISHED_CHANNELS {
            s.published(&format!("c{i}"));
        }
        s.published("c5"); // again: no change
        let channels = s.channels();
        assert_eq!(channels.len(), MAX_PUBLISHED_CHANNELS);
        assert!(
            !channels.contains(&"c0".to_string()),
            "the oldest is forgotten"
        );
        assert_eq!(sessions.kick(&kick("c0", &["ann"], &[])), 0);

        s.reidentify(&identity(Some("bo"), r#"{"name":"Bo"}"#));
        assert_eq!(sessions.kick(&kick("c1", &["ann"], &[])), 0);
        assert_eq!(sessions.kick(&kick("c1", &["bo"], &[])), 1);
        assert_eq!(sessions.kick(&kick("c1", &[], &["Bo"])), 1);
        s.reidentify(&identity(None, "{}"));
        assert!(sessions.is_empty());
    }

    #[tokio::test]
    async fn a_kick_notice_wakes_the_session() {
        let sessions = Sessions::new();
        let control = crate::cluster::control::Control::memory();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kick_on_notice(
            control.subscribe(),
            sessions.clone(),
            shutdown.clone(),
        ));
        let mut s = sessions.register(&identity(Some("ann"), "{}"));
        s.joined("room");
        control
            .send(Notice::Kick(kick("room", &["ann"], &[])))
            .await
            .unwrap();
        let kicked = tokio::time::timeout(Duration::from_secs(5), s.kicked())
            .await
            .unwrap();
        assert_eq!(
            kicked,
            Kicked {
                channel: "room".into(),
                until: Some(42),
                removed: false,
            }
        );
        shutdown.cancel();
        task.await.unwrap();
    }
}
