//! Integration tests: real nginx with the module and a real chatup-sidecar per test, each
//! on its own ports and in its own temp folder. Build first with scripts/setup.
#![forbid(unsafe_code)]

mod admin;
mod auth;
mod bench;
mod browser;
mod channel_info;
mod channels;
mod config;
mod delivery;
mod demo_tokens;
mod dispatch;
mod distro;
mod failover;
mod frames;
mod handshake;
mod harness_redis;
mod http2;
mod idempotency;
mod limits;
mod metrics;
mod moderation;
mod multihost;
mod ping;
mod plugins;
mod poll;
mod presence;
mod private;
mod publish;
mod readme;
mod reload;
mod restart;
mod resume;
mod sidecar_cli;
mod slow;
mod sse;
mod tls;
