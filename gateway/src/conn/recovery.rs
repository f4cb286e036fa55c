//! The recovery verdict: whether a resubscribing client can be given exactly the
//! publications it missed, decided from its position and the history page read
//! for it. Pure: the subscribe path reads history and calls [`verdict`].

use shared::codes::{ErrorCode, ERROR_UNRECOVERABLE_POSITION};
use shared::protocol::Publication;

/// Why a recovery succeeded or not (docs/protocol.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The page holds exactly the publications after the client's offset, up to
    /// the stream's top (none when the client is already there).
    Exact,
    /// The client's epoch is not the stream's: the room's history was lost or
    /// started again, so its offsets mean nothing now.
    EpochChanged,
    /// Publications the client missed have left history (trimmed or expired), or
    /// the client claims a position past the stream's top.
    RangeGone,
    /// The client missed more publications than one recovery returns
    /// (`recovery_max_publication_limit`).
    OverLimit,
    /// The missed publications would not fit the connection's outbound budget
    /// (half of `client.queue_max_bytes`): sending them would close it as slow,
    /// and its next recovery would again.
    OverBudget,
}

/// Bytes a publication takes in a reply, roughly: its payloads and the JSON
/// around them.
pub(crate) fn reply_bytes(p: &Publication) -> usize {
    const ENVELOPE: usize = 96;
    let info = p.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |r| r.get().len())
            + i.chan_info.as_ref().map_or(0, |r| r.get().len())
    });
    ENVELOPE + p.data.get().len() + info
}

/// How many of `sizes`, from the first, fit in `budget` bytes together.
pub(crate) fn fitting(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut used = 0usize;
    let mut n = 0;
    for s in sizes {
        match used.checked_add(s) {
            Some(u) if u <= budget => used = u,
            _ => break,
        }
        n += 1;
    }
    n
}

/// What the client says it has, and what history answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    /// The last offset the client saw.
    pub(crate) since_offset: u64,
    /// Its epoch; empty when the client does not know one (then any epoch is
    /// accepted).
    pub(crate) since_epoch: &'a str,
    /// The stream's current top offset and epoch.
    pub(crate) top_offset: u64,
    pub(crate) top_epoch: &'a str,
    /// Offsets of the first and last publication of the page read after
    /// `since_offset` (None when the page is empty), and how many it holds.
    pub(crate) first: Option<u64>,
    pub(crate) last: Option<u64>,
    pub(crate) count: usize,
    /// The most publications the page could hold.
    pub(crate) limit: usize,
}

/// Decide the recovery outcome for one attempt.
pub(crate) fn verdict(a: &Attempt<'_>) -> Recovery {
    if !a.since_epoch.is_empty() && a.since_epoch != a.top_epoch {
        return Recovery::EpochChanged;
    }
    let Some(next) = a.since_offset.checked_add(1) else {
        return Recovery::RangeGone;
    };
    match (a.first, a.last) {
        (Some(first), _) if first != next => Recovery::RangeGone,
        (Some(_), Some(last)) if last == a.top_offset => Recovery::Exact,
        (Some(_), _) if a.count >= a.limit => Recovery::OverLimit,
        (Some(_), _) => Recovery::RangeGone,
        (None, _) if a.top_offset == a.since_offset => Recovery::Exact,
        (None, _) if a.top_offset > a.since_offset && a.limit == 0 => Recovery::OverLimit,
        (None, _) => Recovery::RangeGone,
    }
}

impl Recovery {
    /// What the subscribe reply says: `Ok(true)` recovered, `Ok(false)` not (the
    /// client gets the current position), or 112 when the client asked to be
    /// refused rather than told `recovered: false`.
    pub(crate) fn answer(self, reject_unrecovered: bool) -> Result<bool, ErrorCode> {
        match self {
            Recovery::Exact => Ok(true),
            _ if reject_unrecovered => Err(ERROR_UNRECOVERABLE_POSITION),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client at offset 5 of epoch "e"; the stream at 8 of "e"; the page 6..=8.
    fn attempt() -> Attempt<'static> {
        Attempt {
            since_offset: 5,
            since_epoch: "e",
            top_offset: 8,
            top_epoch: "e",
            first: Some(6),
            last: Some(8),
            count: 3,
            limit: 300,
        }
    }

    #[test]
    fn exact_when_the_page_runs_from_the_next_offset_to_the_top() {
        assert_eq!(verdict(&attempt()), Recovery::Exact);
        assert_eq!(Recovery::Exact.answer(false), Ok(true));
        assert_eq!(Recovery::Exact.answer(true), Ok(true));
    }

    #[test]
    fn exact_when_nothing_was_missed() {
        let a = Attempt {
            since_offset: 8,
            first: None,
            last: None,
            count: 0,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::Exact);
    }

    #[test]
    fn a_client_without_an_epoch_takes_the_streams() {
        let a = Attempt {
            since_epoch: "",
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::Exact);
    }

    #[test]
    fn epoch_changed() {
        let a = Attempt {
            top_epoch: "f",
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::EpochChanged);
        assert_eq!(Recovery::EpochChanged.answer(false), Ok(false));
    }

    #[test]
    fn range_gone_when_history_starts_after_the_next_offset() {
        let a = Attempt {
            first: Some(7),
            count: 2,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::RangeGone);
        // Everything expired: an empty page while the top moved on.
        let a = Attempt {
            first: None,
            last: None,
            count: 0,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::RangeGone);
    }

    #[test]
    fn range_gone_when_the_client_is_ahead_of_the_stream() {
        let a = Attempt {
            since_offset: 9,
            first: None,
            last: None,
            count: 0,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::RangeGone);
        let a = Attempt {
            since_offset: u64::MAX,
            first: None,
            last: None,
            count: 0,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::RangeGone);
    }

    #[test]
    fn over_the_limit_when_the_page_is_full_before_the_top() {
        let a = Attempt {
            last: Some(7),
            count: 2,
            limit: 2,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::OverLimit);
        let a = Attempt {
            first: None,
            last: None,
            count: 0,
            limit: 0,
            ..attempt()
        };
        assert_eq!(verdict(&a), Recovery::OverLimit);
    }

    #[test]
    fn reject_unrecovered_turns_every_failure_into_112() {
        for r in [
            Recovery::EpochChanged,
            Recovery::RangeGone,
            Recovery::OverLimit,
            Recovery::OverBudget,
        ] {
            assert_eq!(r.answer(true), Err(ERROR_UNRECOVERABLE_POSITION));
            assert_eq!(r.answer(false), Ok(false));
        }
    }

    #[test]
    fn what_fits_a_budget() {
        assert_eq!(fitting([10, 10, 10], 25), 2);
        assert_eq!(fitting([10, 10, 10], 30), 3);
        assert_eq!(fitting([40, 1], 30), 0);
        assert_eq!(fitting(Vec::<usize>::new(), 0), 0);
        assert_eq!(fitting([usize::MAX, 1], usize::MAX), 1);
    }
}
