//! The connect scenario: a storm that the gateway accepts whole, and one that
//! passes its connection limit.

use std::time::Duration;

use loadtest::backend::Backend;
use loadtest::crowd::CrowdOptions;
use loadtest::{ConnectOptions, Report};

use super::{against_gateway, assert_all_held};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_is_accepted_whole_and_held_until_the_last() {
    let opts = ConnectOptions {
        crowd: CrowdOptions {
            connections: 300,
            rooms: 7,
            ..CrowdOptions::default()
        },
        concurrency: 64,
        ..ConnectOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |_| {},
        Duration::ZERO,
        |common| async move { loadtest::connect::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    eprintln!("{table}");
    assert!(report.ok(), "{table}");
    let c = &report.connections;
    assert_all_held(c, 300, &table);
    assert!(
        c.accepted_per_sec > 0.0 && c.connect_seconds > 0.0,
        "{table}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "connections_attempted",
        "connections_accepted",
        "accepted_per_sec",
        "errors",
        "harness_cpu_seconds",
    ] {
        assert!(json.get(key).is_some(), "report has {key}: {json}");
    }
    assert!(json["connect_latency_us"]["p90"].is_u64(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_gateway_limit_are_counted_by_http_status() {
    // One at a time, so the gateway has counted each before the next arrives.
    let opts = ConnectOptions {
        crowd: CrowdOptions {
            connections: 60,
            ..CrowdOptions::default()
        },
        concurrency: 1,
        ..ConnectOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |c| c.client.max_connections = 50,
        Duration::ZERO,
        |common| async move { loadtest::connect::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    assert!(!report.ok(), "{table}");
    let c = &report.connections;
    assert_eq!(
        (c.connections_accepted, c.connect_errors),
        (50, 10),
        "{table}"
    );
    assert_eq!(c.errors.get("http 503"), Some(&10), "{table}");
    assert_eq!(c.errors.len(), 1, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_without_tokens_goes_through_the_connect_proxy() {
    let backend = Backend::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let connect_url = backend.connect_url();
    let opts = ConnectOptions {
        crowd: CrowdOptions {
            connections: 200,
            rooms: 5,
            ..CrowdOptions::default()
        },
        concurrency: 32,
        no_token: true,
    };
    let opts = &opts;
    let report = against_gateway(
        |c| c.proxy.connect_url = Some(connect_url),
        Duration::ZERO,
        |common| async move { loadtest::connect::run(&common, opts, None).await },
    )
    .await;
    let counts = backend.stop().await;

    let table = report.table();
    eprintln!("{table}\nbackend: {counts}");
    assert!(report.ok(), "{table}");
    assert!(report.parameters.no_token, "{table}");
    assert_all_held(&report.connections, 200, &table);
    // Every connection was admitted by the backend, once.
    assert_eq!(counts.connect, 200, "{counts}");
    assert_eq!(counts.other, 0, "{counts}");
}
