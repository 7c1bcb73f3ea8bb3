//! Turns the metadata that nginx-sys exports about the nginx it was built against into cfgs,
//! and records where that nginx tree is so scripts/setup can pick up the nginx binary.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ngx_feature, values(any()))");
    println!("cargo::rustc-check-cfg=cfg(ngx_os, values(any()))");
    println!("cargo::rustc-check-cfg=cfg(nginx1_23)");
    for var in [
        "DEP_NGINX_FEATURES",
        "DEP_NGINX_OS",
        "DEP_NGINX_BUILD_DIR",
        "DEP_NGINX_VERSION_NUMBER",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if let Ok(features) = std::env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }
    if let Ok(os) = std::env::var("DEP_NGINX_OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }
    // ngx_table_elt_t.next appeared in nginx 1.23.0.
    let version: u64 = std::env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version >= 1_023_000 {
        println!("cargo::rustc-cfg=nginx1_23");
    }
    if let Ok(dir) = std::env::var("DEP_NGINX_BUILD_DIR") {
        let out = std::env::var("OUT_DIR").unwrap_or_default();
        // scripts/setup reads this to find the nginx binary of a vendored build.
        let _ = std::fs::write(std::path::Path::new(&out).join("nginx-build-dir"), dir);
    }
}
