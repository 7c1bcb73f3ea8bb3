//! The one catalog of why a publish is refused: an [`ErrorCode`] for programs (sent as
//! `code` in HTTP answers and `/pub` error frames) with its HTTP status, and a
//! [`PublishError`] that carries it with a message for people. Every step of the publish
//! path (the checks in [`crate::host::publish`], the plugins, moderation, the broker)
//! refuses with it, and the metrics count refusals by its code. WebSocket close codes are
//! the other half of what tells a client whether to retry: [`chatup_wire::close`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::broker::BrokerError;
use crate::http::channel::BadChannelPath;
use crate::http::error::ApiError;
use crate::jwt::AuthError;

/// The error codes publishers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadToken,
    TokenExpired,
    BadRequest,
    BadChannel,
    Empty,
    TooLong,
    InvalidUtf8,
    EventsNotAllowed,
    UnsupportedMediaType,
    BadIdempotencyKey,
    TooManyChannels,
    /// A `join` of a channel that is another user's own (`user.{sub}` in `private.channels`).
    Forbidden,
    Banned,
    RateLimited,
    Blacklisted,
    Rejected,
    HookUnavailable,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadToken => "bad_token",
            Self::TokenExpired => "token_expired",
            Self::BadRequest => "bad_request",
            Self::BadChannel => "bad_channel",
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::EventsNotAllowed => "events_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadIdempotencyKey => "bad_idempotency_key",
            Self::TooManyChannels => "too_many_channels",
            Self::Forbidden => "forbidden",
            Self::Banned => "banned",
            Self::RateLimited => "rate_limited",
            Self::Blacklisted => "blacklisted",
            Self::Rejected => "rejected",
            Self::HookUnavailable => "hook_unavailable",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of `POST /pub/<ch>` for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadToken | Self::TokenExpired => StatusCode::UNAUTHORIZED,
            Self::BadRequest
            | Self::BadChannel
            | Self::Empty
            | Self::InvalidUtf8
            | Self::BadIdempotencyKey
            | Self::TooManyChannels => StatusCode::BAD_REQUEST,
            Self::EventsNotAllowed | Self::Forbidden | Self::Banned | Self::Rejected => {
                StatusCode::FORBIDDEN
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Blacklisted => StatusCode::UNPROCESSABLE_ENTITY,
            Self::HookUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A refused publish: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct PublishError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which the same publish may succeed (rate limit), sent as
    /// `Retry-After` / `retryAfter`.
    pub retry_after: Option<u64>,
    /// For `banned`: the ban, whose end is sent as `until` (ms since the Unix epoch, `null`
    /// for ever) so that clients know when they may publish again.
    pub ban: Option<crate::moderation::Ban>,
}

impl PublishError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            ban: None,
        }
    }

    /// The same error, telling the publisher when to try again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The same error, telling the publisher when its ban ends.
    pub fn ban(mut self, ban: crate::moderation::Ban) -> Self {
        self.ban = Some(ban);
        self
    }

    /// The ban behind a `banned` error, sent as its end (`until`); none for other errors.
    pub fn until(&self) -> Option<crate::moderation::Ban> {
        self.ban
    }
}

impl From<&AuthError> for ErrorCode {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::BadToken(_) => ErrorCode::BadToken,
            AuthError::Expired(_) => ErrorCode::TokenExpired,
        }
    }
}

impl From<AuthError> for PublishError {
    fn from(e: AuthError) -> Self {
        Self::new(ErrorCode::from(&e), e.to_string())
    }
}

impl From<BrokerError> for PublishError {
    fn from(e: BrokerError) -> Self {
        let code = match e {
            BrokerError::Unavailable(_) => ErrorCode::Unavailable,
            BrokerError::Internal(_) => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<BadChannelPath> for PublishError {
    fn from(e: BadChannelPath) -> Self {
        let message = match e {
            BadChannelPath::Unreadable(e) => format!("bad channel in the URL: {e}"),
            BadChannelPath::Invalid { reason, .. } => reason,
        };
        PublishError::new(ErrorCode::BadChannel, message)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError {
            until: e.until(),
            retry_after: e.retry_after,
            ..ApiError::new(e.code.status(), e.code.as_str(), e.message)
        }
    }
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
