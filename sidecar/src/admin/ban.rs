//! `POST /ban`, `DELETE /ban` (or `POST /unban`), `GET /bans/<ch>`: moderation by the
//! operator.
//!
//! A ban is stored (in Redis with many hosts), the user's publisher sessions in the channel
//! are closed on every host with 4502 ("do not reconnect"), and an `rmUserMsg` event
//! carrying the user id is published so that clients hide the user's messages. Users are
//! named by the id bans use: the token's `sub`, else its `_public.name`.
//!
//! A request is `{"channel": .., "users": [..], "expire": <seconds>}` (no `expire`: until
//! unbanned), or an array of them; the original system's array-token form names one user
//! per entry with `name`. Every entry is checked before anything is done.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{AdminAuth, AdminBody};
use super::{channel_from_path, AdminError, AdminState};
use crate::moderation::{check_call, ModerationError};

/// Entries in one call.
const MAX_ENTRIES: usize = 1000;

/// One entry of a request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    channel: String,
    #[serde(default)]
    users: Vec<String>,
    /// One user, the original format's field.
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
    users: Vec<String>,
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
                "the body must be an object like {\"channel\": \"room\", \"users\": [\"alice\"]} \
                 or an array of them"
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
            let mut users = entry.users;
            users.extend(entry.name);
            if entry.expire == Some(0) {
                return Err(at(
                    "\"expire\" must be at least 1 second (or absent: until unbanned)".into(),
                ));
            }
            let users = check_call(&entry.channel, &users).map_err(|e| at(e.to_string()))?;
            Ok(Target {
                channel: entry.channel,
                users,
                expire: entry.expire.map(Duration::from_secs),
            })
        })
        .collect()
}

#[derive(Serialize)]
pub struct Banned {
    banned: Vec<BanEntry>,
}

#[derive(Serialize)]
struct BanEntry {
    channel: String,
    user: String,
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
            .ban(&target.channel, &target.users, target.expire)
            .await?;
        banned.extend(target.users.into_iter().map(|user| BanEntry {
            channel: target.channel.clone(),
            user,
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
    user: String,
}

pub async fn unban(
    State(state): State<Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Unbanned>, AdminError> {
    let moderation = &state.moderation;
    let mut unbanned = Vec::new();
    for target in targets(body)? {
        moderation.unban(&target.channel, &target.users).await?;
        unbanned.extend(target.users.into_iter().map(|user| UnbanEntry {
            channel: target.channel.clone(),
            user,
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
    user: String,
    until: Option<u64>,
}

pub async fn list(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    channel: Result<Path<String>, PathRejection>,
) -> Result<Json<Bans>, AdminError> {
    let channel = channel_from_path(channel)?;
    let bans = state.moderation.list(&channel).await?;
    Ok(Json(Bans {
        channel,
        bans: bans
            .into_iter()
            .map(|(user, ban)| ListedBan {
                user,
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
        let one = targets(json!({"channel": "r", "users": ["a", "b", "a"], "expire": 60})).unwrap();
        assert_eq!(
            one,
            [Target {
                channel: "r".into(),
                users: vec!["a".into(), "b".into()],
                expire: Some(Duration::from_secs(60)),
            }]
        );
        let legacy = targets(
            json!([{"name": "a", "channel": "r"}, {"name": "b", "channel": "s", "expire": 5}]),
        )
        .unwrap();
        assert_eq!(legacy.len(), 2);
        assert_eq!(legacy[0].expire, None);
        assert_eq!(legacy[1].users, ["b"]);
        for (bad, needle) in [
            (json!("x"), "must be an object"),
            (json!([]), "0 entries"),
            (json!({"channel": "r"}), "no users"),
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
}
