//! `GET /pub`: the WebSocket publisher.
//!
//! The first frame is the JWT (raw, or `{"token": ".."}`), answered with
//! `{"type":"auth","user":{..}}` or an error and a close (4500 bad token, 4501 expired; 4503
//! when no token comes within the auth timeout or the first frame is not a token at all).
//! A frame over the size limit closes with 1009, one that breaks RFC 6455 with 1002, text
//! that is not UTF-8 with 1007, first frame or not. Then each frame
//! `{"ref":..,"ch":..,"msg":..}` / `{"ref":..,"ch":..,"ev":..,"data":..}` is answered with an
//! ack or an error carrying the same `ref`, in order. `{"token":".."}` re-authenticates.
//! A publish frame may carry `"key"`, an idempotency key ([`super::idempotency`]): a retry
//! within the window is acked with the first message's `id` and `ep` and
//! `"duplicate":true`, and publishes nothing.
//! Frames are read ahead: up to 64 wait for the broker at once (a Redis
//! round trip per publish would otherwise bound a socket), and answers go out in frame
//! order, several per flush.
//!
//! Presence ([`crate::host::presence`]): `{"ref":..,"join":"<ch>"}` enters a channel, answered
//! `{"type":"joined","ref":..,"ch":"<ch>"}`, and `{"ref":..,"leave":"<ch>"}` leaves it,
//! answered `{"type":"left","ref":..,"ch":"<ch>"}`; both are idempotent. A bad name gets
//! `bad_channel`, more than 256 joined channels `too_many_channels`. Closing the session
//! leaves every joined channel. Joining is not needed to publish; it makes the user count
//! in the channel's `pubCount` and, with `presence.events`, announces it (`join`/`leave`
//! events, once per user however many sessions it has on this host). A new token for
//! another user moves the memberships to that user. A join or leave waits for the frames
//! before it and is answered once its event is out, so the event sits between them and the
//! frames after it.
//!
//! Bans ([`crate::moderation`], with `ban` in `plugins.chain`): a join of a channel the
//! user is banned from is refused with `banned` (no `join` event appears), and a
//! `{"token":..}` for another user who is banned from a channel the session is in or
//! published to closes the session with 4502. A ban made while the session is open closes
//! it with 4502 too when it joined or published to that channel ([`super::sessions`]).
//!
//! The server pings every `ping_interval`; a client that sent nothing at all between two
//! pings is closed with 4001. At shutdown every publisher is closed with 1001.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chatup_wire::close;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, Instrument};

use super::sessions::{Kicked, Registration};
use super::turn::Turns;
use super::{body_from_json, ErrorCode, Outcome, PublishError, Receipt};
use crate::host::presence::Session;
use crate::host::publish::App;
use crate::jwt::{AuthError, Identity};
use crate::moderation::{Ban, Who};

/// How long to wait for the client's close frame after sending ours.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How large a frame (or message) tungstenite reads whole, for a publisher limit of
/// `limit` bytes. The session refuses what is over `limit` itself, with close 1009 and a
/// closing handshake ([`over_limit`]). Were tungstenite's limit `limit`, it would stop at
/// the header of an oversized frame and the session could only send its close with the
/// rest of the frame unread: dropping the socket then resets the connection, and nginx,
/// still forwarding that rest, may see the reset first and end the client's connection
/// without passing the close on (the client sees 1006). Reading up to four times the limit
/// covers clients that overshoot (a long paste, a token with a large `_public`) for at
/// most that much memory per connection; past it the close is still sent, at best effort
/// ([`read_failure`]).
fn read_cap(limit: usize) -> usize {
    limit.saturating_mul(4)
}

/// Whether what was read is a message over the publisher's `limit` bytes.
fn over_limit(read: &Option<Result<Message, axum::Error>>, limit: usize) -> bool {
    match read {
        Some(Ok(Message::Text(text))) => text.len() > limit,
        Some(Ok(Message::Binary(bytes))) => bytes.len() > limit,
        _ => false,
    }
}

fn too_big() -> End {
    End::Close(close::TOO_BIG, "frame too large".into())
}

#[derive(Serialize)]
struct Ack<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    #[serde(flatten)]
    receipt: Receipt,
}

impl<'a> Ack<'a> {
    fn of(reference: Option<&'a Value>, outcome: &Outcome) -> Self {
        Self {
            r#type: "ack",
            reference,
            receipt: Receipt::from(outcome),
        }
    }
}

