//! The `blacklist` plugin: a chat message containing a blocked word is refused
//! (`blacklisted`); muted words are masked (`blacklist.mask` per character) and the message
//! goes on. Words match as described in [`super::words`]: whole words, any letter case.
//! Event bodies pass untouched: their data is the application's, not text for people.
//!
//! The refusal does not say which word was found (`the message contains a blocked word`):
//! naming it would let a spammer probe the list word by word. The word is logged at debug
//! level for the operator.
//!
//! The lists in force are the config file's (`blacklist.words`, `blacklist.muted`, fixed
//! until restart) plus the *managed* lists, changed at run time through the admin API
//! ([`Blacklist::list`], [`Blacklist::add`], [`Blacklist::remove`]). The managed lists live
//! in process with the memory broker, and in Redis when `[redis]` is configured, so that
//! every host enforces the same lists:
//!
//! * `<prefix>:blacklist:words` and `<prefix>:blacklist:muted`: SETs of folded entries
//!   ([`super::words::normalize`]), so `Bad` and `bad` are one entry;
//! * `<prefix>:blacklist:version`: a counter, INCR'd after every change.
//!
//! Every host keeps compiled matchers and polls the version every second (one GET, bounded
//! by `redis.timeout_ms`); when it moved, it reads both SETs and rebuilds. A change made on
//! this host applies here at once. The automaton is built on a blocking thread and swapped
//! in whole, so publishing never waits for a rebuild. While Redis is down the last lists
//! stay in force (logged once).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::words::{normalize, Words};
use super::{Draft, Plugin};
use crate::cluster::redis::{RedisError, RedisLink};
use crate::config::BlacklistConfig;
use crate::message::Body;
use crate::publish_error::{ErrorCode, PublishError};

/// Longest managed entry, in characters (after trimming).
pub const MAX_ENTRY_CHARS: usize = 200;
/// Most entries a managed list may hold (each list on its own). Checked against the lists
/// as read at the time of a change: two hosts adding at the same moment may pass it by a
/// little, which is harmless.
pub const MAX_ENTRIES: usize = 10_000;
/// How often every host checks whether the managed lists changed in Redis.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// What the publisher of a refused message is told.
pub const REFUSAL: &str = "the message contains a blocked word";

/// One of the two lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum List {
    /// A message containing one is refused.
    Words,
    /// Masked in the message, which goes through.
    Muted,
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Words => "words",
            Self::Muted => "muted",
        })
    }
}

/// Both lists, folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lists {
    pub words: BTreeSet<String>,
    pub muted: BTreeSet<String>,
}

impl Lists {
    fn get(&self, list: List) -> &BTreeSet<String> {
        match list {
            List::Words => &self.words,
            List::Muted => &self.muted,
        }
    }
}

/// The lists as the admin API shows them: each with the config file's entries and the
/// managed ones apart (only managed ones can be removed at run time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub words: Sources,
    pub muted: Sources,
}

/// One list's entries by where they come from, folded and sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub config: Vec<String>,
    pub managed: Vec<String>,
}

impl Listing {
    fn new(config: &Lists, managed: &Lists) -> Self {
        let sources = |list| Sources {
            config: config.get(list).iter().cloned().collect(),
            managed: managed.get(list).iter().cloned().collect(),
        };
        Self {
            words: sources(List::Words),
            muted: sources(List::Muted),
        }
    }
}

/// Why a change or a read of the lists failed. The first four are the caller's to fix
/// (HTTP 400/409), `Unavailable` is worth retrying (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlacklistError {
    #[error("{list} entry #{index} is empty; give a word or a phrase")]
    Empty { list: List, index: usize },
    #[error(
        "{list} entry {entry:?} is {chars} characters long; at most {MAX_ENTRY_CHARS} are allowed"
    )]
    TooLong {
        list: List,
        entry: String,
        chars: usize,
    },
    #[error(
        "the managed {list} list would hold {count} entries; at most {MAX_ENTRIES} are allowed \
         (remove some first)"
    )]
    TooMany { list: List, count: usize },
    #[error(
        "{entry:?} is set in the config file (blacklist.{list}) and cannot be removed at run \
         time; remove it from the config file and restart the sidecar"
    )]
    InConfig { list: List, entry: String },
    #[error("the blacklist in Redis cannot be reached: {0}")]
    Unavailable(#[from] RedisError),
    #[error("cannot compile the blacklist: {0}")]
    Compile(String),
}

