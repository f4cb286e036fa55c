//! The fanout scenario against a real gateway started in this process on
//! 127.0.0.1:0, and the order checker fed sequences directly.

use std::time::Duration;

use loadtest::check::{OffsetCheck, SeqCheck, SeqEvent};
use loadtest::{CommonOptions, FanoutOptions};
use tokio::sync::oneshot;

const SECRET: &str = "loadtest-test-secret";

/// A gateway on 127.0.0.1:0 with the memory broker, no publish rate limit, and pings
/// often enough that the harness must answer them during the run.
async fn start_gateway() -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut config = gateway::Config {
        listen: "127.0.0.1:0".into(),
        ..gateway::Config::default()
    };
    config.token.hmac_secret = Some(SECRET.into());
    config.client.publish_rate_per_sec = 0;
    config.client.ping_interval = Duration::from_millis(600);
    config.client.pong_timeout = Duration::from_millis(500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = gateway::Node::new(config, fanout::MemoryBroker::new()).expect("node starts");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway::run(listener, node, async move {
        stopped.await.ok();
    }));
    (format!("ws://{addr}/connection/websocket"), stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_a_real_gateway_delivers_everything_in_order() {
    let (url, stop, task) = start_gateway().await;
    let common = CommonOptions {
        url: vec![url],
        secret: Some(SECRET.into()),
        duration: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(3),
        ..CommonOptions::default()
    };
    let opts = FanoutOptions {
        rooms: 2,
        subscribers: 20,
        publishers: 3,
        rate: 300.0,
        payload: 100,
        ..FanoutOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        loadtest::fanout::run(&common, &opts, None),
    )
    .await
    .expect("the scenario ends in time")
    .expect("the scenario runs");

    let table = report.table();
    eprintln!("{table}");
    assert!(report.ok, "{table}");
    assert_eq!(report.connections, 2 * 20 + 3, "{table}");
    assert_eq!(report.connect_errors + report.disconnects, 0, "{table}");
    assert!(report.publications > 300, "{table}");
    assert_eq!(report.publish_errors, 0, "{table}");
    // Room 0 has publishers 0 and 2, room 1 has publisher 1; each publisher also
    // receives its own room.
    assert!(
        report.expected_deliveries > report.publications * 20,
        "{table}"
    );
    assert_eq!(report.deliveries, report.expected_deliveries, "{table}");
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.offset_errors
        ),
        (0, 0, 0, 0),
        "{table}"
    );
    let latency = report.latency_us.as_ref().expect("latency measured");
    assert_eq!(latency.count, report.deliveries);
    assert!(
        latency.p99 >= latency.p50 && latency.max >= latency.p999,
        "{table}"
    );
    assert!(report.harness_cpu_seconds > 0.0);
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
    ] {
        assert!(json.get(key).is_some(), "report has {key}: {json}");
    }
    assert!(json["latency_us"]["p999"].is_u64(), "{json}");

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("gateway stops")
        .unwrap();
}

#[tokio::test]
async fn bad_token_is_reported_as_connect_errors() {
    let (url, stop, _task) = start_gateway().await;
    let common = CommonOptions {
        url: vec![url],
        secret: Some("not-the-secret".into()),
        duration: Duration::from_millis(200),
        drain_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(5),
        ..CommonOptions::default()
    };
    let opts = FanoutOptions {
        subscribers: 2,
        ..FanoutOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        loadtest::fanout::run(&common, &opts, None),
    )
    .await
    .expect("the scenario ends in time")
    .expect("the scenario runs");
    assert!(!report.ok);
    assert_eq!(report.connect_errors, 3, "{}", report.table());
    assert!(
        report.problems.iter().any(|p| p.contains("3500")),
        "the close code is reported: {:?}",
        report.problems
    );
    stop.send(()).ok();
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