/// The answer to a join or a leave.
#[derive(Serialize)]
struct Membership<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    ch: &'a str,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    code: &'static str,
    message: &'a str,
    /// Seconds until the same publish may succeed (rate limit).
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    /// The channel a `banned` without a `ref` is about (sent before close 4502).
    #[serde(skip_serializing_if = "Option::is_none")]
    ch: Option<&'a str>,
    /// For `banned`: when the ban ends, in ms since the Unix epoch (`null`: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<Ban>,
}

/// Why a session ends.
enum End {
    /// The client closed or the connection broke: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let forwarded = headers
        .get("x-forwarded-for")
        .or_else(|| headers.get("x-real-ip"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!(
        "publisher",
        conn,
        %peer,
        forwarded,
        sub = tracing::field::Empty
    );
    let cap = read_cap(app.publisher.limits().max_request_bytes());
    let tracker = app.tracker.clone();
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| tracker.track_future(session(socket, app).instrument(span)))
}

async fn session(mut socket: WebSocket, app: Arc<App>) {
    debug!("publisher connected");
    let end = match authenticate(&mut socket, &app).await {
        Ok(identity) => serve(&mut socket, &app, identity).await,
        Err(end) => end,
    };
    match end {
        End::Gone => debug!("publisher disconnected"),
        End::Close(code, reason) => {
            debug!(code, reason, "closing publisher");
            close_socket(&mut socket, code, &reason).await;
        }
    }
}

/// Waits for the first frame and verifies it as a token.
async fn authenticate(socket: &mut WebSocket, app: &App) -> Result<Identity, End> {
    let limit = app.publisher.limits().max_request_bytes();
    let deadline = tokio::time::sleep(app.ws.auth_timeout);
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            _ = app.shutdown.cancelled() => {
                return Err(End::Close(close::GOING_AWAY, "server shutting down".into()))
            }
            _ = &mut deadline => {
                return Err(End::Close(
                    close::BAD_REQUEST,
                    format!("no token within {} s", app.ws.auth_timeout.as_secs()),
                ))
            }
            message = socket.recv() => message,
        };
        if over_limit(&message, limit) {
            return Err(too_big());
        }
        let text = match message {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Err(e)) => return Err(read_failure(e)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => text,
                Err(_) => {
                    send_error(
                        socket,
                        None,
                        ErrorCode::InvalidUtf8,
                        "the token frame is not UTF-8",
                    )
                    .await?;
                    return Err(End::Close(
                        close::BAD_REQUEST,
                        "token frame is not UTF-8".into(),
                    ));
                }
            },
        };
        let Some(token) = token_in(&text) else {
            send_error(socket, None, ErrorCode::BadRequest, NOT_A_TOKEN).await?;
            return Err(End::Close(
                close::BAD_REQUEST,
                "first frame is not a token".into(),
            ));
        };
        return match app.publisher.verifier().verify(&token) {
            Ok(identity) => {
                send_auth(socket, &identity).await?;
                Ok(identity)
            }
            Err(e) => {
                app.publisher.count_refusal(ErrorCode::from(&e));
                Err(refuse(socket, None, e).await)
            }
        };
    }
}

/// Publishes a session may have waiting for the broker at once. Frames are read ahead
/// while earlier ones are published (so one socket is not limited to one broker round trip
/// at a time), and answered in the order they came.
const MAX_IN_FLIGHT: usize = 64;

/// How long shutdown waits for the answers to publishes already handed to the broker.
const SHUTDOWN_ANSWERS: Duration = Duration::from_secs(1);

/// How long a join or leave waits for its presence event to be published before it is
/// answered anyway (the broker may be down; the counts are already right).
const PRESENCE_WAIT: Duration = Duration::from_secs(2);

/// The answer to one frame, produced in frame order.
enum Answer {
    /// Send this JSON text.
    Send(String),
    /// Send this JSON text, then close.
    SendThenEnd(String, End),
}

