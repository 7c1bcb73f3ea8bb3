//! `chatup-sidecar`: the Rust process that runs beside nginx on every chat host.
//!
//! nginx (with `ngx_http_chatup_module`) holds the subscribers' WebSockets; the sidecar
//! gives their messages ids and history, checks who publishes, and feeds each nginx worker
//! over a Unix socket. One process, tokio based, playing the roles its configuration turns
//! on (`[roles]`; a single-host install plays them all):
//!
//! ```text
//!  publishers ─HTTP/WS─▶ http ─▶ host::publish ─▶ broker ─▶ host::relay ─unix─▶ nginx workers
//!                               (jwt, limits,    (ids,     (one connection
//!                                plugins)         history)  per nginx worker)
//! ```
//!
//! # Roles
//!
//! * [`host`], the chat host (`roles.chat_host`, formerly `roles.worker`; `/health` still
//!   calls it `worker`): [`host::relay`], the Unix-socket server for this host's nginx
//!   workers (`host/relay/connection.rs` one worker's connection, `host/relay/socket.rs`
//!   the socket file, [`host::relay::codec`] its frames, [`host::relay::nginx_workers`] the
//!   connected workers and their counts); [`host::publish`], the publisher endpoints
//!   `GET /pub` (WebSocket, also join/leave) and `POST /pub/<ch>`, and the open sessions by
//!   user, for kicks; [`host::presence`], who joined which channel here, and the
//!   `join`/`leave` events; [`host::viewers`], whether a viewer may watch a private
//!   channel (its subscribe token, then bans), asked by the nginx workers over the relay;
//!   [`host::demo`], `POST /demo/token` for the example page.
//!   [`host::ChatHost::assemble`] puts them together.
//! * [`dispatcher`] (`roles.dispatcher`): [`dispatcher::join`], `POST /join/<ch>`, the
//!   least-loaded host for a client with the channel's counts and recent history;
//!   [`dispatcher::channels`], `GET /channels/<ch>[/users]`, the public counts browsers poll,
//!   from an [`dispatcher::answer_cache`] fresh for one report interval.
//!   [`dispatcher::assemble`] builds it.
//! * [`admin`] (`roles.admin`): the admin API (admin tokens; post, ban, history, stats,
//!   blacklist, metrics); its routes are listed in `sidecar/openapi.json`.
//!   [`admin::assemble`] builds it.
//!
//! # Shared services
//!
//! * [`shared`]: what every role uses, started first ([`shared::Shared::start`]): metrics,
//!   broker and Redis link, bans, control bus, shutdown.
//! * [`broker`]: the [`broker::Broker`] trait (publish with atomic id + history + fan-out,
//!   subscribe with a gap-free backlog); [`broker::memory`], the single-host engine, and
//!   [`broker::redis`], the many-host engine (a Lua script per publish, sharded pub/sub on
//!   a cluster, catch-up from history after a lost connection); [`broker::guards`], the
//!   plugins' checks (bans, the rate limit) the Redis script applies with the publish.
//! * [`cluster`]: what the hosts know of each other: [`cluster::redis`], the connection to
//!   Redis (server, Cluster or Sentinel) with the bound on every call;
//!   [`cluster::registry`], the live hosts and their load (this host alone or every host
//!   reporting to Redis; the chat host feeds it through
//!   [`cluster::registry::HostLoadSource`]); [`cluster::members`], who is joined where on every host, for the
//!   admin API's channel stats; [`cluster::control`], the control bus (kick banned
//!   publishers on every host).
//! * [`jwt`]: [`jwt::keys`], key families and loading, and the warnings about example keys;
//!   [`jwt::verify`], publisher tokens checked with pinned algorithms; [`jwt::mint`], the
//!   `token` subcommand and the demo tokens' signing.
//! * [`moderation`]: bans (memory or Redis) and what a ban sets off; the admin API's entry
//!   point.
//! * [`private`]: private channels: `[private]` (which channels, the key of their
//!   subscribe tokens) and [`private::token`], the subscribe tokens that open them.
//! * [`plugins`]: the checks of `plugins.chain` every publish goes through (`ban`,
//!   `rate_limit`, `blacklist`, `webhook`, `publish_hook`).
//! * [`http`]: all routes in one place ([`http::routes`]), the one error answer of every
//!   endpoint ([`http::error::ApiError`]), the checked `{channel}` of the URL
//!   ([`http::channel::ChannelPath`]), the dispatcher's CORS ([`http::cors`]), the listener
//!   ([`http::server`]), `GET /health` ([`http::health`]), and the query strings and
//!   user-list paging of the read endpoints ([`http::query`], [`http::user_page`]).
//! * [`message`]: the message JSON, encoded once; [`message::assemble`] puts `ch`, `id`,
//!   `ep` in front of the publisher-encoded tail; [`message::Limits`], what one message
//!   may hold (`[limits]`).
//! * [`publish_error`]: the one catalog of why a publish is refused ([`publish_error::ErrorCode`]),
//!   used by the chat host, the admin API's `/post`, the plugins and the metrics.
//! * [`metrics`]: the Prometheus metrics `GET /metrics` serves (admin API); what a part
//!   keeps anyway it registers itself, read at each scrape (the chat host's in
//!   `host/relay/nginx_workers.rs` and `host/presence.rs`).
//! * [`config`]: the `[relay] [http] [auth] [private] [admin] [limits] [history] [redis] [host]
//!   [roles] [dispatch] [presence] [plugins] [rate_limit] [blacklist] [webhook]
//!   [publish_hook] [demo] [log]` settings, layered default < file < `CHATUP_*`
//!   environment < `--set` ([`config::load`]). Each section's struct and checks live beside
//!   what it configures (`host/relay/config.rs`, `plugins/webhook_config.rs`, ...).
//! * [`server`]: [`server::Sidecar::start`] wires the shared services, then each role,
//!   then the routes; [`server::Sidecar::run`] serves and shuts down in order.
//! * [`cli`] (the command line: `run`, `token`, `config`), [`shutdown`] (SIGTERM/SIGINT),
//!   [`logging`] (`tracing` to stderr, text or JSON), [`error`] (the errors that stop the
//!   process).
//!
//! # The path of one message
//!
//! `POST /pub/<ch>` with `Authorization: Bearer <jwt>`, to the nginx workers whose
//! subscribers watch `<ch>`:
//!
//! 1. `http/mod.rs`: [`http::routes`] sends `/pub/{channel}` to the chat host's handler,
//!    with the channel checked by `http/channel.rs`; a refusal is answered by
//!    `http/error.rs`.
//! 2. `host/publish/post.rs`: [`host::publish::post::publish`] reads the body (text or
//!    JSON) and the `Idempotency-Key` (`host/publish/idempotency.rs`).
//! 3. `host/publish/mod.rs`: [`host::publish::Publisher`] checks the token
//!    (`jwt/verify.rs`), the channel and the [`message::Limits`], runs the plugin
//!    chain (`plugins/mod.rs` and one file per plugin), and encodes the message's tail once
//!    (`message/mod.rs`).
//! 4. `metrics.rs`: the metered broker times the call and counts the publish.
//! 5. `broker/memory.rs` or `broker/redis.rs`: the broker gives the message its id, keeps
//!    it in history and fans it out to the channel's subscribers.
//! 6. `host/relay/connection.rs`: each relay connection subscribed to `<ch>` (an nginx
//!    worker asked for it) queues the message and writes it as a `Message` frame
//!    (`host/relay/codec.rs`, `chatup_wire`) to its nginx worker, which sends it to its
//!    viewers.
#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod error;
pub mod host;
pub mod http;
pub mod jwt;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod moderation;
pub mod plugins;
pub mod private;
pub mod publish_error;
pub mod server;
pub mod shared;
pub mod shutdown;
#[cfg(test)]
mod test_support;

pub use error::Error;
