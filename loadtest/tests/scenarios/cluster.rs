//! `loadtest cluster` end to end: the loadtest binary starts redis-server (from
//! PATH) and two gateway processes, runs a short fanout against them, prints the
//! report and stops them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fanout::testing::run_bounded;

use super::SERIAL;

/// Bound on building the gateway binary when it is missing.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on one `loadtest cluster` run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `<target>/debug/gateway`, built first (bounded) when missing.
fn gateway_binary(scratch: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/gateway");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let (status, _, err) = run_bounded(
            Command::new(cargo)
                .args(["build", "-p", "gateway"])
                .current_dir(env!("CARGO_MANIFEST_DIR")),
            scratch,
            BUILD_TIMEOUT,
        );
        assert!(status.success(), "cargo build -p gateway: {err}");
    }
    assert!(bin.exists(), "{} after cargo build", bin.display());
    bin
}

/// A scratch directory of this test process for `name`.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `loadtest cluster --nodes 2 --gateway <built> <cluster_args> -- <scenario>`;
/// it must succeed with one JSON report on stdout. The report and stderr.
fn cluster_run(
    scratch: &Path,
    cluster_args: &[&str],
    scenario: &[&str],
) -> (serde_json::Value, String) {
    let gateway = gateway_binary(scratch);
    let (status, stdout, stderr) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["cluster", "--nodes", "2", "--gateway"])
            .arg(&gateway)
            .args(cluster_args)
            .arg("--")
            .args(scenario),
        scratch,
        RUN_TIMEOUT,
    );
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = serde_json::from_str(stdout.trim()).expect("one JSON report");
    (report, stderr)
}

#[tokio::test]
async fn cluster_starts_redis_and_two_gateways_runs_fanout_and_stops_them() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("cluster-test");
    let loadtest = env!("CARGO_BIN_EXE_loadtest");
    let (report, stderr) = cluster_run(
        &scratch,
        &[],
        &[
            "fanout",
            "--rooms",
            "2",
            "--subscribers",
            "5",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--json",
        ],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["publications"].as_u64() > Some(300), "{report}");
    let urls: Vec<&str> = report["parameters"]["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert_eq!(urls.len(), 2, "{report}");
    assert!(
        stderr.contains("(--gateway)")
            && stderr.contains("redis-server")
            && stderr.contains("stopped:"),
        "{stderr}"
    );
    // Torn down: the nodes no longer listen.
    for url in urls {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listening: {stderr}"
        );
    }

    // No gateway: a clear message and exit code 2, nothing started.
    let (status, _, stderr) = run_bounded(
        Command::new(loadtest).args([
            "cluster",
            "--gateway",
            "/nonexistent/gateway",
            "--",
            "fanout",
        ]),
        &scratch,
        RUN_TIMEOUT,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--gateway /nonexistent/gateway"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&scratch).ok();
}

#[tokio::test]
async fn cluster_passes_its_api_key_and_its_connect_proxy_to_the_scenario() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("cluster-api-test");
    // Publishing through the server API of both nodes, no key given.
    let (report, _) = cluster_run(
        &scratch,
        &[],
        &[
            "fanout",
            "--publish-via",
            "api",
            "--api-in-flight",
            "4",
            "--rooms",
            "2",
            "--subscribers",
            "5",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--json",
        ],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["parameters"]["publish_via"], "api", "{report}");
    let publications = report["publications"].as_u64().unwrap_or(0);
    assert!(publications > 300, "{report}");
    assert_eq!(
        report["deliveries"], report["expected_deliveries"],
        "{report}"
    );
    for zero in ["lost", "duplicated", "reordered", "publish_errors"] {
        assert_eq!(report[zero], 0, "{zero}: {report}");
    }
    let api = &report["api"];
    assert_eq!(api["requests"].as_u64(), Some(publications), "{report}");
    assert_eq!(api["urls"].as_array().map(Vec::len), Some(2), "{report}");
    assert_eq!(api["errors"], serde_json::json!({}), "{report}");
    assert_eq!(
        api["request_latency_us"]["count"].as_u64(),
        Some(publications),
        "{report}"
    );

    // A connect storm without tokens, admitted by the stand-in backend.
    let (report, stderr) = cluster_run(
        &scratch,
        &["--connect-proxy"],
        &["connect", "--no-token", "--connections", "60", "--json"],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["connections_accepted"], 60, "{report}");
    assert!(stderr.contains("backend answered: connect 60,"), "{stderr}");
    std::fs::remove_dir_all(&scratch).ok();
}

#[tokio::test]
async fn cluster_passes_report_to_the_scenario_whose_file_adds_up_to_the_json() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("cluster-report-test");
    let file = scratch.join("fanout.html");
    let (report, stderr) = cluster_run(
        &scratch,
        &[],
        &[
            "fanout",
            "--rooms",
            "2",
            "--subscribers",
            "10",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--json",
            "--report",
            file.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert!(stderr.contains("report written to"), "{stderr}");
    let html = std::fs::read_to_string(&file).expect("the report file");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let xml = roxmltree::Document::parse_with_options(&html, options)
        .unwrap_or_else(|e| panic!("well-formed: {e}"));
    let charts: Vec<&str> = xml
        .descendants()
        .filter(|n| n.has_tag_name("figure"))
        .filter_map(|n| n.attribute("id"))
        .collect();
    assert_eq!(charts, ["latency", "deliveries", "histogram", "events"]);
    let svgs = xml
        .descendants()
        .filter(|n| n.tag_name().name() == "svg")
        .count();
    assert_eq!(svgs, 4, "one inline SVG per chart");
    let totals = xml
        .descendants()
        .find(|n| n.attribute("id") == Some("totals"))
        .expect("the totals");
    let total = |name: &str| totals.attribute(name).and_then(|v| v.parse::<u64>().ok());
    // What the per-second buckets add up to is what the run counted.
    assert_eq!(total("data-deliveries"), report["deliveries"].as_u64());
    assert_eq!(
        total("data-delivery-latency"),
        report["latency_us"]["count"].as_u64()
    );
    assert_eq!(total("data-connect"), report["connections"].as_u64());
    assert!(html.contains("loadtest fanout: <span class=\"ok\">OK</span>"));
    // The run's parameters are on the page, and nothing needs a script to show.
    let command = xml
        .descendants()
        .find(|n| n.has_tag_name("th") && n.text() == Some("command"))
        .and_then(|th| th.next_sibling_element())
        .map(|td| {
            td.descendants()
                .filter_map(|n| n.text())
                .collect::<String>()
        })
        .expect("the command row");
    assert!(command.contains("--subscribers 10"), "{command}");
    assert!(
        !xml.descendants().any(|n| n.has_tag_name("script")),
        "a script in the report"
    );
    std::fs::remove_dir_all(&scratch).ok();
}
