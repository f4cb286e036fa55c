//! The soak report: one JSON object (`--json`) or a table for people.

use serde::Serialize;

use super::reconnects::ConnectFailures;
use crate::latency::LatencyUs;
use crate::report::{Outcome, Report};
use crate::timeline::Series;

/// What the run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct SoakParameters {
    pub urls: Vec<String>,
    pub rooms: u32,
    pub members_per_room: u32,
    /// Publications per second of each member.
    pub rate_per_member: f64,
    /// Each member disconnects once in every such interval.
    pub reconnect_every_seconds: f64,
    pub payload_bytes: usize,
    /// Publishing and reconnecting time.
    pub duration_seconds: f64,
    /// Recovery failures, unplanned disconnects, failed reconnects and unanswered
    /// publications fail the run too.
    pub strict: bool,
}

/// What a soak run saw.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Always `soak`.
    pub scenario: String,
    pub parameters: SoakParameters,
    /// Members that connected and subscribed at the start.
    pub connections: u64,
    /// Members that could not join at the start.
    pub connect_errors: u64,
    /// From the start until every member was in or had failed.
    pub connect_seconds: f64,
    #[serde(flatten)]
    pub counts: SoakCounts,
    /// Acked publications per second of the duration.
    pub publications_per_sec: f64,
    /// Deliveries per second, from the start of publishing until every member had
    /// caught up (or the end of the drain wait).
    pub deliveries_per_sec: f64,
    /// Receive time minus send time of live deliveries; `null` when there were none.
    pub latency_us: Option<LatencyUs>,
    /// Reconnects (not the first connections) in each whole second since the start
    /// of the run, counted when their connect and subscribe were answered.
    pub reconnects_per_second: Vec<u64>,
    /// The most of those in one second.
    pub peak_reconnects_per_second: u64,
    /// Wall-clock start of the run (Unix milliseconds): second 0 of the series.
    pub started_unix_ms: u64,
    /// The longest time no member received a publication, once deliveries began
    /// (the outage clients saw, when Redis was broken during the run).
    pub longest_silence_ms: f64,
    /// `ok`: no loss, duplicate, reordering, epoch mismatch or unexpected message,
    /// no connect or publish error, and publications were made and delivered; with
    /// `strict`, also no recovery failure, unplanned disconnect, failed reconnect,
    /// unanswered publication or publication refused for now. `problems`: where things went wrong (room, member,
    /// offset).
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The run over time, for `--report` (not in the JSON).
    #[serde(skip)]
    pub series: Series,
}

/// The members' tallies added up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakCounts {
    /// Successful reconnects (planned or after a lost connection).
    pub reconnects: u64,
    /// Reconnect attempts that failed (retried with backoff).
    pub reconnect_errors: u64,
    /// Those by kind (TCP refused, HTTP status such as 503, handshake, refused by
    /// the server, timeout).
    pub reconnect_failures: ConnectFailures,
    /// Connections the server closed with 3001 (a node shutting down); the member
    /// comes back within 500 ms, through the same URLs, recovering.
    pub closed_3001: u64,
    /// Reconnects after a 3001 close answered `recovered:true`.
    pub recovered_after_3001: u64,
    /// Connections that ended without the member asking (closed by the server, I/O
    /// error, unsubscribe push).
    pub disconnects: u64,
    /// Resubscriptions answered `recovered:true`.
    pub recovered_ok: u64,
    /// Resubscriptions answered `recovered:false`; that member's checks restarted
    /// from the room's current position.
    pub recovery_failed: u64,
    /// Publications returned in subscribe replies.
    pub recovered_publications: u64,
    /// Publications acked by the server.
    pub publications: u64,
    /// Publications the server answered with an error (not temporary).
    pub publish_errors: u64,
    /// Publications the server refused with a temporary error (error 100 while
    /// Redis was away), or with 103 after it unsubscribed the member (the
    /// publication crossed the unsubscribe push): not taken; a failure only with
    /// --strict.
    pub publish_unavailable: u64,
    /// Publications whose connection went before their answer.
    pub unanswered: u64,
    /// Publications received, live and recovered, over all members.
    pub deliveries: u64,
    /// Offsets of a member's room it never got, across its reconnects, apart from
    /// those a `recovered:false` told it about; including the missing tail.
    pub lost: u64,
    /// Deliveries of an offset already seen, or of a publication seen before under
    /// another offset.
    pub duplicated: u64,
    /// Deliveries behind the member's position, or behind a later publication of the
    /// same publisher.
    pub reordered: u64,
    /// Members that ended on another epoch than most of their room without a
    /// `recovered:false`.
    pub epoch_mismatches: u64,
    /// Messages that were neither replies nor publications of this run.
    pub unexpected_messages: u64,
}

