//! `POST /ban`, `DELETE /ban` (or `POST /unban`), `GET /bans/<ch>`: moderation by the
//! operator.
//!
//! A ban says whom it matches: `users` by the token's `sub`, `names` by its
//! `_public.name`. It is stored (in Redis with many hosts), the matching publisher sessions
//! in the channel are closed on every host with 4502 ("do not reconnect"), and an
//! `rmUserMsg` event carrying the id or name is published so that clients hide their
//! messages. Every answer says per entry what it matches (`user` or `name`).
//!
//! A request is `{"channel": .., "users": [..], "names": [..], "expire": <seconds>}` (one
//! of `users` and `names` at least; no `expire`: until unbanned), or an array of them; the
//! original system's array-token form names one public name per entry with `name`. Every
//! entry is checked before anything is done.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{AdminAuth, AdminBody};
use super::{AdminError, AdminState};
use crate::http::channel::ChannelPath;
use crate::moderation::{check_call, ModerationError, Who};

/// Entries in one call.
const MAX_ENTRIES: usize = 1000;

/// One entry of a request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    channel: String,
    /// Users by the token's `sub`.
    #[serde(default)]
    users: Vec<String>,
    /// Public names, by the token's `_public.name`.
    #[serde(default)]
    names: Vec<String>,
    /// One public name, the original format's field (the original system banned by name).
    #[serde(default)]
    name: Option<String>,
    /// Seconds; absent or null: until unbanned.
    #[serde(default)]
    expire: Option<u64>,
}

/// A checked entry.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    channel: String,
    whom: Vec<Who>,
    expire: Option<Duration>,
}

