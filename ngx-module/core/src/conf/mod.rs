//! The module's directives, declared in one place, with their defaults.
//!
//! | directive               | context                 | default                  |
//! |-------------------------|-------------------------|--------------------------|
//! | `chatup_subscribe`      | location (prefix)       | —                        |
//! | `chatup_publish`        | location (prefix)       | —                        |
//! | `chatup_relay_socket`   | http                    | `/run/chatup/relay.sock` |
//! | `chatup_cache_messages` | http                    | `100`                    |
//! | `chatup_cache_bytes`    | http                    | `256k`                   |
//! | `chatup_ping_interval`  | http, server, location  | `30s` (`off` disables)   |
//! | `chatup_max_channels`   | http, server, location  | `16`                     |
//! | `chatup_max_unsent`     | http, server, location  | `1m`                     |
//! | `chatup_poll_timeout`   | http, server, location  | `25s`                    |
//! | `chatup_allow_origin`   | http, server, location  | none (no CORS headers)   |
//!
//! Values are parsed by plain functions ([`value`]), and the one-value directives are listed
//! in [`MAIN_SETTINGS`] and [`LOC_SETTINGS`], from which the module crate builds nginx's
//! command table; its setters only move values in and out of nginx, so `nginx -t` reports
//! every mistake ([`ConfError`]) with the directive and what is allowed. `chatup_subscribe`
//! and `chatup_publish` each make the module answer their location ([`LocConf::set_handler`]).
//! Once the `http` block is parsed, such a location with another module's content handler is refused
//! ([`LocConf::check_content_handler`]), and a relay socket whose folder is missing is
//! warned of ([`check_relay_socket_dir`]).

mod error;
mod socket_dir;
pub mod value;

use std::ffi::CStr;

pub use error::{ConfError, ConfWarning};
pub use socket_dir::{check_relay_socket_dir, DirState};
pub use value::{
    parse_cache_messages, parse_duration_ms, parse_max_channels, parse_nonzero_size, parse_number,
    parse_origins, parse_poll_timeout_ms, parse_size, parse_socket_path,
};

pub const DEFAULT_RELAY_SOCKET: &str = "/run/chatup/relay.sock";
pub const DEFAULT_CACHE_MESSAGES: usize = 100;
pub const DEFAULT_CACHE_BYTES: usize = 256 << 10;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_MAX_CHANNELS: usize = 16;
pub const DEFAULT_MAX_UNSENT: usize = 1 << 20;
pub const DEFAULT_POLL_TIMEOUT_MS: u64 = 25_000;

#[derive(Debug, Default)]
pub struct MainConf {
    pub relay_socket: Option<String>,
    pub cache_messages: Option<usize>,
    pub cache_bytes: Option<usize>,
    /// Some location has `chatup_subscribe` or `chatup_publish`: only then do workers
    /// connect to the sidecar.
    pub enabled: bool,
}

impl MainConf {
    pub fn relay_socket(&self) -> &str {
        self.relay_socket.as_deref().unwrap_or(DEFAULT_RELAY_SOCKET)
    }

    pub fn cache_messages(&self) -> usize {
        self.cache_messages.unwrap_or(DEFAULT_CACHE_MESSAGES)
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES)
    }
}

/// What the module answers in a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Viewers (`chatup_subscribe`).
    Subscribe,
    /// `POST /pub/<ch>` (`chatup_publish`), through the relay.
    Publish,
}

impl Handler {
    /// The directive that sets it.
    pub fn directive(self) -> &'static str {
        match self {
            Self::Subscribe => "chatup_subscribe",
            Self::Publish => "chatup_publish",
        }
    }
}

#[derive(Debug, Default)]
pub struct LocConf {
    pub subscribe: bool,
    /// `chatup_publish`: the location's `POST <prefix><ch>` go to the sidecar by the relay.
    pub publish: bool,
    /// The location's prefix: what follows it in the URI is the channel list (or, in a
    /// publish location, the channel).
    pub prefix: Vec<u8>,
    /// `file:line` of `chatup_subscribe` or `chatup_publish`, for errors found after the
    /// block is parsed.
    pub handler_at: String,
    /// Milliseconds; `Some(0)` is `off`.
    pub ping_interval_ms: Option<u64>,
    pub max_channels: Option<usize>,
    pub max_unsent: Option<usize>,
    /// How long a long poll with nothing to answer is held.
    pub poll_timeout_ms: Option<u64>,
    /// Origins whose pages may read SSE streams and poll answers (`*`: any).
    pub allow_origin: Option<Vec<String>>,
}