impl Report for SoakReport {
    fn scenario(&self) -> &str {
        &self.scenario
    }

    fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    fn checks(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counts;
        let mut checks = vec![
            ("lost", c.lost),
            ("duplicated", c.duplicated),
            ("reordered", c.reordered),
            ("epoch mismatches", c.epoch_mismatches),
            ("unexpected", c.unexpected_messages),
            ("connect errors", self.connect_errors),
            ("publish errors", c.publish_errors),
        ];
        if self.parameters.strict {
            checks.extend([
                ("recovery failed", c.recovery_failed),
                ("disconnects", c.disconnects),
                ("failed reconnects", c.reconnect_errors),
                ("unanswered", c.unanswered),
                ("refused for now", c.publish_unavailable),
            ]);
        }
        checks
    }

    fn series(&self) -> Option<&Series> {
        Some(&self.series)
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let (p, c) = (&self.parameters, &self.counts);
        let latency = match &self.latency_us {
            Some(l) => format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0}, live deliveries)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            ),
            None => "no samples".into(),
        };
        let mut rows: Vec<(&'static str, String)> = vec![
            ("scenario", self.scenario.clone()),
            ("urls", p.urls.join(", ")),
            (
                "plan",
                format!(
                    "{} rooms x {} members, {} pub/s each, reconnect every {}s, {} B payload, {}s{}",
                    p.rooms,
                    p.members_per_room,
                    p.rate_per_member,
                    p.reconnect_every_seconds,
                    p.payload_bytes,
                    p.duration_seconds,
                    if p.strict { ", strict" } else { "" }
                ),
            ),
            (
                "connections",
                format!(
                    "{} in {:.1}s (connect errors {})",
                    self.connections, self.connect_seconds, self.connect_errors
                ),
            ),
            (
                "reconnects",
                format!(
                    "{} (failed attempts {}, unplanned disconnects {}), peak {}/s",
                    c.reconnects, c.reconnect_errors, c.disconnects, self.peak_reconnects_per_second
                ),
            ),
            (
                "closed 3001",
                format!(
                    "{} ({} recovered on reconnect)",
                    c.closed_3001, c.recovered_after_3001
                ),
            ),
            (
                "recovery",
                format!(
                    "recovered_ok {} recovery_failed {} ({} publications recovered)",
                    c.recovered_ok, c.recovery_failed, c.recovered_publications
                ),
            ),
            (
                "publications",
                format!(
                    "{} acked, {:.0}/s (errors {}, refused for now {}, unanswered {})",
                    c.publications,
                    self.publications_per_sec,
                    c.publish_errors,
                    c.publish_unavailable,
                    c.unanswered
                ),
            ),
            (
                "deliveries",
                format!(
                    "{}, {:.0}/s; longest time without one {:.0} ms",
                    c.deliveries, self.deliveries_per_sec, self.longest_silence_ms
                ),
            ),
            ("latency (us)", latency),
            (
                "order checks",
                format!(
                    "lost {} duplicated {} reordered {} epoch mismatches {} unexpected {}",
                    c.lost,
                    c.duplicated,
                    c.reordered,
                    c.epoch_mismatches,
                    c.unexpected_messages
                ),
            ),
        ];
        rows.extend(self.outcome.rows());
        rows
    }
}
