//! Reconnect delays for the relay: the first retry after a broken connection at once, then
//! exponential with jitter up to a low ceiling.
//!
//! Why these numbers. A chat host whose workers have no relay is down for its viewers: it
//! delivers nothing and every second of retry delay left after the sidecar is back widens
//! the gap they must be resumed over (past `history.size` it turns into a
//! `history_truncated` resync). A failed attempt costs little: one `connect()` on a local
//! Unix socket, refused or missing at once, and an info-level log line. So:
//! - the first retry after a connection breaks goes at once: a sidecar that dropped one
//!   worker (its queue overflowed) or was restarted in place is usually there again;
//! - later ones wait 100 ms doubling, each jittered between half and all of its step, so
//!   the workers of a host (whose resubscribes all land on the one sidecar and its
//!   broker) do not come back in the same instant;
//! - the step stops at 1 s: an outage of any length ends at most 1 s after the sidecar is
//!   back, for a cost of about one refused `connect()` per second per worker.
//!
//! Only a connection that stayed up [`HEALTHY_AFTER_MS`] earns the immediate retry again
//! ([`Backoff::reset`]); a sidecar that accepts and drops at once (a crash loop) meets the
//! growing delays, not a busy loop.

/// The first delayed step.
const MIN_MS: u64 = 100;
/// The largest step: bounds how long after the sidecar's return a worker may still wait.
const MAX_MS: u64 = 1_000;
/// A connection that lived this long was healthy: the next failure starts over (at once).
pub const HEALTHY_AFTER_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct Backoff {
    /// Attempts that failed (or connections that broke early) since the last reset.
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt; `random` is any number (it supplies the jitter).
    /// 0 after a reset (retry at once), then between half the step and the step, the step
    /// doubling from `MIN_MS` to `MAX_MS`.
    pub fn next_delay_ms(&mut self, random: u64) -> u64 {
        let failures = self.failures;
        self.failures = self.failures.saturating_add(1);
        if failures == 0 {
            return 0;
        }
        let step = MIN_MS
            .saturating_mul(1u64 << (failures - 1).min(16))
            .min(MAX_MS);
        step / 2 + random % (step / 2 + 1)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delays of `n` attempts in a row with this jitter source.
    fn delays(b: &mut Backoff, n: usize, random: impl Fn(usize) -> u64) -> Vec<u64> {
        (0..n).map(|i| b.next_delay_ms(random(i))).collect()
    }

    #[test]
    fn the_first_retry_is_immediate_whatever_the_jitter() {
        for random in [0, 1, 49, 50, u64::MAX] {
            assert_eq!(Backoff::default().next_delay_ms(random), 0, "{random}");
        }
    }

    #[test]
    fn later_retries_double_from_100_ms_to_a_1_s_ceiling() {
        // The bottom of each step (no jitter), then its top (the largest jitter, step / 2).
        let low = delays(&mut Backoff::default(), 8, |_| 0);
        let top = delays(&mut Backoff::default(), 8, |i| {
            [0, 50, 100, 200, 400, 500, 500, 500][i]
        });
        assert_eq!(low, [0, 50, 100, 200, 400, 500, 500, 500]);
        assert_eq!(top, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn every_delay_stays_within_its_step_for_any_jitter() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_ms(12345), 0);
        let mut step = MIN_MS;
        for attempt in 1..40u64 {
            let random = attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let d = b.next_delay_ms(random);
            assert!(
                (step / 2..=step).contains(&d),
                "attempt {attempt}: {d} ms outside {}..={step}",
                step / 2
            );
            step = (step * 2).min(MAX_MS);
        }
    }

    #[test]
    fn many_failures_do_not_overflow_and_stay_at_the_ceiling() {
        let mut b = Backoff {
            failures: u32::MAX - 1,
        };
        for _ in 0..3 {
            let d = b.next_delay_ms(7);
            assert!((MAX_MS / 2..=MAX_MS).contains(&d), "{d}");
        }
    }

    #[test]
    fn a_reset_brings_back_the_immediate_retry() {
        let mut b = Backoff::default();
        delays(&mut b, 6, |_| 3);
        assert!(b.next_delay_ms(0) >= MAX_MS / 2);
        b.reset();
        assert_eq!(b.next_delay_ms(999), 0);
        assert_eq!(b.next_delay_ms(0), MIN_MS / 2);
    }
}
