//! `POST /pub/<ch>` in a `chatup_publish` location: the worker reads the request and its
//! body, sends them to the sidecar over its relay connection (`Publish`), holds the request
//! and answers it with what the sidecar says (`Published`): the status, headers and JSON
//! body the sidecar's own HTTP route would have sent. Many publishes share the relay's
//! reads and writes, where a proxied request would cost the sidecar one of each.
//!
//! The worker answers by itself only what the sidecar cannot: a path that names no channel
//! (404) or a method other than POST (405), as the sidecar's route would; the relay down
//! when the request comes or lost while it waits (503, `Retry-After: 1`); no answer within
//! [`PUBLISH_TIMEOUT_MS`] (504); a body the relay cannot carry (413); more than
//! [`MAX_RELAY_BACKLOG`] bytes already waiting for a sidecar that does not read (503). Its answers have the
//! sidecar's error shape, `{"error":{"code":..,"message":..}}`.

use std::collections::HashSet;

use chatup_wire::{PublishAnswer, PublishRequest};

/// How long a publish may wait for the sidecar's answer, in milliseconds. The sidecar's own
/// waits (the publish hook, the broker) end well before.
pub const PUBLISH_TIMEOUT_MS: u64 = 10_000;

/// Bytes that may wait in a worker's relay output before new publishes are refused (503): a
/// sidecar that stops reading must not make the worker hold every body sent meanwhile.
pub const MAX_RELAY_BACKLOG: usize = 8 << 20;

/// Why the worker answers a publish by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{0} is not allowed here: publish with POST, the channel in the path")]
    MethodNotAllowed(String),
    #[error("this nginx worker does not run chatup; retry")]
    NotRunning,
    #[error("chatup-sidecar is not reachable from this nginx worker; retry")]
    SidecarDown,
    #[error(
        "chatup-sidecar did not answer within {} s; the message may have been published: \
         retry with the same Idempotency-Key",
        PUBLISH_TIMEOUT_MS / 1000
    )]
    TimedOut,
    #[error("chatup-sidecar is not keeping up with this nginx worker; retry")]
    Backlogged,
    #[error("the server is going away; retry")]
    GoingAway,
    #[error("the request body is larger than the {0} bytes the relay carries")]
    TooLarge(usize),
    #[error("the request body could not be read")]
    Unreadable,
    #[error("chatup-sidecar answered with status {0}, which is not an HTTP status")]
    BadAnswer(u16),
}

impl PublishError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::NotRunning | Self::SidecarDown | Self::GoingAway | Self::Backlogged => 503,
            Self::TimedOut => 504,
            Self::TooLarge(_) => 413,
            Self::Unreadable => 500,
            Self::BadAnswer(_) => 502,
        }
    }

    /// The `code` of the answer, from the sidecar's catalog where it has one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::NotRunning
            | Self::SidecarDown
            | Self::GoingAway
            | Self::TimedOut
            | Self::Backlogged => "unavailable",
            Self::TooLarge(_) => "too_long",
            Self::Unreadable | Self::BadAnswer(_) => "internal",
        }
    }

    /// The answer's headers besides its type: `Allow` for a 405, `Retry-After` when trying
    /// again is the cure.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self.status() {
            405 => vec![("Allow", "POST".to_owned())],
            503 | 504 => vec![("Retry-After", "1".to_owned())],
            _ => Vec::new(),
        }
    }

    /// The answer's JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut out = String::from("{\"error\":{\"code\":");
        json_string(&mut out, self.code());
        out.push_str(",\"message\":");
        json_string(&mut out, &self.to_string());
        out.push_str("}}");
        out.into_bytes()
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The channel of a request to a publish location whose prefix is `prefix`: the rest of the
/// path, one segment (the sidecar checks its name). A path that names none, or more than
/// one segment, is no endpoint (404, before the method is looked at, as the sidecar's route
/// does); a method other than POST is refused (405).
pub fn route<'a>(method: &[u8], uri: &'a [u8], prefix: &[u8]) -> Result<&'a [u8], PublishError> {
    let channel = uri.strip_prefix(prefix).unwrap_or(b"");
    if channel.is_empty() || channel.contains(&b'/') {
        return Err(PublishError::NotFound {
            method: String::from_utf8_lossy(method).into_owned(),
            path: String::from_utf8_lossy(uri).into_owned(),
        });
    }
    if method != b"POST" {
        return Err(PublishError::MethodNotAllowed(
            String::from_utf8_lossy(method).into_owned(),
        ));
    }
    Ok(channel)
}

