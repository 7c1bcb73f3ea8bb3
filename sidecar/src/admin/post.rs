//! `POST /post`: the operator posts messages or events to channels.
//!
//! The body is one request or an array of them (the same fields in the array-token form,
//! `[{"channel": .., "msg": ..}]`, of the original system):
//!
//! ```json
//! {"channel": "lobby", "msg": "hello", "user": {"name": "Moderator"}}
//! {"channels": ["a", "b"], "ev": "poll", "data": {"question": ".."}}
//! ```
//!
//! `channel` xor `channels`; `msg` (non-empty text) xor `ev` (an event name, with optional
//! `data`); `user`, optional, is the object shown as the sender (without it the message has
//! no `user` field). The answer lists, in request order, where each message went:
//! `{"published": [{"ch": "a", "id": 12, "ep": ..}, ..]}`.
//!
//! Everything is checked before anything is published, so a bad request publishes nothing:
//! channel names, the `[limits]` on text and event data, reserved event names, at most
//! [`MAX_POSTS`] channel × message pairs. Then the messages go out one after the other in
//! request order; if the broker fails halfway, the 503 says how many went out.
//!
//! Admin posts do not go through the plugin chain (bans, rate limit, blacklist, hooks):
//! they come from the operator, who the chain protects the channels for, not against.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{info, Instrument};

use super::auth::AdminBody;
use super::{AdminError, AdminState};
use crate::broker::BrokerError;
use crate::message::{now_ms, Body, Tail};
use crate::message::{Limits, MAX_EVENT_NAME, RESERVED_EVENTS};

/// Most channel × message pairs one call may publish.
pub const MAX_POSTS: usize = 1000;

/// The fields a request may have.
const FIELDS: [&str; 6] = ["channel", "channels", "msg", "ev", "data", "user"];

/// One checked request: a message (or event) for one or more channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    /// Where it goes, in the order given.
    pub channels: Vec<String>,
    /// The text or event.
    pub body: Body,
    /// The sender object as JSON text; `None`: no `user` field.
    pub user: Option<String>,
}

/// Where one message went.
#[derive(Debug, Serialize)]
struct Placed {
    ch: String,
    id: u64,
    ep: u64,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    published: Vec<Placed>,
}

/// Checks a whole `/post` body: one request object or an array of them.
pub fn parse(body: &Value, limits: &Limits) -> Result<Vec<Post>, AdminError> {
    match body {
        Value::Object(object) => Ok(vec![parse_one(object, limits)?]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(AdminError::BadRequest(
                    "the array is empty: nothing to post".into(),
                ));
            }
            if items.len() > MAX_POSTS {
                return Err(too_many(items.len()));
            }
            let mut posts = Vec::with_capacity(items.len());
            let mut pairs = 0;
            for (i, item) in items.iter().enumerate() {
                let in_item =
                    |e: AdminError| AdminError::BadRequest(format!("item {}: {e}", i + 1));
                let Value::Object(object) = item else {
                    return Err(in_item(AdminError::BadRequest(format!(
                        "must be an object like {{\"channel\": \"lobby\", \"msg\": \"hello\"}}, \
                         not {}",
                        crate::jwt::json_kind(item)
                    ))));
                };
                let post = parse_one(object, limits).map_err(in_item)?;
                pairs += post.channels.len();
                if pairs > MAX_POSTS {
                    return Err(too_many(pairs));
                }
                posts.push(post);
            }
            Ok(posts)
        }
        other => Err(AdminError::BadRequest(format!(
            "the body must be a JSON object like {{\"channel\": \"lobby\", \"msg\": \"hello\"}} \
             or an array of them, not {}",
            crate::jwt::json_kind(other)
        ))),
    }
}

fn too_many(n: usize) -> AdminError {
    AdminError::BadRequest(format!(
        "at most {MAX_POSTS} messages (channels × requests) per call, not {n}; split the call"
    ))
}

