//! Moderation plugins: the checks a publisher's message goes through after the built-in
//! rules (size, channel name, event permission) and before the broker gives it an id.
//!
//! A [`Plugin`] sees a [`Draft`]: who sends what to which channel. It may refuse the
//! message with a [`PublishError`] (the publisher gets the code), change its body (mask
//! words, apply a rewrite from the operator's backend) or keep it from being broadcast
//! (the publisher gets an ack without an id). The [`Chain`] runs the plugins named in
//! `plugins.chain`, in that order, and stops at the first refusal.
//!
//! A plugin may also [`Hold`] something for the message that depends on whether it ends up
//! published (the rate limiter's slot): the chain gives holds back when a later plugin
//! refuses the message, the publisher once the message is withheld, published, or lost to a
//! broker failure ([`Draft::settle`]).
//!
//! Messages posted through the admin API do not go through the chain: they come from the
//! operator.
//!
//! # Checks folded into the publish
//!
//! With the Redis broker, the `ban` and `rate_limit` checks read state that lives beside the
//! channel's messages (same hash tag, same shard). Such a plugin is [`Plugin::guardable`]:
//! its check can be handed to the broker as a [`Guard`] that the publish script applies in
//! the same atomic call as the publish ([`crate::broker::guards`]), so a publish with the
//! default chain is one round trip to Redis, and the rate limit counts the message in that
//! same step only if it is published (nothing to give back).
//!
//! A guardable plugin is deferred to the publish only when every plugin after it in the
//! chain is deferred too or [`Plugin::local`]: a pure check on the draft that depends on
//! nothing but the draft and this process (it may refuse the message or change its body,
//! and it does not use what an earlier plugin decided; `blacklist`). Those local plugins
//! then run before the guards are applied, which changes nothing they can see. A plugin
//! that acts outside the publish or may make it unnecessary otherwise than by refusing
//! (`publish_hook` asks the operator's backend and may withhold; `webhook` posts to Slack)
//! is not local, so the guardable plugins before it run as checks of their own, in order,
//! as they do with the memory broker. So `["ban", "rate_limit", "blacklist"]` folds both
//! checks into the publish; `["ban", "rate_limit", "publish_hook"]` folds neither;
//! `["ban", "publish_hook", "rate_limit"]` folds the rate limit alone.
//!
//! The answers stay those of the chain's order: a message a later local plugin refuses or
//! withholds is still checked against the deferred guards (applied without publishing or
//! counting: [`crate::broker::Broker::check_guards`]), so a banned publisher hears
//! `banned` rather than `blacklisted`.
//!
//! * [`ban`]: refuses publishes (and joins) of users banned from the channel.
//! * [`rate_limit`]: at most N messages per T seconds per user per channel.
//! * [`words`]: the whole-word, any-case, any-script matcher of the content plugins.
//! * [`blacklist`]: refuses blocked words, masks muted ones; lists from the config file and
//!   the admin API (shared through Redis).
//! * [`webhook`]: posts messages with trigger words to Slack (or alike) in the background.
//! * [`publish_hook`]: the operator's backend accepts, rejects or rewrites each message.

pub mod ban;
pub mod blacklist;
pub mod blacklist_config;
pub mod config;
mod outbound;
pub mod publish_hook;
pub mod publish_hook_config;
pub mod rate_limit;
pub mod rate_limit_config;
mod throttle;
pub mod webhook;
pub mod webhook_config;
pub mod words;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Guard, Stopped};
use crate::cluster::redis::RedisLink;
use crate::config::Config;
use crate::jwt::Identity;
use crate::message::Body;
use crate::moderation::Bans;
use crate::publish_error::PublishError;

use self::blacklist::Blacklist;
use self::config::PluginName;
use self::publish_hook::PublishHook;
use self::webhook::Webhook;

