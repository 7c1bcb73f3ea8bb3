//! Moderation: bans, and what a ban sets off.
//!
//! [`Moderation`] is what the admin API calls. A ban names whom it matches ([`Who`]): users
//! by the token's `sub`, or names by its `_public.name` (as the original system banned). It
//! is stored ([`bans`]), then every host is told on the control bus ([`crate::cluster::control`]) to
//! close the matching publisher sessions in the channel ([`crate::host::publish::sessions`]), and
//! the channel gets one event per user or name, `{"ev":"rmUserMsg","data":"<sub or
//! name>","by":"user"|"name"}`, so that clients hide what they wrote (the event name and
//! data of the original system, which banned by name; `by` says which it is). The `ban`
//! plugin ([`crate::plugins::ban`]) refuses their publishes and joins from then on.

pub mod bans;

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::cluster::control::{Control, Kick, Notice};
use crate::jwt::Identity;
use crate::message::{now_ms, Tail};
use crate::publish_error::PublishError;

pub use bans::{Ban, Bans, Who};

/// Longest user id or name accepted in a ban, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Most users and names in one ban or unban call.
pub const MAX_USERS_PER_CALL: usize = 1000;

/// The event a ban publishes to the channel, with the user id or name as its data.
pub const REMOVE_USER_MESSAGES_EVENT: &str = "rmUserMsg";

/// Why a moderation call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModerationError {
    /// The call itself is wrong (channel name, users, expiry); the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// The ban store or the other hosts cannot be reached; the message says what was done.
    #[error("{0}")]
    Unavailable(String),
}

impl ModerationError {
    /// The error code, as publishers' codes are written.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Bans, unbans and lists bans, with their effects on every host.
pub struct Moderation {
    /// Where bans are kept (shared with the `ban` plugin).
    bans: Bans,
    /// Tells every host to kick.
    control: Arc<Control>,
    /// Where the `rmUserMsg` events go.
    broker: Arc<dyn Broker>,
    /// Whether `ban` is in `plugins.chain`: only then are joins of banned users refused,
    /// as their publishes are.
    enforced: bool,
}

impl Moderation {
    pub fn new(bans: Bans, control: Arc<Control>, broker: Arc<dyn Broker>, enforced: bool) -> Self {
        Self {
            bans,
            control,
            broker,
            enforced,
        }
    }

    /// The ban store.
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Whether bans are checked on publishes and joins (`ban` is in `plugins.chain`).
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Bans `whom` from `channel` for `expire` (or for ever), kicks their publisher
    /// sessions there on every host and publishes one `rmUserMsg` event per user or name.
    /// Banning again is safe: it sets the new term and does the rest again. Returns the
    /// ban.
    pub async fn ban(
        &self,
        channel: &str,
        whom: &[Who],
        expire: Option<Duration>,
    ) -> Result<Ban, ModerationError> {
        let whom = check_call(channel, whom)?;
        if expire.is_some_and(|e| e.is_zero()) {
            return Err(ModerationError::BadRequest(
                "the expiry must be more than 0 seconds; leave it out to ban for ever".into(),
            ));
        }
        let ban = self.bans.ban(channel, &whom, expire).await?;
        info!(channel, ?whom, until = ?ban.until, "banned");

        let mut missed = Vec::new();
        let kick = Notice::Kick(Kick::new(channel, &whom, ban.until));
        if let Err(e) = self.control.send(kick).await {
            warn!(
                channel,
                "ban stored, but not every host was told to kick: {e}"
            );
            missed.push(format!(
                "the other hosts were not told to close the sessions ({e})"
            ));
        }
        for who in &whom {
            if let Err(e) = self.publish_removal(channel, who).await {
                warn!(
                    channel,
                    %who,
                    "ban stored, but its {REMOVE_USER_MESSAGES_EVENT} event was not published: {e}"
                );
                missed.push(format!(
                    "the {REMOVE_USER_MESSAGES_EVENT} event for {who} was not published ({e})"
                ));
            }
        }
        if missed.is_empty() {
            Ok(ban)
        } else {
            Err(ModerationError::Unavailable(format!(
                "the ban is stored, but {}; banning again is safe and does the rest",
                missed.join("; ")
            )))
        }
    }