impl BlacklistError {
    /// Whether the request was at fault (as opposed to Redis or the process).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::Empty { .. }
                | Self::TooLong { .. }
                | Self::TooMany { .. }
                | Self::InConfig { .. }
        )
    }
}

/// The compiled lists in force.
#[derive(Debug, Default)]
struct Matchers {
    words: Words,
    muted: Words,
}

/// Where the managed lists live.
enum Managed {
    /// In this process (memory broker: one host).
    Memory(Mutex<Lists>),
    /// In Redis, shared by every host.
    Redis { link: RedisLink, keys: Keys },
}

/// The Redis keys of the managed lists.
struct Keys {
    words: String,
    muted: String,
    version: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            words: format!("{prefix}:blacklist:words"),
            muted: format!("{prefix}:blacklist:muted"),
            version: format!("{prefix}:blacklist:version"),
        }
    }

    fn of(&self, list: List) -> &str {
        match list {
            List::Words => &self.words,
            List::Muted => &self.muted,
        }
    }
}

/// The blacklist: its lists, the matchers built from them, and the plugin that applies
/// them.
pub struct Blacklist {
    /// The config file's lists, folded; in force whatever the managed lists say.
    config: Lists,
    /// The lists changed through the admin API.
    managed: Managed,
    /// What each character of a muted word becomes.
    mask: String,
    /// The matchers in force (config ∪ managed). Swapped whole after a rebuild; publishers
    /// hold the read lock only to clone the `Arc`.
    matchers: RwLock<Arc<Matchers>>,
    /// The managed lists' version the matchers were built from (`None`: not loaded yet).
    /// Held during a refresh, so that refreshes run one at a time.
    loaded: tokio::sync::Mutex<Option<i64>>,
    /// Whether the last poll failed, so that an outage is logged once, not every second.
    redis_down: AtomicBool,
}

