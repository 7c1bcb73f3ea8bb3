//! The admin API, for operators and their backends: post messages and events, ban users,
//! read history and counts, manage the blacklist, scrape metrics.
//!
//! Every call except `/health` and `/metrics` needs an admin token ([`auth`]). Errors are
//! JSON, `{"error": {"code": .., "message": ..}}`, like the publisher endpoints':
//! 401 for a missing or bad token, 400 for a malformed body, 503 when the broker (Redis)
//! cannot be reached.

pub mod auth;
pub mod ban;
pub mod blacklist;
pub mod config;
pub mod messages;
pub mod metrics;
pub mod post;
pub mod stats;
pub mod users;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::broker::{Broker, BrokerError};
use crate::cluster::registry::{Directory, RegistryError};
use crate::config::Config;
use crate::http::channel::BadChannelPath;
use crate::http::error::ApiError;
use crate::http::query::BadQuery;
use crate::jwt::KeySetupError;
use crate::message::Limits;
use crate::metrics::PublishedKind;
use crate::moderation::Moderation;
use crate::plugins::blacklist::Blacklist;
use crate::shared::Shared;
use auth::{warn_example_admin_key, AdminVerifier};
use tracing::warn;

/// What the admin endpoints share.
pub struct AdminState {
    /// Checks admin tokens; `None` when `admin.public_key_file` is empty, so every call that
    /// needs a token answers 503 `admin_disabled` and says what to configure.
    pub verifier: Option<Arc<AdminVerifier>>,
    /// Where posted messages go and history comes from. What is published through it
    /// counts as `kind="admin"` in the metrics.
    pub broker: Arc<dyn Broker>,
    /// The live hosts and their counts, for `/stats`.
    pub directory: Arc<dyn Directory>,
    /// `[limits]`, which posted messages respect like publishers' ones.
    pub limits: Limits,
    /// What `/metrics` serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Bans and their effects on every host.
    pub moderation: Arc<crate::moderation::Moderation>,
    /// The blacklist plugin's lists; `None` when the plugin is off.
    pub blacklist: Option<Arc<crate::plugins::blacklist::Blacklist>>,
}

/// The admin token checker, or `None` (admin API off) when no key is configured. Called
/// before anything is bound: a wrong admin key stops the start.
pub fn verifier(config: &Config) -> Result<Option<Arc<AdminVerifier>>, KeySetupError> {
    let path = &config.admin.public_key_file;
    if path.as_os_str().is_empty() {
        warn!(
            "admin.public_key_file is empty: the admin API is off (only /health and /metrics answer)"
        );
        return Ok(None);
    }
    let verifier = AdminVerifier::from_config(&config.admin, &config.auth)?;
    if verifier.uses_example_key() {
        warn_example_admin_key(path);
    }
    Ok(Some(Arc::new(verifier)))
}

/// The admin role's state (`roles.admin`), or `None` when this process does not play it or
/// has no hosts to tell about (no chat-host role and no Redis: refused by the
/// configuration check).
pub fn assemble(
    config: &Config,
    verifier: Option<Arc<AdminVerifier>>,
    directory: Option<&Arc<dyn Directory>>,
    shared: &Shared,
    limits: Limits,
    moderation: Arc<Moderation>,
    blacklist: Option<Arc<Blacklist>>,
) -> Option<Arc<AdminState>> {
    let directory = directory.filter(|_| config.roles.admin)?;
    Some(Arc::new(AdminState {
        verifier,
        broker: shared
            .metrics
            .metered(shared.broker.clone(), Some(PublishedKind::Admin)),
        directory: directory.clone(),
        limits,
        metrics: shared.metrics.clone(),
        blacklist,
        moderation,
    }))
}

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No token, or not in a form this API reads.
    #[error("{0}")]
    MissingToken(String),
    /// Malformed, badly signed, wrong algorithm, not an admin token.
    #[error("{0}")]
    BadToken(String),
    #[error("{0}")]
    TokenExpired(String),
    /// The request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    #[error("send the body as application/json (or with curl --data, or as a token in the body)")]
    UnsupportedMediaType,
    #[error("{0}")]
    NotFound(String),
    /// The admin key is not configured.
    #[error(
        "the admin API is off: set admin.public_key_file to the public key that signs admin \
         tokens"
    )]
    Disabled,
    /// The broker (Redis) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken(_) => "missing_token",
            Self::BadToken(_) => "bad_token",
            Self::TokenExpired(_) => "token_expired",
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::Disabled => "admin_disabled",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken(_) | Self::BadToken(_) | Self::TokenExpired(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Disabled | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<BrokerError> for AdminError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(m) => Self::Unavailable(m),
            BrokerError::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(_) => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<BadChannelPath> for AdminError {
    fn from(e: BadChannelPath) -> Self {
        Self::BadRequest(match e {
            BadChannelPath::Unreadable(e) => format!("cannot read the channel in the URL: {e}"),
            BadChannelPath::Invalid { channel, reason } => format!("channel {channel:?}: {reason}"),
        })
    }
}

impl From<BadQuery> for AdminError {
    fn from(e: BadQuery) -> Self {
        Self::BadRequest(e.0)
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        ApiError::new(e.status(), e.code(), e.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Ends JSON answers with a newline, so that in a terminal `curl` leaves the prompt on a
/// line of its own.
pub async fn end_with_newline(response: Response) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let mut text = Vec::with_capacity(bytes.len() + 1);
            text.extend_from_slice(&bytes);
            text.push(b'\n');
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(text))
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
