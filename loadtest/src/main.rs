//! `loadtest`: run a load scenario against gateways and print its report. Exit 0
//! when every check passed, 1 when one failed, 2 when the run could not be made.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadtest::{CommonOptions, FanoutOptions, Progress};

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
    /// duplicates, order.
    Fanout(FanoutOptions),
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
    if cli.nofile {
        let (before, after) = loadtest::sys::raise_nofile()
            .context("--nofile: cannot raise the open-file limit (RLIMIT_NOFILE)")?;
        if after > before {
            eprintln!("loadtest: open-file limit raised from {before} to {after}");
        } else {
            eprintln!("loadtest: open-file limit already at the hard limit ({after})");
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build()?;
    // Progress is for a person watching: quiet when stdout goes to a file or pipe.
    let print = |p: &Progress| eprintln!("{p}");
    let progress = std::io::stdout()
        .is_terminal()
        .then_some(&print as &(dyn Fn(&Progress) + Sync));
    let report = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Fanout(opts) => loadtest::fanout::run(&cli.common, opts, progress).await,
        }
    })?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
        if !report.ok {
            eprintln!("loadtest: FAILED");
            for line in &report.problems {
                eprintln!("  {line}");
            }
        }
    } else {
        print!("{}", report.table());
    }
    Ok(report.ok)
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
            // --secret may come from the environment.
            secret: std::env::var("LOADTEST_SECRET").ok(),
            ..CommonOptions::default()
        };
        assert_eq!(format!("{:?}", cli.common), format!("{expected:?}"));
        let Scenario::Fanout(opts) = cli.scenario;
        assert_eq!(
            format!("{opts:?}"),
            format!("{:?}", FanoutOptions::default())
        );
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
}
