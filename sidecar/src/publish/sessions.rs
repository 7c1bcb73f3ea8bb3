//! This host's live WebSocket publisher sessions, by the user id bans know them by
//! ([`Identity::moderation_id`]), so that a ban closes them at once: the kick.
//!
//! Each session ([`ws`](super::ws)) registers while it is open and reports the channels it
//! joins, leaves and publishes to. A kick for (channel, users), from the control bus
//! ([`kick_on_notice`]), closes every session of those users that joined the channel or
//! published to it, with close code 4502 (`chatup_wire::close::BANNED`: "do not
//! reconnect"). A session remembers the last [`MAX_PUBLISHED_CHANNELS`] channels it
//! published to (joins are already bounded by presence); past that, the oldest is
//! forgotten and a kick there leaves the session open, but the `ban` plugin still refuses
//! what it publishes. Sessions whose token has no user id (neither `sub` nor
//! `_public.name`) cannot be kicked by name and are not listed. `POST /pub/<ch>` is one
//! request, so there is nothing to kick.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Identity;
use crate::control::Notice;
use crate::presence::MAX_CHANNELS_PER_SESSION;

/// Channels a session remembers having published to.
pub const MAX_PUBLISHED_CHANNELS: usize = MAX_CHANNELS_PER_SESSION;

/// The open sessions of this host, by user id.
#[derive(Debug, Default)]
pub struct Sessions {
    /// User id → that user's open sessions here.
    users: Mutex<HashMap<String, Vec<Arc<Entry>>>>,
    /// Tells sessions apart within a user.
    next_id: AtomicU64,
}

/// One session, as the registry sees it.
#[derive(Debug)]
struct Entry {
    id: u64,
    /// Where it is: a kick applies to these channels only.
    channels: Mutex<Channels>,
    /// Set to the close reason by a kick; the session waits on it.
    kicked: watch::Sender<Option<String>>,
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
    /// The user id it is listed under; `None`: not listed (no id).
    user: Option<String>,
    /// Changes when the session is kicked.
    kicked: watch::Receiver<Option<String>>,
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
        let user = identity.moderation_id();
        if let Some(user) = &user {
            self.lock()
                .entry(user.clone())
                .or_default()
                .push(entry.clone());
        }
        Registration {
            sessions: self.clone(),
            entry,
            user,
            kicked: watch,
        }
    }

    /// Closes the sessions of `users` that joined or published to `channel`; returns how
    /// many.
    pub fn kick(&self, channel: &str, users: &[String]) -> usize {
        let reason = format!("banned from {channel}");
        let map = self.lock();
        let mut kicked = 0;
        for user in users {
            for entry in map.get(user).into_iter().flatten() {
                if lock(&entry.channels).contains(channel) {
                    entry.kicked.send_replace(Some(reason.clone()));
                    kicked += 1;
                }
            }
        }
        kicked
    }

    /// Open sessions listed here (with a user id).
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Entry>>>> {
        // No critical section here panics; the map stays usable if one ever did.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unlist(&self, user: &str, id: u64) {
        let mut map = self.lock();
        if let Some(entries) = map.get_mut(user) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                map.remove(user);
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
    /// id from now on.
    pub fn reidentify(&mut self, identity: &Identity) {
        let user = identity.moderation_id();
        if user == self.user {
            return;
        }
        if let Some(old) = self.user.take() {
            self.sessions.unlist(&old, self.entry.id);
        }
        if let Some(new) = &user {
            self.sessions
                .lock()
                .entry(new.clone())
                .or_default()
                .push(self.entry.clone());
        }
        self.user = user;
    }

    /// Resolves with the close reason once the session is kicked.
    pub async fn kicked(&mut self) -> String {
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
        if let Some(user) = self.user.take() {
            self.sessions.unlist(&user, self.entry.id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kicks this host's sessions as the control bus says, until `shutdown`.
pub async fn kick_on_notice(
    mut notices: broadcast::Receiver<Notice>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            notice = notices.recv() => notice,
        };
        match notice {
            Ok(Notice::Kick(kick)) => {
                let closed = sessions.kick(&kick.channel, &kick.users);
                if closed > 0 {
                    info!(channel = kick.channel, users = ?kick.users, closed, "kicked banned publishers");
                } else {
                    debug!(channel = kick.channel, users = ?kick.users, "no session here to kick");
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "control notices came faster than they were handled; some were missed"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::identity_of as identity;
    use std::time::Duration;

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn is_kicked(r: &Registration) -> Option<String> {
        r.kicked.borrow().clone()
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

        assert_eq!(sessions.kick("room", &users(&["ann", "nobody"])), 2);
        assert_eq!(is_kicked(&joined).as_deref(), Some("banned from room"));
        assert_eq!(is_kicked(&published).as_deref(), Some("banned from room"));
        for untouched in [&elsewhere, &left, &bo, &anon] {
            assert_eq!(is_kicked(untouched), None);
        }
        // By `_public.name` when there is no `sub`.
        assert_eq!(sessions.kick("room", &users(&["bo"])), 1);
        assert!(is_kicked(&bo).is_some());

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
        assert_eq!(sessions.kick("c0", &users(&["ann"])), 0);

        s.reidentify(&identity(Some("bo"), "{}"));
        assert_eq!(sessions.kick("c1", &users(&["ann"])), 0);
        assert_eq!(sessions.kick("c1", &users(&["bo"])), 1);
        s.reidentify(&identity(None, "{}"));
        assert!(sessions.is_empty());
    }

    #[tokio::test]
    async fn a_kick_notice_wakes_the_session() {
        let sessions = Sessions::new();
        let control = crate::control::Control::memory();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kick_on_notice(
            control.subscribe(),
            sessions.clone(),
            shutdown.clone(),
        ));
        let mut s = sessions.register(&identity(Some("ann"), "{}"));
        s.joined("room");
        control
            .send(Notice::Kick(crate::control::Kick {
                channel: "room".into(),
                users: users(&["ann"]),
            }))
            .await
            .unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), s.kicked())
            .await
            .unwrap();
        assert_eq!(reason, "banned from room");
        shutdown.cancel();
        task.await.unwrap();
    }
}
