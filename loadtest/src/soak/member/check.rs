//! What a soak member does with what it receives: subscribe replies (the start, a
//! recovery, a failed one or a handed-over epoch), publications (checked against
//! its position and its publishers' sequences), publish replies, and the figures
//! it hands the run.

use std::sync::atomic::Ordering;

use super::Member;
use crate::client::{self, RecoveredPublication, Reply, SubscribeResult};
use crate::soak::stream::Seen;
use crate::stamp::{fast_publication, unix_micros, Stamp};

/// The server's "permission denied": a publish into a room the connection is not
/// subscribed to.
const NOT_SUBSCRIBED: u32 = 103;

impl Member<'_> {
    /// Take the stream position from a subscribe reply: the start, a recovery (its
    /// publications are checked like live ones), or a failed recovery (checking
    /// restarts from the room's current position).
    pub(super) fn on_subscribed(&mut self, r: &SubscribeResult, initial: bool) {
        let m = self.tally.member;
        if initial {
            self.tally.check.start(r.offset, &r.epoch);
        } else if r.recovered {
            self.tally.recovered_ok += 1;
            if r.epoch != self.tally.check.epoch {
                self.tally.unexpected += 1;
                self.run.note(
                    "epoch",
                    format!(
                        "member {m}: recovered:true on epoch {:?}, it had {:?}",
                        r.epoch, self.tally.check.epoch
                    ),
                );
            }
            self.replay(&r.publications);
        } else {
            self.tally.recovery_failed += 1;
            let from = self.tally.check.position();
            self.run.note(
                "recovery failed",
                format!(
                    "recovery failed: member {m} from offset {} epoch {:?}; the room is at {} epoch {:?}",
                    from.offset, from.epoch, r.offset, r.epoch
                ),
            );
            self.tally.check.restart(r.offset, &r.epoch);
            // A new epoch handed over whole comes with its publications.
            self.replay(&r.publications);
        }
        self.flush();
    }

    /// Check the publications of a subscribe reply, in order.
    fn replay(&mut self, publications: &[RecoveredPublication]) {
        for p in publications {
            let stamp = p
                .data
                .as_ref()
                .and_then(|d| serde_json::from_str::<Stamp>(d.get()).ok());
            self.tally.recovered_publications += 1;
            self.on_publication(p.offset, stamp, None);
        }
    }

    /// Handle one text frame; returns its pings and the code of an unsubscribe push
    /// for the room, if one came.
    pub(super) fn on_frame(&mut self, frame: &[u8]) -> (usize, Option<u32>) {
        let now = unix_micros();
        let (mut pings, mut unsubscribed) = (0, None);
        for msg in client::messages(frame) {
            if client::is_ping(msg) {
                pings += 1;
                continue;
            }
            if let Some(p) = fast_publication(msg) {
                if self.ours(p.channel) {
                    self.on_publication(p.offset, Some(p.stamp), Some(now));
                }
                continue;
            }
            let Ok(reply) = Reply::parse(msg) else {
                self.tally.unexpected += 1;
                continue;
            };
            if reply.id != 0 {
                self.on_reply(&reply, unsubscribed.is_some());
                continue;
            }
            let Some(push) = reply.push else {
                // No id and no push: a ping in another spelling.
                pings += 1;
                continue;
            };
            if let Some(p) = push.publication {
                let stamp = p
                    .data
                    .and_then(|d| serde_json::from_str::<Stamp>(d.get()).ok());
                if self.ours(push.channel.as_bytes()) {
                    self.on_publication(p.offset, stamp, Some(now));
                }
            } else if let Some(u) = push.unsubscribe {
                unsubscribed = Some(u.code);
            }
        }
        self.flush();
        (pings, unsubscribed)
    }

    /// A publish's reply. `crossed`: the server unsubscribed the member earlier in
    /// the same frame, so a 103 (not subscribed) answers a publication that crossed
    /// that unsubscribe: refused for now, as during an outage.
    fn on_reply(&mut self, reply: &Reply<'_>, crossed: bool) {
        if !self.in_flight.remove(&reply.id) {
            self.tally.unexpected += 1;
            return;
        }
        let counters = &self.run.counters;
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        match &reply.error {
            None => {
                self.tally.acked += 1;
                counters.publications.fetch_add(1, Ordering::Relaxed);
                self.run.room_acked[self.tally.room].fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                let for_now = e.temporary || (crossed && e.code == NOT_SUBSCRIBED);
                let (kind, what) = if for_now {
                    self.tally.publish_unavailable += 1;
                    ("publish unavailable", "refused for now")
                } else {
                    self.tally.publish_errors += 1;
                    ("publish", "refused")
                };
                self.run.note(
                    kind,
                    format!(
                        "member {}: publication {what}: error {} {:?}",
                        self.tally.member, e.code, e.message
                    ),
                );
            }
        }
    }

    /// Whether a push is for the member's room; counts it as unexpected if not.
    fn ours(&mut self, channel: &[u8]) -> bool {
        let ours = channel == self.channel.as_bytes();
        self.tally.unexpected += u64::from(!ours);
        ours
    }

    /// Check one publication of the room: its offset against the member's position (loss,
    /// repeats, order across reconnects), then its publisher's sequence (the same
    /// publication under two offsets). `live_at` is the receive time of a live one.
    fn on_publication(&mut self, offset: u64, stamp: Option<Stamp>, live_at: Option<u64>) {
        self.tally.deliveries += 1;
        let (m, room) = (self.tally.member, self.tally.room);
        let (kind, line) = match self.tally.check.observe(offset, stamp) {
            Seen::Next => ("", String::new()),
            Seen::Lost { from, to } => ("lost", format!("lost: room {room} offsets {from}..={to}")),
            Seen::Duplicate => ("duplicated", format!("duplicated: room {room} offset {offset}")),
            Seen::Reordered { last } => (
                "reordered",
                format!("reordered: room {room} offset {offset} after {last}"),
            ),
            Seen::Republished { publisher, q, last } => (
                "republished",
                format!(
                    "republished: room {room} offset {offset} carries publisher {publisher} sequence {q}, seen up to {last}"
                ),
            ),
            Seen::Foreign => {
                self.tally.unexpected += 1;
                return;
            }
        };
        if !kind.is_empty() {
            self.run.note(kind, format!("{line} (member {m})"));
        }
        if let (Some(now), Some(stamp)) = (live_at, stamp) {
            // Same host, same clock; a send time in the future reads as 0.
            self.latencies.push(now.saturating_sub(stamp.t));
        }
    }

    /// Publish the member's position and the deliveries and latencies of the frame
    /// just handled.
    fn flush(&mut self) {
        let run = self.run;
        run.positions[self.tally.member].store(self.tally.check.offsets.last, Ordering::Relaxed);
        if !self.latencies.is_empty() {
            run.latency.record(self.tally.member, &self.latencies);
            self.latencies.clear();
        }
        // Deliveries so far, as a running total: recovered ones have no latency.
        let seen = self.tally.deliveries;
        let reported = std::mem::replace(&mut self.reported, seen);
        if seen > reported {
            run.counters.delivered(run.origin.elapsed());
        }
        run.counters
            .deliveries
            .fetch_add(seen - reported, Ordering::Relaxed);
    }
}
