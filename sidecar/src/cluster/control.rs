//! The control bus: notices every host must act on, such as "kick these users of this
//! channel" after a ban.
//!
//! A notice sent on one host reaches every host, the sender included. With the memory
//! broker there is one host and the bus is a `tokio` broadcast channel. With Redis, notices
//! also travel on one pub/sub channel, `<key_prefix>:control` (`PUBLISH`/`SUBSCRIBE`), or on
//! a Redis Cluster the sharded channel `<key_prefix>:{control}` (`SPUBLISH`/`SSUBSCRIBE`).
//! Each host reads it on a pub/sub connection of its own, so notices never queue behind
//! the chat traffic of the broker's connection. That connection reconnects and subscribes
//! again by itself; while it is down this host also asks again every second, and says so
//! once per outage.
//!
//! Messages are JSON objects, one notice each, with the sender's id so that the sender,
//! which delivered its own notice at once, skips it when it comes back:
//!
//! ```json
//! {"from":"<host instance>","kick":{"channel":"room","users":["u-17"],"names":["Zoe"],"until":1764000000000}}
//! {"from":"<host instance>","disconnect":{"users":["u-17"]}}
//! ```
//!
//! A host ignores (and logs) notices it does not know, so newer hosts can add kinds.
//! Pub/sub does not keep messages: a host that is cut off from Redis when a notice is sent
//! misses it (for a kick: the ban is in Redis all the same, and the ban plugin refuses the
//! banned user's publishes; only the session stays open).

use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::redis::{RedisError, RedisLink, Subscriptions};
use crate::config::RedisConfig;
use crate::moderation::Who;

/// Notices a slow receiver on this host may fall behind by before it misses some.
const LOCAL_QUEUE: usize = 1024;

/// How often a subscription that is down is asked for again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(1);

/// Something every host must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Close the publisher sessions of `users` in `channel` (see [`crate::host::publish::sessions`]).
    Kick(Kick),
    /// Close every connection of these users: publisher sessions and private viewers
    /// (`DELETE /users/<user>`).
    Disconnect(Disconnect),
}

/// Close every connection of these users, by the token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub users: Vec<String>,
}

/// Close the sessions of these users and names that joined or published to this channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kick {
    pub channel: String,
    /// Users, by the token's `sub` ([`crate::jwt::Identity::user_id`]).
    pub users: Vec<String>,
    /// Names, by the token's `_public.name` ([`crate::jwt::Identity::public_name`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// When the ban lapses (ms since the Unix epoch), so the kicked clients know when to
    /// come back; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Kick {
    /// The kick for a ban of `whom` in `channel` until `until`.
    pub fn new(channel: &str, whom: &[Who], until: Option<u64>) -> Self {
        let (mut users, mut names) = (Vec::new(), Vec::new());
        for who in whom {
            match who {
                Who::User(id) => users.push(id.clone()),
                Who::Name(name) => names.push(name.clone()),
                // Never banned anew, so never kicked for.
                Who::Legacy(_) => {}
            }
        }
        Self {
            channel: channel.to_owned(),
            users,
            names,
            until,
        }
    }

    /// Whom it kicks.
    pub fn whom(&self) -> Vec<Who> {
        let users = self.users.iter().cloned().map(Who::User);
        users
            .chain(self.names.iter().cloned().map(Who::Name))
            .collect()
    }
}

/// A notice on the wire. Every kind is an optional field, so one a host does not know
/// leaves all of them empty.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Envelope {
    /// The sending sidecar's instance id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kick: Option<Kick>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disconnect: Option<Disconnect>,
}

impl Envelope {
    fn wrap(from: &str, notice: &Notice) -> Self {
        match notice {
            Notice::Kick(kick) => Self {
                from: from.to_owned(),
                kick: Some(kick.clone()),
                ..Self::default()
            },
            Notice::Disconnect(disconnect) => Self {
                from: from.to_owned(),
                disconnect: Some(disconnect.clone()),
                ..Self::default()
            },
        }
    }

    fn notice(self) -> Option<Notice> {
        self.kick
            .map(Notice::Kick)
            .or(self.disconnect.map(Notice::Disconnect))
    }
}

/// Hands every notice of `notices` to `act` until `shutdown` (or the bus closes); a receiver
/// that fell behind says how many it missed. How each part of a host follows the bus.
pub async fn follow_notices(
    mut notices: broadcast::Receiver<Notice>,
    shutdown: CancellationToken,
    act: impl Fn(Notice),
) {
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            notice = notices.recv() => notice,
        };
        match notice {
            Ok(notice) => act(notice),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "control notices came faster than they were handled; some were missed"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Why a notice could not be sent to the other hosts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Redis did not take it; this host acted on it all the same.
    #[error("the notice reached this host only: {0}")]
    Unavailable(String),
}

