//! Where a delivery worker stands in each room's stream, and the pure decisions
//! made from it: what to do with a publication ([`step`]), recording a delivery
//! ([`advance`]), whether a repair read is whole ([`covers`]), what a resync
//! does with the page it read ([`plan_resync`]), and whether the stream lost what
//! the node had delivered from it ([`check_entry`], [`diverged`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::{HistoryPage, HistoryQuery, Publication, StreamPosition};

/// A worker's rooms and where each stands.
pub(super) type Positions = HashMap<Arc<str>, RoomPosition>;

#[derive(Debug, PartialEq)]
pub(super) struct RoomPosition {
    /// The highest offset delivered, or the stream top when the room was
    /// subscribed (a baseline, see `delivered`).
    pub(super) offset: u64,
    /// Empty: the room had no stream when it was subscribed; the first epoch seen
    /// is adopted and repaired from offset 0.
    pub(super) epoch: Arc<str>,
    /// False while `offset` is only the baseline: publications at or below it may
    /// still arrive from pub/sub and are delivered (subscribers drop what they
    /// already have), not skipped.
    pub(super) delivered: bool,
    /// The [`digest`] of the publication at `offset` as pub/sub carried it, or 0
    /// when not known (a baseline, or a position reached by a stream read). A
    /// resync compares it with the stream's entry at `offset`: another entry there
    /// means the stream lost what the node delivered (a failover to a replica that
    /// had not received it, a restart from an older copy) and gave its offsets to
    /// other publications.
    pub(super) digest: u64,
    /// The epoch this node retired when it found the stream diverged: its
    /// publications still in flight are skipped, not taken for another loss.
    pub(super) retired: Option<Arc<str>>,
}

impl RoomPosition {
    /// A position without a digest or a retired epoch.
    pub(super) fn at(offset: u64, epoch: &str, delivered: bool) -> RoomPosition {
        RoomPosition {
            offset,
            epoch: epoch.into(),
            delivered,
            digest: 0,
            retired: None,
        }
    }
}

/// A digest of a publication's envelope (the stream entry's `d` field, and the
/// body of its pub/sub message), never 0. Compared only within one process.
pub(super) fn digest(envelope: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default()
        .hash_one(envelope)
        .max(1)
}

/// Whether a resync must read the stream's entry at the known position to see
/// that it is still the publication delivered there: the stream is in the same
/// epoch, reaches the position, and the node knows what it delivered there.
pub(super) fn check_entry(known: &RoomPosition, top: &StreamPosition) -> bool {
    known.delivered
        && known.digest != 0
        && known.offset > 0
        && *known.epoch == *top.epoch
        && top.offset >= known.offset
}

/// Whether the stream lost publications it had given the node (delivered, or the
/// top a baseline was taken at), in the same epoch: its top is below the node's
/// position, or (`entry`: the digest of the
/// stream's entry at the position, read when [`check_entry`] asked) another
/// publication sits there. A missing entry (trimmed) proves nothing.
pub(super) fn diverged(known: &RoomPosition, top: &StreamPosition, entry: Option<u64>) -> bool {
    if known.epoch.is_empty() || *known.epoch != *top.epoch {
        return false;
    }
    top.offset < known.offset || entry.is_some_and(|d| known.digest != 0 && d != known.digest)
}

/// What to do with a publication, given the room's position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Deliver,
    Skip,
    /// Deliver `after+1 ..` from the stream first.
    Repair(u64),
    Lost,
}

pub(super) fn step(p: Option<&RoomPosition>, offset: u64, epoch: &str) -> Step {
    match p {
        None => Step::Deliver,
        Some(p) if p.epoch.is_empty() => {
            if offset == 1 {
                Step::Deliver
            } else {
                Step::Repair(0)
            }
        }
        Some(p) if *p.epoch != *epoch => {
            if p.retired.as_deref() == Some(epoch) {
                Step::Skip
            } else {
                Step::Lost
            }
        }
        Some(p) if offset <= p.offset => {
            if p.delivered {
                Step::Skip
            } else {
                Step::Deliver
            }
        }
        Some(p) if offset == p.offset + 1 => Step::Deliver,
        Some(p) => Step::Repair(p.offset),
    }
}

