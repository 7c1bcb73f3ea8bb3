//! Channel names, checked the same way by the module (subscribe), the sidecar (publish)
//! and the relay. The charset leaves `:` `,` `/` free as separators in URLs and `since`.

/// Longest channel name, in bytes.
pub const MAX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is {MAX_LEN}")]
    TooLong(usize),
    #[error(
        "channel name has {0:?} at byte {1}; allowed are ASCII letters, digits, '_', '-' and '.'"
    )]
    BadChar(char, usize),
}

/// Checks a channel name: 1 to [`MAX_LEN`] bytes of `A-Z a-z 0-9 _ - .`.
pub fn validate(name: &[u8]) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(ChannelNameError::TooLong(name.len()));
    }
    match name
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        None => Ok(()),
        Some(at) => {
            // Name the offending character, even when it starts a multi-byte sequence.
            let shown = String::from_utf8_lossy(&name[at..])
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            Err(ChannelNameError::BadChar(shown, at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_charset() {
        assert_eq!(validate(b"Room_1-a.b"), Ok(()));
        assert_eq!(validate(&[b'a'; MAX_LEN]), Ok(()));
    }

    #[test]
    fn refuses_with_a_reason() {
        assert_eq!(validate(b""), Err(ChannelNameError::Empty));
        assert_eq!(
            validate(&[b'a'; MAX_LEN + 1]),
            Err(ChannelNameError::TooLong(65))
        );
        assert_eq!(validate(b"a:b"), Err(ChannelNameError::BadChar(':', 1)));
        assert_eq!(
            validate("ré".as_bytes()),
            Err(ChannelNameError::BadChar('é', 1))
        );
        assert_eq!(
            validate(&[b'a', 0xff]),
            Err(ChannelNameError::BadChar(char::REPLACEMENT_CHARACTER, 1))
        );
        let msg = validate(b"a b").unwrap_err().to_string();
        assert!(msg.contains("' '") && msg.contains("byte 1"), "{msg}");
    }
}
