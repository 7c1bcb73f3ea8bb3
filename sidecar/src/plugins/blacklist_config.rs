//! `[blacklist]`: the lists of the [`blacklist`](super::blacklist) plugin.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `blacklist` plugin. Words match whole words, case-insensitively, in any script.
/// These lists are always in force; the admin API adds (and removes) more, shared by every
/// host through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlacklistConfig {
    /// A message containing one of these is refused (`blacklisted`).
    pub words: Vec<String>,
    /// These are masked in the message, which goes through.
    pub muted: Vec<String>,
    /// What each character of a muted word is replaced with.
    pub mask: String,
}

impl Default for BlacklistConfig {
    fn default() -> Self {
        Self {
            words: Vec::new(),
            muted: Vec::new(),
            mask: "*".into(),
        }
    }
}

impl BlacklistConfig {
    /// Checks the settings (always: the admin API may manage the lists).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.mask.is_empty() {
            return Err(ConfigError::invalid("blacklist.mask", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

    #[test]
    fn the_mask_is_needed() {
        assert_refused(&[(&["blacklist.mask="], "blacklist.mask")]);
    }
}
