//! `GET /health`: whether this process can do its job, for load balancers, orchestrators
//! and operators. No token: it tells nothing secret.
//!
//! ```json
//! {"status":"ok","host":"chat1","roles":["worker","dispatcher","admin"],"broker":"redis"}
//! ```
//!
//! With Redis, every call checks it with a `PING` bounded by `redis.timeout_ms`: without
//! Redis nothing can be published, dispatched or counted, so the answer is then 503
//! `{"status":"unavailable", .., "reason": ".."}` (with `Retry-After: 1`), and a load
//! balancer stops sending clients here until Redis answers again. The memory broker lives
//! in this process: it is healthy whenever this answers at all.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tracing::debug;

use crate::cluster::redis::RedisLink;

/// What `/health` reports and checks.
pub struct Health {
    /// The roles this process serves (`worker`, `dispatcher`, `admin`); the chat-host role
    /// (`roles.chat_host`) keeps the name `worker` here, which monitors match on.
    pub roles: Vec<&'static str>,
    /// The broker's name (`memory`, `redis`).
    pub broker: &'static str,
    /// This host's id (`host.id`, or its default).
    pub host: String,
    /// The Redis connection to check; `None` with the memory broker.
    pub redis: Option<RedisLink>,
}

#[derive(Serialize)]
struct Report<'a> {
    status: &'static str,
    host: &'a str,
    roles: &'a [&'static str],
    broker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /health`.
pub async fn check(State(health): State<Arc<Health>>) -> Response {
    let reason = match &health.redis {
        Some(link) => match link.run::<redis::Value>(redis::cmd("PING")).await {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        },
        None => None,
    };
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    if let Some(reason) = &reason {
        debug!("health check failed: {reason}");
    }
    let report = Report {
        status: if reason.is_some() {
            "unavailable"
        } else {
            "ok"
        },
        host: &health.host,
        roles: &health.roles,
        broker: health.broker,
        reason,
    };
    let mut response = (status, Json(report)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
