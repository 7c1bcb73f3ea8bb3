//! End-to-end tests: a whole sidecar on a real TCP port and a real Unix socket, driven by a
//! WebSocket client, raw HTTP requests and a fake nginx worker speaking the relay protocol.
//! Some start a real redis-server.
//!
//! One binary with a module per feature; [`support`] starts the sidecar and holds the clients.

mod support;

mod admin;
mod bans;
mod dispatch;
mod idempotency;
mod lifecycle;
mod post;
mod presence;
mod websocket;