/// Checks one request object.
fn parse_one(object: &Map<String, Value>, limits: &Limits) -> Result<Post, AdminError> {
    let bad = |m: String| AdminError::BadRequest(m);
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field {unknown:?}; a request has \"channel\" or \"channels\", \"msg\" or \
             \"ev\" (+ \"data\"), and optionally \"user\""
        )));
    }
    let channels = match (object.get("channel"), object.get("channels")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "give either \"channel\" or \"channels\", not both".into()
            ))
        }
        (Some(Value::String(channel)), None) => vec![channel.clone()],
        (Some(_), None) => return Err(bad("\"channel\" must be a string".into())),
        (None, Some(Value::Array(list))) => {
            if list.is_empty() {
                return Err(bad(
                    "\"channels\" is empty; name at least one channel".into()
                ));
            }
            if list.len() > MAX_POSTS {
                return Err(too_many(list.len()));
            }
            list.iter()
                .map(|c| match c {
                    Value::String(c) => Ok(c.clone()),
                    _ => Err(bad("\"channels\" must list channel names as strings".into())),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, Some(_)) => {
            return Err(bad("\"channels\" must be an array of channel names".into()))
        }
        (None, None) => {
            return Err(bad(
                "missing \"channel\" (one channel name) or \"channels\" (an array of them)".into(),
            ))
        }
    };
    for channel in &channels {
        chatup_wire::channel::validate(channel.as_bytes())
            .map_err(|e| bad(format!("channel {channel:?}: {e}")))?;
    }
    let body = body(object, limits)?;
    let user = match object.get("user") {
        None | Some(Value::Null) => None,
        Some(user @ Value::Object(_)) => {
            let json = user.to_string();
            if json.len() > limits.max_event_bytes {
                return Err(bad(format!(
                    "\"user\" is {} bytes as JSON; the limit is {} (limits.max_event_bytes)",
                    json.len(),
                    limits.max_event_bytes
                )));
            }
            Some(json)
        }
        Some(other) => {
            return Err(bad(format!(
                "\"user\" must be an object (shown as the sender), not {}",
                crate::jwt::json_kind(other)
            )))
        }
    };
    Ok(Post {
        channels,
        body,
        user,
    })
}

/// The message text or the event of a request, within the limits.
fn body(object: &Map<String, Value>, limits: &Limits) -> Result<Body, AdminError> {
    let bad = |m: String| AdminError::BadRequest(m);
    let data = object.get("data").filter(|d| !d.is_null());
    match (object.get("msg"), object.get("ev")) {
        (Some(_), Some(_)) => Err(bad("give either \"msg\" or \"ev\", not both".into())),
        (Some(Value::String(text)), None) => {
            if data.is_some() {
                return Err(bad(
                    "\"data\" goes with an event (\"ev\"), not with \"msg\"".into(),
                ));
            }
            if text.trim().is_empty() {
                return Err(bad("\"msg\" is empty".into()));
            }
            let chars = text.chars().count();
            if chars > limits.max_message_chars {
                return Err(bad(format!(
                    "\"msg\" is {chars} characters long; the limit is {} \
                     (limits.max_message_chars)",
                    limits.max_message_chars
                )));
            }
            Ok(Body::Text(text.clone()))
        }
        (Some(_), None) => Err(bad("\"msg\" must be a string".into())),
        (None, Some(Value::String(name))) => {
            if name.is_empty() || name.len() > MAX_EVENT_NAME {
                return Err(bad(format!(
                    "\"ev\" must be 1 to {MAX_EVENT_NAME} bytes long"
                )));
            }
            if RESERVED_EVENTS.contains(&name.as_str()) {
                return Err(bad(format!(
                    "the event name {name:?} is reserved (the platform sends {})",
                    RESERVED_EVENTS.join(", ")
                )));
            }
            if let Some(data) = data {
                let size = data.to_string().len();
                if size > limits.max_event_bytes {
                    return Err(bad(format!(
                        "\"data\" is {size} bytes as JSON; the limit is {} \
                         (limits.max_event_bytes)",
                        limits.max_event_bytes
                    )));
                }
            }
            Ok(Body::Event {
                name: name.clone(),
                data: data.cloned(),
            })
        }
        (None, Some(_)) => Err(bad("\"ev\" must be a string".into())),
        (None, None) => Err(bad(
            "missing \"msg\" (the message text) or \"ev\" (an event name)".into(),
        )),
    }
}

