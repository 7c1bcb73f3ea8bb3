//! The per-channel cache of a worker: the last N messages as ready-to-send WebSocket frames,
//! and where the channel stands (epoch, last id), which is also the worker's resume point
//! towards the sidecar.

use std::collections::VecDeque;
use std::sync::Arc;

use chatup_wire::Position;

/// A message as subscribers receive it: a complete text frame, shared by every subscriber
/// queue and the cache, so a message is held once per worker whatever the audience.
pub type Frame = Arc<[u8]>;

#[derive(Debug, Clone)]
struct Cached {
    id: u64,
    frame: Frame,
}

/// Why a subscriber's resume point could not be honoured exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The channel's history was lost: ids restarted under a new epoch.
    EpochChanged,
    /// Messages after the resume point are no longer cached.
    HistoryTruncated,
}

impl Resync {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::HistoryTruncated => "history_truncated",
        }
    }
}

/// How much one channel's cache may hold: whichever bound is reached first evicts the
/// oldest messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// `chatup_cache_messages`.
    pub messages: usize,
    /// `chatup_cache_bytes`: frame bytes, so a few huge events cannot hold a worker's memory.
    pub bytes: usize,
}

impl From<usize> for CacheLimits {
    /// A bound on messages only.
    fn from(messages: usize) -> Self {
        Self {
            messages,
            bytes: usize::MAX,
        }
    }
}

#[derive(Debug)]
pub struct ChannelCache {
    /// 0 until the sidecar told us the channel's epoch (real epochs are never 0).
    epoch: u64,
    /// Highest id received in this epoch, kept even when the message itself is not.
    last_id: u64,
    entries: VecDeque<Cached>,
    limits: CacheLimits,
    /// Frame bytes held in `entries`.
    bytes: usize,
}

impl ChannelCache {
    pub fn new(limits: impl Into<CacheLimits>) -> Self {
        Self {
            epoch: 0,
            last_id: 0,
            entries: VecDeque::new(),
            limits: limits.into(),
            bytes: 0,
        }
    }

    /// Frame bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the cache has heard from the sidecar at all.
    pub fn is_known(&self) -> bool {
        self.epoch != 0
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Where this worker stands, to resume from after the relay comes back.
    pub fn position(&self) -> Option<Position> {
        self.is_known().then_some(Position {
            epoch: self.epoch,
            id: self.last_id,
        })
    }

    /// Forgets everything and starts `epoch` from id 0.
    pub fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.last_id = 0;
        self.entries.clear();
        self.bytes = 0;
    }

