//! The `publish_hook` plugin: the operator's backend sees every message before it is
//! published and accepts, rejects or rewrites it.
//!
//! The sidecar POSTs JSON to `publish_hook.url`:
//!
//! ```json
//! {"channel": "room", "user": {"name": "ann"}, "sub": "u1", "msg": "hello"}
//! {"channel": "room", "user": {"name": "ann"}, "sub": "u1", "ev": "typing", "data": {..}}
//! ```
//!
//! (`user` is the token's `_public` claim, `sub` its `sub` or null, `data` null when the
//! event has none.) The backend answers:
//!
//! * `204`, or `200` with `{"action": "accept"}`: published as is;
//! * `{"action": "reject", "message": "why"}`: refused with `rejected` and that message
//!   (at most [`MAX_REJECT_CHARS`] characters are passed on);
//! * `{"action": "rewrite", "msg": "new text"}` (or `"data": ..` for an event): published
//!   with the new body, which obeys the usual limits (`limits.max_message_chars`, not empty;
//!   `limits.max_event_bytes`).
//!
//! Anything else is a failure of the backend: no answer within `publish_hook.timeout_ms`,
//! a refused connection, a non-2xx status, an answer that is not such JSON, an unknown
//! action, an unusable rewrite. Then `publish_hook.fail_open = true` publishes the message
//! unchanged, `false` refuses it with `hook_unavailable`; either way a warning is logged (at
//! most one per [`LOG_EVERY`]). One HTTP client is kept, so connections to the backend are
//! reused.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tracing::warn;

use super::outbound;
use super::throttle::Throttle;
use super::{Draft, Plugin, PluginSetupError};
use crate::config::{LimitsConfig, PublishHookConfig};
use crate::message::Body;
use crate::publish_error::{ErrorCode, PublishError};

/// Longest reject message passed on to the publisher, in characters.
pub const MAX_REJECT_CHARS: usize = 300;
/// What the publisher is told when the backend rejects without a message.
pub const DEFAULT_REJECTION: &str = "the message was refused";
/// What the publisher is told when the backend fails and `fail_open` is false.
pub const UNAVAILABLE: &str = "the message could not be checked right now; try again later";
/// At most one warning about a failing backend per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the backend decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept,
    /// Refuse, with this message for the publisher.
    Reject(String),
    /// Publish this body instead.
    Rewrite(Body),
}

/// How the backend failed to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("the request failed: {0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not a JSON object with an \"action\": {0}")]
    BadAnswer(String),
    #[error("unknown action {0:?} (expected accept, reject or rewrite)")]
    UnknownAction(String),
    #[error("unusable rewrite: {0}")]
    BadRewrite(String),
}

/// The limits a rewritten body must obey.
#[derive(Debug, Clone, Copy)]
pub struct RewriteLimits {
    pub max_message_chars: usize,
    pub max_event_bytes: usize,
}

/// The plugin.
pub struct PublishHook {
    /// Reused for every call (keep-alive to the backend).
    client: reqwest::Client,
    url: reqwest::Url,
    /// `publish_hook.timeout_ms`, also bounding the read of the answer.
    timeout: Duration,
    /// `publish_hook.fail_open`.
    fail_open: bool,
    /// What a rewrite must obey.
    limits: RewriteLimits,
    /// Largest answer read; a longer one is a failure.
    answer_limit: usize,
    /// Paces the warning about a failing backend.
    failure_log: Throttle,
}

