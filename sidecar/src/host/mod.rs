//! The chat-host role (`roles.chat_host`, formerly `roles.worker`): the relay for this
//! host's nginx workers ([`relay`]), the publisher endpoints ([`publish`]), who is joined
//! where ([`presence`]), who may watch private channels ([`viewers`]), this host's load as
//! the host registry reads it ([`load`]), and the example page's tokens ([`demo`]). [`ChatHost::assemble`] puts them together.
//!
//! `GET /health` still names this role `worker`: monitors match on it.

pub mod demo;
pub mod demo_config;
pub mod load;
pub mod presence;
pub mod presence_config;
pub mod publish;
pub mod relay;
pub mod viewers;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::cluster::registry::{HostInfo, HostLoadSource, Reporter};
use crate::config::Config;
use crate::error::Error;
use crate::jwt::{warn_example_key, warn_no_exp, Verifier};
use crate::message::Limits;
use crate::metrics::PublishedKind;
use crate::moderation::Moderation;
use crate::plugins::ban::BanPlugin;
use crate::plugins::blacklist::Blacklist;
use crate::plugins::build_chain;
use crate::shared::Shared;
use demo::{warn_open_minting, DemoTokens};
use load::HostLoad;
use presence::{EventPump, Presence};
use publish::sessions::{kick_on_notice, Sessions};
use publish::{App, Publisher, WsSettings};
use relay::{NginxWorkers, RelayOptions, RelayServer};
use viewers::Viewers;

use crate::private::PrivateChannels;

/// The chat host's keys, loaded before anything is bound: a key that does not fit stops
/// the start.
pub struct HostKeys {
    /// Checks publisher tokens (`auth.public_key_file`).
    verifier: Verifier,
    /// Mints the example page's tokens, with `demo.private_key_file`.
    demo: Option<DemoTokens>,
}

impl HostKeys {
    /// The keys, or `None` without the chat-host role; warns about example keys, tokens
    /// without expiry and open minting.
    pub fn load(config: &Config) -> Result<Option<Self>, Error> {
        if !config.roles.chat_host {
            if !config.demo.private_key_file.as_os_str().is_empty() {
                warn!(
                    "demo.private_key_file is set but this process has no chat-host role: no \
                     /demo/token"
                );
            }
            return Ok(None);
        }
        let verifier = Verifier::from_config(&config.auth)?;
        if verifier.uses_example_key() {
            warn_example_key(
                "auth.public_key_file",
                &config.auth.public_key_file,
                "publish as any user",
            );
        }
        if !config.auth.require_exp {
            warn_no_exp();
        }
        let demo = DemoTokens::from_config(&config.demo, &config.auth, &verifier, &config.private)?;
        if demo.is_some() {
            warn_open_minting(&config.demo.private_key_file);
        }
        Ok(Some(Self { verifier, demo }))
    }
}

/// The chat-host role, assembled.
pub struct ChatHost {
    /// What the publisher endpoints share.
    pub app: Arc<App>,
    /// `POST /demo/token`, with `demo.private_key_file`.
    pub demo: Option<Arc<DemoTokens>>,
    /// This host's load: what it reports, and what the dispatcher and admin API read
    /// directly when there is no Redis.
    pub load: Arc<dyn HostLoadSource>,
    /// Bans and their effects; joins are checked against bans when the chain has the ban
    /// plugin.
    pub moderation: Arc<Moderation>,
    /// The blacklist's lists, for the admin API (with `blacklist` in the chain).
    pub blacklist: Option<Arc<Blacklist>>,
    /// What runs in the background once serving starts.
    pub tasks: HostTasks,
}

/// The chat host's background parts, started by [`HostTasks::spawn`].
pub struct HostTasks {
    /// The bound relay socket.
    relay: RelayServer,
    /// Publishes presence events (with `presence.events`).
    pump: Option<(EventPump, Arc<Presence>, Arc<dyn Broker>)>,
    /// Reports this host's load to Redis (with `[redis]`).
    reporter: Option<Reporter>,
}

