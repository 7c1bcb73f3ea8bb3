//! The logic of `ngx_http_chatup_module`, in plain Rust: no nginx types, no `unsafe`, tested
//! and fuzzed on its own. The module crate feeds it nginx events and writes what it queues.
//!
//! - [`conf`]: the directives: their values parsed and checked, their defaults.
//! - [`ws`]: the WebSocket codec (client frames in, server frames out, accept key).
//! - [`handshake`]: which transport a viewer's request asks for (WebSocket, SSE, long-poll),
//!   its checks, channels from the path, `since` and `Last-Event-ID`.
//! - [`since`]: the one encoding of resume positions (`<ch>:<epoch>:<id>,...`).
//! - [`sse`]: the bytes of the HTTP transports: SSE events (raw or chunked), a poll's answer.
//! - [`cache`]: a channel's recent messages as ready-to-send frames, and resume.
//! - [`outbox`]: a subscriber's unsent frames.
//! - [`hub`]: a worker's channels, subscribers (and how each is delivered to) and relay
//!   state.
//! - [`admission`]: private channels: which need a subscribe token, the requests waiting
//!   for the sidecar's verdict, the admitted viewers.
//! - [`publish`]: `POST /pub/<ch>` carried over the relay: the route, the headers the
//!   sidecar reads, the requests waiting for its answer, the worker's own answers.
//! - [`backoff`]: relay reconnect delays.
#![forbid(unsafe_code)]

pub mod admission;
pub mod backoff;
pub mod cache;
pub mod conf;
pub mod handshake;
pub mod hub;
pub mod outbox;
pub mod publish;
pub mod since;
pub mod sse;
pub mod ws;
