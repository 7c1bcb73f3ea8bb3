//! Publishing: the checks every message goes through, shared by the WebSocket publisher
//! (`GET /pub`, [`ws`]) and the one-shot HTTP endpoint (`POST /pub/<ch>`, [`post`], also
//! reached through an nginx worker's relay connection);
//! [`sessions`] lists the open WebSocket sessions by user, so a ban can close them;
//! [`idempotency`] checks and scopes the keys that make a retried publish happen once.

pub mod app;
#[cfg(test)]
mod folded_tests;
pub mod idempotency;
pub mod post;
pub mod sessions;
pub mod turn;
pub mod ws;

use std::sync::Arc;

use chatup_wire::Position;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::jwt::{Identity, Verifier};
pub use app::{App, WsSettings};

use crate::broker::{Broker, Guarded, Once, Publication, Published};
use crate::message::{now_ms, Body, Limits, Tail, MAX_EVENT_NAME, RESERVED_EVENTS};
use crate::metrics::{Metrics, PublishedKind};
use crate::plugins::{self, Chain, Draft};
use crate::publish_error::{ErrorCode, PublishError};

/// What became of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published with an id.
    Published(Published),
    /// Accepted but, by a plugin's choice, not broadcast (nor kept in history).
    Withheld,
    /// A retry: a publish with the same idempotency key (same user, same channel) came
    /// within the window and went to this position; nothing was published now.
    Repeat(Position),
}

/// How both publish endpoints tell the publisher what became of a message: its id and
/// epoch, or that a plugin withheld it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The message's id and epoch; absent when it was withheld.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ep: Option<u64>,
    /// A plugin accepted the message but kept it from the channel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
    /// The publish repeated an earlier one's idempotency key: `id` and `ep` are that
    /// earlier message's, and nothing was published now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl From<&Outcome> for Receipt {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Published(p) => Self {
                id: Some(p.id),
                ep: Some(p.epoch),
                withheld: false,
                duplicate: false,
            },
            Outcome::Withheld => Self {
                id: None,
                ep: None,
                withheld: true,
                duplicate: false,
            },
            Outcome::Repeat(first) => Self {
                id: Some(first.id),
                ep: Some(first.epoch),
                withheld: false,
                duplicate: true,
            },
        }
    }
}

/// Checks and publishes messages on behalf of authenticated users.
pub struct Publisher {
    /// Where messages go.
    broker: Arc<dyn Broker>,
    /// Checks tokens (also re-checks expiry on long-lived connections).
    verifier: Arc<Verifier>,
    /// Message size limits from `[limits]`.
    limits: Limits,
    /// The moderation plugins of `plugins.chain`.
    chain: Chain,
    /// Counts what is published and refused; `None` in tests that do not look.
    metrics: Option<Arc<Metrics>>,
}

impl Publisher {
    pub fn new(
        broker: Arc<dyn Broker>,
        verifier: Arc<Verifier>,
        limits: Limits,
        chain: Chain,
    ) -> Self {
        Self {
            broker,
            verifier,
            limits,
            chain,
            metrics: None,
        }
    }

