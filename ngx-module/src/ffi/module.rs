//! The module table nginx loads: its HTTP context (configuration structs and their merge)
//! and its commands, and the worker hooks.

use std::ptr::{addr_of, addr_of_mut};

use ngx::ffi::{ngx_http_module_t, ngx_module_t, NGX_HTTP_MODULE};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};

use super::directives::{init_main_conf, merge_loc_conf, COMMANDS};
use super::worker;
use crate::conf::{LocConf, MainConf};

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module table is only written by nginx while loading the
        // configuration, before any request or worker event reads it through here.
        unsafe { &*addr_of!(ngx_http_chatup_module) }
    }
}

// SAFETY: create_main_conf allocates a MainConf for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: create_loc_conf allocates a LocConf for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: Some(init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_chatup_module);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_chatup_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as _,
    // SAFETY: taking the address of the static command table; nginx only reads it.
    commands: unsafe { addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};
