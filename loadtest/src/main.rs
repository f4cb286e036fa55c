//! `loadtest`: run a load scenario against gateways and print its report. Exit 0
//! when every check passed, 1 when one failed, 2 when the run could not be made.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use loadtest::backend::BackendOptions;
use loadtest::chart::{self, ReportFile};
use loadtest::cluster::ClusterOptions;
use loadtest::progress::ProgressFn;
use loadtest::{
    ChatOptions, CommonOptions, ConnectOptions, FanoutOptions, IdleOptions, Progress, Report,
    SoakOptions,
};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load harness for the gateway (Centrifugo client protocol v2, JSON over WebSocket)"
)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// Print the report as exactly one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Also write the report to look at: FILE.html, a self-contained page (charts
    /// as inline SVG, parameters and verdict in a table, no script), or FILE.svg,
    /// one picture with the verdict above the charts. Charts: latency percentiles
    /// per second, deliveries per second, the latency histogram, connection events
    /// per second (connect and idle: connect latency and events).
    #[arg(long, global = true, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Raise the soft open-file limit (RLIMIT_NOFILE) to the hard limit first.
    #[arg(long, global = true)]
    nofile: bool,
    /// Runtime worker threads. Default: one per core.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Rooms of subscribers and publishers at a fixed rate: latency, loss,
    /// duplicates, order. Publishers publish on their WebSocket connection or
    /// through the server HTTP API (--publish-via api).
    Fanout(FanoutOptions),
    /// Rooms whose every member publishes at a rate and receives the room: the
    /// fanout checks with many publishers.
    Chat(ChatOptions),
    /// A connection storm: setup latency, accept rate, failures by kind; with
    /// --no-token, through the gateways' connect proxy.
    Connect(ConnectOptions),
    /// Connections held subscribed for the duration: the gateway's memory per
    /// connection (--gateway-pid).
    Idle(IdleOptions),
    /// Mixed load for long runs: members publish, drop their connection once per
    /// interval and recover; exactly-once in-order delivery across reconnects.
    Soak(SoakOptions),
    /// Start redis-server and N gateway processes on loopback (with a generated
    /// secret and API key; with --connect-proxy, the stand-in backend as their
    /// connect proxy), run the scenario given after `--` against them, and stop them.
    Cluster(ClusterOptions),
    /// A stand-in application backend for the gateways' proxies: admits every
    /// connect as a user of its own, answers the other proxy calls with an empty
    /// result, and prints its call counts on Ctrl-C.
    Backend(BackendOptions),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let inner = match &cli.scenario {
        Scenario::Cluster(o) => Some(cluster_scenario(&cli, o)?),
        _ => None,
    };
    let inner_flag = |f: fn(&Cli) -> bool| inner.as_ref().is_some_and(f);
    if cli.nofile || inner_flag(|i| i.nofile) {
        let (before, after) = loadtest::sys::raise_nofile()
            .context("--nofile: cannot raise the open-file limit (RLIMIT_NOFILE)")?;
        if after > before {
            eprintln!("loadtest: open-file limit raised from {before} to {after}");
        } else {
            eprintln!("loadtest: open-file limit already at the hard limit ({after})");
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads.or(inner.as_ref().and_then(|i| i.threads)) {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build()?;
    // Progress is for a person watching: a live line on stderr, and nothing when
    // stdout goes to a file or pipe.
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let print = |p: &Progress| {
        if let Some(bar) = &bar {
            bar.set_message(p.to_string());
        }
    };
    let progress = bar
        .is_some()
        .then_some(&print as &(dyn Fn(&Progress) + Sync));
    let done = || {
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
    };
    let json = cli.json || inner_flag(|i| i.json);
    let out = Output {
        json,
        file: match cli
            .report
            .as_ref()
            .or(inner.as_ref().and_then(|i| i.report.as_ref()))
        {
            Some(path) => Some(ReportFile::new(path)?),
            None => None,
        },
        command: chart::command_line(std::env::args()),
    };
    let out = &out;
    runtime.block_on(async {
        match (&cli.scenario, &inner) {
            (Scenario::Cluster(o), Some(inner)) => {
                loadtest::cluster::run(o, |access| async move {
                    let common = CommonOptions {
                        url: access.urls,
                        secret: Some(access.secret),
                        api_key: Some(access.api_key),
                        ..inner.common.clone()
                    };
                    scenario(&common, &inner.scenario, progress, &done, out).await
                })
                .await
            }
            (s, _) => scenario(&cli.common, s, progress, &done, out).await,
        }
    })
}

/// The scenario of `cluster ... -- <scenario>`: a loadtest command line of its own,
/// checked before anything starts. The cluster provides --url, --secret and
/// --api-key.
fn cluster_scenario(cli: &Cli, o: &ClusterOptions) -> anyhow::Result<Cli> {
    let env_secret = std::env::var("LOADTEST_SECRET").ok();
    let env_api_key = std::env::var("LOADTEST_API_KEY").ok();
    let untouched = CommonOptions {
        secret: env_secret.clone(),
        api_key: env_api_key.clone(),
        ..CommonOptions::default()
    };
    if format!("{:?}", cli.common) != format!("{untouched:?}") {
        bail!(
            "scenario options go after `--`: loadtest cluster --nodes 3 -- fanout --duration 10s"
        );
    }
    let inner = Cli::try_parse_from(
        std::iter::once("loadtest").chain(o.scenario.iter().map(String::as_str)),
    )
    .unwrap_or_else(|e| e.exit());
    if matches!(inner.scenario, Scenario::Cluster(_) | Scenario::Backend(_)) {
        bail!("`cluster` runs a scenario, not another cluster or a backend");
    }
    let c = &inner.common;
    if !c.url.is_empty() || c.token.is_some() || c.secret != env_secret || c.api_key != env_api_key
    {
        bail!("the cluster provides --url, --secret and --api-key: leave out --url, --secret, --api-key and --token");
    }
    Ok(inner)
}

/// Where a report goes: stdout (a table or JSON) and `--report`'s file.
struct Output {
    /// One JSON object instead of the table (--json).
    json: bool,
    /// --report's file, checked before the run.
    file: Option<ReportFile>,
    /// The command line, for the file (secrets left out).
    command: String,
}

/// Run one scenario and print its report; its verdict. `done` clears the progress
/// line before the report is printed.
async fn scenario(
    common: &CommonOptions,
    scenario: &Scenario,
    progress: Option<ProgressFn<'_>>,
    done: &(dyn Fn() + Sync),
    out: &Output,
) -> anyhow::Result<bool> {
    macro_rules! run {
        ($run:path, $o:expr) => {{
            let report = $run(common, $o, progress).await;
            done();
            finish(report?, out)
        }};
    }
    match scenario {
        Scenario::Fanout(o) => run!(loadtest::fanout::run, o),
        Scenario::Chat(o) => run!(loadtest::chat::run, o),
        Scenario::Connect(o) => run!(loadtest::connect::run, o),
        Scenario::Idle(o) => run!(loadtest::idle::run, o),
        Scenario::Soak(o) => run!(loadtest::soak::run, o),
        Scenario::Backend(o) => {
            done();
            if out.file.is_some() {
                bail!("--report: `backend` serves until Ctrl-C and makes no report");
            }
            loadtest::backend::serve(o).await
        }
        Scenario::Cluster(_) => bail!("`cluster` runs a scenario, not another cluster"),
    }
}

/// Print `report` (one JSON object, or the table), write its file if asked, and
/// return its verdict.
fn finish(report: impl Report, out: &Output) -> anyhow::Result<bool> {
    if out.json {
        println!("{}", serde_json::to_string(&report)?);
        if !report.ok() {
            eprintln!("loadtest: FAILED");
            for line in report.problems() {
                eprintln!("  {line}");
            }
        }
    } else {
        print!("{}", report.table());
    }
    if let Some(file) = &out.file {
        file.write(&report, &out.command)?;
        eprintln!("loadtest: report written to {}", file.path.display());
    }
    Ok(report.ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_its_defaults_match_the_library() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["loadtest", "fanout"]).unwrap();
        let expected = CommonOptions {
            // --secret and --api-key may come from the environment.
            secret: std::env::var("LOADTEST_SECRET").ok(),
            api_key: std::env::var("LOADTEST_API_KEY").ok(),
            ..CommonOptions::default()
        };
        assert_eq!(format!("{:?}", cli.common), format!("{expected:?}"));
        let Scenario::Fanout(opts) = cli.scenario else {
            panic!("fanout parses as fanout");
        };
        assert_eq!(
            format!("{opts:?}"),
            format!("{:?}", FanoutOptions::default())
        );
        let parse = |name: &str| Cli::try_parse_from(["loadtest", name]).unwrap().scenario;
        let Scenario::Chat(chat) = parse("chat") else {
            panic!("chat parses as chat");
        };
        assert_eq!(format!("{chat:?}"), format!("{:?}", ChatOptions::default()));
        let Scenario::Connect(connect) = parse("connect") else {
            panic!("connect parses as connect");
        };
        assert_eq!(
            format!("{connect:?}"),
            format!("{:?}", ConnectOptions::default())
        );
        let Scenario::Idle(idle) = parse("idle") else {
            panic!("idle parses as idle");
        };
        assert_eq!(format!("{idle:?}"), format!("{:?}", IdleOptions::default()));
        let cli = Cli::try_parse_from([
            "loadtest",
            "fanout",
            "--url",
            "ws://a/connection/websocket,ws://b/connection/websocket",
            "--duration",
            "2m",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.common.url.len(), 2);
        assert_eq!(cli.common.duration.as_secs(), 120);
        assert!(cli.json);
    }

    #[test]
    fn soak_defaults_match_the_library_and_cluster_takes_its_scenario_after_dashes() {
        let Scenario::Soak(soak) = Cli::try_parse_from(["loadtest", "soak"]).unwrap().scenario
        else {
            panic!("soak parses as soak");
        };
        assert_eq!(format!("{soak:?}"), format!("{:?}", SoakOptions::default()));

        let cli = Cli::try_parse_from([
            "loadtest", "cluster", "--nodes", "2", "--", "soak", "--rooms", "5", "--json",
        ])
        .unwrap();
        let Scenario::Cluster(o) = &cli.scenario else {
            panic!("cluster parses as cluster");
        };
        assert_eq!((o.nodes, o.keep), (2, false));
        let inner = cluster_scenario(&cli, o).unwrap();
        let Scenario::Soak(soak) = &inner.scenario else {
            panic!("the scenario after -- is soak");
        };
        assert_eq!(soak.rooms, 5);
        assert!(inner.json);
        for bad in [
            &["loadtest", "cluster", "--", "fanout", "--url", "ws://a/"][..],
            &["loadtest", "cluster", "--", "cluster", "--", "fanout"],
            &["loadtest", "--duration", "5s", "cluster", "--", "fanout"],
        ] {
            let cli = Cli::try_parse_from(bad).unwrap();
            let Scenario::Cluster(o) = &cli.scenario else {
                panic!("cluster parses as cluster");
            };
            assert!(cluster_scenario(&cli, o).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_is_taken_before_or_after_the_scenario_and_after_cluster_dashes() {
        let report = |args: &[&str]| Cli::try_parse_from(args).unwrap().report;
        let want = Some(PathBuf::from("r.html"));
        assert_eq!(report(&["loadtest", "--report", "r.html", "fanout"]), want);
        assert_eq!(report(&["loadtest", "soak", "--report", "r.html"]), want);
        let cli = Cli::try_parse_from([
            "loadtest", "cluster", "--", "connect", "--report", "r.html", "--json",
        ])
        .unwrap();
        let Scenario::Cluster(o) = &cli.scenario else {
            panic!("cluster parses as cluster");
        };
        assert_eq!(cluster_scenario(&cli, o).unwrap().report, want);
    }
}
