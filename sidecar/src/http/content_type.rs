//! Which request bodies are read as JSON, the same rule for every endpoint that takes one.

use axum::http::{header, HeaderMap};

/// Whether the body may be read as JSON: `application/json`, no type, or the types `curl
/// --data`, plain-text clients and JWT tools send. Anything else is refused by the caller
/// with 415.
pub fn reads_as_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json" | "application/x-www-form-urlencoded" | "text/plain" | "application/jwt"
    )
}
