//! `GET /stats/<ch>` and `GET /stats`: audience and load, from the host registry
//! ([`crate::cluster::registry::Directory`]).
//!
//! `GET /stats/<ch>?skip=<n>&limit=<n>`:
//!
//! ```json
//! {"channel":"lobby","subCount":120,"pubCount":4,"total":3,
//!  "publishers":[{"name":"alice"},{"name":"bob"}],"skip":0,"limit":100,
//!  "viewerTotal":0,"viewers":[]}
//! ```
//!
//! `subCount` and `pubCount` are summed over the live hosts, as `/join` gives them (a user
//! joined on two hosts counts twice in `pubCount`). `publishers` are the `_public` objects
//! of the distinct users joined to the channel on any live host, each once, in a stable
//! order (by user: `sub`, or the `_public` object without one); `total` is how many there
//! are, `skip` and `limit` (default 0 and [`DEFAULT_LIMIT`](crate::http::user_page::DEFAULT_LIMIT), at most
//! [`MAX_LIMIT`](crate::http::user_page::MAX_LIMIT)) page
//! through them. `viewers` lists who watches a private channel (`[private] channels`): one
//! `{"sub":…,"user":<_public>}` per user admitted on any live host, sorted by `sub`, paged by
//! the same `skip` and `limit`, `viewerTotal` of them (a public channel has none: its
//! viewers are anonymous).
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

use super::auth::AdminAuth;
use super::{AdminError, AdminState};
use crate::cluster::registry::HostEntry;
use crate::http::channel::ChannelPath;
use crate::http::query;
use crate::http::user_page::{window, window_of};

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
    viewer_total: usize,
    viewers: Vec<&'a RawValue>,
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
    let (counts, publishers, viewers) = tokio::join!(
        state.directory.channel_counts(&channel, &hosts),
        state.directory.channel_publishers(&channel, &hosts),
        state.directory.channel_viewers(&channel, &hosts)
    );
    let (counts, publishers, viewers) = (counts?, publishers?, viewers?);
    let page = window_of(&channel, &publishers, w);
    let viewer_page = window_of(&channel, &viewers, w);
    Ok(Json(ChannelStats {
        sub_count: counts.subscribers,
        pub_count: counts.publishers,
        total: publishers.len(),
        publishers: page,
        skip: w.skip,
        limit: w.limit,
        viewer_total: viewers.len(),
        viewers: viewer_page,
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
