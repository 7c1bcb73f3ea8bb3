//! Configuration: defaults, then a TOML file, then `CHATUP_<SECTION>_<KEY>` environment
//! variables, then `--set section.key=value` flags (later layers win).
//!
//! The set of keys is not written down anywhere but in [`Config`]: the defaults are
//! serialized to a TOML tree and its leaves are the keys. Every layer is checked against that
//! tree, so an unknown or mistyped key fails loudly and names itself instead of being ignored.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::{Table, Value};

use crate::jwt::KeyFamily;

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "CHATUP_";

/// Environment variable naming the config file (same as `--config`).
pub const CONFIG_FILE_ENV: &str = "CHATUP_CONFIG";

/// Keys that were renamed, `(old, new)`. The old name is still read in every layer (file,
/// environment, `--set`), with a warning naming the new one; both given with different
/// values is an error.
pub const RENAMED_KEYS: &[(&str, &str)] = &[("roles.worker", "roles.chat_host")];

/// The sidecar's whole configuration. Every key is optional; see the field docs for why each
/// exists and its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub relay: RelayConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub redis: RedisConfig,
    pub host: HostConfig,
    pub roles: RolesConfig,
    pub dispatch: DispatchConfig,
    pub presence: PresenceConfig,
    pub admin: AdminConfig,
    pub plugins: PluginsConfig,
    pub rate_limit: RateLimitConfig,
    pub blacklist: BlacklistConfig,
    pub webhook: WebhookConfig,
    pub publish_hook: PublishHookConfig,
    pub demo: DemoConfig,
    pub log: LogConfig,
}

/// The Unix socket that the nginx workers of this host connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Path of the socket. Must match nginx's `chatup_relay_socket`.
    pub socket: PathBuf,
    /// File mode given to the socket, so that nginx workers (often another user in the same
    /// group) may connect while others may not.
    pub socket_mode: SocketMode,
    /// Messages queued for one nginx worker before its connection is closed as too slow.
    /// Bounds the memory a stuck worker can pin; the worker reconnects and resumes.
    pub queue_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/chatup/relay.sock"),
            socket_mode: SocketMode(0o660),
            queue_size: 65_536,
        }
    }
}

/// The HTTP listener for the publisher endpoints and `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; nginx proxies the public paths to it, so loopback by default.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
        }
    }
}

/// How publisher tokens (JWT) are verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// PEM public key (RSA, EC or Ed25519) or, for HS* algorithms, the file holding the
    /// shared secret (trailing whitespace is not part of the secret).
    pub public_key_file: PathBuf,
    /// Algorithms a token may be signed with. Pinned so a token cannot choose its own
    /// (e.g. `none`, or HS256 with the public key as secret); all must fit the key.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Required `iss` claim; empty means not checked.
    pub issuer: String,
    /// Required `aud` claim; empty means not checked.
    pub audience: String,
    /// Refuse tokens without an `exp` claim. The original system's tokens had none:
    /// `false` accepts them, for a migration, and such a token never expires (a leaked one
    /// works until the key is changed), so every start then logs a warning.
    pub require_exp: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key_file: PathBuf::from("/etc/chatup/jwt-public.pem"),
            algorithms: vec![Algorithm::RS256],
            leeway_seconds: 5,
            issuer: String::new(),
            audience: String::new(),
            require_exp: true,
        }
    }
}

/// Limits on what publishers may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest chat message, in characters (Unicode scalar values), not bytes.
    pub max_message_chars: usize,
    /// Largest serialized `data` of an event, in bytes.
    pub max_event_bytes: usize,
    /// How long a publish's idempotency key is remembered: a retry with the same key (same
    /// user, same channel) within it gets the first answer and publishes nothing. Long
    /// enough to cover a client's retries through an outage, short enough that keys take
    /// little room.
    pub idempotency_window_seconds: u64,
}

/// Longest `limits.idempotency_window_seconds`: a day.
pub const MAX_IDEMPOTENCY_WINDOW_SECONDS: u64 = 86_400;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_chars: 1000,
            max_event_bytes: 4096,
            idempotency_window_seconds: 300,
        }
    }
}

/// Message history kept by the memory broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per channel, for replay and resume.
    pub size: usize,
    /// A channel without subscribers and without messages for this long is forgotten (its
    /// next use starts a new epoch), so abandoned channels do not hold memory forever.
    pub ttl_seconds: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl_seconds: 86_400,
        }
    }
}

/// Redis, for many hosts: one server (`url`), a Redis Cluster (`cluster_nodes`) or a
/// primary watched by Redis Sentinel (`sentinels`). With none set the sidecar uses its
/// in-process memory broker and serves one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis server: `redis://[[user]:password@]host[:port][/db]` or
    /// `unix:///path/to/redis.sock`. TLS is not built in: reach a remote TLS-only Redis
    /// through a local tunnel.
    pub url: String,
    /// Seed nodes of a Redis Cluster (same URL form). When set, channels use sharded
    /// pub/sub (SPUBLISH/SSUBSCRIBE) so a message travels only within its channel's shard.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel nodes (`redis://[:password@]host:26379`) watching the primary named
    /// `sentinel_master`. The sidecar asks them where the primary is and moves to the new
    /// one when they promote a replica.
    pub sentinels: Vec<String>,
    /// The name the sentinels know the primary by (`sentinel monitor <name> ...`).
    pub sentinel_master: String,
    /// The password of the primary and its replicas, with `sentinels` (for `url` and
    /// `cluster_nodes` it is part of the URLs).
    pub password: String,
    /// Prefix of every key and pub/sub channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// How long a Redis command may take; past it a publish fails with `unavailable`
    /// instead of hanging the publisher.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
            password: String::new(),
            key_prefix: "chatup".into(),
            timeout_ms: 1000,
        }
    }
}

impl RedisConfig {
    /// Whether Redis is configured at all (otherwise: memory broker).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.cluster_nodes.is_empty() || !self.sentinels.is_empty()
    }
}

