//! Many hosts on one Redis (or a Redis Cluster): a room spans hosts, Redis restarts, and a
//! sidecar subscribes in Redis only to what its workers want.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chatup_tests::token::token;
use chatup_tests::{assert_message, Chatup, Event, Options, RedisCluster, RedisServer};
use chatup_tests::{Subscriber, WAIT};
use serde_json::Value;

fn host(address: &str, id: &str, redis: &str) -> Chatup {
    Chatup::start_with(Options::default().address(address).host_id(id).redis(redis))
}

/// Reads text frames until `n` chat messages came (resync events are returned apart).
async fn messages(sub: &mut Subscriber, n: usize, within: Duration) -> (Vec<Value>, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + within;
    let (mut chat, mut events) = (Vec::new(), Vec::new());
    while chat.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.next(left).await {
            Some(Event::Text(text)) => {
                let v: Value = serde_json::from_str(&text).expect("a JSON frame");
                if v.get("msg").is_some() {
                    chat.push(v);
                } else {
                    events.push(v);
                }
            }
            Some(Event::Ping(_)) => {}
            other => panic!(
                "expected {n} messages, got {} then {other:?}: {chat:?}",
                chat.len()
            ),
        }
    }
    (chat, events)
}

#[tokio::test]
async fn a_room_spans_two_hosts_in_order_and_once() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let mut subs = Vec::new();
    for env in [&a, &b, &a, &b] {
        subs.push(Subscriber::connect(env, "/sub/room").await);
    }
    // Let every worker's subscription reach Redis before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    for i in 1..=40u64 {
        let env = if i % 2 == 1 { &a } else { &b };
        let ack = env.publish("room", &format!("m{i}")).await;
        assert_eq!(ack["id"], i, "ids are shared by all hosts: {ack}");
    }
    for sub in &mut subs {
        let (chat, _) = messages(sub, 40, WAIT).await;
        for (i, msg) in chat.iter().enumerate() {
            let id = i as u64 + 1;
            assert_message(msg, "room", id, &format!("m{id}"));
        }
        sub.expect_no_message(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_sidecar_subscribes_in_redis_only_to_what_its_workers_want() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let live = |ch: &str| format!("chatup:{{{ch}}}:live");
    // The chat channels' pub/sub channels (the control channel is always there).
    let subscribed = || redis.cli(&["PUBSUB", "CHANNELS", "chatup:{*}:live"]);
    let mut sub = Subscriber::connect(&a, "/sub/wanted").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let channels = subscribed();
        if channels == live("wanted") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected only {} in Redis, got {channels:?}",
            live("wanted")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Publishing to a channel nobody watches here subscribes nothing.
    a.publish("unwatched", "x").await;
    assert_eq!(subscribed(), live("wanted"));

    sub.close(1000).await;
    drop(sub);
    let deadline = std::time::Instant::now() + WAIT;
    while !subscribed().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription outlived the last subscriber"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(env: &Chatup, text: String) -> (String, chatup_tests::HttpResponse) {
    let resp = env
        .post_text("live", &token("alice"), text.as_bytes())
        .await;
    (text, resp)
}

#[tokio::test]
async fn redis_restart_during_traffic_loses_nothing_accepted_and_repeats_nothing() {
    let mut redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let mut sub_a = Subscriber::connect(&a, "/sub/live").await;
    let mut sub_b = Subscriber::connect(&b, "/sub/live").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        let (text, resp) = post(if i % 2 == 0 { &a } else { &b }, format!("before {i}")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        accepted.push(text);
    }

    redis.stop();
    for i in 0..6 {
        let (_, resp) = post(if i % 2 == 0 { &a } else { &b }, format!("outage {i}")).await;
        assert_eq!(
            resp.status,
            503,
            "a publish while Redis is down must fail, not be accepted: {}",
            resp.text()
        );
        assert_eq!(resp.error_code().as_deref(), Some("unavailable"));
        refused += 1;
    }
    redis.start_again();

    // Publishing works again once the sidecars have reconnected.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut i = 0;
    while accepted.len() < 20 {
        let (text, resp) = post(if i % 2 == 0 { &a } else { &b }, format!("after {i}")).await;
        i += 1;
        match resp.status {
            200 => accepted.push(text),
            503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing did not recover after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert_eq!(refused, 6);

    for (name, sub) in [("host a", &mut sub_a), ("host b", &mut sub_b)] {
        let (chat, events) = messages(sub, accepted.len(), WAIT * 3).await;
        let texts: Vec<&str> = chat
            .iter()
            .map(|m| m["msg"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            texts, accepted,
            "{name}: every accepted message, once, in order"
        );
        let unique: HashSet<(u64, u64)> = chat
            .iter()
            .map(|m| (m["ep"].as_u64().unwrap(), m["id"].as_u64().unwrap()))
            .collect();
        assert_eq!(unique.len(), chat.len(), "{name}: no duplicate");
        // Redis came back empty: the channel has a new epoch and the client was told.
        assert_ne!(
            chat[0]["ep"], chat[19]["ep"],
            "{name}: a new epoch after the restart"
        );
        assert!(
            events
                .iter()
                .any(|e| e["ev"] == "resync" && e["data"]["ep"] == chat[19]["ep"]),
            "{name}: subscribers are told about the new epoch: {events:?}"
        );
        sub.expect_no_message(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_redis_cluster_carries_a_room_across_two_hosts_on_one_shard() {
    let cluster = RedisCluster::start();
    let (a, b) = Chatup::two_on_cluster(&cluster);
    let rooms = ["alpha", "beta", "gamma", "delta"];
    let mut subs = Vec::new();
    for room in rooms {
        subs.push((room, Subscriber::connect(&b, &format!("/sub/{room}")).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    for room in rooms {
        for i in 1..=5u64 {
            let ack = a.publish(room, &format!("{room} {i}")).await;
            assert_eq!(ack["id"], i);
        }
    }
    for (room, sub) in &mut subs {
        let (chat, _) = messages(sub, 5, WAIT).await;
        for (i, msg) in chat.iter().enumerate() {
            let id = i as u64 + 1;
            assert_message(msg, room, id, &format!("{room} {id}"));
        }
    }

    // Each room's subscription sits on the shard that owns the room's keys, and nothing
    // uses classic (broadcast) pub/sub.
    for room in rooms {
        let live = format!("chatup:{{{room}}}:live");
        let owner = cluster.node_index_for(&live);
        for i in 0..cluster.len() {
            let shard_channels = cluster.node(i).cli(&["PUBSUB", "SHARDCHANNELS", "*"]);
            let listed = shard_channels.lines().any(|l| l == live);
            assert_eq!(
                listed,
                i == owner,
                "{live} on node {i} (owner {owner}): {shard_channels:?}"
            );
            assert_eq!(cluster.node(i).cli(&["PUBSUB", "CHANNELS", "*"]), "");
        }
        let meta = format!("chatup:{{{room}}}:meta");
        assert_eq!(cluster.node(owner).cli(&["HGET", &meta, "id"]), "5");
    }
}

#[tokio::test]
async fn a_viewer_resumes_on_another_host_from_the_shared_history() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let mut viewer = Subscriber::connect(&a, "/sub/show").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=3 {
        a.publish("show", &format!("seen {i}")).await;
    }
    let (seen, _) = messages(&mut viewer, 3, WAIT).await;
    assert_eq!(seen.len(), 3);
    // Built by the publish script, byte for byte as a single host builds it.
    for raw in &viewer.raw {
        chatup_tests::assert_key_order(raw);
    }
    let since = viewer.since_of("show").expect("a resume point");
    viewer.close(1000).await;
    drop(viewer);

    // Published while the viewer is away; host B has never had the channel.
    for i in 4..=6 {
        a.publish("show", &format!("missed {i}")).await;
    }
    let mut resumed = Subscriber::connect(&b, &format!("/sub/show?since={since}")).await;
    let (chat, events) = messages(&mut resumed, 3, WAIT).await;
    for (i, msg) in chat.iter().enumerate() {
        let id = i as u64 + 4;
        assert_message(msg, "show", id, &format!("missed {id}"));
    }
    assert!(
        events.is_empty(),
        "a clean resume has no resync: {events:?}"
    );
    resumed.expect_no_message(Duration::from_millis(300)).await;

    // And it stays live on host B.
    a.publish("show", "live 7").await;
    let (chat, _) = messages(&mut resumed, 1, WAIT).await;
    assert_message(&chat[0], "show", 7, "live 7");
}

#[tokio::test]
async fn messages_missed_while_pubsub_was_down_are_filled_from_history_in_order() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let b = host("127.0.0.3", "b", &redis.url());
    let mut viewer = Subscriber::connect(&b, "/sub/gap").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.publish("gap", "one").await;
    let (first, _) = messages(&mut viewer, 1, WAIT).await;
    assert_message(&first[0], "gap", 1, "one");

    // Cut every pub/sub connection and keep them from coming back (no room for new
    // clients) while publishing: those messages reach host B only through the history.
    let mut admin = AdminConnection::open(&redis);
    let pubsub = admin.command("CLIENT LIST TYPE pubsub").lines().count();
    assert!(pubsub >= 1, "host B holds a pub/sub connection");
    let clients = admin.command("INFO clients");
    let connected: usize = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("connected_clients")
        .trim()
        .parse()
        .expect("a number");
    let room = connected - pubsub;
    assert_eq!(
        admin.command(&format!("CONFIG SET maxclients {room}")),
        "+OK"
    );
    let killed = admin.command("CLIENT KILL TYPE pubsub");
    assert_eq!(killed, format!(":{pubsub}"));
    for i in 2..=6 {
        a.publish("gap", &format!("m{i}")).await;
    }
    viewer.expect_no_message(Duration::from_millis(300)).await;
    assert_eq!(admin.command("CONFIG SET maxclients 10000"), "+OK");
    let (chat, events) = messages(&mut viewer, 5, WAIT).await;
    let texts: Vec<&str> = chat
        .iter()
        .map(|m| m["msg"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, ["m2", "m3", "m4", "m5", "m6"]);
    assert!(events.is_empty(), "same epoch, no resync: {events:?}");
    assert!(
        b.wait_for_sidecar_log("caught up from the history", WAIT),
        "host B filled the gap from the history"
    );
    a.publish("gap", "after").await;
    let (chat, _) = messages(&mut viewer, 1, WAIT).await;
    assert_message(&chat[0], "gap", 7, "after");
}

/// One connection to Redis kept open, so it still works while Redis refuses new clients.
struct AdminConnection {
    reader: BufReader<TcpStream>,
}

impl AdminConnection {
    fn open(redis: &RedisServer) -> Self {
        let stream = TcpStream::connect(redis.addr()).expect("connect to redis");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// Sends an inline command; returns a status/integer line, or a bulk reply's text.
    fn command(&mut self, line: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut head = String::new();
        self.reader.read_line(&mut head).expect("read");
        let head = head.trim_end().to_owned();
        let Some(len) = head.strip_prefix('$') else {
            return head;
        };
        let len: usize = len.parse().expect("bulk length");
        let mut body = vec![0; len + 2];
        self.reader.read_exact(&mut body).expect("bulk");
        String::from_utf8_lossy(&body[..len]).into_owned()
    }
}

#[tokio::test]
async fn a_publisher_sending_ahead_gets_every_answer_in_order() {
    let redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let mut viewer = Subscriber::connect(&a, "/sub/burst").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut publisher = chatup_tests::Publisher::connect_ok(&a, &token("alice")).await;

    // 300 frames without waiting: publishes, a join, a bad frame and a fresh token in the
    // middle. The answers come in the order of the frames.
    for r in 1..=300u64 {
        let frame = match r {
            100 => serde_json::json!({"ref": r, "join": "burst"}),
            150 => serde_json::json!({"ref": r, "ch": "bad name", "msg": "x"}),
            200 => serde_json::json!({"ref": r, "token": token("alice")}),
            _ => serde_json::json!({"ref": r, "ch": "burst", "msg": format!("m{r}")}),
        };
        publisher.send_json(&frame).await;
    }
    let mut last_id = 0;
    for r in 1..=300u64 {
        let answer = publisher.recv().await;
        match r {
            100 => assert_eq!(answer["type"], "joined", "{answer}"),
            150 => assert_eq!(answer["code"], "bad_channel", "{answer}"),
            200 => assert_eq!(answer["type"], "auth", "{answer}"),
            _ => {
                assert_eq!(answer["type"], "ack", "{answer}");
                let id = answer["id"].as_u64().expect("id");
                assert!(id > last_id, "ids follow the frames: {id} after {last_id}");
                last_id = id;
            }
        }
        if r != 200 {
            assert_eq!(answer["ref"], r, "answer {r} out of order: {answer}");
        }
    }
    // The viewer got the messages in the order they were sent (the join event among them).
    let (chat, _) = messages(&mut viewer, 297, WAIT).await;
    let texts: Vec<String> = chat
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=300)
        .filter(|r| ![100, 150, 200].contains(r))
        .map(|r| format!("m{r}"))
        .collect();
    assert_eq!(texts, expected);
}

#[tokio::test]
async fn a_viewer_joining_while_redis_is_down_gets_the_channel_once_it_is_back() {
    let mut redis = RedisServer::start();
    let a = host("127.0.0.2", "a", &redis.url());
    let mut old_viewer = Subscriber::connect(&a, "/sub/old").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let workers = a.sidecar_log().matches("nginx worker connected").count();

    redis.stop();
    // A channel no worker had yet: the worker's subscription waits for Redis, and its
    // relay connection stays up.
    let mut new_viewer = Subscriber::connect(&a, "/sub/new").await;
    assert!(
        a.wait_for_sidecar_log("retrying every 1s", WAIT),
        "the sidecar says the subscription waits"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.start_again();
    assert!(
        a.wait_for_sidecar_log("subscribing works again", WAIT * 2),
        "the waiting subscription is taken once Redis is back"
    );
    assert_eq!(
        a.sidecar_log().matches("nginx worker connected").count(),
        workers,
        "no relay connection was dropped"
    );
    assert!(!a.sidecar_log().contains("closing relay connection"));

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = a.post_text("new", &token("alice"), b"hello").await;
        if resp.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", resp.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (chat, _) = messages(&mut new_viewer, 1, WAIT).await;
    assert_eq!(chat[0]["msg"], "hello");
    a.publish("old", "still here").await;
    let (chat, _) = messages(&mut old_viewer, 1, WAIT).await;
    assert_eq!(chat[0]["msg"], "still here");
}

#[tokio::test]
async fn viewers_of_a_host_whose_sidecar_was_down_for_7_s_get_every_message_once_in_order() {
    // Host A's sidecar stops for 7 s while host B keeps publishing to the room. A's nginx
    // workers keep their viewers and retry the relay; once the sidecar is back they resume
    // from their last positions through the shared history (the outage's messages are
    // fewer than history.size, 100), so viewers miss nothing and need no resync.
    const OUTAGE: Duration = Duration::from_secs(7);
    const MISSED: u64 = 30;
    let redis = RedisServer::start();
    let mut a = Chatup::start_with(Options::host_on_redis("127.0.0.2", "a", &redis.url()));
    let b = Chatup::start_with(Options::host_on_redis("127.0.0.3", "b", &redis.url()));
    let mut viewers = a.subscribers_on_every_worker("/sub/outage").await;
    // Let every worker's subscription reach Redis before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=3u64 {
        b.publish("outage", &format!("before {i}")).await;
    }
    let mut epoch = 0;
    for (viewer, worker) in &mut viewers {
        let (chat, events) = messages(viewer, 3, WAIT).await;
        for (msg, id) in chat.iter().zip(1..) {
            epoch = assert_message(msg, "outage", id, &format!("before {id}"));
        }
        assert!(events.is_empty(), "worker {worker}: {events:?}");
    }

    let stopped = tokio::time::Instant::now();
    let status = a.stop_sidecar();
    assert!(
        status.success(),
        "host A's sidecar exits 0 on SIGTERM, got {status}"
    );
    // Spread over the outage, through host B.
    for i in 1..=MISSED {
        let id = i + 3;
        let ack = b.publish("outage", &format!("missed {id}")).await;
        assert_eq!(ack["id"], id, "{ack}");
        let next = stopped + OUTAGE.mul_f64(i as f64 / (MISSED + 1) as f64);
        tokio::time::sleep_until(next).await;
    }
    tokio::time::sleep_until(stopped + OUTAGE).await;

    // start_sidecar blocks until the sidecar is ready: run it on a thread so the viewers'
    // first message is timed as it arrives.
    let restart = std::thread::spawn(move || {
        let spawned = tokio::time::Instant::now();
        a.start_sidecar();
        (a, spawned, tokio::time::Instant::now())
    });
    let received =
        futures_util::future::join_all(viewers.iter_mut().map(|(viewer, worker)| async move {
            let (mut chat, mut events) = messages(viewer, 1, WAIT * 2).await;
            let first = tokio::time::Instant::now();
            let (rest, more) = messages(viewer, MISSED as usize - 1, WAIT).await;
            chat.extend(rest);
            events.extend(more);
            (*worker, first, chat, events)
        }))
        .await;
    let (a, spawned, ready) = restart.join().expect("host A's sidecar restarted");

    for (worker, first, chat, events) in &received {
        eprintln!(
            "worker {worker}: first message {:?} after host A's sidecar was started \
             ({:?} after it was ready; the outage lasted {:?})",
            first.saturating_duration_since(spawned),
            first.saturating_duration_since(ready),
            spawned.duration_since(stopped),
        );
        assert!(
            events.is_empty(),
            "worker {worker}: a clean resume has no resync: {events:?}"
        );
        for (msg, id) in chat.iter().zip(4..) {
            let ep = assert_message(msg, "outage", id, &format!("missed {id}"));
            assert_eq!(ep, epoch, "worker {worker}: the same epoch");
        }
    }
    // Live again, and nothing came twice.
    b.publish("outage", "after").await;
    for (viewer, worker) in &mut viewers {
        let (chat, events) = messages(viewer, 1, WAIT).await;
        assert_message(&chat[0], "outage", MISSED + 4, "after");
        assert!(events.is_empty(), "worker {worker}: {events:?}");
        viewer.expect_no_message(Duration::from_millis(300)).await;
    }
    // Each worker retried at once when its relay broke (then backed off).
    for (_, worker) in &viewers {
        let log = a.grep_error_log(&format!("{worker}#"));
        assert!(
            log.iter()
                .any(|l| l.contains("relay lost") && l.contains("retrying in 0 ms")),
            "worker {worker} did not retry at once:\n{}",
            log.join("\n")
        );
    }
}
