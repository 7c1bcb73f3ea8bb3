//! The directives' setters and nginx's command table, built from the settings that
//! [`crate::conf`] declares and parses. Only here are directives' values taken out of nginx
//! and results turned into what nginx expects (`NGX_CONF_OK`, or an error logged for
//! `nginx -t` and `NGX_CONF_ERROR`).

use std::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_handler_pt, ngx_str_t, ngx_uint_t, NGX_CONF_NOARGS,
    NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_log_error, ngx_string};

use super::module::Module;
use super::{publish, subscriber};
use crate::conf::{
    check_relay_socket_dir, check_sole_handler, ConfError, DirState, Handler, LocConf, MainConf,
    Setting, LOC_SETTINGS, MAIN_SETTINGS,
};

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
    // SAFETY: nginx passes a setter's arguments through.
    unsafe { set_handler(cf, conf, Handler::Subscribe) }
}

extern "C" fn set_publish(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes a setter's arguments through.
    unsafe { set_handler(cf, conf, Handler::Publish) }
}

/// `chatup_subscribe` or `chatup_publish`: this module answers the location.
///
/// # Safety
/// `cf` and `conf` must be what nginx passes to the setter of a location command declared
/// with `NGX_HTTP_LOC_CONF_OFFSET`.
unsafe fn set_handler(cf: *mut ngx_conf_t, conf: *mut c_void, handler: Handler) -> *mut c_char {
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
        let example = match handler {
            Handler::Subscribe => "/sub/",
            Handler::Publish => "/pub/",
        };
        let err = ConfError::NotPrefixLocation(example, handler.directive());
        // SAFETY: cf is the setter's configuration.
        return unsafe { conf_result(cf, Err(err)) };
    }
    let prefix = clcf.name.as_bytes().to_vec();
    // A handler set before this directive (e.g. by `proxy_pass`) would be overwritten
    // here and one set after it is caught in merge_loc_conf.
    let handler_before = check_sole_handler(&prefix, is_other_handler(clcf.handler));
    if handler_before.is_err() {
        // SAFETY: cf is the setter's configuration.
        return unsafe { conf_result(cf, handler_before) };
    }
    clcf.handler = match handler {
        Handler::Subscribe => Some(subscriber::content_handler),
        Handler::Publish => Some(publish::content_handler),
    };
    // SAFETY: while a directive is parsed, cf->conf_file is the file it stands in.
    let handler_at = unsafe {
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
    // SAFETY: the command is declared with NGX_HTTP_LOC_CONF_OFFSET (caller's contract), so
    // conf is our LocConf.
    unsafe {
        with_conf::<LocConf>(cf, conf, |lc, _| {
            lc.set_handler(handler, prefix, handler_at)
        })
    }
}

/// Whether a location's content handler is set, and not by this module.
fn is_other_handler(handler: ngx_http_handler_pt) -> bool {
    let Some(handler) = handler else {
        return false;
    };
    let subscribe: unsafe extern "C" fn(_) -> _ = subscriber::content_handler;
    let publish: unsafe extern "C" fn(_) -> _ = publish::content_handler;
    !std::ptr::fn_addr_eq(handler, subscribe) && !std::ptr::fn_addr_eq(handler, publish)
}

/// Inherits the settings, then refuses a subscribe or publish location whose content
/// handler is another module's. Only here is it sound: `proxy_pass` & co. may come after
/// `chatup_subscribe` (or `chatup_publish`) in the block and overwrite the handler it set.
pub extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the enclosing level's and this level's LocConf, two distinct
    // structs made by this module's create_loc_conf.
    let (prev, conf) = unsafe { (&*prev.cast::<LocConf>(), &mut *conf.cast::<LocConf>()) };
    conf.merge(prev);
    let Some(handler) = conf.handler() else {
        return NGX_CONF_OK;
    };
    // SAFETY: nginx calls merge_loc_conf with a valid cf whose ctx->loc_conf is the
    // configuration array of the location being merged (ngx_http_merge_locations).
    let cf_ref = unsafe { &*cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf(cf_ref) else {
        return NGX_CONF_ERROR;
    };
    match conf.check_content_handler(is_other_handler(clcf.handler)) {
        Ok(()) => NGX_CONF_OK,
        Err(err) => {
            // The parser has left the block: say where the directive stands.
            ngx_log_error!(
                NGX_LOG_EMERG,
                cf_ref.log,
                "\"{}\" {} in {}",
                handler.directive(),
                err,
                conf.handler_at
            );
            NGX_CONF_ERROR
        }
    }
}

/// Warns, once the `http` block is parsed, of a relay socket that cannot appear.
pub extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes a valid cf and this module's MainConf, made by create_main_conf.
    let (cf_ref, main) = unsafe { (&*cf, &*conf.cast::<MainConf>()) };
    // Without a subscribe or publish location the workers never connect: nothing to warn of.
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

/// `chatup_subscribe`, `chatup_publish`, the settings, and the terminating null command.
const COMMAND_COUNT: usize = 3 + MAIN_SETTINGS.len() + LOC_SETTINGS.len();

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
    table[1] = command(
        ngx_string!("chatup_publish"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        NGX_HTTP_LOC_CONF_OFFSET,
        set_publish,
        0,
    );
    let at = push_settings::<MainConf>(&mut table, 2);
    let at = push_settings::<LocConf>(&mut table, at);
    // The last entry stays the null command that ends the table.
    assert!(at == COMMAND_COUNT - 1);
    table
}

// nginx takes the table as `*mut` but never writes to it.
pub static mut COMMANDS: [ngx_command_t; COMMAND_COUNT] = commands();