/// A message on its way through the chain.
#[derive(Debug)]
pub struct Draft<'a> {
    /// Who publishes it (checked token).
    pub identity: &'a Identity,
    /// Where it goes (name already checked).
    pub channel: &'a str,
    /// What it says; plugins may change it.
    pub body: Body,
    /// Cleared by a plugin that wants the message acknowledged but not broadcast.
    pub broadcast: bool,
    /// The publish's idempotency key scoped to its user ([`crate::host::publish::idempotency`]),
    /// if the publisher gave one: the retries of one message share it, so a plugin that
    /// counts messages counts them once.
    pub key: Option<&'a str>,
    /// What plugins took for this message until it is known whether it was published.
    holds: Vec<Box<dyn Hold>>,
    /// The checks of the plugins deferred to the publish, in chain order (see the module
    /// documentation): the broker applies them.
    guards: Vec<Guard>,
}

/// Something a plugin took for a message (a slot of the rate limit) that is kept if the
/// message is published and given back if not.
#[async_trait]
pub trait Hold: Send + Sync + std::fmt::Debug {
    /// Keeps it (`published`) or gives it back. Cannot fail: a hold that cannot be settled
    /// lapses by itself (see the plugin).
    async fn settle(self: Box<Self>, published: bool);
}

impl<'a> Draft<'a> {
    pub fn new(identity: &'a Identity, channel: &'a str, body: Body) -> Self {
        Self {
            identity,
            channel,
            body,
            broadcast: true,
            key: None,
            holds: Vec::new(),
            guards: Vec::new(),
        }
    }

    /// Keeps `hold` until [`settle`](Self::settle).
    pub fn hold(&mut self, hold: Box<dyn Hold>) {
        self.holds.push(hold);
    }

    /// Keeps (`published`) or gives back what the plugins held for this message. Called
    /// once its fate is known: refused by the chain, withheld, published (or a repeat of
    /// a published one), or failed in the broker.
    pub async fn settle(&mut self, published: bool) {
        for hold in std::mem::take(&mut self.holds) {
            hold.settle(published).await;
        }
    }

    /// The checks deferred to the publish by [`Chain::run_deferring`], in chain order: all
    /// of them once the chain let the message through; those of the plugins before the
    /// one that refused it otherwise.
    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    /// The same draft, for a publish with this (scoped) idempotency key.
    pub fn with_key(mut self, key: Option<&'a str>) -> Self {
        self.key = key;
        self
    }
}

/// One check in the chain.
#[async_trait]
pub trait Plugin: Any + Send + Sync {
    /// Its name in `plugins.chain`, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Lets the message go on (possibly changed) or refuses it.
    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError>;

    /// Whether the check can be a [`Guard`] the broker applies in its publish (the
    /// plugin's state is in Redis): then, when the chain defers it, [`guard`](Self::guard)
    /// stands for [`check`](Self::check).
    fn guardable(&self) -> bool {
        false
    }

    /// The check of `draft` as a guard, when [`guardable`](Self::guardable); `None` when
    /// there is nothing to check (the message passes).
    fn guard(&self, _draft: &Draft<'_>) -> Option<Guard> {
        None
    }

    /// Whether the check is local: it decides from the draft and this process alone, acts
    /// on nothing outside the publish's answer and does not depend on what the plugins
    /// before it decided, so it may run before the guards deferred to the publish.
    fn local(&self) -> bool {
        false
    }
}

