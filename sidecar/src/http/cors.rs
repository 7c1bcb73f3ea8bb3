//! CORS of the dispatcher's public endpoints (`dispatch.cors_origins`), by tower-http:
//! empty sends no CORS header; `*` allows any origin; otherwise a listed `Origin` (compared
//! without regard to case) is echoed, always with `Vary: Origin`. The preflight of
//! `POST /join/<ch>` allows `Content-Type: application/json`.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The methods a preflight allows, written as the dispatcher always has.
const ALLOWED_METHODS: &str = "POST, OPTIONS";

/// The CORS layer for `dispatch.cors_origins`. Empty, it adds nothing, and a preflight is
/// answered without any CORS header.
pub fn layer(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new().vary(Vec::<HeaderName>::new());
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE);
    if origins.iter().any(|o| o == "*") {
        // The answer is the same for every origin: nothing to vary on.
        return layer
            .allow_origin(AllowOrigin::any())
            .vary(Vec::<HeaderName>::new());
    }
    let listed = origins.to_vec();
    layer
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin
                .to_str()
                .is_ok_and(|o| listed.iter().any(|a| a.eq_ignore_ascii_case(o)))
        }))
        .vary([header::ORIGIN])
}

/// Wraps the CORS layer of `/join`, whose preflight answer stays what clients have always
/// had: 204 No Content (tower-http answers 200) and the methods as `POST, OPTIONS`.
pub async fn preflight_answer(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        if headers.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS) {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
        }
    }
    response
}
