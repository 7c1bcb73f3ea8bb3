//! `nginx -t` refuses bad module configuration with a clear message, and passes every sample
//! of nginx-conf/ with only its placeholders filled.

use chatup_tests::{nginx_config_test, nginx_config_test_with_relay_socket};

#[test]
fn a_complete_configuration_passes() {
    let (ok, out) = nginx_config_test(
        "chatup_cache_messages 100000;\nchatup_cache_bytes 4m;\nchatup_ping_interval 15s;\nchatup_max_channels 4;\nchatup_max_unsent 64k;",
        "chatup_ping_interval off;\nlocation /sub/ {\n chatup_subscribe;\n chatup_max_unsent 2m;\n chatup_max_channels 32;\n chatup_ping_interval 5s;\n}",
    );
    assert!(ok, "nginx -t failed:\n{out}");
    let (ok, out) = nginx_config_test(
        "chatup_cache_messages 0;",
        "location /sub/ { chatup_subscribe; }",
    );
    assert!(ok, "chatup_cache_messages 0 is allowed:\n{out}");
}

#[test]
fn bad_directive_values_are_refused() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "cache -1",
            "chatup_cache_messages -1;",
            "",
            "chatup_cache_messages",
        ),
        (
            "cache too big",
            "chatup_cache_messages 100001;",
            "",
            "chatup_cache_messages",
        ),
        (
            "cache not a number",
            "chatup_cache_messages lots;",
            "",
            "chatup_cache_messages",
        ),
        (
            "cache bytes 0",
            "chatup_cache_bytes 0;",
            "",
            "chatup_cache_bytes",
        ),
        (
            "cache bytes word",
            "chatup_cache_bytes plenty;",
            "",
            "chatup_cache_bytes",
        ),
        (
            "ping interval word",
            "chatup_ping_interval sometimes;",
            "",
            "chatup_ping_interval",
        ),
        (
            "max unsent 0",
            "chatup_max_unsent 0;",
            "",
            "chatup_max_unsent",
        ),
        (
            "max unsent word",
            "chatup_max_unsent big;",
            "",
            "chatup_max_unsent",
        ),
        (
            "max channels word",
            "chatup_max_channels many;",
            "",
            "chatup_max_channels",
        ),
        (
            "max channels -1",
            "chatup_max_channels -1;",
            "",
            "chatup_max_channels",
        ),
        (
            "subscribe takes no argument",
            "",
            "location /sub/ { chatup_subscribe now; }",
            "chatup_subscribe",
        ),
        (
            "subscribe in http",
            "chatup_subscribe;",
            "",
            "chatup_subscribe",
        ),
        (
            "publish takes no argument",
            "",
            "location /pub/ { chatup_publish now; }",
            "chatup_publish",
        ),
        (
            "publish in an exact location",
            "",
            "location = /pub { chatup_publish; }",
            "\"chatup_publish\" needs a prefix location such as \"location /pub/ { chatup_publish; }\"",
        ),
        (
            "publish beside subscribe",
            "",
            "location /x/ { chatup_subscribe; chatup_publish; }",
            "\"chatup_publish\" cannot stand in a location that has \"chatup_subscribe\"",
        ),
        (
            "publish with proxy_pass",
            "",
            "location /pub/ { chatup_publish; proxy_pass http://127.0.0.1:9; }",
            "\"chatup_publish\" cannot share location \"/pub/\" with another content handler",
        ),
        (
            "relay socket in server",
            "",
            "chatup_relay_socket /tmp/x.sock;",
            "chatup_relay_socket",
        ),
        (
            "cache in a location",
            "",
            "location /sub/ { chatup_subscribe; chatup_cache_messages 5; }",
            "chatup_cache_messages",
        ),
        (
            "relay socket twice",
            "chatup_relay_socket /tmp/other.sock;",
            "",
            "chatup_relay_socket",
        ),
    ];
    let mut failures = Vec::new();
    for (what, http, server, needle) in cases {
        let (ok, out) = nginx_config_test(http, server);
        if ok {
            failures.push(format!("{what}: nginx -t passed\n{out}"));
        } else if !out.contains(needle) {
            failures.push(format!("{what}: the error does not name {needle}:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// nginx runs one content handler per location: `proxy_pass` would silently take the
/// viewers' requests whichever order the two directives stand in.
#[test]
fn subscribe_with_another_content_handler_is_refused() {
    let cases = [
        "location /sub/ {\n chatup_subscribe;\n proxy_pass http://127.0.0.1:9;\n}",
        "location /sub/ {\n proxy_pass http://127.0.0.1:9;\n chatup_subscribe;\n}",
        "location /sub/ {\n chatup_subscribe;\n fastcgi_pass 127.0.0.1:9;\n}",
        "location /sub/ {\n location /sub/x/ { proxy_pass http://127.0.0.1:9; }\n chatup_subscribe;\n proxy_pass http://127.0.0.1:9;\n}",
    ];
    let mut failures = Vec::new();
    for server in cases {
        let (ok, out) = nginx_config_test("", server);
        if ok {
            failures.push(format!("nginx -t passed:\n{server}\n{out}"));
        } else if !["[emerg]", "\"/sub/\"", "chatup_subscribe", "proxy_pass"]
            .iter()
            .all(|needle| out.contains(needle))
        {
            failures.push(format!("unclear error for\n{server}\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn subscribe_beside_proxied_locations_passes() {
    let (ok, out) = nginx_config_test(
        "",
        "location /sub/ {\n chatup_subscribe;\n location /sub/inner/ { proxy_pass http://127.0.0.1:9; }\n}\nlocation / { proxy_pass http://127.0.0.1:9; }",
    );
    assert!(ok, "nginx -t failed:\n{out}");
    assert!(!out.contains("[emerg]"), "{out}");
}

#[test]
fn relay_socket_in_a_missing_directory_is_warned_of() {
    let subscribe = "location /sub/ { chatup_subscribe; }";
    let (ok, out) = nginx_config_test_with_relay_socket("missing/relay.sock", "", subscribe);
    assert!(ok, "a missing directory is a warning, not an error:\n{out}");
    let warning = out
        .lines()
        .find(|l| l.contains("[warn]") && l.contains("chatup_relay_socket"))
        .unwrap_or_else(|| panic!("no warning:\n{out}"));
    assert!(
        warning.contains("/missing\" does not exist") && warning.contains("retrying"),
        "{warning}"
    );

    // The socket itself need not exist yet: the sidecar creates it.
    let (ok, out) = nginx_config_test_with_relay_socket("relay.sock", "", subscribe);
    assert!(ok, "{out}");
    assert!(
        !out.contains("[warn]"),
        "an existing directory is warned of:\n{out}"
    );
}

/// Where the packaged samples load the module from: what the Debian module package installs
/// (Debian's nginx modules-path).
const MODULE_PATH: &str = "/usr/lib/nginx/modules/ngx_http_chatup_module.so";

/// Include-only files that no sample includes, and the sample in whose server they are
/// checked: scripts/run and the tests include the demo tokens beside chatup.conf's locations.
const INCLUDED_ELSEWHERE: [(&str, &str); 1] = [("chatup-demo-locations.conf", "chatup.conf")];

/// A `.conf` file of nginx-conf/, by what it is.
enum Sample {
    /// A whole nginx.conf (an `events` and an `http` block at the top level).
    Full { path: String, text: String },
    /// Locations for a server block to include.
    Included { name: String, text: String },
}

/// Every file under nginx-conf/ (recursively), relative to it, sorted.
fn nginx_conf_files() -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read nginx-conf/") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).expect("under nginx-conf/");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let root = chatup_tests::env::nginx_conf_dir();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

/// The `.conf` files of nginx-conf/, each known as a whole configuration or an include-only
/// one; panics on a `.conf` this test does not know how to check.
fn samples() -> Vec<Sample> {
    let root = chatup_tests::env::nginx_conf_dir();
    let mut samples = Vec::new();
    for path in nginx_conf_files()
        .into_iter()
        .filter(|p| p.ends_with(".conf"))
    {
        let text = std::fs::read_to_string(root.join(&path)).expect("read a sample");
        let top = |block: &str| text.lines().any(|l| l.starts_with(&format!("{block} {{")));
        match (top("events"), top("http")) {
            (true, true) => samples.push(Sample::Full { path, text }),
            (false, false) if !text.lines().any(|l| l.starts_with("server {")) => {
                let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
                samples.push(Sample::Included { name, text });
            }
            _ => panic!(
                "nginx-conf/{path}: neither a whole nginx.conf (top-level events and http \
                 blocks) nor locations for a server to include: teach config.rs to check it"
            ),
        }
    }
    samples
}

/// The files `text` includes (`include <name>;`).
fn includes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("include "))
        .filter_map(|rest| rest.split(';').next())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `listen <address> <parameters>;` with the address on loopback and its port replaced
/// (the same port of the sample, e.g. 443 for IPv4 and IPv6, gets the same free port).
fn fill_listen(
    indent: &str,
    rest: &str,
    ports: &mut std::collections::HashMap<String, u16>,
) -> String {
    let directive = rest.split(';').next().unwrap_or(rest);
    let mut words = directive.split_whitespace();
    let address = words.next().expect("listen has an address");
    let params: Vec<&str> = words.collect();
    let (ipv6, port) = if let Some(v6) = address.strip_prefix('[') {
        let (_, port) = v6.split_once("]:").expect("an IPv6 listen names its port");
        (true, port)
    } else if address.bytes().all(|b| b.is_ascii_digit()) {
        (false, address)
    } else {
        let (_, port) = address
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("listen {address}: no port to replace"));
        (false, port)
    };
    assert!(
        port.bytes().all(|b| b.is_ascii_digit()),
        "listen {address}: not a port this test knows how to replace"
    );
    let free = *ports
        .entry(port.to_owned())
        .or_insert_with(chatup_tests::free_port);
    let host = if ipv6 { "[::1]" } else { "127.0.0.1" };
    let params: String = params.iter().map(|p| format!(" {p}")).collect();
    format!("{indent}listen {host}:{free}{params};")
}

/// `nginx -t` on `conf` (a whole nginx.conf) with every include-only file of nginx-conf/
/// copied next to it, as operators are told to, and only its placeholders filled: the
/// module's path, the relay socket, the listen addresses (free loopback ports) and the
/// certificate (one made for the test). Returns (success, output).
fn nginx_t_filled(conf: &str) -> (bool, String) {
    let module = chatup_tests::env::module_path();
    nginx_t_filled_for(&chatup_tests::env::nginx_bin(), Some(&module), conf)
}

/// [`nginx_t_filled`] with the nginx binary `nginx`, loading `module`, or with the sample's
/// own `load_module` line when `None` (the module installed where the samples expect it).
pub(crate) fn nginx_t_filled_for(
    nginx: &std::path::Path,
    module: Option<&std::path::Path>,
    conf: &str,
) -> (bool, String) {
    let dir = tempfile::tempdir().expect("create a temp folder");
    // The default access and error logs, relative to the prefix.
    std::fs::create_dir(dir.path().join("logs")).expect("create logs/");
    for sample in samples() {
        if let Sample::Included { name, text } = sample {
            let copy = dir.path().join(&name);
            assert!(!copy.exists(), "two include-only files are named {name}");
            std::fs::write(copy, text).expect("copy locations");
        }
    }
    let (cert, key) = chatup_tests::env::self_signed_certificate(dir.path());
    let mut ports = std::collections::HashMap::new();
    let text: String = conf
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if let (true, Some(module)) = (t.starts_with("load_module "), module) {
                format!("{indent}load_module {};", module.display())
            } else if t.starts_with("chatup_relay_socket ") {
                format!(
                    "{indent}chatup_relay_socket {}/relay.sock;",
                    dir.path().display()
                )
            } else if let Some(rest) = t.strip_prefix("listen ") {
                fill_listen(indent, rest, &mut ports)
            } else if t.starts_with("ssl_certificate_key ") {
                format!("{indent}ssl_certificate_key {};", key.display())
            } else if t.starts_with("ssl_certificate ") {
                format!("{indent}ssl_certificate {};", cert.display())
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, text).expect("write nginx.conf");
    chatup_tests::env::nginx_test_using(nginx, &path)
}

/// Every `.conf` under nginx-conf/ passes `nginx -t` with only its placeholders filled,
/// without a warning: each whole configuration (chatup.conf, chatup-tls.conf,
/// multi-host/dispatcher.conf, ...), and each include-only file inside the server of one of
/// them.
#[test]
fn every_sample_configuration_passes() {
    let samples = samples();
    let full: Vec<(&str, &str)> = samples
        .iter()
        .filter_map(|s| match s {
            Sample::Full { path, text } => Some((path.as_str(), text.as_str())),
            Sample::Included { .. } => None,
        })
        .collect();
    for expected in [
        "chatup.conf",
        "chatup-tls.conf",
        "multi-host/dispatcher.conf",
    ] {
        assert!(
            full.iter().any(|(path, _)| *path == expected),
            "{expected} is not seen as a whole configuration"
        );
    }
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for (path, text) in &full {
        let (ok, out) = nginx_t_filled(text);
        if !ok || out.contains("[emerg]") || out.contains("[warn]") {
            failures.push(format!("{path}:\n{out}"));
        }
        checked.extend(includes(text));
    }
    for sample in &samples {
        let Sample::Included { name, .. } = sample else {
            continue;
        };
        if checked.contains(name) {
            continue;
        }
        // Not included by any sample: checked in the server of the one it goes with.
        let (_, host) = INCLUDED_ELSEWHERE
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| {
                panic!(
                    "no sample includes {name}: include it, or name its host in INCLUDED_ELSEWHERE"
                )
            });
        let (_, text) = full
            .iter()
            .find(|(path, _)| path == host)
            .unwrap_or_else(|| panic!("{host} is not a sample"));
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last_include = lines
            .iter()
            .rposition(|l| l.trim_start().starts_with("include "))
            .unwrap_or_else(|| panic!("{host} includes nothing to put {name} beside"));
        lines.insert(last_include + 1, format!("include {name};"));
        let (ok, out) = nginx_t_filled(&lines.join("\n"));
        if !ok || out.contains("[emerg]") || out.contains("[warn]") {
            failures.push(format!("{name} in {host}:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// The samples load the module from where the Debian module package installs it, and every
/// whole configuration that uses a chatup directive loads it.
#[test]
fn every_sample_loads_the_module_from_debians_modules_path() {
    let mut loading = Vec::new();
    for sample in samples() {
        let (Sample::Full { path, text } | Sample::Included { name: path, text }) = sample;
        let loads: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("load_module"))
            .collect();
        for line in &loads {
            assert_eq!(
                *line,
                format!("load_module {MODULE_PATH};"),
                "nginx-conf/{path}"
            );
        }
        let uses = text
            .lines()
            .any(|l| l.trim_start().starts_with("chatup_") && !l.contains("chatup_sidecar"));
        if uses && text.lines().any(|l| l.starts_with("http {")) {
            assert_eq!(
                loads.len(),
                1,
                "nginx-conf/{path} uses the module: load it once"
            );
        }
        if !loads.is_empty() {
            loading.push(path);
        }
    }
    for expected in ["chatup.conf", "chatup-tls.conf"] {
        assert!(
            loading.iter().any(|p| p == expected),
            "{expected} does not load the module: {loading:?}"
        );
    }
}

/// The single-host samples have one top-level http block, from a line `http {` to a `}` alone
/// at the first column, the last line: packaging takes its contents.
#[test]
fn the_single_host_samples_end_with_their_http_block() {
    let root = chatup_tests::env::nginx_conf_dir();
    for name in ["chatup.conf", "chatup-tls.conf"] {
        let text = std::fs::read_to_string(root.join(name)).expect("read the sample");
        let lines: Vec<&str> = text.lines().collect();
        let opens: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("http"))
            .collect();
        assert_eq!(opens.len(), 1, "{name}: one top-level http block");
        assert_eq!(lines[opens[0]], "http {", "{name}");
        let closes: Vec<usize> = (opens[0]..lines.len())
            .filter(|&i| lines[i].starts_with('}'))
            .collect();
        assert_eq!(
            closes,
            [lines.len() - 1],
            "{name}: the http block ends the file"
        );
        assert_eq!(lines[lines.len() - 1], "}", "{name}");
    }
}

/// chatup-tls.conf is chatup.conf over TLS: every directive of chatup.conf stands in it with
/// the same value.
#[test]
fn the_tls_sample_keeps_every_directive_of_chatup_conf() {
    let root = chatup_tests::env::nginx_conf_dir();
    let directives = |name: &str| -> Vec<String> {
        std::fs::read_to_string(root.join(name))
            .expect("read the sample")
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
            .filter(|l| !l.is_empty() && l != "}")
            .collect()
    };
    let tls = directives("chatup-tls.conf");
    // The listen lines are what the TLS sample changes (443 ssl, and 80 only redirects).
    let missing: Vec<String> = directives("chatup.conf")
        .into_iter()
        .filter(|d| !d.starts_with("listen ") && !tls.contains(d))
        .collect();
    assert!(
        missing.is_empty(),
        "chatup-tls.conf lacks, or changes, these lines of chatup.conf: {missing:#?}"
    );
}

/// The README's nginx.conf that includes the locations passes `nginx -t` as written (with
/// the module loaded and an events block, which it leaves out).
#[test]
fn the_readme_configuration_passes() {
    let readme = std::fs::read_to_string(chatup_tests::repo_root().join("README.md"))
        .expect("read README.md");
    let snippet = readme
        .split("```nginx\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("include chatup-locations.conf;"))
        .expect("a README nginx block including chatup-locations.conf");
    let conf = format!("load_module ngx_http_chatup_module.so;\nevents {{ }}\n{snippet}\n");
    let (ok, out) = nginx_t_filled(&conf);
    assert!(
        ok,
        "nginx -t failed on the README's configuration:\n{conf}\n{out}"
    );
}
