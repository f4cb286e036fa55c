//! The idle scenario: connections held through several pings, memory measured.

use std::time::Duration;

use loadtest::crowd::CrowdOptions;
use loadtest::{IdleOptions, Report};

use super::{against_gateway, assert_all_held};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_their_memory_measured() {
    // The gateway runs in this process: its memory is this process's.
    let opts = IdleOptions {
        crowd: CrowdOptions {
            connections: 200,
            rooms: 10,
            ..CrowdOptions::default()
        },
        gateway_pid: Some(std::process::id()),
        settle: Duration::from_millis(500),
    };
    let opts = &opts;
    // 2 s: several 600 ms pings, each answered within the 500 ms pong timeout.
    let report = against_gateway(
        |_| {},
        Duration::from_secs(2),
        |common| async move { loadtest::idle::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    eprintln!("{table}");
    assert!(report.ok(), "{table}");
    assert_all_held(&report.connections, 200, &table);
    let before = report.gateway_rss_before_bytes.expect("rss before");
    let after = report.gateway_rss_after_bytes.expect("rss after");
    assert!(before > 0 && after > 0, "{table}");
    assert!(
        report.gateway_rss_end_bytes.is_some_and(|b| b > 0),
        "{table}"
    );
    let per_connection = report.gateway_bytes_per_connection.expect("per connection");
    assert!(per_connection > 0.0, "{table}");
    assert!(report.harness_rss_before_bytes > 0 && report.harness_rss_after_bytes > 0);
    assert!(report.harness_bytes_per_connection.is_some());
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert!(json["gateway_rss_before_bytes"].is_u64(), "{json}");
    assert!(json["gateway_bytes_per_connection"].is_f64(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gateway_pid_gateway_memory_is_null_and_said_so() {
    let opts = IdleOptions {
        crowd: CrowdOptions {
            connections: 10,
            ..CrowdOptions::default()
        },
        settle: Duration::from_millis(100),
        ..IdleOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |_| {},
        Duration::from_millis(200),
        |common| async move { loadtest::idle::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    assert!(report.ok(), "{table}");
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "gateway_rss_before_bytes",
        "gateway_rss_after_bytes",
        "gateway_bytes_per_connection",
    ] {
        assert!(json[key].is_null(), "{key} is null: {json}");
    }
    assert!(table.contains("not measured"), "{table}");
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
}