/// The request headers the sidecar's publish checks read, the first of each name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishHeaders {
    pub authorization: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub idempotency_key: Option<Vec<u8>>,
}

impl PublishHeaders {
    /// Keeps the header `name: value` if the sidecar reads it and it is the first of its name.
    pub fn offer(&mut self, name: &[u8], value: &[u8]) {
        let slot = if name.eq_ignore_ascii_case(b"authorization") {
            &mut self.authorization
        } else if name.eq_ignore_ascii_case(b"content-type") {
            &mut self.content_type
        } else if name.eq_ignore_ascii_case(b"idempotency-key") {
            &mut self.idempotency_key
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value.to_vec());
        }
    }

    /// The `Publish` frame's request of `channel` with `body`, as `id`.
    pub fn into_request(self, id: u64, channel: &[u8], body: Vec<u8>) -> PublishRequest {
        PublishRequest {
            id,
            channel: channel.to_vec(),
            authorization: self.authorization,
            content_type: self.content_type,
            idempotency_key: self.idempotency_key,
            body,
        }
    }
}

/// The response to send for a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Beyond `Content-Type` (always `application/json`) and `Content-Length`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<&PublishError> for Response {
    fn from(e: &PublishError) -> Self {
        Self {
            status: e.status(),
            headers: e
                .headers()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect(),
            body: e.body(),
        }
    }
}

/// The sidecar's answer as the response to send: a status that is no HTTP status is a bad
/// gateway; headers nginx sets itself, or that could break the response head, are dropped.
pub fn response(answer: PublishAnswer) -> Response {
    if !(200..=599).contains(&answer.status) {
        return Response::from(&PublishError::BadAnswer(answer.status));
    }
    let headers = answer
        .headers
        .into_iter()
        .filter(|(name, value)| sendable_header(name, value))
        .collect();
    Response {
        status: answer.status,
        headers,
        body: answer.body,
    }
}

/// Whether a header from the sidecar may go into the response as it is.
fn sendable_header(name: &str, value: &str) -> bool {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let set_by_nginx = [
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n));
    let value_ok = value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    token && !set_by_nginx && value_ok
}

/// An answer for a held publish: the sidecar's, or why the worker answers by itself.
pub type Answer = (u64, Result<PublishAnswer, PublishError>);

/// The worker's publishes waiting for the sidecar.
#[derive(Debug, Default)]
pub struct Publishes {
    next_id: u64,
    /// Publishes whose frame went out and whose answer has not come back.
    pending: HashSet<u64>,
    /// Answers for held requests, for the FFI layer to send.
    answers: Vec<Answer>,
}

impl Publishes {
    /// A new id for a held request.
    pub(crate) fn start(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.insert(self.next_id);
        self.next_id
    }

    /// The sidecar's answer; one nobody waits for any more (the request went away or timed
    /// out) is dropped.
    pub(crate) fn answered(&mut self, answer: PublishAnswer) {
        if self.pending.remove(&answer.id) {
            self.answers.push((answer.id, Ok(answer)));
        }
    }

    /// The held request `id` went away, or timed out: its answer is no longer wanted.
    pub fn forget(&mut self, id: u64) -> bool {
        self.pending.remove(&id)
    }

    /// Fails every held request (the relay broke, or the worker is going away).
    pub(crate) fn fail_pending(&mut self, error: &PublishError) {
        for id in self.pending.drain() {
            self.answers.push((id, Err(error.clone())));
        }
    }

    /// How many wait for their answer.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The answers to send.
    pub fn take_answers(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("JSON")
    }

