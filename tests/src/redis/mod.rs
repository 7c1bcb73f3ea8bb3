//! Real Redis for multi-host tests: one server ([`RedisServer`]) or a cluster of masters
//! ([`RedisCluster`]), each node a `redis-server` from `PATH` in its own temp folder, on free
//! loopback ports, without persistence (a restart loses every key, as a crashed cache would).
//!
//! Tests check what the sidecar left in Redis with [`RedisServer::cli`] and friends, which
//! speak RESP over a plain `TcpStream` ([`command`]): no Redis client crate, and blocking
//! calls that take a millisecond, so they are fine inside async tests too.
//!
//! Every wait is bounded; the server's log is printed when a test fails; dropping a server
//! kills it.
//!
//! - [`resp`]: the RESP client ([`command`], [`Reply`]).
//! - [`server`]: [`RedisServer`] (and [`Frozen`]).
//! - [`cluster`]: a [`RedisCluster`].
//! - [`sentinel`]: a [`RedisSentinel`].

use std::time::Duration;

pub mod cluster;
pub mod resp;
pub mod sentinel;
pub mod server;

pub use cluster::RedisCluster;
pub use resp::{command, info_field, Reply};
pub use sentinel::{RedisSentinel, SENTINEL_MASTER};
pub use server::{Frozen, RedisServer};

/// How long a Redis server may take to answer PING after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart keeps retrying while its old port is still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to agree that every slot is served.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one command's connect, write and read.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The cluster nodes' `cluster-node-timeout` in tests: short, so a failover happens within a
/// test's patience (Redis's default is 15 s).
pub const TEST_NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The sentinels' `down-after-milliseconds` in tests (Debian's sentinel.conf has 30 s).
pub const TEST_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;
