//! Redis's own failures under traffic: a Redis Cluster master that owns the channel is
//! killed and its replica promoted, or the channel's slot is moved by a live reshard.
//! Viewers on every host must end with every acknowledged message, once, in order.

use std::time::Duration;

use chatup_tests::traffic::{self, Plan};
use chatup_tests::{Chatup, Options, RedisCluster, Subscriber};

const CHANNEL: &str = "live";

fn live_key() -> String {
    format!("chatup:{{{CHANNEL}}}:live")
}

fn plan(before: Duration, after: Duration) -> Plan {
    Plan {
        channel: CHANNEL.into(),
        rate: 50,
        before,
        after,
        settle: Duration::from_secs(15),
    }
}

async fn two_hosts_on(cluster: &RedisCluster) -> (Chatup, Chatup, Vec<Subscriber>) {
    let nodes = cluster.nodes();
    traffic::two_hosts(
        |address, id| Options::host_on_cluster(address, id, &nodes),
        CHANNEL,
    )
    .await
}

#[tokio::test]
async fn a_cluster_failover_of_the_channels_master_loses_no_acked_message() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let (a, b, mut subs) = two_hosts_on(&cluster).await;
    let owner = cluster.node_index_for(&live_key());
    let killed = std::cell::Cell::new(false);
    let report = traffic::run(
        &[&a, &b],
        &mut subs,
        &plan(Duration::from_secs(2), Duration::from_secs(12)),
        || {
            cluster.node_mut(owner).kill();
            killed.set(true);
        },
    )
    .await;
    assert!(killed.get());
    let promoted = cluster.wait_new_owner(&live_key(), owner, Duration::from_secs(1));
    eprintln!(
        "cluster failover (node {owner} killed, node {promoted} promoted): {}",
        report.summary()
    );
    assert!(
        report.acked_after_fault() > 0,
        "publishing never resumed after the failover: {}",
        report.summary()
    );
    report.assert_every_ack_once();
}

#[tokio::test]
async fn a_live_reshard_of_the_channels_slot_loses_no_acked_message() {
    let cluster = RedisCluster::start_with_replicas(3, 0);
    let (a, b, mut subs) = two_hosts_on(&cluster).await;
    let owner = cluster.node_index_for(&live_key());
    let target = (owner + 1) % 3;
    let report = traffic::run(
        &[&a, &b],
        &mut subs,
        &plan(Duration::from_secs(2), Duration::from_secs(4)),
        || {
            cluster.move_slot_of(&live_key(), target);
        },
    )
    .await;
    assert_eq!(cluster.node_index_for(&live_key()), target);
    eprintln!(
        "live reshard (slot moved from node {owner} to node {target}): {}",
        report.summary()
    );
    assert!(report.acked_after_fault() > 0, "{}", report.summary());
    report.assert_every_ack_once();
    // The sidecars now listen on the new owner only.
    let shard_channels = cluster.node(target).cli(&["PUBSUB", "SHARDCHANNELS", "*"]);
    assert!(shard_channels.contains(&live_key()), "{shard_channels:?}");
    let old = cluster.node(owner).cli(&["PUBSUB", "SHARDCHANNELS", "*"]);
    assert!(!old.contains(&live_key()), "{old:?}");
}

#[tokio::test]
async fn a_history_that_went_backwards_starts_a_new_epoch_that_viewers_are_told_of() {
    // What a promoted replica that lagged looks like: the last acknowledged messages are
    // gone and the channel's last id is lower than what viewers already saw.
    let redis = chatup_tests::RedisServer::start();
    let a = Chatup::start_with(Options::host_on_redis("127.0.0.2", "a", &redis.url()));
    let mut sub = Subscriber::connect(&a, &format!("/sub/{CHANNEL}")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=5 {
        a.publish(CHANNEL, &format!("m{i}")).await;
    }
    let seen = sub.recv_n(5).await;
    let old_epoch = seen[4]["ep"].as_u64().expect("an epoch");
    let meta = format!("chatup:{{{CHANNEL}}}:meta");
    let history = format!("chatup:{{{CHANNEL}}}:history");
    redis.cli(&["HSET", &meta, "id", "3"]);
    redis.cli(&["LTRIM", &history, "2", "-1"]);
    // The sidecar's pub/sub connection drops, as it does in a failover.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);

    let resync = sub.recv().await;
    assert_eq!(resync["ev"], "resync", "{resync}");
    let new_epoch = resync["data"]["ep"].as_u64().expect("the new epoch");
    assert_ne!(new_epoch, old_epoch);
    let ack = a.publish(CHANNEL, "after").await;
    assert_eq!(
        (ack["ep"].as_u64(), ack["id"].as_u64()),
        (Some(new_epoch), Some(1))
    );
    let msg = sub.recv().await;
    assert_eq!(
        (msg["msg"].as_str(), msg["id"].as_u64()),
        (Some("after"), Some(1))
    );
}

#[tokio::test]
async fn a_sentinel_failover_loses_no_acked_message() {
    let mut redis = chatup_tests::RedisSentinel::start();
    let sentinels = redis.sentinel_urls();
    let (a, b, mut subs) = traffic::two_hosts(
        |address, id| Options::host_on_sentinel(address, id, &sentinels),
        CHANNEL,
    )
    .await;
    assert_eq!(redis.primary_index(), Some(0));
    let report = traffic::run(
        &[&a, &b],
        &mut subs,
        &plan(Duration::from_secs(2), Duration::from_secs(10)),
        || redis.nodes[0].kill(),
    )
    .await;
    let promoted = redis.wait_promoted(0, Duration::from_secs(1));
    eprintln!(
        "sentinel failover (primary killed, node {promoted} promoted): {}",
        report.summary()
    );
    assert!(report.acked_after_fault() > 0, "{}", report.summary());
    report.assert_every_ack_once();
    assert!(
        a.sidecar_log().contains("promoted another primary"),
        "the sidecar says it moved"
    );
}
