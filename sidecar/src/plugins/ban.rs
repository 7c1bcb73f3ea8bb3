//! The `ban` plugin: a user banned from a channel ([`crate::moderation`]) can publish
//! nothing there (`banned`, with until when, in words and as `until`), and a WebSocket
//! publisher's `{"join":"<ch>"}` is refused the same way, so a banned user makes no `join`
//! event.
//!
//! A token is banned when a ban matches its `sub` (a ban by user) or its `_public.name` (a
//! ban by name); a token with neither passes. One lookup per publish: in memory, or one
//! pipeline in Redis; with Redis unreachable the publish fails with `unavailable` (as it
//! would at the broker). With the Redis broker the lookup is usually a guard of the
//! publish itself (see [`super`]): the same hashes read in the publish script.
//!
//! Without `ban` in `plugins.chain`, bans are still stored and banned users' sessions are
//! still kicked when the ban is made, but nothing checks publishes or joins afterwards: a
//! banned user can reconnect and publish.

use async_trait::async_trait;

use super::{Draft, Plugin};
use crate::broker::Guard;
use crate::jwt::Identity;
use crate::moderation::{Ban, Bans};
use crate::publish_error::{ErrorCode, PublishError};

/// Refuses the publishes of banned users.
pub struct BanPlugin {
    /// Shared with the admin API's [`crate::moderation::Moderation`].
    bans: Bans,
}

impl BanPlugin {
    pub fn new(bans: Bans) -> Self {
        Self { bans }
    }
}

#[async_trait]
impl Plugin for BanPlugin {
    fn name(&self) -> &'static str {
        "ban"
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        check(&self.bans, draft.identity, draft.channel).await
    }

    fn guardable(&self) -> bool {
        self.bans.in_redis()
    }

    fn guard(&self, draft: &Draft<'_>) -> Option<Guard> {
        self.bans.guard(draft.channel, draft.identity)
    }
}

/// `banned` when `identity` is banned from `channel`; `unavailable` when the bans cannot
/// be read.
pub async fn check(bans: &Bans, identity: &Identity, channel: &str) -> Result<(), PublishError> {
    match bans.ban_of(channel, identity).await {
        Ok(None) => Ok(()),
        Ok(Some((_, ban))) => Err(refusal(ban)),
        Err(e) => Err(PublishError::new(
            ErrorCode::Unavailable,
            format!("cannot check bans right now: {e}"),
        )),
    }
}

/// The refusal of a publisher under `ban`: `banned`, with its term.
pub fn refusal(ban: Ban) -> PublishError {
    PublishError::new(ErrorCode::Banned, describe(&ban)).ban(ban)
}

/// "you are banned from this channel until 2026-11-22T10:00:00Z" or "... permanently".
pub fn describe(ban: &Ban) -> String {
    match ban.until {
        None => "you are banned from this channel permanently".into(),
        Some(until) => format!(
            "you are banned from this channel until {}",
            utc_timestamp(until)
        ),
    }
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time, to the second.
fn utc_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's days_from_civil, inverted), for dates after
    // 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::moderation::Who;
    use crate::test_support::identity_of as identity;
    use std::time::Duration;

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_732_200_000_999), "2024-11-21T14:40:00Z");
        assert_eq!(utc_timestamp(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[tokio::test]
    async fn banned_users_are_refused_with_the_term() {
        let bans = Bans::memory();
        let plugin = BanPlugin::new(bans.clone());
        let ann = identity(Some("ann"), r#"{"name":"Ann"}"#);
        let bo = identity(None, r#"{"name":"bo"}"#);
        let anon = identity(None, r#"{}"#);
        let publish = |who: &Identity, channel: &'static str| {
            let plugin = &plugin;
            let who = who.clone();
            async move {
                let mut draft = Draft::new(&who, channel, Body::Text("hi".into()));
                plugin.check(&mut draft).await
            }
        };
        assert!(publish(&ann, "room").await.is_ok());
        bans.ban("room", &[Who::User("ann".into())], None)
            .await
            .unwrap();
        let hour = bans
            .ban(
                "room",
                &[Who::Name("bo".into())],
                Some(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        let err = publish(&ann, "room").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Banned);
        assert_eq!(err.message, "you are banned from this channel permanently");
        assert_eq!(err.until(), Some(Ban { until: None }));
        let err = publish(&bo, "room").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Banned);
        assert_eq!(err.until(), Some(hour));
        assert!(
            err.message
                .starts_with("you are banned from this channel until 20")
                && err.message.ends_with('Z'),
            "{}",
            err.message
        );
        // Elsewhere, and without any user id: not banned.
        assert!(publish(&ann, "hall").await.is_ok());
        assert!(publish(&anon, "room").await.is_ok());
        // A ban by name matches the name of a token that has a `sub` too...
        let ann_named_bo = identity(Some("ann2"), r#"{"name":"bo"}"#);
        assert_eq!(
            publish(&ann_named_bo, "room").await.unwrap_err().code,
            ErrorCode::Banned
        );
        // ...and a ban by user id matches no one who merely has that text as a name.
        let named_ann = identity(Some("u-5"), r#"{"name":"ann"}"#);
        assert!(publish(&named_ann, "room").await.is_ok());
    }
}
