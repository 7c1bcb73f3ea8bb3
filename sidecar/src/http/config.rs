//! `[http]`: the HTTP listener.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
