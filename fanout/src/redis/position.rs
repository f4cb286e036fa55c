//! Where a delivery worker stands in each room's stream, and the pure decisions
//! made from it: what to do with a publication ([`step`]), recording a delivery
//! ([`advance`]), whether a repair read is whole ([`covers`]), and what a resync
//! does with the page it read ([`plan_resync`]).

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
        Some(p) if *p.epoch != *epoch => Step::Lost,
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

/// Record that `offset` of `epoch` was delivered.
pub(super) fn advance(positions: &mut Positions, room: &Arc<str>, offset: u64, epoch: &str) {
    match positions.get_mut(room) {
        // The common case: no allocation per message.
        Some(p) if *p.epoch == *epoch => {
            if offset > p.offset {
                p.offset = offset;
                p.delivered = true;
            }
        }
        _ => {
            positions.insert(
                room.clone(),
                RoomPosition {
                    offset,
                    epoch: epoch.into(),
                    delivered: true,
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