    /// Lifts the bans of `whom` in `channel`.
    pub async fn unban(&self, channel: &str, whom: &[Who]) -> Result<(), ModerationError> {
        let whom = check_call(channel, whom)?;
        self.bans.unban(channel, &whom).await?;
        info!(channel, ?whom, "unbanned");
        Ok(())
    }

    /// The bans in force in `channel`.
    pub async fn list(&self, channel: &str) -> Result<Vec<(Who, Ban)>, ModerationError> {
        check_channel(channel)?;
        self.bans.list(channel).await
    }

    /// Closes every connection of `user` (publisher sessions, private viewers) on every
    /// host. Their tokens still work until they expire: the operator stops issuing them.
    pub async fn disconnect(&self, user: &str) -> Result<(), ModerationError> {
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(ModerationError::BadRequest(format!(
                "a user id is 1 to {MAX_USER_BYTES} bytes"
            )));
        }
        info!(user, "disconnecting a removed user on every host");
        let notice = Notice::Disconnect(crate::cluster::control::Disconnect {
            users: vec![user.to_owned()],
        });
        self.control.send(notice).await.map_err(|e| {
            ModerationError::Unavailable(format!(
                "only this host closed the user's connections ({e}); calling again is safe"
            ))
        })
    }

    /// Refuses a join of `channel` by a banned user, when the `ban` plugin is on.
    pub async fn may_join(&self, identity: &Identity, channel: &str) -> Result<(), PublishError> {
        if !self.enforced {
            return Ok(());
        }
        crate::plugins::ban::check(&self.bans, identity, channel).await
    }

    async fn publish_removal(&self, channel: &str, who: &Who) -> Result<(), String> {
        let tail = removal_tail(now_ms(), who).map_err(|e| e.to_string())?;
        self.broker
            .publish(channel, &tail)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `"t":<ms>,"ev":"rmUserMsg","data":"<sub or name>","by":"user"|"name"}`: `data` is what
/// it always was (the original system put the banned name there), `by` says what it is.
fn removal_tail(t_ms: u64, who: &Who) -> Result<Tail, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Removal<'a> {
        t: u64,
        ev: &'a str,
        data: &'a str,
        by: &'a str,
    }
    let json = serde_json::to_vec(&Removal {
        t: t_ms,
        ev: REMOVE_USER_MESSAGES_EVENT,
        data: who.value(),
        by: who.kind(),
    })?;
    // The tail is the object without its opening brace.
    Ok(Tail::from_encoded(bytes::Bytes::copy_from_slice(
        &json[1..],
    )))
}

fn check_channel(channel: &str) -> Result<(), ModerationError> {
    chatup_wire::channel::validate(channel.as_bytes())
        .map_err(|e| ModerationError::BadRequest(format!("channel {channel:?}: {e}")))
}