impl ChatHost {
    /// Builds the plugin chain, binds the relay socket and sets up presence, sessions and
    /// load reports. `host` is this host as the registry knows it.
    pub async fn assemble(
        config: &Config,
        keys: HostKeys,
        shared: &Shared,
        host: &HostInfo,
        limits: Limits,
        ws: WsSettings,
    ) -> Result<Self, Error> {
        let plugins = build_chain(&shared.plugin_setup(config)).await?;
        let chain = plugins.chain;
        let folded = if shared.broker.applies_guards() {
            chain.deferred()
        } else {
            Vec::new()
        };
        info!(
            plugins = ?chain.names(),
            in_the_publish = ?folded,
            "plugin chain ready"
        );
        let moderation = shared.moderation(chain.has::<BanPlugin>());
        let sessions = Sessions::new();
        shared.tracker.spawn(kick_on_notice(
            shared.control.subscribe(),
            sessions.clone(),
            shared.shutdown.clone(),
        ));
        let metrics = &shared.metrics;
        let private = PrivateChannels::from_config(&config.private)?;
        if !private.policy().is_empty() {
            info!(channels = ?private.policy().patterns(), "private channels");
        }
        let viewers = Viewers::new(private, moderation.clone());
        shared.tracker.spawn(viewers::kick_on_notice(
            shared.control.subscribe(),
            viewers.clone(),
            shared.shutdown.clone(),
        ));
        let relay = RelayServer::bind(
            RelayOptions {
                socket: config.relay.socket.clone(),
                mode: config.relay.socket_mode.0,
                queue_size: config.relay.queue_size,
            },
            metrics.metered(shared.broker.clone(), None),
        )?
        .with_viewers(viewers.clone());
        let (presence, events) = Presence::with_leave_grace(
            config.presence.events,
            Duration::from_millis(config.presence.leave_grace_ms),
        );
        relay.workers().register_metrics(metrics)?;
        presence.register_metrics(metrics)?;
        let presence_broker = metrics.metered(shared.broker.clone(), Some(PublishedKind::Presence));
        let pump = events.map(|events| (events, presence.clone(), presence_broker));
        let load: Arc<dyn HostLoadSource> = Arc::new(HostLoad {
            workers: relay.workers(),
            presence: presence.clone(),
            viewers: viewers.clone(),
        });
        let reporter = shared
            .redis
            .as_ref()
            .map(|link| Reporter::new(link.clone(), host.clone(), load.clone(), &config.host));
        let app = Arc::new(App {
            publisher: Publisher::new(
                metrics.metered(shared.broker.clone(), None),
                Arc::new(keys.verifier),
                limits,
                chain,
            )
            .with_metrics(metrics.clone()),
            presence,
            shutdown: shared.shutdown.clone(),
            tracker: shared.tracker.clone(),
            ws,
            moderation: moderation.clone(),
            sessions,
            private: viewers.policy().clone(),
        });
        // The nginx workers' chatup_publish locations publish through the same checks.
        let relay = relay.with_publisher(app.clone());
        Ok(Self {
            app,
            demo: keys.demo.map(Arc::new),
            load,
            moderation,
            blacklist: plugins.blacklist,
            tasks: HostTasks {
                relay,
                pump,
                reporter,
            },
        })
    }
}

impl HostTasks {
    /// The relay socket's path.
    pub fn relay_path(&self) -> &Path {
        self.relay.path()
    }

    /// The connected nginx workers and their counts.
    pub fn workers(&self) -> Arc<NginxWorkers> {
        self.relay.workers()
    }

    /// Starts the relay, the presence events and the load reports; the relay's task is
    /// returned to be awaited at shutdown, the others join `tracker`.
    pub fn spawn(self, shutdown: &CancellationToken, tracker: &TaskTracker) -> JoinHandle<()> {
        let relay = tokio::spawn(self.relay.run(shutdown.clone(), tracker.clone()));
        if let Some((pump, presence, broker)) = self.pump {
            tracker.spawn(pump.run(presence, broker, shutdown.clone()));
        }
        if let Some(reporter) = self.reporter {
            tracker.spawn(reporter.run(shutdown.clone()));
        }
        relay
    }
}
