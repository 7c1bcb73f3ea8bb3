//! The dispatcher role (`roles.dispatcher`): which host a client should join
//! ([`join`], `POST /join/<ch>`), and the public counts browsers poll ([`channels`],
//! `GET /channels/<ch>[/users]`), answered from a short-lived [`answer_cache`].

pub mod answer_cache;
pub mod channels;
pub mod config;
pub mod join;

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::registry::Directory;
use crate::config::Config;
use crate::jwt::OperatorTokens;
use crate::shared::Shared;
use join::Dispatcher;

/// The dispatcher, or `None` when this process does not play the role or has no hosts to
/// choose from (no chat-host role and no Redis: refused by the configuration check).
/// `operators` tells the operator's token (the admin key), who alone sees the users of
/// private channels.
pub fn assemble(
    config: &Config,
    directory: Option<&Arc<dyn Directory>>,
    shared: &Shared,
    operators: Option<Arc<dyn OperatorTokens>>,
) -> Option<Arc<Dispatcher>> {
    let directory = directory.filter(|_| config.roles.dispatcher)?;
    Some(Arc::new(
        Dispatcher::new(
            directory.clone(),
            shared.metrics.metered(shared.broker.clone(), None),
            config.dispatch.clone(),
        )
        .with_report_interval(Duration::from_millis(config.host.report_interval_ms))
        // Checked when the configuration was loaded.
        .with_private(config.private.policy().unwrap_or_default(), operators),
    ))
}
