//! The `idle` scenario: many connections held connected and subscribed, answering
//! pings, for the duration; reports the gateway's resident memory per connection
//! (from `/proc/<pid>/status`, so the gateway must run on this host) and the
//! harness's own.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;

use crate::crowd::{ConnectionFigures, Crowd, CrowdOptions, CrowdParameters};
use crate::options::CommonOptions;
use crate::progress::ProgressFn;
use crate::report::{Outcome, Problems, Report, Stopwatch};
use crate::sys;
use crate::timeline::Series;

/// Options of the `idle` scenario (`--duration` is how long the connections are
/// held once all are in; `--connect-concurrency` bounds the setup).
#[derive(Debug, Clone, clap::Args)]
pub struct IdleOptions {
    #[command(flatten)]
    pub crowd: CrowdOptions,
    /// The gateway's process id, to read its resident memory (VmRSS) before, once
    /// all are connected, and at the end. Use a freshly started gateway: memory
    /// that earlier connections used stays resident after they close (the
    /// allocator keeps it), and the growth it hides reads as ~0 B per connection.
    /// Default: none (gateway memory is not measured).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Wait after the last connection before measuring memory, so the gateway's
    /// per-connection work (first pings, buffers) has happened. Default 2s.
    #[arg(long, hide_default_value = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            crowd: CrowdOptions::default(),
            gateway_pid: None,
            settle: Duration::from_secs(2),
        }
    }
}

/// What the run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct IdleParameters {
    #[serde(flatten)]
    pub crowd: CrowdParameters,
    /// How long the connections were held once all were in.
    pub duration_seconds: f64,
    pub settle_seconds: f64,
    pub gateway_pid: Option<u32>,
}

/// What an idle run saw. Memory figures are `VmRSS`; per connection means divided
/// by the connections accepted.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Always `idle`.
    pub scenario: String,
    pub parameters: IdleParameters,
    #[serde(flatten)]
    pub connections: ConnectionFigures,
    /// Before connecting; `null` without --gateway-pid.
    pub gateway_rss_before_bytes: Option<u64>,
    /// Once all were connected and subscribed, after the settle time.
    pub gateway_rss_after_bytes: Option<u64>,
    /// At the end of the hold, before closing.
    pub gateway_rss_end_bytes: Option<u64>,
    /// (after - before) / connections accepted.
    pub gateway_bytes_per_connection: Option<f64>,
    pub harness_rss_before_bytes: u64,
    pub harness_rss_after_bytes: u64,
    pub harness_bytes_per_connection: Option<f64>,
    /// What was not measured, and why.
    pub notes: Vec<String>,
    /// `ok`: every connection accepted and held to the end, every memory reading
    /// made.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The run over time, for `--report` (not in the JSON).
    #[serde(skip)]
    pub series: Series,
}

impl Report for IdleReport {
    fn scenario(&self) -> &str {
        &self.scenario
    }

    fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    fn checks(&self) -> Vec<(&'static str, u64)> {
        self.connections.checks()
    }

    fn series(&self) -> Option<&Series> {
        Some(&self.series)
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let p = &self.parameters;
        let mib = |b: Option<u64>| {
            b.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
        };
        let per_conn = |b: Option<f64>| b.map_or_else(|| "-".into(), |b| format!("{b:.0}"));
        let mut rows = vec![
            ("scenario", self.scenario.clone()),
            ("urls", p.crowd.urls.join(", ")),
            (
                "plan",
                format!("{}, held {}s", p.crowd.describe(), p.duration_seconds),
            ),
        ];
        rows.extend(self.connections.rows());
        rows.push((
            "gateway rss (MiB)",
            match p.gateway_pid {
                Some(pid) => format!(
                    "pid {pid}: before {} after {} end {}; {} B per connection",
                    mib(self.gateway_rss_before_bytes),
                    mib(self.gateway_rss_after_bytes),
                    mib(self.gateway_rss_end_bytes),
                    per_conn(self.gateway_bytes_per_connection)
                ),
                None => "not measured (pass --gateway-pid)".into(),
            },
        ));
        rows.push((
            "harness rss (MiB)",
            format!(
                "before {} after {}; {} B per connection",
                mib(Some(self.harness_rss_before_bytes)),
                mib(Some(self.harness_rss_after_bytes)),
                per_conn(self.harness_bytes_per_connection)
            ),
        ));
        rows.extend(self.outcome.rows());
        rows
    }
}

/// Run the scenario against the gateways in `common.url`. `Err` means the run
/// could not be carried out (bad options, an unreadable --gateway-pid at the start).
pub async fn run(
    common: &CommonOptions,
    opts: &IdleOptions,
    progress: Option<ProgressFn<'_>>,
) -> anyhow::Result<IdleReport> {
    let watch = Stopwatch::start();
    if common.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let mut problems = Problems::default();
    let gateway_rss = |when: &str, problems: &mut Problems| {
        let pid = opts.gateway_pid?;
        sys::rss_bytes(Some(pid))
            .map_err(|e| problems.push(format!("gateway memory {when}: /proc/{pid}/status: {e}")))
            .ok()
    };
    let gateway_before = match opts.gateway_pid {
        Some(pid) => Some(
            sys::rss_bytes(Some(pid))
                .with_context(|| format!("--gateway-pid {pid}: cannot read /proc/{pid}/status"))?,
        ),
        None => None,
    };
    let harness_before = sys::rss_bytes(None).context("/proc/self/status")?;

    let crowd = Crowd::assemble(
        common,
        &opts.crowd,
        common.connect_concurrency,
        watch.started,
        &mut problems,
        progress,
    )
    .await?;
    let end = Instant::now() + common.duration;
    crowd
        .hold_until((Instant::now() + opts.settle).min(end), progress)
        .await;
    let gateway_after = gateway_rss("after connecting", &mut problems);
    let harness_after = sys::rss_bytes(None).context("/proc/self/status")?;
    crowd.hold_until(end, progress).await;
    let gateway_end = gateway_rss("at the end", &mut problems);
    let (connections, series) = crowd.disperse(&mut problems).await;

    let accepted = connections.connections_accepted;
    let per_connection = |before: u64, after: u64| {
        (accepted > 0).then(|| (after as f64 - before as f64) / accepted as f64)
    };
    let mut notes = Vec::new();
    if opts.gateway_pid.is_none() {
        notes.push("gateway memory not measured: pass --gateway-pid".to_owned());
    }
    let memory_read =
        opts.gateway_pid.is_none() || (gateway_after.is_some() && gateway_end.is_some());
    Ok(IdleReport {
        scenario: "idle".into(),
        parameters: IdleParameters {
            crowd: CrowdParameters::new(common, &opts.crowd),
            duration_seconds: common.duration.as_secs_f64(),
            settle_seconds: opts.settle.as_secs_f64(),
            gateway_pid: opts.gateway_pid,
        },
        gateway_rss_before_bytes: gateway_before,
        gateway_rss_after_bytes: gateway_after,
        gateway_rss_end_bytes: gateway_end,
        gateway_bytes_per_connection: gateway_before
            .zip(gateway_after)
            .and_then(|(b, a)| per_connection(b, a)),
        harness_rss_before_bytes: harness_before,
        harness_rss_after_bytes: harness_after,
        harness_bytes_per_connection: per_connection(harness_before, harness_after),
        notes,
        outcome: watch.outcome(connections.clean() && memory_read, problems),
        connections,
        series,
    })
}
