//! A viewer over any of the module's transports, so one load process and one account of
//! ids serve WebSocket, SSE and long-poll viewers alike.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::pollclient::PollClient;
use crate::sseclient::SseClient;
use crate::wsclient::{ConnectError, Frame, WsClient};

/// How viewers subscribe (README "Transports").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// WebSocket.
    Ws,
    /// Server-sent events (`Accept: text/event-stream`).
    Sse,
    /// Long-poll (`?transport=poll`), each answer's `since` sent back.
    Poll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

pub enum Viewer {
    Ws(WsClient),
    Sse(SseClient),
    Poll(PollClient),
}

impl Viewer {
    /// Subscribes to `path` on `addr` over `transport`.
    pub async fn connect(
        transport: Transport,
        addr: SocketAddr,
        source: Option<IpAddr>,
        host: &str,
        path: &str,
        key_seed: u64,
    ) -> Result<Self, ConnectError> {
        Ok(match transport {
            Transport::Ws => {
                Viewer::Ws(WsClient::connect(addr, source, host, path, key_seed).await?)
            }
            Transport::Sse => Viewer::Sse(SseClient::connect(addr, source, host, path).await?),
            Transport::Poll => Viewer::Poll(PollClient::connect(addr, source, host, path).await?),
        })
    }

    pub async fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        match self {
            Viewer::Ws(c) => c.next_frame().await,
            Viewer::Sse(c) => c.next_frame().await,
            Viewer::Poll(c) => c.next_frame().await,
        }
    }
}
