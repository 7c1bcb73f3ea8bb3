//! Viewers of private channels on this host: whether one may watch (its subscribe token,
//! then the channel's bans), asked by an nginx worker before it answers the viewer's
//! request (`Admit`).

use std::sync::Arc;

use chatup_wire::private::Policy;
use tracing::debug;

use crate::moderation::{Moderation, ModerationError};
use crate::private::{Grant, PrivateChannels, Refusal};

/// Admits viewers to private channels.
pub struct Viewers {
    /// The private channels and the key of their tokens.
    private: PrivateChannels,
    /// Bans: a banned user may not watch a private channel either (with `ban` in
    /// `plugins.chain`, as for joins).
    moderation: Arc<Moderation>,
}

impl Viewers {
    pub fn new(private: PrivateChannels, moderation: Arc<Moderation>) -> Arc<Self> {
        Arc::new(Self {
            private,
            moderation,
        })
    }

    /// The private channel patterns each nginx worker is sent.
    pub fn policy(&self) -> &Policy {
        self.private.policy()
    }

    /// Whether the holder of `token` may watch `channels` (the private ones of its request).
    pub async fn admit(&self, token: &str, channels: &[String]) -> Result<Grant, Refusal> {
        let grant = self.private.check(token, channels)?;
        if self.moderation.enforced() {
            for channel in channels {
                let ban = self
                    .moderation
                    .bans()
                    .ban_of(channel, &grant.identity)
                    .await
                    .map_err(|e| match e {
                        ModerationError::Unavailable(m) | ModerationError::BadRequest(m) => {
                            Refusal::Unavailable(m)
                        }
                    })?;
                if let Some((who, ban)) = ban {
                    debug!(channel, %who, "viewer refused: banned");
                    return Err(Refusal::Banned {
                        channel: channel.clone(),
                        until: ban.until,
                    });
                }
            }
        }
        Ok(grant)
    }
}