impl PublishHook {
    pub fn new(
        config: &PublishHookConfig,
        limits: &LimitsConfig,
    ) -> Result<Self, PluginSetupError> {
        let setup_error = |message: String| PluginSetupError::Plugin {
            name: "publish_hook",
            message,
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = outbound::client(timeout)
            .map_err(|e| setup_error(format!("cannot build the HTTP client: {e}")))?;
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| setup_error(format!("publish_hook.url is not a valid URL: {e}")))?;
        let limits = RewriteLimits {
            max_message_chars: limits.max_message_chars,
            max_event_bytes: limits.max_event_bytes,
        };
        // Room for the longest text fully escaped, or the largest event, and the envelope.
        let answer_limit = limits
            .max_message_chars
            .saturating_mul(6)
            .max(limits.max_event_bytes)
            .saturating_add(64 * 1024);
        tracing::info!(
            url = %url.origin().ascii_serialization(),
            timeout_ms = config.timeout_ms,
            fail_open = config.fail_open,
            "publish hook ready"
        );
        Ok(Self {
            client,
            url,
            timeout,
            fail_open: config.fail_open,
            limits,
            answer_limit,
            failure_log: Throttle::new(LOG_EVERY),
        })
    }

    /// Asks the backend about `draft`.
    async fn ask(&self, draft: &Draft<'_>) -> Result<Verdict, HookFailure> {
        let request = request_body(draft);
        let call = async {
            let mut answer = self
                .client
                .post(self.url.clone())
                .json(&request)
                .send()
                .await
                .map_err(|e| self.failure(e))?;
            let status = answer.status().as_u16();
            if status == 204 {
                return Ok(Verdict::Accept);
            }
            if !answer.status().is_success() {
                return Err(HookFailure::Status(status));
            }
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await.map_err(|e| self.failure(e))? {
                if body.len() + chunk.len() > self.answer_limit {
                    return Err(HookFailure::TooLarge(self.answer_limit));
                }
                body.extend_from_slice(&chunk);
            }
            parse_answer(status, &body, &draft.body, self.limits)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(HookFailure::Timeout(self.timeout.as_millis() as u64)))
    }

    fn failure(&self, e: reqwest::Error) -> HookFailure {
        if e.is_timeout() {
            HookFailure::Timeout(self.timeout.as_millis() as u64)
        } else {
            HookFailure::Request(error_chain(&e.without_url()))
        }
    }
}

#[async_trait]
impl Plugin for PublishHook {
    fn name(&self) -> &'static str {
        "publish_hook"
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        match self.ask(draft).await {
            Ok(Verdict::Accept) => Ok(()),
            Ok(Verdict::Reject(message)) => Err(PublishError::new(ErrorCode::Rejected, message)),
            Ok(Verdict::Rewrite(body)) => {
                draft.body = body;
                Ok(())
            }
            Err(failure) => {
                if let Some(held) = self.failure_log.allow() {
                    warn!(
                        channel = draft.channel,
                        held_back = held,
                        "publish hook failed: {failure}; {}",
                        if self.fail_open {
                            "publishing unchanged (publish_hook.fail_open)"
                        } else {
                            "refusing with hook_unavailable"
                        }
                    );
                }
                if self.fail_open {
                    Ok(())
                } else {
                    Err(PublishError::new(ErrorCode::HookUnavailable, UNAVAILABLE))
                }
            }
        }
    }
}

/// `e` and its causes (reqwest's own message is often just "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The JSON sent to the backend for `draft`.
pub fn request_body(draft: &Draft<'_>) -> Value {
    let user: Value = serde_json::from_str(&draft.identity.user).unwrap_or_else(|_| json!({}));
    let mut request = json!({
        "channel": draft.channel,
        "user": user,
        "sub": draft.identity.sub,
    });
    match &draft.body {
        Body::Text(text) => request["msg"] = json!(text),
        Body::Event { name, data } => {
            request["ev"] = json!(name);
            request["data"] = data.clone().unwrap_or(Value::Null);
        }
    }
    request
}

