//! What the hosts know of each other: the Redis link ([`redis`]), the live hosts and their
//! load ([`registry`]), who is joined where ([`members`]), and the control bus
//! ([`control`]).

pub mod control;
pub mod members;
pub mod redis;
pub mod redis_config;
pub mod registry;
pub mod registry_config;

use std::sync::Arc;

use self::redis::RedisLink;
use registry::{Directory, HostInfo, HostLoadSource, LocalDirectory, RedisDirectory};

/// Where the dispatcher and the admin API find the hosts: every host reporting to Redis,
/// or this host alone (`load`: its chat-host role). `None` without either, which the
/// configuration check refuses for a dispatcher or admin API.
pub fn directory(
    redis: Option<&RedisLink>,
    host: &HostInfo,
    load: Option<Arc<dyn HostLoadSource>>,
) -> Option<Arc<dyn Directory>> {
    match (redis, load) {
        (Some(link), _) => Some(Arc::new(RedisDirectory::new(link.clone()))),
        (None, Some(load)) => Some(Arc::new(LocalDirectory::new(host.clone(), load))),
        (None, None) => None,
    }
}
