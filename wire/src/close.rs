//! WebSocket close codes used by the module, the sidecar and the browser client.
//!
//! 1000, 1001 and 4000–4499 mean "reconnect (with backoff) and resume". 4500–4999 mean
//! "do not reconnect until something changes". The standard protocol-error codes (1002,
//! 1003, 1007, 1009) mean the client sent something it must not; reconnecting unchanged
//! would fail again.

/// The client asked to close.
pub const NORMAL: u16 = 1000;
/// nginx is reloading or stopping, or the sidecar is shutting down: reconnect and resume.
pub const GOING_AWAY: u16 = 1001;
/// A frame broke RFC 6455 (unmasked, reserved bits, bad opcode, bad control frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// The endpoint does not accept this kind of data (fragmented messages on a subscriber socket).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text payload or close reason was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A client frame was larger than the endpoint accepts.
pub const TOO_BIG: u16 = 1009;
/// The server hit an unexpected condition: reconnect and resume.
pub const INTERNAL_ERROR: u16 = 1011;

/// The subscriber fell too far behind (its unsent bytes passed the limit): reconnect and resume.
pub const SLOW_CONSUMER: u16 = 4000;
/// The client answered no ping for too long: reconnect and resume.
pub const PING_TIMEOUT: u16 = 4001;

/// The viewer's subscribe token expired: fetch a new one, then reconnect and resume.
pub const SUBSCRIBE_TOKEN_EXPIRED: u16 = 4002;

/// The token is missing, malformed, badly signed or signed with a refused algorithm.
pub const BAD_TOKEN: u16 = 4500;
/// The token has expired (or is not valid yet): get a new one before reconnecting.
pub const TOKEN_EXPIRED: u16 = 4501;
/// The user is banned from the channel.
pub const BANNED: u16 = 4502;
/// The request itself is wrong (bad channel name, first frame not a token, ...).
pub const BAD_REQUEST: u16 = 4503;
/// The channel is private and this viewer was not admitted to it: subscribe again only
/// with a subscribe token that opens it.
pub const PRIVATE_CHANNEL: u16 = 4504;
/// The operator removed this user (`DELETE /users/<user>`): do not reconnect.
pub const USER_REMOVED: u16 = 4505;

/// Whether a client that got `code` should reconnect (with backoff) and resume.
pub fn should_reconnect(code: u16) -> bool {
    matches!(
        code,
        NORMAL | GOING_AWAY | INTERNAL_ERROR | 1006 | 4000..=4499
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tell_whether_to_reconnect() {
        for code in [
            NORMAL,
            GOING_AWAY,
            SLOW_CONSUMER,
            PING_TIMEOUT,
            SUBSCRIBE_TOKEN_EXPIRED,
            4499,
        ] {
            assert!(should_reconnect(code), "{code}");
        }
        for code in [
            PROTOCOL_ERROR,
            TOO_BIG,
            BAD_TOKEN,
            BANNED,
            BAD_REQUEST,
            PRIVATE_CHANNEL,
            USER_REMOVED,
            4999,
        ] {
            assert!(!should_reconnect(code), "{code}");
        }
    }
}
