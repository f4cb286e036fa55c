//! The chat scenario: every member publishes in its room and receives it.

use std::time::Duration;

use loadtest::{ChatOptions, Report};

use super::{against_gateway, assert_delivered_in_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_members_receive_every_publication_of_their_room_in_order() {
    let opts = ChatOptions {
        rooms: 5,
        members: 4,
        rate: 20.0,
        ..ChatOptions::default()
    };
    let opts = &opts;
    let report = against_gateway(
        |_| {},
        Duration::from_secs(2),
        |common| async move { loadtest::chat::run(&common, opts, None).await },
    )
    .await;

    let table = report.table();
    eprintln!("{table}");
    assert_delivered_in_order(&report, &table);
    assert_eq!(report.scenario, "chat");
    assert_eq!(report.connections, 5 * 4, "{table}");
    // 20 members at 20/s for 2 s: 40 each, one more for a member whose phase
    // lands it on the last instant.
    assert!(
        (20 * 38..=20 * 41).contains(&report.publications),
        "{table}"
    );
    // Each publication reaches the 4 members of its room, its publisher included.
    assert_eq!(
        report.expected_deliveries,
        report.publications * 4,
        "{table}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "chat");
    assert_eq!(json["parameters"]["members_per_room"], 4, "{json}");
    assert_eq!(json["parameters"]["publishers"], 20, "{json}");
}
