//! The one error answer of every HTTP endpoint: `{"error":{"code":..,"message":..}}` with
//! the status of its code, built here and nowhere else. Each role's error type
//! ([`crate::admin::AdminError`], [`crate::dispatcher::join::DispatchError`],
//! [`crate::host::demo::DemoError`], [`crate::publish_error::PublishError`]) converts into
//! [`ApiError`], which says what goes with it (`Retry-After`, `until`, `WWW-Authenticate`).

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::moderation::Ban;

/// `{"error":{"code":..,"message":..}}`, the body of HTTP errors.
#[derive(Serialize)]
pub struct HttpErrorBody<'a> {
    pub error: HttpError<'a>,
}

#[derive(Serialize)]
pub struct HttpError<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// For `banned`: when the ban ends (ms since the Unix epoch; `null`: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Ban>,
}

/// A refused request, as every endpoint answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// For programs: `bad_request`, `bad_channel`, ...
    pub code: &'static str,
    /// For people: what was wrong and what to do.
    pub message: String,
    /// Seconds after which trying again may succeed, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// For `banned`: the ban, whose end is sent as `until`.
    pub until: Option<Ban>,
    /// Sends `WWW-Authenticate: Bearer`, as a 401 must.
    pub www_authenticate: bool,
}

impl ApiError {
    /// An error with nothing more than its status, code and message; a 401 asks for a
    /// Bearer token.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            until: None,
            www_authenticate: status == StatusCode::UNAUTHORIZED,
        }
    }

    /// The same error, saying to try again in `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl ApiError {
    /// The headers that go with the error besides its JSON type: `Retry-After`,
    /// `WWW-Authenticate`.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if let Some(seconds) = self.retry_after {
            headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        if self.www_authenticate {
            headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        headers
    }

    /// The JSON body, `{"error":{"code":..,"message":..}}`.
    pub fn body(&self) -> HttpErrorBody<'_> {
        HttpErrorBody {
            error: HttpError {
                code: self.code,
                message: &self.message,
                until: self.until,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response.headers_mut().extend(self.headers());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (Response, serde_json::Value) {
        let response = e.into_response();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 4096).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap();
        (Response::from_parts(parts, axum::body::Body::empty()), json)
    }

    #[tokio::test]
    async fn the_body_and_headers_follow_the_error() {
        let (r, body) = answer(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "no")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "bad_request", "message": "no"}})
        );
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert!(r.headers().get(header::RETRY_AFTER).is_none());

        let (r, _) = answer(ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", "who?")).await;
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");

        let busy = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "later");
        let (r, _) = answer(busy.retry_after(1)).await;
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
