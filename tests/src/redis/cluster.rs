//! [`RedisCluster`]: masters (and replicas) forming a Redis Cluster, and the slot moves and
//! failovers tests make them go through.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::resp::{command, info_field, Reply};
use super::server::RedisServer;
use super::{CLUSTER_TIMEOUT, SLOTS, TEST_NODE_TIMEOUT};

/// A Redis Cluster on 127.0.0.1: masters with the slots split evenly, and optionally
/// replicas that take over when their master fails.
pub struct RedisCluster {
    // Declared before `dir` so the nodes are killed before their folder is removed.
    nodes: Vec<RedisServer>,
    dir: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts three masters and forms a cluster of them.
    pub fn start() -> Self {
        Self::start_masters(3)
    }

    /// Starts `n` masters and forms a cluster of them: each node gets an even share of the
    /// slots and its own config epoch, node 0 meets the others, then every node must see
    /// `cluster_state:ok` (bounded).
    pub fn start_masters(n: usize) -> Self {
        Self::start_with_replicas(n, 0)
    }

    /// Starts `masters` masters and `replicas` replicas of each (nodes `masters..` are the
    /// replicas, node `masters + r * masters + i` a replica of master `i`), forms the
    /// cluster and waits until every replica's link to its master is up (bounded).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, TEST_NODE_TIMEOUT)
    }

    /// [`start_with_replicas`](Self::start_with_replicas) with the nodes'
    /// `cluster-node-timeout` (how long a master is silent before its replica takes over).
    pub fn start_with(masters: usize, replicas: usize, node_timeout: Duration) -> Self {
        let n = masters;
        assert!(n >= 1, "a cluster needs at least one master");
        let dir = tempfile::Builder::new()
            .prefix("chatup-redis-cluster-")
            .tempdir()
            .expect("create a temp folder");
        let nodes: Vec<RedisServer> = (0..n * (1 + replicas))
            .map(|i| {
                RedisServer::start_cluster_node(dir.path().join(format!("node{i}")), node_timeout)
            })
            .collect();
        let cluster = Self {
            nodes,
            dir: Some(dir),
        };
        for (i, node) in cluster.nodes[..n].iter().enumerate() {
            let first = i * usize::from(SLOTS) / n;
            let last = (i + 1) * usize::from(SLOTS) / n - 1;
            cluster.expect_ok(
                node,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
            // Distinct epochs up front, as redis-cli --cluster create does, instead of waiting
            // for the nodes to resolve the collision among themselves.
            cluster.expect_ok(node, &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]);
        }
        let first = &cluster.nodes[0];
        for node in &cluster.nodes[1..] {
            let bus = node.bus_port.expect("cluster nodes have a bus port");
            cluster.expect_ok(
                first,
                &[
                    "CLUSTER",
                    "MEET",
                    &node.ip.to_string(),
                    &node.port.to_string(),
                    &bus.to_string(),
                ],
            );
        }
        cluster.wait_ok(CLUSTER_TIMEOUT);
        for (j, replica) in cluster.nodes[n..].iter().enumerate() {
            let master_id = cluster.nodes[j % n].cli(&["CLUSTER", "MYID"]);
            cluster.expect_ok(replica, &["CLUSTER", "REPLICATE", &master_id]);
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for replica in &cluster.nodes[n..] {
            while info_field(&replica.cli(&["INFO", "replication"]), "master_link_status")
                .as_deref()
                != Some("up")
            {
                assert!(
                    Instant::now() < deadline,
                    "replica {} did not sync with its master within {CLUSTER_TIMEOUT:?}",
                    replica.addr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster.wait_ok(CLUSTER_TIMEOUT);
        cluster
    }

    #[track_caller]
    fn expect_ok(&self, node: &RedisServer, args: &[&str]) {
        let reply = node.cli(args);
        assert_eq!(reply, "OK", "{args:?} on {}", node.addr());
    }

    /// Waits until every running node reports `cluster_state:ok`, knows all nodes and sees
    /// every slot assigned; panics with each node's CLUSTER INFO after `timeout`.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len().to_string();
        loop {
            let infos: Vec<String> = self
                .running_nodes()
                .map(|node| match node.command(&["CLUSTER", "INFO"]) {
                    Ok(reply) => reply.text(),
                    Err(e) => format!("unreachable: {e}"),
                })
                .collect();
            let ok = infos.iter().all(|info| {
                info_field(info, "cluster_state").as_deref() == Some("ok")
                    && info_field(info, "cluster_known_nodes").as_deref() == Some(n.as_str())
                    && info_field(info, "cluster_slots_assigned").as_deref()
                        == Some(SLOTS.to_string().as_str())
            });
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let mut out = String::new();
                for (node, info) in self.running_nodes().zip(&infos) {
                    let _ = writeln!(out, "---- CLUSTER INFO of {}:\n{info}", node.addr());
                }
                panic!("the Redis cluster is not ok within {timeout:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs of every node, `redis://127.0.0.1:<port>`, for the sidecar's
    /// `redis.cluster_nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (in start order), e.g. to stop or restart it.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The hash slot of `key`, as the cluster computes it (honours `{hash tags}`).
    #[track_caller]
    pub fn slot_of(&self, key: &str) -> u16 {
        let text = self.cli(&["CLUSTER", "KEYSLOT", key]);
        text.parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} answered {text:?}"))
    }

    /// The index (into [`node`](Self::node)) of the master serving the slot of `key`.
    #[track_caller]
    pub fn node_index_for(&self, key: &str) -> usize {
        let slot = i64::from(self.slot_of(key));
        let reply = self
            .live_node()
            .command(&["CLUSTER", "SLOTS"])
            .expect("CLUSTER SLOTS");
        let Reply::Array(Some(ranges)) = reply else {
            panic!("CLUSTER SLOTS answered {reply:?}");
        };
        for range in ranges {
            let Reply::Array(Some(fields)) = range else {
                continue;
            };
            let (Some(Reply::Int(first)), Some(Reply::Int(last)), Some(Reply::Array(Some(master)))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            if (*first..=*last).contains(&slot) {
                let port = match master.get(1) {
                    Some(Reply::Int(p)) => *p,
                    other => panic!("no port in CLUSTER SLOTS entry: {other:?}"),
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == port)
                    .unwrap_or_else(|| panic!("slot {slot} is served by unknown port {port}"));
            }
        }
        panic!("no node serves slot {slot} (of {key:?})");
    }

    /// The URL of the master serving the slot of `key`.
    #[track_caller]
    pub fn node_for_slot_of(&self, key: &str) -> String {
        self.nodes[self.node_index_for(key)].url()
    }

    /// Runs one command on the cluster as `redis-cli -c` would: sent to a running node and
    /// re-sent where a `MOVED` or `ASK` reply points. Returns the reply as text.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let mut addr = self.live_node().addr();
        for _ in 0..5 {
            let reply =
                command(addr, args).unwrap_or_else(|e| panic!("redis {args:?} on {addr}: {e}"));
            match &reply {
                Reply::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    let target = e.rsplit(' ').next().unwrap_or_default();
                    addr = target
                        .parse()
                        .unwrap_or_else(|_| panic!("cannot follow redirect {e:?}"));
                    if e.starts_with("ASK ") {
                        let _ = command(addr, &["ASKING"]);
                    }
                }
                _ => return reply.text(),
            }
        }
        panic!("redis {args:?}: too many redirects");
    }

    /// The keys matching `pattern` on every node, sorted (a cluster's KEYS is per node).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .flat_map(|n| n.keys(pattern))
            .collect();
        keys.sort();
        keys
    }

    fn live_node(&self) -> &RedisServer {
        self.running_nodes()
            .next()
            .expect("no node of the cluster is running")
    }

    fn running_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Waits until a running node other than `old` serves the slot of `key` as a master and
    /// every running node agrees (a replica was promoted after `old` failed); returns its
    /// index. Panics after `timeout`.
    #[track_caller]
    pub fn wait_new_owner(&self, key: &str, old: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let owners: Vec<Option<usize>> = self
                .running_nodes()
                .map(|node| self.owner_seen_by(node, key))
                .collect();
            if let Some(Some(owner)) = owners.first() {
                if *owner != old
                    && self.nodes[*owner].child.is_some()
                    && owners.iter().all(|o| *o == Some(*owner))
                {
                    return *owner;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new owner of {key:?} within {timeout:?}: the running nodes see {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The index of the master that `node` says serves the slot of `key`.
    fn owner_seen_by(&self, node: &RedisServer, key: &str) -> Option<usize> {
        let slot = i64::from(self.slot_of(key));
        let Ok(Reply::Array(Some(ranges))) = node.command(&["CLUSTER", "SLOTS"]) else {
            return None;
        };
        ranges.iter().find_map(|range| {
            let Reply::Array(Some(fields)) = range else {
                return None;
            };
            match (fields.first(), fields.get(1), fields.get(2)) {
                (Some(Reply::Int(first)), Some(Reply::Int(last)), Some(Reply::Array(Some(m))))
                    if (*first..=*last).contains(&slot) =>
                {
                    let Some(Reply::Int(port)) = m.get(1) else {
                        return None;
                    };
                    self.nodes.iter().position(|n| i64::from(n.port) == *port)
                }
                _ => None,
            }
        })
    }

    /// Moves the slot of `key` with its keys to master `to`, while the cluster serves it, as
    /// `redis-cli --cluster reshard` does for each slot: the target imports, the source
    /// migrates, keys are moved in batches with MIGRATE, then every master is told the new
    /// owner. Returns the previous owner's index.
    #[track_caller]
    pub fn move_slot_of(&self, key: &str, to: usize) -> usize {
        let slot = self.slot_of(key).to_string();
        let from = self.node_index_for(key);
        assert_ne!(from, to, "{key:?} is already served by node {to}");
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let source_id = source.cli(&["CLUSTER", "MYID"]);
        let target_id = target.cli(&["CLUSTER", "MYID"]);
        self.expect_ok(
            target,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
        );
        self.expect_ok(
            source,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
        );
        loop {
            let keys = source
                .command(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .expect("CLUSTER GETKEYSINSLOT")
                .strings();
            if keys.is_empty() {
                break;
            }
            let (ip, port) = (target.ip.to_string(), target.port.to_string());
            let mut args = vec!["MIGRATE", &ip, &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            self.expect_ok(source, &args);
        }
        // The target first, so it answers for the slot before the source sends clients there.
        self.expect_ok(target, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        self.expect_ok(source, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        for node in self.running_nodes() {
            if node.port != source.port && node.port != target.port {
                let _ = node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
            }
        }
        from
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Kill every node at once, so none spends its last moments logging the others'
        // deaths. Each node prints its own log afterwards if the test failed (the folder is
        // removed only after the nodes are dropped).
        for node in &mut self.nodes {
            node.child = None;
        }
        if std::env::var_os("CHATUP_KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}
