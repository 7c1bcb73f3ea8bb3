//! Reconnect delays for the relay: exponential with jitter, so the workers of a host (and
//! the hosts of a fleet) do not hammer a sidecar that is coming back all at once.

const MIN_MS: u64 = 100;
const MAX_MS: u64 = 5_000;
/// A connection that lived this long was healthy: the next failure starts over from MIN_MS.
pub const HEALTHY_AFTER_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt; `random` is any number (it supplies the jitter).
    pub fn next_delay_ms(&mut self, random: u64) -> u64 {
        let ceiling = MIN_MS
            .saturating_mul(1u64 << self.failures.min(16))
            .min(MAX_MS);
        self.failures = self.failures.saturating_add(1);
        // Between half the ceiling and the ceiling.
        ceiling / 2 + random % (ceiling / 2 + 1)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let firsts: Vec<u64> = (0..10).map(|_| b.next_delay_ms(0)).collect();
        assert_eq!(firsts[0], MIN_MS / 2);
        assert!(firsts.windows(2).all(|w| w[0] <= w[1]), "{firsts:?}");
        assert!(*firsts.last().unwrap() <= MAX_MS);
        assert!(b.next_delay_ms(0) >= MAX_MS / 2);
        b.reset();
        assert!(b.next_delay_ms(7) <= MIN_MS);
    }
}
