//! The HTTP side of every role: all routes in one place ([`routes`]), the listener
//! ([`server`]) and `GET /health` ([`health`]).

pub mod channel;
pub mod error;
pub mod health;
pub mod server;

pub use server::{HttpBindError, HttpServer};

use std::sync::Arc;

use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;

use crate::admin::AdminState;
use crate::dispatcher::join::Dispatcher;
use crate::host::demo::DemoTokens;
use crate::host::publish::App;
use error::ApiError;
use health::Health;

/// All routes, by role: `/health` always; the publisher endpoints (and `/demo/token` with
/// its key) with the chat-host role, `/join` and `/channels` with the dispatcher, the admin
/// API with `admin`.
pub fn routes(
    health: Arc<Health>,
    chat_host: Option<Arc<App>>,
    demo: Option<Arc<DemoTokens>>,
    dispatcher: Option<Arc<Dispatcher>>,
    admin: Option<Arc<AdminState>>,
) -> Router {
    let mut router = Router::new().merge(
        Router::new()
            .route("/health", get(health::check))
            .with_state(health),
    );
    if let Some(app) = chat_host {
        router = router.merge(
            Router::new()
                .route("/pub", get(crate::host::publish::ws::upgrade))
                .route("/pub/{channel}", post(crate::host::publish::post::publish))
                .with_state(app),
        );
    }
    if let Some(demo) = demo {
        router = router.merge(crate::host::demo::router(demo));
    }
    if let Some(dispatcher) = dispatcher {
        router = router.merge(crate::dispatcher::join::router(dispatcher));
    }
    if let Some(admin) = admin {
        router = router.merge(crate::admin::router(admin));
    }
    router.fallback(not_found)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {method} {}", uri.path()),
    )
}