impl Blacklist {
    /// Compiles the config file's lists, loads the managed ones and, with Redis, starts the
    /// poll that keeps them current (stopped by `shutdown`). Redis not answering here is not
    /// fatal: the config lists apply and the poll keeps trying.
    pub async fn start(
        config: &BlacklistConfig,
        redis: Option<RedisLink>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, BlacklistError> {
        let fold = |entries: &[String]| -> BTreeSet<String> {
            entries
                .iter()
                .map(|e| normalize(e))
                .filter(|e| !e.is_empty())
                .collect()
        };
        let config_lists = Lists {
            words: fold(&config.words),
            muted: fold(&config.muted),
        };
        let managed = match redis {
            Some(link) => Managed::Redis {
                keys: Keys::new(link.key_prefix()),
                link,
            },
            None => Managed::Memory(Mutex::new(Lists::default())),
        };
        let this = Arc::new(Self {
            config: config_lists,
            managed,
            mask: config.mask.clone(),
            matchers: RwLock::new(Arc::new(Matchers::default())),
            loaded: tokio::sync::Mutex::new(None),
            redis_down: AtomicBool::new(false),
        });
        this.install(&Lists::default()).await?;
        match this.refresh(true).await {
            Ok(()) => {}
            Err(BlacklistError::Unavailable(e)) => {
                this.redis_down.store(true, Ordering::Relaxed);
                warn!("blacklist: cannot read the managed lists from Redis ({e}); only the config file's lists apply until it answers");
            }
            Err(e) => return Err(e),
        }
        if matches!(this.managed, Managed::Redis { .. }) {
            tracker.spawn(this.clone().poll(shutdown.clone()));
        }
        let matchers = this.matchers();
        info!(
            words = matchers.words.len(),
            muted = matchers.muted.len(),
            "blacklist ready"
        );
        Ok(this)
    }

    /// The lists: the config file's and the managed ones, apart.
    pub async fn list(&self) -> Result<Listing, BlacklistError> {
        let managed = self.read_managed().await?;
        Ok(Listing::new(&self.config, &managed))
    }

    /// Adds entries to the managed lists (entries already there are fine) and returns the
    /// lists after the change. Every host applies it within about a second; this one at
    /// once.
    pub async fn add(&self, words: &[String], muted: &[String]) -> Result<Listing, BlacklistError> {
        let words = checked(List::Words, words)?;
        let muted = checked(List::Muted, muted)?;
        if words.is_empty() && muted.is_empty() {
            return self.list().await;
        }
        let current = self.read_managed().await?;
        for (list, new) in [(List::Words, &words), (List::Muted, &muted)] {
            let count = current
                .get(list)
                .iter()
                .chain(new.iter())
                .collect::<BTreeSet<_>>()
                .len();
            if count > MAX_ENTRIES {
                return Err(BlacklistError::TooMany { list, count });
            }
        }
        match &self.managed {
            Managed::Memory(lists) => {
                let mut lists = lists.lock().unwrap_or_else(|e| e.into_inner());
                lists.words.extend(words.iter().cloned());
                lists.muted.extend(muted.iter().cloned());
            }
            Managed::Redis { link, keys } => {
                for (list, entries) in [(List::Words, &words), (List::Muted, &muted)] {
                    if !entries.is_empty() {
                        let mut cmd = redis::cmd("SADD");
                        cmd.arg(keys.of(list)).arg(entries.as_slice());
                        link.run::<i64>(cmd).await?;
                    }
                }
                link.run::<i64>(redis::cmd("INCR").arg(&keys.version).clone())
                    .await?;
            }
        }
        info!(words = ?words, muted = ?muted, "blacklist: entries added");
        self.refresh(true).await?;
        self.list().await
    }

    /// Removes entries from the managed lists (entries not there are fine) and returns the
    /// lists after the change. An entry of the config file cannot be removed: the whole call
    /// is refused, naming it.
    pub async fn remove(
        &self,
        words: &[String],
        muted: &[String],
    ) -> Result<Listing, BlacklistError> {
        let words = checked(List::Words, words)?;
        let muted = checked(List::Muted, muted)?;
        for (list, entries) in [(List::Words, &words), (List::Muted, &muted)] {
            if let Some(entry) = entries.iter().find(|e| self.config.get(list).contains(*e)) {
                return Err(BlacklistError::InConfig {
                    list,
                    entry: entry.clone(),
                });
            }
        }
        if words.is_empty() && muted.is_empty() {
            return self.list().await;
        }
        match &self.managed {
            Managed::Memory(lists) => {
                let mut lists = lists.lock().unwrap_or_else(|e| e.into_inner());
                for w in &words {
                    lists.words.remove(w);
                }
                for m in &muted {
                    lists.muted.remove(m);
                }
            }
            Managed::Redis { link, keys } => {
                for (list, entries) in [(List::Words, &words), (List::Muted, &muted)] {
                    if !entries.is_empty() {
                        let mut cmd = redis::cmd("SREM");
                        cmd.arg(keys.of(list)).arg(entries.as_slice());
                        link.run::<i64>(cmd).await?;
                    }
                }
                link.run::<i64>(redis::cmd("INCR").arg(&keys.version).clone())
                    .await?;
            }
        }
        info!(words = ?words, muted = ?muted, "blacklist: entries removed");
        self.refresh(true).await?;
        self.list().await
    }

    /// The matchers in force.
    fn matchers(&self) -> Arc<Matchers> {
        self.matchers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the managed lists where they live.
    async fn read_managed(&self) -> Result<Lists, BlacklistError> {
        match &self.managed {
            Managed::Memory(lists) => Ok(lists.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            Managed::Redis { link, keys } => {
                let words: Vec<String> = link
                    .run(redis::cmd("SMEMBERS").arg(&keys.words).clone())
                    .await?;
                let muted: Vec<String> = link
                    .run(redis::cmd("SMEMBERS").arg(&keys.muted).clone())
                    .await?;
                Ok(Lists {
                    words: words.into_iter().collect(),
                    muted: muted.into_iter().collect(),
                })
            }
        }
    }

    /// Rebuilds the matchers from the managed lists if they changed since the last build
    /// (`force`: whatever the version says). Reads the version before the lists, so a
    /// change landing in between is picked up by the next poll.
    async fn refresh(&self, force: bool) -> Result<(), BlacklistError> {
        let mut loaded = self.loaded.lock().await;
        let version = match &self.managed {
            Managed::Memory(_) => 0,
            Managed::Redis { link, keys } => {
                let version: Option<i64> = link
                    .run(redis::cmd("GET").arg(&keys.version).clone())
                    .await?;
                version.unwrap_or(0)
            }
        };
        if !force && *loaded == Some(version) {
            return Ok(());
        }
        let managed = self.read_managed().await?;
        self.install(&managed).await?;
        if loaded.is_some() {
            debug!(version, "blacklist: lists reloaded");
        }
        *loaded = Some(version);
        Ok(())
    }

    /// Compiles config ∪ `managed` on a blocking thread and puts the result in force.
    async fn install(&self, managed: &Lists) -> Result<(), BlacklistError> {
        let words: Vec<String> = self
            .config
            .words
            .iter()
            .chain(&managed.words)
            .cloned()
            .collect();
        let muted: Vec<String> = self
            .config
            .muted
            .iter()
            .chain(&managed.muted)
            .cloned()
            .collect();
        let matchers = tokio::task::spawn_blocking(move || -> Result<Matchers, BlacklistError> {
            let compile = |list: &[String]| {
                Words::new(list).map_err(|e| BlacklistError::Compile(e.to_string()))
            };
            Ok(Matchers {
                words: compile(&words)?,
                muted: compile(&muted)?,
            })
        })
        .await
        .map_err(|e| BlacklistError::Compile(e.to_string()))??;
        *self.matchers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(matchers);
        Ok(())
    }

    /// Checks the version in Redis every [`POLL_INTERVAL`] until `shutdown`.
    async fn poll(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate; the lists were just loaded.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh(false).await {
                Ok(()) => {
                    if self.redis_down.swap(false, Ordering::Relaxed) {
                        info!("blacklist: Redis answers again; the lists are current");
                    }
                }
                Err(e) => {
                    if !self.redis_down.swap(true, Ordering::Relaxed) {
                        warn!("blacklist: {e}; keeping the last lists until it answers");
                    }
                }
            }
        }
    }
}

/// Checks entries given to the admin API and folds them.
fn checked(list: List, entries: &[String]) -> Result<Vec<String>, BlacklistError> {
    if entries.len() > MAX_ENTRIES {
        return Err(BlacklistError::TooMany {
            list,
            count: entries.len(),
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let trimmed = entry.trim();
            let chars = trimmed.chars().count();
            if chars > MAX_ENTRY_CHARS {
                let start: String = trimmed.chars().take(40).collect();
                return Err(BlacklistError::TooLong {
                    list,
                    entry: format!("{start}…"),
                    chars,
                });
            }
            let folded = normalize(trimmed);
            if folded.is_empty() {
                return Err(BlacklistError::Empty { list, index });
            }
            Ok(folded)
        })
        .collect()
}

#[async_trait]
impl Plugin for Blacklist {
    fn name(&self) -> &'static str {
        "blacklist"
    }

    /// Its lists are in this process (kept up to date in the background).
    fn local(&self) -> bool {
        true
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        let Body::Text(text) = &draft.body else {
            return Ok(());
        };
        let matchers = self.matchers();
        if let Some(found) = matchers.words.find(text) {
            debug!(
                channel = draft.channel,
                sub = draft.identity.sub.as_deref(),
                word = found.word,
                "message refused: blocked word"
            );
            return Err(PublishError::new(ErrorCode::Blacklisted, REFUSAL));
        }
        if matchers.muted.is_empty() {
            return Ok(());
        }
        let masked = matchers.muted.mask(text, &self.mask);
        if masked != *text {
            draft.body = Body::Text(masked);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::registry::tests::RedisServer;
    use crate::config::RedisConfig;
    use crate::jwt::Identity;
    use crate::test_support::{good_claims, sign, verifier};

    fn identity() -> Identity {
        verifier().verify(&sign(&good_claims())).unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn config(words: &[&str], muted: &[&str]) -> BlacklistConfig {
        BlacklistConfig {
            words: strings(words),
            muted: strings(muted),
            mask: "*".into(),
        }
    }

    async fn memory(words: &[&str], muted: &[&str]) -> Arc<Blacklist> {
        Blacklist::start(
            &config(words, muted),
            None,
            &CancellationToken::new(),
            &TaskTracker::new(),
        )
        .await
        .unwrap()
    }

    /// What the plugin makes of `text`: the (possibly masked) text, or the error code.
    async fn check(b: &Blacklist, body: Body) -> Result<Body, ErrorCode> {
        let identity = identity();
        let mut draft = Draft::new(&identity, "room", body);
        b.check(&mut draft).await.map_err(|e| e.code)?;
        Ok(draft.body)
    }

    async fn check_text(b: &Blacklist, text: &str) -> Result<String, ErrorCode> {
        match check(b, Body::Text(text.into())).await? {
            Body::Text(t) => Ok(t),
            other => panic!("the body became {other:?}"),
        }
    }

    #[tokio::test]
    async fn blocked_words_refuse_and_muted_words_are_masked() {
        let b = memory(&["spam"], &["darn", "Дурак"]).await;
        assert_eq!(
            check_text(&b, "buy SPAM now").await,
            Err(ErrorCode::Blacklisted)
        );
        assert_eq!(
            check_text(&b, "spamming is fine").await.unwrap(),
            "spamming is fine"
        );
        assert_eq!(
            check_text(&b, "Darn it, дурак!").await.unwrap(),
            "**** it, *****!"
        );
        // A refused word wins over muted ones.
        assert_eq!(
            check_text(&b, "darn spam").await,
            Err(ErrorCode::Blacklisted)
        );
        let identity = identity();
        let mut draft = Draft::new(&identity, "room", Body::Text("spam".into()));
        let err = b.check(&mut draft).await.unwrap_err();
        assert_eq!(err.message, REFUSAL);
        assert!(!err.message.contains("spam"));
    }

    #[tokio::test]
    async fn events_pass_untouched() {
        let b = memory(&["spam"], &["darn"]).await;
        let event = Body::Event {
            name: "spam".into(),
            data: Some(serde_json::json!({"text": "darn spam"})),
        };
        assert_eq!(check(&b, event.clone()).await, Ok(event));
    }

    #[tokio::test]
    async fn managed_lists_apply_at_once_and_are_listed_apart_from_the_config() {
        let b = memory(&["spam"], &[]).await;
        assert_eq!(check_text(&b, "eggs").await.unwrap(), "eggs");
        let listing = b
            .add(&strings(&["  EGGS ", "ham"]), &strings(&["Bacon"]))
            .await
            .unwrap();
        assert_eq!(listing.words.config, ["spam"]);
        assert_eq!(listing.words.managed, ["eggs", "ham"]);
        assert_eq!(listing.muted.config, Vec::<String>::new());
        assert_eq!(listing.muted.managed, ["bacon"]);
        assert_eq!(check_text(&b, "Eggs!").await, Err(ErrorCode::Blacklisted));
        assert_eq!(check_text(&b, "bacon bits").await.unwrap(), "***** bits");
        assert_eq!(
            serde_json::to_value(&listing).unwrap(),
            serde_json::json!({
                "words": {"config": ["spam"], "managed": ["eggs", "ham"]},
                "muted": {"config": [], "managed": ["bacon"]},
            })
        );

        let listing = b.remove(&strings(&["Eggs", "absent"]), &[]).await.unwrap();
        assert_eq!(listing.words.managed, ["ham"]);
        assert_eq!(check_text(&b, "eggs").await.unwrap(), "eggs");
        assert_eq!(b.list().await.unwrap(), listing);
    }

    #[tokio::test]
    async fn config_words_cannot_be_removed() {
        let b = memory(&["spam"], &["darn"]).await;
        let err = b.remove(&strings(&["SPAM"]), &[]).await.unwrap_err();
        assert_eq!(
            err,
            BlacklistError::InConfig {
                list: List::Words,
                entry: "spam".into()
            }
        );
        assert!(err.is_client_error());
        assert!(err.to_string().contains("config file"), "{err}");
        let err = b.remove(&[], &strings(&["darn"])).await.unwrap_err();
        assert!(matches!(
            err,
            BlacklistError::InConfig {
                list: List::Muted,
                ..
            }
        ));
        assert_eq!(check_text(&b, "spam").await, Err(ErrorCode::Blacklisted));
    }

    #[tokio::test]
    async fn entries_are_validated() {
        let b = memory(&[], &[]).await;
        let err = b.add(&strings(&["ok", "   "]), &[]).await.unwrap_err();
        assert_eq!(
            err,
            BlacklistError::Empty {
                list: List::Words,
                index: 1
            }
        );
        let err = b.add(&[], &strings(&["\u{200B}"])).await.unwrap_err();
        assert!(matches!(
            err,
            BlacklistError::Empty {
                list: List::Muted,
                ..
            }
        ));
        let long = "x".repeat(MAX_ENTRY_CHARS + 1);
        let err = b.add(&[long], &[]).await.unwrap_err();
        assert!(
            matches!(err, BlacklistError::TooLong { chars: 201, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at most 200"), "{err}");
        // 200 characters (multi-byte ones too) are fine.
        b.add(&["é".repeat(MAX_ENTRY_CHARS)], &[]).await.unwrap();

        let many: Vec<String> = (0..MAX_ENTRIES).map(|i| format!("w{i}")).collect();
        b.add(&many[..MAX_ENTRIES - 2], &[]).await.unwrap();
        let err = b.add(&strings(&["x1", "x2"]), &[]).await.unwrap_err();
        assert_eq!(
            err,
            BlacklistError::TooMany {
                list: List::Words,
                count: MAX_ENTRIES + 1
            }
        );
        // Entries already there do not count twice.
        b.add(&strings(&["w1", "x1"]), &[]).await.unwrap();
        let too_many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("m{i}")).collect();
        assert!(matches!(
            b.add(&[], &too_many).await.unwrap_err(),
            BlacklistError::TooMany {
                list: List::Muted,
                ..
            }
        ));
        // Nothing of a refused call was applied.
        assert_eq!(check_text(&b, "x2").await.unwrap(), "x2");
        assert_eq!(check_text(&b, "x1").await, Err(ErrorCode::Blacklisted));
    }

    async fn redis_host(server: &RedisServer, shutdown: &CancellationToken) -> Arc<Blacklist> {
        let config = RedisConfig {
            url: server.url(),
            timeout_ms: 300,
            key_prefix: "bl".into(),
            ..RedisConfig::default()
        };
        let (link, _pushes) = RedisLink::connect(&config).await.unwrap();
        Blacklist::start(&config_lists(), Some(link), shutdown, &TaskTracker::new())
            .await
            .unwrap()
    }

    fn config_lists() -> BlacklistConfig {
        config(&["spam"], &[])
    }

    /// Waits until `text` gets `expected` from `b`, at most `within`.
    async fn eventually(b: &Blacklist, text: &str, expected: Result<&str, ErrorCode>) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        loop {
            let got = check_text(b, text).await;
            if got.as_deref().map_err(|e| *e) == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?}: expected {expected:?}, still {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_change_on_one_host_applies_on_another_within_two_seconds() {
        let server = RedisServer::start();
        let shutdown = CancellationToken::new();
        let a = redis_host(&server, &shutdown).await;
        let b = redis_host(&server, &shutdown).await;

        a.add(&strings(&["eggs"]), &strings(&["ham"]))
            .await
            .unwrap();
        // At once on the host that made the change.
        assert_eq!(check_text(&a, "eggs").await, Err(ErrorCode::Blacklisted));
        let started = tokio::time::Instant::now();
        eventually(&b, "eggs", Err(ErrorCode::Blacklisted)).await;
        eventually(&b, "ham and cheese", Ok("*** and cheese")).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(b.list().await.unwrap().words.managed, ["eggs"]);

        // What is stored, and where.
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let words: Vec<String> = redis::cmd("SMEMBERS")
            .arg("bl:blacklist:words")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(words, ["eggs"]);
        let version: i64 = redis::cmd("GET")
            .arg("bl:blacklist:version")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(version, 1);

        b.remove(&strings(&["eggs"]), &[]).await.unwrap();
        eventually(&a, "eggs", Ok("eggs")).await;
        // The config file's words stay in force everywhere.
        assert_eq!(check_text(&a, "spam").await, Err(ErrorCode::Blacklisted));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_last_lists_stay_in_force_while_redis_is_down() {
        let server = RedisServer::start();
        let shutdown = CancellationToken::new();
        let a = redis_host(&server, &shutdown).await;
        a.add(&strings(&["eggs"]), &[]).await.unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The last lists stay in force; changes are refused with a clear error.
        assert_eq!(check_text(&a, "eggs").await, Err(ErrorCode::Blacklisted));
        let err = a.add(&strings(&["ham"]), &[]).await.unwrap_err();
        assert!(matches!(err, BlacklistError::Unavailable(_)), "{err}");
        assert!(!err.is_client_error());
        shutdown.cancel();
    }

    /// A whole sidecar (chat-host role) on `redis_url` with `chain`, serving until `stop` is
    /// cancelled.
    async fn sidecar(
        redis_url: &str,
        chain: &str,
        worker: bool,
        dir: &std::path::Path,
        stop: &CancellationToken,
    ) -> (std::net::SocketAddr, Option<Arc<Blacklist>>) {
        let sets = vec![
            format!("roles.chat_host={worker}"),
            format!("relay.socket={}", dir.join("relay.sock").display()),
            "http.listen=127.0.0.1:0".to_string(),
            format!(
                "auth.public_key_file={}/../nginx-conf/example-keys/jwt-public.pem",
                env!("CARGO_MANIFEST_DIR")
            ),
            format!("redis.url={redis_url}"),
            format!("plugins.chain={chain}"),
            "blacklist.words=spam".to_string(),
        ];
        let config = crate::config::Config::load(None, Vec::new(), &sets)
            .unwrap()
            .config;
        let sidecar = crate::server::Sidecar::start(&config, Default::default())
            .await
            .unwrap();
        let (addr, lists) = (sidecar.http_addr(), sidecar.blacklist());
        let stop = stop.clone();
        tokio::spawn(sidecar.run(async move { stop.cancelled().await }));
        (addr, lists)
    }

    /// `POST /pub/room` with `text`; the status.
    async fn post(client: &reqwest::Client, addr: std::net::SocketAddr, text: &str) -> u16 {
        client
            .post(format!("http://{addr}/pub/room"))
            .bearer_auth(sign(&good_claims()))
            .header("content-type", "text/plain")
            .body(text.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn lists_changed_through_one_sidecar_apply_on_another() {
        let server = RedisServer::start();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let stop = CancellationToken::new();
        let (a, lists) = sidecar(&server.url(), "blacklist", true, dir_a.path(), &stop).await;
        let (b, _) = sidecar(&server.url(), "blacklist", true, dir_b.path(), &stop).await;
        let lists = lists.expect("the blacklist is in the chain, so its lists are reachable");
        let client = super::super::outbound::client(Duration::from_secs(5)).unwrap();
        assert_eq!(post(&client, b, "eggs").await, 200);
        assert_eq!(post(&client, b, "spam").await, 422);

        lists.add(&strings(&["Eggs"]), &[]).await.unwrap();
        assert_eq!(
            post(&client, a, "eggs").await,
            422,
            "at once where it was changed"
        );
        let changed = tokio::time::Instant::now();
        while post(&client, b, "EGGS").await != 422 {
            assert!(
                changed.elapsed() < Duration::from_secs(2),
                "the other sidecar still takes eggs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A host without the chat-host role (dispatcher, admin API) manages the same lists.
        let dir_c = tempfile::tempdir().unwrap();
        let (_, admin_only) = sidecar(&server.url(), "blacklist", false, dir_c.path(), &stop).await;
        let admin_only = admin_only.expect("an admin host reaches the lists through Redis");
        assert_eq!(admin_only.list().await.unwrap().words.managed, ["eggs"]);
        admin_only.remove(&strings(&["eggs"]), &[]).await.unwrap();
        let changed = tokio::time::Instant::now();
        while post(&client, b, "eggs").await != 200 {
            assert!(
                changed.elapsed() < Duration::from_secs(2),
                "the worker still refuses eggs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Without the plugin in the chain there are no lists to manage.
        let dir_d = tempfile::tempdir().unwrap();
        let (_, none) = sidecar(&server.url(), "", true, dir_d.path(), &stop).await;
        assert!(none.is_none());
        let (_, none) = sidecar(&server.url(), "", false, dir_d.path(), &stop).await;
        assert!(none.is_none());
        stop.cancel();
    }
}
