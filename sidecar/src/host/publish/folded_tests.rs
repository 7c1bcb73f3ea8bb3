//! The default chain (`ban`, `rate_limit`, `blacklist`) through a real Redis broker, where
//! the ban and rate-limit checks are guards of the publish script: one call per publish,
//! the answers of the chain's order, and a rate limit that counts what was published.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Outcome, Publisher};
use crate::broker::redis::{RedisBroker, RedisOptions};
use crate::broker::Broker;
use crate::cluster::redis::RedisLink;
use crate::cluster::registry::tests::{RedisCluster, RedisServer};
use crate::config::RedisConfig;
use crate::jwt::Identity;
use crate::message::{Body, Limits};
use crate::moderation::{Ban, Bans, Who};
use crate::plugins::ban::BanPlugin;
use crate::plugins::blacklist::Blacklist;
use crate::plugins::blacklist_config::BlacklistConfig;
use crate::plugins::rate_limit::RateLimit;
use crate::plugins::{Chain, Draft, Plugin};
use crate::publish_error::{ErrorCode, PublishError};
use crate::test_support::{identity_of as identity, verifier};

/// A local plugin at the end of the chain that withholds "hide".
struct Withhold;

#[async_trait]
impl Plugin for Withhold {
    fn name(&self) -> &'static str {
        "withhold"
    }
    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        if matches!(&draft.body, Body::Text(t) if t == "hide") {
            draft.broadcast = false;
        }
        Ok(())
    }
    fn local(&self) -> bool {
        true
    }
}

/// What one host runs: the Redis broker and the chain, sharing one link.
struct Host {
    publisher: Publisher,
    bans: Bans,
    link: RedisLink,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn host(config: RedisConfig, messages: u32) -> Host {
    let (link, pushes) = RedisLink::connect(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let broker = RedisBroker::start(
        link.clone(),
        pushes,
        RedisOptions {
            history_size: 10,
            ttl: Duration::from_secs(60),
        },
        shutdown.clone(),
    );
    let bans = Bans::redis(link.clone());
    let blacklist = Blacklist::start(
        &BlacklistConfig {
            words: vec!["spam".into()],
            muted: vec![],
            mask: "*".into(),
        },
        None,
        &shutdown,
        &TaskTracker::new(),
    )
    .await
    .unwrap();
    let chain = Chain::new(vec![
        Arc::new(BanPlugin::new(bans.clone())),
        Arc::new(RateLimit::redis(
            messages,
            Duration::from_secs(60),
            link.clone(),
        )),
        blacklist,
        Arc::new(Withhold),
    ]);
    assert_eq!(chain.deferred(), ["ban", "rate_limit"]);
    assert!(broker.applies_guards());
    let publisher = Publisher::new(
        broker,
        Arc::new(verifier()),
        Limits {
            max_message_chars: 100,
            max_event_bytes: 100,
            idempotency_window: Duration::from_secs(300),
        },
        chain,
    );
    Host {
        publisher,
        bans,
        link,
        _shutdown: shutdown.drop_guard(),
    }
}

fn server_config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        timeout_ms: 500,
        ..RedisConfig::default()
    }
}

impl Host {
    async fn send(
        &self,
        who: &Identity,
        text: &str,
        key: Option<&str>,
    ) -> Result<Outcome, PublishError> {
        self.publisher
            .publish_keyed(who, "room", Body::Text(text.into()), key)
            .await
    }

    async fn code(&self, who: &Identity, text: &str) -> Result<&'static str, ErrorCode> {
        match self.send(who, text, None).await {
            Ok(Outcome::Published(_)) => Ok("published"),
            Ok(Outcome::Withheld) => Ok("withheld"),
            Ok(Outcome::Repeat(_)) => Ok("repeat"),
            Err(e) => Err(e.code),
        }
    }

    /// The members counted for `user` in `room`.
    async fn counted(&self, user: &str) -> Vec<String> {
        self.link
            .run(
                redis::cmd("ZRANGE")
                    .arg(format!("chatup:{{room}}:rate:{user}"))
                    .arg(0)
                    .arg(-1)
                    .clone(),
            )
            .await
            .unwrap()
    }
}

