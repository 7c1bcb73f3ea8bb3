//! The HTTP side of every role: all routes in one place ([`routes`]), the one error answer
//! ([`error`]), the checked `{channel}` of the URL ([`channel`]), the dispatcher's CORS
//! ([`cors`]), the listener ([`server`]) and its settings ([`config`]), and `GET /health`
//! ([`health`]).

pub mod channel;
pub mod config;
pub mod content_type;
pub mod cors;
pub mod error;
pub mod health;
pub mod query;
pub mod server;
pub mod user_page;

pub use server::{HttpBindError, HttpServer};

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::from_fn;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::admin::{self, AdminState};
use crate::dispatcher::channels;
use crate::dispatcher::join::{self, Dispatcher};
use crate::host;
use crate::host::demo::DemoTokens;
use crate::host::publish::{self, App};
use error::ApiError;
use health::Health;

/// Every route, by role: `/health` always; the publisher endpoints (and `/demo/token` with
/// its key) with the chat-host role, `/join` and `/channels` with the dispatcher, the admin
/// API with `admin`. Handlers live beside their role; this is the whole HTTP surface
/// (`sidecar/openapi.json` documents it, and a test keeps the two equal).
pub fn routes(
    health: Arc<Health>,
    chat_host: Option<Arc<App>>,
    demo: Option<Arc<DemoTokens>>,
    dispatcher: Option<Arc<Dispatcher>>,
    admin: Option<Arc<AdminState>>,
) -> Router {
    let mut router = Router::new()
        .route("/health", get(health::check))
        .with_state(health);
    if let Some(app) = chat_host {
        let publish_limit = app.publisher.limits().max_request_bytes();
        router = router.merge(
            Router::new()
                .route("/pub", get(publish::ws::upgrade))
                .route(
                    "/pub/{channel}",
                    post(publish::post::publish).layer(DefaultBodyLimit::max(publish_limit)),
                )
                .with_state(app),
        );
    }
    if let Some(demo) = demo {
        router = router.merge(
            Router::new()
                .route(
                    "/demo/token",
                    post(host::demo::mint).layer(DefaultBodyLimit::max(host::demo::MAX_BODY)),
                )
                .with_state(demo),
        );
    }
    if let Some(dispatcher) = dispatcher {
        let cors = cors::layer(dispatcher.cors_origins());
        router = router.merge(
            Router::new()
                .route(
                    "/join/{channel}",
                    post(join::join)
                        .options(join::preflight)
                        // Outermost first.
                        .layer((
                            DefaultBodyLimit::max(join::MAX_BODY),
                            from_fn(cors::preflight_answer),
                            cors.clone(),
                        )),
                )
                // On GET alone, so that other methods stay 405.
                .route(
                    "/channels/{channel}",
                    get(channels::counts.layer(cors.clone())),
                )
                .route(
                    "/channels/{channel}/users",
                    get(channels::users.layer(cors)),
                )
                .with_state(dispatcher),
        );
    }
    if let Some(admin) = admin {
        router = router.merge(
            Router::new()
                .route("/post", post(admin::post::post))
                .route("/messages/{channel}", get(admin::messages::messages))
                .route("/stats", get(admin::stats::hosts))
                .route("/stats/{channel}", get(admin::stats::channel))
                .route("/metrics", get(admin::metrics::scrape))
                .route("/ban", post(admin::ban::ban).delete(admin::ban::unban))
                .route("/unban", post(admin::ban::unban))
                .route("/bans/{channel}", get(admin::ban::list))
                .route("/users/{user}", delete(admin::users::remove))
                .route(
                    "/blacklist",
                    get(admin::blacklist::get)
                        .post(admin::blacklist::add)
                        .delete(admin::blacklist::remove),
                )
                .layer(axum::middleware::map_response(admin::end_with_newline))
                .with_state(admin),
        );
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