/// How this host announces itself to the dispatcher (through Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name among hosts; must be unique. Empty: the machine's hostname and the
    /// HTTP port (`chat1:7001`).
    pub id: String,
    /// Base URL at which clients reach this host's nginx, e.g. `https://chat1.example.com`.
    /// Empty means "the origin the client used for the dispatcher", which suits one host.
    pub public_url: String,
    /// Where nginx mounts the subscriber and publisher endpoints under `public_url`.
    pub sub_path: String,
    pub pub_path: String,
    /// How often this host writes its load and channel counts.
    pub report_interval_ms: u64,
    /// A host that has not reported for this long is dead to the dispatcher.
    pub ttl_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            public_url: String::new(),
            sub_path: "/sub/".into(),
            pub_path: "/pub".into(),
            report_interval_ms: 1000,
            ttl_ms: 3000,
        }
    }
}

/// Which roles this process plays. A single-host install runs them all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesConfig {
    /// The chat host: relay for the local nginx workers, publisher endpoints, load reports.
    /// Formerly `roles.worker`, still read (see [`RENAMED_KEYS`]).
    pub chat_host: bool,
    /// `POST /join/<channel>`: picks a chat host for a client.
    pub dispatcher: bool,
    /// The admin API: post, ban, history, stats, blacklist, metrics.
    pub admin: bool,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            chat_host: true,
            dispatcher: true,
            admin: true,
        }
    }
}

/// The dispatcher's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Origins allowed to call the dispatcher from a browser (`*` for any). Empty: no CORS
    /// headers, so only same-origin pages can read the answer.
    pub cors_origins: Vec<String>,
    /// In a host's load score one publisher weighs as much as this many viewers (a
    /// publisher costs JWT checks, plugins and a socket on the sidecar).
    pub publisher_weight: u64,
    /// Recent messages of the channel returned by `/join`.
    pub history: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            publisher_weight: 10,
            history: 20,
        }
    }
}

/// Presence of publishers in channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Publish `join`/`leave` events when an authenticated publisher enters or leaves a
    /// channel.
    pub events: bool,
    /// How long a user whose last session dropped (closed by the client, or its connection
    /// broke) still counts as in the channel before its `leave` is announced: a reload or a
    /// short network break comes back within it and makes neither a `leave` nor a `join`.
    /// An explicit leave, a ban and a shutdown leave at once. 0: leave at once always.
    pub leave_grace_ms: u64,
}

/// The longest `presence.leave_grace_ms`: a user gone for longer is not coming back soon.
pub const MAX_LEAVE_GRACE_MS: u64 = 60_000;

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            events: true,
            leave_grace_ms: 5000,
        }
    }
}

/// The admin API's authentication. Admin tokens are signed with their own key, never the
/// publishers' one, so a publisher token can never act as an admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// PEM public key (or HS* shared-secret file) that admin tokens are checked against.
    /// Must differ from `auth.public_key_file`. Empty: the admin API answers every call
    /// that needs a token with 503 `admin_disabled` (`/health` and `/metrics` still work).
    pub public_key_file: PathBuf,
    /// Algorithms an admin token may be signed with; all must fit the key.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf` of `Authorization: Bearer` admin tokens.
    pub leeway_seconds: u64,
    /// Accept request bodies that are a JWT whose payload is a JSON array (the format of
    /// the original system's admin calls). Such tokens carry no expiry: anyone holding one
    /// can replay it, so turn this off when nothing produces them.
    pub array_tokens: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            public_key_file: PathBuf::new(),
            algorithms: vec![Algorithm::RS256],
            leeway_seconds: 5,
            array_tokens: true,
        }
    }
}

/// The moderation plugins every publish goes through, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The chain, run in this order; a plugin not listed is off. Known names: `ban`,
    /// `rate_limit`, `blacklist`, `webhook`, `publish_hook`.
    pub chain: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            chain: vec!["ban".into(), "rate_limit".into(), "blacklist".into()],
        }
    }
}

/// The `rate_limit` plugin: at most `messages` per `per_seconds` per user per channel,
/// counted across hosts through Redis (in process with the memory broker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub messages: u32,
    pub per_seconds: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            messages: 10,
            per_seconds: 10,
        }
    }
}

/// The `blacklist` plugin. Words match whole words, case-insensitively, in any script.
/// These lists are always in force; the admin API adds (and removes) more, shared by every
/// host through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlacklistConfig {
    /// A message containing one of these is refused (`blacklisted`).
    pub words: Vec<String>,
    /// These are masked in the message, which goes through.
    pub muted: Vec<String>,
    /// What each character of a muted word is replaced with.
    pub mask: String,
}

impl Default for BlacklistConfig {
    fn default() -> Self {
        Self {
            words: Vec::new(),
            muted: Vec::new(),
            mask: "*".into(),
        }
    }
}

/// The `webhook` plugin: messages containing a trigger are posted, in Slack's
/// incoming-webhook format, to `url`, in the background with retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (a Slack incoming-webhook URL, or any endpoint taking that JSON).
    pub url: String,
    /// Words or phrases that trigger the webhook (whole words, case-insensitive).
    pub triggers: Vec<String>,
    /// Whether a triggering message is still broadcast to the channel.
    pub broadcast: bool,
    /// How long one POST may take.
    pub timeout_ms: u64,
    /// Attempts after the first failure, with growing delays.
    pub retries: u32,
    /// Posts waiting to be sent; past it new ones are dropped (and logged), so a dead
    /// endpoint never holds memory or slows publishing.
    pub queue_size: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            triggers: Vec::new(),
            broadcast: true,
            timeout_ms: 5000,
            retries: 3,
            queue_size: 1000,
        }
    }
}

/// The `publish_hook` plugin: the operator's backend accepts, rejects or rewrites each
/// message before it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishHookConfig {
    /// Where to POST each message.
    pub url: String,
    /// How long the backend has to answer.
    pub timeout_ms: u64,
    /// When the backend fails or does not answer in time: `true` publishes the message
    /// anyway, `false` refuses it (`hook_unavailable`).
    pub fail_open: bool,
}

impl Default for PublishHookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout_ms: 500,
            fail_open: false,
        }
    }
}

