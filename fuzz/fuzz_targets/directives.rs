//! The directives' values as nginx hands them over (any text, empty when not UTF-8): the
//! parsers never panic, what they accept is in range, and every setting takes one value
//! per level and refuses a second.
#![no_main]

use chatup_module_core::conf::{
    parse_duration_ms, parse_max_channels, parse_size, parse_socket_path, ConfError, LocConf,
    MainConf, LOC_SETTINGS, MAIN_SETTINGS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = std::str::from_utf8(data).unwrap_or("");

    if let Ok(n) = parse_size(value) {
        let (digits, unit) = match value.as_bytes()[value.len() - 1] {
            b'k' | b'K' => (&value[..value.len() - 1], 1 << 10),
            b'm' | b'M' => (&value[..value.len() - 1], 1 << 20),
            _ => (value, 1),
        };
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(digits.parse::<usize>().map(|d| d * unit), Ok(n));
    }
    match parse_duration_ms(value) {
        Ok(0) => assert_eq!(value, "off"),
        Ok(_) => assert!(value.as_bytes()[0].is_ascii_digit()),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    if let Ok(n) = parse_max_channels(value) {
        assert!((1..=1_000).contains(&n));
    }
    if let Ok(path) = parse_socket_path(value) {
        assert!(path.starts_with('/') && path.len() <= 107);
    }

    for setting in &MAIN_SETTINGS {
        let mut conf = MainConf::default();
        if (setting.set)(&mut conf, value).is_ok() {
            assert!(conf.cache_bytes() > 0 && conf.relay_socket().starts_with('/'));
            assert_eq!((setting.set)(&mut conf, value), Err(ConfError::Duplicate));
        }
    }
    for setting in &LOC_SETTINGS {
        let mut conf = LocConf::default();
        if (setting.set)(&mut conf, value).is_ok() {
            assert!(conf.max_unsent() > 0 && conf.max_channels() > 0);
            assert_eq!((setting.set)(&mut conf, value), Err(ConfError::Duplicate));
        }
    }
});