type Pending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// Serves an authenticated publisher until it leaves, fails, or the server stops.
async fn serve(socket: &mut WebSocket, app: &App, identity: Identity) -> End {
    record_sub(&identity);
    // Dropped when this function returns: the session then leaves every joined channel.
    let mut presence = app.presence.connect(&identity);
    let end = serve_present(socket, app, identity, &mut presence).await;
    // A client that went away may be back in a moment (a reload, a network break): its
    // user lingers for the grace. One the server closes (ban, bad frame, shutdown) does not.
    if matches!(end, End::Gone | End::Close(close::PING_TIMEOUT, _)) {
        presence.dropped();
    }
    end
}

/// [`serve`], with the session's presence.
async fn serve_present(
    socket: &mut WebSocket,
    app: &App,
    mut identity: Identity,
    presence: &mut Session,
) -> End {
    // Dropped when this function returns: the session can no longer be kicked.
    let mut registration = app.sessions.register(&identity);
    let period = app.ws.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard_since_ping = true;
    let mut in_flight: FuturesOrdered<Pending<'_>> = FuturesOrdered::new();
    // Publishes reach the broker in frame order, whatever order their checks end in.
    let mut turns = Turns::default();
    let limit = app.publisher.limits().max_request_bytes();
    loop {
        let message = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                // Publishes the broker may already have taken get their answer first.
                let answered = tokio::time::timeout(
                    SHUTDOWN_ANSWERS,
                    send_answers(socket, &mut in_flight, true),
                );
                return match answered.await {
                    Ok(Err(end)) => end,
                    _ => End::Close(close::GOING_AWAY, "server shutting down".into()),
                };
            }
            kicked = registration.kicked() => {
                debug!(channel = kicked.channel, until = ?kicked.until, removed = kicked.removed, "kicked");
                if kicked.removed {
                    return End::Close(close::USER_REMOVED, "user removed by the operator".into());
                }
                // The ban's terms, as the frame before the close.
                if socket.send(Message::Text(kicked_text(&kicked).into())).await.is_err() {
                    return End::Gone;
                }
                return End::Close(close::BANNED, format!("banned from {}", kicked.channel));
            }
            answer = in_flight.next(), if !in_flight.is_empty() => {
                let Some(answer) = answer else { continue };
                in_flight.push_front(Box::pin(std::future::ready(answer)));
                if let Err(end) = send_answers(socket, &mut in_flight, false).await {
                    return end;
                }
                continue;
            }
            _ = ping.tick() => {
                if !heard_since_ping {
                    return End::Close(close::PING_TIMEOUT, "no answer to ping".into());
                }
                heard_since_ping = false;
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Gone;
                }
                continue;
            }
            message = socket.recv(), if in_flight.len() < MAX_IN_FLIGHT => message,
        };
        heard_since_ping = true;
        if over_limit(&message, limit) {
            return too_big();
        }
        let text = match message {
            None | Some(Ok(Message::Close(_))) => return End::Gone,
            Some(Err(e)) => return read_failure(e),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => text,
                Err(_) => {
                    let answer =
                        error_text(None, ErrorCode::InvalidUtf8, "the frame is not valid UTF-8");
                    in_flight.push_back(ready(Answer::Send(answer)));
                    continue;
                }
            },
        };
        // A join or leave makes an event that must fall between what the session published
        // before it and what it publishes after: finish the one, then hold back the other.
        let membership = is_membership(text.as_str());
        if membership {
            if let Err(end) = send_answers(socket, &mut in_flight, true).await {
                return end;
            }
        }
        let refused = ban_check(app, &identity, &registration, text.as_str(), membership).await;
        in_flight.push_back(match refused {
            Some(answer) => ready(answer),
            None => handle_frame(
                app,
                &mut identity,
                presence,
                &mut registration,
                &mut turns,
                text.as_str(),
            ),
        });
        if membership {
            if let Err(end) = send_answers(socket, &mut in_flight, true).await {
                return end;
            }
        }
    }
}

/// Whether a frame may be a join or a leave (a message that merely mentions them in its
/// text only loses the read-ahead for that frame).
fn is_membership(text: &str) -> bool {
    text.contains("\"join\"") || text.contains("\"leave\"")
}

/// Sends the answers that are ready, in order, with one flush; with `all`, waits for every
/// pending one. An answer that ends the session ends it.
async fn send_answers(
    socket: &mut WebSocket,
    in_flight: &mut FuturesOrdered<Pending<'_>>,
    all: bool,
) -> Result<(), End> {
    let mut end = None;
    loop {
        let next = if all {
            in_flight.next().await
        } else {
            in_flight.next().now_or_never().flatten()
        };
        let Some(answer) = next else { break };
        let text = match answer {
            Answer::Send(text) => text,
            Answer::SendThenEnd(text, then) => {
                end = Some(then);
                text
            }
        };
        socket
            .feed(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)?;
        if end.is_some() {
            break;
        }
    }
    socket.flush().await.map_err(|_| End::Gone)?;
    end.map_or(Ok(()), Err)
}

