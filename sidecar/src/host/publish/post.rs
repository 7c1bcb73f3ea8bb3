//! `POST /pub/<ch>`: publish one message with `Authorization: Bearer <jwt>`.
//!
//! A `text/plain` body is the message text; an `application/json` body is `{"msg": ..}` or
//! `{"ev": .., "data": ..}`. Success is `200 {"ch":..,"id":..,"ep":..}`; errors are
//! `{"error":{"code":..,"message":..}}` with the status of their code.
//!
//! An `Idempotency-Key: <key>` header makes retrying safe ([`super::idempotency`]): a
//! retry within the window answers `200 {"ch":..,"id":..,"ep":..,"duplicate":true}` with
//! the first message's id and publishes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, Instrument};

use super::idempotency::check_key;
use super::{body_from_json, ErrorCode, Outcome, PublishError, Receipt};
use crate::host::publish::App;
use crate::http::channel::ChannelPath;
use crate::message::Body;

/// The request header naming a publish, as in the IETF draft "The Idempotency-Key HTTP
/// Header Field".
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Serialize)]
struct Accepted<'a> {
    ch: &'a str,
    #[serde(flatten)]
    receipt: Receipt,
}

pub async fn publish(
    State(app): State<Arc<App>>,
    channel: Result<ChannelPath<PublishError>, PublishError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!(
        "publish",
        channel = tracing::field::Empty,
        sub = tracing::field::Empty
    );
    if let Ok(ChannelPath(channel, ..)) = &channel {
        span.record("channel", channel.as_str());
    }
    async move {
        match handle(&app, channel, &headers, body).await {
            Ok((channel, outcome)) => {
                let status = match &outcome {
                    Outcome::Published(published) => {
                        debug!(id = published.id, "published");
                        StatusCode::OK
                    }
                    Outcome::Withheld => {
                        debug!("accepted, withheld");
                        StatusCode::ACCEPTED
                    }
                    Outcome::Repeat(first) => {
                        debug!(id = first.id, "a retry of a publish already made");
                        StatusCode::OK
                    }
                };
                let receipt = Receipt::from(&outcome);
                (
                    status,
                    Json(Accepted {
                        ch: &channel,
                        receipt,
                    }),
                )
                    .into_response()
            }
            Err(e) => {
                debug!(code = e.code.as_str(), "publish refused: {}", e.message);
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn handle(
    app: &App,
    channel: Result<ChannelPath<PublishError>, PublishError>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, Outcome), PublishError> {
    let identity = bearer_token(headers)
        .and_then(|token| Ok(app.publisher.verifier().verify(token)?))
        .inspect_err(|e| app.publisher.count_refusal(e.code))?;
    if let Some(sub) = &identity.sub {
        tracing::Span::current().record("sub", sub.as_str());
    }
    // Checked once the token is: a request without a good token learns nothing more.
    let ChannelPath(channel, ..) = channel?;
    let key = idempotency_key(headers)?;

    let kind = content_kind(headers)?;
    let limit = app.publisher.limits().max_request_bytes();
    // The route's body limit is this one (`http::routes`).
    let bytes = body.map_err(|_| {
        PublishError::new(
            ErrorCode::TooLong,
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        PublishError::new(
            ErrorCode::InvalidUtf8,
            format!("the body is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    let body = match kind {
        ContentKind::Text => Body::Text(text.to_owned()),
        ContentKind::Json => {
            let value: Value = serde_json::from_str(text).map_err(|e| {
                PublishError::new(ErrorCode::BadRequest, format!("the body is not JSON: {e}"))
            })?;
            let Value::Object(object) = value else {
                return Err(PublishError::new(
                    ErrorCode::BadRequest,
                    "the JSON body must be an object: {\"msg\": ..} or {\"ev\": .., \"data\": ..}",
                ));
            };
            body_from_json(&object)?
        }
    };
    let outcome = app
        .publisher
        .publish_keyed(&identity, &channel, body, key)
        .await?;
    Ok((channel, outcome))
}

/// The `Idempotency-Key` header, if any (checked by the publisher; unreadable bytes are a
/// bad key here).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, PublishError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        PublishError::new(
            ErrorCode::BadIdempotencyKey,
            "the Idempotency-Key header is not ASCII",
        )
    })?;
    check_key(key)?;
    Ok(Some(key))
}

enum ContentKind {
    Text,
    Json,
}

fn content_kind(headers: &HeaderMap) -> Result<ContentKind, PublishError> {
    let unsupported = |what: &str| {
        PublishError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be text/plain (or none) or application/json, not {what}"),
        )
    };
    // No type, or the form type `curl --data` sends, is taken as the raw text it is.
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(ContentKind::Text);
    };
    let value = value.to_str().map_err(|_| unsupported("unreadable"))?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if !charset_ok {
        return Err(PublishError::new(
            ErrorCode::UnsupportedMediaType,
            format!("only UTF-8 bodies are accepted, not {value}"),
        ));
    }
    match essence.as_str() {
        "text/plain" | "application/x-www-form-urlencoded" => Ok(ContentKind::Text),
        "application/json" => Ok(ContentKind::Json),
        _ => Err(unsupported(value)),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, PublishError> {
    let missing = || {
        PublishError::new(
            ErrorCode::BadToken,
            "missing \"Authorization: Bearer <token>\" header",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?
        .trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(missing()),
    }
}
