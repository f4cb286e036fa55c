//! Delivery checks: sequence numbers per (room, publisher) seen by one receiver, and
//! the protocol's per-room offsets. Both are a few words of state per stream, so a
//! receiver can check every message it gets.

/// What one observed sequence number meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// Exactly the next one.
    Next,
    /// Ahead of the next one: `from..=to` were skipped (lost, unless they were never
    /// published).
    Gap { from: u64, to: u64 },
    /// The same as the last one.
    Duplicate,
    /// Behind the last one.
    Reordered { last: u64 },
}

/// Checks that a stream's sequence numbers (starting at 1) increase by exactly 1.
#[derive(Debug, Clone, Default)]
pub struct SeqCheck {
    /// Highest sequence number seen; 0 before the first.
    pub last: u64,
    /// Messages that moved `last` forward: the distinct ones, when nothing was reordered.
    pub advanced: u64,
    /// Sequence numbers skipped over by gaps.
    pub gaps: u64,
    /// Messages equal to the last one.
    pub duplicated: u64,
    /// Messages behind the last one.
    pub reordered: u64,
}

impl SeqCheck {
    pub fn observe(&mut self, q: u64) -> SeqEvent {
        let next = self.last + 1;
        if q == next {
            self.last = q;
            self.advanced += 1;
            SeqEvent::Next
        } else if q > next {
            self.gaps += q - next;
            self.last = q;
            self.advanced += 1;
            SeqEvent::Gap {
                from: next,
                to: q - 1,
            }
        } else if q == self.last {
            self.duplicated += 1;
            SeqEvent::Duplicate
        } else {
            self.reordered += 1;
            SeqEvent::Reordered { last: self.last }
        }
    }

    /// Messages of a stream of which `published` were accepted by the server that
    /// this receiver never got, counting gaps and the missing tail alike.
    /// Publications the server refused leave gaps that are not loss: this counts
    /// against what was accepted, so they are not counted.
    pub fn lost(&self, published: u64) -> u64 {
        published.saturating_sub(self.advanced)
    }
}

/// Checks that a room's protocol offsets increase by exactly 1 (when present).
#[derive(Debug, Clone, Default)]
pub struct OffsetCheck {
    /// Last offset seen; 0 before the first (offsets start at 1).
    pub last: u64,
    /// Offsets that were not the last one plus 1.
    pub errors: u64,
}

impl OffsetCheck {
    /// Observe a publication's offset; returns the previous one when the step is
    /// not +1. Offset 0 means the room keeps no history and is not checked.
    pub fn observe(&mut self, offset: u64) -> Option<u64> {
        if offset == 0 {
            return None;
        }
        let prev = self.last;
        self.last = offset;
        if prev != 0 && offset != prev + 1 {
            self.errors += 1;
            return Some(prev);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut c = SeqCheck::default();
        for q in 1..=100 {
            assert_eq!(c.observe(q), SeqEvent::Next);
        }
        assert_eq!(
            (c.gaps, c.duplicated, c.reordered, c.lost(100)),
            (0, 0, 0, 0)
        );
    }
}