/// With bans enforced, answers a join of a channel the user is banned from (`banned`),
/// and a token for another user banned from a channel the session is in or published to
/// (`banned`, then close 4502). `None`: the frame goes on as usual.
async fn ban_check(
    app: &App,
    identity: &Identity,
    registration: &Registration,
    text: &str,
    membership: bool,
) -> Option<Answer> {
    let token = text.contains("\"token\"");
    if !app.moderation.enforced() || !(membership || token) {
        return None;
    }
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
        return None; // Answered as malformed by handle_frame.
    };
    let reference = object
        .get("ref")
        .filter(|r| !r.is_object() && !r.is_array());
    if let Some(Value::String(fresh)) = object.get("token") {
        let fresh = app.publisher.verifier().verify(fresh).ok()?;
        if Who::of(&fresh) == Who::of(identity) {
            return None;
        }
        for channel in registration.channels() {
            if let Err(e) = app.moderation.may_join(&fresh, &channel).await {
                debug!(
                    channel,
                    code = e.code.as_str(),
                    "new token refused: {}",
                    e.message
                );
                let text = publish_error_text(reference, &e);
                return Some(match e.code {
                    ErrorCode::Banned => Answer::SendThenEnd(
                        text,
                        End::Close(close::BANNED, format!("banned from {channel}")),
                    ),
                    _ => Answer::Send(text),
                });
            }
        }
        return None;
    }
    let Some(Value::String(channel)) = object.get("join") else {
        return None;
    };
    // Frames handle_frame refuses anyway are left to it.
    let malformed = ["leave", "ch", "msg", "ev"]
        .iter()
        .any(|k| object.contains_key(*k));
    if malformed || chatup_wire::channel::validate(channel.as_bytes()).is_err() {
        return None;
    }
    // Someone's own channel (where their direct messages come) shows only its user's
    // presence: anyone may write to it, nobody else may appear in it.
    if let Some(owner) = app.private.owner(channel) {
        if identity.user_id().as_deref() != Some(owner) {
            let e = PublishError::new(
                ErrorCode::Forbidden,
                format!("channel {channel:?} is {owner:?}'s own: only that user joins it"),
            );
            debug!(channel, "join refused: {}", e.message);
            return Some(Answer::Send(publish_error_text(reference, &e)));
        }
    }
    // Counted as joined while the check runs, so a ban made meanwhile kicks the session.
    let was_joined = registration.is_joined(channel);
    registration.joined(channel);
    match app.moderation.may_join(identity, channel).await {
        Ok(()) => None,
        Err(e) => {
            if !was_joined {
                registration.left(channel);
            }
            debug!(
                channel,
                code = e.code.as_str(),
                "join refused: {}",
                e.message
            );
            Some(Answer::Send(publish_error_text(reference, &e)))
        }
    }
}

fn ready<'a>(answer: Answer) -> Pending<'a> {
    Box::pin(std::future::ready(answer))
}

