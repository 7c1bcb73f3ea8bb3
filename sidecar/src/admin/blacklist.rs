//! `GET|POST|DELETE /blacklist`: the blacklist plugin's managed lists.
//!
//! Entries of the config file (`blacklist.words`, `blacklist.muted`) are always in force
//! and listed apart; the API adds and removes the managed ones, which every host applies
//! within about a second (through Redis, or at once with the memory broker). With
//! `blacklist` not in `plugins.chain` the lists do not exist: 404 says so.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{AdminAuth, AdminBody};
use super::{AdminError, AdminState};
use crate::plugins::blacklist::{Blacklist, BlacklistError, Listing};

/// Entries to add or remove; either list may be absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    words: Vec<String>,
    #[serde(default)]
    muted: Vec<String>,
}

fn change(body: Value) -> Result<Change, AdminError> {
    if !body.is_object() {
        return Err(AdminError::BadRequest(
            "the body must be an object like {\"words\": [..], \"muted\": [..]}".into(),
        ));
    }
    serde_json::from_value(body).map_err(|e| {
        AdminError::BadRequest(format!(
            "{e}; the body must be an object like {{\"words\": [..], \"muted\": [..]}}"
        ))
    })
}

fn lists(state: &AdminState) -> Result<&Blacklist, AdminError> {
    state.blacklist.as_deref().ok_or_else(|| {
        AdminError::NotFound(
            "the blacklist plugin is off: add \"blacklist\" to plugins.chain".into(),
        )
    })
}

impl From<BlacklistError> for AdminError {
    fn from(e: BlacklistError) -> Self {
        if e.is_client_error() {
            Self::BadRequest(e.to_string())
        } else {
            Self::Unavailable(e.to_string())
        }
    }
}

pub async fn get(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
) -> Result<Json<Listing>, AdminError> {
    Ok(Json(lists(&state)?.list().await?))
}

pub async fn add(
    State(state): State<Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Listing>, AdminError> {
    let lists = lists(&state)?;
    let change = change(body)?;
    Ok(Json(lists.add(&change.words, &change.muted).await?))
}

pub async fn remove(
    State(state): State<Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Listing>, AdminError> {
    let lists = lists(&state)?;
    let change = change(body)?;
    Ok(Json(lists.remove(&change.words, &change.muted).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_objects_of_string_lists() {
        let c = change(json!({"words": ["a"], "muted": ["b", "c"]})).unwrap();
        assert_eq!(
            (c.words, c.muted),
            (vec!["a".to_owned()], vec!["b".into(), "c".into()])
        );
        let c = change(json!({"muted": ["b"]})).unwrap();
        assert!(c.words.is_empty());
        for bad in [
            json!([]),
            json!({"word": ["a"]}),
            json!({"words": "a"}),
            json!({"words": [1]}),
        ] {
            assert!(matches!(change(bad), Err(AdminError::BadRequest(_))));
        }
    }
}