impl LocConf {
    pub fn ping_interval_ms(&self) -> u64 {
        self.ping_interval_ms.unwrap_or(DEFAULT_PING_INTERVAL_MS)
    }

    pub fn max_channels(&self) -> usize {
        self.max_channels.unwrap_or(DEFAULT_MAX_CHANNELS)
    }

    pub fn max_unsent(&self) -> usize {
        self.max_unsent.unwrap_or(DEFAULT_MAX_UNSENT)
    }

    pub fn poll_timeout_ms(&self) -> u64 {
        self.poll_timeout_ms.unwrap_or(DEFAULT_POLL_TIMEOUT_MS)
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`: `*`, the origin when it
    /// is allowed, or nothing.
    pub fn cors_origin<'a>(&'a self, origin: Option<&'a [u8]>) -> Option<&'a [u8]> {
        let allowed = self.allow_origin.as_deref()?;
        if allowed.iter().any(|a| a == "*") {
            return Some(b"*");
        }
        let origin = origin?;
        allowed
            .iter()
            .any(|a| a.as_bytes() == origin)
            .then_some(origin)
    }

    /// What the module answers here, if anything.
    pub fn handler(&self) -> Option<Handler> {
        if self.subscribe {
            Some(Handler::Subscribe)
        } else if self.publish {
            Some(Handler::Publish)
        } else {
            None
        }
    }

    /// `chatup_subscribe` in the prefix location `prefix`, written at `at` (`file:line`).
    pub fn set_subscribe(&mut self, prefix: Vec<u8>, at: String) -> Result<(), ConfError> {
        self.set_handler(Handler::Subscribe, prefix, at)
    }

    /// `chatup_subscribe` or `chatup_publish` in the prefix location `prefix`, written at
    /// `at` (`file:line`): once, and not both.
    pub fn set_handler(
        &mut self,
        handler: Handler,
        prefix: Vec<u8>,
        at: String,
    ) -> Result<(), ConfError> {
        match self.handler() {
            Some(set) if set == handler => return Err(ConfError::Duplicate),
            Some(set) => return Err(ConfError::TwoHandlers(set.directive())),
            None => {}
        }
        match handler {
            Handler::Subscribe => self.subscribe = true,
            Handler::Publish => self.publish = true,
        }
        self.prefix = prefix;
        self.handler_at = at;
        Ok(())
    }

    /// Inherits the settings not given at this level from the enclosing one.
    pub fn merge(&mut self, prev: &Self) {
        self.ping_interval_ms = self.ping_interval_ms.or(prev.ping_interval_ms);
        self.max_channels = self.max_channels.or(prev.max_channels);
        self.max_unsent = self.max_unsent.or(prev.max_unsent);
        self.poll_timeout_ms = self.poll_timeout_ms.or(prev.poll_timeout_ms);
        if self.allow_origin.is_none() {
            self.allow_origin.clone_from(&prev.allow_origin);
        }
    }

    /// [`check_sole_handler`] for a subscribe or publish location, once its whole block is
    /// parsed.
    pub fn check_content_handler(&self, other_handler: bool) -> Result<(), ConfError> {
        if self.handler().is_some() {
            check_sole_handler(&self.prefix, other_handler)
        } else {
            Ok(())
        }
    }
}

/// A subscribe (or publish) location must answer its requests itself: nginx runs one content handler per
/// location, the last one set, so `proxy_pass` & co. would silently win or lose depending on
/// the order of the directives. `other_handler` says whether another module set the handler
/// of the location whose prefix is `location`.
pub fn check_sole_handler(location: &[u8], other_handler: bool) -> Result<(), ConfError> {
    if other_handler {
        return Err(ConfError::SharedContentHandler {
            location: String::from_utf8_lossy(location).into_owned(),
        });
    }
    Ok(())
}

/// Stores a parsed value unless the directive was already given at this level.
fn store<T>(slot: &mut Option<T>, value: Result<T, ConfError>) -> Result<(), ConfError> {
    if slot.is_some() {
        return Err(ConfError::Duplicate);
    }
    *slot = Some(value?);
    Ok(())
}

/// A directive that takes one value and keeps it in a configuration struct of type `C`.
pub struct Setting<C> {
    /// NUL-terminated, as nginx compares directive names.
    pub name: &'static CStr,
    /// Parses the value and stores it, refusing a second one at the same level.
    pub set: fn(&mut C, &str) -> Result<(), ConfError>,
}

/// The `http`-level directives that take a value (`chatup_subscribe` and `chatup_publish`,
/// in locations, are the only others).
pub const MAIN_SETTINGS: [Setting<MainConf>; 3] = [
    Setting {
        name: c"chatup_relay_socket",
        set: |mc, v| store(&mut mc.relay_socket, parse_socket_path(v)),
    },
    Setting {
        name: c"chatup_cache_messages",
        set: |mc, v| store(&mut mc.cache_messages, parse_cache_messages(v)),
    },
    Setting {
        name: c"chatup_cache_bytes",
        set: |mc, v| store(&mut mc.cache_bytes, parse_nonzero_size(v)),
    },
];

/// The directives allowed at every level (`http`, `server`, `location`), inherited inwards.
pub const LOC_SETTINGS: [Setting<LocConf>; 5] = [
    Setting {
        name: c"chatup_ping_interval",
        set: |lc, v| store(&mut lc.ping_interval_ms, parse_duration_ms(v)),
    },
    Setting {
        name: c"chatup_max_channels",
        set: |lc, v| store(&mut lc.max_channels, parse_max_channels(v)),
    },
    Setting {
        name: c"chatup_max_unsent",
        set: |lc, v| store(&mut lc.max_unsent, parse_nonzero_size(v)),
    },
    Setting {
        name: c"chatup_poll_timeout",
        set: |lc, v| store(&mut lc.poll_timeout_ms, parse_poll_timeout_ms(v)),
    },
    Setting {
        name: c"chatup_allow_origin",
        set: |lc, v| store(&mut lc.allow_origin, parse_origins(v)),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_and_levels_inherit() {
        let mut slot = None;
        assert_eq!(store(&mut slot, Ok(1)), Ok(()));
        assert_eq!(store(&mut slot, Ok(2)), Err(ConfError::Duplicate));

        let parent = LocConf {
            max_channels: Some(4),
            ping_interval_ms: Some(0),
            ..Default::default()
        };
        let mut child = LocConf {
            max_unsent: Some(10),
            ..Default::default()
        };
        child.merge(&parent);
        assert_eq!(child.max_channels(), 4);
        assert_eq!(child.ping_interval_ms(), 0);
        assert_eq!(child.max_unsent(), 10);
        assert_eq!(LocConf::default().max_unsent(), DEFAULT_MAX_UNSENT);
    }

    #[test]
    fn subscribe_is_given_once_per_location() {
        let mut lc = LocConf::default();
        assert_eq!(
            lc.set_subscribe(b"/sub/".to_vec(), "a.conf:3".into()),
            Ok(())
        );
        assert_eq!(
            lc.set_subscribe(b"/other/".to_vec(), "a.conf:4".into()),
            Err(ConfError::Duplicate)
        );
        assert!(lc.subscribe);
        assert_eq!(
            (lc.prefix.as_slice(), lc.handler_at.as_str()),
            (&b"/sub/"[..], "a.conf:3")
        );
        assert_eq!(lc.handler(), Some(Handler::Subscribe));
    }

    #[test]
    fn publish_is_given_once_and_never_beside_subscribe() {
        let mut lc = LocConf::default();
        assert_eq!(lc.handler(), None);
        assert_eq!(
            lc.set_handler(Handler::Publish, b"/pub/".to_vec(), "a.conf:9".into()),
            Ok(())
        );
        assert_eq!(lc.handler(), Some(Handler::Publish));
        assert_eq!(
            (lc.prefix.as_slice(), lc.handler_at.as_str()),
            (&b"/pub/"[..], "a.conf:9")
        );
        assert_eq!(
            lc.set_handler(Handler::Publish, b"/pub/".to_vec(), "a.conf:10".into()),
            Err(ConfError::Duplicate)
        );
        let err = lc
            .set_subscribe(b"/pub/".to_vec(), "a.conf:11".into())
            .unwrap_err();
        assert_eq!(err, ConfError::TwoHandlers("chatup_publish"));
        assert!(err.to_string().contains("\"chatup_publish\""), "{err}");
        assert!(!lc.subscribe);
        // A publish location has no other content handler either.
        assert!(lc.check_content_handler(true).is_err());
        assert_eq!(lc.check_content_handler(false), Ok(()));
    }

    #[test]
    fn a_subscribe_location_has_no_other_content_handler() {
        let sub = LocConf {
            subscribe: true,
            prefix: b"/sub/".to_vec(),
            ..Default::default()
        };
        assert_eq!(sub.check_content_handler(false), Ok(()));
        let err = sub.check_content_handler(true).unwrap_err();
        assert_eq!(
            err,
            ConfError::SharedContentHandler {
                location: "/sub/".into()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("\"/sub/\"") && text.contains("\"proxy_pass\""),
            "{text}"
        );
        // A location without chatup_subscribe may proxy as it likes.
        assert_eq!(LocConf::default().check_content_handler(true), Ok(()));
        assert_eq!(check_sole_handler(b"/a/", false), Ok(()));
        assert!(check_sole_handler(b"/a/", true).is_err());
    }

    fn setter<C>(table: &[Setting<C>], name: &str) -> fn(&mut C, &str) -> Result<(), ConfError> {
        let found: Vec<_> = table
            .iter()
            .filter(|s| s.name.to_str() == Ok(name))
            .collect();
        assert_eq!(found.len(), 1, "{name}");
        found[0].set
    }

    #[test]
    fn settings_parse_into_their_field_once() {
        let mut mc = MainConf::default();
        let cache_bytes = setter(&MAIN_SETTINGS, "chatup_cache_bytes");
        assert_eq!(cache_bytes(&mut mc, "0"), Err(ConfError::Zero("0".into())));
        assert_eq!(cache_bytes(&mut mc, "1k"), Ok(()));
        assert_eq!(cache_bytes(&mut mc, "2k"), Err(ConfError::Duplicate));
        assert_eq!(mc.cache_bytes(), 1024);
        assert_eq!(
            setter(&MAIN_SETTINGS, "chatup_cache_messages")(&mut mc, "5"),
            Ok(())
        );
        assert_eq!(
            setter(&MAIN_SETTINGS, "chatup_relay_socket")(&mut mc, "/r.sock"),
            Ok(())
        );
        assert_eq!((mc.cache_messages(), mc.relay_socket()), (5, "/r.sock"));

        let mut lc = LocConf::default();
        assert_eq!(
            setter(&LOC_SETTINGS, "chatup_ping_interval")(&mut lc, "off"),
            Ok(())
        );
        assert_eq!(
            setter(&LOC_SETTINGS, "chatup_max_channels")(&mut lc, "3"),
            Ok(())
        );
        assert_eq!(
            setter(&LOC_SETTINGS, "chatup_max_unsent")(&mut lc, "1m"),
            Ok(())
        );
        assert_eq!(
            (lc.ping_interval_ms(), lc.max_channels(), lc.max_unsent()),
            (0, 3, 1 << 20)
        );
    }

    #[test]
    fn poll_timeout_and_origins_are_checked() {
        let set = |name, v: &str| setter(&LOC_SETTINGS, name)(&mut LocConf::default(), v);
        assert!(set("chatup_poll_timeout", "30s").is_ok());
        assert_eq!(
            set("chatup_poll_timeout", "10m").unwrap_err().to_string(),
            "\"10m\" is longer than the 5m a held poll may last"
        );
        assert!(set("chatup_poll_timeout", "off").is_err());
        assert!(set("chatup_allow_origin", "*").is_ok());
        assert!(set(
            "chatup_allow_origin",
            "https://a.example http://b.example:8080"
        )
        .is_ok());
        for bad in [
            "a.example",
            "https://a.example/path",
            "* https://a.example",
            "",
        ] {
            let err = set("chatup_allow_origin", bad).unwrap_err().to_string();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn cors_answers_only_allowed_origins() {
        let mut lc = LocConf::default();
        assert_eq!(lc.cors_origin(Some(b"https://a.example")), None);
        lc.allow_origin = Some(vec!["https://a.example".into()]);
        assert_eq!(
            lc.cors_origin(Some(b"https://a.example")),
            Some(&b"https://a.example"[..])
        );
        assert_eq!(lc.cors_origin(Some(b"https://evil.example")), None);
        assert_eq!(lc.cors_origin(None), None);
        lc.allow_origin = Some(vec!["*".into()]);
        assert_eq!(lc.cors_origin(None), Some(&b"*"[..]));
        let mut child = LocConf::default();
        child.merge(&lc);
        assert_eq!(child.cors_origin(None), Some(&b"*"[..]));
    }
}