/// Reads one client frame: a message or an event (published in the returned future), a
/// join or a leave, or a new token (taking effect for the frames after it).
fn handle_frame<'a>(
    app: &'a App,
    identity: &mut Identity,
    presence: &mut Session,
    registration: &mut Registration,
    turns: &mut Turns,
    text: &str,
) -> Pending<'a> {
    let error = |reference: Option<&Value>, code, message: &str| {
        ready(Answer::Send(error_text(reference, code, message)))
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let message =
                format!("the frame is not JSON ({e}); send {{\"ref\":..,\"ch\":..,\"msg\":..}}");
            return error(None, ErrorCode::BadRequest, &message);
        }
    };
    let Value::Object(object) = value else {
        let message =
            "the frame must be a JSON object like {\"ref\":1,\"ch\":\"room\",\"msg\":\"hi\"}";
        return error(None, ErrorCode::BadRequest, message);
    };
    let reference = object.get("ref");
    if let Some(r) = reference {
        if r.is_object() || r.is_array() {
            let message = "\"ref\" must be a string, number, boolean or null";
            return error(None, ErrorCode::BadRequest, message);
        }
    }

    if let Some(token) = object.get("token") {
        let Some(token) = token.as_str() else {
            let message = "\"token\" must be a string";
            return error(reference, ErrorCode::BadRequest, message);
        };
        return match app.publisher.verifier().verify(token) {
            Ok(fresh) => {
                *identity = fresh;
                record_sub(identity);
                presence.reidentify(identity);
                registration.reidentify(identity);
                ready(Answer::Send(auth_text(identity)))
            }
            Err(e) => {
                app.publisher.count_refusal(ErrorCode::from(&e));
                let (text, end) = refusal(reference, e);
                ready(Answer::SendThenEnd(text, end))
            }
        };
    }

    let join = object.get("join");
    let leave = object.get("leave");
    if join.is_some() || leave.is_some() {
        if join.is_some() && leave.is_some() {
            let message = "give either \"join\" or \"leave\", not both";
            return error(reference, ErrorCode::BadRequest, message);
        }
        if ["ch", "msg", "ev"].iter().any(|k| object.contains_key(*k)) {
            let message = "a join or leave frame carries no \"ch\", \"msg\" or \"ev\"";
            return error(reference, ErrorCode::BadRequest, message);
        }
        let (key, reply) = if join.is_some() {
            ("join", "joined")
        } else {
            ("leave", "left")
        };
        let Some(Value::String(channel)) = join.or(leave) else {
            let message = format!("\"{key}\" must be a channel name (a string)");
            return error(reference, ErrorCode::BadRequest, &message);
        };
        let result = if join.is_some() {
            presence.join(identity, channel)
        } else {
            presence.leave(channel)
        };
        return match result {
            Ok(event) => {
                debug!(channel, "{reply}");
                if join.is_some() {
                    registration.joined(channel);
                } else {
                    registration.left(channel);
                }
                let answer = Answer::Send(json_text(&Membership {
                    r#type: reply,
                    reference,
                    ch: channel,
                }));
                match event {
                    // Answered once the event is out, so that it comes before anything the
                    // session publishes after this frame.
                    Some(published) => Box::pin(async move {
                        let _ = tokio::time::timeout(PRESENCE_WAIT, published).await;
                        answer
                    }),
                    None => ready(answer),
                }
            }
            Err(e) => {
                if join.is_some() {
                    // Not in it (a session already in a channel joins it again without
                    // error): undo what the ban check may have counted.
                    registration.left(channel);
                }
                let PublishError { code, message, .. } = e.into();
                debug!(channel, code = code.as_str(), "{key} refused: {message}");
                error(reference, code, &message)
            }
        };
    }

    let channel = match object.get("ch") {
        Some(Value::String(ch)) => ch.clone(),
        Some(_) => return error(reference, ErrorCode::BadRequest, "\"ch\" must be a string"),
        None => {
            let message = "missing \"ch\" (the channel to publish to)";
            return error(reference, ErrorCode::BadRequest, message);
        }
    };
    let body = match body_from_json(&object) {
        Ok(body) => body,
        Err(e) => return error(reference, e.code, &e.message),
    };
    let key = match object.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key.clone()),
        Some(_) => {
            let message = "\"key\" (an idempotency key) must be a string";
            return error(reference, ErrorCode::BadIdempotencyKey, message);
        }
    };
    if chatup_wire::channel::validate(channel.as_bytes()).is_ok() {
        registration.published(&channel);
    }
    let reference = reference.cloned();
    let identity = identity.clone();
    let turn = turns.take_next();
    let span = tracing::Span::current();
    Box::pin(
        async move {
            let published = app
                .publisher
                .publish_in_turn(&identity, &channel, body, key.as_deref(), Some(turn))
                .await;
            match published {
                Ok(outcome) => Answer::Send(json_text(&Ack::of(reference.as_ref(), &outcome))),
                Err(e) => {
                    debug!(
                        channel,
                        code = e.code.as_str(),
                        "publish refused: {}",
                        e.message
                    );
                    Answer::Send(publish_error_text(reference.as_ref(), &e))
                }
            }
        }
        .instrument(span),
    )
}

/// The answer to a first frame that is not a token.
const NOT_A_TOKEN: &str = "the first frame must be the token: the raw JWT or {\"token\":\"<JWT>\"}";

