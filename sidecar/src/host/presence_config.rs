//! `[presence]`: presence of publishers in channels ([`crate::host::presence`]).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Presence of publishers in channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Publish `join`/`leave` events when an authenticated publisher enters or leaves a
    /// channel.
    pub events: bool,
    /// How long a user whose last session dropped (closed by the client, or its connection
    /// broke) still counts as in the channel before its `leave` is announced: a reload or a
    /// short network break comes back within it and makes neither a `leave` nor a `join`.
    /// An explicit leave, a ban and a shutdown leave at once. 0: leave at once always.
    pub leave_grace_ms: u64,
}

/// The longest `presence.leave_grace_ms`: a user gone for longer is not coming back soon.
pub const MAX_LEAVE_GRACE_MS: u64 = 60_000;

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            events: true,
            leave_grace_ms: 5000,
        }
    }
}

impl PresenceConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.leave_grace_ms > MAX_LEAVE_GRACE_MS {
            return Err(ConfigError::invalid(
                "presence.leave_grace_ms",
                format!("must be from 0 to {MAX_LEAVE_GRACE_MS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn the_leave_grace_is_bounded() {
        assert_refused(&[(
            &["presence.leave_grace_ms=60001"],
            "`presence.leave_grace_ms`: must be from 0 to 60000",
        )]);
    }
}
