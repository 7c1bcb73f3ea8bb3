//! A small per-process cache of answers that cannot change faster than a known interval,
//! for the public channel endpoints ([`crate::dispatcher::channels`]) that every browser polls.
//!
//! Each key (a channel) holds one answer, fresh for `fresh_for` from when it was loaded:
//! hosts report their counts only every `host.report_interval_ms`, so asking the registry
//! more often would only return the same numbers at the cost of Redis round trips.
//!
//! * Concurrent misses for one key share one load (whoever asks first starts it; everyone
//!   who finds it still running waits for the same result), so a burst of polls for a
//!   channel costs the registry one round trip.
//! * A load that fails is handed to those that waited for it but not kept: the next request
//!   tries again.
//! * The number of keys is bounded. When the map is full, stale entries are dropped; when
//!   all of them are still fresh (more keys asked for within `fresh_for` than the bound), the
//!   new key's answer is loaded without being kept, so memory never grows past the bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use tokio::time::Instant;

/// A load's result and when it finished, shared by every caller waiting for it.
type Load<V, E> = Shared<BoxFuture<'static, (Result<V, E>, Instant)>>;

/// One key's answer, loaded or loading.
struct Entry<V, E> {
    /// When the load started: a load that nobody waits for any more (its callers went
    /// away) is given up once this is `fresh_for` old.
    started: Instant,
    /// The load, done or not.
    load: Load<V, E>,
}

impl<V: Clone, E: Clone> Entry<V, E> {
    /// Whether a request at `now` may use this entry: a load still running (waiting for it
    /// is cheaper than loading again), or a successful answer younger than `fresh_for`.
    fn usable(&self, now: Instant, fresh_for: Duration) -> bool {
        match self.load.peek() {
            None => true,
            Some((Ok(_), done)) => now < *done + fresh_for,
            Some((Err(_), _)) => false,
        }
    }

    /// Whether a sweep at `now` keeps this entry: fresh answers, and loads started less
    /// than `fresh_for` ago.
    fn worth_keeping(&self, now: Instant, fresh_for: Duration) -> bool {
        match self.load.peek() {
            None => now < self.started + fresh_for,
            Some(_) => self.usable(now, fresh_for),
        }
    }

    /// When a sweep could first drop this entry.
    fn stale_at(&self, fresh_for: Duration) -> Instant {
        match self.load.peek() {
            None => self.started + fresh_for,
            Some((_, done)) => *done + fresh_for,
        }
    }
}

/// The entries and the sweep schedule, under one lock.
struct State<V, E> {
    entries: HashMap<String, Entry<V, E>>,
    /// No kept entry goes stale before this, so a full map is not swept again until then
    /// (a sweep walks every entry).
    no_sweep_before: Instant,
}

/// Answers per key, each fresh for a fixed time, at most `capacity` keys.
pub struct FreshCache<V, E> {
    /// How long a loaded answer is served without asking again.
    fresh_for: Duration,
    /// Most keys kept at once.
    capacity: usize,
    state: Mutex<State<V, E>>,
}