/// Demo publisher tokens, `POST /demo/token` (chat-host role), for the example page of
/// `scripts/run`. Anyone who can reach the endpoint can publish under any name: never in
/// production.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// The private half of the publishers' key pair (PEM), or the HS* secret file, signing
    /// with the first of `auth.algorithms`. Empty (the default): no `/demo/token`.
    pub private_key_file: PathBuf,
    /// How long a demo token is valid, in seconds.
    pub ttl_seconds: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            private_key_file: PathBuf::new(),
            ttl_seconds: 3600,
        }
    }
}

/// Logging to stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `chatup_sidecar=debug,info`; `RUST_LOG` wins.
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A Unix file mode written in octal, as in `chmod` (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_prefix("0o").unwrap_or(&text);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(SocketMode(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not an octal file mode between 0000 and 0777 (e.g. \"0660\")"
            ))),
        }
    }
}

/// Why the configuration could not be loaded. Each variant names the key and where the
/// offending value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("unknown config key `{key}` in {origin}; known keys: {known}")]
    UnknownKey {
        key: String,
        origin: String,
        known: String,
    },
    #[error("config key `{key}` in {origin} must be {expected}, not {found}")]
    WrongType {
        key: String,
        origin: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid value for `{key}` in {origin}: {message}")]
    BadValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("--set expects section.key=value (e.g. --set http.listen=127.0.0.1:7001), got `{0}`")]
    BadSet(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "`{old}` ({old_origin}) and `{new}` ({new_origin}) are the same setting and disagree; \
         `{old}` is the deprecated name: remove it and keep `{new}`"
    )]
    RenamedConflict {
        old: &'static str,
        old_origin: String,
        new: &'static str,
        new_origin: String,
    },
}

