//! `[relay]`: the Unix socket the nginx workers of this host connect to.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ConfigError;

/// The Unix socket that the nginx workers of this host connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Path of the socket. Must match nginx's `chatup_relay_socket`.
    pub socket: PathBuf,
    /// File mode given to the socket, so that nginx workers (often another user in the same
    /// group) may connect while others may not.
    pub socket_mode: SocketMode,
    /// Messages queued for one nginx worker before its connection is closed as too slow.
    /// Bounds the memory a stuck worker can pin; the worker reconnects and resumes.
    pub queue_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/chatup/relay.sock"),
            socket_mode: SocketMode(0o660),
            queue_size: 65_536,
        }
    }
}

impl RelayConfig {
    /// Checks what the types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::invalid("relay.socket", "must not be empty"));
        }
        if self.queue_size == 0 {
            return Err(ConfigError::invalid(
                "relay.queue_size",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A Unix file mode written in octal, as in `chmod` (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_prefix("0o").unwrap_or(&text);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(SocketMode(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not an octal file mode between 0000 and 0777 (e.g. \"0660\")"
            ))),
        }
    }
}
