//! Where the harness finds the repository and the artifacts `scripts/setup` builds.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The folder holding `nginx`, `ngx_http_chatup_module.so` and `chatup-sidecar`:
/// `$CHATUP_BUILD_DIR`, or `build/` in the repository. Panics with what to do when an
/// artifact is missing.
pub fn build_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("CHATUP_BUILD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("build"));
        for name in ["nginx", "ngx_http_chatup_module.so", "chatup-sidecar"] {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} is missing: run scripts/setup first (or set CHATUP_BUILD_DIR to a folder \
                 holding nginx, ngx_http_chatup_module.so and chatup-sidecar)",
                path.display()
            );
        }
        dir
    })
    .clone()
}

pub fn nginx_bin() -> PathBuf {
    build_dir().join("nginx")
}

pub fn module_path() -> PathBuf {
    build_dir().join("ngx_http_chatup_module.so")
}

pub fn sidecar_bin() -> PathBuf {
    build_dir().join("chatup-sidecar")
}

pub fn example_keys() -> PathBuf {
    repo_root().join("nginx-conf/example-keys")
}

/// `nginx-conf/`: the packaged configuration, whose locations every test's nginx includes.
pub fn nginx_conf_dir() -> PathBuf {
    repo_root().join("nginx-conf")
}