/// Reads the backend's answer to a request about `body`.
pub fn parse_answer(
    status: u16,
    answer: &[u8],
    body: &Body,
    limits: RewriteLimits,
) -> Result<Verdict, HookFailure> {
    if status == 204 {
        return Ok(Verdict::Accept);
    }
    if !(200..300).contains(&status) {
        return Err(HookFailure::Status(status));
    }
    let answer: Map<String, Value> =
        serde_json::from_slice(answer).map_err(|e| HookFailure::BadAnswer(e.to_string()))?;
    let action = match answer.get("action") {
        Some(Value::String(action)) => action.as_str(),
        Some(_) => return Err(HookFailure::BadAnswer("\"action\" is not a string".into())),
        None => return Err(HookFailure::BadAnswer("\"action\" is missing".into())),
    };
    match action {
        "accept" => Ok(Verdict::Accept),
        "reject" => {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .unwrap_or(DEFAULT_REJECTION);
            Ok(Verdict::Reject(bounded(message, MAX_REJECT_CHARS)))
        }
        "rewrite" => rewrite(&answer, body, limits).map(Verdict::Rewrite),
        other => Err(HookFailure::UnknownAction(bounded(other, 40))),
    }
}

/// The new body of a rewrite, checked like a publisher's.
fn rewrite(
    answer: &Map<String, Value>,
    body: &Body,
    limits: RewriteLimits,
) -> Result<Body, HookFailure> {
    let bad = |m: String| Err(HookFailure::BadRewrite(m));
    match body {
        Body::Text(_) => match answer.get("msg") {
            Some(Value::String(text)) => {
                if text.trim().is_empty() {
                    return bad("\"msg\" is empty".into());
                }
                let chars = text.chars().count();
                if chars > limits.max_message_chars {
                    return bad(format!(
                        "\"msg\" is {chars} characters long; limits.max_message_chars is {}",
                        limits.max_message_chars
                    ));
                }
                Ok(Body::Text(text.clone()))
            }
            _ => bad("a rewrite of a message needs \"msg\", a string".into()),
        },
        Body::Event { name, .. } => match answer.get("data") {
            Some(data) => {
                let size = serde_json::to_vec(data).map(|v| v.len()).unwrap_or(0);
                if size > limits.max_event_bytes {
                    return bad(format!(
                        "\"data\" is {size} bytes long; limits.max_event_bytes is {}",
                        limits.max_event_bytes
                    ));
                }
                Ok(Body::Event {
                    name: name.clone(),
                    data: (!data.is_null()).then(|| data.clone()),
                })
            }
            None => bad("a rewrite of an event needs \"data\"".into()),
        },
    }
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{good_claims, sign, verifier};

    const LIMITS: RewriteLimits = RewriteLimits {
        max_message_chars: 10,
        max_event_bytes: 16,
    };

    fn text(t: &str) -> Body {
        Body::Text(t.into())
    }

    fn event() -> Body {
        Body::Event {
            name: "typing".into(),
            data: Some(json!({"on": true})),
        }
    }

    fn parse(status: u16, answer: &str, body: &Body) -> Result<Verdict, HookFailure> {
        parse_answer(status, answer.as_bytes(), body, LIMITS)
    }

    #[test]
    fn accept() {
        assert_eq!(parse(204, "", &text("hi")), Ok(Verdict::Accept));
        assert_eq!(parse(204, "garbage", &text("hi")), Ok(Verdict::Accept));
        assert_eq!(
            parse(200, r#"{"action":"accept"}"#, &text("hi")),
            Ok(Verdict::Accept)
        );
        assert_eq!(
            parse(200, r#"{"action":"accept","extra":1}"#, &event()),
            Ok(Verdict::Accept)
        );
    }

    #[test]
    fn reject_with_a_bounded_message() {
        assert_eq!(
            parse(
                200,
                r#"{"action":"reject","message":" no links "}"#,
                &text("hi")
            ),
            Ok(Verdict::Reject("no links".into()))
        );
        assert_eq!(
            parse(200, r#"{"action":"reject"}"#, &text("hi")),
            Ok(Verdict::Reject(DEFAULT_REJECTION.into()))
        );
        assert_eq!(
            parse(200, r#"{"action":"reject","message":7}"#, &text("hi")),
            Ok(Verdict::Reject(DEFAULT_REJECTION.into()))
        );
        let long = "é".repeat(1000);
        let answer = json!({"action": "reject", "message": long}).to_string();
        let Ok(Verdict::Reject(message)) = parse(200, &answer, &text("hi")) else {
            panic!("not a rejection");
        };
        assert_eq!(message.chars().count(), MAX_REJECT_CHARS);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn rewrite_of_a_message_obeys_the_limits() {
        assert_eq!(
            parse(200, r#"{"action":"rewrite","msg":"héllo"}"#, &text("hi")),
            Ok(Verdict::Rewrite(text("héllo")))
        );
        assert_eq!(
            parse(
                200,
                r#"{"action":"rewrite","msg":"0123456789"}"#,
                &text("hi")
            ),
            Ok(Verdict::Rewrite(text("0123456789")))
        );
        for (answer, needle) in [
            (
                r#"{"action":"rewrite","msg":"01234567890"}"#,
                "11 characters",
            ),
            (r#"{"action":"rewrite","msg":"  "}"#, "empty"),
            (r#"{"action":"rewrite","msg":5}"#, "needs \"msg\""),
            (r#"{"action":"rewrite","data":{}}"#, "needs \"msg\""),
        ] {
            let err = parse(200, answer, &text("hi")).unwrap_err();
            assert!(matches!(err, HookFailure::BadRewrite(_)), "{answer}: {err}");
            assert!(err.to_string().contains(needle), "{answer}: {err}");
        }
    }

    #[test]
    fn rewrite_of_an_event_replaces_its_data() {
        assert_eq!(
            parse(200, r#"{"action":"rewrite","data":[1,2]}"#, &event()),
            Ok(Verdict::Rewrite(Body::Event {
                name: "typing".into(),
                data: Some(json!([1, 2]))
            }))
        );
        assert_eq!(
            parse(200, r#"{"action":"rewrite","data":null}"#, &event()),
            Ok(Verdict::Rewrite(Body::Event {
                name: "typing".into(),
                data: None
            }))
        );
        let err = parse(200, r#"{"action":"rewrite","msg":"x"}"#, &event()).unwrap_err();
        assert!(err.to_string().contains("needs \"data\""), "{err}");
        let err = parse(
            200,
            r#"{"action":"rewrite","data":"0123456789abcdef"}"#,
            &event(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("18 bytes"), "{err}");
    }

    #[test]
    fn anything_else_is_a_failure() {
        assert_eq!(parse(500, "", &text("hi")), Err(HookFailure::Status(500)));
        assert_eq!(
            parse(404, r#"{"action":"accept"}"#, &text("hi")),
            Err(HookFailure::Status(404))
        );
        assert_eq!(
            parse(302, r#"{"action":"accept"}"#, &text("hi")),
            Err(HookFailure::Status(302))
        );
        for answer in ["", "ok", "[]", r#"{"verdict":"accept"}"#, r#"{"action":1}"#] {
            assert!(
                matches!(
                    parse(200, answer, &text("hi")),
                    Err(HookFailure::BadAnswer(_))
                ),
                "{answer:?}"
            );
        }
        assert_eq!(
            parse(200, r#"{"action":"allow"}"#, &text("hi")),
            Err(HookFailure::UnknownAction("allow".into()))
        );
    }

    #[test]
    fn the_request_carries_channel_user_sub_and_body() {
        let identity = verifier().verify(&sign(&good_claims())).unwrap();
        let user: Value = serde_json::from_str(&identity.user).unwrap();
        let draft = Draft::new(&identity, "room", text("hi"));
        assert_eq!(
            request_body(&draft),
            json!({"channel": "room", "user": user, "sub": identity.sub, "msg": "hi"})
        );
        let draft = Draft::new(&identity, "room", event());
        assert_eq!(
            request_body(&draft),
            json!({"channel": "room", "user": user, "sub": identity.sub, "ev": "typing",
                   "data": {"on": true}})
        );
        let draft = Draft::new(
            &identity,
            "room",
            Body::Event {
                name: "ping".into(),
                data: None,
            },
        );
        assert_eq!(request_body(&draft)["data"], Value::Null);
    }
}