    /// Appends a message; `false` (and nothing stored) when the id is not newer than the last.
    pub fn push(&mut self, id: u64, frame: Frame) -> bool {
        if id <= self.last_id {
            return false;
        }
        self.last_id = id;
        if self.limits.messages == 0 || frame.len() > self.limits.bytes {
            // What is kept must run without a gap up to last_id, or a resume would skip
            // this message silently: keep nothing instead.
            self.entries.clear();
            self.bytes = 0;
            return true;
        }
        while self.entries.len() >= self.limits.messages
            || self.bytes + frame.len() > self.limits.bytes
        {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.frame.len(),
                None => break,
            }
        }
        self.bytes += frame.len();
        self.entries.push_back(Cached { id, frame });
        true
    }

    /// What a subscriber resuming from `since` (or connecting fresh, with `None`) must get:
    /// an optional resync notice and the frames to send, oldest first.
    pub fn replay(
        &self,
        since: Option<Position>,
    ) -> (Option<Resync>, impl Iterator<Item = (u64, &Frame)>) {
        let (resync, after) = match since {
            None => (None, 0),
            Some(p) if p.epoch != self.epoch => (Some(Resync::EpochChanged), 0),
            Some(p) if p.id >= self.last_id => (None, p.id),
            Some(p) => {
                // The cache continues `since` when it holds id p.id + 1, or when nothing
                // after p.id was ever dropped from it.
                let first_kept = self.entries.front().map_or(self.last_id + 1, |c| c.id);
                if first_kept <= p.id + 1 {
                    (None, p.id)
                } else {
                    (Some(Resync::HistoryTruncated), 0)
                }
            }
        };
        let frames = self
            .entries
            .iter()
            .filter(move |c| c.id > after)
            .map(|c| (c.id, &c.frame));
        (resync, frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64) -> Frame {
        Arc::from(id.to_string().into_bytes())
    }

    fn cache_with(capacity: usize, epoch: u64, ids: std::ops::RangeInclusive<u64>) -> ChannelCache {
        let mut c = ChannelCache::new(capacity);
        c.reset(epoch);
        for id in ids {
            assert!(c.push(id, frame(id)));
        }
        c
    }

    fn replayed(c: &ChannelCache, since: Option<Position>) -> (Option<Resync>, Vec<String>) {
        let (resync, frames) = c.replay(since);
        let ids = frames
            .map(|(_, f)| String::from_utf8(f.to_vec()).unwrap())
            .collect();
        (resync, ids)
    }

    fn at(epoch: u64, id: u64) -> Option<Position> {
        Some(Position { epoch, id })
    }

    #[test]
    fn keeps_the_last_n_and_refuses_old_ids() {
        let mut c = cache_with(3, 7, 1..=5);
        assert_eq!(
            replayed(&c, None),
            (None, vec!["3".into(), "4".into(), "5".into()])
        );
        assert!(!c.push(5, frame(5)));
        assert!(!c.push(2, frame(2)));
        assert_eq!(c.position(), at(7, 5));
    }

    #[test]
    fn resume_sends_exactly_what_was_missed() {
        let c = cache_with(10, 7, 1..=5);
        assert_eq!(replayed(&c, at(7, 3)), (None, vec!["4".into(), "5".into()]));
        assert_eq!(replayed(&c, at(7, 5)), (None, vec![]));
        // A client ahead of this worker (it came from a faster one) gets nothing old.
        assert_eq!(replayed(&c, at(7, 9)), (None, vec![]));
        assert_eq!(replayed(&c, at(7, 0)).1.len(), 5);
    }

    #[test]
    fn resume_outside_the_cache_or_epoch_is_flagged() {
        let c = cache_with(3, 7, 1..=5);
        // Ids 3..5 kept: resuming after 2 still works, after 1 does not.
        assert_eq!(replayed(&c, at(7, 2)).0, None);
        assert_eq!(
            replayed(&c, at(7, 1)),
            (
                Some(Resync::HistoryTruncated),
                vec!["3".into(), "4".into(), "5".into()]
            )
        );
        assert_eq!(replayed(&c, at(8, 5)).0, Some(Resync::EpochChanged));
        assert_eq!(replayed(&c, at(8, 5)).1.len(), 3);
    }

    #[test]
    fn a_zero_capacity_cache_still_tracks_the_position() {
        let mut c = cache_with(0, 7, 1..=4);
        assert_eq!(c.position(), at(7, 4));
        assert_eq!(replayed(&c, at(7, 4)), (None, vec![]));
        assert_eq!(replayed(&c, at(7, 3)).0, Some(Resync::HistoryTruncated));
        c.reset(9);
        assert_eq!(c.position(), at(9, 0));
    }

    #[test]
    fn bytes_bound_evicts_oldest_and_never_leaves_a_gap() {
        let limits = CacheLimits {
            messages: 10,
            bytes: 5,
        };
        let mut c = ChannelCache::new(limits);
        c.reset(7);
        // Frames "1".."9" are 1 byte, "10".. are 2 bytes.
        for id in 1..=9 {
            assert!(c.push(id, frame(id)));
        }
        assert_eq!(c.bytes(), 5);
        assert_eq!(replayed(&c, None).1, vec!["5", "6", "7", "8", "9"]);
        assert!(c.push(10, frame(10)));
        assert_eq!(c.bytes(), 5);
        assert_eq!(replayed(&c, None).1, vec!["7", "8", "9", "10"]);
        assert_eq!(replayed(&c, at(7, 6)).0, None);
        assert_eq!(replayed(&c, at(7, 5)).0, Some(Resync::HistoryTruncated));

        // A frame larger than the bound is not kept, and neither is anything before it.
        assert!(c.push(11, Arc::from(&b"too big"[..])));
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.position(), at(7, 11));
        assert_eq!(
            replayed(&c, at(7, 10)),
            (Some(Resync::HistoryTruncated), vec![])
        );
        assert_eq!(replayed(&c, at(7, 11)), (None, vec![]));
        assert!(c.push(12, frame(12)));
        assert_eq!(replayed(&c, at(7, 11)), (None, vec!["12".to_string()]));
    }

    #[test]
    fn unknown_until_the_sidecar_answers() {
        let c = ChannelCache::new(5);
        assert!(!c.is_known());
        assert_eq!(c.position(), None);
    }
}
