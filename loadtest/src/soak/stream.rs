//! One member's check of its room's stream across reconnects: offsets must follow
//! each other exactly (loss, repeats, order), and no publisher's sequence may repeat
//! or go back (the same publication under two offsets).

use crate::check::{SeqCheck, SeqEvent};
use crate::client::Position;
use crate::stamp::Stamp;

/// What one publication meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The next offset.
    Next,
    /// Offsets `from..=to` were skipped: lost.
    Lost { from: u64, to: u64 },
    /// The member's position again.
    Duplicate,
    /// Behind the member's position.
    Reordered { last: u64 },
    /// A new offset, but its publisher's sequence number `q` was seen already
    /// (`q == last`) or is behind `last`.
    Republished { publisher: u32, q: u64, last: u64 },
    /// A new offset without a stamp of this run's members.
    Foreign,
}

/// A member's position in its room and what it has seen, across reconnects.
#[derive(Debug, Default)]
pub(crate) struct StreamCheck {
    /// The epoch of the first subscription.
    pub first_epoch: String,
    /// The epoch of the position; `offsets.last` is its offset.
    pub epoch: String,
    /// The room's offsets: `gaps` are the publications lost, `duplicated` and
    /// `reordered` the repeats.
    pub offsets: SeqCheck,
    /// One check per publisher of the room, by its slot; `None` until its first
    /// publication since the start or since a failed recovery.
    stamps: Vec<Option<SeqCheck>>,
    /// Publications seen again under a new offset, or behind a later one of
    /// their publisher.
    pub stamp_duplicated: u64,
    pub stamp_reordered: u64,
}

impl StreamCheck {
    /// A check of a room with `publishers` publishers (slots `0..publishers`).
    pub fn new(publishers: usize) -> Self {
        StreamCheck {
            stamps: vec![None; publishers],
            ..StreamCheck::default()
        }
    }

    /// Start at the position of the first subscription.
    pub fn start(&mut self, offset: u64, epoch: &str) {
        self.first_epoch = epoch.to_owned();
        self.restart(offset, epoch);
    }

    /// Go on from the room's position after `recovered:false`: what was missed
    /// was announced, not lost, and sequences start afresh.
    pub fn restart(&mut self, offset: u64, epoch: &str) {
        self.epoch = epoch.to_owned();
        self.offsets.last = offset;
        self.stamps.iter_mut().for_each(|s| *s = None);
    }

    /// Where to recover from.
    pub fn position(&self) -> Position {
        Position {
            offset: self.offsets.last,
            epoch: self.epoch.clone(),
        }
    }

    /// Check one publication, live or recovered. A repeated offset is not checked
    /// further; a new one is checked against its publisher's sequence too.
    pub fn observe(&mut self, offset: u64, stamp: Option<Stamp>) -> Seen {
        let seen = match self.offsets.observe(offset) {
            SeqEvent::Next => Seen::Next,
            SeqEvent::Gap { from, to } => Seen::Lost { from, to },
            SeqEvent::Duplicate => return Seen::Duplicate,
            SeqEvent::Reordered { last } => return Seen::Reordered { last },
        };
        let Some(stamp) = stamp.filter(|s| (s.s as usize) < self.stamps.len()) else {
            return Seen::Foreign;
        };
        let (publisher, q) = (stamp.s, stamp.q);
        let check = self.stamps[publisher as usize].get_or_insert_with(|| SeqCheck {
            last: q.saturating_sub(1),
            ..SeqCheck::default()
        });
        // Gaps are not loss here: offsets count loss, and a publication whose
        // connection dropped before its ack may never have been taken.
        let republished = match check.observe(q) {
            SeqEvent::Next | SeqEvent::Gap { .. } => return seen,
            SeqEvent::Duplicate => {
                self.stamp_duplicated += 1;
                Seen::Republished {
                    publisher,
                    q,
                    last: q,
                }
            }
            SeqEvent::Reordered { last } => {
                self.stamp_reordered += 1;
                Seen::Republished { publisher, q, last }
            }
        };
        // A gap is the first thing to report.
        match seen {
            Seen::Lost { .. } => seen,
            _ => republished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(s: u32, q: u64) -> Option<Stamp> {
        Some(Stamp { s, q, t: 0 })
    }

    #[test]
    fn follows_offsets_across_recovery_and_restarts_after_a_failed_one() {
        let mut c = StreamCheck::new(2);
        c.start(5, "e1");
        assert_eq!(c.observe(6, stamp(0, 1)), Seen::Next);
        assert_eq!(c.observe(7, stamp(1, 1)), Seen::Next);
        // Recovered from 7: the next ones carry on.
        assert_eq!(
            c.position(),
            Position {
                offset: 7,
                epoch: "e1".into()
            }
        );
        assert_eq!(c.observe(8, stamp(0, 2)), Seen::Next);
        // Recovery failed: the room is at 20 now; 9..=20 are not lost.
        c.restart(20, "e1");
        assert_eq!(c.observe(21, stamp(1, 9)), Seen::Next);
        assert_eq!(c.observe(22, stamp(0, 7)), Seen::Next);
        assert_eq!(
            (c.offsets.gaps, c.offsets.duplicated, c.offsets.reordered),
            (0, 0, 0)
        );
        assert_eq!((c.stamp_duplicated, c.stamp_reordered), (0, 0));
    }

    #[test]
    fn reports_loss_repeats_and_republication() {
        let mut c = StreamCheck::new(2);
        c.start(0, "e1");
        assert_eq!(c.observe(1, stamp(0, 1)), Seen::Next);
        assert_eq!(c.observe(4, stamp(0, 2)), Seen::Lost { from: 2, to: 3 });
        assert_eq!(c.observe(4, stamp(0, 2)), Seen::Duplicate);
        assert_eq!(c.observe(3, stamp(1, 1)), Seen::Reordered { last: 4 });
        // The same publication under a new offset, then an older one.
        assert_eq!(
            c.observe(5, stamp(0, 2)),
            Seen::Republished {
                publisher: 0,
                q: 2,
                last: 2
            }
        );
        assert_eq!(c.observe(6, stamp(0, 3)), Seen::Next);
        assert_eq!(
            c.observe(7, stamp(0, 1)),
            Seen::Republished {
                publisher: 0,
                q: 1,
                last: 3
            }
        );
        // Not a member's publication.
        assert_eq!(c.observe(8, stamp(9, 1)), Seen::Foreign);
        assert_eq!(c.observe(9, None), Seen::Foreign);
        assert_eq!(
            (c.offsets.gaps, c.offsets.duplicated, c.offsets.reordered),
            (2, 1, 1)
        );
        assert_eq!((c.stamp_duplicated, c.stamp_reordered), (1, 1));
    }
}