/// Record that `offset` of `epoch` was delivered; `digest` is that publication's
/// [`digest`], or 0 when not known.
pub(super) fn advance(
    positions: &mut Positions,
    room: &Arc<str>,
    offset: u64,
    epoch: &str,
    digest: u64,
) {
    match positions.get_mut(room) {
        // The common case: no allocation per message.
        Some(p) if *p.epoch == *epoch => {
            if offset > p.offset {
                p.offset = offset;
                p.delivered = true;
                p.digest = digest;
            }
        }
        _ => {
            positions.insert(
                room.clone(),
                RoomPosition {
                    digest,
                    ..RoomPosition::at(offset, epoch, true)
                },
            );
        }
    }
}

/// Whether `page` holds exactly `after+1 ..= upto` of `epoch`.
pub(super) fn covers(page: &HistoryPage, after: u64, upto: u64, epoch: &str) -> bool {
    page.position.epoch == epoch
        && page.publications.len() as u64 == upto - after
        && page
            .publications
            .first()
            .is_some_and(|p| p.offset == after + 1)
}

/// The read a resync makes: only the position for a room without one, else all
/// after the known offset (in whatever epoch the stream has now).
pub(super) fn resync_query(known_offset: Option<u64>) -> HistoryQuery {
    match known_offset {
        None => HistoryQuery {
            limit: Some(0),
            ..Default::default()
        },
        Some(after) => HistoryQuery {
            since: Some(StreamPosition {
                offset: after,
                epoch: String::new(),
            }),
            limit: None,
            reverse: false,
        },
    }
}

/// What a resync does, given the room's known position and the page read.
#[derive(Debug)]
pub(super) enum ResyncPlan<'a> {
    /// Nothing was missed.
    Nothing,
    /// No position yet: the stream top (or "no stream") becomes the baseline.
    Baseline,
    /// Deliver these, in order, and advance to the stream top.
    Deliver(&'a [Arc<Publication>]),
    /// Report the room lost and advance to the stream top.
    Lost,
    /// The stream followed is gone: report the room lost and start again from "no
    /// stream".
    Gone,
}

