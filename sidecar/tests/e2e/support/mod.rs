//! A whole sidecar in this process, on a real TCP port and a real Unix socket, and the
//! clients that drive it: WebSocket publishers ([`ws`]), raw HTTP ([`http`]) and fake nginx
//! workers speaking the relay protocol ([`relay`]); the tokens they present ([`token`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chatup_sidecar::config::Config;
use chatup_sidecar::host::publish::WsSettings;
use chatup_sidecar::moderation::Moderation;
use chatup_sidecar::server::Sidecar;
use tokio::sync::oneshot;

pub mod http;
pub mod relay;
pub mod token;
pub mod ws;

pub use self::http::{http, post, HttpResponse};
pub use self::relay::{next_frame, relay_json, worker, Worker};
pub use self::token::{expired_token, token, user_token};
pub use self::ws::{
    expect_errors, ws_as, ws_authed, ws_close, ws_close_code, ws_close_frame, ws_connect,
    ws_frames_until_close, ws_joined, ws_json, ws_publish, ws_refused, ws_send,
};

/// A sidecar started by [`start`] or [`start_configured`], running until [`Running::stop`].
pub struct Running {
    /// Holds the relay socket; removed when the test ends.
    _dir: tempfile::TempDir,
    /// Where the HTTP listener took its port.
    pub addr: SocketAddr,
    /// The relay socket fake workers connect to.
    pub socket: PathBuf,
    /// What the admin API bans through.
    pub moderation: Arc<Moderation>,
    /// Fired by [`Running::stop`] to begin the shutdown.
    stop: Option<oneshot::Sender<()>>,
    /// The sidecar's run loop, whose result `stop` returns.
    task: tokio::task::JoinHandle<Result<(), chatup_sidecar::Error>>,
}

impl Running {
    pub async fn stop(mut self) -> Result<(), chatup_sidecar::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("sidecar stops within 10s")
            .expect("sidecar task")
    }
}

/// A file of `nginx-conf/example-keys/`, as a setting's value.
pub fn example_key(name: &str) -> String {
    chatup_tests::env::example_keys()
        .join(name)
        .display()
        .to_string()
}

pub async fn start_with(ws: WsSettings) -> Running {
    start_configured(ws, &[]).await
}

/// A sidecar with the test settings plus `extra` (`section.key=value`).
pub async fn start_configured(ws: WsSettings, extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("relay.sock");
    let mut sets = vec![
        format!("relay.socket={}", socket.display()),
        "http.listen=127.0.0.1:0".to_string(),
        format!("auth.public_key_file={}", example_key("jwt-public.pem")),
        "limits.max_message_chars=10".to_string(),
        "limits.max_event_bytes=32".to_string(),
        "history.size=50".to_string(),
        // Bans checked; no rate limit, so tests may publish quickly (those of the rate
        // limit turn it on).
        "plugins.chain=ban".to_string(),
        // Leaves at once, so tests closing a publisher see its leave right away (presence's
        // own tests cover the grace).
        "presence.leave_grace_ms=0".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::load(None, Vec::new(), &sets).unwrap().config;
    let sidecar = Sidecar::start(&config, ws).await.unwrap();
    let addr = sidecar.http_addr();
    let moderation = sidecar.moderation();
    if config.roles.chat_host {
        assert_eq!(sidecar.relay_path(), Some(socket.as_path()));
    } else {
        assert_eq!(sidecar.relay_path(), None);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));
    Running {
        _dir: dir,
        addr,
        socket,
        moderation,
        stop: Some(stop),
        task,
    }
}

pub async fn start() -> Running {
    start_with(WsSettings::default()).await
}
