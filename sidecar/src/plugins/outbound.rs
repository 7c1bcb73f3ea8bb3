//! The HTTP client of the plugins that call out (`webhook`, `publish_hook`).
//!
//! TLS is rustls with the `ring` provider, installed process-wide the first time a client
//! is built (reqwest is built without a provider of its own), so `https://` URLs such as
//! Slack's work; plain `http://` works as well. Redirects are not followed: a POST that
//! gets a 3xx answer failed, and the endpoint in the configuration should be fixed.

use std::time::Duration;

/// Sent as `User-Agent`, so the receiving side can tell where the requests come from.
const USER_AGENT: &str = concat!("chatup-sidecar/", env!("CARGO_PKG_VERSION"));

/// Installs rustls' `ring` provider as the process default (once; later calls, or a
/// provider installed by someone else first, are fine).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client whose every request (connect, send, read the answer) is bounded by `timeout`.
/// Connections are kept alive and reused between requests.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
}
