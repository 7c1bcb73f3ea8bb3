//! The HTTP listener, behind nginx: bound before anything is served, so that a busy port
//! stops the start.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound HTTP listener.
pub struct HttpServer {
    /// Bound before serving, so that startup fails early on a busy port.
    listener: TcpListener,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on http.listen {addr}: {source}")]
pub struct HttpBindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, HttpBindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpBindError { addr, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown`; in-flight requests finish, publisher sessions close
    /// themselves with 1001.
    pub async fn run(self, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "http listening");
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}
