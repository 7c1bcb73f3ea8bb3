//! Keeps a warning that may repeat with every message (a dead webhook endpoint, a slow
//! publish hook) from flooding the log: at most one line per interval, telling how many
//! were held back since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of warning's pace.
#[derive(Debug)]
pub struct Throttle {
    /// Shortest time between two lines.
    every: Duration,
    /// When the last line went out, and how many have been held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may go out now; `None` when this
    /// one is to be held back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            *held += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow(), Some(2));
        assert_eq!(t.allow(), None);
    }
}
