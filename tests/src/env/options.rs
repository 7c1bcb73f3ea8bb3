//! [`Options`]: what a test changes in the default setup of a host (or a dispatcher).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::paths::{module_path, nginx_bin};
use super::ports::parse_loopback;
use std::path::PathBuf;

/// What a test changes in the default setup.
#[derive(Debug, Clone)]
pub struct Options {
    /// nginx worker processes.
    pub workers: u32,
    /// `chatup_cache_messages`; `None` leaves the module's default.
    pub cache_messages: Option<u32>,
    /// Extra directives in the `http` block (e.g. `chatup_ping_interval 1s;`).
    pub http_extra: String,
    /// Extra directives in `location /sub/`.
    pub sub_extra: String,
    /// Extra parameters of the `listen` directive (e.g. `sndbuf=4k`).
    pub listen_extra: String,
    /// Extra directives (e.g. more `location` blocks) in the `server` block.
    pub server_extra: String,
    /// `--set key=value` arguments for the sidecar (e.g. `history.size=5`).
    pub sidecar_set: Vec<String>,
    /// Start the sidecar (and wait for it) before nginx.
    pub start_sidecar: bool,
    /// The loopback address nginx and the sidecar's HTTP listen on; one per host when a test
    /// runs several.
    pub address: Ipv4Addr,
    /// `redis.url`; empty: not written (memory broker unless `redis_cluster` is set).
    pub redis_url: String,
    /// `redis.cluster_nodes`; empty: not written.
    pub redis_cluster: Vec<String>,
    /// `redis.sentinels` and `redis.sentinel_master`; empty: not written.
    pub redis_sentinels: Vec<String>,
    /// `host.id`; `None` leaves the sidecar's default (hostname and port).
    pub host_id: Option<String>,
    /// `plugins.chain`. The harness default is `["ban"]`: tests publish quickly, and the
    /// sidecar's default rate limit would refuse them; tests of the rate limit add it.
    pub plugins: Vec<String>,
    /// `presence.leave_grace_ms`. The harness default is 0: tests close a publisher and
    /// wait for its `leave` at once; tests of the grace set it.
    pub leave_grace_ms: u64,
    /// The nginx binary and the module it loads: `build/` by default; the distro tests run
    /// the system's nginx with the module built for it.
    pub nginx: NginxBuild,
}

/// An nginx binary and the chatup module built for it.
#[derive(Debug, Clone)]
pub struct NginxBuild {
    pub binary: PathBuf,
    pub module: PathBuf,
}

impl Default for NginxBuild {
    fn default() -> Self {
        Self {
            binary: nginx_bin(),
            module: module_path(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 2,
            cache_messages: None,
            http_extra: String::new(),
            sub_extra: String::new(),
            listen_extra: String::new(),
            server_extra: String::new(),
            sidecar_set: Vec::new(),
            start_sidecar: true,
            address: Ipv4Addr::LOCALHOST,
            redis_url: String::new(),
            redis_cluster: Vec::new(),
            redis_sentinels: Vec::new(),
            host_id: None,
            plugins: vec!["ban".to_owned()],
            leave_grace_ms: 0,
            nginx: NginxBuild::default(),
        }
    }
}

impl Options {
    /// Makes the channels matching `patterns` private, their subscribe tokens checked with
    /// the example subscribe key ([`crate::token::subscribe_token`] signs them).
    pub fn private(mut self, patterns: &[&str]) -> Self {
        self.sidecar_set
            .push(format!("private.channels={}", patterns.join(",")));
        self.sidecar_set.push(format!(
            "private.public_key_file={}",
            crate::token::example_subscribe_public_key().display()
        ));
        self
    }
    /// Runs `binary` with `module` instead of build/'s.
    pub fn nginx_build(mut self, binary: PathBuf, module: PathBuf) -> Self {
        self.nginx = NginxBuild { binary, module };
        self
    }
    pub fn cache_messages(mut self, n: u32) -> Self {
        self.cache_messages = Some(n);
        self
    }
    pub fn http(mut self, directives: &str) -> Self {
        self.http_extra.push_str(directives);
        self.http_extra.push('\n');
        self
    }
    pub fn sub_location(mut self, directives: &str) -> Self {
        self.sub_extra.push_str(directives);
        self.sub_extra.push('\n');
        self
    }
    pub fn listen(mut self, params: &str) -> Self {
        self.listen_extra.push(' ');
        self.listen_extra.push_str(params);
        self
    }
    pub fn server(mut self, directives: &str) -> Self {
        self.server_extra.push_str(directives);
        self.server_extra.push('\n');
        self
    }
    /// A chat host of a multi-host test: on `address`, named `id`, on the Redis at
    /// `redis_url`, reporting its load every 200 ms so tests stay short (the expiry keeps its
    /// default, 3 s).
    pub fn host_on_redis(address: &str, id: &str, redis_url: &str) -> Self {
        Self::default()
            .address(address)
            .host_id(id)
            .redis(redis_url)
            .sidecar_set("host.report_interval_ms=200")
    }

