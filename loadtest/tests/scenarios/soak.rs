//! The soak scenario: members drop their connection every interval and recover.

use std::time::Duration;

use loadtest::{Report, SoakOptions, SoakReport};

use super::against_gateway;

/// Run soak for `seconds` against a gateway whose top-level channels keep
/// `history_size` publications.
async fn soak(history_size: usize, seconds: u64, opts: SoakOptions) -> SoakReport {
    let opts = &opts;
    let report = against_gateway(
        |c| c.channel.history_size = history_size,
        Duration::from_secs(seconds),
        |common| async move { loadtest::soak::run(&common, opts, None).await },
    )
    .await;
    eprintln!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_members_recover_every_publication_across_reconnects() {
    let opts = SoakOptions {
        rooms: 3,
        members: 4,
        // Several publications a room while a member is away (up to 500 ms), so
        // recoveries return some.
        rate: 2.0,
        reconnect_every: Duration::from_secs(1),
        ..SoakOptions::default()
    };
    let report = soak(100, 4, opts).await;
    let (c, table) = (&report.counts, report.table());
    assert!(report.ok(), "{table}");
    assert_eq!(report.scenario, "soak");
    assert_eq!(report.connections, 3 * 4, "{table}");
    // 12 members, once a second for 4 s; the last interval's moment may fall
    // after the end.
    assert!(c.reconnects >= 12 * 2, "{table}");
    assert!(
        c.recovered_ok > 0 && c.recovered_publications > 0,
        "{table}"
    );
    assert_eq!(c.recovery_failed, 0, "{table}");
    assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 0), "{table}");
    assert_eq!((c.reconnect_errors, c.disconnects), (0, 0), "{table}");
    assert_eq!((c.publish_errors, c.unanswered), (0, 0), "{table}");
    // Every member receives every publication of its room, live or recovered.
    assert_eq!(c.deliveries, c.publications * 4, "{table}");
    let latency = report.latency_us.as_ref().expect("latency measured");
    assert!(latency.count < c.deliveries, "recovered ones are not timed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_counts_failed_recoveries_and_fails_on_them_only_when_strict() {
    // One publication of history at 40 publications/s a room: a member away for
    // more than 25 ms cannot recover.
    let opts = SoakOptions {
        rooms: 1,
        members: 4,
        rate: 10.0,
        reconnect_every: Duration::from_secs(1),
        ..SoakOptions::default()
    };
    let report = soak(1, 3, opts.clone()).await;
    let (c, table) = (&report.counts, report.table());
    assert!(c.recovery_failed > 0, "{table}");
    // Checking restarts from the new position: nothing counts as lost.
    assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 0), "{table}");
    assert!(report.ok(), "not a failure without --strict: {table}");

    let strict = SoakOptions {
        strict: true,
        ..opts
    };
    let report = soak(1, 3, strict).await;
    assert!(report.counts.recovery_failed > 0, "{}", report.table());
    assert!(!report.ok(), "a failure with --strict: {}", report.table());
}
