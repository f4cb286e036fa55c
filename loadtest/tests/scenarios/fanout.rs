//! The fanout scenario, and the order checker fed sequences directly.

use std::time::Duration;

use loadtest::check::{OffsetCheck, SeqCheck, SeqEvent};
use loadtest::{CommonOptions, FanoutOptions, Report};

use super::{against_gateway, assert_delivered_in_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_a_real_gateway_delivers_everything_in_order() {
    let opts = FanoutOptions {
        rooms: 2,
        subscribers: 20,
        publishers: 3,
        rate: 300.0,
        payload: 100,
        ..FanoutOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |_| {},
        Duration::from_secs(2),
        |common| async move { loadtest::fanout::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    eprintln!("{table}");
    assert_delivered_in_order(&report, &table);
    assert_eq!(report.connections, 2 * 20 + 3, "{table}");
    assert!(report.publications > 300, "{table}");
    // Room 0 has publishers 0 and 2 and 22 receivers, room 1 has publisher 1 and
    // 21: each publisher also receives its own room.
    assert!(
        (report.publications * 21..=report.publications * 22).contains(&report.expected_deliveries),
        "{table}"
    );
    assert!(report.outcome.harness_cpu_seconds > 0.0);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "scenario",
        "parameters",
        "connections",
        "publications",
        "publish_errors",
        "deliveries",
        "expected_deliveries",
        "deliveries_per_sec",
        "lost",
        "duplicated",
        "reordered",
        "connect_errors",
        "harness_cpu_seconds",
        "wall_seconds",
        "ok",
        "problems",
    ] {
        assert!(json.get(key).is_some(), "report has {key}: {json}");
    }
    assert!(json["latency_us"]["p999"].is_u64(), "{json}");
}

#[tokio::test]
async fn bad_token_is_reported_as_connect_errors() {
    let opts = FanoutOptions {
        subscribers: 2,
        ..FanoutOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |_| {},
        Duration::from_millis(200),
        |common| async move {
            let common = CommonOptions {
                secret: Some("not-the-secret".into()),
                drain_timeout: Duration::from_millis(200),
                connect_timeout: Duration::from_secs(5),
                ..common
            };
            loadtest::fanout::run(&common, opts, None).await
        },
    )
    .await;
    assert!(!report.ok());
    assert_eq!(report.connect_errors, 3, "{}", report.table());
    assert!(
        report.problems().iter().any(|p| p.contains("3500")),
        "the close code is reported: {:?}",
        report.problems()
    );
}

#[test]
fn checker_detects_loss_duplicates_and_reordering() {
    let mut c = SeqCheck::default();
    let events: Vec<SeqEvent> = [1, 2, 5, 5, 3, 6, 7]
        .iter()
        .map(|&q| c.observe(q))
        .collect();
    assert_eq!(
        events,
        vec![
            SeqEvent::Next,
            SeqEvent::Next,
            SeqEvent::Gap { from: 3, to: 4 },
            SeqEvent::Duplicate,
            SeqEvent::Reordered { last: 5 },
            SeqEvent::Next,
            SeqEvent::Next,
        ]
    );
    assert_eq!((c.gaps, c.duplicated, c.reordered), (2, 1, 1));
    // Ten were published: 3 (late) and 4 never came in order, 8..=10 never came.
    assert_eq!(c.lost(10), 5);
    // A clean stream loses nothing; its missing tail is loss.
    let mut clean = SeqCheck::default();
    (1..=10).for_each(|q| assert_eq!(clean.observe(q), SeqEvent::Next));
    assert_eq!((clean.lost(10), clean.lost(12)), (0, 2));
    // Publications the server refused are not counted as published, so their gap is
    // not loss: 1, 2, (3 refused), 4 of 3 accepted.
    let mut refused = SeqCheck::default();
    [1, 2, 4].iter().for_each(|&q| {
        refused.observe(q);
    });
    assert_eq!(refused.lost(3), 0);

    let mut o = OffsetCheck::default();
    assert_eq!(o.observe(0), None, "no offset, no check");
    assert_eq!(o.observe(41), None, "the first offset may be anything");
    assert_eq!(o.observe(42), None);
    assert_eq!(o.observe(44), Some(42));
    assert_eq!(o.observe(44), Some(44));
    assert_eq!(o.observe(43), Some(44));
    assert_eq!(o.errors, 3);
}
