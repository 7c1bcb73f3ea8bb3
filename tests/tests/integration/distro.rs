//! The module in the operator's own nginx: Debian's `nginx` package, with the module that
//! `scripts/module-for-nginx` builds for it. Skipped (and says so) where there is no apt.

use chatup_tests::{assert_message, build_dir, repo_root, Chatup, Options, Subscriber};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";

/// These tests change what is installed on the machine (Debian's nginx, chatup's packages):
/// one at a time.
pub static SYSTEM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether this machine has apt; when not, prints why the calling test is skipped.
pub fn have_apt(test: &str) -> bool {
    let apt = Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg").exists();
    if !apt {
        eprintln!("{test}: skipped: no apt-get/dpkg on this machine (not Debian or Ubuntu)");
    }
    apt
}

/// Whether `package` is installed, by dpkg's record.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Runs `cmd`, panicking with its output when it fails; returns its stdout and stderr.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Installs Debian's nginx (and dpkg-dev, for `apt-get source`) when missing.
pub fn install_debian_nginx() {
    let missing: Vec<&str> = ["nginx", "dpkg-dev"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
    }
    assert!(
        Path::new(DEBIAN_NGINX).exists(),
        "{DEBIAN_NGINX} missing after installing Debian's nginx"
    );
}

/// Builds the module for Debian's nginx with scripts/module-for-nginx; returns its path.
pub fn module_for_debian_nginx() -> PathBuf {
    let out = run(Command::new(repo_root().join("scripts/module-for-nginx")).arg(DEBIAN_NGINX));
    assert!(
        out.contains("loads it"),
        "scripts/module-for-nginx did not check the load:\n{out}"
    );
    let dir = build_dir().join("system-nginx");
    let version = std::fs::read_to_string(dir.join("nginx-version")).expect("nginx-version");
    let said = run(Command::new(DEBIAN_NGINX).arg("-v"));
    assert!(
        said.contains(&format!("nginx/{}", version.trim())),
        "built for {version}, but {DEBIAN_NGINX} -v says {said}"
    );
    dir.join("ngx_http_chatup_module.so")
}

#[tokio::test]
async fn debian_nginx_serves_publish_subscribe_replay_and_resume() {
    let test = "debian_nginx_serves_publish_subscribe_replay_and_resume";
    if !have_apt(test) {
        return;
    }
    let _one = SYSTEM.lock().await;
    install_debian_nginx();
    let module = module_for_debian_nginx();

    // The vendored module is for another version: Debian's nginx refuses it, clearly.
    let vendored = chatup_tests::env::module_path();
    let (ok, out) = chatup_tests::env::nginx_test_with(
        Path::new(DEBIAN_NGINX),
        &format!("load_module {};\nevents {{ }}\n", vendored.display()),
    );
    assert!(
        !ok && out.contains("instead of"),
        "Debian's nginx should refuse a module built for another version:\n{out}"
    );

    let env = Chatup::start_with(Options::default().nginx_build(DEBIAN_NGINX.into(), module));
    let exe = std::fs::read_link(format!("/proc/{}/exe", env.master_pid())).expect("exe");
    assert_eq!(
        exe,
        Path::new(DEBIAN_NGINX),
        "the running nginx is Debian's"
    );

    // Publish and subscribe.
    let mut sub = Subscriber::connect(&env, "/sub/deb").await;
    env.publish_n("deb", 1, 3).await;
    let live = sub.recv_n(3).await;
    for (m, id) in live.iter().zip(1..) {
        assert_message(m, "deb", id, &format!("m{id}"));
    }

    // Replay: a new subscriber gets the cache, on every worker.
    env.expect_on_every_worker("/sub/deb", "deb", 1..=3, QUIET)
        .await;

    // Resume: what was published while away, nothing twice.
    let since = sub.since_of("deb").expect("a position");
    sub.close(1000).await;
    drop(sub);
    env.publish_n("deb", 4, 6).await;
    let mut again = Subscriber::connect(&env, &format!("/sub/deb?since={since}")).await;
    let msgs = again.recv_n(3).await;
    for (m, id) in msgs.iter().zip(4..) {
        assert_message(m, "deb", id, &format!("m{id}"));
    }
    again.expect_no_message(QUIET).await;
}
