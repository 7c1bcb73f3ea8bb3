//! Frame order at the broker for one WebSocket publisher.
//!
//! A `/pub` session checks up to 64 frames at once (token, plugins, their Redis look-ups),
//! and those checks finish in any order. The ids a channel gives must still follow the
//! frames, as a chatter's messages appear in the order they were typed: each publish takes
//! a [`Turn`] in frame order and hands its message to the broker only after the one
//! before it has, so the broker steps (one Redis script each, pipelined on one connection)
//! leave in frame order while their round trips still overlap.

use std::future::Future;
use std::task::Poll;

use tokio::sync::oneshot;

/// Gives out turns in the order publishes are read.
#[derive(Debug, Default)]
pub struct Turns {
    /// Completed (or dropped) once the latest publish has been handed to the broker.
    latest: Option<oneshot::Receiver<()>>,
}

/// One publish's place in the order. Dropping it, as a refused publish does, lets the
/// next one go.
#[derive(Debug)]
pub struct Turn {
    /// The previous publish's handover.
    previous: Option<oneshot::Receiver<()>>,
    /// Tells the next publish that this one was handed over (by being dropped).
    handed_over: oneshot::Sender<()>,
}

impl Turns {
    /// The turn after every turn given so far.
    pub fn take_next(&mut self) -> Turn {
        let (handed_over, latest) = oneshot::channel();
        Turn {
            previous: self.latest.replace(latest),
            handed_over,
        }
    }
}

impl Turn {
    /// Waits for the previous publish's handover, then runs `step`, the broker step, and
    /// lets the next publish go as soon as the step's first poll has handed the message to
    /// the broker (the memory broker publishes then; the Redis broker queues its script
    /// on the connection, whose commands leave in queue order). Only when that queue is
    /// full (thousands of commands waiting: Redis is far behind) can a later step overtake.
    pub async fn take<F: Future>(self, step: F) -> F::Output {
        if let Some(previous) = self.previous {
            // An error only means the previous publish was dropped: its turn is over too.
            let _ = previous.await;
        }
        let mut step = std::pin::pin!(step);
        // Unconstrained: a session polls many publishes at once, and once the task's
        // cooperative budget is spent tokio would make even a free queue look full, so the
        // first poll could return without having queued anything.
        let first = futures_util::poll!(tokio::task::unconstrained(step.as_mut()));
        drop(self.handed_over);
        match first {
            Poll::Ready(output) => output,
            Poll::Pending => step.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn steps_run_in_turn_order_whatever_order_their_checks_end() {
        let mut turns = Turns::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Publish 0's checks take longest, publish 3's none.
        for (i, check) in [30u64, 20, 10, 0].into_iter().enumerate() {
            let turn = turns.take_next();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(check)).await;
                turn.take(async move { order.lock().unwrap().push(i) })
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_dropped_turn_lets_the_next_one_go() {
        let mut turns = Turns::default();
        let refused = turns.take_next();
        let next = turns.take_next();
        drop(refused);
        let out = tokio::time::timeout(Duration::from_secs(1), next.take(async { 7 })).await;
        assert_eq!(out.ok(), Some(7));
    }

    #[tokio::test]
    async fn the_next_goes_once_the_step_is_handed_over_not_finished() {
        let mut turns = Turns::default();
        let first = turns.take_next();
        let second = turns.take_next();
        let (finish, finished) = oneshot::channel::<()>();
        // The first step is handed over (first poll) but waits for its answer.
        let slow = tokio::spawn(first.take(async move {
            let _ = finished.await;
        }));
        let out = tokio::time::timeout(Duration::from_secs(1), second.take(async { 2 })).await;
        assert_eq!(out.ok(), Some(2));
        finish.send(()).unwrap();
        slow.await.unwrap();
    }
}
