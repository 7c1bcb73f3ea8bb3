//! The `webhook` plugin: a chat message containing one of `webhook.triggers` (matched like
//! the blacklist, see [`super::words`]) is POSTed to `webhook.url` as JSON in Slack's
//! incoming-webhook format, so a moderator sees it in a Slack channel (or any service that
//! takes that JSON). With `webhook.broadcast = false` the message is also kept from the
//! channel: the publisher gets an ack with `withheld: true`.
//!
//! The body:
//!
//! ```json
//! {"text": "*ann* in #room: the message",
//!  "chatup": {"channel": "room", "user": {"name": "ann"}, "sub": "u1",
//!             "msg": "the message", "trigger": "word", "t": 1732200000000}}
//! ```
//!
//! `text` is what Slack shows (`&`, `<`, `>` escaped as Slack asks; the name is `_public.name`,
//! else `sub`); `chatup` carries the details for other receivers, and Slack ignores it.
//!
//! Posting never slows publishing: the plugin only queues the post (`webhook.queue_size`;
//! when full, the post is dropped, counted and logged), and one background task sends them
//! in order, each POST bounded by `webhook.timeout_ms`, retried `webhook.retries` times with
//! a doubling delay on network errors, 5xx and 429 (honouring `Retry-After`), and not on
//! other answers (a 4xx will not get better). At shutdown queued posts get [`GRACE`] to go
//! out. The URL is never logged whole: a Slack webhook URL is a secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::outbound;
use super::throttle::Throttle;
use super::words::Words;
use super::{Draft, Plugin, PluginSetupError};
use crate::config::WebhookConfig;
use crate::message::{now_ms, Body};
use crate::publish_error::PublishError;

/// How long queued posts may still go out after shutdown began.
pub const GRACE: Duration = Duration::from_secs(2);
/// The delay before the first retry; doubled for each next one, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// At most one warning per this long about dropped or failed posts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What became of the posts, for logs and metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Accepted by the endpoint (2xx).
    pub sent: AtomicU64,
    /// Given up on after the retries, or refused by the endpoint.
    pub failed: AtomicU64,
    /// Not queued because the queue was full (or lost at shutdown).
    pub dropped: AtomicU64,
}

/// The plugin: matches triggers and queues posts.
pub struct Webhook {
    /// The trigger words.
    triggers: Words,
    /// `webhook.broadcast`: whether a triggering message still goes to the channel.
    broadcast: bool,
    /// Posts waiting for the sender task.
    queue: mpsc::Sender<Value>,
    /// Shared with the sender task.
    stats: Arc<WebhookStats>,
    /// Paces the "queue full" warning.
    dropped_log: Throttle,
}

impl Webhook {
    /// Builds the plugin and starts its sender task, which stops [`GRACE`] after
    /// `shutdown` at the latest.
    pub fn start(
        config: &WebhookConfig,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, PluginSetupError> {
        let setup_error = |message: String| PluginSetupError::Plugin {
            name: "webhook",
            message,
        };
        let triggers = Words::new(&config.triggers).map_err(|e| setup_error(e.to_string()))?;
        let client = outbound::client(Duration::from_millis(config.timeout_ms))
            .map_err(|e| setup_error(format!("cannot build the HTTP client: {e}")))?;
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| setup_error(format!("webhook.url is not a valid URL: {e}")))?;
        let (queue, posts) = mpsc::channel(config.queue_size.max(1));
        let stats = Arc::new(WebhookStats::default());
        let sender = Sender {
            client,
            endpoint: endpoint(&url),
            url,
            retries: config.retries,
            stats: stats.clone(),
            failed_log: Throttle::new(LOG_EVERY),
        };
        info!(
            endpoint = sender.endpoint,
            triggers = triggers.len(),
            broadcast = config.broadcast,
            "webhook ready"
        );
        tracker.spawn(sender.run(posts, shutdown.clone()));
        Ok(Arc::new(Self {
            triggers,
            broadcast: config.broadcast,
            queue,
            stats,
            dropped_log: Throttle::new(LOG_EVERY),
        }))
    }

    /// What became of the posts so far.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

#[async_trait]
impl Plugin for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn check(&self, draft: &mut Draft<'_>) -> Result<(), PublishError> {
        let Body::Text(text) = &draft.body else {
            return Ok(());
        };
        let Some(found) = self.triggers.find(text) else {
            return Ok(());
        };
        let post = slack_payload(
            draft.channel,
            &draft.identity.user,
            draft.identity.sub.as_deref(),
            text,
            found.word,
            now_ms(),
        );
        debug!(
            channel = draft.channel,
            trigger = found.word,
            "webhook triggered"
        );
        if self.queue.try_send(post).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.dropped_log.allow() {
                warn!(
                    dropped = self.stats.dropped.load(Ordering::Relaxed),
                    held_back = held,
                    "webhook queue full (webhook.queue_size); post dropped: the endpoint is \
                     slow or down"
                );
            }
        }
        if !self.broadcast {
            draft.broadcast = false;
        }
        Ok(())
    }
}