/// A loaded configuration and the warnings met on the way (logged once logging is set up).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// The defaults as a TOML tree: the authoritative list of keys and their types.
    pub fn defaults_tree() -> Table {
        match Value::try_from(Config::default()) {
            Ok(Value::Table(t)) => t,
            // The defaults are plain data that always serialize to a table.
            _ => Table::new(),
        }
    }

    /// Every key as `section.key`, in file order of sections.
    pub fn keys() -> Vec<String> {
        leaves(&Config::defaults_tree())
            .into_iter()
            .map(|(path, _)| path.join("."))
            .collect()
    }

    /// The environment variable that overrides `key` (`http.listen` → `CHATUP_HTTP_LISTEN`).
    pub fn env_var(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
    }

    /// Loads the layers in order: defaults, `file`, the `CHATUP_*` variables of `env`, then
    /// the `--set` assignments.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        sets: &[String],
    ) -> Result<Loaded, ConfigError> {
        let defaults = Config::defaults_tree();
        let mut merged = defaults.clone();
        let mut warnings = Vec::new();
        let mut renames: Vec<Rename> = RENAMED_KEYS
            .iter()
            .map(|&(old, new)| Rename::new(old, new))
            .collect();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            let mut table: Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let origin = format!("config file {}", path.display());
            for rename in &mut renames {
                if let Some(value) = take_path(&mut table, rename.old) {
                    check_type(rename.default(&defaults)?, &value, rename.old, &origin)?;
                    rename.old_given = Some((value, origin.clone()));
                }
            }
            merge_table(&defaults, &mut merged, &table, &mut Vec::new(), &origin)?;
            for rename in &mut renames {
                let path: Vec<&str> = rename.new.split('.').collect();
                if let Some(value) = get_path(&table, &path) {
                    rename.new_given = Some((value.clone(), origin.clone()));
                }
            }
        }

        let key_by_env: BTreeMap<String, Vec<String>> = leaves(&defaults)
            .into_iter()
            .map(|(path, _)| (Config::env_var(&path.join(".")), path))
            .collect();
        let mut env_values: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
        for (name, value) in env {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) || name == CONFIG_FILE_ENV {
                continue;
            }
            if let Some(rename) = renames.iter_mut().find(|r| Config::env_var(r.old) == name) {
                let origin = format!("environment variable {name}");
                let raw = value.to_str().ok_or_else(|| ConfigError::BadValue {
                    key: rename.old.into(),
                    origin: origin.clone(),
                    message: "not valid UTF-8".into(),
                })?;
                let value = leaf_value(rename.default(&defaults)?, raw, rename.old, &origin)?;
                rename.old_given = Some((value, origin));
                continue;
            }
            let Some(path) = key_by_env.get(name) else {
                warnings.push(format!(
                    "environment variable {name} matches no config key and is ignored"
                ));
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::BadValue {
                key: path.join("."),
                origin: format!("environment variable {name}"),
                message: "not valid UTF-8".into(),
            })?;
            env_values.insert(name.to_owned(), (path.clone(), value));
        }
        for (name, (path, raw)) in env_values {
            let origin = format!("environment variable {name}");
            set_leaf(&defaults, &mut merged, &path, &raw, &origin)?;
            note_new_key(&mut renames, &merged, &path, &origin);
        }

        for assignment in sets {
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| ConfigError::BadSet(assignment.clone()))?;
            let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::BadSet(assignment.clone()));
            }
            if let Some(rename) = renames.iter_mut().find(|r| r.old == path.join(".")) {
                let value = leaf_value(rename.default(&defaults)?, raw, rename.old, "--set")?;
                rename.old_given = Some((value, "--set".into()));
                continue;
            }
            set_leaf(&defaults, &mut merged, &path, raw, "--set")?;
            note_new_key(&mut renames, &merged, &path, "--set");
        }

        for rename in renames {
            let Some((value, old_origin)) = rename.old_given else {
                continue;
            };
            warnings.push(format!(
                "config key `{}` ({old_origin}) is deprecated: it is now `{}` (environment \
                 variable {}); rename it",
                rename.old,
                rename.new,
                Config::env_var(rename.new),
            ));
            match rename.new_given {
                Some((new_value, new_origin)) if new_value != value => {
                    return Err(ConfigError::RenamedConflict {
                        old: rename.old,
                        old_origin,
                        new: rename.new,
                        new_origin,
                    });
                }
                Some(_) => {}
                None => {
                    let path: Vec<&str> = rename.new.split('.').collect();
                    if let Some(slot) = get_path_mut(&mut merged, &path) {
                        *slot = value;
                    }
                }
            }
        }

        let config: Config = serde_path_to_error::deserialize(Value::Table(merged)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            },
        )?;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        check_algorithms("auth.algorithms", &self.auth.algorithms)?;
        check_algorithms("admin.algorithms", &self.admin.algorithms)?;
        if self.relay.socket.as_os_str().is_empty() {
            return Err(invalid("relay.socket", "must not be empty".into()));
        }
        if self.relay.queue_size == 0 {
            return Err(invalid("relay.queue_size", "must be at least 1".into()));
        }
        if self.limits.max_message_chars == 0 {
            return Err(invalid(
                "limits.max_message_chars",
                "must be at least 1".into(),
            ));
        }
        if !(1..=MAX_IDEMPOTENCY_WINDOW_SECONDS).contains(&self.limits.idempotency_window_seconds) {
            return Err(invalid(
                "limits.idempotency_window_seconds",
                format!("must be from 1 to {MAX_IDEMPOTENCY_WINDOW_SECONDS} (a day)"),
            ));
        }
        if self.history.ttl_seconds == 0 {
            return Err(invalid("history.ttl_seconds", "must be at least 1".into()));
        }
        let redis_url = |key: &str, url: &str| {
            if ["redis://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!(
                        "{url:?} is not a Redis URL (redis://host:port or unix:///path; \
                         rediss:// is not supported, use a local TLS tunnel)"
                    ),
                ))
            }
        };
        let kinds = [
            !self.redis.url.is_empty(),
            !self.redis.cluster_nodes.is_empty(),
            !self.redis.sentinels.is_empty(),
        ];
        if kinds.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                "redis",
                "set one of redis.url (one server), redis.cluster_nodes (a cluster) or \
                 redis.sentinels (a primary watched by Redis Sentinel)"
                    .into(),
            ));
        }
        if !self.redis.url.is_empty() {
            redis_url("redis.url", &self.redis.url)?;
        }
        for node in &self.redis.cluster_nodes {
            redis_url("redis.cluster_nodes", node)?;
        }
        for node in &self.redis.sentinels {
            redis_url("redis.sentinels", node)?;
            if !node.starts_with("redis://") {
                return Err(invalid(
                    "redis.sentinels",
                    format!("{node:?}: sentinels are reached over TCP (redis://host:26379)"),
                ));
            }
        }
        if !self.redis.sentinels.is_empty() && self.redis.sentinel_master.is_empty() {
            return Err(invalid(
                "redis.sentinel_master",
                "the name the sentinels know the primary by is needed with redis.sentinels".into(),
            ));
        }
        if self.redis.sentinels.is_empty()
            && (!self.redis.sentinel_master.is_empty() || !self.redis.password.is_empty())
        {
            return Err(invalid(
                if self.redis.password.is_empty() {
                    "redis.sentinel_master"
                } else {
                    "redis.password"
                },
                "only used with redis.sentinels (put a password in redis.url or \
                 redis.cluster_nodes)"
                    .into(),
            ));
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty, without spaces or braces (braces are Redis Cluster hash tags)"
                    .into(),
            ));
        }
        if self.redis.timeout_ms == 0 {
            return Err(invalid("redis.timeout_ms", "must be at least 1".into()));
        }
        if !self.host.public_url.is_empty()
            && !["http://", "https://"]
                .iter()
                .any(|s| self.host.public_url.starts_with(s))
        {
            return Err(invalid(
                "host.public_url",
                format!(
                    "{:?} must start with http:// or https:// (the WebSocket URLs are derived from it)",
                    self.host.public_url
                ),
            ));
        }
        if let Some(bad) = self
            .host
            .id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(invalid(
                "host.id",
                format!(
                    "{:?} has {bad:?}; a host id may use ASCII letters, digits, '_', '-', '.' \
                     and ':' (it becomes part of Redis key names)",
                    self.host.id
                ),
            ));
        }
        if self.host.id.len() > 128 {
            return Err(invalid("host.id", "must be at most 128 characters".into()));
        }
        for (key, path) in [
            ("host.sub_path", &self.host.sub_path),
            ("host.pub_path", &self.host.pub_path),
        ] {
            if !path.starts_with('/') {
                return Err(invalid(key, format!("{path:?} must start with /")));
            }
        }
        if self.host.report_interval_ms == 0 || self.host.ttl_ms <= self.host.report_interval_ms {
            return Err(invalid(
                "host.ttl_ms",
                "must be larger than host.report_interval_ms (which must be at least 1), so a \
                 live host never looks dead between two reports"
                    .into(),
            ));
        }
        if self.presence.leave_grace_ms > MAX_LEAVE_GRACE_MS {
            return Err(invalid(
                "presence.leave_grace_ms",
                format!("must be from 0 to {MAX_LEAVE_GRACE_MS}"),
            ));
        }
        if !self.roles.chat_host && !self.roles.dispatcher && !self.roles.admin {
            return Err(invalid(
                "roles",
                "at least one of roles.chat_host, roles.dispatcher and roles.admin must be true"
                    .into(),
            ));
        }
        if !self.roles.chat_host && !self.redis.enabled() {
            return Err(invalid(
                "roles.chat_host",
                "a dispatcher or admin API without the chat-host role needs Redis (redis.url or \
                 redis.cluster_nodes) to reach the chat hosts"
                    .into(),
            ));
        }
        self.validate_plugins()?;
        if self.demo.ttl_seconds == 0 {
            return Err(invalid("demo.ttl_seconds", "must be at least 1".into()));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty".into()));
        }
        Ok(())
    }

    /// Checks the plugin chain and the settings of the plugins in it.
    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let mut seen = Vec::new();
        for name in &self.plugins.chain {
            if !PLUGIN_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    "plugins.chain",
                    format!(
                        "unknown plugin {name:?}; known: {}",
                        PLUGIN_NAMES.join(", ")
                    ),
                ));
            }
            if seen.contains(&name) {
                return Err(invalid(
                    "plugins.chain",
                    format!("{name:?} is listed twice"),
                ));
            }
            seen.push(name);
        }
        let on = |name: &str| self.plugins.chain.iter().any(|n| n == name);
        if on("rate_limit") && (self.rate_limit.messages == 0 || self.rate_limit.per_seconds == 0) {
            return Err(invalid(
                "rate_limit",
                "rate_limit.messages and rate_limit.per_seconds must be at least 1 (or take \
                 rate_limit out of plugins.chain)"
                    .into(),
            ));
        }
        if self.blacklist.mask.is_empty() {
            return Err(invalid("blacklist.mask", "must not be empty".into()));
        }
        let http_url = |key: &str, url: &str, plugin: &str| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else if url.is_empty() {
                Err(invalid(
                    key,
                    format!("{plugin} is in plugins.chain, so {key} must be set"),
                ))
            } else {
                Err(invalid(
                    key,
                    format!("{url:?} must start with http:// or https://"),
                ))
            }
        };
        if on("webhook") {
            http_url("webhook.url", &self.webhook.url, "webhook")?;
            if self.webhook.triggers.iter().all(|t| t.trim().is_empty()) {
                return Err(invalid(
                    "webhook.triggers",
                    "webhook is in plugins.chain, so at least one trigger is needed".into(),
                ));
            }
            if self.webhook.timeout_ms == 0 || self.webhook.queue_size == 0 {
                return Err(invalid(
                    "webhook",
                    "webhook.timeout_ms and webhook.queue_size must be at least 1".into(),
                ));
            }
        }
        if on("publish_hook") {
            http_url("publish_hook.url", &self.publish_hook.url, "publish_hook")?;
            if self.publish_hook.timeout_ms == 0 {
                return Err(invalid(
                    "publish_hook.timeout_ms",
                    "must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }

    /// The configuration as TOML, e.g. for `chatup-sidecar config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// The plugins `plugins.chain` may name.
pub const PLUGIN_NAMES: &[&str] = &["ban", "rate_limit", "blacklist", "webhook", "publish_hook"];

/// Checks that `algorithms` is non-empty and of one key family.
fn check_algorithms(key: &str, algorithms: &[Algorithm]) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let Some(first) = algorithms.first() else {
        return Err(invalid(
            "at least one algorithm is needed (e.g. [\"RS256\"])".into(),
        ));
    };
    let family = KeyFamily::of(*first);
    if let Some(other) = algorithms.iter().find(|a| KeyFamily::of(**a) != family) {
        return Err(invalid(format!(
            "{first:?} ({family}) and {other:?} ({}) need different kinds of key; \
             one key file serves one family, so list algorithms of one family only",
            KeyFamily::of(*other)
        )));
    }
    Ok(())
}

/// Text for `--help`: every key with its environment variable and default.
pub fn keys_help() -> String {
    let mut out = String::from(
        "Configuration keys (TOML file section.key; environment variable; default).\n\
         Precedence: --set > environment > config file > default. Lists in environment\n\
         variables and --set are comma-separated (CHATUP_AUTH_ALGORITHMS=RS256,RS512) or\n\
         written as in TOML (--set 'dispatch.cors_origins=[\"*\"]'); a string may be quoted.\n\n",
    );
    for (path, value) in leaves(&Config::defaults_tree()) {
        let key = path.join(".");
        out.push_str(&format!(
            "  {key:<24} {:<32} {}\n",
            Config::env_var(&key),
            value
        ));
    }
    out
}

/// The leaves of a tree, each with its path.
fn leaves(table: &Table) -> Vec<(Vec<String>, Value)> {
    fn walk(table: &Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
        for (k, v) in table {
            prefix.push(k.clone());
            match v {
                Value::Table(t) => walk(t, prefix, out),
                other => out.push((prefix.clone(), other.clone())),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(table, &mut Vec::new(), &mut out);
    out
}

fn known_keys() -> String {
    Config::keys().join(", ")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Copies `given` into `merged`, refusing keys that `defaults` does not have and values whose
/// type differs from the default's.
fn merge_table(
    defaults: &Table,
    merged: &mut Table,
    given: &Table,
    path: &mut Vec<String>,
    origin: &str,
) -> Result<(), ConfigError> {
    for (k, v) in given {
        path.push(k.clone());
        let key = path.join(".");
        let (Some(default), Some(slot)) = (defaults.get(k), merged.get_mut(k)) else {
            return Err(ConfigError::UnknownKey {
                key,
                origin: origin.into(),
                known: known_keys(),
            });
        };
        match (default, v, slot) {
            (Value::Table(d), Value::Table(g), Value::Table(m)) => {
                merge_table(d, m, g, path, origin)?
            }
            (d, g, slot) => {
                check_type(d, g, &key, origin)?;
                *slot = g.clone();
            }
        }
        path.pop();
    }
    Ok(())
}

fn check_type(default: &Value, given: &Value, key: &str, origin: &str) -> Result<(), ConfigError> {
    let same = std::mem::discriminant(default) == std::mem::discriminant(given);
    if same {
        if let (Value::Array(_), Value::Array(items)) = (default, given) {
            if let Some(bad) = items.iter().find(|i| !i.is_str()) {
                return Err(ConfigError::WrongType {
                    key: key.into(),
                    origin: origin.into(),
                    expected: "a list of strings",
                    found: type_name(bad),
                });
            }
        }
        return Ok(());
    }
    Err(ConfigError::WrongType {
        key: key.into(),
        origin: origin.into(),
        expected: type_name(default),
        found: type_name(given),
    })
}

/// Sets one leaf from text (an environment variable or `--set`), typed like its default.
fn set_leaf(
    defaults: &Table,
    merged: &mut Table,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let key = path.join(".");
    let unknown = || ConfigError::UnknownKey {
        key: key.clone(),
        origin: origin.into(),
        known: known_keys(),
    };
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut d = defaults;
    let mut m = merged;
    for p in parents {
        match (d.get(p), m.get_mut(p)) {
            (Some(Value::Table(dt)), Some(Value::Table(mt))) => {
                d = dt;
                m = mt;
            }
            _ => return Err(unknown()),
        }
    }
    let default = match d.get(last) {
        Some(Value::Table(_)) | None => return Err(unknown()),
        Some(v) => v,
    };
    let value = leaf_value(default, raw, &key, origin)?;
    m.insert(last.clone(), value);
    Ok(())
}

/// A leaf's value from text (an environment variable or `--set`), typed like `default`.
fn leaf_value(default: &Value, raw: &str, key: &str, origin: &str) -> Result<Value, ConfigError> {
    let bad = |message: String| ConfigError::BadValue {
        key: key.into(),
        origin: origin.into(),
        message,
    };
    let raw_trimmed = raw.trim();
    // A TOML value as in the file (`["*"]`, `"text"`), for the kinds whose plain form
    // would take the brackets or quotes literally.
    let toml_value = || -> Result<Value, ConfigError> {
        let mut table: toml::Table = toml::from_str(&format!("v = {raw_trimmed}"))
            .map_err(|e| bad(format!("{raw:?} is not a TOML value: {}", e.message())))?;
        table
            .remove("v")
            .ok_or_else(|| bad(format!("{raw:?} is not a TOML value")))
    };
    let quoted =
        raw_trimmed.len() >= 2 && raw_trimmed.starts_with('"') && raw_trimmed.ends_with('"');
    let value = match default {
        Value::String(_) if quoted => match toml_value()? {
            text @ Value::String(_) => text,
            _ => return Err(bad(format!("expected a string, got {raw:?}"))),
        },
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Integer(_) => Value::Integer(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected an integer, got {raw:?}")))?,
        ),
        Value::Float(_) => Value::Float(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected a number, got {raw:?}")))?,
        ),
        Value::Boolean(_) => Value::Boolean(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?,
        ),
        Value::Array(_) if raw_trimmed.starts_with('[') => match toml_value()? {
            list @ Value::Array(_) => list,
            _ => return Err(bad(format!("expected a list, got {raw:?}"))),
        },
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Value::Datetime(_) | Value::Table(_) => {
            return Err(bad("this key cannot be set from text".into()))
        }
    };
    Ok(value)
}

/// A renamed key met while loading: where each of its names was given, last layer winning.
struct Rename {
    old: &'static str,
    new: &'static str,
    /// The value given under the old name, and where.
    old_given: Option<(Value, String)>,
    /// The value given under the new name, and where: compared with the old one.
    new_given: Option<(Value, String)>,
}

impl Rename {
    fn new(old: &'static str, new: &'static str) -> Self {
        Self {
            old,
            new,
            old_given: None,
            new_given: None,
        }
    }

    /// The new key's default, which types the value given under the old name.
    fn default<'a>(&self, defaults: &'a Table) -> Result<&'a Value, ConfigError> {
        let path: Vec<&str> = self.new.split('.').collect();
        get_path(defaults, &path).ok_or_else(|| ConfigError::UnknownKey {
            key: self.new.into(),
            origin: "the list of renamed keys".into(),
            known: known_keys(),
        })
    }
}

/// Records that a layer set the new name of a renamed key.
fn note_new_key(renames: &mut [Rename], merged: &Table, path: &[String], origin: &str) {
    let key = path.join(".");
    for rename in renames.iter_mut().filter(|r| r.new == key) {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        if let Some(value) = get_path(merged, &parts) {
            rename.new_given = Some((value.clone(), origin.into()));
        }
    }
}

fn get_path<'a>(table: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)
}

fn get_path_mut<'a>(table: &'a mut Table, path: &[&str]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get_mut(*p)?.as_table_mut()?;
    }
    t.get_mut(*last)
}

/// Removes a dotted key from a parsed file, returning its value.
fn take_path(table: &mut Table, dotted: &str) -> Option<Value> {
    let path: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get_mut(*p)?.as_table_mut()?;
    }
    t.remove(*last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::load(None, env(&[]), &[]).unwrap().config;
        assert_eq!(c.relay.socket, PathBuf::from("/run/chatup/relay.sock"));
        assert_eq!(c.relay.socket_mode, SocketMode(0o660));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.auth.algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.auth.leeway_seconds, 5);
        assert_eq!(c.limits.max_message_chars, 1000);
        assert_eq!(c.limits.max_event_bytes, 4096);
        assert_eq!(c.limits.idempotency_window_seconds, 300);
        assert_eq!(c.history.size, 100);
        assert_eq!(c.history.ttl_seconds, 86400);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn keys_come_from_the_struct() {
        let keys = Config::keys();
        for k in [
            "relay.socket",
            "relay.socket_mode",
            "http.listen",
            "auth.public_key_file",
            "auth.algorithms",
            "auth.leeway_seconds",
            "auth.issuer",
            "auth.audience",
            "limits.max_message_chars",
            "limits.max_event_bytes",
            "limits.idempotency_window_seconds",
            "history.size",
            "history.ttl_seconds",
            "log.level",
            "log.format",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
        }
        assert_eq!(
            Config::env_var("relay.socket_mode"),
            "CHATUP_RELAY_SOCKET_MODE"
        );
        assert!(keys_help().contains("CHATUP_AUTH_ALGORITHMS"));
    }

    #[test]
    fn layers_apply_in_order_flag_env_file_default() {
        let f = file(
            "[http]\nlisten = \"127.0.0.1:8000\"\n[history]\nsize = 7\nttl_seconds = 60\n\
             [auth]\nissuer = \"file\"\n",
        );
        let e = env(&[
            ("CHATUP_HISTORY_SIZE", "8"),
            ("CHATUP_AUTH_ISSUER", "env"),
            ("PATH", "/bin"),
        ]);
        let sets = vec!["auth.issuer=flag".to_string()];
        let c = Config::load(Some(f.path()), e, &sets).unwrap().config;
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8000"); // file
        assert_eq!(c.history.ttl_seconds, 60); // file
        assert_eq!(c.history.size, 8); // env beats file
        assert_eq!(c.auth.issuer, "flag"); // flag beats env
        assert_eq!(c.auth.leeway_seconds, 5); // default
    }

    #[test]
    fn lists_from_env_are_comma_separated() {
        let c = Config::load(
            None,
            env(&[("CHATUP_AUTH_ALGORITHMS", "RS256, RS512,PS256")]),
            &[],
        )
        .unwrap()
        .config;
        assert_eq!(
            c.auth.algorithms,
            vec![Algorithm::RS256, Algorithm::RS512, Algorithm::PS256]
        );
    }

    #[test]
    fn lists_and_strings_may_be_written_as_in_toml() {
        let sets = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, env(&[]), &sets).map(|l| l.config)
        };
        let c = sets(&[r#"dispatch.cors_origins=["*"]"#, r#"host.id="chat-1""#]).unwrap();
        assert_eq!(c.dispatch.cors_origins, vec!["*".to_owned()]);
        assert_eq!(c.host.id, "chat-1");
        let c =
            sets(&[r#"dispatch.cors_origins=["https://a.example", "https://b.example"]"#]).unwrap();
        assert_eq!(c.dispatch.cors_origins.len(), 2);
        // The comma-separated form still works.
        let c = sets(&["dispatch.cors_origins=https://a.example,https://b.example"]).unwrap();
        assert_eq!(c.dispatch.cors_origins[1], "https://b.example");
        let c = Config::load(
            None,
            env(&[("CHATUP_AUTH_ALGORITHMS", r#"["RS256", "RS512"]"#)]),
            &[],
        )
        .unwrap()
        .config;
        assert_eq!(c.auth.algorithms, vec![Algorithm::RS256, Algorithm::RS512]);
        for (bad, needle) in [
            (r#"dispatch.cors_origins=["*""#, "not a TOML value"),
            (r#"host.id="a" "b""#, "not a TOML value"),
        ] {
            let msg = sets(&[bad]).unwrap_err().to_string();
            assert!(msg.contains(needle), "{bad}: {msg}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[relay]\nsockett = \"/x\"\n");
        let err = Config::load(Some(f.path()), env(&[]), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`relay.sockett`"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("relay.socket,"), "{msg}");

        let f = file("[nope]\nx = 1\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`nope`"), "{msg}");

        let msg = Config::load(None, env(&[]), &["http.port=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`http.port`") && msg.contains("--set"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["http=1".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`http`"), "{msg}");

        let msg = Config::load(None, env(&[]), &["no-equals-sign".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("section.key=value"), "{msg}");
    }

    #[test]
    fn unknown_env_vars_only_warn() {
        let loaded = Config::load(None, env(&[("CHATUP_HTTP_LISTN", "x")]), &[]).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("CHATUP_HTTP_LISTN"));
    }

    #[test]
    fn the_old_chat_host_key_still_works_and_warns_once() {
        let f = file("[roles]\nworker = false\n[redis]\nurl = \"redis://127.0.0.1:1\"\n");
        let loaded = Config::load(Some(f.path()), env(&[]), &[]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("`roles.worker`"));
        assert!(loaded.warnings[0].contains("`roles.chat_host`"));
        assert!(loaded.warnings[0].contains("CHATUP_ROLES_CHAT_HOST"));

        // In every layer, and given twice it still warns once.
        let loaded = Config::load(
            Some(f.path()),
            env(&[("CHATUP_ROLES_WORKER", "false")]),
            &["roles.worker=false".into()],
        )
        .unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("--set"));

        let loaded = Config::load(None, env(&[("CHATUP_ROLES_WORKER", "true")]), &[]).unwrap();
        assert!(loaded.config.roles.chat_host);
        assert!(loaded.warnings[0].contains("CHATUP_ROLES_WORKER"));

        let msg = Config::load(None, env(&[("CHATUP_ROLES_WORKER", "maybe")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("roles.worker") && msg.contains("true or false"),
            "{msg}"
        );
        assert!(!Config::keys().contains(&"roles.worker".to_string()));
    }

    #[test]
    fn the_new_chat_host_key_works_without_warning() {
        let redis = "redis.url=redis://127.0.0.1:1".to_string();
        let loaded =
            Config::load(None, env(&[]), &["roles.chat_host=false".into(), redis]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let f = file("[roles]\nchat_host = false\n[redis]\nurl = \"redis://127.0.0.1:1\"\n");
        let loaded = Config::load(Some(f.path()), env(&[]), &[]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let loaded = Config::load(None, env(&[("CHATUP_ROLES_CHAT_HOST", "true")]), &[]).unwrap();
        assert!(loaded.config.roles.chat_host);
        assert!(Config::keys().contains(&"roles.chat_host".to_string()));
    }

    #[test]
    fn old_and_new_chat_host_keys_in_conflict_are_an_error() {
        let f = file("[roles]\nworker = false\n");
        let msg = Config::load(
            Some(f.path()),
            env(&[("CHATUP_ROLES_CHAT_HOST", "true")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("`roles.worker`"), "{msg}");
        assert!(msg.contains("`roles.chat_host`"), "{msg}");
        assert!(
            msg.contains("environment variable CHATUP_ROLES_CHAT_HOST"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("config file {}", f.path().display())),
            "{msg}"
        );

        let f = file("[roles]\nworker = true\nchat_host = false\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("roles.worker") && msg.contains("roles.chat_host"),
            "{msg}"
        );

        // The same value under both names is no conflict, only the old name's warning.
        let loaded = Config::load(
            None,
            env(&[]),
            &["roles.worker=true".into(), "roles.chat_host=true".into()],
        )
        .unwrap();
        assert!(loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn type_errors_name_key_and_origin() {
        let f = file("[history]\nsize = \"many\"\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`history.size`") && msg.contains("an integer"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[("CHATUP_HISTORY_SIZE", "lots")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("history.size") && msg.contains("CHATUP_HISTORY_SIZE"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["http.listen=nowhere".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("http.listen"), "{msg}");

        let msg = Config::load(None, env(&[]), &["history.size=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("history.size"), "{msg}");

        let msg = Config::load(None, env(&[]), &["auth.algorithms=RS257".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("auth.algorithms") && msg.contains("RS257"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["relay.socket_mode=999".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("relay.socket_mode") && msg.contains("octal"),
            "{msg}"
        );
    }

    #[test]
    fn many_host_settings_are_checked() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, env(&[]), &sets).map(|l| l.config)
        };
        let c = load(&["redis.url=redis://10.0.0.5:6379", "host.id=chat-1.eu:7001"]).unwrap();
        assert!(c.redis.enabled());
        assert!(!load(&[]).unwrap().redis.enabled());
        let sentinel = load(&[
            "redis.sentinels=redis://10.0.0.1:26379,redis://10.0.0.2:26379",
            "redis.sentinel_master=chat",
            "redis.password=pw",
        ])
        .unwrap();
        assert!(sentinel.redis.enabled());
        assert_eq!(sentinel.redis.sentinels.len(), 2);
        for (sets, needle) in [
            (&["host.id=chat 1"][..], "host.id"),
            (&["host.id=a{b}"], "host.id"),
            (&["redis.url=http://x"], "not a Redis URL"),
            (&["redis.url=rediss://x"], "TLS tunnel"),
            (
                &["redis.url=redis://a", "redis.cluster_nodes=redis://b"],
                "set one of",
            ),
            (
                &["redis.url=redis://a", "redis.sentinels=redis://b:26379"],
                "set one of",
            ),
            (&["redis.cluster_nodes=b:6379"], "redis.cluster_nodes"),
            (
                &["redis.sentinels=redis://b:26379"],
                "redis.sentinel_master",
            ),
            (
                &["redis.sentinels=unix:///s.sock", "redis.sentinel_master=m"],
                "over TCP",
            ),
            (
                &["redis.sentinel_master=m"],
                "only used with redis.sentinels",
            ),
            (
                &["redis.url=redis://a", "redis.password=pw"],
                "redis.password",
            ),
            (&["redis.key_prefix=a{b"], "hash tags"),
            (&["redis.timeout_ms=0"], "redis.timeout_ms"),
            (
                &["host.public_url=chat1.example.com"],
                "http:// or https://",
            ),
            (&["host.sub_path=sub"], "must start with /"),
            (
                &["limits.idempotency_window_seconds=0"],
                "limits.idempotency_window_seconds",
            ),
            (
                &["limits.idempotency_window_seconds=86401"],
                "from 1 to 86400",
            ),
            (&["host.ttl_ms=1000"], "larger than host.report_interval_ms"),
            (
                &["presence.leave_grace_ms=60001"],
                "`presence.leave_grace_ms`: must be from 0 to 60000",
            ),
            (
                &[
                    "roles.chat_host=false",
                    "roles.dispatcher=false",
                    "roles.admin=false",
                ],
                "at least one",
            ),
            (&["roles.chat_host=false"], "needs Redis"),
        ] {
            let err = load(sets).expect_err(&format!("{sets:?} must be refused"));
            assert!(err.to_string().contains(needle), "{sets:?}: {err}");
        }
    }

    #[test]
    fn plugin_settings_are_checked() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, env(&[]), &sets)
        };
        for (sets, needle) in [
            (&["plugins.chain=ban,spam"][..], "unknown plugin \"spam\""),
            (&["plugins.chain=ban,ban"], "listed twice"),
            (&["rate_limit.messages=0"], "rate_limit.messages"),
            (&["blacklist.mask="], "blacklist.mask"),
            (&["plugins.chain=webhook"], "webhook.url must be set"),
            (
                &["plugins.chain=webhook", "webhook.url=ftp://x"],
                "http:// or https://",
            ),
            (
                &["plugins.chain=webhook", "webhook.url=http://x"],
                "at least one trigger",
            ),
            (&["plugins.chain=publish_hook"], "publish_hook.url"),
            (
                &[
                    "plugins.chain=publish_hook",
                    "publish_hook.url=http://x",
                    "publish_hook.timeout_ms=0",
                ],
                "publish_hook.timeout_ms",
            ),
            (&["admin.algorithms=RS256,HS256"], "admin.algorithms"),
        ] {
            let err = load(sets).expect_err(&format!("{sets:?} must be refused"));
            assert!(err.to_string().contains(needle), "{sets:?}: {err}");
        }
        // A plugin that is off needs no settings.
        load(&["rate_limit.messages=0", "plugins.chain=ban"]).unwrap();
        load(&["plugins.chain="]).unwrap();
    }

    #[test]
    fn mixed_algorithm_families_are_refused() {
        let msg = Config::load(None, env(&[("CHATUP_AUTH_ALGORITHMS", "RS256,ES256")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("auth.algorithms") && msg.contains("ES256"),
            "{msg}"
        );
        let msg = Config::load(None, env(&[]), &["auth.algorithms=RS256,HS256".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("HS256"), "{msg}");
        let msg = Config::load(None, env(&[]), &["auth.algorithms=".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at least one"), "{msg}");
    }

    #[test]
    fn missing_or_broken_file_is_a_clear_error() {
        let msg = Config::load(Some(Path::new("/nonexistent/c.toml")), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/c.toml"), "{msg}");
        let f = file("[relay\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let c = Config::load(
            None,
            env(&[]),
            &["relay.socket_mode=0600".into(), "log.format=json".into()],
        )
        .unwrap()
        .config;
        let printed = c.to_toml();
        assert!(printed.contains("socket_mode = \"0600\""), "{printed}");
        let f = file(&printed);
        let again = Config::load(Some(f.path()), env(&[]), &[]).unwrap().config;
        assert_eq!(again, c);
    }

    #[test]
    fn demo_tokens_are_off_by_default_and_their_ttl_is_checked() {
        let c = Config::load(None, env(&[]), &[]).unwrap().config;
        assert_eq!(c.demo.private_key_file, PathBuf::new());
        assert_eq!(c.demo.ttl_seconds, 3600);
        let c = Config::load(
            None,
            env(&[("CHATUP_DEMO_PRIVATE_KEY_FILE", "/keys/jwt-private.pem")]),
            &["demo.ttl_seconds=60".into()],
        )
        .unwrap()
        .config;
        assert_eq!(
            c.demo.private_key_file,
            PathBuf::from("/keys/jwt-private.pem")
        );
        assert_eq!(c.demo.ttl_seconds, 60);
        let msg = Config::load(None, env(&[]), &["demo.ttl_seconds=0".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("demo.ttl_seconds"), "{msg}");
    }
}
