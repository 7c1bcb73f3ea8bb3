//! The harness parts for multi-host tests: real Redis (one server, a cluster), several chat
//! hosts on their own loopback addresses, and the dispatcher process.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use chatup_tests::redis::{info_field, Reply};
use chatup_tests::{assert_message, Chatup, Dispatcher, Options, RedisCluster, RedisServer};
use chatup_tests::{Subscriber, WAIT};

#[test]
fn redis_server_answers_and_comes_back_empty_on_the_same_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.cli(&["PING"]), "PONG");
    // No persistence: nothing survives a restart.
    assert_eq!(redis.cli(&["CONFIG", "GET", "save"]), "save\n");
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );

    assert_eq!(redis.cli(&["SET", "chatup:{room}:k", "v"]), "OK");
    assert_eq!(redis.cli(&["RPUSH", "chatup:{room}:h", "a", "b"]), "2");
    assert_eq!(redis.cli(&["GET", "chatup:{room}:k"]), "v");
    assert_eq!(
        redis.keys("chatup:*"),
        vec!["chatup:{room}:h".to_owned(), "chatup:{room}:k".to_owned()]
    );
    assert!(
        redis.command(&["NOSUCHCOMMAND"]).unwrap().is_error(),
        "an unknown command is an error reply"
    );

    // A client still connected when the server stops leaves the server's side of the
    // connection in TIME_WAIT on the port: the restart must bind it all the same.
    let mut client = TcpStream::connect(redis.addr()).expect("connect");
    client.write_all(b"PING\r\n").expect("write");
    let status = redis.stop();
    assert!(
        status.success(),
        "redis-server exits 0 on SIGTERM: {status}"
    );
    assert!(
        redis.command(&["PING"]).is_err(),
        "a stopped server does not answer"
    );
    drop(client);

    redis.start_again();
    assert_eq!(redis.port(), port, "the restart keeps the port");
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["EXISTS", "chatup:{room}:k"]), "0");
    assert_eq!(
        redis.command(&["GET", "chatup:{room}:k"]).unwrap(),
        Reply::Bulk(None)
    );
    assert!(redis.keys("*").is_empty(), "a restarted server is empty");

    // While something else holds the port, a restart keeps trying until it is free.
    redis.stop();
    let squatter = std::net::TcpListener::bind(redis.addr()).expect("take the port");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        drop(squatter);
    });
    redis.start_again();
    release.join().expect("release thread");
    assert_eq!(redis.port(), port);
    assert!(
        redis.log().contains("Address already in use"),
        "the first try met the taken port"
    );
    assert_eq!(redis.cli(&["PING"]), "PONG");

    // A crash, then the same again.
    redis.cli(&["SET", "x", "1"]);
    let pid = redis.pid().expect("running");
    redis.kill();
    assert!(!redis.running());
    redis.start_again();
    assert_ne!(redis.pid(), Some(pid), "a new process");
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["EXISTS", "x"]), "0");
}

#[test]
fn redis_server_on_another_loopback_address() {
    let redis = RedisServer::start_on("127.0.0.4");
    assert_eq!(
        redis.addr().ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))
    );
    assert!(
        redis.url().starts_with("redis://127.0.0.4:"),
        "{}",
        redis.url()
    );
    assert_eq!(redis.cli(&["PING"]), "PONG");
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], redis.port()));
    assert!(
        TcpStream::connect_timeout(&elsewhere, Duration::from_millis(300)).is_err(),
        "redis-server listens on 127.0.0.4 only"
    );
}

