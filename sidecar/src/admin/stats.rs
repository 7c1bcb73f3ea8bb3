//! `GET /stats/<ch>` and `GET /stats`: audience and load, from the host registry
//! ([`crate::cluster::registry::Directory`]).
//!
//! `GET /stats/<ch>?skip=<n>&limit=<n>`:
//!
//! ```json
//! {"channel":"lobby","subCount":120,"pubCount":4,"total":3,
//!  "publishers":[{"name":"alice"},{"name":"bob"}],"skip":0,"limit":100}
//! ```
//!
//! `subCount` and `pubCount` are summed over the live hosts, as `/join` gives them (a user
//! joined on two hosts counts twice in `pubCount`). `publishers` are the `_public` objects
//! of the distinct users joined to the channel on any live host, each once, in a stable
//! order (by user: `sub`, or the `_public` object without one); `total` is how many there
//! are, `skip` and `limit` (default 0 and [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) page
//! through them.
//!
//! `GET /stats`: totals and one entry per live host, sorted by id:
//!
//! ```json
//! {"subCount":130,"pubCount":9,
//!  "hosts":[{"id":"chat1","url":"https://chat1.example.com","subPath":"/sub/",
//!            "pubPath":"/pub","subCount":120,"pubCount":4,"reportedAt":1763770000000}]}
//! ```
//!
//! A host's `subCount` is its viewer connections, `pubCount` its authenticated publisher
//! sessions (joined to channels or not); `reportedAt` is when it last reported (ms since
//! the Unix epoch; always now for a single host).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::warn;

use super::auth::AdminAuth;
use super::query::{self, Param};
use super::{AdminError, AdminState};
use crate::cluster::registry::{HostEntry, JoinedPublisher};
use crate::http::channel::ChannelPath;

/// Publishers per page without `limit`.
pub const DEFAULT_LIMIT: u64 = 100;

/// Largest `limit`.
pub const MAX_LIMIT: u64 = 1000;

const PARAMS: [Param; 2] = [Param::any("skip"), Param::limit(MAX_LIMIT)];

/// The checked query of `/stats/<ch>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub skip: u64,
    pub limit: u64,
}

/// Reads `skip` and `limit` from a raw query string (here and for the public
/// `GET /channels/<ch>/users`).
pub fn window(raw: Option<&str>) -> Result<Window, AdminError> {
    let values = query::integers(&query::pairs(raw)?, &PARAMS)?;
    Ok(Window {
        skip: values[0].unwrap_or(0),
        limit: values[1].unwrap_or(DEFAULT_LIMIT),
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChannelStats<'a> {
    channel: String,
    sub_count: u64,
    pub_count: u64,
    total: usize,
    publishers: Vec<&'a RawValue>,
    skip: u64,
    limit: u64,
}

/// The `_public` objects of `publishers[skip..skip + limit]` (also the page of the public
/// `GET /channels/<ch>/users`, [`crate::dispatcher::channels`]).
pub fn window_of<'a>(
    channel: &str,
    publishers: &'a [JoinedPublisher],
    w: Window,
) -> Vec<&'a RawValue> {
    let skip = usize::try_from(w.skip).unwrap_or(usize::MAX);
    let limit = usize::try_from(w.limit).unwrap_or(usize::MAX);
    publishers
        .iter()
        .skip(skip)
        .take(limit)
        .filter_map(|p| match serde_json::from_str::<&RawValue>(&p.user) {
            Ok(raw) => Some(raw),
            Err(e) => {
                warn!(
                    channel,
                    user = p.key,
                    "skipping a publisher whose _public is not JSON: {e}"
                );
                None
            }
        })
        .collect()
}