impl From<ModerationError> for AdminError {
    fn from(e: ModerationError) -> Self {
        match e {
            ModerationError::BadRequest(m) => Self::BadRequest(m),
            ModerationError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

/// Reads and checks every entry of `body` before anything is done.
fn targets(body: Value) -> Result<Vec<Target>, AdminError> {
    let entries =
        match body {
            Value::Array(entries) => entries,
            object @ Value::Object(_) => vec![object],
            _ => return Err(AdminError::BadRequest(
                "the body must be an object like {\"channel\": \"room\", \"users\": [\"u-17\"]} \
                 or {\"channel\": \"room\", \"names\": [\"Zoe\"]}, or an array of them"
                    .into(),
            )),
        };
    if entries.is_empty() || entries.len() > MAX_ENTRIES {
        return Err(AdminError::BadRequest(format!(
            "{} entries given; send 1 to {MAX_ENTRIES}",
            entries.len()
        )));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let at = |m: String| AdminError::BadRequest(format!("entry #{index}: {m}"));
            let entry: Entry = serde_json::from_value(entry).map_err(|e| at(e.to_string()))?;
            let whom: Vec<Who> = entry
                .users
                .into_iter()
                .map(Who::User)
                .chain(entry.names.into_iter().chain(entry.name).map(Who::Name))
                .collect();
            if entry.expire == Some(0) {
                return Err(at(
                    "\"expire\" must be at least 1 second (or absent: until unbanned)".into(),
                ));
            }
            let whom = check_call(&entry.channel, &whom).map_err(|e| at(e.to_string()))?;
            Ok(Target {
                channel: entry.channel,
                whom,
                expire: entry.expire.map(Duration::from_secs),
            })
        })
        .collect()
}

/// Whom an answer's entry is about, as a field named by its kind: `"user": "<sub>"`,
/// `"name": "<public name>"`, or `"legacy": "<id>"` (a ban stored before bans had kinds,
/// matching a token whose `sub` or `_public.name` is the id).
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Whom {
    User(String),
    Name(String),
    Legacy(String),
}

impl From<Who> for Whom {
    fn from(who: Who) -> Self {
        match who {
            Who::User(v) => Self::User(v),
            Who::Name(v) => Self::Name(v),
            Who::Legacy(v) => Self::Legacy(v),
        }
    }
}

#[derive(Serialize)]
pub struct Banned {
    banned: Vec<BanEntry>,
}

#[derive(Serialize)]
struct BanEntry {
    channel: String,
    #[serde(flatten)]
    whom: Whom,
    /// ms since the Unix epoch; null: until unbanned.
    until: Option<u64>,
}

pub async fn ban(
    State(state): State<Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Banned>, AdminError> {
    let moderation = &state.moderation;
    let mut banned = Vec::new();
    for target in targets(body)? {
        let ban = moderation
            .ban(&target.channel, &target.whom, target.expire)
            .await?;
        banned.extend(target.whom.into_iter().map(|who| BanEntry {
            channel: target.channel.clone(),
            whom: who.into(),
            until: ban.until,
        }));
    }
    Ok(Json(Banned { banned }))
}

#[derive(Serialize)]
pub struct Unbanned {
    unbanned: Vec<UnbanEntry>,
}

#[derive(Serialize)]
struct UnbanEntry {
    channel: String,
    #[serde(flatten)]
    whom: Whom,
}

pub async fn unban(
    State(state): State<Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Unbanned>, AdminError> {
    let moderation = &state.moderation;
    let mut unbanned = Vec::new();
    for target in targets(body)? {
        moderation.unban(&target.channel, &target.whom).await?;
        unbanned.extend(target.whom.into_iter().map(|who| UnbanEntry {
            channel: target.channel.clone(),
            whom: who.into(),
        }));
    }
    Ok(Json(Unbanned { unbanned }))
}

#[derive(Serialize)]
pub struct Bans {
    channel: String,
    bans: Vec<ListedBan>,
}

#[derive(Serialize)]
struct ListedBan {
    #[serde(flatten)]
    whom: Whom,
    until: Option<u64>,
}

pub async fn list(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    ChannelPath(channel, ..): ChannelPath<AdminError>,
) -> Result<Json<Bans>, AdminError> {
    let bans = state.moderation.list(&channel).await?;
    Ok(Json(Bans {
        channel,
        bans: bans
            .into_iter()
            .map(|(who, ban)| ListedBan {
                whom: who.into(),
                until: ban.until,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_forms_are_read_and_every_entry_is_checked() {
        let one = targets(
            json!({"channel": "r", "users": ["a", "b", "a"], "names": ["Zoe"], "expire": 60}),
        )
        .unwrap();
        assert_eq!(
            one,
            [Target {
                channel: "r".into(),
                whom: vec![
                    Who::User("a".into()),
                    Who::User("b".into()),
                    Who::Name("Zoe".into())
                ],
                expire: Some(Duration::from_secs(60)),
            }]
        );
        // The original format's `name` is the public name.
        let legacy = targets(
            json!([{"name": "a", "channel": "r"}, {"name": "b", "channel": "s", "expire": 5}]),
        )
        .unwrap();
        assert_eq!(legacy.len(), 2);
        assert_eq!(legacy[0].expire, None);
        assert_eq!(legacy[0].whom, [Who::Name("a".into())]);
        assert_eq!(legacy[1].whom, [Who::Name("b".into())]);
        for (bad, needle) in [
            (json!("x"), "must be an object"),
            (json!([]), "0 entries"),
            (json!({"channel": "r"}), "no users or names"),
            (
                json!({"channel": "r", "users": [], "names": []}),
                "no users or names",
            ),
            (json!({"channel": "r", "name": ""}), "a name is empty"),
            (json!({"channel": "r", "names": [" "]}), "a name is empty"),
            (json!({"channel": "r", "users": [""]}), "a user id is empty"),
            (json!({"channel": "a b", "users": ["x"]}), "channel"),
            (
                json!({"channel": "r", "users": ["x"], "expire": 0}),
                "at least 1 second",
            ),
            (
                json!({"channel": "r", "users": ["x"], "expire": -5}),
                "entry #0",
            ),
            (
                json!([{"channel": "r", "users": ["x"]}, {"channel": "r", "user": "y"}]),
                "entry #1",
            ),
        ] {
            match targets(bad.clone()) {
                Err(AdminError::BadRequest(m)) => assert!(m.contains(needle), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_say_what_each_entry_matches() {
        let entry = |who: Who| {
            serde_json::to_value(BanEntry {
                channel: "r".into(),
                whom: who.into(),
                until: Some(5),
            })
            .unwrap()
        };
        assert_eq!(
            entry(Who::Name("Zoe".into())),
            json!({"channel": "r", "name": "Zoe", "until": 5})
        );
        assert_eq!(
            entry(Who::User("u-17".into())),
            json!({"channel": "r", "user": "u-17", "until": 5})
        );
    }
}