/// The Redis side of the bus.
struct RedisBus {
    link: RedisLink,
    /// `<prefix>:control`, or `<prefix>:{control}` on a cluster.
    channel: String,
}

/// Sends notices to every host and hands out the ones that arrive.
pub struct Control {
    /// This host's receivers.
    local: broadcast::Sender<Notice>,
    /// Other hosts, with Redis.
    redis: Option<RedisBus>,
    /// This process's id in the notices it sends, random per start.
    origin: String,
}

impl Control {
    /// The bus of a single host.
    pub fn memory() -> Arc<Self> {
        Arc::new(Self {
            local: broadcast::channel(LOCAL_QUEUE).0,
            redis: None,
            origin: String::new(),
        })
    }

    /// The bus through Redis. With `listen` (the chat-host role, which has sessions to kick)
    /// it opens its own pub/sub connection and hands on other hosts' notices until
    /// `shutdown`; without it, it only sends.
    pub async fn redis(
        link: RedisLink,
        config: &RedisConfig,
        listen: bool,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, RedisError> {
        let channel = if link.is_cluster() {
            format!("{}:{{control}}", link.key_prefix())
        } else {
            format!("{}:control", link.key_prefix())
        };
        let control = Arc::new(Self {
            local: broadcast::channel(LOCAL_QUEUE).0,
            redis: Some(RedisBus {
                link: link.clone(),
                channel: channel.clone(),
            }),
            origin: format!("{:016x}", rand::random::<u64>()),
        });
        if listen {
            let (subscriptions, pushes) = RedisLink::connect_subscriptions(config).await?;
            tokio::spawn(listen_to_redis(
                Arc::downgrade(&control),
                link,
                subscriptions,
                pushes,
                channel,
                shutdown,
            ));
        }
        Ok(control)
    }

    /// Acts on `notice` on this host, and sends it to the others. An error means the other
    /// hosts may not have it.
    pub async fn send(&self, notice: Notice) -> Result<(), ControlError> {
        // No receiver here (a process without the chat-host role) is not an error.
        let _ = self.local.send(notice.clone());
        let Some(bus) = &self.redis else {
            return Ok(());
        };
        let message = serde_json::to_string(&Envelope::wrap(&self.origin, &notice))
            .map_err(|e| ControlError::Unavailable(format!("cannot encode the notice: {e}")))?;
        let command = if bus.link.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(command);
        cmd.arg(&bus.channel).arg(message);
        bus.link
            .run::<Value>(cmd)
            .await
            .map(|_| ())
            .map_err(|e| ControlError::Unavailable(e.to_string()))
    }

    /// Notices sent from now on, by any host.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.local.subscribe()
    }

    /// Hands on a message read from Redis, unless this host sent it.
    fn arrived(&self, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                warn!(
                    "ignoring a control notice that is not a JSON object of notices: {e}: {}",
                    String::from_utf8_lossy(payload)
                );
                return;
            }
        };
        if !envelope.from.is_empty() && envelope.from == self.origin {
            return;
        }
        match envelope.notice() {
            Some(notice) => {
                debug!(?notice, "control notice from another host");
                let _ = self.local.send(notice);
            }
            None => warn!(
                "ignoring a control notice of an unknown kind (from a newer version?): {}",
                String::from_utf8_lossy(payload)
            ),
        }
    }
}

