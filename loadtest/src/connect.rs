//! The `connect` scenario: a connection storm. Every connection does the TCP
//! connect, the WebSocket handshake, `connect` with its token and one `subscribe`,
//! and waits for both replies; all stay open (answering pings) until the last one
//! is in, so the gateway holds them all at once, then all close.

use anyhow::bail;
use serde::Serialize;

use crate::crowd::{ConnectionFigures, Crowd, CrowdOptions, CrowdParameters};
use crate::options::CommonOptions;
use crate::progress::ProgressFn;
use crate::report::{Outcome, Problems, Report, Stopwatch};
use crate::timeline::Series;

/// Options of the `connect` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectOptions {
    #[command(flatten)]
    pub crowd: CrowdOptions,
    /// Connections being set up at once (TCP connect to subscribe reply).
    /// Default 512.
    #[arg(long, hide_default_value = true, default_value_t = 512)]
    pub concurrency: usize,
    /// Connect without a token (ignoring --secret and --token): the gateway asks its
    /// connect proxy (`[proxy] connect_url`; `loadtest backend`, or `loadtest
    /// cluster --connect-proxy`), so the storm measures connects through it.
    #[arg(long)]
    pub no_token: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            crowd: CrowdOptions::default(),
            concurrency: 512,
            no_token: false,
        }
    }
}

/// What the run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectParameters {
    #[serde(flatten)]
    pub crowd: CrowdParameters,
    pub concurrency: usize,
    /// Connected without tokens (through the connect proxy).
    pub no_token: bool,
}

/// What a connect run saw.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Always `connect`.
    pub scenario: String,
    pub parameters: ConnectParameters,
    #[serde(flatten)]
    pub connections: ConnectionFigures,
    /// `ok`: every connection accepted, none dropped before the end.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The run over time, for `--report` (not in the JSON).
    #[serde(skip)]
    pub series: Series,
}

impl Report for ConnectReport {
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
        let mut rows = vec![
            ("scenario", self.scenario.clone()),
            ("urls", p.crowd.urls.join(", ")),
            (
                "plan",
                format!(
                    "{}, {} at once{}",
                    p.crowd.describe(),
                    p.concurrency,
                    if p.no_token { ", without tokens" } else { "" }
                ),
            ),
        ];
        rows.extend(self.connections.rows());
        rows.extend(self.outcome.rows());
        rows
    }
}

/// Run the storm against the gateways in `common.url`. `Err` means the run could
/// not be carried out; failed connections are in the report.
pub async fn run(
    common: &CommonOptions,
    opts: &ConnectOptions,
    progress: Option<ProgressFn<'_>>,
) -> anyhow::Result<ConnectReport> {
    let watch = Stopwatch::start();
    if opts.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let mut problems = Problems::default();
    let tokenless;
    let common = if opts.no_token {
        tokenless = CommonOptions {
            secret: None,
            token: None,
            ..common.clone()
        };
        &tokenless
    } else {
        common
    };
    let crowd = Crowd::assemble(
        common,
        &opts.crowd,
        opts.concurrency,
        watch.started,
        &mut problems,
        progress,
    )
    .await?;
    let (connections, series) = crowd.disperse(&mut problems).await;
    Ok(ConnectReport {
        scenario: "connect".into(),
        parameters: ConnectParameters {
            crowd: CrowdParameters::new(common, &opts.crowd),
            concurrency: opts.concurrency,
            no_token: opts.no_token,
        },
        outcome: watch.outcome(connections.clean(), problems),
        connections,
        series,
    })
}
