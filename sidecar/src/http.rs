//! The HTTP listener, behind nginx: `/health`, the publisher endpoints (worker role) and
//! `POST /join/<ch>` (dispatcher role).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::dispatch::Dispatcher;
use crate::health::Health;
use crate::moderation::Moderation;
use crate::presence::Presence;
use crate::publish::sessions::Sessions;
use crate::publish::{HttpError, HttpErrorBody, Publisher};

/// Timing of WebSocket publisher sessions.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// How long a new publisher has to send its token.
    pub auth_timeout: Duration,
    /// How often the server pings publishers.
    pub ping_interval: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// What the publisher endpoints share (worker role).
pub struct App {
    /// Checks and publishes messages.
    pub publisher: Publisher,
    /// Which publishers are in which channels; sessions join and leave through it.
    pub presence: Arc<Presence>,
    /// Cancelled at shutdown: publisher sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks publisher sessions, which outlive their HTTP request once upgraded, so that
    /// shutdown can wait for their close frames to go out.
    pub tracker: TaskTracker,
    /// Auth timeout and ping interval of publisher sessions.
    pub ws: WsSettings,
    /// Bans; a publisher's join is checked against them.
    pub moderation: Arc<Moderation>,
    /// The open WebSocket publisher sessions by user, closed by a kick.
    pub sessions: Arc<Sessions>,
}

/// The routes of the roles this process plays: the publisher endpoints with `worker`, the
/// dispatcher with `dispatcher`, the admin API with `admin`; `/health` always.
pub fn router(
    health: Arc<Health>,
    worker: Option<Arc<App>>,
    dispatcher: Option<Arc<Dispatcher>>,
    admin: Option<Arc<AdminState>>,
) -> Router {
    let mut router = Router::new().merge(
        Router::new()
            .route("/health", get(crate::health::check))
            .with_state(health),
    );
    if let Some(app) = worker {
        router = router.merge(
            Router::new()
                .route("/pub", get(crate::publish::ws::upgrade))
                .route("/pub/{channel}", post(crate::publish::post::publish))
                .with_state(app),
        );
    }
    if let Some(dispatcher) = dispatcher {
        router = router.merge(crate::dispatch::router(dispatcher));
    }
    if let Some(admin) = admin {
        router = router.merge(crate::admin::router(admin));
    }
    router.fallback(not_found)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let body = HttpErrorBody {
        error: HttpError {
            code: "not_found",
            message: &format!("no such endpoint: {method} {}", uri.path()),
            until: None,
        },
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// A bound HTTP listener.
pub struct HttpServer {
    /// Bound before serving, so that startup fails early on a busy port.
    listener: TcpListener,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on http.listen {addr}: {source}")]
pub struct HttpBindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, HttpBindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpBindError { addr, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown`; in-flight requests finish, publisher sessions close
    /// themselves with 1001.
    pub async fn run(self, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "http listening");
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}