/// The one task that sends the posts.
struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Scheme, host and port of `url`, for logs (the path of a Slack URL is a secret).
    endpoint: String,
    /// `webhook.retries`.
    retries: u32,
    stats: Arc<WebhookStats>,
    /// Paces the "post failed" warning.
    failed_log: Throttle,
}

impl Sender {
    /// Sends queued posts one by one until shutdown; then the ones queued get [`GRACE`].
    async fn run(self, mut posts: mpsc::Receiver<Value>, shutdown: CancellationToken) {
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(GRACE).await;
        };
        tokio::pin!(grace_over);
        loop {
            let post = tokio::select! {
                biased;
                _ = &mut grace_over => break,
                post = posts.recv() => match post {
                    Some(post) => post,
                    None => break,
                },
                _ = shutdown.cancelled(), if posts.is_empty() => break,
            };
            tokio::select! {
                _ = self.deliver(&post) => {}
                _ = &mut grace_over => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let left = posts.len();
        if left > 0 {
            self.stats.dropped.fetch_add(left as u64, Ordering::Relaxed);
            warn!(
                left,
                "webhook: shutting down; posts still queued are dropped"
            );
        }
    }

    /// One post, with its retries.
    async fn deliver(&self, post: &Value) {
        let mut delay = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            let (retry, retry_after, what) =
                match self.client.post(self.url.clone()).json(post).send().await {
                    Ok(answer) if answer.status().is_success() => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        debug!(endpoint = self.endpoint, attempt, "webhook post sent");
                        return;
                    }
                    Ok(answer) => {
                        let status = answer.status();
                        let retry =
                            status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                        (
                            retry,
                            retry_after(answer.headers()),
                            format!("answered {status}"),
                        )
                    }
                    Err(e) => (true, None, format!("failed: {}", e.without_url())),
                };
            if !retry || attempt >= self.retries {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = self.failed_log.allow() {
                    warn!(
                        endpoint = self.endpoint,
                        attempts = attempt + 1,
                        held_back = held,
                        "webhook post {what}; given up"
                    );
                }
                return;
            }
            attempt += 1;
            let wait = retry_after.unwrap_or(delay).max(delay).min(RETRY_AFTER_MAX);
            debug!(
                endpoint = self.endpoint,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "webhook post {what}; retrying"
            );
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not worth parsing here).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// `scheme://host[:port]` of `url`.
fn endpoint(url: &reqwest::Url) -> String {
    match url.port() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

/// Escapes what Slack's message formatting reserves (`&`, `<`, `>`).
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The JSON posted for a message: Slack's `text`, and the details under `chatup`.
///
/// `user` is the publisher's `_public` claim as encoded JSON (an object).
pub fn slack_payload(
    channel: &str,
    user: &str,
    sub: Option<&str>,
    text: &str,
    trigger: &str,
    t_ms: u64,
) -> Value {
    let user: Value = serde_json::from_str(user).unwrap_or_else(|_| json!({}));
    let name = user
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .or(sub)
        .unwrap_or("someone");
    json!({
        "text": format!(
            "*{}* in #{}: {}",
            slack_escape(name),
            slack_escape(channel),
            slack_escape(text)
        ),
        "chatup": {
            "channel": channel,
            "user": user,
            "sub": sub,
            "msg": text,
            "trigger": trigger,
            "t": t_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_names_the_user_and_channel_and_escapes() {
        let p = slack_payload(
            "room.1",
            r#"{"name":"<Ann & co>","avatar":"a.png"}"#,
            Some("u1"),
            "if a < b && c > d: <!channel>",
            "channel",
            1_732_200_000_000,
        );
        assert_eq!(
            p["text"],
            "*&lt;Ann &amp; co&gt;* in #room.1: if a &lt; b &amp;&amp; c &gt; d: &lt;!channel&gt;"
        );
        assert_eq!(
            p["chatup"],
            json!({
                "channel": "room.1",
                "user": {"name": "<Ann & co>", "avatar": "a.png"},
                "sub": "u1",
                "msg": "if a < b && c > d: <!channel>",
                "trigger": "channel",
                "t": 1_732_200_000_000u64,
            })
        );
        // Only `text` and `chatup`: no Slack field (channel, username) that a legacy
        // webhook would act on.
        assert_eq!(p.as_object().unwrap().len(), 2);
    }

    #[test]
    fn the_name_falls_back_to_sub_then_someone() {
        let p = slack_payload("r", r#"{"name":"  "}"#, Some("u7"), "hi", "hi", 1);
        assert_eq!(p["text"], "*u7* in #r: hi");
        let p = slack_payload("r", "{}", None, "hi", "hi", 1);
        assert_eq!(p["text"], "*someone* in #r: hi");
        assert_eq!(p["chatup"]["sub"], Value::Null);
        let p = slack_payload("r", r#"{"name":5}"#, None, "hi", "hi", 1);
        assert_eq!(p["text"], "*someone* in #r: hi");
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_endpoint_hides_the_path() {
        let url = reqwest::Url::parse("https://hooks.slack.com/services/T0/B0/secret").unwrap();
        assert_eq!(endpoint(&url), "https://hooks.slack.com");
        let url = reqwest::Url::parse("http://127.0.0.1:9000/x?token=1").unwrap();
        assert_eq!(endpoint(&url), "http://127.0.0.1:9000");
    }
}
