//! chatup-bench keeps working: short runs of each scenario against a stack it starts
//! itself, the report it writes, and its refusals of bad input.

use chatup_tests::env::build_dir;
use serde_json::{json, Value};
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(build_dir().join("chatup-bench"))
        .args(args)
        .output()
        .expect("run build/chatup-bench (scripts/setup builds it)")
}

/// Runs a scenario that must succeed and returns its one-line JSON result.
fn result_of(args: &[&str]) -> Value {
    let mut results = results_of(args);
    assert_eq!(results.len(), 1, "one JSON line expected, got {results:?}");
    results.remove(0)
}

/// Runs a scenario that must succeed and returns its JSON result lines.
fn results_of(args: &[&str]) -> Vec<Value> {
    let out = bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chatup-bench {args:?} failed ({}):\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}")))
        .collect()
}

#[test]
fn fanout_delivers_everything_to_every_subscriber() {
    let r = result_of(&[
        "fanout",
        "--workers",
        "2",
        "--subscribers",
        "300",
        "--rate",
        "20",
        "--duration",
        "2",
        "--processes",
        "2",
    ]);
    assert_eq!(r["scenario"], "fanout");
    assert_eq!(r["connected"], 300, "{r}");
    let published = r["published"].as_u64().expect("published");
    assert!(
        published >= 30,
        "20 msg/s for 2 s published {published}: {r}"
    );
    assert_eq!(r["expected_deliveries"], published * 300, "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().expect("p50") > 0.0, "{r}");
    assert_eq!(r["latency_ms"]["count"], r["deliveries"], "{r}");
    assert!(
        r["nginx_cpu_us_per_delivery"].as_f64().expect("nginx CPU") > 0.0,
        "{r}"
    );
    assert!(r["command"].as_str().unwrap().contains("fanout"), "{r}");
}

#[test]
fn websocket_sse_and_poll_viewers_side_by_side() {
    let runs = results_of(&[
        "fanout",
        "--workers",
        "1",
        "--subscribers",
        "100",
        "--rate",
        "20",
        "--duration",
        "1",
        "--transport",
        "ws,sse,poll",
    ]);
    let transports: Vec<&str> = runs
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports, ["ws", "sse", "poll"]);
    for r in &runs {
        assert_eq!(r["connected"], 100, "{r}");
        let published = r["published"].as_u64().expect("published");
        assert!(
            published >= 10,
            "20 msg/s for 1 s published {published}: {r}"
        );
        assert_eq!(r["deliveries"], published * 100, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["duplicates"], 0, "{r}");
        assert_eq!(r["gaps"], 0, "{r}");
        assert_eq!(r["latency_ms"]["count"], r["deliveries"], "{r}");
        assert!(
            r["nginx_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    // A poller's first poll (no since) is answered at once, maybe empty, with where the
    // channel stands; every later answer carries at least one message. So at least one poll
    // per poller, and at most one per delivery beyond those.
    let polls = runs[2]["polls_answered"].as_u64().expect("polls answered");
    let deliveries = runs[2]["deliveries"].as_u64().unwrap();
    assert!((100..=deliveries + 100).contains(&polls), "{}", runs[2]);
    assert!(runs[0].get("polls_answered").is_none(), "{}", runs[0]);

    let idle = result_of(&[
        "idle",
        "--workers",
        "1",
        "--subscribers",
        "300",
        "--hold",
        "0.5",
        "--transport",
        "sse",
        "--quiet-channels",
        "2",
    ]);
    assert_eq!(idle["transport"], "sse", "{idle}");
    assert_eq!(idle["quiet_channels"], 2, "{idle}");
    assert_eq!(idle["connected"], 300, "{idle}");
    assert_eq!(idle["closed_while_idle"], 0, "{idle}");
    let after = idle["worker_rss_after_kb"].as_u64().unwrap();
    let before = idle["worker_rss_before_kb"].as_u64().unwrap();
    assert!(after > before, "300 SSE viewers cost no memory? {idle}");
}

#[test]
fn fanout_and_publish_through_redis_on_two_hosts() {
    let r = result_of(&[
        "fanout",
        "--broker",
        "redis",
        "--hosts",
        "2",
        "--workers",
        "1",
        "--subscribers",
        "200",
        "--rate",
        "50",
        "--duration",
        "2",
    ]);
    assert_eq!(r["server"]["broker"], "redis", "{r}");
    assert_eq!(r["server"]["hosts"], 2, "{r}");
    assert_eq!(r["connected"], 200, "{r}");
    assert!(r["published"].as_u64().expect("published") >= 50, "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    let by_host = r["latency_ms_by_host"].as_array().expect("per host");
    assert_eq!(by_host.len(), 2, "{r}");
    assert_eq!(
        by_host[0]["count"], by_host[1]["count"],
        "subscribers are split evenly, so each host delivers half: {r}"
    );
    for figure in [
        "redis_cpu_us_per_message",
        "sidecar_cpu_us_per_message",
        "nginx_cpu_us_per_delivery",
    ] {
        assert!(r[figure].as_f64().unwrap_or(0.0) > 0.0, "{figure}: {r}");
    }

    let r = result_of(&[
        "publish",
        "--broker",
        "redis",
        "--hosts",
        "2",
        "--workers",
        "1",
        "--publishers",
        "4",
        "--window",
        "4",
        "--duration",
        "1",
    ]);
    assert!(r["acked"].as_u64().expect("acked") > 0, "{r}");
    assert_eq!(r["unacked"], 0, "{r}");
    assert_eq!(r["id_gaps"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["server"]["hosts"], 2, "{r}");
}

#[test]
fn rooms_idle_publish_and_floor_report_their_figures() {
    let rooms = result_of(&[
        "rooms",
        "--rooms",
        "5",
        "--per-room",
        "20",
        "--rate",
        "10",
        "--duration",
        "1",
        "--publishers",
        "2",
    ]);
    assert_eq!(rooms["connected"], 100, "{rooms}");
    assert_eq!(rooms["lost"], 0, "{rooms}");
    assert_eq!(rooms["deliveries"], rooms["expected_deliveries"], "{rooms}");
    assert_eq!(
        rooms["deliveries"],
        rooms["published"].as_u64().unwrap() * 20,
        "{rooms}"
    );

    let idle = result_of(&[
        "idle",
        "--workers",
        "2",
        "--subscribers",
        "400",
        "--hold",
        "0.5",
    ]);
    assert_eq!(idle["connected"], 400, "{idle}");
    assert_eq!(idle["workers"].as_array().map(Vec::len), Some(2), "{idle}");
    let after = idle["worker_rss_after_kb"].as_u64().unwrap();
    let before = idle["worker_rss_before_kb"].as_u64().unwrap();
    assert!(after > before, "400 subscribers cost no memory? {idle}");

    let publish = result_of(&[
        "publish",
        "--publishers",
        "2",
        "--window",
        "4",
        "--duration",
        "1",
    ]);
    assert!(publish["acked"].as_u64().unwrap() > 0, "{publish}");
    assert_eq!(publish["unacked"], 0, "{publish}");
    assert_eq!(publish["id_gaps"], 0, "{publish}");

    let floor = result_of(&[
        "floor",
        "--subscribers",
        "200",
        "--rate",
        "10",
        "--duration",
        "1",
    ]);
    assert_eq!(floor["deliveries"], floor["expected_deliveries"], "{floor}");
    assert_eq!(floor["lost"], 0, "{floor}");
    assert!(
        floor["server_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{floor}"
    );

    // The report turns these lines into a results section with the targets judged.
    let dir = tempfile::tempdir().unwrap();
    let lines: String = [&rooms, &idle, &publish, &floor]
        .iter()
        .map(|v| format!("{v}\n"))
        .collect();
    let results = dir.path().join("results.jsonl");
    std::fs::write(&results, lines).unwrap();
    let md = dir.path().join("BENCHMARKS.md");
    std::fs::write(&md, "# Benchmarks\n\nhand-written method\n").unwrap();
    let out = bench(&[
        "report",
        results.to_str().unwrap(),
        "--into",
        md.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.starts_with("# Benchmarks\n\nhand-written method\n"),
        "{text}"
    );
    assert!(
        text.contains("| publish: acked messages/s through one sidecar | ≥ 20,000 msg/s |"),
        "{text}"
    );
    assert!(
        text.contains("| zero loss in every scenario | 0 | 0.00 | yes |"),
        "{text}"
    );
    assert!(text.contains("#### floor"), "{text}");
}

/// With --private every channel is private and every viewer connects with a subscribe
/// token the sidecar verifies: all connect, and the result says so.
#[test]
fn private_viewers_connect_with_a_subscribe_token() {
    let runs = results_of(&[
        "idle",
        "--workers",
        "1",
        "--subscribers",
        "300",
        "--hold",
        "0.2",
        "--transport",
        "ws,poll",
        "--private",
    ]);
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run["private"], true, "{run}");
        assert_eq!(run["server"]["private_channels"], json!(["*"]), "{run}");
        assert_eq!(run["connected"], 300, "{run}");
        assert_eq!(run["failed"], 0, "{run}");
        assert!(run["sidecar_cpu_us_per_connect"].is_number(), "{run}");
    }
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let cases: [(&[&str], &str); 15] = [
        (
            &["fanout", "--transport", "smoke"],
            "invalid value 'smoke' for '--transport",
        ),
        (
            &["idle", "--transport", "ws,"],
            "[possible values: ws, sse, poll]",
        ),
        // Publishers and the floor have no viewers to choose a transport for.
        (
            &["publish", "--transport", "sse"],
            "unexpected argument '--transport'",
        ),
        // More channels than the module's chatup_max_channels (16): its refusal is shown.
        (
            &[
                "fanout",
                "--subscribers",
                "2",
                "--duration",
                "1",
                "--transport",
                "sse",
                "--quiet-channels",
                "16",
            ],
            "no subscriber could connect: the server answered \"HTTP/1.1 400",
        ),
        (&["fanout", "--duration", "0"], "is not a number of seconds"),
        (
            &["fanout", "--url", "https://example.com"],
            "use http://host:port",
        ),
        (
            &["idle", "--build-dir", "/nonexistent"],
            "does not hold nginx",
        ),
        (&["fanout", "--token", "x"], "--url"),
        (&["idle", "--subscribe-token", "x"], "--url"),
        (
            &["idle", "--private", "--url", "http://127.0.0.1:1"],
            "cannot be used with",
        ),
        (&["fanout", "--hosts", "2"], "needs --broker redis"),
        (
            &["fanout", "--redis-url", "redis://127.0.0.1:1"],
            "--redis-url needs --broker redis",
        ),
        // A restarted sidecar's memory broker would start every channel over.
        (
            &["fanout", "--restart-sidecar-at", "1"],
            "--restart-sidecar-at needs --broker redis",
        ),
        (
            &[
                "fanout",
                "--restart-sidecar-at",
                "1",
                "--url",
                "http://127.0.0.1:1",
            ],
            "cannot be used with '--url",
        ),
        (
            &["fanout", "--restart-sidecar-at", "1", "--reload-at", "2"],
            "cannot be used with '--reload-at",
        ),
    ];
    for (args, reason) in cases {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(reason),
            "{args:?}: expected {reason:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_host_that_limits_publishes_per_user_is_reported_up_front() {
    let key = chatup_tests::repo_root().join("nginx-conf/example-keys/jwt-private.pem");
    let run = |plugins: &[&str]| {
        let host =
            chatup_tests::Chatup::start_with(chatup_tests::Options::default().plugins(plugins));
        let url = format!("http://{}", host.nginx_addr());
        let out = bench(&[
            "publish",
            "--url",
            &url,
            "--key",
            key.to_str().expect("a UTF-8 path"),
            "--publishers",
            "1",
            "--window",
            "1",
            "--duration",
            "1",
        ]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warning = "limits publishes per user";
    // The sidecar's default chain, with its 10 messages per 10 s.
    let limited = run(&["ban", "rate_limit", "blacklist"]);
    assert!(limited.contains(warning), "{limited}");
    assert!(limited.contains("plugins.chain"), "{limited}");
    let unlimited = run(&["ban"]);
    assert!(!unlimited.contains(warning), "{unlimited}");
}

/// The reconnect storm: nginx reloaded under publishing, every viewer closed with 1001
/// comes back and resumes with `since`, nothing lost or twice.
#[test]
fn a_reload_storm_brings_every_viewer_back_without_loss() {
    let r = result_of(&[
        "fanout",
        "--workers",
        "2",
        "--subscribers",
        "300",
        "--rate",
        "20",
        "--duration",
        "4",
        "--reload-at",
        "1.5",
        "--reconnect-ms",
        "300",
    ]);
    assert_eq!(r["closed"]["1001"], 300, "every viewer moved: {r}");
    assert_eq!(r["storm"]["reconnected"], 300, "{r}");
    assert!(r["storm"]["all_back_s"].as_f64().is_some(), "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["gaps"], 0, "{r}");
    assert!(
        r["worker_rss_per_subscriber_bytes"].as_f64().is_some(),
        "{r}"
    );
}

/// The sidecar restarted under publishing: the viewers stay connected to nginx, each
/// worker's relay subscribes again once per channel (not once per viewer), the publisher
/// reconnects, and every acked message reaches every viewer exactly once.
#[test]
fn a_sidecar_restart_keeps_every_viewer_without_loss() {
    let r = result_of(&[
        "fanout",
        "--broker",
        "redis",
        "--workers",
        "2",
        "--subscribers",
        "300",
        "--rate",
        "20",
        "--duration",
        "4",
        "--restart-sidecar-at",
        "1.5",
    ]);
    let restart = &r["restart"];
    assert_eq!(r["connected"], 300, "{r}");
    assert_eq!(r["closed"], json!({}), "no viewer was closed: {r}");
    assert_eq!(restart["viewers_closed"], 0, "{r}");
    // Publishing went on after the restart: most of 20/s for 4 s was acked.
    let acked = r["acked"].as_u64().expect("acked");
    assert!(acked >= 60, "acked {acked}: {r}");
    assert!(
        r["publisher_reconnects"].as_u64().expect("reconnects") >= 1,
        "{r}"
    );
    // Every acked message to every viewer, once.
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["gaps"], 0, "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert!(r["deliveries"].as_u64().unwrap() >= acked * 300, "{r}");
    // The new sidecar heard from both workers, one subscription each to the one room.
    assert_eq!(restart["relay_workers"], 2, "{r}");
    assert_eq!(
        restart["relay_subscribes"], 2,
        "one per channel per worker: {r}"
    );
    assert_eq!(restart["relay_subscribes_per_worker_channel"], 1.0, "{r}");
    let ready = restart["ready_s"].as_f64().expect("ready_s");
    let recovery = restart["recovery_s"].as_f64().expect("recovery_s");
    let first_sent = restart["first_fresh_sent_s"].as_f64().expect("first sent");
    assert!(ready > 0.0 && ready < recovery, "{r}");
    // Ordered, not bounded: how long is the benchmark's to say, not a test's.
    assert!(first_sent < recovery, "{r}");
    assert!(
        restart["sidecar_cpu_ms_until_recovered"]
            .as_f64()
            .expect("CPU")
            > 0.0,
        "{r}"
    );
    assert!(
        r.get("sidecar_cpu_us_per_message").is_none(),
        "the old sidecar's meter stops at the restart: {r}"
    );
}

/// Publishing over HTTP: POST /pub/<channel> on kept-alive connections, through more
/// requests than nginx serves on one connection (keepalive_requests, 1000).
#[test]
fn publish_over_http_acks_every_request() {
    let r = result_of(&[
        "publish",
        "--via",
        "http",
        "--publishers",
        "2",
        "--window",
        "4",
        "--duration",
        "2",
    ]);
    assert_eq!(r["via"], "http", "{r}");
    let acked = r["acked"].as_u64().unwrap();
    assert!(acked > 2000, "more than one connection's worth each: {r}");
    assert_eq!(r["errors"], json!({}), "{r}");
    assert_eq!(r["unacked"], 0, "{r}");
    assert_eq!(r["id_gaps"], 0, "{r}");
    assert!(
        r["sidecar_cpu_us_per_message"].as_f64().unwrap() > 0.0,
        "{r}"
    );
}
