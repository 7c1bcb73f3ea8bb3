//! `chatup-sidecar`: the Rust process that runs beside nginx on every chat host.
//!
//! nginx (with `ngx_http_chatup_module`) holds the subscribers' WebSockets; the sidecar
//! gives their messages ids and history, checks who publishes, and feeds each nginx worker
//! over a Unix socket. One process, tokio based:
//!
//! ```text
//!  publishers ──HTTP/WS──▶ http ─▶ publish ─▶ broker ─▶ relay ──unix socket──▶ nginx workers
//!                                  (auth,      (ids,     (one connection
//!                                   limits)     history)  per worker)
//! ```
//!
//! Layout, one concern per module:
//!
//! * [`config`]: the `[relay] [http] [auth] [admin] [limits] [history] [redis] [host]
//!   [roles] [dispatch] [presence] [plugins] [rate_limit] [blacklist] [webhook]
//!   [publish_hook] [demo] [log]` settings, layered default < file < `CHATUP_*`
//!   environment < `--set`.
//! * [`cli`]: the command line (`run`, `token`, `config`).
//! * [`auth`]: JWT verification with pinned algorithms; the example-key warning.
//! * [`token`]: the `token` subcommand that mints publisher and admin tokens.
//! * [`message`]: the message JSON, encoded once; [`message::assemble`] puts `ch`, `id`,
//!   `ep` in front of the publisher-encoded tail.
//! * [`broker`]: the [`broker::Broker`] trait (publish with atomic id + history + fan-out,
//!   subscribe with a gap-free backlog); [`broker::memory`], the single-host engine, and
//!   [`broker::redis`], the many-host engine (a Lua script per publish, sharded pub/sub on
//!   a cluster, catch-up from history after a lost connection).
//! * [`redis`]: the connection to one Redis server or a Redis Cluster, with the bound on
//!   every call, shared by the Redis broker and the registry.
//! * [`control`]: the control bus, notices every host acts on (kick banned publishers),
//!   in process or through Redis pub/sub.
//! * [`moderation`]: bans (memory or Redis) and what a ban sets off; the admin API's entry
//!   point.
//! * [`codec`]: the relay frames of `chatup_wire` as a `tokio_util` codec.
//! * [`relay`]: the Unix-socket server for nginx workers.
//! * [`publish`]: the publisher endpoints, `GET /pub` (WebSocket, also join/leave) and
//!   `POST /pub/<ch>`; the open sessions by user, for kicks.
//! * [`plugins`]: the checks of `plugins.chain` every publish goes through (`ban`,
//!   `rate_limit`, `blacklist`, `webhook`, `publish_hook`).
//! * [`admin`]: the admin API (admin tokens; post, ban, history, stats, blacklist,
//!   metrics); its routes are listed in `sidecar/openapi.json`.
//! * [`presence`]: which publishers joined which channels on this host; `join`/`leave`
//!   events.
//! * [`registry`]: the live hosts and their load, for the dispatcher: this host alone
//!   ([`registry::LocalDirectory`]) or every host reporting to Redis
//!   ([`registry::RedisDirectory`], [`registry::Reporter`]).
//! * [`members`]: who is joined to which channel on every host, mirrored to Redis by the
//!   registry's reporter, for the admin API's channel stats.
//! * [`dispatch`]: `POST /join/<ch>`, the least-loaded host for a client, with the channel's
//!   counts and recent history.
//! * [`channels`]: `GET /channels/<ch>` and `/channels/<ch>/users`, the public counts and
//!   user lists browsers poll, from a [`cache`] fresh for one report interval.
//! * [`cache`]: per-key answers kept for a fixed time, bounded, one load per miss.
//! * [`demo`]: `POST /demo/token`, publisher tokens for the example page (`[demo]`).
//! * [`http`]: the HTTP router and listener, routes by role.
//! * [`health`]: `GET /health`, with a Redis check.
//! * [`metrics`]: the Prometheus metrics `GET /metrics` serves (admin API).
//! * [`server`]: wires the above together for the configured roles and shuts it down in
//!   order.
//! * [`shutdown`]: SIGTERM/SIGINT handling.
//! * [`logging`]: `tracing` output to stderr, text or JSON.
//! * [`error`]: the errors that stop the process.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cache;
pub mod channels;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod error;
pub mod health;
pub mod http;
pub mod logging;
pub mod members;
pub mod message;
pub mod metrics;
pub mod moderation;
pub mod plugins;
pub mod presence;
pub mod publish;
pub mod redis;
pub mod registry;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod token;

pub use error::Error;
