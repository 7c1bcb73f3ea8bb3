//! [`ChannelPath`]: the `{channel}` of every route, checked with the rule the module and the
//! relay share (`chatup_wire::channel`).

use std::marker::PhantomData;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::IntoResponse;

/// Why the `{channel}` of a URL was refused; each role's error says it in its own words
/// (`From<BadChannelPath>`).
#[derive(Debug)]
pub enum BadChannelPath {
    /// The path segment cannot be read (not UTF-8 once decoded, ...).
    Unreadable(PathRejection),
    /// The name breaks the channel rule.
    Invalid {
        channel: String,
        /// What the rule says about it.
        reason: String,
    },
}

/// A checked channel name from the URL, refused with the endpoint's error `E`.
pub struct ChannelPath<E>(pub String, pub PhantomData<fn() -> E>);

impl<S, E> FromRequestParts<S> for ChannelPath<E>
where
    S: Send + Sync,
    E: From<BadChannelPath> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, E> {
        let Path(channel) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| E::from(BadChannelPath::Unreadable(e)))?;
        checked(channel.as_bytes()).map_err(E::from)?;
        Ok(Self(channel, PhantomData))
    }
}

/// A channel name from a path (already percent-decoded), checked.
pub fn checked(channel: &[u8]) -> Result<String, BadChannelPath> {
    match chatup_wire::channel::validate(channel) {
        // The rule allows ASCII alone.
        Ok(()) => Ok(String::from_utf8_lossy(channel).into_owned()),
        Err(e) => Err(BadChannelPath::Invalid {
            channel: String::from_utf8_lossy(channel).into_owned(),
            reason: e.to_string(),
        }),
    }
}