    #[test]
    fn routes_like_the_sidecars_publish_route() {
        assert_eq!(route(b"POST", b"/pub/room", b"/pub/"), Ok(&b"room"[..]));
        // The sidecar judges the name itself (after the token).
        assert_eq!(route(b"POST", b"/pub/a b", b"/pub/"), Ok(&b"a b"[..]));
        for (method, uri) in [
            (&b"POST"[..], &b"/pub/"[..]),
            (b"GET", b"/pub/a/b"),
            (b"POST", b"/pub/a/"),
        ] {
            let err = route(method, uri, b"/pub/").unwrap_err();
            assert_eq!((err.status(), err.code()), (404, "not_found"), "{err}");
        }
        let err = route(b"GET", b"/pub/room", b"/pub/").unwrap_err();
        assert_eq!(err, PublishError::MethodNotAllowed("GET".into()));
        assert_eq!(err.status(), 405);
        assert_eq!(err.headers(), vec![("Allow", "POST".to_owned())]);
        let body = json(&err.body());
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("GET "));
    }

    #[test]
    fn error_bodies_are_json_whatever_the_path() {
        let err = PublishError::NotFound {
            method: "PO\"ST".into(),
            path: "/pub/\\\n\u{1}\u{e9}".into(),
        };
        let body = json(&err.body());
        assert_eq!(
            body["error"]["message"],
            "no such endpoint: PO\"ST /pub/\\\n\u{1}\u{e9}"
        );
        for (err, status) in [
            (PublishError::SidecarDown, 503),
            (PublishError::GoingAway, 503),
            (PublishError::NotRunning, 503),
            (PublishError::Backlogged, 503),
            (PublishError::TimedOut, 504),
        ] {
            assert_eq!(err.status(), status);
            assert_eq!(err.code(), "unavailable");
            assert_eq!(err.headers(), vec![("Retry-After", "1".to_owned())]);
            assert_eq!(json(&err.body())["error"]["code"], "unavailable");
        }
        assert_eq!(PublishError::TooLarge(9).code(), "too_long");
        assert_eq!(PublishError::Unreadable.status(), 500);
    }

    #[test]
    fn headers_keep_the_first_of_the_names_the_sidecar_reads() {
        let mut h = PublishHeaders::default();
        h.offer(b"Host", b"x");
        h.offer(b"authorization", b"Bearer 1");
        h.offer(b"AUTHORIZATION", b"Bearer 2");
        h.offer(b"Content-Type", b"text/plain");
        h.offer(b"idempotency-key", b"\xffk");
        let request = h.into_request(7, b"room", b"hi".to_vec());
        assert_eq!(
            request,
            PublishRequest {
                id: 7,
                channel: b"room".to_vec(),
                authorization: Some(b"Bearer 1".to_vec()),
                content_type: Some(b"text/plain".to_vec()),
                idempotency_key: Some(b"\xffk".to_vec()),
                body: b"hi".to_vec(),
            }
        );
    }

    #[test]
    fn answers_become_responses_without_dangerous_headers() {
        let answer = PublishAnswer {
            id: 1,
            status: 401,
            headers: vec![
                ("WWW-Authenticate".into(), "Bearer".into()),
                ("Content-Length".into(), "9".into()),
                ("X-Bad".into(), "a\r\nSet-Cookie: x".into()),
                ("Bad Name".into(), "v".into()),
                ("Retry-After".into(), "1".into()),
            ],
            body: b"{}".to_vec(),
        };
        assert_eq!(
            response(answer),
            Response {
                status: 401,
                headers: vec![
                    ("WWW-Authenticate".into(), "Bearer".into()),
                    ("Retry-After".into(), "1".into()),
                ],
                body: b"{}".to_vec(),
            }
        );
        for status in [0, 101, 600, u16::MAX] {
            let r = response(PublishAnswer {
                id: 1,
                status,
                headers: vec![],
                body: vec![],
            });
            assert_eq!(r.status, 502);
            assert_eq!(json(&r.body)["error"]["code"], "internal");
        }
    }

    #[test]
    fn answers_go_to_waiting_requests_only() {
        let mut p = Publishes::default();
        let a = p.start();
        let b = p.start();
        let c = p.start();
        assert_ne!(a, b);
        assert_eq!(p.waiting(), 3);
        let answer = |id| PublishAnswer {
            id,
            status: 200,
            headers: vec![],
            body: vec![],
        };
        // Out of order, and one whose request went away: dropped.
        assert!(p.forget(c));
        p.answered(answer(b));
        p.answered(answer(c));
        p.answered(answer(99));
        p.answered(answer(b));
        assert_eq!(p.take_answers(), vec![(b, Ok(answer(b)))]);
        p.fail_pending(&PublishError::SidecarDown);
        assert_eq!(p.take_answers(), vec![(a, Err(PublishError::SidecarDown))]);
        assert_eq!(p.waiting(), 0);
        // A late answer after the failure is dropped too.
        p.answered(answer(a));
        assert!(p.take_answers().is_empty());
        assert!(!p.forget(a));
    }
}
