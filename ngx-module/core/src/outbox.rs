//! A subscriber's queue of frames not yet written to its socket.

use std::collections::VecDeque;

use crate::cache::Frame;

#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes queued and not yet written; what the slow-consumer limit is checked against.
    unsent: usize,
}

impl Outbox {
    pub fn push(&mut self, frame: Frame) {
        self.unsent += frame.len();
        self.frames.push_back(frame);
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// The unwritten part of the front frame.
    pub fn front(&self) -> &[u8] {
        self.frames
            .front()
            .and_then(|f| f.get(self.written..))
            .unwrap_or(&[])
    }

    /// Whether more than one frame waits, so that coalescing them saves writes.
    pub fn has_several(&self) -> bool {
        self.frames.len() > 1
    }

    /// Copies unwritten bytes, oldest first, into `buf` until it holds `limit` bytes.
    pub fn gather(&self, buf: &mut Vec<u8>, limit: usize) {
        let mut skip = self.written;
        for frame in &self.frames {
            let room = limit.saturating_sub(buf.len());
            if room == 0 {
                break;
            }
            let rest = frame.get(skip..).unwrap_or(&[]);
            buf.extend_from_slice(&rest[..rest.len().min(room)]);
            skip = 0;
        }
    }

    /// Marks `n` bytes (as handed out by `front` or `gather`) as written.
    pub fn consume(&mut self, mut n: usize) {
        self.unsent = self.unsent.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.frames.pop_front();
            self.written = 0;
        }
        // An idle subscriber keeps no queue storage (a replay may have grown it a lot).
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// The queued frames, oldest first (a long poll answers with them, unwritten).
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter()
    }

    /// Forgets everything queued.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Drops every frame not started yet, keeping the rest of a half-written one so the
    /// stream stays well-framed.
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.written > 0);
        self.frames.truncate(keep);
        self.unsent = self.front().len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn f(bytes: &[u8]) -> Frame {
        Arc::from(bytes)
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbox::default();
        o.push(f(b"abc"));
        o.push(f(b"defg"));
        assert_eq!(o.unsent(), 7);
        assert_eq!(o.front(), b"abc");
        o.consume(2);
        assert_eq!(o.front(), b"c");
        let mut buf = Vec::new();
        o.gather(&mut buf, 4);
        assert_eq!(buf, b"cdef");
        o.consume(4);
        assert_eq!(o.front(), b"g");
        assert_eq!(o.unsent(), 1);
        o.consume(1);
        assert!(o.is_empty());
        assert_eq!(o.unsent(), 0);
    }

    #[test]
    fn a_drained_outbox_holds_no_storage() {
        let mut o = Outbox::default();
        for _ in 0..100 {
            o.push(f(b"abc"));
        }
        o.consume(150);
        assert!(o.frames.capacity() >= 50);
        o.consume(150);
        assert!(o.is_empty());
        assert_eq!(o.frames.capacity(), 0);
    }

    #[test]
    fn dropping_keeps_a_half_written_frame() {
        let mut o = Outbox::default();
        o.push(f(b"abc"));
        o.push(f(b"def"));
        o.consume(1);
        o.drop_unstarted();
        assert_eq!(o.front(), b"bc");
        assert_eq!(o.unsent(), 2);
        assert!(!o.has_several());

        let mut fresh = Outbox::default();
        fresh.push(f(b"abc"));
        fresh.drop_unstarted();
        assert!(fresh.is_empty());
        assert_eq!(fresh.unsent(), 0);
    }
}