/// The token a first frame carries: the frame itself (a raw JWT), or the `token` string of
/// a JSON object. None for any other JSON (a publish frame sent too early, say), which is
/// not a token at all rather than a bad one: a JWT never starts with `{`.
fn token_in(text: &str) -> Option<String> {
    if !text.trim_start().starts_with('{') {
        return Some(text.to_owned());
    }
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("token")?.as_str().map(str::to_owned)
}

fn record_sub(identity: &Identity) {
    if let Some(sub) = &identity.sub {
        tracing::Span::current().record("sub", sub.as_str());
    }
}

/// The auth error to send, and how to close after it.
fn refusal(reference: Option<&Value>, e: AuthError) -> (String, End) {
    let code = match e {
        AuthError::BadToken(_) => ErrorCode::BadToken,
        AuthError::Expired(_) => ErrorCode::TokenExpired,
    };
    debug!(code = code.as_str(), "token refused: {e}");
    let text = error_text(reference, code, &e.to_string());
    (text, End::Close(e.close_code(), code.as_str().into()))
}

/// Sends the auth error and says how to close.
async fn refuse(socket: &mut WebSocket, reference: Option<&Value>, e: AuthError) -> End {
    let (text, end) = refusal(reference, e);
    match send_text(socket, text).await {
        Ok(()) => end,
        Err(gone) => gone,
    }
}

fn auth_text(identity: &Identity) -> String {
    // `user` is already encoded JSON.
    format!(r#"{{"type":"auth","user":{}}}"#, identity.user)
}

async fn send_auth(socket: &mut WebSocket, identity: &Identity) -> Result<(), End> {
    send_text(socket, auth_text(identity)).await
}

fn error_text(reference: Option<&Value>, code: ErrorCode, message: &str) -> String {
    json_text(&ErrorReply {
        r#type: "error",
        reference,
        code: code.as_str(),
        message,
        retry_after: None,
        ch: None,
        until: None,
    })
}

fn publish_error_text(reference: Option<&Value>, e: &PublishError) -> String {
    json_text(&ErrorReply {
        r#type: "error",
        reference,
        code: e.code.as_str(),
        message: &e.message,
        retry_after: e.retry_after,
        ch: None,
        until: e.until(),
    })
}

/// The `banned` error a kicked session gets before close 4502: which channel, and until
/// when (the close reason has no room for more than a short text).
fn kicked_text(kicked: &Kicked) -> String {
    let ban = Ban {
        until: kicked.until,
    };
    json_text(&ErrorReply {
        r#type: "error",
        reference: None,
        code: ErrorCode::Banned.as_str(),
        message: &crate::plugins::ban::describe(&ban),
        retry_after: None,
        ch: Some(&kicked.channel),
        until: Some(ban),
    })
}

async fn send_error(
    socket: &mut WebSocket,
    reference: Option<&Value>,
    code: ErrorCode,
    message: &str,
) -> Result<(), End> {
    send_text(socket, error_text(reference, code, message)).await
}

fn json_text<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; an empty object would be the fallback.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

async fn send_text(socket: &mut WebSocket, text: String) -> Result<(), End> {
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| End::Gone)
}

/// How a session that could not read the client's next frame ends. tungstenite reports a
/// frame that breaks RFC 6455, text that is not UTF-8 or a frame over [`read_cap`] as a
/// read error and closes nothing itself; the stream can no longer be read, but it can
/// still be written. So the client is told why with a close frame (1002, 1007, 1009)
/// before the connection is dropped; without it the client (through nginx) would only see
/// the connection end (1006). Any other error means the peer is gone.
fn read_failure(e: axum::Error) -> End {
    use tungstenite::error::ProtocolError as P;
    let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
        return End::Gone;
    };
    debug!("publisher read failed: {e}");
    let (code, reason) = match *e {
        tungstenite::Error::Capacity(_) => return too_big(),
        tungstenite::Error::Utf8(_) => (close::INVALID_PAYLOAD, "text is not UTF-8"),
        tungstenite::Error::Protocol(
            P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
            | P::InvalidCloseSequence,
        ) => (close::PROTOCOL_ERROR, "protocol error"),
        _ => return End::Gone,
    };
    End::Close(code, reason.into())
}

/// Sends a close frame and waits briefly for the client's.
async fn close_socket(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
