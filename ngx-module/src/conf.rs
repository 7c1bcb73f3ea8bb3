//! The module's directives, declared in one place, with their defaults.
//!
//! | directive               | context                 | default                  |
//! |-------------------------|-------------------------|--------------------------|
//! | `chatup_subscribe`      | location (prefix)       | —                        |
//! | `chatup_relay_socket`   | http                    | `/run/chatup/relay.sock` |
//! | `chatup_cache_messages` | http                    | `100`                    |
//! | `chatup_cache_bytes`    | http                    | `256k`                   |
//! | `chatup_ping_interval`  | http, server, location  | `30s` (`off` disables)   |
//! | `chatup_max_channels`   | http, server, location  | `16`                     |
//! | `chatup_max_unsent`     | http, server, location  | `1m`                     |
//!
//! Values are parsed by plain functions (tested below), and the one-value directives are
//! listed in [`MAIN_SETTINGS`] and [`LOC_SETTINGS`], from which the command table is built;
//! the setters only move values in and out of nginx, so `nginx -t` reports every mistake
//! with the directive and what is allowed. Once the `http` block is parsed, a subscribe
//! location with another module's content handler is refused (`merge_loc_conf`), and a relay
//! socket whose folder is missing is warned of (`init_main_conf`).

use std::ffi::CStr;
use std::io;
use std::path::Path;

use ngx::http::{Merge, MergeConfigError};

pub const DEFAULT_RELAY_SOCKET: &str = "/run/chatup/relay.sock";
pub const DEFAULT_CACHE_MESSAGES: usize = 100;
pub const DEFAULT_CACHE_BYTES: usize = 256 << 10;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_MAX_CHANNELS: usize = 16;
pub const DEFAULT_MAX_UNSENT: usize = 1 << 20;

const MAX_CACHE_MESSAGES: usize = 100_000;
const MAX_CHANNELS_LIMIT: usize = 1_000;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Default)]
pub struct MainConf {
    pub relay_socket: Option<String>,
    pub cache_messages: Option<usize>,
    pub cache_bytes: Option<usize>,
    /// Some location has `chatup_subscribe`: only then do workers connect to the sidecar.
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

#[derive(Debug, Default)]
pub struct LocConf {
    pub subscribe: bool,
    /// The location's prefix: what follows it in the URI is the channel list.
    pub prefix: Vec<u8>,
    /// `file:line` of `chatup_subscribe`, for errors found after the block is parsed.
    pub subscribe_at: String,
    /// Milliseconds; `Some(0)` is `off`.
    pub ping_interval_ms: Option<u64>,
    pub max_channels: Option<usize>,
    pub max_unsent: Option<usize>,
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

    /// [`check_sole_handler`] for a subscribe location, once its whole block is parsed.
    pub fn check_content_handler(&self, other_handler: bool) -> Result<(), ConfError> {
        if self.subscribe {
            check_sole_handler(&self.prefix, other_handler)
        } else {
            Ok(())
        }
    }
}

/// A subscribe location must answer its requests itself: nginx runs one content handler per
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

impl Merge for LocConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        self.ping_interval_ms = self.ping_interval_ms.or(prev.ping_interval_ms);
        self.max_channels = self.max_channels.or(prev.max_channels);
        self.max_unsent = self.max_unsent.or(prev.max_unsent);
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("\"{value}\" is not a whole number from {min} to {max}")]
    Number {
        value: String,
        min: usize,
        max: usize,
    },
    #[error("\"{0}\" is not a size (examples: 65536, 512k, 1m)")]
    Size(String),
    #[error("\"{0}\" is not a duration (examples: 500ms, 30s, 2m) or \"off\"")]
    Duration(String),
    #[error("\"{0}\" must not be 0")]
    Zero(String),
    #[error("is duplicate")]
    Duplicate,
    #[error("needs a prefix location such as \"location /sub/ {{ chatup_subscribe; }}\"")]
    NotPrefixLocation,
    #[error("\"{0}\" must be an absolute path")]
    RelativePath(String),
    #[error("\"{0}\" is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have")]
    PathTooLong(String),
    #[error(
        "cannot share location \"{location}\" with another content handler (\"proxy_pass\", \
         \"fastcgi_pass\", \"uwsgi_pass\", \"scgi_pass\", \"grpc_pass\", \"memcached_pass\" or \
         another module's directive): only one of them can answer its requests"
    )]
    SharedContentHandler { location: String },
}