/// Reads the control channel until `shutdown` or until the bus is dropped.
async fn listen_to_redis(
    control: std::sync::Weak<Control>,
    link: RedisLink,
    mut subscriptions: Subscriptions,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    channel: String,
    shutdown: CancellationToken,
) {
    let mut down = true;
    let mut said_down = false;
    let mut retry = tokio::time::interval(RESUBSCRIBE_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let push = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retry.tick(), if down => {
                // Subscribing again to a channel this connection already has is harmless.
                match link.bounded(subscriptions.subscribe(&channel)).await {
                    Ok(()) => {
                        if said_down {
                            info!(channel, "control channel subscribed again");
                        }
                        down = false;
                        said_down = false;
                    }
                    Err(e) if !said_down => {
                        warn!(
                            channel,
                            "cannot subscribe to the control channel: {e}; retrying every \
                             second (kicks from other hosts are missed meanwhile)"
                        );
                        said_down = true;
                    }
                    Err(_) => {}
                }
                continue;
            }
            push = pushes.recv() => push,
        };
        let Some(push) = push else { return };
        let Some(control) = control.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                if let (Some(Value::BulkString(from)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if from == channel.as_bytes() {
                        control.arrived(&payload);
                    }
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                if down && said_down {
                    info!(channel, "control channel subscribed again");
                }
                down = false;
                said_down = false;
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe if matches!(push.data.first(), Some(Value::BulkString(c)) if c == channel.as_bytes()) =>
            {
                // Redis ended it: in a cluster, the channel's slot moved to another node.
                info!(
                    channel,
                    "Redis ended the control channel's subscription; subscribing again"
                );
                down = true;
            }
            PushKind::Disconnection => {
                if !said_down {
                    warn!(
                        channel,
                        redis = link.address(),
                        "lost the control channel's connection; reconnecting (kicks from other \
                         hosts are missed meanwhile)"
                    );
                    said_down = true;
                }
                down = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kick(channel: &str, users: &[&str]) -> Notice {
        Notice::Kick(Kick {
            channel: channel.into(),
            users: users.iter().map(|u| u.to_string()).collect(),
            names: Vec::new(),
            until: None,
        })
    }

    #[tokio::test]
    async fn a_memory_bus_delivers_to_every_receiver_here() {
        let control = Control::memory();
        let mut a = control.subscribe();
        let mut b = control.subscribe();
        control.send(kick("room", &["ann"])).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), kick("room", &["ann"]));
        assert_eq!(b.recv().await.unwrap(), kick("room", &["ann"]));
        // Nobody listening is fine.
        drop((a, b));
        control.send(kick("room", &["bo"])).await.unwrap();
    }

    #[test]
    fn the_wire_form_is_stable_and_unknown_kinds_are_ignored() {
        let text = serde_json::to_string(&Envelope::wrap("h1", &kick("room", &["alice"]))).unwrap();
        assert_eq!(
            text,
            r#"{"from":"h1","kick":{"channel":"room","users":["alice"]}}"#
        );

        let by_name = Notice::Kick(Kick::new(
            "room",
            &[Who::Name("Zoe".into()), Who::User("u-17".into())],
            Some(5),
        ));
        let text = serde_json::to_string(&Envelope::wrap("h1", &by_name)).unwrap();
        assert_eq!(
            text,
            r#"{"from":"h1","kick":{"channel":"room","users":["u-17"],"names":["Zoe"],"until":5}}"#
        );
        let Notice::Kick(k) = &by_name else {
            panic!("a kick")
        };
        assert_eq!(
            k.whom(),
            [Who::User("u-17".into()), Who::Name("Zoe".into())]
        );
        let removed = Notice::Disconnect(Disconnect {
            users: vec!["u-17".into()],
        });
        let text = serde_json::to_string(&Envelope::wrap("h1", &removed)).unwrap();
        assert_eq!(text, r#"{"from":"h1","disconnect":{"users":["u-17"]}}"#);
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.notice(), Some(removed));

        let control = Control::memory();
        let mut rx = control.subscribe();
        // From elsewhere, without a sender id, with fields of a newer version: handed on.
        control.arrived(br#"{"kick":{"channel":"r","users":["a"]},"mute":{"x":1}}"#);
        assert_eq!(rx.try_recv().unwrap(), kick("r", &["a"]));
        // Unknown kinds, garbage, and a kick missing its users: nothing.
        control.arrived(br#"{"from":"h9","mute":{"channel":"r"}}"#);
        control.arrived(b"not json");
        control.arrived(br#"{"kick":{"channel":"r"}}"#);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn notices_cross_hosts_through_redis_once() {
        let redis = crate::cluster::registry::tests::RedisServer::start();
        let config = RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        };
        let shutdown = CancellationToken::new();
        let mut hosts = Vec::new();
        for _ in 0..2 {
            let (link, _pushes) = RedisLink::connect(&config).await.unwrap();
            hosts.push(
                Control::redis(link, &config, true, shutdown.clone())
                    .await
                    .unwrap(),
            );
        }
        let mut on_a = hosts[0].subscribe();
        let mut on_b = hosts[1].subscribe();
        // Sent as soon as B's subscription is confirmed (polled: it is asynchronous).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            hosts[0].send(kick("room", &["ann"])).await.unwrap();
            assert_eq!(on_a.recv().await.unwrap(), kick("room", &["ann"]));
            match tokio::time::timeout(Duration::from_millis(100), on_b.recv()).await {
                Ok(got) => break got.unwrap(),
                Err(_) => assert!(tokio::time::Instant::now() < deadline, "B got nothing"),
            }
        };
        assert_eq!(got, kick("room", &["ann"]));
        // A does not get its own notice a second time from Redis.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(on_a.try_recv().is_err());

        // A sender without the chat-host role only sends.
        let (link, _pushes) = RedisLink::connect(&config).await.unwrap();
        let admin = Control::redis(link, &config, false, shutdown.clone())
            .await
            .unwrap();
        while on_b.try_recv().is_ok() {}
        admin.send(kick("hall", &["bo", "cy"])).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, kick("hall", &["bo", "cy"]));

        // Redis gone: sending fails within the bound, and says the other hosts may miss it.
        drop(redis);
        let err = tokio::time::timeout(Duration::from_secs(5), admin.send(kick("r", &["x"])))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("this host only"), "{err}");
        shutdown.cancel();
    }
}
