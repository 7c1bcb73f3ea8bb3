//! What the publisher endpoints share: the publisher, presence, sessions, and the timing
//! of WebSocket sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::presence::Presence;
use crate::moderation::Moderation;

use super::sessions::Sessions;
use super::Publisher;

/// Timing of WebSocket publisher sessions.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// How long a new publisher has to send its token.
    pub auth_timeout: Duration,
    /// How often the server pings publishers.
    pub ping_interval: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// What the publisher endpoints share (chat-host role).
pub struct App {
    /// Checks and publishes messages.
    pub publisher: Publisher,
    /// Which publishers are in which channels; sessions join and leave through it.
    pub presence: Arc<Presence>,
    /// Cancelled at shutdown: publisher sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks publisher sessions, which outlive their HTTP request once upgraded, so that
    /// shutdown can wait for their close frames to go out.
    pub tracker: TaskTracker,
    /// Auth timeout and ping interval of publisher sessions.
    pub ws: WsSettings,
    /// Bans; a publisher's join is checked against them.
    pub moderation: Arc<Moderation>,
    /// The open WebSocket publisher sessions by user, closed by a kick.
    pub sessions: Arc<Sessions>,
    /// Private channels: a user's own channel (`user.{sub}`) is joined only by that user.
    pub private: chatup_wire::private::Policy,
}
