//! Adding up a fanout run: the publishers' accounts (what was acked, refused,
//! never answered) and what every receiver saw, checked against them.

use std::collections::HashSet;

use super::receiver::Receiver;
use super::state::{AnomalyKind, PublisherDone, Run};
use crate::report::Problems;

/// What the publishers' accounts add up to.
pub(super) struct Published {
    /// Publications the server acked, by room and publisher slot.
    pub(super) acked: Vec<Vec<u64>>,
    /// (room, stamp id, q) of the publications the server refused.
    pub(super) refused: HashSet<(u32, u32, u64)>,
    pub(super) errors: u64,
    pub(super) unanswered: u64,
}

impl Published {
    /// Publications acked in all.
    pub(super) fn total(&self) -> u64 {
        self.acked.iter().flatten().sum()
    }

    /// Deliveries due: each room's acked publications once per receiver of the room.
    pub(super) fn expected(&self, receivers_in: &[u64]) -> u64 {
        self.acked
            .iter()
            .zip(receivers_in)
            .map(|(a, &n)| a.iter().sum::<u64>() * n)
            .sum()
    }
}

/// Add up the publishers' accounts, and note their refusals and early stops.
pub(super) fn count_published(
    run: &Run,
    rooms: u32,
    dones: &[PublisherDone],
    problems: &mut Problems,
) -> Published {
    let mut published = Published {
        acked: (0..rooms)
            .map(|r| vec![0; run.plan.streams_in(r)])
            .collect(),
        refused: HashSet::new(),
        errors: 0,
        unanswered: 0,
    };
    for d in dones {
        for &(r, s, n) in &d.acked {
            let stream = run
                .plan
                .stream(r, s)
                .expect("bug: publisher in its own room");
            published.acked[r as usize][stream] = n;
        }
        published.errors += d.errors;
        published.unanswered += d.unanswered;
        published.refused.extend(d.refused.iter().copied());
        if let Some(e) = &d.first_error {
            problems.push(format!(
                "publisher {}: the server refused {} publications (first: {e}){}",
                d.publisher,
                d.errors,
                if e.starts_with("error 111") {
                    "; raise the gateway's [client] publish_rate_per_sec or use more --publishers"
                } else {
                    ""
                }
            ));
        }
        if let Some(e) = &d.stopped {
            problems.push(format!("publisher {} stopped early: {e}", d.publisher));
        }
    }
    if published.unanswered > 0 {
        problems.push(format!(
            "{} publications were never answered within the drain timeout",
            published.unanswered
        ));
    }
    published
}

/// What the receivers add up to.
#[derive(Default)]
pub(super) struct Received {
    pub(super) deliveries: u64,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) offset_errors: u64,
    pub(super) unexpected: u64,
    pub(super) disconnects: u64,
    /// Disconnects by the server's close code (`none` without a close frame).
    pub(super) disconnect_codes: std::collections::BTreeMap<String, u64>,
}

/// Add up what every connection received and check it against what was
/// published; note disconnects, missing publications and order anomalies.
pub(super) fn count_received(
    run: &Run,
    receivers: &[Receiver],
    published: &Published,
    problems: &mut Problems,
) -> Received {
    let mut c = Received::default();
    for rx in receivers {
        c.deliveries += rx.deliveries;
        c.unexpected += rx.unexpected;
        if let Some(why) = &rx.disconnected {
            c.disconnects += 1;
            let code = rx.close_code.map_or("none".to_owned(), |c| c.to_string());
            *c.disconnect_codes.entry(code).or_default() += 1;
            problems.sample("disconnect", format!("connection {}: {why}", rx.conn));
        }
        for room in &rx.rooms {
            c.offset_errors += room.offsets.errors;
            for (stream, s) in room.streams.iter().enumerate() {
                let acked = published.acked[room.room as usize][stream];
                let l = s.lost(acked);
                c.lost += l;
                c.duplicated += s.duplicated;
                c.reordered += s.reordered;
                if l > 0 && s.gaps < l {
                    problems.sample(
                        "missing",
                        format!(
                            "lost: room {} publisher {}: connection {} got {} of {acked} (highest sequence {})",
                            room.room,
                            run.plan.stamp_at(room.room, stream),
                            rx.conn,
                            s.advanced,
                            s.last
                        ),
                    );
                }
            }
        }
    }
    for a in run.anomalies.lock().iter() {
        // Gaps the server made by refusing publications are not loss.
        if let AnomalyKind::Gap {
            publisher,
            from,
            to,
        } = a.kind
        {
            if (from..=to).all(|q| published.refused.contains(&(a.room, publisher, q))) {
                continue;
            }
        }
        problems.push(a.to_string());
    }
    if c.unexpected > 0 {
        problems.push(format!(
            "{} messages were neither replies nor publications of this run",
            c.unexpected
        ));
    }
    c
}
