//! `nginx -t` refuses bad module configuration with a clear message.

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

/// The locations nginx-conf/ ships for including.
const LOCATIONS: [&str; 3] = [
    "chatup-locations.conf",
    "chatup-publish-locations.conf",
    "chatup-demo-locations.conf",
];

/// `nginx -t` on `conf` (a whole nginx.conf) with the packaged locations copied next to it,
/// as operators are told to, and only this machine's paths changed: the module, the relay
/// socket, the port; TLS certificate lines dropped. Returns (success, output).
fn nginx_t_with_locations(conf: &str) -> (bool, String) {
    let conf_dir = chatup_tests::env::nginx_conf_dir();
    let dir = tempfile::tempdir().expect("create a temp folder");
    // The default access and error logs, relative to the prefix.
    std::fs::create_dir(dir.path().join("logs")).expect("create logs/");
    for name in LOCATIONS {
        std::fs::copy(conf_dir.join(name), dir.path().join(name)).expect("copy locations");
    }
    let port = chatup_tests::free_port();
    let text: String = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with("ssl_certificate"))
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("load_module ") {
                format!(
                    "load_module {};",
                    chatup_tests::env::module_path().display()
                )
            } else if t.starts_with("chatup_relay_socket ") {
                format!("chatup_relay_socket {}/relay.sock;", dir.path().display())
            } else if t.starts_with("listen ") {
                format!("listen 127.0.0.1:{port};")
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, text).expect("write nginx.conf");
    chatup_tests::env::nginx_test(&path)
}

/// nginx-conf/chatup.conf (a chat host) and nginx-conf/multi-host/dispatcher.conf (nginx in
/// front of the dispatchers) include the packaged locations and pass `nginx -t`.
#[test]
fn the_packaged_configurations_pass() {
    let conf_dir = chatup_tests::env::nginx_conf_dir();
    for (conf, includes) in [
        ("chatup.conf", &LOCATIONS[..2]),
        ("multi-host/dispatcher.conf", &LOCATIONS[..1]),
    ] {
        let text = std::fs::read_to_string(conf_dir.join(conf)).expect("read the conf");
        for name in includes {
            assert!(
                text.contains(&format!("include {name};")),
                "{conf} does not include {name}"
            );
        }
        let (ok, out) = nginx_t_with_locations(&text);
        assert!(ok, "nginx -t failed on {conf}:\n{out}");
        assert!(
            !out.contains("[emerg]") && !out.contains("[warn]"),
            "{conf}: {out}"
        );
    }
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
    let (ok, out) = nginx_t_with_locations(&conf);
    assert!(
        ok,
        "nginx -t failed on the README's configuration:\n{conf}\n{out}"
    );
}
