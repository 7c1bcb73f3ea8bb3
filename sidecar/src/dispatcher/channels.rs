//! Public channel information for browsers (dispatcher role, no token): `GET /channels/<ch>`
//! (the counts `/join` gives) and `GET /channels/<ch>/users` (who is joined).
//!
//! ```json
//! GET /channels/lobby
//! {"channel":"lobby","subCount":120,"pubCount":4}
//!
//! GET /channels/lobby/users?skip=0&limit=100
//! {"channel":"lobby","total":3,"users":[{"name":"alice"},{"name":"bob"}],"skip":0,"limit":100}
//! ```
//!
//! `subCount` and `pubCount` are summed over the live hosts exactly as in `/join`. `users` are
//! the `_public` objects of the distinct users joined to the channel on any live host, in the
//! order of the admin API's `GET /stats/<ch>` (the two share [`crate::http::user_page`]);
//! those objects go out with every message anyway, hence no token. `limit` is 1 to 1000 (default 100).
//!
//! Every viewer's page polls these (a client refreshes counts every ~10 s: 100,000 viewers
//! are ~10,000 requests a second on the dispatchers), while the numbers change only when
//! hosts report, every `host.report_interval_ms`. So answers come from a per-process
//! [`FreshCache`] per channel, fresh for that interval and bounded to [`CACHED_CHANNELS`]
//! channels; the list of live hosts is cached the same way. Successful answers carry
//! `Cache-Control: public, max-age=1`, so a CDN or an nginx `proxy_cache` can absorb more.
//!
//! A private channel's users (`[private] channels`) are shown only to the operator:
//! without `Authorization: Bearer <admin token>` the answer is 403 `private_channel`; with
//! it, the answer adds `viewerTotal` and `viewers` (who watches, `{"sub":…,"user":…}`,
//! paged like `users`) and is never cached (`Cache-Control: no-store`).
//!
//! A private channel's users (`[private] channels`) are shown only to the operator:
//! without `Authorization: Bearer <admin token>` the answer is 403 `private_channel`; with
//! it, the answer adds `viewerTotal` and `viewers` (who watches, `{"sub":…,"user":…}`,
//! paged like `users`) and is never cached (`Cache-Control: no-store`).
//!
//! CORS is that of `/join` (`dispatch.cors_origins`). Errors are
//! `{"error":{"code":..,"message":..}}`: 400 `bad_channel`, 400 `bad_request` (a bad `skip` or
//! `limit`, named), 503 `unavailable` with `Retry-After: 1` (Redis cannot be reached).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{debug, Instrument};

use crate::cluster::registry::{
    ChannelCounts, Directory, HostEntry, JoinedPublisher, RegistryError,
};
use crate::dispatcher::answer_cache::FreshCache;
use crate::dispatcher::join::{DispatchError, Dispatcher};
use crate::http::channel::ChannelPath;
use crate::http::user_page::{window, window_of};

/// Most channels whose answers are kept at once (per kind of answer); past it, stale ones
/// are dropped, and while all are fresh new ones are answered without being kept.
pub const CACHED_CHANNELS: usize = 10_000;

/// What successful answers tell browsers and shared caches: counts change about once a
/// report, so a second of reuse loses nothing.
const CACHE_CONTROL: &str = "public, max-age=1";

/// The cached answers behind the public channel endpoints.
pub struct ChannelInfo {
    /// Where hosts, counts and members come from.
    directory: Arc<dyn Directory>,
    /// The live hosts (one entry): counts and members are read from these.
    hosts: FreshCache<Arc<[HostEntry]>, RegistryError>,
    /// Per channel, the summed counts.
    counts: FreshCache<ChannelCounts, RegistryError>,
    /// Per channel, every joined user, sorted (pages are cut from it per request).
    users: FreshCache<Arc<[JoinedPublisher]>, RegistryError>,
}

impl ChannelInfo {
    /// Answers from `directory`, each fresh for `fresh_for` (`host.report_interval_ms`).
    pub fn new(directory: Arc<dyn Directory>, fresh_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            directory,
            hosts: FreshCache::new(fresh_for, 1),
            counts: FreshCache::new(fresh_for, CACHED_CHANNELS),
            users: FreshCache::new(fresh_for, CACHED_CHANNELS),
        })
    }

    async fn live_hosts(self: &Arc<Self>) -> Result<Arc<[HostEntry]>, RegistryError> {
        let directory = self.directory.clone();
        self.hosts
            .get(
                "",
                move || async move { directory.hosts().await.map(Arc::from) },
            )
            .await
    }

    /// `channel`'s viewers and publishers over the live hosts.
    pub async fn counts(self: &Arc<Self>, channel: &str) -> Result<ChannelCounts, RegistryError> {
        let (this, name) = (self.clone(), channel.to_owned());
        self.counts
            .get(channel, move || async move {
                let hosts = this.live_hosts().await?;
                this.directory.channel_counts(&name, &hosts).await
            })
            .await
    }

    /// The distinct users joined to `channel` on the live hosts, sorted by user.
    pub async fn users(
        self: &Arc<Self>,
        channel: &str,
    ) -> Result<Arc<[JoinedPublisher]>, RegistryError> {
        let (this, name) = (self.clone(), channel.to_owned());
        self.users
            .get(channel, move || async move {
                let hosts = this.live_hosts().await?;
                this.directory
                    .channel_publishers(&name, &hosts)
                    .await
                    .map(Arc::from)
            })
            .await
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountsAnswer<'a> {
    channel: &'a str,
    sub_count: u64,
    pub_count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsersAnswer<'a> {
    channel: &'a str,
    total: usize,
    users: Vec<&'a RawValue>,
    skip: u64,
    limit: u64,
    /// Private channels only (the operator's answer): who watches.
    #[serde(skip_serializing_if = "Option::is_none")]
    viewer_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    viewers: Option<Vec<&'a RawValue>>,
}