    /// The same publisher, counting in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts a publish refused before it reached [`publish`](Self::publish) (the token).
    pub fn count_refusal(&self, code: ErrorCode) {
        if let Some(metrics) = &self.metrics {
            metrics.rejected(code);
        }
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks everything, runs the plugin chain, encodes the message once and hands it to
    /// the broker. Every outcome is counted in the metrics.
    pub async fn publish(
        &self,
        identity: &Identity,
        channel: &str,
        body: Body,
    ) -> Result<Outcome, PublishError> {
        self.publish_keyed(identity, channel, body, None).await
    }

    /// [`publish`](Self::publish) with the publisher's idempotency key, if it gave one: a
    /// retry within the window gets [`Outcome::Repeat`] and publishes nothing.
    pub async fn publish_keyed(
        &self,
        identity: &Identity,
        channel: &str,
        body: Body,
        key: Option<&str>,
    ) -> Result<Outcome, PublishError> {
        self.publish_in_turn(identity, channel, body, key, None)
            .await
    }

    /// [`publish_keyed`](Self::publish_keyed) that reaches the broker only in its `turn`
    /// (see [`turn`]), for a session whose publishes must keep their order.
    pub async fn publish_in_turn(
        &self,
        identity: &Identity,
        channel: &str,
        body: Body,
        key: Option<&str>,
        turn: Option<turn::Turn>,
    ) -> Result<Outcome, PublishError> {
        let kind = match body {
            Body::Text(_) => PublishedKind::Msg,
            Body::Event { .. } => PublishedKind::Event,
        };
        let result = self
            .check_and_publish(identity, channel, body, key, turn)
            .await;
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(Outcome::Published(_)) => metrics.published(kind),
                Ok(Outcome::Withheld) => metrics.withheld(),
                // Counted when it was published.
                Ok(Outcome::Repeat(_)) => {}
                Err(e) => metrics.rejected(e.code),
            }
        }
        result
    }

    async fn check_and_publish(
        &self,
        identity: &Identity,
        channel: &str,
        body: Body,
        key: Option<&str>,
        turn: Option<turn::Turn>,
    ) -> Result<Outcome, PublishError> {
        if self.verifier.expired(identity, now_ms() / 1000) {
            return Err(PublishError::new(
                ErrorCode::TokenExpired,
                "the token has expired; send a fresh one",
            ));
        }
        check_channel(channel)?;
        if let Some(key) = key {
            idempotency::check_key(key)?;
        }
        self.check_body(identity, &body)?;
        let scoped = key.map(|key| idempotency::scoped(identity, key));
        let mut draft = Draft::new(identity, channel, body).with_key(scoped.as_deref());
        // A refusal in the chain settles the holds there.
        // With the Redis broker, `ban` and `rate_limit` usually become guards of the
        // publish (see `plugins`): one Redis call for the checks and the publish.
        if let Err(refused) = self
            .chain
            .run_deferring(&mut draft, self.broker.applies_guards())
            .await
        {
            return Err(self.deferred_refusal(&draft).await.unwrap_or(refused));
        }
        if !draft.broadcast {
            draft.settle(false).await;
            if let Some(refused) = self.deferred_refusal(&draft).await {
                return Err(refused);
            }
            return Ok(Outcome::Withheld);
        }
        let tail = match Tail::encode(now_ms(), &identity.user, &draft.body) {
            Ok(tail) => tail,
            Err(e) => {
                draft.settle(false).await;
                return Err(PublishError::new(
                    ErrorCode::Internal,
                    format!("cannot encode message: {e}"),
                ));
            }
        };
        let step = async {
            if !draft.guards().is_empty() {
                let once = scoped.clone().map(|key| Once {
                    key,
                    window: self.limits.idempotency_window,
                });
                let guarded = self
                    .broker
                    .publish_guarded(channel, &tail, once.as_ref(), draft.guards())
                    .await?;
                return match guarded {
                    Guarded::Passed(Publication::New(published)) => {
                        Ok(Outcome::Published(published))
                    }
                    Guarded::Passed(Publication::Repeat(first)) => Ok(Outcome::Repeat(first)),
                    Guarded::Stopped(stopped) => Err(plugins::refusal(draft.guards(), stopped)),
                };
            }
            let Some(key) = scoped.clone() else {
                return Ok(Outcome::Published(
                    self.broker.publish(channel, &tail).await?,
                ));
            };
            let once = Once {
                key,
                window: self.limits.idempotency_window,
            };
            Ok(
                match self.broker.publish_once(channel, &tail, &once).await? {
                    Publication::New(published) => Outcome::Published(published),
                    Publication::Repeat(first) => Outcome::Repeat(first),
                },
            )
        };
        let result = match turn {
            Some(turn) => turn.take(step).await,
            None => step.await,
        };
        // A repeat was published by its first attempt: it counts (once) too. A broker
        // failure counts as not published; if it was, a retry with its key counts once.
        draft.settle(result.is_ok()).await;
        result
    }

    /// For a message a plugin refused or withheld after the checks deferred to the publish
    /// (`draft`'s guards): the refusal of the first guard that stops it, which comes first
    /// in the chain (`unavailable` when they cannot be applied); `None` when they let it
    /// pass, or there are none. Applying them publishes and counts nothing.
    async fn deferred_refusal(&self, draft: &Draft<'_>) -> Option<PublishError> {
        if draft.guards().is_empty() {
            return None;
        }
        match self
            .broker
            .check_guards(draft.channel, draft.guards())
            .await
        {
            Ok(None) => None,
            Ok(Some(stopped)) => Some(plugins::refusal(draft.guards(), stopped)),
            Err(e) => Some(e.into()),
        }
    }

    fn check_body(&self, identity: &Identity, body: &Body) -> Result<(), PublishError> {
        match body {
            Body::Text(text) => {
                if text.trim().is_empty() {
                    return Err(PublishError::new(ErrorCode::Empty, "the message is empty"));
                }
                let chars = text.chars().count();
                if chars > self.limits.max_message_chars {
                    return Err(PublishError::new(
                        ErrorCode::TooLong,
                        format!(
                            "the message is {chars} characters long; the limit is {}",
                            self.limits.max_message_chars
                        ),
                    ));
                }
            }
            Body::Event { name, data } => {
                if !identity.events {
                    return Err(PublishError::new(
                        ErrorCode::EventsNotAllowed,
                        "this token does not allow events (it needs \"_events\": true)",
                    ));
                }
                if name.is_empty() || name.len() > MAX_EVENT_NAME {
                    return Err(PublishError::new(
                        ErrorCode::BadRequest,
                        format!("\"ev\" must be 1 to {MAX_EVENT_NAME} bytes long"),
                    ));
                }
                if RESERVED_EVENTS.contains(&name.as_str()) {
                    return Err(PublishError::new(
                        ErrorCode::BadRequest,
                        format!("the event name {name:?} is reserved"),
                    ));
                }
                if let Some(data) = data {
                    let size = serde_json::to_vec(data).map(|v| v.len()).unwrap_or(0);
                    if size > self.limits.max_event_bytes {
                        return Err(PublishError::new(
                            ErrorCode::TooLong,
                            format!(
                                "the event data is {size} bytes long; the limit is {}",
                                self.limits.max_event_bytes
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a channel name with the rule shared by the module and the relay.
pub fn check_channel(channel: &str) -> Result<(), PublishError> {
    chatup_wire::channel::validate(channel.as_bytes())
        .map_err(|e| PublishError::new(ErrorCode::BadChannel, e.to_string()))
}

/// Reads `{"msg": ..}` or `{"ev": .., "data": ..}` from a JSON object.
pub fn body_from_json(object: &Map<String, Value>) -> Result<Body, PublishError> {
    let bad = |m: &str| PublishError::new(ErrorCode::BadRequest, m);
    match (object.get("msg"), object.get("ev")) {
        (Some(_), Some(_)) => Err(bad("give either \"msg\" or \"ev\", not both")),
        (Some(Value::String(text)), None) => Ok(Body::Text(text.clone())),
        (Some(_), None) => Err(bad("\"msg\" must be a string")),
        (None, Some(Value::String(name))) => Ok(Body::Event {
            name: name.clone(),
            data: object.get("data").filter(|d| !d.is_null()).cloned(),
        }),
        (None, Some(_)) => Err(bad("\"ev\" must be a string")),
        (None, None) => Err(bad(
            "missing \"msg\" (the message text) or \"ev\" (an event name)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::{MemoryBroker, MemoryOptions};
    use crate::test_support::{good_claims, sign, verifier};
    use serde_json::json;
    use std::time::Duration;

    fn publisher() -> Publisher {
        Publisher::new(
            MemoryBroker::new(MemoryOptions {
                history_size: 10,
                ttl: Duration::from_secs(60),
            }),
            Arc::new(verifier()),
            crate::test_support::TIGHT_LIMITS,
            Chain::default(),
        )
    }

    fn identity(events: bool) -> Identity {
        let mut c = good_claims();
        c["_events"] = json!(events);
        verifier().verify(&sign(&c)).unwrap()
    }

    async fn code(body: Body, channel: &str, events: bool) -> Result<u64, ErrorCode> {
        publisher()
            .publish(&identity(events), channel, body)
            .await
            .map(|outcome| match outcome {
                Outcome::Published(p) => p.id,
                Outcome::Repeat(first) => first.id,
                Outcome::Withheld => 0,
            })
            .map_err(|e| e.code)
    }

    #[tokio::test]
    async fn message_rules() {
        let text = |s: &str| Body::Text(s.into());
        assert_eq!(code(text("hi"), "r", false).await, Ok(1));
        assert_eq!(code(text("ééééé"), "r", false).await, Ok(1));
        assert_eq!(
            code(text(" \n\t "), "r", false).await,
            Err(ErrorCode::Empty)
        );
        assert_eq!(code(text(""), "r", false).await, Err(ErrorCode::Empty));
        assert_eq!(
            code(text("123456"), "r", false).await,
            Err(ErrorCode::TooLong)
        );
        assert_eq!(
            code(text("hi"), "a b", false).await,
            Err(ErrorCode::BadChannel)
        );
        let err = publisher()
            .publish(&identity(false), "r", text("toolong"))
            .await
            .unwrap_err();
        assert!(
            err.message.contains('7') && err.message.contains('5'),
            "{err}"
        );
        let err = publisher()
            .publish(&identity(false), "a:b", text("x"))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            chatup_wire::channel::validate(b"a:b")
                .unwrap_err()
                .to_string()
        );
    }

    #[tokio::test]
    async fn event_rules() {
        let ev = |name: &str, data: Option<Value>| Body::Event {
            name: name.into(),
            data,
        };
        assert_eq!(code(ev("typing", None), "r", true).await, Ok(1));
        assert_eq!(
            code(ev("typing", None), "r", false).await,
            Err(ErrorCode::EventsNotAllowed)
        );
        assert_eq!(
            code(ev("t", Some(json!("0123456789"))), "r", true).await,
            Err(ErrorCode::TooLong)
        );
        assert_eq!(code(ev("t", Some(json!([1, 2]))), "r", true).await, Ok(1));
        assert_eq!(
            code(ev("", None), "r", true).await,
            Err(ErrorCode::BadRequest)
        );
        for reserved in ["resync", "join", "leave"] {
            assert_eq!(
                code(ev(reserved, None), "r", true).await,
                Err(ErrorCode::BadRequest)
            );
        }
    }

    #[tokio::test]
    async fn expired_identities_cannot_publish() {
        let mut id = identity(false);
        id.expires_at = 1;
        let err = publisher()
            .publish(&id, "r", Body::Text("x".into()))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn json_bodies() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            body_from_json(&obj(json!({"msg": "hi"}))),
            Ok(Body::Text("hi".into()))
        );
        assert_eq!(
            body_from_json(&obj(json!({"ev": "x", "data": {"a": 1}}))),
            Ok(Body::Event {
                name: "x".into(),
                data: Some(json!({"a": 1}))
            })
        );
        assert_eq!(
            body_from_json(&obj(json!({"ev": "x", "data": null}))),
            Ok(Body::Event {
                name: "x".into(),
                data: None
            })
        );
        for bad in [
            json!({}),
            json!({"msg": 1}),
            json!({"ev": 1}),
            json!({"msg": "a", "ev": "b"}),
        ] {
            assert_eq!(
                body_from_json(&obj(bad)).unwrap_err().code,
                ErrorCode::BadRequest
            );
        }
    }
    #[tokio::test]
    async fn keyed_publishes_happen_once_per_user_and_key() {
        let p = publisher();
        let who = identity(false);
        let publish = |key: Option<&'static str>, text: &'static str| {
            let p = &p;
            let who = &who;
            async move {
                p.publish_keyed(who, "r", Body::Text(text.into()), key)
                    .await
            }
        };
        let Ok(Outcome::Published(first)) = publish(Some("k"), "a").await else {
            panic!("the first keyed publish is published");
        };
        let again = publish(Some("k"), "b").await.unwrap();
        assert_eq!(
            again,
            Outcome::Repeat(Position {
                epoch: first.epoch,
                id: first.id
            })
        );
        assert_eq!(
            Receipt::from(&again),
            Receipt {
                id: Some(first.id),
                ep: Some(first.epoch),
                withheld: false,
                duplicate: true,
            }
        );
        // Unkeyed publishes never repeat.
        assert!(matches!(publish(None, "a").await, Ok(Outcome::Published(p)) if p.id == 2));
        assert!(matches!(publish(None, "a").await, Ok(Outcome::Published(p)) if p.id == 3));
        // A bad key is refused before the message's own checks.
        assert_eq!(
            publish(Some("no spaces"), "").await.unwrap_err().code,
            ErrorCode::BadIdempotencyKey
        );
    }
}