/// Calls of `command` since the last `CONFIG RESETSTAT` of `server`.
/// A ban as an earlier version stored it: by bare id in the legacy hash, until `until` ms
/// (0: for ever).
async fn legacy_ban(host: &Host, id: &str, until: u64) {
    let _: i64 = host
        .link
        .run(
            redis::cmd("HSET")
                .arg("chatup:{room}:bans")
                .arg(id)
                .arg(until)
                .clone(),
        )
        .await
        .unwrap();
}

async fn calls(link: &RedisLink, command: &str) -> u64 {
    let info: String = link
        .run(redis::cmd("INFO").arg("commandstats").clone())
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_call_per_publish_counting_only_what_is_published() {
    let server = RedisServer::start();
    let host = host(server_config(&server), 3).await;
    let ann = identity(Some("ann"), r#"{"name":"Ann"}"#);
    // Loads the script.
    let bob = identity(Some("bob"), "{}");
    assert_eq!(host.code(&bob, "hi").await, Ok("published"));
    let _: () = host
        .link
        .run(redis::cmd("CONFIG").arg("RESETSTAT").clone())
        .await
        .unwrap();
    // Refused by the blacklist, withheld: no place taken, and no Redis call at all.
    for _ in 0..3 {
        assert_eq!(
            host.code(&ann, "buy spam").await,
            Err(ErrorCode::Blacklisted)
        );
    }
    for _ in 0..2 {
        assert_eq!(host.code(&ann, "hide").await, Ok("withheld"));
    }
    assert!(host.counted("ann").await.is_empty());
    for _ in 0..3 {
        assert_eq!(host.code(&ann, "hi").await, Ok("published"));
    }
    // Every publish and every check above was one script call: the 3 published, and one
    // check each of the 5 refused or withheld. Redis counts the commands the script runs
    // too: its two HMGETs of the ban hashes per call and nothing else of the ban plugin;
    // a ZADD per published message and no ZREM (nothing is given back).
    assert_eq!(calls(&host.link, "evalsha").await, 8);
    assert_eq!(calls(&host.link, "hmget").await, 2 * 8);
    assert_eq!(calls(&host.link, "zadd").await, 3);
    for command in ["zrem", "eval", "exec", "script"] {
        assert_eq!(calls(&host.link, command).await, 0, "{command}");
    }
    assert_eq!(host.counted("ann").await.len(), 3);
    let err = host.send(&ann, "hi", None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited);
    let wait = err.retry_after.unwrap();
    assert!((59..=60).contains(&wait), "{wait}");
    assert!(err.message.contains("at most 3 messages per 60 s"), "{err}");
    // The refused one took no place; with the window full, a message the blacklist or
    // a later plugin would refuse or withhold hears of the rate limit, which comes first.
    assert_eq!(host.counted("ann").await.len(), 3);
    assert_eq!(
        host.code(&ann, "buy spam").await,
        Err(ErrorCode::RateLimited)
    );
    assert_eq!(host.code(&ann, "hide").await, Err(ErrorCode::RateLimited));
    // The history holds the published messages alone.
    let history: Vec<String> = host
        .link
        .run(
            redis::cmd("LRANGE")
                .arg("chatup:{room}:history")
                .arg(0)
                .arg(-1)
                .clone(),
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 4, "{history:?}");
}

#[tokio::test]
async fn bans_stop_the_publish_with_their_term_in_chain_order() {
    let server = RedisServer::start();
    let host = host(server_config(&server), 3).await;
    let ann = identity(Some("ann"), r#"{"name":"Ann"}"#);
    let bo = identity(None, r#"{"name":"bo"}"#);
    assert_eq!(host.code(&ann, "hi").await, Ok("published"));
    let hour = host
        .bans
        .ban(
            "room",
            &[Who::Name("Ann".into())],
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let err = host.send(&ann, "hi", None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Banned);
    assert_eq!(err.until(), Some(hour));
    assert!(err
        .message
        .starts_with("you are banned from this channel until 20"));
    // Ban before blacklist and withholding, as in the chain.
    assert_eq!(host.code(&ann, "buy spam").await, Err(ErrorCode::Banned));
    assert_eq!(host.code(&ann, "hide").await, Err(ErrorCode::Banned));
    // A longer ban by user wins; for ever beats any term.
    host.bans
        .ban("room", &[Who::User("ann".into())], None)
        .await
        .unwrap();
    let err = host.send(&ann, "hi", None).await.unwrap_err();
    assert_eq!(err.until(), Some(Ban { until: None }));
    // Nothing refused was counted: the one message before the ban.
    assert_eq!(host.counted("ann").await.len(), 1);
    // A ban stored by an earlier version (bare id, legacy hash) matches the name too.
    legacy_ban(&host, "bo", 0).await;
    assert_eq!(host.code(&bo, "hi").await, Err(ErrorCode::Banned));
    // A lapsed ban no longer stops anyone (judged by this host's clock).
    legacy_ban(&host, "bo", 1000).await;
    assert_eq!(host.code(&bo, "hi").await, Ok("published"));
    // Lifted: publishes again.
    host.bans
        .unban("room", &[Who::User("ann".into()), Who::Name("Ann".into())])
        .await
        .unwrap();
    assert_eq!(host.code(&ann, "hi").await, Ok("published"));
}

#[tokio::test]
async fn retries_with_a_key_count_once() {
    let server = RedisServer::start();
    let host = host(server_config(&server), 2).await;
    let ann = identity(Some("ann"), "{}");
    // Refused by the blacklist first: nothing counted, nothing remembered.
    let err = host.send(&ann, "spam", Some("k1")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Blacklisted);
    let first = match host.send(&ann, "hi", Some("k1")).await.unwrap() {
        Outcome::Published(p) => p,
        other => panic!("{other:?}"),
    };
    for _ in 0..3 {
        let again = host.send(&ann, "hi", Some("k1")).await.unwrap();
        assert_eq!(
            again,
            Outcome::Repeat(chatup_wire::Position {
                epoch: first.epoch,
                id: first.id
            })
        );
    }
    let counted = host.counted("ann").await;
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert!(counted[0].starts_with("key:"), "{counted:?}");
    assert_eq!(host.code(&ann, "hi").await, Ok("published"));
    assert_eq!(host.code(&ann, "hi").await, Err(ErrorCode::RateLimited));
    // A counted message's retry still passes a full window, as a repeat.
    assert!(matches!(
        host.send(&ann, "hi", Some("k1")).await,
        Ok(Outcome::Repeat(_))
    ));
    // A slot an older host reserved for a key and has not settled lets its retry pass
    // without counting twice.
    let _: i64 = host
        .link
        .run(
            redis::cmd("ZREM")
                .arg("chatup:{room}:rate:ann")
                .arg(&counted[0])
                .clone(),
        )
        .await
        .unwrap();
    let in_flight = format!("p:key:{}", super::idempotency::scoped(&ann, "k2"));
    let _: i64 = host
        .link
        .run(
            redis::cmd("ZADD")
                .arg("chatup:{room}:rate:ann")
                .arg(1_u64 << 50)
                .arg(&in_flight)
                .clone(),
        )
        .await
        .unwrap();
    assert!(matches!(
        host.send(&ann, "hi", Some("k2")).await,
        Ok(Outcome::Published(_))
    ));
    assert_eq!(host.counted("ann").await.len(), 2);
}

#[tokio::test]
async fn redis_unreachable_is_unavailable() {
    let mut server = RedisServer::start();
    let host = host(server_config(&server), 2).await;
    let ann = identity(Some("ann"), "{}");
    assert_eq!(host.code(&ann, "hi").await, Ok("published"));
    server.kill();
    assert_eq!(host.code(&ann, "hi").await, Err(ErrorCode::Unavailable));
    assert_eq!(host.code(&ann, "spam").await, Err(ErrorCode::Unavailable));
}

#[tokio::test]
async fn in_a_redis_cluster_the_guards_share_the_channel_slot() {
    let cluster = RedisCluster::start();
    let host = host(cluster.config(), 2).await;
    let ann = identity(Some("ann"), r#"{"name":"Ann"}"#);
    assert_eq!(host.code(&ann, "hi").await, Ok("published"));
    assert_eq!(host.code(&ann, "spam").await, Err(ErrorCode::Blacklisted));
    assert!(matches!(
        host.send(&ann, "hi", Some("k")).await,
        Ok(Outcome::Published(_))
    ));
    assert!(matches!(
        host.send(&ann, "hi", Some("k")).await,
        Ok(Outcome::Repeat(_))
    ));
    let err = host.send(&ann, "hi", None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert!(err.retry_after.is_some());
    assert_eq!(host.counted("ann").await.len(), 2);
    host.bans
        .ban("room", &[Who::User("ann".into())], None)
        .await
        .unwrap();
    assert_eq!(host.code(&ann, "hi").await, Err(ErrorCode::Banned));
}