impl<V, E> FreshCache<V, E>
where
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A cache whose answers are fresh for `fresh_for`, keeping at most `capacity` keys.
    pub fn new(fresh_for: Duration, capacity: usize) -> Self {
        Self {
            fresh_for,
            capacity,
            state: Mutex::new(State {
                entries: HashMap::new(),
                no_sweep_before: Instant::now(),
            }),
        }
    }

    /// `key`'s answer: the kept one while it is fresh (or still loading), else what `load`
    /// gives, kept for the next callers when it succeeds.
    pub async fn get<F, Fut>(&self, key: &str, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let shared = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            match state.entries.get(key) {
                Some(entry) if entry.usable(now, self.fresh_for) => entry.load.clone(),
                _ => {
                    // Creating the future runs none of it: nothing slow happens under the
                    // lock.
                    let fut = load();
                    let shared = async move { (fut.await, Instant::now()) }.boxed().shared();
                    self.keep(&mut state, key, shared.clone(), now);
                    shared
                }
            }
        };
        shared.await.0
    }

    /// Keeps `load` as `key`'s entry, unless the map is full of entries worth keeping.
    fn keep(&self, state: &mut State<V, E>, key: &str, load: Load<V, E>, now: Instant) {
        let entry = Entry { started: now, load };
        if let Some(slot) = state.entries.get_mut(key) {
            *slot = entry;
            return;
        }
        if state.entries.len() >= self.capacity {
            if now < state.no_sweep_before {
                return;
            }
            let fresh_for = self.fresh_for;
            state.entries.retain(|_, e| e.worth_keeping(now, fresh_for));
            state.no_sweep_before = state
                .entries
                .values()
                .map(|e| e.stale_at(fresh_for))
                .min()
                .unwrap_or(now);
            if state.entries.len() >= self.capacity {
                tracing::debug!(
                    capacity = self.capacity,
                    "cache full of fresh answers; this one is not kept"
                );
                return;
            }
        }
        state.entries.insert(key.to_owned(), entry);
    }

    /// How many keys are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const FRESH: Duration = Duration::from_millis(1000);

    /// A loader that counts its calls and answers `key:<call number>`.
    fn counting(
        calls: &Arc<AtomicU32>,
        key: &str,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<String, String>> {
        let calls = calls.clone();
        let key = key.to_owned();
        move || {
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(format!("{key}:{n}"))
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_while_fresh_and_reloaded_after() {
        let cache = FreshCache::<String, String>::new(FRESH, 10);
        let calls = Arc::new(AtomicU32::new(0));
        assert_eq!(
            cache.get("a", counting(&calls, "a")).await,
            Ok("a:1".into())
        );
        tokio::time::advance(FRESH - Duration::from_millis(1)).await;
        assert_eq!(
            cache.get("a", counting(&calls, "a")).await,
            Ok("a:1".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another key is its own entry.
        assert_eq!(
            cache.get("b", counting(&calls, "b")).await,
            Ok("b:2".into())
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            cache.get("a", counting(&calls, "a")).await,
            Ok("a:3".into())
        );
        assert_eq!(
            cache.get("a", counting(&calls, "a")).await,
            Ok("a:3".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_counts_from_the_end_of_the_load() {
        let cache = FreshCache::<u32, String>::new(FRESH, 10);
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok(1)
        };
        assert_eq!(cache.get("a", slow).await, Ok(1));
        // 800 ms after the start the answer is still fresh for 1000 ms.
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(cache.get("a", || async { Ok(2) }).await, Ok(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(cache.get("a", || async { Ok(3) }).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_kept() {
        let cache = FreshCache::<u32, String>::new(FRESH, 10);
        let failed = cache
            .get("a", || async { Err("redis down".to_owned()) })
            .await;
        assert_eq!(failed, Err("redis down".to_owned()));
        assert_eq!(cache.get("a", || async { Ok(7) }).await, Ok(7));
        assert_eq!(cache.get("a", || async { Ok(8) }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_load() {
        let cache = Arc::new(FreshCache::<u32, String>::new(FRESH, 10));
        let calls = Arc::new(AtomicU32::new(0));
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            waiters.push(tokio::spawn(async move {
                cache
                    .get("a", move || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(calls.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await
            }));
        }
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Ok(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A failed load is shared too, then forgotten.
        tokio::time::advance(FRESH).await;
        let (first, second) = tokio::join!(
            cache.get("a", || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err("timeout".to_owned())
            }),
            cache.get("a", || async { Ok(99) })
        );
        assert_eq!(
            (first, second),
            (Err("timeout".into()), Err("timeout".into()))
        );
        assert_eq!(cache.get("a", || async { Ok(5) }).await, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_keys_is_bounded() {
        let cache = FreshCache::<String, String>::new(FRESH, 3);
        let calls = Arc::new(AtomicU32::new(0));
        for key in ["a", "b"] {
            cache.get(key, counting(&calls, key)).await.unwrap();
        }
        cache
            .get("c", || async { Err("down".to_owned()) })
            .await
            .unwrap_err();
        assert_eq!(cache.len(), 3);
        // Full: the failed c makes room for d.
        assert_eq!(
            cache.get("d", counting(&calls, "d")).await,
            Ok("d:3".into())
        );
        assert_eq!(cache.len(), 3);
        // Full of fresh answers: e is answered but not kept, and asked again each time.
        assert_eq!(
            cache.get("e", counting(&calls, "e")).await,
            Ok("e:4".into())
        );
        assert_eq!(
            cache.get("e", counting(&calls, "e")).await,
            Ok("e:5".into())
        );
        assert_eq!(cache.len(), 3);
        // Kept keys still answer from the cache.
        tokio::time::advance(FRESH / 2).await;
        assert_eq!(
            cache.get("a", counting(&calls, "a")).await,
            Ok("a:1".into())
        );
        assert_eq!(
            cache.get("d", counting(&calls, "d")).await,
            Ok("d:3".into())
        );
        // Once they are stale, a new key sweeps them out.
        tokio::time::advance(FRESH / 2).await;
        assert_eq!(
            cache.get("f", counting(&calls, "f")).await,
            Ok("f:6".into())
        );
        assert_eq!(cache.len(), 1);
        for key in ["g", "h"] {
            cache.get(key, counting(&calls, key)).await.unwrap();
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get("f", counting(&calls, "f")).await,
            Ok("f:6".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_load_is_resumed_or_swept() {
        let cache = FreshCache::<u32, String>::new(FRESH, 1);
        // The only caller goes away while the load runs.
        let never = cache.get("a", || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(1)
        });
        assert!(tokio::time::timeout(Duration::from_millis(10), never)
            .await
            .is_err());
        assert_eq!(cache.len(), 1);
        // Within fresh_for, b finds the map full; after it, the abandoned load is swept.
        assert_eq!(cache.get("b", || async { Ok(2) }).await, Ok(2));
        assert_eq!(cache.len(), 1);
        tokio::time::advance(FRESH).await;
        assert_eq!(cache.get("b", || async { Ok(3) }).await, Ok(3));
        assert_eq!(cache.get("b", || async { Ok(4) }).await, Ok(3));
    }
}
