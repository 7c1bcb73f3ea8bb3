//! `DELETE /users/<user>`: the operator removed a user (an account deleted or suspended).
//! Every connection of theirs closes on every host: publisher sessions with 4505, and their
//! viewers of private channels with 4505 too (public viewers are anonymous: nothing names
//! them). Their tokens still work until they expire, so the operator's backend must stop
//! issuing them; to keep a user out of a channel now, ban them there as well.
//!
//! ```json
//! DELETE /users/u-17
//! {"disconnected":"u-17"}
//! ```
//!
//! 400 `bad_request` for an id over 256 bytes; 503 `unavailable` when the other hosts could
//! not be told (this host closed its own; calling again is safe).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use super::auth::AdminAuth;
use super::{AdminError, AdminState};

#[derive(Serialize)]
pub struct Disconnected {
    disconnected: String,
}

/// `DELETE /users/{user}`.
pub async fn remove(
    _: AdminAuth,
    State(state): State<Arc<AdminState>>,
    Path(user): Path<String>,
) -> Result<Json<Disconnected>, AdminError> {
    state.moderation.disconnect(&user).await?;
    Ok(Json(Disconnected { disconnected: user }))
}
