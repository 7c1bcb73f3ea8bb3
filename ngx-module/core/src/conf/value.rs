//! The parsers of directive values: `&str` in, a typed value or a [`ConfError`] out.

use super::ConfError;

pub(super) const MAX_CACHE_MESSAGES: usize = 100_000;
pub(super) const MAX_CHANNELS_LIMIT: usize = 1_000;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub(super) const MAX_SOCKET_PATH: usize = 107;

pub fn parse_number(value: &str, min: usize, max: usize) -> Result<usize, ConfError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfError::Number {
            value: value.into(),
            min,
            max,
        })
}

pub fn parse_cache_messages(value: &str) -> Result<usize, ConfError> {
    parse_number(value, 0, MAX_CACHE_MESSAGES)
}

pub fn parse_max_channels(value: &str) -> Result<usize, ConfError> {
    parse_number(value, 1, MAX_CHANNELS_LIMIT)
}

/// Bytes, with an optional `k` or `m` suffix as nginx sizes have.
pub fn parse_size(value: &str) -> Result<usize, ConfError> {
    let err = || ConfError::Size(value.into());
    let (digits, unit) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1 << 20),
        _ => (value, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: usize = digits.parse().map_err(|_| err())?;
    n.checked_mul(unit).ok_or_else(err)
}

/// A size that must not be 0.
pub fn parse_nonzero_size(value: &str) -> Result<usize, ConfError> {
    match parse_size(value)? {
        0 => Err(ConfError::Zero(value.into())),
        n => Ok(n),
    }
}

/// Milliseconds from `500ms`, `30s`, `2m`, `1h`, or `off` (0).
pub fn parse_duration_ms(value: &str) -> Result<u64, ConfError> {
    if value == "off" {
        return Ok(0);
    }
    let err = || ConfError::Duration(value.into());
    let split = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = value.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let ms = n.checked_mul(scale).ok_or_else(err)?;
    if ms == 0 {
        return Err(ConfError::Zero(value.into()));
    }
    Ok(ms)
}

/// Longest a long poll may be held: past a few minutes, proxies and browsers time out.
pub const MAX_POLL_TIMEOUT_MS: u64 = 300_000;

pub fn parse_poll_timeout_ms(value: &str) -> Result<u64, ConfError> {
    if value == "off" {
        return Err(ConfError::Duration(value.into()));
    }
    let ms = parse_duration_ms(value)?;
    if ms > MAX_POLL_TIMEOUT_MS {
        return Err(ConfError::TooLong(value.into(), "5m"));
    }
    Ok(ms)
}

/// `*`, or space-separated origins (`scheme://host[:port]`), as browsers send `Origin`.
pub fn parse_origins(value: &str) -> Result<Vec<String>, ConfError> {
    let origins: Vec<String> = value.split_ascii_whitespace().map(str::to_owned).collect();
    if origins.is_empty() {
        return Err(ConfError::Origin(value.into()));
    }
    for origin in &origins {
        if origin == "*" {
            if origins.len() > 1 {
                return Err(ConfError::Origin(value.into()));
            }
            continue;
        }
        let Some((scheme, host)) = origin.split_once("://") else {
            return Err(ConfError::Origin(origin.clone()));
        };
        let scheme_ok = !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_lowercase());
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !scheme_ok || !host_ok {
            return Err(ConfError::Origin(origin.clone()));
        }
    }
    Ok(origins)
}

pub fn parse_socket_path(value: &str) -> Result<String, ConfError> {
    if !value.starts_with('/') {
        return Err(ConfError::RelativePath(value.into()));
    }
    if value.len() > MAX_SOCKET_PATH {
        return Err(ConfError::PathTooLong(value.into()));
    }
    Ok(value.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::ConfError;

    #[test]
    fn numbers_are_range_checked() {
        assert_eq!(parse_number("100", 0, 1000), Ok(100));
        assert_eq!(parse_number("0", 0, 10), Ok(0));
        assert_eq!(parse_cache_messages("100000"), Ok(100_000));
        assert!(parse_cache_messages("100001").is_err());
        assert!(parse_max_channels("0").is_err());
        for bad in ["-1", "", "1x", "1001", " 5"] {
            let err = parse_number(bad, 0, 1000).unwrap_err();
            assert!(err.to_string().contains("from 0 to 1000"), "{err}");
        }
    }

    #[test]
    fn sizes_take_k_and_m() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        for bad in ["", "k", "1g", "-1", "1.5m", "99999999999999999999m"] {
            assert_eq!(parse_size(bad), Err(ConfError::Size(bad.into())), "{bad}");
        }
        assert_eq!(parse_nonzero_size("0k"), Err(ConfError::Zero("0k".into())));
        assert_eq!(parse_nonzero_size("1k"), Ok(1024));
    }

    #[test]
    fn durations_take_units_or_off() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("off"), Ok(0));
        assert_eq!(parse_duration_ms("0s"), Err(ConfError::Zero("0s".into())));
        for bad in ["30", "s", "1d", "1.5s", "-1s", ""] {
            assert_eq!(
                parse_duration_ms(bad),
                Err(ConfError::Duration(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn socket_paths_must_fit() {
        assert_eq!(parse_socket_path("/run/x.sock"), Ok("/run/x.sock".into()));
        assert!(matches!(
            parse_socket_path("run/x.sock"),
            Err(ConfError::RelativePath(_))
        ));
        let long = format!("/{}", "a".repeat(120));
        assert!(matches!(
            parse_socket_path(&long),
            Err(ConfError::PathTooLong(_))
        ));
    }
}