/// Decide a resync. `known` is the room's (offset, epoch), if it has a position.
pub(super) fn plan_resync<'a>(known: Option<(u64, &str)>, page: &'a HistoryPage) -> ResyncPlan<'a> {
    let top = &page.position;
    let Some((after, epoch)) = known else {
        return ResyncPlan::Baseline;
    };
    if top.epoch.is_empty() && epoch.is_empty() {
        // Still no stream: a room without history, or none published yet.
        return ResyncPlan::Nothing;
    }
    if top.epoch.is_empty() {
        // The stream we were following is gone (Redis lost it, or it expired).
        return ResyncPlan::Gone;
    }
    if top.epoch == epoch && top.offset == after {
        return ResyncPlan::Nothing;
    }
    // A stream that appeared after the baseline is read from its start.
    let after = if epoch.is_empty() { 0 } else { after };
    let complete = (epoch.is_empty() || top.epoch == epoch)
        && top.offset >= after
        && page
            .publications
            .first()
            .is_some_and(|p| p.offset == after + 1)
        && page
            .publications
            .last()
            .is_some_and(|p| p.offset == top.offset);
    if complete {
        ResyncPlan::Deliver(&page.publications)
    } else {
        ResyncPlan::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::raw_from_slice;

    fn pos(offset: u64, epoch: &str, delivered: bool) -> RoomPosition {
        RoomPosition::at(offset, epoch, delivered)
    }

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            data: raw_from_slice(b"1").unwrap(),
            info: None,
            offset,
            tags: Default::default(),
        })
    }

    /// A page read at stream top `offset`/`epoch` holding `offsets`.
    fn page(offset: u64, epoch: &str, offsets: &[u64]) -> HistoryPage {
        HistoryPage {
            publications: offsets.iter().map(|&o| publication(o)).collect(),
            position: StreamPosition {
                offset,
                epoch: epoch.into(),
            },
        }
    }

    fn offsets(publications: &[Arc<Publication>]) -> Vec<u64> {
        publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn step_without_position_delivers() {
        assert_eq!(step(None, 7, "e"), Step::Deliver);
    }

    #[test]
    fn step_from_no_stream_delivers_the_first_and_repairs_from_zero() {
        let p = pos(0, "", false);
        assert_eq!(step(Some(&p), 1, "e"), Step::Deliver);
        assert_eq!(step(Some(&p), 4, "e"), Step::Repair(0));
    }

    #[test]
    fn step_in_another_epoch_is_lost() {
        assert_eq!(step(Some(&pos(3, "a", true)), 4, "b"), Step::Lost);
    }

    #[test]
    fn step_in_the_epoch_this_node_retired_skips() {
        let p = RoomPosition {
            retired: Some("a".into()),
            ..pos(9, "b", true)
        };
        assert_eq!(step(Some(&p), 8, "a"), Step::Skip);
        assert_eq!(step(Some(&p), 10, "b"), Step::Deliver);
        assert_eq!(step(Some(&p), 10, "c"), Step::Lost);
    }

    #[test]
    fn step_at_or_below_a_delivered_offset_skips() {
        let p = pos(5, "e", true);
        assert_eq!(step(Some(&p), 5, "e"), Step::Skip);
        assert_eq!(step(Some(&p), 2, "e"), Step::Skip);
    }

    #[test]
    fn step_at_or_below_a_baseline_delivers() {
        let p = pos(5, "e", false);
        assert_eq!(step(Some(&p), 5, "e"), Step::Deliver);
        assert_eq!(step(Some(&p), 2, "e"), Step::Deliver);
    }

    #[test]
    fn step_next_offset_delivers() {
        assert_eq!(step(Some(&pos(5, "e", true)), 6, "e"), Step::Deliver);
        assert_eq!(step(Some(&pos(5, "e", false)), 6, "e"), Step::Deliver);
    }

    #[test]
    fn step_past_a_gap_repairs_from_the_position() {
        assert_eq!(step(Some(&pos(5, "e", true)), 9, "e"), Step::Repair(5));
    }

    #[test]
    fn advance_records_a_first_delivery() {
        let room: Arc<str> = "r".into();
        let mut positions = Positions::new();
        advance(&mut positions, &room, 3, "e", 0);
        assert_eq!(positions[&room], pos(3, "e", true));
    }

    #[test]
    fn advance_moves_forward_and_marks_delivered() {
        let room: Arc<str> = "r".into();
        let mut positions = Positions::from([(room.clone(), pos(3, "e", false))]);
        advance(&mut positions, &room, 4, "e", 0);
        assert_eq!(positions[&room], pos(4, "e", true));
    }

    #[test]
    fn advance_never_moves_back() {
        let room: Arc<str> = "r".into();
        let mut positions = Positions::from([(room.clone(), pos(5, "e", false))]);
        advance(&mut positions, &room, 4, "e", 0);
        assert_eq!(positions[&room], pos(5, "e", false));
        advance(&mut positions, &room, 5, "e", 0);
        assert_eq!(positions[&room], pos(5, "e", false));
    }

    #[test]
    fn advance_into_another_epoch_replaces_the_position() {
        let room: Arc<str> = "r".into();
        let mut positions = Positions::from([(room.clone(), pos(9, "a", true))]);
        advance(&mut positions, &room, 2, "b", 0);
        assert_eq!(positions[&room], pos(2, "b", true));
    }

    #[test]
    fn advance_keeps_the_digest_of_the_publication_at_the_position() {
        let room: Arc<str> = "r".into();
        let mut positions = Positions::new();
        advance(&mut positions, &room, 3, "e", 33);
        advance(&mut positions, &room, 4, "e", 44);
        assert_eq!(positions[&room].digest, 44);
        advance(&mut positions, &room, 2, "e", 22);
        assert_eq!(positions[&room].digest, 44, "not moved back");
    }

    fn top(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    fn known(offset: u64, digest: u64) -> RoomPosition {
        RoomPosition {
            digest,
            ..pos(offset, "e", true)
        }
    }

    #[test]
    fn the_entry_is_checked_only_where_the_stream_reaches_a_known_delivery() {
        assert!(check_entry(&known(5, 7), &top(5, "e")));
        assert!(check_entry(&known(5, 7), &top(9, "e")));
        assert!(!check_entry(&known(5, 7), &top(4, "e")), "below: no entry");
        assert!(!check_entry(&known(5, 7), &top(9, "x")), "another epoch");
        assert!(!check_entry(&known(5, 0), &top(9, "e")), "digest unknown");
        assert!(!check_entry(&pos(5, "e", false), &top(9, "e")), "baseline");
    }

    #[test]
    fn a_stream_below_the_position_or_with_another_entry_there_diverged() {
        assert!(diverged(&known(5, 7), &top(3, "e"), None), "top below");
        assert!(
            diverged(&known(5, 0), &top(3, "e"), None),
            "top below, digest unknown"
        );
        assert!(
            diverged(&known(5, 7), &top(9, "e"), Some(8)),
            "another entry"
        );
        assert!(
            !diverged(&known(5, 7), &top(9, "e"), Some(7)),
            "the same entry"
        );
        assert!(
            !diverged(&known(5, 7), &top(9, "e"), None),
            "trimmed: unknown"
        );
        assert!(
            !diverged(&known(5, 0), &top(9, "e"), Some(8)),
            "digest unknown"
        );
        assert!(
            !diverged(&known(5, 7), &top(3, "x"), None),
            "another epoch: lost, not diverged"
        );
        assert!(
            diverged(&pos(5, "e", false), &top(3, "e"), None),
            "below a baseline"
        );
        assert!(
            !diverged(&pos(5, "e", false), &top(9, "e"), Some(8)),
            "at a baseline"
        );
    }

    #[test]
    fn digests_tell_envelopes_apart_and_are_never_zero() {
        assert_eq!(digest(b"abc"), digest(b"abc"));
        assert_ne!(digest(b"abc"), digest(b"abd"));
        assert_ne!(digest(b""), 0);
    }

    #[test]
    fn covers_only_the_whole_range_in_the_epoch() {
        assert!(covers(&page(9, "e", &[4, 5, 6]), 3, 6, "e"));
        assert!(!covers(&page(9, "x", &[4, 5, 6]), 3, 6, "e"), "epoch");
        assert!(!covers(&page(9, "e", &[5, 6]), 3, 6, "e"), "short");
        assert!(!covers(&page(9, "e", &[5, 6, 7]), 3, 6, "e"), "start");
        assert!(!covers(&page(9, "e", &[]), 3, 4, "e"), "empty");
    }

    #[test]
    fn resync_query_reads_the_position_or_what_follows() {
        let q = resync_query(None);
        assert_eq!((q.since, q.limit, q.reverse), (None, Some(0), false));
        let q = resync_query(Some(7));
        assert_eq!(
            (q.since, q.limit, q.reverse),
            (
                Some(StreamPosition {
                    offset: 7,
                    epoch: String::new()
                }),
                None,
                false
            )
        );
    }

    #[test]
    fn resync_without_position_takes_a_baseline() {
        assert!(matches!(
            plan_resync(None, &page(4, "e", &[])),
            ResyncPlan::Baseline
        ));
        assert!(matches!(
            plan_resync(None, &page(0, "", &[])),
            ResyncPlan::Baseline
        ));
    }

    #[test]
    fn resync_with_nothing_new_does_nothing() {
        // Still no stream.
        assert!(matches!(
            plan_resync(Some((0, "")), &page(0, "", &[])),
            ResyncPlan::Nothing
        ));
        // At the top already.
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(4, "e", &[])),
            ResyncPlan::Nothing
        ));
    }

    #[test]
    fn resync_of_a_vanished_stream_is_gone() {
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(0, "", &[])),
            ResyncPlan::Gone
        ));
    }

    #[test]
    fn resync_delivers_what_follows_the_position() {
        let p = page(6, "e", &[5, 6]);
        match plan_resync(Some((4, "e")), &p) {
            ResyncPlan::Deliver(pubs) => assert_eq!(offsets(pubs), [5, 6]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resync_delivers_a_stream_that_appeared_from_its_start() {
        // Baseline "no stream" at offset 0; the stream now holds 1..=2.
        let p = page(2, "e", &[1, 2]);
        match plan_resync(Some((0, "")), &p) {
            ResyncPlan::Deliver(pubs) => assert_eq!(offsets(pubs), [1, 2]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resync_with_a_gap_or_another_epoch_is_lost() {
        // The stream no longer holds offset 5.
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(8, "e", &[7, 8])),
            ResyncPlan::Lost
        ));
        // The page stops short of the top.
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(8, "e", &[5, 6])),
            ResyncPlan::Lost
        ));
        // Nothing read though the top moved.
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(8, "e", &[])),
            ResyncPlan::Lost
        ));
        // A new epoch.
        assert!(matches!(
            plan_resync(Some((4, "a")), &page(2, "b", &[1, 2])),
            ResyncPlan::Lost
        ));
        // The top went back in the same epoch.
        assert!(matches!(
            plan_resync(Some((4, "e")), &page(3, "e", &[])),
            ResyncPlan::Lost
        ));
    }
}