/// What a single `stat` says about the folder that should hold the relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Dir,
    Missing,
    NotDir,
    /// The `stat` failed otherwise (e.g. permission): nothing useful to say.
    Unknown,
}

impl DirState {
    /// One `stat` of `dir`; cheap enough for config time, never called in a worker.
    pub fn of(dir: &Path) -> Self {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Self::Dir,
            Ok(_) => Self::NotDir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Self::Missing,
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => Self::NotDir,
            Err(_) => Self::Unknown,
        }
    }
}

/// Configuration that nginx accepts but that cannot work as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfWarning {
    #[error(
        "\"chatup_relay_socket\" \"{socket}\": directory \"{dir}\" does not exist; \
         workers will keep retrying to connect to the sidecar until it creates the socket there"
    )]
    RelayDirMissing { socket: String, dir: String },
    #[error(
        "\"chatup_relay_socket\" \"{socket}\": \"{dir}\" is not a directory; \
         workers will keep retrying to connect to the sidecar until it creates the socket there"
    )]
    RelayDirNotDir { socket: String, dir: String },
}

/// The relay socket itself may not exist yet (the sidecar creates it), but a missing folder
/// is almost always a typo; `state` tells what the folder is.
pub fn check_relay_socket_dir(
    socket: &str,
    state: impl FnOnce(&Path) -> DirState,
) -> Option<ConfWarning> {
    let dir = Path::new(socket).parent()?;
    let names = || (socket.to_owned(), dir.display().to_string());
    match state(dir) {
        DirState::Dir | DirState::Unknown => None,
        DirState::Missing => {
            let (socket, dir) = names();
            Some(ConfWarning::RelayDirMissing { socket, dir })
        }
        DirState::NotDir => {
            let (socket, dir) = names();
            Some(ConfWarning::RelayDirNotDir { socket, dir })
        }
    }
}

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

