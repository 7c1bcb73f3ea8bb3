//! One test's nginx + sidecar (a chat host), in a temp folder, on free loopback ports; and a
//! dispatcher-only sidecar ([`Dispatcher`]) for tests with several hosts.
//!
//! Several hosts in one test each take their own loopback address ([`Options::address`]:
//! Linux routes all of 127/8 to `lo`), so each has a distinct public URL, as real hosts do.
//!
//! - [`chatup`]: [`Chatup`], the host: start, stop, kill and restart its processes, logs.
//! - [`dispatcher`]: the [`Dispatcher`].
//! - [`options`]: [`Options`], what a test changes in the default setup.
//! - [`nginx_conf`]: the test's nginx.conf (the packaged locations of `nginx-conf/`, included)
//!   and `nginx -t` runs.
//! - [`sidecar`]: spawning `chatup-sidecar`, and its readiness probe.
//! - [`ports`], [`paths`]: free loopback ports; the repository and the built artifacts.

use std::time::Duration;

pub mod chatup;
pub mod dispatcher;
pub mod nginx_conf;
pub mod options;
pub mod paths;
pub mod ports;
pub mod sidecar;

pub use chatup::Chatup;
pub use dispatcher::Dispatcher;
pub use nginx_conf::{
    nginx_config_test, nginx_config_test_with_relay_socket, nginx_test, nginx_test_using,
    nginx_test_with, self_signed_certificate, temp_paths, user_directive,
};
pub use options::{NginxBuild, Options};
pub use paths::{
    build_dir, example_keys, module_path, nginx_bin, nginx_conf_dir, repo_root, sidecar_bin,
};
pub use ports::{free_port, free_port_on};
pub use sidecar::http_status;
// Where they were before the process guard had a module of its own.
pub use crate::process::{signal_pid, terminate, wait_ready, wait_timeout};

/// How long nginx or a sidecar may take to be ready after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