#[test]
fn redis_cluster_forms_with_three_masters_and_keeps_a_hash_tag_on_one_node() {
    let cluster = RedisCluster::start();
    let urls = cluster.nodes();
    assert_eq!(urls.len(), 3);
    for (i, url) in urls.iter().enumerate() {
        let node = cluster.node(i);
        assert_eq!(url, &node.url());
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert_eq!(info_field(&info, "cluster_state").as_deref(), Some("ok"));
        assert_eq!(info_field(&info, "cluster_size").as_deref(), Some("3"));
        assert_eq!(
            info_field(&info, "cluster_slots_assigned").as_deref(),
            Some("16384")
        );
        let masters = node
            .cli(&["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .count();
        assert_eq!(masters, 3, "node {url} sees 3 healthy masters");
    }

    // A hash tag puts a channel's keys in one slot, hence on one node.
    let slot = cluster.slot_of("{room}");
    for key in ["chatup:{room}:seq", "chatup:{room}:hist", "room"] {
        assert_eq!(cluster.slot_of(key), slot, "slot of {key}");
    }
    // Multi-key commands across one slot work (they fail across slots).
    assert_eq!(
        cluster.cli(&[
            "MSET",
            "chatup:{room}:seq",
            "1",
            "chatup:{room}:hist",
            "x",
            "chatup:{room}:ep",
            "7"
        ]),
        "OK"
    );
    assert!(
        cluster
            .cli(&["MSET", "chatup:{a}:x", "1", "chatup:{b}:x", "1"])
            .starts_with("CROSSSLOT"),
        "keys of different tags are refused in one command"
    );
    let home = cluster.node_index_for("{room}");
    assert_eq!(cluster.node_for_slot_of("chatup:{room}:seq"), urls[home]);
    for i in 0..cluster.len() {
        let keys = cluster.node(i).keys("chatup:{room}:*");
        if i == home {
            assert_eq!(keys.len(), 3, "node {i} holds the channel's keys: {keys:?}");
        } else {
            assert!(keys.is_empty(), "node {i} holds {keys:?}");
        }
    }
    assert_eq!(cluster.keys("chatup:*").len(), 3);

    // Keys whose slot lives elsewhere are reached through MOVED.
    let far = (0..)
        .map(|i| format!("{{ch{i}}}"))
        .find(|k| cluster.node_index_for(k) != 0)
        .expect("some slot is not on node 0");
    assert!(
        cluster
            .node(0)
            .cli(&["SET", &far, "1"])
            .starts_with("MOVED"),
        "node 0 redirects {far}"
    );
    assert_eq!(cluster.cli(&["SET", &far, "there"]), "OK");
    assert_eq!(cluster.cli(&["GET", &far]), "there");
}

#[tokio::test]
async fn two_hosts_on_their_own_addresses_with_the_memory_broker() {
    let mut a = Chatup::start_with(Options::default().address("127.0.0.2").host_id("chat-a"));
    let b = Chatup::start_with(Options::default().address("127.0.0.3").host_id("chat-b"));
    let (ip_a, ip_b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(a.address(), ip_a);
    assert_eq!(a.nginx_addr().ip(), ip_a);
    assert_eq!(a.sidecar_addr().ip(), ip_a);
    assert_eq!(b.nginx_addr().ip(), ip_b);
    assert_eq!(a.public_url(), format!("http://127.0.0.2:{}", a.port));
    assert_eq!(
        a.ws_url("/sub/x"),
        format!("ws://127.0.0.2:{}/sub/x", a.port)
    );
    assert_eq!(a.host_id(), Some("chat-a"));

    for env in [&a, &b] {
        let health = env.get("/health", &[]).await;
        assert_eq!(
            health.status,
            200,
            "/health through nginx on {}: {}",
            env.nginx_addr(),
            health.text()
        );
        let config = std::fs::read_to_string(env.path("chatup.toml")).expect("chatup.toml");
        assert!(
            config.contains(&format!("public_url = \"{}\"", env.public_url())),
            "the sidecar is told its public URL:\n{config}"
        );
        assert!(
            !config.contains("[redis]"),
            "no Redis unless asked:\n{config}"
        );
        // Nothing of this host listens on 127.0.0.1.
        for port in [env.port, env.sidecar_port] {
            let other = SocketAddr::from(([127, 0, 0, 1], port));
            assert!(
                TcpStream::connect_timeout(&other, Duration::from_millis(300)).is_err(),
                "something answers on {other}, but the host is on {}",
                env.address()
            );
        }
    }

    // Each host has its own memory broker: the same channel counts from 1 on each.
    let mut sub_a = Subscriber::connect(&a, "/sub/room").await;
    let mut sub_b = Subscriber::connect(&b, "/sub/room").await;
    assert_eq!(a.publish("room", "on a").await["id"], 1);
    assert_eq!(b.publish("room", "on b").await["id"], 1);
    assert_message(&sub_a.recv_n(1).await[0], "room", 1, "on a");
    assert_message(&sub_b.recv_n(1).await[0], "room", 1, "on b");
    sub_a.expect_no_message(Duration::from_millis(200)).await;
    sub_b.expect_no_message(Duration::from_millis(200)).await;

    // A whole host goes away and comes back on the same address and ports; the other one
    // is untouched.
    let (port, sidecar_port) = (a.port, a.sidecar_port);
    a.stop_host();
    assert!(!a.nginx_running() && !a.sidecar_running());
    assert!(
        TcpStream::connect_timeout(&a.nginx_addr(), Duration::from_millis(300)).is_err(),
        "nginx of a stopped host still accepts connections"
    );
    sub_a.expect_close(WAIT).await;
    assert_eq!(b.get("/health", &[]).await.status, 200);
    a.start_host();
    assert_eq!((a.port, a.sidecar_port), (port, sidecar_port));
    assert_eq!(a.get("/health", &[]).await.status, 200);
    let mut sub_a = Subscriber::connect(&a, "/sub/room2").await;
    a.publish("room2", "back").await;
    assert_message(&sub_a.recv_n(1).await[0], "room2", 1, "back");

    // And once more after a crash.
    a.kill_host();
    a.start_host();
    assert_eq!(a.get("/health", &[]).await.status, 200);
}

#[tokio::test]
async fn dispatcher_sends_a_client_to_a_host_sharing_its_redis() {
    let redis = RedisServer::start();
    let a = Chatup::start_with(
        Options::default()
            .address("127.0.0.2")
            .host_id("chat-a")
            .redis(&redis.url()),
    );
    let b = Chatup::start_with(
        Options::default()
            .address("127.0.0.3")
            .host_id("chat-b")
            .redis(&redis.url()),
    );
    let mut dispatcher = Dispatcher::start(&redis.url());
    let urls = [a.public_url(), b.public_url()];

    // Hosts report their load periodically; wait for the dispatcher to see one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let resp = loop {
        let resp = dispatcher.join("room", None).await;
        if resp.status == 200 || tokio::time::Instant::now() >= deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status, 200, "POST /join/room: {}", resp.text());
    let body = resp.text();
    assert!(
        urls.iter().any(|u| body.contains(u.as_str())),
        "the answer names one of {urls:?}: {body}"
    );

    // Through a host's nginx too.
    let resp = a.post("/join/room", &[], b"").await;
    assert_eq!(
        resp.status,
        200,
        "POST /join/room via nginx: {}",
        resp.text()
    );

    dispatcher.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = dispatcher.join("room", None).await;
        if resp.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after a restart: {} {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