/// Checks the channel and whom a ban or unban names; returns them without repeats, in
/// their first order.
pub fn check_call(channel: &str, whom: &[Who]) -> Result<Vec<Who>, ModerationError> {
    check_channel(channel)?;
    let bad = |m: String| Err(ModerationError::BadRequest(m));
    if whom.is_empty() {
        return bad(
            "no users or names given: name at least one user id (\"users\") or public name \
             (\"names\")"
                .into(),
        );
    }
    if whom.len() > MAX_USERS_PER_CALL {
        return bad(format!(
            "{} users and names given; at most {MAX_USERS_PER_CALL} per call",
            whom.len()
        ));
    }
    let mut unique: Vec<Who> = Vec::with_capacity(whom.len());
    for who in whom {
        let what = match who {
            Who::User(_) => "a user id",
            Who::Name(_) => "a name",
            Who::Legacy(_) => return bad("bans by bare id can no longer be made".into()),
        };
        if who.value().trim().is_empty() {
            return bad(format!("{what} is empty"));
        }
        if who.value().len() > MAX_USER_BYTES {
            return bad(format!(
                "{what} is {} bytes long; the limit is {MAX_USER_BYTES}",
                who.value().len()
            ));
        }
        if !unique.contains(who) {
            unique.push(who.clone());
        }
    }
    Ok(unique)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::broker::{Event, Subscriber};

    fn users(ids: &[&str]) -> Vec<Who> {
        ids.iter().map(|n| Who::User(n.to_string())).collect()
    }

    fn moderation() -> (Moderation, Arc<MemoryBroker>, Arc<Control>) {
        let broker = MemoryBroker::new(MemoryOptions {
            history_size: 10,
            ttl: Duration::from_secs(60),
        });
        let control = Control::memory();
        let moderation = Moderation::new(Bans::memory(), control.clone(), broker.clone(), true);
        (moderation, broker, control)
    }

    #[tokio::test]
    async fn a_ban_is_stored_kicks_and_removes_messages() {
        let (moderation, broker, control) = moderation();
        let (subscriber, mut rx) = Subscriber::new(16);
        broker
            .subscribe("room", 0, None, &subscriber)
            .await
            .unwrap();
        let mut notices = control.subscribe();

        let whom = vec![
            Who::User("ann".into()),
            Who::Name("Bo".into()),
            Who::User("ann".into()),
        ];
        let ban = moderation
            .ban("room", &whom, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(ban.until.is_some());
        assert_eq!(
            notices.try_recv().unwrap(),
            Notice::Kick(Kick {
                channel: "room".into(),
                users: vec!["ann".into()],
                names: vec!["Bo".into()],
                until: ban.until,
            })
        );
        for (data, by) in [("ann", "user"), ("Bo", "name")] {
            let Event::Message(p) = rx.try_recv().unwrap() else {
                panic!("expected a message")
            };
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(v["ev"], REMOVE_USER_MESSAGES_EVENT);
            assert_eq!(v["data"], data);
            assert_eq!(v["by"], by);
            assert!(v["t"].as_u64().is_some(), "{v}");
            assert!(v.get("user").is_none(), "{v}");
        }
        assert!(rx.try_recv().is_err());
        let listed: Vec<Who> = moderation
            .list("room")
            .await
            .unwrap()
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(listed, [Who::User("ann".into()), Who::Name("Bo".into())]);

        moderation.unban("room", &users(&["ann"])).await.unwrap();
        assert_eq!(moderation.list("room").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_calls_are_refused_with_the_reason() {
        let (moderation, _, _) = moderation();
        let long = "x".repeat(MAX_USER_BYTES + 1);
        let many: Vec<Who> = (0..=MAX_USERS_PER_CALL)
            .map(|i| Who::User(i.to_string()))
            .collect();
        for (channel, who, expire, expect) in [
            ("a b", users(&["ann"]), None, "channel \"a b\""),
            ("", users(&["ann"]), None, "channel \"\""),
            ("room", vec![], None, "no users or names"),
            ("room", users(&["ann", " "]), None, "a user id is empty"),
            (
                "room",
                vec![Who::Name(String::new())],
                None,
                "a name is empty",
            ),
            ("room", vec![Who::User(long)], None, "257 bytes"),
            ("room", many, None, "at most 1000"),
            ("room", vec![Who::Legacy("x".into())], None, "bare id"),
            ("room", users(&["ann"]), Some(Duration::ZERO), "more than 0"),
        ] {
            let err = moderation.ban(channel, &who, expire).await.unwrap_err();
            assert_eq!(err.code(), "bad_request");
            assert!(err.to_string().contains(expect), "{err} / {expect}");
        }
        assert_eq!(
            moderation.unban("room", &[]).await.unwrap_err().code(),
            "bad_request"
        );
        assert_eq!(
            moderation.list("a:b").await.unwrap_err().code(),
            "bad_request"
        );
        // Nothing was stored.
        assert!(moderation.list("room").await.unwrap().is_empty());
    }
}
