//! `ngx_http_chatup_module`: the subscriber side of chatup, inside nginx, and the way in
//! of `POST /pub/<ch>`.
//!
//! Viewers hold a WebSocket, an SSE stream or a long poll to a location marked
//! `chatup_subscribe`. A location marked `chatup_publish` reads `POST /pub/<ch>` requests
//! and has the sidecar answer them over the relay connection. Each nginx worker keeps,
//! per channel its viewers follow, a cache of the last messages as ready-to-send frames, and
//! one Unix-socket relay connection to `chatup-sidecar`, which feeds it the channels it asks
//! for. Workers share nothing: no shared memory, no locks.
//!
//! Layout:
//! - `chatup-module-core` (in `core/`): the logic in plain Rust, tested and fuzzed without
//!   nginx — the directives' values and defaults ([`conf`]), WebSocket codec, request
//!   checks and transport choice, SSE and poll bytes, resume positions, channel cache,
//!   subscriber outbox, the per-worker hub, reconnect backoff. The relay frames live in `chatup-wire`, shared with the sidecar.
//! - `ffi`: the thin layer that touches nginx — the module table and the directives'
//!   setters, the content handler and connection events of subscribers, the publish
//!   content handler, the relay connection, worker start and exit. Every `unsafe` block is there, each with a
//!   `// SAFETY:` comment.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub use chatup_module_core::{
    admission, backoff, cache, conf, handshake, hub, outbox, publish, since, sse, ws,
};

#[cfg(not(test))]
mod ffi;

#[cfg(not(test))]
pub use ffi::module::{ngx_http_chatup_module, Module};