/// `GET /stats/{channel}`.
pub async fn channel(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    ChannelPath(channel, ..): ChannelPath<AdminError>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    let w = window(raw.as_deref())?;
    let hosts = state.directory.hosts().await?;
    let (counts, publishers) = tokio::join!(
        state.directory.channel_counts(&channel, &hosts),
        state.directory.channel_publishers(&channel, &hosts)
    );
    let (counts, publishers) = (counts?, publishers?);
    let page = window_of(&channel, &publishers, w);
    Ok(Json(ChannelStats {
        sub_count: counts.subscribers,
        pub_count: counts.publishers,
        total: publishers.len(),
        publishers: page,
        skip: w.skip,
        limit: w.limit,
        channel,
    })
    .into_response())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostStats {
    id: String,
    url: String,
    sub_path: String,
    pub_path: String,
    sub_count: u64,
    pub_count: u64,
    reported_at: u64,
}

impl From<HostEntry> for HostStats {
    fn from(h: HostEntry) -> Self {
        Self {
            id: h.id,
            url: h.public_url,
            sub_path: h.sub_path,
            pub_path: h.pub_path,
            sub_count: h.subscribers,
            pub_count: h.publishers,
            reported_at: h.written_ms,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    sub_count: u64,
    pub_count: u64,
    hosts: Vec<HostStats>,
}

/// The totals and per-host numbers of `hosts`, sorted by id.
fn totals(mut hosts: Vec<HostEntry>) -> Totals {
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    Totals {
        sub_count: hosts.iter().map(|h| h.subscribers).sum(),
        pub_count: hosts.iter().map(|h| h.publishers).sum(),
        hosts: hosts.into_iter().map(HostStats::from).collect(),
    }
}

/// `GET /stats`.
pub async fn hosts(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Totals>, AdminError> {
    // No parameters: refuse any, so that a mistyped `/stats?channel=x` is not a silent
    // answer about something else.
    query::integers(&query::pairs(raw.as_deref())?, &[])?;
    Ok(Json(totals(state.directory.hosts().await?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn window_defaults_and_bounds() {
        assert_eq!(
            window(None).unwrap(),
            Window {
                skip: 0,
                limit: 100
            }
        );
        assert_eq!(
            window(Some("skip=2&limit=1")).unwrap(),
            Window { skip: 2, limit: 1 }
        );
        for bad in [
            "skip=-1",
            "skip=x",
            "limit=0",
            "limit=1001",
            "limit=",
            "before=1",
        ] {
            assert!(
                matches!(window(Some(bad)), Err(AdminError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_window_pages_through_the_sorted_list() {
        let list: Vec<JoinedPublisher> = ["a", "b", "c"]
            .iter()
            .map(|n| JoinedPublisher {
                key: format!("sub:{n}"),
                user: format!(r#"{{"name":"{n}"}}"#),
            })
            .collect();
        let names = |w: Window| -> Vec<String> {
            window_of("r", &list, w)
                .iter()
                .map(|raw| raw.get().to_owned())
                .collect()
        };
        assert_eq!(
            names(Window { skip: 0, limit: 2 }),
            [r#"{"name":"a"}"#, r#"{"name":"b"}"#]
        );
        assert_eq!(names(Window { skip: 2, limit: 2 }), [r#"{"name":"c"}"#]);
        assert!(names(Window {
            skip: u64::MAX,
            limit: 2
        })
        .is_empty());
    }

    #[test]
    fn totals_sum_the_hosts() {
        let host = |id: &str, s: u64, p: u64| HostEntry {
            id: id.into(),
            public_url: format!("https://{id}.example"),
            sub_path: "/sub/".into(),
            pub_path: "/pub".into(),
            subscribers: s,
            publishers: p,
            written_ms: 5,
            instance: "i".into(),
        };
        let t = totals(vec![host("b", 3, 1), host("a", 4, 2)]);
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"subCount": 7, "pubCount": 3, "hosts": [
                {"id": "a", "url": "https://a.example", "subPath": "/sub/", "pubPath": "/pub",
                 "subCount": 4, "pubCount": 2, "reportedAt": 5},
                {"id": "b", "url": "https://b.example", "subPath": "/sub/", "pubPath": "/pub",
                 "subCount": 3, "pubCount": 1, "reportedAt": 5},
            ]})
        );
    }
}
