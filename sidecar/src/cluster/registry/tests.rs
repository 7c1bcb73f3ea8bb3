//! Fixtures shared by the registry's tests (and by other modules' tests that need a
//! redis-server: [`RedisServer`]), and the tests of [`HostInfo`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chatup_wire::{ChannelCount, ToSidecar, ToWorker, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{HostEntry, HostInfo, HostLoadSource, JoinedPublisher, Reporter};
use crate::broker::memory::{MemoryBroker, MemoryOptions};
use crate::cluster::redis::RedisLink;
use crate::config::{HostConfig, RedisConfig};
use crate::host::load::HostLoad;
use crate::host::presence::Presence;
use crate::host::relay::codec::WireCodec;
use crate::host::relay::{RelayOptions, RelayServer};

/// A redis-server of our own on a free loopback port, killed when dropped.
pub(crate) struct RedisServer {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl RedisServer {
    /// Panics, saying what to install, when there is no redis-server to run: the tests
    /// that need one must not pass without it.
    pub(crate) fn start() -> Self {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok(),
            "no redis-server on PATH: run scripts/setup (or apt-get install redis-server)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not listen on {port}");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn link(&self) -> RedisLink {
        let config = RedisConfig {
            url: self.url(),
            timeout_ms: 500,
            ..RedisConfig::default()
        };
        RedisLink::connect(&config).await.unwrap().0
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A host: a relay with one fake nginx worker (whose `Stats` set the viewer counts)
/// and a presence registry.
pub(super) struct Host {
    _dir: tempfile::TempDir,
    worker: Framed<UnixStream, WireCodec<ToWorker, ToSidecar>>,
    pub(super) presence: Arc<Presence>,
    pub(super) load: Arc<dyn HostLoadSource>,
    shutdown: CancellationToken,
}

impl Host {
    pub(super) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let relay = RelayServer::bind(
            RelayOptions {
                socket: path.clone(),
                mode: 0o600,
                queue_size: 16,
            },
            MemoryBroker::new(MemoryOptions {
                history_size: 1,
                ttl: Duration::from_secs(60),
            }),
        )
        .unwrap();
        let workers = relay.workers();
        let shutdown = CancellationToken::new();
        tokio::spawn(relay.run(shutdown.clone(), TaskTracker::new()));
        let mut worker = Framed::new(
            UnixStream::connect(&path).await.unwrap(),
            WireCodec::default(),
        );
        worker
            .send(ToSidecar::Hello {
                version: PROTOCOL_VERSION,
                pid: 7,
            })
            .await
            .unwrap();
        let policy = tokio::time::timeout(Duration::from_secs(5), worker.next()).await;
        assert!(matches!(policy, Ok(Some(Ok(ToWorker::Policy { .. })))));
        let (presence, _) = Presence::new(false);
        let load: Arc<dyn HostLoadSource> = Arc::new(HostLoad {
            workers,
            presence: presence.clone(),
            viewers: crate::host::viewers::Viewers::in_memory(
                crate::private::PrivateChannels::none(),
            ),
        });
        Self {
            _dir: dir,
            worker,
            presence,
            load,
            shutdown,
        }
    }

    /// Sets the worker's viewer counts and waits until the relay has them.
    pub(super) async fn viewers(&mut self, counts: &[(&str, u32)]) {
        self.worker
            .send(ToSidecar::Stats {
                subscribers: counts.iter().map(|(_, n)| n).sum(),
                totals: Default::default(),
                channels: counts
                    .iter()
                    .map(|(channel, subscribers)| ChannelCount {
                        channel: channel.to_string(),
                        subscribers: *subscribers,
                    })
                    .collect(),
            })
            .await
            .unwrap();
        self.worker
            .send(ToSidecar::Subscribe {
                channel: "sync".into(),
                want: 0,
                since: None,
            })
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), self.worker.next()).await;
        assert!(matches!(answer, Ok(Some(Ok(ToWorker::Backlog { .. })))));
    }

    pub(super) fn reporter(
        &self,
        link: &RedisLink,
        id: &str,
        interval_ms: u64,
        ttl_ms: u64,
    ) -> Reporter {
        let config = HostConfig {
            id: id.into(),
            public_url: format!("https://{id}.example"),
            report_interval_ms: interval_ms,
            ttl_ms,
            ..HostConfig::default()
        };
        let info = HostInfo::from_config(&config, SocketAddr::from(([127, 0, 0, 1], 1)));
        Reporter::new(link.clone(), info, self.load.clone(), &config)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(super) fn identity(sub: &str) -> crate::jwt::Identity {
    crate::test_support::identity_of(Some(sub), "{}")
}

pub(super) async fn hash(link: &RedisLink, key: &str) -> HashMap<String, u64> {
    link.run(redis::cmd("HGETALL").arg(key).clone())
        .await
        .unwrap()
}

pub(super) fn ids(hosts: &[HostEntry]) -> Vec<&str> {
    let mut ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    ids
}

pub(super) fn named(sub: &str, name: &str) -> crate::jwt::Identity {
    crate::jwt::Identity {
        sub: Some(sub.into()),
        user: format!(r#"{{"name":"{name}"}}"#).into(),
        events: false,
        expires_at: u64::MAX,
    }
}

pub(super) fn users(list: &[JoinedPublisher]) -> Vec<(&str, &str)> {
    list.iter()
        .map(|p| (p.key.as_str(), p.user.as_str()))
        .collect()
}

/// Three redis-server masters formed into a cluster with redis-cli; killed when dropped.
pub(crate) struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Panics, saying what to install, without redis-cli or redis-server.
    pub(crate) fn start() -> Self {
        assert!(
            Command::new("redis-cli")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok(),
            "no redis-cli on PATH: run scripts/setup (or apt-get install redis-tools)"
        );
        RedisServer::start(); // only to check that redis-server is there
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            nodes.push(RedisServer { child, port });
        }
        for node in &nodes {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "node listens");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ok = nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the cluster forms");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes, _dir: dir }
    }

    pub(super) async fn link(&self) -> RedisLink {
        RedisLink::connect(&self.config()).await.unwrap().0
    }

    /// `[redis]` for this cluster.
    pub(crate) fn config(&self) -> RedisConfig {
        RedisConfig {
            cluster_nodes: self.nodes.iter().map(RedisServer::url).collect(),
            timeout_ms: 1000,
            ..RedisConfig::default()
        }
    }
}

#[test]
fn default_id_is_the_hostname_and_port() {
    let info = HostInfo::from_config(
        &HostConfig::default(),
        SocketAddr::from(([127, 0, 0, 1], 7009)),
    );
    assert!(
        info.id.ends_with(":7009") && info.id.len() > 5,
        "{}",
        info.id
    );
    let named = HostConfig {
        id: "chat1".into(),
        ..HostConfig::default()
    };
    let info = HostInfo::from_config(&named, SocketAddr::from(([127, 0, 0, 1], 7009)));
    assert_eq!(info.id, "chat1");
}