pub fn parse_socket_path(value: &str) -> Result<String, ConfError> {
    if !value.starts_with('/') {
        return Err(ConfError::RelativePath(value.into()));
    }
    if value.len() > MAX_SOCKET_PATH {
        return Err(ConfError::PathTooLong(value.into()));
    }
    Ok(value.into())
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

/// The `http`-level directives that take a value (`chatup_subscribe` is the only other one).
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
pub const LOC_SETTINGS: [Setting<LocConf>; 3] = [
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
];

/// The setters and the command table: the only part of the configuration that touches nginx.
#[cfg(not(test))]
mod directives {
    use std::ffi::{c_char, c_void};

    use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
    use ngx::ffi::{
        ngx_command_t, ngx_conf_t, ngx_http_handler_pt, ngx_str_t, ngx_uint_t, NGX_CONF_NOARGS,
        NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
        NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
    };
    use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
    use ngx::{ngx_conf_log_error, ngx_log_error, ngx_string};

    use super::*;
    use crate::Module;

    /// The directive's name and its single argument (empty for a no-argument directive).
    ///
    /// # Safety
    /// `cf` must be the configuration nginx passes to a directive setter.
    unsafe fn directive_args<'a>(cf: *mut ngx_conf_t) -> (&'a str, &'a str) {
        // SAFETY: while a setter runs, cf->args holds the directive's words as ngx_str_t, the
        // first being its name; nginx checked the argument count against the command's flags.
        let args = unsafe { (*(*cf).args).as_slice::<ngx_str_t>() };
        let word = |i: usize| {
            args.get(i)
                .and_then(|s| std::str::from_utf8(s.as_bytes()).ok())
                .unwrap_or("")
        };
        (word(0), word(1))
    }

    /// Turns a setter's result into what nginx expects, logging the reason for `nginx -t`.
    ///
    /// # Safety
    /// `cf` must be the configuration nginx passes to a directive setter.
    unsafe fn conf_result(cf: *mut ngx_conf_t, result: Result<(), ConfError>) -> *mut c_char {
        match result {
            Ok(()) => NGX_CONF_OK,
            Err(err) => {
                // SAFETY: same contract as this function's.
                let (name, _) = unsafe { directive_args(cf) };
                ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"{}\" {}", name, err);
                NGX_CONF_ERROR
            }
        }
    }

    /// Runs `set` on this module's configuration struct of type `T` at the directive's level.
    ///
    /// # Safety
    /// `cf` and `conf` must be what nginx passes to a setter whose command's `conf` offset
    /// selects a struct of type `T` of this module.
    unsafe fn with_conf<T>(
        cf: *mut ngx_conf_t,
        conf: *mut c_void,
        set: impl FnOnce(&mut T, &str) -> Result<(), ConfError>,
    ) -> *mut c_char {
        // SAFETY: nginx hands the setter the struct the command's offset selects, which the
        // caller guarantees is a T created by this module's create_*_conf.
        let conf = unsafe { &mut *conf.cast::<T>() };
        // SAFETY: forwarded from this function's contract.
        let (_, value) = unsafe { directive_args(cf) };
        let result = set(conf, value);
        // SAFETY: forwarded from this function's contract.
        unsafe { conf_result(cf, result) }
    }

    extern "C" fn set_subscribe(
        cf: *mut ngx_conf_t,
        _cmd: *mut ngx_command_t,
        conf: *mut c_void,
    ) -> *mut c_char {
        // SAFETY: called by nginx while parsing a location block, so cf is valid.
        let cf_ref = unsafe { &*cf };
        let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf_ref) else {
            return NGX_CONF_ERROR;
        };
        let regex = {
            #[cfg(ngx_feature = "pcre")]
            {
                !clcf.regex.is_null()
            }
            #[cfg(not(ngx_feature = "pcre"))]
            {
                false
            }
        };
        if regex || clcf.named() != 0 || clcf.exact_match() != 0 || clcf.noname() != 0 {
            // SAFETY: cf is the setter's configuration.
            return unsafe { conf_result(cf, Err(ConfError::NotPrefixLocation)) };
        }
        let prefix = clcf.name.as_bytes().to_vec();
        // A handler set before this directive (e.g. by `proxy_pass`) would be overwritten
        // here and one set after it is caught in merge_loc_conf.
        let handler_before = check_sole_handler(&prefix, is_other_handler(clcf.handler));
        if handler_before.is_err() {
            // SAFETY: cf is the setter's configuration.
            return unsafe { conf_result(cf, handler_before) };
        }
        clcf.handler = Some(crate::ffi::subscriber::content_handler);
        // SAFETY: while a directive is parsed, cf->conf_file is the file it stands in.
        let subscribe_at = unsafe {
            let file = &*cf_ref.conf_file;
            format!(
                "{}:{}",
                String::from_utf8_lossy(file.file.name.as_bytes()),
                file.line
            )
        };
        if let Some(main) = Module::main_conf_mut(cf_ref) {
            main.enabled = true;
        }
        // SAFETY: this command is declared with NGX_HTTP_LOC_CONF_OFFSET, so conf is our LocConf.
        unsafe {
            with_conf::<LocConf>(cf, conf, |lc, _| {
                if lc.subscribe {
                    return Err(ConfError::Duplicate);
                }
                lc.subscribe = true;
                lc.prefix = prefix;
                lc.subscribe_at = subscribe_at;
                Ok(())
            })
        }
    }

    /// Whether a location's content handler is set, and not by this module.
    fn is_other_handler(handler: ngx_http_handler_pt) -> bool {
        let ours: ngx_http_handler_pt = Some(crate::ffi::subscriber::content_handler);
        match (handler, ours) {
            (Some(handler), Some(ours)) => !std::ptr::fn_addr_eq(handler, ours),
            (handler, _) => handler.is_some(),
        }
    }

    /// Inherits the settings, then refuses a subscribe location whose content handler is
    /// another module's. Only here is it sound: `proxy_pass` & co. may come after
    /// `chatup_subscribe` in the block and overwrite the handler it set.
    pub(crate) extern "C" fn merge_loc_conf(
        cf: *mut ngx_conf_t,
        prev: *mut c_void,
        conf: *mut c_void,
    ) -> *mut c_char {
        // SAFETY: nginx passes the enclosing level's and this level's LocConf, two distinct
        // structs made by this module's create_loc_conf.
        let (prev, conf) = unsafe { (&*prev.cast::<LocConf>(), &mut *conf.cast::<LocConf>()) };
        if conf.merge(prev).is_err() {
            return NGX_CONF_ERROR;
        }
        if !conf.subscribe {
            return NGX_CONF_OK;
        }
        // SAFETY: nginx calls merge_loc_conf with a valid cf whose ctx->loc_conf is the
        // configuration array of the location being merged (ngx_http_merge_locations).
        let cf_ref = unsafe { &*cf };
        let Some(clcf) = NgxHttpCoreModule::location_conf(cf_ref) else {
            return NGX_CONF_ERROR;
        };
        match conf.check_content_handler(is_other_handler(clcf.handler)) {
            Ok(()) => NGX_CONF_OK,
            Err(err) => {
                // The parser has left the block: say where chatup_subscribe stands.
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    cf_ref.log,
                    "\"chatup_subscribe\" {} in {}",
                    err,
                    conf.subscribe_at
                );
                NGX_CONF_ERROR
            }
        }
    }

    /// Warns, once the `http` block is parsed, of a relay socket that cannot appear.
    pub(crate) extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
        // SAFETY: nginx passes a valid cf and this module's MainConf, made by create_main_conf.
        let (cf_ref, main) = unsafe { (&*cf, &*conf.cast::<MainConf>()) };
        // Without a subscribe location the workers never connect: nothing to warn of.
        if main.enabled {
            if let Some(warning) = check_relay_socket_dir(main.relay_socket(), DirState::of) {
                ngx_log_error!(NGX_LOG_WARN, cf_ref.log, "{}", warning);
            }
        }
        NGX_CONF_OK
    }

    /// A configuration struct of this module: where nginx keeps it, where its directives may
    /// stand, and its one-value directives.
    trait Level: Sized + 'static {
        const CONF_OFFSET: usize;
        const CONTEXT: u32;
        const SETTINGS: &'static [Setting<Self>];
    }

    impl Level for MainConf {
        const CONF_OFFSET: usize = NGX_HTTP_MAIN_CONF_OFFSET;
        const CONTEXT: u32 = NGX_HTTP_MAIN_CONF;
        const SETTINGS: &'static [Setting<Self>] = &MAIN_SETTINGS;
    }

    impl Level for LocConf {
        const CONF_OFFSET: usize = NGX_HTTP_LOC_CONF_OFFSET;
        const CONTEXT: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
        const SETTINGS: &'static [Setting<Self>] = &LOC_SETTINGS;
    }

    /// The setter of every one-value directive; the command's `offset` (which nginx leaves to
    /// the setter) is the directive's index in `C::SETTINGS`.
    extern "C" fn set_value<C: Level>(
        cf: *mut ngx_conf_t,
        cmd: *mut ngx_command_t,
        conf: *mut c_void,
    ) -> *mut c_char {
        // SAFETY: nginx passes the command it matched, an entry of COMMANDS.
        let index = unsafe { (*cmd).offset };
        let Some(setting) = C::SETTINGS.get(index) else {
            return NGX_CONF_ERROR;
        };
        // SAFETY: `commands` declares this setter with C::CONF_OFFSET, so conf is our C.
        unsafe { with_conf::<C>(cf, conf, setting.set) }
    }

    type Setter = extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

    const fn command(
        name: ngx_str_t,
        flags: u32,
        conf: usize,
        set: Setter,
        offset: usize,
    ) -> ngx_command_t {
        ngx_command_t {
            name,
            type_: flags as ngx_uint_t,
            set: Some(set),
            conf,
            offset,
            post: std::ptr::null_mut(),
        }
    }

    /// `chatup_subscribe`, the settings, and the terminating null command.
    const COMMAND_COUNT: usize = 2 + MAIN_SETTINGS.len() + LOC_SETTINGS.len();

    /// Appends the commands of `C::SETTINGS` to `table` from `at`; returns the next free slot.
    const fn push_settings<C: Level>(
        table: &mut [ngx_command_t; COMMAND_COUNT],
        mut at: usize,
    ) -> usize {
        let mut index = 0;
        while index < C::SETTINGS.len() {
            let name = C::SETTINGS[index].name;
            table[at] = command(
                ngx_str_t {
                    len: name.to_bytes().len(),
                    data: name.as_ptr() as *mut u8,
                },
                C::CONTEXT | NGX_CONF_TAKE1,
                C::CONF_OFFSET,
                set_value::<C>,
                index,
            );
            at += 1;
            index += 1;
        }
        at
    }

    const fn commands() -> [ngx_command_t; COMMAND_COUNT] {
        let mut table = [ngx_command_t::empty(); COMMAND_COUNT];
        table[0] = command(
            ngx_string!("chatup_subscribe"),
            NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
            NGX_HTTP_LOC_CONF_OFFSET,
            set_subscribe,
            0,
        );
        let at = push_settings::<MainConf>(&mut table, 1);
        let at = push_settings::<LocConf>(&mut table, at);
        // The last entry stays the null command that ends the table.
        assert!(at == COMMAND_COUNT - 1);
        table
    }

    // nginx takes the table as `*mut` but never writes to it.
    pub static mut COMMANDS: [ngx_command_t; COMMAND_COUNT] = commands();
}

