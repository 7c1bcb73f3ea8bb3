//! The module in the operator's own nginx: Debian's `nginx` package, with the module that
//! `scripts/module-for-nginx` builds for it. Skipped (and says so) where there is no apt.

use chatup_tests::{assert_message, build_dir, repo_root, Chatup, Options, Subscriber};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";
/// Where Debian's nginx finds modules, the samples load chatup's from, and the package
/// installs it.
const INSTALLED_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_chatup_module.so";

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

/// Builds the module for Debian's nginx with scripts/module-for-nginx (`--install`: also
/// into Debian's modules folder); returns the path of the build.
pub fn module_for_debian_nginx(install: bool) -> PathBuf {
    let mut cmd = Command::new(repo_root().join("scripts/module-for-nginx"));
    if install {
        cmd.arg("--install");
    }
    let out = run(cmd.arg(DEBIAN_NGINX));
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
    let module = module_for_debian_nginx(true);

    // Installed where the samples load it from: nginx-conf/chatup.conf passes Debian's
    // `nginx -t` with its load_module line as written.
    let installed = Path::new(INSTALLED_MODULE);
    assert!(installed.exists(), "--install put it in {INSTALLED_MODULE}");
    let sample = std::fs::read_to_string(chatup_tests::env::nginx_conf_dir().join("chatup.conf"))
        .expect("chatup.conf");
    let (ok, out) = crate::config::nginx_t_filled_for(Path::new(DEBIAN_NGINX), None, &sample);
    let _ = std::fs::remove_file(installed);
    assert!(
        ok && !out.contains("[warn]"),
        "chatup.conf, as written, in Debian's nginx:\n{out}"
    );

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

const SIDECAR_DEB: &str = "chatup-sidecar";
const MODULE_DEB: &str = "libnginx-mod-http-chatup";
const UNIT: &str = "/lib/systemd/system/chatup-sidecar.service";
const SITE: &str = "/etc/nginx/sites-available/chatup";
const SITE_LINK: &str = "/etc/nginx/sites-enabled/chatup";
const SIDECAR_TOML: &str = "/etc/chatup/chatup.toml";
const MODULE_LINK: &str = "/etc/nginx/modules-enabled/50-mod-http-chatup.conf";

/// What the package test put on the machine: stopped and purged when it ends, pass or fail.
struct Deployment {
    sidecar: Option<chatup_tests::ChildGuard>,
    logs: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Self {
        let d = Self {
            sidecar: None,
            logs: tempfile::tempdir().expect("temp folder"),
        };
        d.clean();
        d
    }

    /// Removes what an earlier run may have left: the machine as if chatup never was.
    fn clean(&self) {
        stop_system_nginx();
        let _ = std::fs::remove_file(SITE_LINK);
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-qq", SIDECAR_DEB, MODULE_DEB])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }

    /// Starts the sidecar as its installed unit says (what systemd would do): the unit's
    /// user and group, runtime folder and umask, and its ExecStart.
    fn start_sidecar(&mut self) {
        assert!(self.sidecar.is_none(), "the sidecar is running");
        let unit = std::fs::read_to_string(UNIT).expect("the package installs the unit");
        let key = |k: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{UNIT} has no {k}="))
                .to_owned()
        };
        let (user, group) = (key("User"), key("Group"));
        let runtime = format!("/run/{}", key("RuntimeDirectory"));
        run(Command::new("install").args([
            "-d",
            "-o",
            &user,
            "-g",
            &group,
            "-m",
            &key("RuntimeDirectoryMode"),
            &runtime,
        ]));
        let log = std::fs::File::create(self.logs.path().join("sidecar.log")).expect("log");
        let child = chatup_tests::ChildGuard::spawn(
            Command::new("setpriv")
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={group}"))
                .arg("--init-groups")
                .args(["sh", "-c"])
                .arg(format!("umask {}; exec {}", key("UMask"), key("ExecStart")))
                .stdout(log.try_clone().expect("dup"))
                .stderr(log),
        )
        .expect("spawn the sidecar");
        self.sidecar = Some(child);
        let socket = Path::new(&runtime).join("relay.sock");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the packaged sidecar made no {}:\n{}",
                socket.display(),
                self.sidecar_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_sidecar(&mut self) {
        if let Some(child) = self.sidecar.take() {
            child.kill();
        }
    }

    fn sidecar_log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop_sidecar();
        self.clean();
    }
}

/// The master pid of the nginx started with /etc/nginx/nginx.conf, if it runs.
fn system_nginx_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string("/run/nginx.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn stop_system_nginx() {
    if let Some(pid) = system_nginx_pid() {
        let _ = Command::new(DEBIAN_NGINX).args(["-s", "quit"]).output();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `nginx -t` with /etc/nginx/nginx.conf; panics with its output unless it passes clean.
fn system_nginx_test() {
    let out = run(Command::new(DEBIAN_NGINX).arg("-t"));
    assert!(!out.contains("[emerg]") && !out.contains("[warn]"), "{out}");
}

/// Starts Debian's nginx as its service would (daemon, /etc/nginx/nginx.conf), or reloads it.
fn start_or_reload_system_nginx(port: u16) {
    if system_nginx_pid().is_some() {
        run(Command::new(DEBIAN_NGINX).args(["-s", "reload"]));
    } else {
        run(&mut Command::new(DEBIAN_NGINX));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "Debian's nginx does not listen on {port}:\n{}",
            std::fs::read_to_string("/var/log/nginx/error.log").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces the line of `path` that starts (after its indent) with `prefix`; the file is
/// the operator's to edit, and these edits must survive upgrades.
fn edit_line(path: &str, prefix: &str, line: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut found = false;
    let edited: String = text
        .lines()
        .map(|l| {
            if !found && l.trim_start().starts_with(prefix) {
                found = true;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(found, "{path} has no line starting with {prefix:?}");
    std::fs::write(path, edited).unwrap_or_else(|e| panic!("write {path}: {e}"));
}

/// Publishes `text` on `ch` through the nginx at `addr` (POST /pub/<ch>); the answer.
async fn publish_via(addr: std::net::SocketAddr, ch: &str, text: &str) -> serde_json::Value {
    let token = chatup_tests::token::token("alice");
    let request = format!(
        "POST /pub/{ch} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let resp = chatup_tests::http::request(addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(resp.status, 200, "POST /pub/{ch}: {}", resp.text());
    resp.json()
}

/// Subscribes, publishes and checks the message arrives, then resumes from it.
async fn round_trip(addr: std::net::SocketAddr, ch: &str, text: &str) {
    let mut sub = Subscriber::connect_to(addr, &format!("/sub/{ch}")).await;
    // The worker's subscription to the channel travels to the sidecar meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ack = publish_via(addr, ch, text).await;
    let got = sub.recv().await;
    assert_eq!(got["msg"], text, "{got}");
    assert_eq!(got["id"], ack["id"], "{got} {ack}");
    let since = sub.since_of(ch).expect("a position");
    drop(sub);
    let later = publish_via(addr, ch, &format!("{text}, again")).await;
    let mut again = Subscriber::connect_to(addr, &format!("/sub/{ch}?since={since}")).await;
    let got = again.recv().await;
    assert_eq!(got["id"], later["id"], "resumed after {since}: {got}");
    again.expect_no_message(QUIET).await;
}

fn package_version(package: &str) -> String {
    run(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
}

/// The README's "Deploying on Debian/Ubuntu" commands, run as written (but for systemd,
/// done as the unit would, and the editor, replaced by the edits an operator makes), then
/// an upgrade and a removal of both packages.
#[tokio::test]
async fn debian_packages_install_serve_upgrade_and_remove() {
    let test = "debian_packages_install_serve_upgrade_and_remove";
    if !have_apt(test) {
        return;
    }
    let _one = SYSTEM.lock().await;
    install_debian_nginx();
    let root = repo_root();
    let packages = build_dir().join("packages");
    let mut deployment = Deployment::new();

    // The upgrade, built first: the packages of revision 2, kept aside.
    let _ = std::fs::remove_dir_all(&packages);
    run(Command::new(root.join("scripts/package")).env("CHATUP_DEB_REVISION", "2"));
    let upgrade = tempfile::tempdir().expect("temp folder");
    for entry in std::fs::read_dir(&packages).expect("build/packages") {
        let path = entry.expect("entry").path();
        std::fs::rename(&path, upgrade.path().join(path.file_name().expect("name")))
            .expect("move the upgrade aside");
    }

    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("## Deploying on Debian/Ubuntu")
        .nth(1)
        .expect("README has \"Deploying on Debian/Ubuntu\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block in that section");
    let nginx_port = chatup_tests::free_port();
    let sidecar_port = chatup_tests::free_port();
    let mut steps = 0;
    for line in block.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        steps += 1;
        let line = line.replace("sudo ", "");
        match line.as_str() {
            "editor /etc/chatup/chatup.toml" => edit_line(
                SIDECAR_TOML,
                "listen =",
                &format!("listen = \"127.0.0.1:{sidecar_port}\""),
            ),
            "editor /etc/nginx/sites-available/chatup" => {
                edit_line(
                    SITE,
                    "listen 80",
                    &format!("listen 127.0.0.1:{nginx_port};"),
                );
                edit_line(
                    SITE,
                    "server 127.0.0.1:",
                    &format!("server 127.0.0.1:{sidecar_port};"),
                );
            }
            "systemctl enable --now chatup-sidecar" => deployment.start_sidecar(),
            "nginx -t && systemctl reload nginx" => {
                system_nginx_test();
                start_or_reload_system_nginx(nginx_port);
            }
            _ => {
                // Everything else runs as written: from the repository, and the key files
                // from the example keys' folder.
                let dir = if line.starts_with("install ") {
                    chatup_tests::env::example_keys()
                } else {
                    root.clone()
                };
                run(Command::new("sh")
                    .args(["-ec", &line])
                    .current_dir(dir)
                    .env("DEBIAN_FRONTEND", "noninteractive"));
            }
        }
    }
    assert!(
        steps >= 8,
        "the README block has {steps} commands:\n{block}"
    );

    // Installed as the README says: Debian's nginx with the packaged module, its workers as
    // www-data reaching the sidecar's socket through the chatup group.
    assert_eq!(package_version(SIDECAR_DEB), "0.1.0-1");
    assert!(Path::new(MODULE_LINK).is_symlink(), "{MODULE_LINK} enabled");
    let groups = run(Command::new("id").args(["-nG", "www-data"]));
    assert!(
        groups.split_whitespace().any(|g| g == "chatup"),
        "www-data in chatup: {groups}"
    );
    assert!(
        Path::new(INSTALLED_MODULE).exists(),
        "the samples' module path"
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    round_trip(addr, "debpkg", "hello from the package").await;

    // The packaged TLS site, made for this nginx's version, passes its `nginx -t` (with a
    // certificate and ports filled in).
    let tls_site = std::fs::read_to_string("/etc/nginx/sites-available/chatup-tls")
        .expect("the package brings the TLS site");
    let conf = format!(
        "include /etc/nginx/modules-enabled/*.conf;\nevents {{ }}\nhttp {{\n{}\n}}\n",
        tls_site.replace("include snippets/", "include /etc/nginx/snippets/")
    );
    let (ok, out) = crate::config::nginx_t_filled_for(Path::new(DEBIAN_NGINX), None, &conf);
    assert!(ok && !out.contains("[warn]"), "the chatup-tls site:\n{out}");

    // Upgrade: the operator's edits stay, and it still serves (after the restart and reload
    // that systemd and the nginx-reload trigger would make).
    let debs: Vec<String> = std::fs::read_dir(upgrade.path())
        .expect("upgrade folder")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    assert_eq!(debs.len(), 2, "{debs:?}");
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&debs)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(package_version(SIDECAR_DEB), "0.1.0-2");
    assert_eq!(package_version(MODULE_DEB), "0.1.0-2");
    let toml = std::fs::read_to_string(SIDECAR_TOML).expect("chatup.toml");
    assert!(
        toml.contains(&format!("127.0.0.1:{sidecar_port}")),
        "edit kept: {toml}"
    );
    let site = std::fs::read_to_string(SITE).expect("site");
    assert!(
        site.contains(&format!("listen 127.0.0.1:{nginx_port};")),
        "edit kept: {site}"
    );
    // (nginx is started afresh: after a reload the old workers close their viewers with
    // 1001 while they linger, which the round trip would meet.)
    deployment.stop_sidecar();
    deployment.start_sidecar();
    system_nginx_test();
    stop_system_nginx();
    start_or_reload_system_nginx(nginx_port);
    round_trip(addr, "debpkg2", "hello after the upgrade").await;

    // Removal keeps the operator's configuration and sets the module's link aside.
    deployment.stop_sidecar();
    stop_system_nginx();
    run(Command::new("apt-get")
        .args(["remove", "-y", "-qq", SIDECAR_DEB, MODULE_DEB])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(!Path::new("/usr/bin/chatup-sidecar").exists());
    assert!(!Path::new(INSTALLED_MODULE).exists());
    let toml_after = std::fs::read_to_string(SIDECAR_TOML).expect("chatup.toml kept");
    assert_eq!(toml_after, toml, "removal keeps chatup.toml as edited");
    assert_eq!(std::fs::read_to_string(SITE).expect("site kept"), site);
    assert!(
        !Path::new(MODULE_LINK).exists(),
        "the module is no longer loaded"
    );
    assert!(Path::new(&format!("{MODULE_LINK}.removed")).is_symlink());

    // Installing again brings the module's link back, and the configuration still passes.
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&debs)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(Path::new(MODULE_LINK).is_symlink(), "{MODULE_LINK} back");
    system_nginx_test();
}

/// scripts/module-for-nginx with an nginx it cannot build for: each failure says why and
/// what to do, and exits non-zero.
#[test]
fn module_for_nginx_explains_what_it_cannot_match() {
    let script = repo_root().join("scripts/module-for-nginx");
    let fails = |cmd: &mut Command| {
        let out = cmd.output().expect("run scripts/module-for-nginx");
        assert!(!out.status.success(), "{cmd:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let err = fails(Command::new(&script).arg("/nonexistent/nginx"));
    assert!(err.contains("no nginx at /nonexistent/nginx"), "{err}");

    // An nginx of a version whose source is nowhere here (not packaged, not vendored).
    let dir = tempfile::tempdir().expect("temp folder");
    let fake = dir.path().join("nginx");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'nginx version: nginx/1.19.0' >&2\n\
         echo \"configure arguments: --with-compat --prefix=/opt/nginx --with-http_xslt_module=dynamic\" >&2\n",
    )
    .expect("write a fake nginx");
    run(Command::new("chmod").arg("+x").arg(&fake));
    let err = fails(Command::new(&script).arg(&fake));
    assert!(
        err.contains("cannot find the source of nginx 1.19.0") && err.contains("NGINX_SOURCE_DIR"),
        "{err}"
    );
    assert!(
        err.contains("left out: --with-http_xslt_module=dynamic"),
        "says which arguments it drops: {err}"
    );

    // A source tree of another version.
    let err = fails(
        Command::new(&script)
            .arg(&fake)
            .env("NGINX_SOURCE_DIR", dir.path()),
    );
    assert!(err.contains("is not an nginx source tree"), "{err}");
    std::fs::create_dir_all(dir.path().join("src/core")).expect("mkdir");
    std::fs::write(
        dir.path().join("src/core/nginx.h"),
        "#define NGINX_VERSION      \"1.20.2\"\n",
    )
    .expect("write nginx.h");
    let err = fails(
        Command::new(&script)
            .arg(&fake)
            .env("NGINX_SOURCE_DIR", dir.path()),
    );
    assert!(err.contains("is nginx 1.20.2, not 1.19.0"), "{err}");
}
