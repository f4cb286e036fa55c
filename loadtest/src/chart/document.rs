//! What a report file shows: the verdict and the checks it rests on, the report's
//! rows and problems, the command line, the charts of its series, and what their
//! buckets add up to.

use std::time::{Duration, UNIX_EPOCH};

use super::plot::{self, Chart};
use crate::report::Report;
use crate::timeline::Series;

/// Everything a report file shows, as text and charts.
#[derive(Debug)]
pub struct Document {
    /// `fanout`, `chat`, ...
    pub scenario: String,
    /// The verdict: every check passed.
    pub ok: bool,
    /// The counts the verdict rests on.
    pub checks: Vec<(&'static str, u64)>,
    /// The command line, secrets left out.
    pub command: String,
    /// Wall-clock start of the run (RFC 3339, UTC), when known.
    pub started: Option<String>,
    /// The report's table rows.
    pub rows: Vec<(&'static str, String)>,
    /// Where things went wrong (bounded by the report).
    pub problems: Vec<String>,
    /// The charts the run's series has data for; none without a series.
    pub charts: Vec<Chart>,
    /// What the charts' buckets add up to, for a reader to compare with the rows:
    /// (name, total), e.g. `deliveries`.
    pub totals: Vec<(String, u64)>,
    /// Set when the run outlasted the series' bound.
    pub truncated: bool,
}

impl Document {
    pub fn of<R: Report>(report: &R, command: &str) -> anyhow::Result<Document> {
        let series = report.series();
        let charts = match series {
            Some(s) => plot::charts(s)?,
            None => Vec::new(),
        };
        Ok(Document {
            scenario: report.scenario().to_owned(),
            ok: report.ok(),
            checks: report.checks(),
            command: command.to_owned(),
            started: series.filter(|s| s.started_unix_ms > 0).map(|s| {
                let at = UNIX_EPOCH + Duration::from_millis(s.started_unix_ms);
                humantime::format_rfc3339_seconds(at).to_string()
            }),
            rows: report.rows(),
            problems: report.problems().to_vec(),
            charts,
            totals: series.map(totals).unwrap_or_default(),
            truncated: series.is_some_and(|s| s.truncated),
        })
    }
}

/// What a series' buckets add up to.
pub(super) fn totals(s: &Series) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Some(d) = s.deliveries() {
        out.push(("deliveries".to_owned(), d));
    }
    out.push((s.latency_of.replace(' ', "_"), s.latency_count()));
    for (kind, n) in s.event_totals() {
        out.push((kind.to_owned(), n));
    }
    out
}