/// The configured plugins, in order.
#[derive(Clone, Default)]
pub struct Chain {
    /// Run front to back; the first error stops the message.
    plugins: Vec<Arc<dyn Plugin>>,
    /// Per plugin: whether it may be deferred to the publish as a guard (guardable, and
    /// only deferred or local plugins after it; see the module documentation).
    deferrable: Vec<bool>,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        let mut deferrable = vec![false; plugins.len()];
        let mut rest_allows = true;
        for (i, plugin) in plugins.iter().enumerate().rev() {
            deferrable[i] = rest_allows && plugin.guardable();
            rest_allows &= deferrable[i] || plugin.local();
        }
        Self {
            plugins,
            deferrable,
        }
    }

    /// The names of the plugins deferred to the publish when the broker applies guards.
    pub fn deferred(&self) -> Vec<&'static str> {
        self.plugins
            .iter()
            .zip(&self.deferrable)
            .filter(|(_, deferred)| **deferred)
            .map(|(p, _)| p.name())
            .collect()
    }

    /// The names of the plugins, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Whether a plugin of type `P` is in the chain (e.g. the ban plugin, which also
    /// decides whether joins are checked).
    pub fn has<P: Plugin>(&self) -> bool {
        self.plugins.iter().any(|plugin| {
            let plugin: &dyn Any = plugin.as_ref();
            plugin.is::<P>()
        })
    }

    /// Runs every plugin on `draft` until one refuses it; a refused message gives back
    /// what the plugins before held for it. An accepted one keeps its holds: the caller
    /// settles them once it knows whether the message was published.
    pub async fn run(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        self.run_deferring(draft, false).await
    }

    /// [`run`](Self::run), leaving the deferrable plugins' checks (with `defer`: the broker
    /// applies guards) to the publish as the draft's [`guards`](Draft::guards).
    pub async fn run_deferring(
        &self,
        draft: &mut Draft<'_>,
        defer: bool,
    ) -> Result<(), PublishError> {
        for (plugin, deferrable) in self.plugins.iter().zip(&self.deferrable) {
            if defer && *deferrable {
                if let Some(guard) = plugin.guard(draft) {
                    draft.guards.push(guard);
                }
                continue;
            }
            if let Err(e) = plugin.check(draft).await {
                draft.settle(false).await;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The refusal of a message a guard of `guards` stopped, as the guard's plugin words it.
pub fn refusal(guards: &[Guard], stopped: Stopped) -> PublishError {
    match stopped {
        Stopped::Banned { until } => ban::refusal(crate::moderation::Ban { until }),
        Stopped::RateLimited { wait } => {
            let limit = guards.iter().find_map(|guard| match guard {
                Guard::Rate {
                    messages, window, ..
                } => Some((*messages, *window)),
                Guard::Ban { .. } => None,
            });
            let (messages, window) = limit.unwrap_or_default();
            rate_limit::refusal(messages, window, wait)
        }
    }
}

/// What plugins may need to start.
pub struct Setup<'a> {
    pub config: &'a Config,
    /// The Redis connection when `[redis]` is configured: shared state lives there so that
    /// every host sees the same limits, bans and lists.
    pub redis: Option<RedisLink>,
    /// Cancelled at shutdown, for plugins that run background tasks.
    pub shutdown: CancellationToken,
    /// Background tasks to be awaited at shutdown.
    pub tracker: TaskTracker,
    /// The ban store, shared with the admin API (`ban` plugin).
    pub bans: Bans,
}

/// Why the configured chain cannot be built. Reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum PluginSetupError {
    #[error("plugin {name}: {message}")]
    Plugin { name: &'static str, message: String },
}

/// The chain, and handles on the plugins the admin API manages. A handle is `None` when
/// its plugin is not in `plugins.chain`; the admin API then answers that the plugin is off.
pub struct Plugins {
    pub chain: Chain,
    /// The blacklist's lists (`GET/POST/DELETE` of the admin API).
    pub blacklist: Option<Arc<Blacklist>>,
}

/// Builds the chain named by `plugins.chain`, in that order, and starts what the plugins
/// run in the background.
pub async fn build_chain(setup: &Setup<'_>) -> Result<Plugins, PluginSetupError> {
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    let mut blacklist = None;
    for name in &setup.config.plugins.chain {
        match name {
            PluginName::Blacklist => {
                let lists = Blacklist::start(
                    &setup.config.blacklist,
                    setup.redis.clone(),
                    &setup.shutdown,
                    &setup.tracker,
                )
                .await
                .map_err(|e| PluginSetupError::Plugin {
                    name: "blacklist",
                    message: e.to_string(),
                })?;
                blacklist = Some(lists.clone());
                plugins.push(lists);
            }
            PluginName::Webhook => plugins.push(Webhook::start(
                &setup.config.webhook,
                &setup.shutdown,
                &setup.tracker,
            )?),
            PluginName::PublishHook => plugins.push(Arc::new(PublishHook::new(
                &setup.config.publish_hook,
                &setup.config.limits,
            )?)),
            PluginName::Ban => plugins.push(Arc::new(ban::BanPlugin::new(setup.bans.clone()))),
            PluginName::RateLimit => {
                plugins.push(Arc::new(rate_limit::RateLimit::from_setup(setup)?))
            }
        }
    }
    Ok(Plugins {
        chain: Chain::new(plugins),
        blacklist,
    })
}

/// The blacklist's lists for the admin API of a host that runs no chain (no chat-host role):
/// with `blacklist` in `plugins.chain` and Redis configured, the lists the chat hosts share
/// are managed from here too. `None` otherwise.
pub async fn admin_blacklist(
    setup: &Setup<'_>,
) -> Result<Option<Arc<Blacklist>>, PluginSetupError> {
    let on = setup.config.plugins.has(PluginName::Blacklist);
    if !on || !setup.config.roles.admin || setup.redis.is_none() {
        return Ok(None);
    }
    Blacklist::start(
        &setup.config.blacklist,
        setup.redis.clone(),
        &setup.shutdown,
        &setup.tracker,
    )
    .await
    .map(Some)
    .map_err(|e| PluginSetupError::Plugin {
        name: "blacklist",
        message: e.to_string(),
    })
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish_error::ErrorCode;
    use crate::test_support::{good_claims, sign, verifier};

    struct Upper;
    #[async_trait]
    impl Plugin for Upper {
        fn name(&self) -> &'static str {
            "upper"
        }
        async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
            if let Body::Text(text) = &draft.body {
                draft.body = Body::Text(text.to_uppercase());
            }
            Ok(())
        }
    }

    struct RefuseBang;
    #[async_trait]
    impl Plugin for RefuseBang {
        fn name(&self) -> &'static str {
            "refuse_bang"
        }
        async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
            match &draft.body {
                Body::Text(t) if t.contains('!') => {
                    Err(PublishError::new(ErrorCode::Rejected, "no shouting"))
                }
                _ => Ok(()),
            }
        }
    }

    /// Stands for a plugin by what the fold looks at.
    struct Kind(&'static str, bool, bool);
    #[async_trait]
    impl Plugin for Kind {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn check(&self, _: &mut Draft<'_>) -> Result<(), PublishError> {
            Ok(())
        }
        fn guardable(&self) -> bool {
            self.1
        }
        fn local(&self) -> bool {
            self.2
        }
    }

    #[test]
    fn checks_are_deferred_only_before_local_plugins() {
        let deferred = |names: &[&'static str]| {
            let plugins: Vec<Arc<dyn Plugin>> = names
                .iter()
                .map(|&name| -> Arc<dyn Plugin> {
                    match name {
                        "ban" | "rate_limit" => Arc::new(Kind(name, true, false)),
                        "blacklist" => Arc::new(Kind(name, false, true)),
                        _ => Arc::new(Kind(name, false, false)),
                    }
                })
                .collect();
            Chain::new(plugins).deferred()
        };
        assert_eq!(
            deferred(&["ban", "rate_limit", "blacklist"]),
            ["ban", "rate_limit"]
        );
        assert_eq!(
            deferred(&["blacklist", "rate_limit", "ban"]),
            ["rate_limit", "ban"]
        );
        assert!(deferred(&["ban", "rate_limit", "publish_hook"]).is_empty());
        assert!(deferred(&["rate_limit", "webhook", "blacklist"]).is_empty());
        assert_eq!(
            deferred(&["ban", "publish_hook", "rate_limit", "blacklist"]),
            ["rate_limit"]
        );
        assert!(deferred(&["blacklist", "publish_hook"]).is_empty());
    }

    #[test]
    fn the_chain_knows_its_plugins_by_type() {
        let chain = Chain::new(vec![Arc::new(Upper)]);
        assert!(chain.has::<Upper>());
        assert!(!chain.has::<RefuseBang>());
        assert!(!Chain::default().has::<Upper>());
    }

    #[tokio::test]
    async fn plugins_run_in_order_and_stop_at_the_first_refusal() {
        let identity = verifier().verify(&sign(&good_claims())).unwrap();
        let chain = Chain::new(vec![Arc::new(Upper), Arc::new(RefuseBang)]);
        assert_eq!(chain.names(), ["upper", "refuse_bang"]);
        let mut draft = Draft::new(&identity, "r", Body::Text("hi".into()));
        chain.run(&mut draft).await.unwrap();
        assert_eq!(draft.body, Body::Text("HI".into()));
        let mut draft = Draft::new(&identity, "r", Body::Text("hi!".into()));
        let err = chain.run(&mut draft).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Rejected);
    }
}