    /// A chat host of a multi-host test on the Redis Cluster seeded by `nodes`: on
    /// `address`, named `id`.
    pub fn host_on_cluster(address: &str, id: &str, nodes: &[String]) -> Self {
        Self::default()
            .address(address)
            .host_id(id)
            .redis_cluster(nodes)
    }

    /// A chat host of a multi-host test on the primary watched by the sentinels at
    /// `sentinels` (as [`crate::redis::SENTINEL_MASTER`]): on `address`, named `id`.
    pub fn host_on_sentinel(address: &str, id: &str, sentinels: &[String]) -> Self {
        let mut options = Self::default().address(address).host_id(id);
        options.redis_sentinels = sentinels.to_vec();
        options
    }

    pub fn sidecar_set(mut self, kv: &str) -> Self {
        self.sidecar_set.push(kv.to_owned());
        self
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }
    /// Listen on loopback address `ip` (e.g. "127.0.0.2") instead of 127.0.0.1.
    pub fn address(mut self, ip: &str) -> Self {
        self.address = parse_loopback(ip);
        self
    }
    /// Use the Redis at `url` (`redis.url`).
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_url = url.to_owned();
        self
    }
    /// Use the Redis Cluster with these seed nodes (`redis.cluster_nodes`).
    pub fn redis_cluster(mut self, nodes: &[String]) -> Self {
        self.redis_cluster = nodes.to_vec();
        self
    }
    /// This host's name among hosts (`host.id`).
    pub fn host_id(mut self, id: &str) -> Self {
        self.host_id = Some(id.to_owned());
        self
    }
    /// The sidecar's `presence.leave_grace_ms`.
    pub fn leave_grace_ms(mut self, ms: u64) -> Self {
        self.leave_grace_ms = ms;
        self
    }

    /// The sidecar's `plugins.chain` (e.g. `&["ban", "rate_limit"]`).
    pub fn plugins(mut self, chain: &[&str]) -> Self {
        self.plugins = chain.iter().map(|p| p.to_string()).collect();
        self
    }

    /// The `[redis]` section for these options; empty when no Redis is configured.
    pub(super) fn redis_toml(&self) -> String {
        let mut out = String::new();
        if !self.redis_url.is_empty()
            || !self.redis_cluster.is_empty()
            || !self.redis_sentinels.is_empty()
        {
            out.push_str("[redis]\n");
        }
        if !self.redis_sentinels.is_empty() {
            let _ = writeln!(out, "sentinels = {:?}", self.redis_sentinels);
            let _ = writeln!(out, "sentinel_master = {:?}", crate::redis::SENTINEL_MASTER);
        }
        if !self.redis_url.is_empty() {
            let _ = writeln!(out, "url = {:?}", self.redis_url);
        }
        if !self.redis_cluster.is_empty() {
            let _ = writeln!(out, "cluster_nodes = {:?}", self.redis_cluster);
        }
        out
    }
}