/// `GET /channels/{channel}`. A query string is ignored (browsers and proxies add
/// cache-busting parameters).
pub async fn counts(
    State(dispatcher): State<Arc<Dispatcher>>,
    ChannelPath(channel, ..): ChannelPath<DispatchError>,
) -> Response {
    let result = async {
        let span = tracing::debug_span!("channel_counts", channel);
        let counts = dispatcher
            .channel_info()
            .counts(&channel)
            .instrument(span)
            .await?;
        encode(&CountsAnswer {
            channel: &channel,
            sub_count: counts.subscribers,
            pub_count: counts.publishers,
        })
    }
    .await;
    respond(result)
}

/// `GET /channels/{channel}/users?skip=<n>&limit=<n>`.
pub async fn users(
    State(dispatcher): State<Arc<Dispatcher>>,
    ChannelPath(channel, ..): ChannelPath<DispatchError>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if dispatcher.is_private(&channel) {
        return private_users(&dispatcher, &channel, raw.as_deref(), &headers).await;
    }
    let result = async {
        // The admin query parser's message names the parameter and what it takes.
        let w = window(raw.as_deref()).map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        let span = tracing::debug_span!("channel_users", channel);
        let users = dispatcher
            .channel_info()
            .users(&channel)
            .instrument(span)
            .await?;
        encode(&UsersAnswer {
            channel: &channel,
            total: users.len(),
            users: window_of(&channel, &users, w),
            skip: w.skip,
            limit: w.limit,
            viewer_total: None,
            viewers: None,
        })
    }
    .await;
    respond(result)
}

/// The users of a private channel: for the operator's token only, with who watches, never
/// cached.
async fn private_users(
    dispatcher: &Arc<Dispatcher>,
    channel: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| dispatcher.is_operator(t)) {
        let refusal = DispatchError::Private(format!(
            "channel {channel:?} is private: who is in it is shown only with the operator's              token (Authorization: Bearer <admin token>)"
        ));
        debug!(code = refusal.code(), "channel users refused: {refusal}");
        return refusal.into_response();
    }
    let result = async {
        let w = window(raw).map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        let directory = dispatcher.directory();
        let hosts = directory.hosts().await?;
        let (users, viewers) = tokio::join!(
            directory.channel_publishers(channel, &hosts),
            directory.channel_viewers(channel, &hosts)
        );
        let (users, viewers) = (users?, viewers?);
        encode(&UsersAnswer {
            channel,
            total: users.len(),
            users: window_of(channel, &users, w),
            skip: w.skip,
            limit: w.limit,
            viewer_total: Some(viewers.len()),
            viewers: Some(window_of(channel, &viewers, w)),
        })
    }
    .await;
    match result {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn encode(answer: &impl Serialize) -> Result<Vec<u8>, DispatchError> {
    serde_json::to_vec(answer)
        .map_err(|e| DispatchError::Internal(format!("cannot encode the answer: {e}")))
}

fn respond(result: Result<Vec<u8>, DispatchError>) -> Response {
    match result {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(CACHE_CONTROL),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            debug!(code = e.code(), "channel info refused: {e}");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory with one host that counts how often it is asked.
    #[derive(Default)]
    struct Counting {
        hosts: AtomicU32,
        counts: AtomicU32,
        members: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Directory for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
            self.hosts.fetch_add(1, Ordering::SeqCst);
            Ok(vec![HostEntry {
                id: "h".into(),
                public_url: String::new(),
                sub_path: "/sub/".into(),
                pub_path: "/pub".into(),
                subscribers: 0,
                publishers: 0,
                written_ms: 1,
                instance: String::new(),
            }])
        }
        async fn channel_counts(
            &self,
            channel: &str,
            hosts: &[HostEntry],
        ) -> Result<ChannelCounts, RegistryError> {
            let n = self.counts.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(ChannelCounts {
                subscribers: u64::from(n) * 10 + channel.len() as u64,
                publishers: hosts.len() as u64,
            })
        }
        async fn channel_publishers(
            &self,
            _: &str,
            _: &[HostEntry],
        ) -> Result<Vec<JoinedPublisher>, RegistryError> {
            self.members.fetch_add(1, Ordering::SeqCst);
            Ok(vec![JoinedPublisher {
                key: "sub:1".into(),
                user: r#"{"name":"ann"}"#.into(),
            }])
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_registry_is_asked_once_per_interval_and_channel() {
        let directory = Arc::new(Counting::default());
        let info = ChannelInfo::new(directory.clone(), Duration::from_millis(500));
        let a = info.counts("a").await.unwrap();
        assert_eq!(a, info.counts("a").await.unwrap());
        assert_eq!(info.users("a").await.unwrap().len(), 1);
        info.users("a").await.unwrap();
        info.counts("bb").await.unwrap();
        // One host lookup served the three loads.
        assert_eq!(directory.hosts.load(Ordering::SeqCst), 1);
        assert_eq!(directory.counts.load(Ordering::SeqCst), 2);
        assert_eq!(directory.members.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        let later = info.counts("a").await.unwrap();
        assert_ne!(later, a);
        assert_eq!(directory.hosts.load(Ordering::SeqCst), 2);
        assert_eq!(directory.counts.load(Ordering::SeqCst), 3);
    }
}
