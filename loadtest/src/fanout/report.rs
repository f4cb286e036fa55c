//! The fanout report (also the chat scenario's): one JSON object (`--json`) or a
//! table for people.

use serde::Serialize;

use super::api::{ApiFigures, PublishVia};
use crate::latency::LatencyUs;
use crate::report::{Outcome, Report};
use crate::timeline::Series;

/// What the run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutParameters {
    pub urls: Vec<String>,
    pub rooms: u32,
    pub subscribers_per_room: u32,
    pub publishers: u32,
    /// Chat only: members per room, each publishing and receiving (they are the
    /// publishers). Absent for fanout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members_per_room: Option<u32>,
    /// Target publications per second, in total.
    pub rate_per_sec: f64,
    pub payload_bytes: usize,
    /// Publishing time.
    pub duration_seconds: f64,
    /// `websocket` or `api`.
    pub publish_via: PublishVia,
}

/// What a fanout run saw.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// `fanout` or `chat`.
    pub scenario: String,
    pub parameters: FanoutParameters,
    /// Connections that connected and subscribed (subscribers and publishers).
    pub connections: u64,
    pub connect_errors: u64,
    /// Connections that ended before the run did (closed by the server, I/O error).
    pub disconnects: u64,
    /// `disconnects` by the close code the server sent (`none`: no close frame).
    pub disconnect_codes: std::collections::BTreeMap<String, u64>,
    /// From the start until every connection was up or had failed.
    pub connect_seconds: f64,
    /// Publications acked by the server.
    pub publications: u64,
    /// Publications the server answered with an error.
    pub publish_errors: u64,
    /// Publications sent and never answered before the drain timeout ended.
    pub unanswered: u64,
    /// Acked publications per second of the publishing duration.
    pub publications_per_sec: f64,
    /// Publications received, over all receivers (subscribers and publishers).
    pub deliveries: u64,
    /// Acked publications of each room times the connections subscribed to it.
    pub expected_deliveries: u64,
    /// Deliveries per second, from the start of publishing until the last
    /// expected delivery (or the end of the drain wait).
    pub deliveries_per_sec: f64,
    /// Receive time minus send time; `null` when nothing was delivered.
    pub latency_us: Option<LatencyUs>,
    /// Accepted publications a receiver never got in order (gaps and missing tail).
    pub lost: u64,
    /// Deliveries that repeated the previous sequence number.
    pub duplicated: u64,
    /// Deliveries behind the highest sequence number already seen.
    pub reordered: u64,
    /// Room offsets that did not follow the previous one by exactly 1.
    pub offset_errors: u64,
    /// Messages that were neither replies nor publications of this run.
    pub unexpected_messages: u64,
    /// Present when publishing through the server API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiFigures>,
    /// `ok`: no loss, duplicate, reordering or offset error, every expected
    /// delivery seen, and no connect, publish or connection error. `problems`: where
    /// things went wrong (room, publisher, sequence, connection).
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The run over time, for `--report` (not in the JSON).
    #[serde(skip)]
    pub series: Series,
}

impl Report for FanoutReport {
    fn scenario(&self) -> &str {
        &self.scenario
    }

    fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    fn checks(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            ("offset errors", self.offset_errors),
            ("unexpected", self.unexpected_messages),
            ("connect errors", self.connect_errors),
            ("disconnects", self.disconnects),
            ("publish errors", self.publish_errors),
            ("unanswered", self.unanswered),
            (
                "not delivered",
                self.expected_deliveries.saturating_sub(self.deliveries),
            ),
        ]
    }

    fn series(&self) -> Option<&Series> {
        Some(&self.series)
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let p = &self.parameters;
        let plan = match p.members_per_room {
            Some(m) => format!(
                "{} rooms x {m} members, each publishing {} pub/s ({} pub/s in total), {} B payload, {}s",
                p.rooms,
                p.rate_per_sec / f64::from(p.publishers),
                p.rate_per_sec,
                p.payload_bytes,
                p.duration_seconds
            ),
            None => format!(
                "{} rooms x {} subscribers, {} publishers, {} pub/s, {} B payload, {}s",
                p.rooms,
                p.subscribers_per_room,
                p.publishers,
                p.rate_per_sec,
                p.payload_bytes,
                p.duration_seconds
            ),
        };
        let plan = match p.publish_via {
            PublishVia::Api => format!("{plan}, published through the server API"),
            PublishVia::Websocket => plan,
        };
        let mut rows: Vec<(&'static str, String)> = vec![
            ("scenario", self.scenario.clone()),
            ("urls", p.urls.join(", ")),
            ("plan", plan),
            (
                "connections",
                format!(
                    "{} in {:.1}s (connect errors {}, disconnects {})",
                    self.connections, self.connect_seconds, self.connect_errors, self.disconnects
                ),
            ),
            (
                "publications",
                format!(
                    "{} acked, {:.0}/s (errors {})",
                    self.publications, self.publications_per_sec, self.publish_errors
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} of {} expected, {:.0}/s",
                    self.deliveries, self.expected_deliveries, self.deliveries_per_sec
                ),
            ),
        ];
        let latency = |l: &Option<LatencyUs>| {
            l.as_ref()
                .map_or_else(|| "no samples".into(), |l| l.to_string())
        };
        rows.push(("latency (us)", latency(&self.latency_us)));
        if let Some(api) = &self.api {
            let errors: Vec<String> = api
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            rows.push((
                "api publish",
                format!(
                    "{} requests over {} connections per publisher to {}; errors: {}",
                    api.requests,
                    api.connections_per_publisher,
                    api.urls.join(", "),
                    if errors.is_empty() {
                        "none".into()
                    } else {
                        errors.join(", ")
                    }
                ),
            ));
            rows.push(("api round trip (us)", latency(&api.request_latency_us)));
        }
        rows.push((
            "order checks",
            format!(
                "lost {} duplicated {} reordered {} offset errors {} unexpected {}",
                self.lost,
                self.duplicated,
                self.reordered,
                self.offset_errors,
                self.unexpected_messages
            ),
        ));
        rows.extend(self.outcome.rows());
        rows
    }
}
