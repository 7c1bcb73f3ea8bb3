//! A page of the users joined to a channel, the same for the admin API's `GET /stats/<ch>`
//! ([`crate::admin::stats`]) and the public `GET /channels/<ch>/users`
//! ([`crate::dispatcher::channels`]): `skip` and `limit` read from the query, the
//! `_public` objects of that part of the sorted list.

use serde_json::value::RawValue;
use tracing::warn;

use super::query::{self, BadQuery, Param};
use crate::cluster::registry::JoinedPublisher;

/// Publishers per page without `limit`.
pub const DEFAULT_LIMIT: u64 = 100;

/// Largest `limit`.
pub const MAX_LIMIT: u64 = 1000;

const PARAMS: [Param; 2] = [Param::any("skip"), Param::limit(MAX_LIMIT)];

/// The checked `skip` and `limit` of a user list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub skip: u64,
    pub limit: u64,
}

/// Reads `skip` and `limit` from a raw query string.
pub fn window(raw: Option<&str>) -> Result<Window, BadQuery> {
    let values = query::integers(&query::pairs(raw)?, &PARAMS)?;
    Ok(Window {
        skip: values[0].unwrap_or(0),
        limit: values[1].unwrap_or(DEFAULT_LIMIT),
    })
}

/// The `_public` objects of `publishers[skip..skip + limit]`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(matches!(window(Some(bad)), Err(BadQuery(_))), "{bad}");
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
}
