//! `GET /messages/<ch>?before=<id>&limit=<n>`: a channel's kept history, newest first.
//!
//! ```json
//! {"channel":"lobby","epoch":4761983525,
//!  "messages":[{"ch":"lobby","id":42,..},{"ch":"lobby","id":41,..}],"next":41}
//! ```
//!
//! `messages` are the stored objects, byte for byte as subscribers received them. `limit`
//! (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) bounds the page; `before` takes only
//! ids below it. `next` is the value of `before` for the following (older) page, `null`
//! when this page reaches the oldest kept message. Only the last `history.size` messages of
//! a channel are kept; ids count within `epoch`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::warn;

use super::auth::AdminAuth;
use super::{AdminError, AdminState};
use crate::broker::History;
use crate::http::channel::ChannelPath;
use crate::http::query::{self, Param};

/// Page size without `limit`.
pub const DEFAULT_LIMIT: u64 = 50;

/// Largest `limit`.
pub const MAX_LIMIT: u64 = 1000;

const PARAMS: [Param; 2] = [Param::any("before"), Param::limit(MAX_LIMIT)];

/// The checked query: ids below `before` (any when `None`), at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub before: Option<u64>,
    pub limit: usize,
}

/// Reads `before` and `limit` from a raw query string.
pub fn paging(raw: Option<&str>) -> Result<Paging, AdminError> {
    let values = query::integers(&query::pairs(raw)?, &PARAMS)?;
    Ok(Paging {
        before: values[0],
        limit: values[1].unwrap_or(DEFAULT_LIMIT) as usize,
    })
}

#[derive(Debug, Serialize)]
pub struct Page<'a> {
    channel: String,
    epoch: u64,
    messages: Vec<&'a RawValue>,
    next: Option<u64>,
}

/// The answer for `history`, which was asked for one message more than `limit` (oldest
/// first): newest first, at most `limit`, and whether older ones remain.
fn page<'a>(channel: String, history: &'a History, limit: usize) -> Page<'a> {
    let more = history.messages.len() > limit;
    let skip = history.messages.len().saturating_sub(limit);
    let kept = &history.messages[skip..];
    let messages = kept
        .iter()
        .rev()
        .filter_map(
            |entry| match serde_json::from_slice::<&RawValue>(&entry.payload) {
                Ok(raw) => Some(raw),
                Err(e) => {
                    warn!(
                        channel,
                        id = entry.id,
                        "skipping a stored message that is not JSON: {e}"
                    );
                    None
                }
            },
        )
        .collect();
    Page {
        epoch: history.epoch,
        next: if more {
            kept.first().map(|e| e.id)
        } else {
            None
        },
        channel,
        messages,
    }
}

/// `GET /messages/{channel}`.
pub async fn messages(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    ChannelPath(channel, ..): ChannelPath<AdminError>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    let paging = paging(raw.as_deref())?;
    let history = state
        .broker
        .history(&channel, paging.before, paging.limit + 1)
        .await?;
    // Serialized here, while `history` is borrowed: the messages go out as stored.
    Ok(Json(page(channel, &history, paging.limit)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatup_wire::Entry;

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(
            paging(None).unwrap(),
            Paging {
                before: None,
                limit: 50
            }
        );
        assert_eq!(
            paging(Some("before=7&limit=3")).unwrap(),
            Paging {
                before: Some(7),
                limit: 3
            }
        );
        assert_eq!(paging(Some("limit=1000")).unwrap().limit, 1000);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "before=-1",
            "before=1e3",
            "page=2",
        ] {
            let e = paging(Some(bad)).unwrap_err();
            assert!(matches!(e, AdminError::BadRequest(_)), "{bad}: {e:?}");
        }
        assert!(paging(Some("before=abc"))
            .unwrap_err()
            .to_string()
            .contains("\"before\""));
    }

    fn history(ids: std::ops::RangeInclusive<u64>) -> History {
        History {
            epoch: 9,
            head: *ids.end(),
            messages: ids
                .map(|id| Entry {
                    id,
                    payload: format!(r#"{{"ch":"r","id":{id},"msg":"m\n{id}"}}"#).into_bytes(),
                })
                .collect(),
        }
    }

    #[test]
    fn pages_are_newest_first_with_the_next_cursor() {
        // Asked for 3 + 1: four came, so more remain.
        let h = history(4..=7);
        let p = page("r".into(), &h, 3);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"channel":"r","epoch":9,"messages":[{"ch":"r","id":7,"msg":"m\n7"},{"ch":"r","id":6,"msg":"m\n6"},{"ch":"r","id":5,"msg":"m\n5"}],"next":5}"#
        );
        // Three or fewer came: the end.
        let h = history(1..=2);
        let p = page("r".into(), &h, 3);
        assert_eq!(p.next, None);
        assert_eq!(p.messages.len(), 2);
        let empty = History {
            epoch: 1,
            head: 0,
            messages: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&page("r".into(), &empty, 3)).unwrap(),
            r#"{"channel":"r","epoch":1,"messages":[],"next":null}"#
        );
    }
}