#[cfg(not(test))]
pub use directives::COMMANDS;
#[cfg(not(test))]
pub(crate) use directives::{init_main_conf, merge_loc_conf};

#[cfg(test)]
mod tests {
    use super::*;

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
        child.merge(&parent).unwrap();
        assert_eq!(child.max_channels(), 4);
        assert_eq!(child.ping_interval_ms(), 0);
        assert_eq!(child.max_unsent(), 10);
        assert_eq!(LocConf::default().max_unsent(), DEFAULT_MAX_UNSENT);
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

    #[test]
    fn a_relay_socket_folder_that_is_not_there_is_warned_of() {
        let seen = |want: &'static str, state: DirState| {
            move |dir: &Path| {
                assert_eq!(dir, Path::new(want));
                state
            }
        };
        assert_eq!(
            check_relay_socket_dir("/run/chatup/relay.sock", seen("/run/chatup", DirState::Dir)),
            None
        );
        assert_eq!(
            check_relay_socket_dir("/x/relay.sock", seen("/x", DirState::Unknown)),
            None
        );
        let missing = check_relay_socket_dir("/rnu/relay.sock", seen("/rnu", DirState::Missing));
        assert_eq!(
            missing,
            Some(ConfWarning::RelayDirMissing {
                socket: "/rnu/relay.sock".into(),
                dir: "/rnu".into()
            })
        );
        let text = missing.unwrap().to_string();
        assert!(
            text.contains("\"/rnu\" does not exist") && text.contains("retrying"),
            "{text}"
        );
        assert!(matches!(
            check_relay_socket_dir("/f/relay.sock", seen("/f", DirState::NotDir)),
            Some(ConfWarning::RelayDirNotDir { .. })
        ));
    }

    #[test]
    fn dir_state_stats_the_folder() {
        let dir = std::env::temp_dir();
        assert_eq!(DirState::of(&dir), DirState::Dir);
        assert_eq!(
            DirState::of(&dir.join("chatup-no-such-dir-7f3a")),
            DirState::Missing
        );
        let file = dir.join(format!("chatup-dir-state-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        assert_eq!(DirState::of(&file), DirState::NotDir);
        assert_eq!(DirState::of(&file.join("below")), DirState::NotDir);
        std::fs::remove_file(&file).unwrap();
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
}
