//! `GET /metrics`: the Prometheus scrape, in the text format 0.0.4 ([`crate::metrics`]).
//!
//! It needs no token, like `/health`, so that any Prometheus can scrape it: operators keep
//! it from the public in nginx (`allow`/`deny` on the location, or not proxying it at all).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tracing::error;

use super::{AdminError, AdminState};
use crate::metrics::CONTENT_TYPE;

pub async fn scrape(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            error!("{e}");
            AdminError::Internal(e.to_string()).into_response()
        }
    }
}
