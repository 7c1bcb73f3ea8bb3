//! `POST /pub/<ch>`: publish one message with `Authorization: Bearer <jwt>`.
//!
//! A `text/plain` body is the message text; an `application/json` body is `{"msg": ..}` or
//! `{"ev": .., "data": ..}`. Success is `200 {"ch":..,"id":..,"ep":..}`; errors are
//! `{"error":{"code":..,"message":..}}` with the status of their code.
//!
//! An `Idempotency-Key: <key>` header makes retrying safe ([`super::idempotency`]): a
//! retry within the window answers `200 {"ch":..,"id":..,"ep":..,"duplicate":true}` with
//! the first message's id and publishes nothing.
//!
//! Two ways lead here: this route ([`publish`]), for callers of the sidecar's HTTP port,
//! and an nginx worker's relay connection (`chatup_publish` locations: the worker reads the
//! request and sends it in a `Publish` frame, `host/relay/connection.rs`). Both hand the
//! same [`PostRequest`] to [`answer`] and send back what it says.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, Instrument};

use super::idempotency::check_key;
use super::{body_from_json, ErrorCode, Outcome, PublishError, Receipt};
use crate::host::publish::App;
use crate::http::channel::ChannelPath;
use crate::http::error::ApiError;
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

/// A `POST /pub/<ch>` as the publish checks read it, whether it came to the HTTP route or
/// through an nginx worker's relay connection (`chatup_publish`): the header values are
/// raw bytes, judged here alone.
pub struct PostRequest<'a> {
    /// The channel of the path, checked (or why it is refused).
    pub channel: Result<String, PublishError>,
    /// The `Authorization` header.
    pub authorization: Option<&'a [u8]>,
    /// The `Content-Type` header.
    pub content_type: Option<&'a [u8]>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<&'a [u8]>,
    /// The body; `None` when it could not be read within the publisher's limit
    /// ([`crate::message::Limits::max_request_bytes`]).
    pub body: Option<Bytes>,
}

/// The answer to a [`PostRequest`]: its status, the headers beyond its type (always
/// `application/json`) and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostAnswer {
    pub status: StatusCode,
    /// `Retry-After`, `WWW-Authenticate`, when the error calls for them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl IntoResponse for PostAnswer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// The HTTP route.
pub async fn publish(
    State(app): State<Arc<App>>,
    channel: Result<ChannelPath<PublishError>, PublishError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let header = |name| headers.get(name).map(HeaderValue::as_bytes);
    let request = PostRequest {
        channel: channel.map(|ChannelPath(channel, ..)| channel),
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        idempotency_key: header(HeaderName::from_static(IDEMPOTENCY_KEY)),
        // The route's body limit is the publisher's (`http::routes`).
        body: body.ok(),
    };
    answer(&app, request).await.into_response()
}

/// Checks and publishes one `POST /pub/<ch>`, and says how to answer it.
pub async fn answer(app: &App, request: PostRequest<'_>) -> PostAnswer {
    let span = tracing::info_span!(
        "publish",
        channel = tracing::field::Empty,
        sub = tracing::field::Empty
    );
    if let Ok(channel) = &request.channel {
        span.record("channel", channel.as_str());
    }
    async move {
        match handle(app, request).await {
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
                let accepted = Accepted {
                    ch: &channel,
                    receipt,
                };
                PostAnswer {
                    status,
                    headers: Vec::new(),
                    body: json(&accepted),
                }
            }
            Err(e) => {
                debug!(code = e.code.as_str(), "publish refused: {}", e.message);
                refusal(e)
            }
        }
    }
    .instrument(span)
    .await
}

/// The answer to a refused publish.
pub fn refusal(e: PublishError) -> PostAnswer {
    let error = ApiError::from(e);
    PostAnswer {
        status: error.status,
        headers: error.headers(),
        body: json(&error.body()),
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    // Plain structs of strings and numbers: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

async fn handle(app: &App, request: PostRequest<'_>) -> Result<(String, Outcome), PublishError> {
    let identity = bearer_token(request.authorization)
        .and_then(|token| Ok(app.publisher.verifier().verify(token)?))
        .inspect_err(|e| app.publisher.count_refusal(e.code))?;
    if let Some(sub) = &identity.sub {
        tracing::Span::current().record("sub", sub.as_str());
    }
    // Checked once the token is: a request without a good token learns nothing more.
    let channel = request.channel?;
    let key = idempotency_key(request.idempotency_key)?;

    let kind = content_kind(request.content_type)?;
    let limit = app.publisher.limits().max_request_bytes();
    let bytes = request.body.ok_or_else(|| {
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

/// A header value as text, under the rule of `HeaderValue::to_str`: visible ASCII and tabs
/// only.
fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The `Idempotency-Key` header, if any (checked by the publisher; unreadable bytes are a
/// bad key here).
fn idempotency_key(value: Option<&[u8]>) -> Result<Option<&str>, PublishError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let key = header_text(value).ok_or_else(|| {
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

fn content_kind(value: Option<&[u8]>) -> Result<ContentKind, PublishError> {
    let unsupported = |what: &str| {
        PublishError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be text/plain (or none) or application/json, not {what}"),
        )
    };
    // No type, or the form type `curl --data` sends, is taken as the raw text it is.
    let Some(value) = value else {
        return Ok(ContentKind::Text);
    };
    let value = header_text(value).ok_or_else(|| unsupported("unreadable"))?;
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

fn bearer_token(value: Option<&[u8]>) -> Result<&str, PublishError> {
    let missing = || {
        PublishError::new(
            ErrorCode::BadToken,
            "missing \"Authorization: Bearer <token>\" header",
        )
    };
    let value = header_text(value.ok_or_else(missing)?)
        .ok_or_else(missing)?
        .trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_reads_values_as_header_value_does() {
        for b in 0..=255u8 {
            let raw = [b'a', b, b'z'];
            let expected = HeaderValue::from_bytes(&raw)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(header_text(&raw).map(str::to_owned), expected, "byte {b}");
        }
    }

    #[test]
    fn the_header_checks_read_raw_bytes() {
        assert_eq!(bearer_token(Some(b"Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some(b"bearer  a.b.c ")), Ok("a.b.c"));
        for bad in [&b"Basic x"[..], b"Bearer\xff x", b"token"] {
            assert_eq!(
                bearer_token(Some(bad)).map_err(|e| e.code),
                Err(ErrorCode::BadToken)
            );
        }
        assert_eq!(
            bearer_token(None).map_err(|e| e.code),
            Err(ErrorCode::BadToken)
        );
        assert!(matches!(content_kind(None), Ok(ContentKind::Text)));
        assert!(matches!(
            content_kind(Some(b"application/json; charset=UTF-8")),
            Ok(ContentKind::Json)
        ));
        assert_eq!(
            content_kind(Some(b"text/plain\xe9")).err().map(|e| e.code),
            Some(ErrorCode::UnsupportedMediaType)
        );
        assert_eq!(idempotency_key(None), Ok(None));
        assert_eq!(idempotency_key(Some(b"k-1")), Ok(Some("k-1")));
        assert_eq!(
            idempotency_key(Some(b"k\xff")).map_err(|e| e.code),
            Err(ErrorCode::BadIdempotencyKey)
        );
    }
}