/// `POST /post`.
pub async fn post(
    State(state): State<std::sync::Arc<AdminState>>,
    AdminBody(body): AdminBody,
) -> Result<Json<Answer>, AdminError> {
    let posts = parse(&body, &state.limits)?;
    let total: usize = posts.iter().map(|p| p.channels.len()).sum();
    let span = tracing::info_span!("admin_post", messages = total);
    async move {
        let mut published = Vec::with_capacity(total);
        for post in &posts {
            let tail = Tail::encode_from(now_ms(), post.user.as_deref(), &post.body)
                .map_err(|e| AdminError::Internal(format!("cannot encode a message: {e}")))?;
            for channel in &post.channels {
                let placed = state
                    .broker
                    .publish(channel, &tail)
                    .await
                    .map_err(|e| halfway(e, &published, total))?;
                published.push(Placed {
                    ch: channel.clone(),
                    id: placed.id,
                    ep: placed.epoch,
                });
            }
        }
        info!("posted");
        Ok(Json(Answer { published }))
    }
    .instrument(span)
    .await
}

/// The error of a publish that failed after `done` of `total` messages went out.
fn halfway(e: BrokerError, done: &[Placed], total: usize) -> AdminError {
    let what = if done.is_empty() {
        format!("nothing was published (0 of {total})")
    } else {
        let last = &done[done.len() - 1];
        format!(
            "{} of {total} messages were published, the last one to {:?} (id {}); do not \
             send those again",
            done.len(),
            last.ch,
            last.id
        )
    };
    tracing::warn!(published = done.len(), total, "admin post failed: {e}");
    match e {
        BrokerError::Unavailable(m) => {
            AdminError::Unavailable(format!("the message broker is unavailable ({m}): {what}"))
        }
        BrokerError::Internal(m) => AdminError::Internal(format!("broker error ({m}): {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        max_message_chars: 5,
        max_event_bytes: 20,
        idempotency_window: Duration::from_secs(300),
    };

    fn ok(body: Value) -> Vec<Post> {
        parse(&body, &LIMITS).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(body: Value) -> String {
        match parse(&body, &LIMITS) {
            Err(AdminError::BadRequest(m)) => m,
            other => panic!("{body}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn one_request_and_arrays_of_them() {
        assert_eq!(
            ok(json!({"channel": "lobby", "msg": "hi"})),
            vec![Post {
                channels: vec!["lobby".into()],
                body: Body::Text("hi".into()),
                user: None,
            }]
        );
        assert_eq!(
            ok(json!({"channels": ["a", "b"], "ev": "poll", "data": [1], "user": {"n": "op"}})),
            vec![Post {
                channels: vec!["a".into(), "b".into()],
                body: Body::Event {
                    name: "poll".into(),
                    data: Some(json!([1]))
                },
                user: Some(r#"{"n":"op"}"#.into()),
            }]
        );
        let posts = ok(json!([
            {"channel": "a", "msg": "1", "user": null},
            {"channel": "b", "ev": "x", "data": null},
        ]));
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].user, None);
        assert_eq!(
            posts[1].body,
            Body::Event {
                name: "x".into(),
                data: None
            }
        );
        // Exactly at the limits.
        ok(json!({"channel": "a", "msg": "ééééé"}));
        ok(json!({"channel": "a", "ev": "x", "data": "0123456789abcdef12"}));
    }

    #[test]
    fn every_mistake_is_named() {
        let cases = [
            (json!("text"), "not a string"),
            (json!(null), "not null"),
            (json!([]), "nothing to post"),
            (json!([1]), "item 1: must be an object"),
            (json!({"msg": "x"}), "missing \"channel\""),
            (
                json!({"channel": "a", "channels": ["b"], "msg": "x"}),
                "not both",
            ),
            (
                json!({"channel": 3, "msg": "x"}),
                "\"channel\" must be a string",
            ),
            (json!({"channels": "a", "msg": "x"}), "must be an array"),
            (json!({"channels": [], "msg": "x"}), "\"channels\" is empty"),
            (json!({"channels": ["a", 1], "msg": "x"}), "as strings"),
            (json!({"channel": "a b", "msg": "x"}), "channel \"a b\""),
            (json!({"channels": ["ok", ""], "msg": "x"}), "channel \"\""),
            (json!({"channel": "a"}), "missing \"msg\""),
            (json!({"channel": "a", "msg": "x", "ev": "y"}), "not both"),
            (json!({"channel": "a", "msg": ""}), "\"msg\" is empty"),
            (json!({"channel": "a", "msg": " \n "}), "\"msg\" is empty"),
            (
                json!({"channel": "a", "msg": 5}),
                "\"msg\" must be a string",
            ),
            (
                json!({"channel": "a", "msg": "123456"}),
                "6 characters long; the limit is 5",
            ),
            (
                json!({"channel": "a", "msg": "x", "data": 1}),
                "\"data\" goes with an event",
            ),
            (json!({"channel": "a", "ev": ""}), "1 to 64 bytes"),
            (
                json!({"channel": "a", "ev": "x".repeat(65)}),
                "1 to 64 bytes",
            ),
            (json!({"channel": "a", "ev": 1}), "\"ev\" must be a string"),
            (
                json!({"channel": "a", "ev": "x", "data": "0123456789abcdef123"}),
                "21 bytes",
            ),
            (
                json!({"channel": "a", "msg": "x", "user": "op"}),
                "\"user\" must be an object",
            ),
            (
                json!({"channel": "a", "msg": "x", "user": [1]}),
                "not an array",
            ),
            (
                json!({"channel": "a", "msg": "x", "user": {"n": "0123456789abcdef"}}),
                "limit is 20",
            ),
            (
                json!({"channel": "a", "msg": "x", "chanel": "b"}),
                "unknown field \"chanel\"",
            ),
            (
                json!([{"channel": "a", "msg": "x"}, {"channel": "a", "msg": ""}]),
                "item 2: \"msg\" is empty",
            ),
        ];
        for (body, expected) in cases {
            let message = err(body.clone());
            assert!(
                message.contains(expected),
                "{body}: {message:?} lacks {expected:?}"
            );
        }
        for reserved in RESERVED_EVENTS {
            let message = err(json!({"channel": "a", "ev": reserved}));
            assert!(message.contains("reserved"), "{message}");
        }
    }

    #[test]
    fn at_most_a_thousand_messages_per_call() {
        let channels: Vec<String> = (0..MAX_POSTS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            ok(json!({"channels": channels, "msg": "x"}))[0]
                .channels
                .len(),
            1000
        );
        let items: Vec<Value> = (0..MAX_POSTS)
            .map(|i| json!({"channel": format!("c{i}"), "msg": "x"}))
            .collect();
        assert_eq!(ok(Value::Array(items.clone())).len(), 1000);

        let mut more = channels.clone();
        more.push("one-more".into());
        assert!(err(json!({"channels": more, "msg": "x"})).contains("not 1001"));
        let mut items_more = items;
        items_more.push(json!({"channel": "x", "msg": "x"}));
        assert!(err(Value::Array(items_more)).contains("not 1001"));
        // Counted as channels × requests.
        let pairs = vec![json!({"channels": channels[..600].to_vec(), "msg": "x"}); 2];
        assert!(err(Value::Array(pairs)).contains("not 1200"));
    }
}
