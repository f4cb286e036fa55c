//! The scenarios against a real gateway started in this process on 127.0.0.1:0, one
//! per test, and the order checker fed sequences directly. One test binary: the
//! gateway and harness build once.

mod chat;
mod cluster;
mod connect;
mod fanout;
mod idle;
mod soak;

use std::time::Duration;

use loadtest::crowd::ConnectionFigures;
use loadtest::{CommonOptions, FanoutReport};
use tokio::sync::oneshot;

const SECRET: &str = "loadtest-test-secret";

/// Tests that run a gateway take this, one at a time: they share two cores, and
/// the idle test measures this process's memory, which the others would move.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway in this process.
struct TestGateway {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    /// A gateway on 127.0.0.1:0 with the memory broker, no publish rate limit, and
    /// pings often enough that the harness must answer them during the run;
    /// `configure` changes the config further.
    async fn start(configure: impl FnOnce(&mut gateway::Config)) -> TestGateway {
        let mut config = gateway::Config {
            listen: "127.0.0.1:0".into(),
            ..gateway::Config::default()
        };
        config.token.hmac_secret = Some(SECRET.into());
        config.client.publish_rate_per_sec = 0;
        config.client.ping_interval = Duration::from_millis(600);
        config.client.pong_timeout = Duration::from_millis(500);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // `::fanout`: the crate, not this binary's `fanout` module.
        let node = gateway::Node::new(config, ::fanout::MemoryBroker::new()).expect("node starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(listener, node, async move {
            stopped.await.ok();
        }));
        TestGateway {
            url: format!("ws://{addr}/connection/websocket"),
            stop,
            task,
        }
    }

    /// Options that reach this gateway with valid tokens, running for `duration`.
    fn common(&self, duration: Duration) -> CommonOptions {
        CommonOptions {
            url: vec![self.url.clone()],
            secret: Some(SECRET.into()),
            duration,
            drain_timeout: Duration::from_secs(3),
            ..CommonOptions::default()
        }
    }

    /// Shut the gateway down and wait for it.
    async fn stop(self) {
        self.stop.send(()).ok();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("gateway stops")
            .unwrap();
    }
}

/// Start a gateway (the defaults of [`TestGateway::start`], then `configure`), run
/// `scenario` against it with options for `duration`, under the test bound and the
/// serial lock, and stop the gateway.
async fn against_gateway<T, F>(
    configure: impl FnOnce(&mut gateway::Config),
    duration: Duration,
    scenario: impl FnOnce(CommonOptions) -> F,
) -> T
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let _serial = SERIAL.lock().await;
    let gw = TestGateway::start(configure).await;
    let out = within(scenario(gw.common(duration))).await;
    gw.stop().await;
    out
}

/// Run a scenario under the test bound.
async fn within<T>(scenario: impl std::future::Future<Output = anyhow::Result<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(20), scenario)
        .await
        .expect("the scenario ends in time")
        .expect("the scenario runs")
}

/// Every connection of a connect or idle run was accepted and held to the end.
fn assert_all_held(c: &ConnectionFigures, connections: u64, table: &str) {
    assert_eq!(
        (c.connections_attempted, c.connections_accepted),
        (connections, connections),
        "{table}"
    );
    assert_eq!((c.connect_errors, c.disconnects), (0, 0), "{table}");
    assert!(c.errors.is_empty(), "{table}");
    let latency = c.connect_latency_us.as_ref().expect("latency measured");
    assert_eq!(latency.count, connections, "{table}");
    assert!(
        latency.max >= latency.p99 && latency.p99 >= latency.p50,
        "{table}"
    );
}

/// A fanout or chat run with every expected delivery, once each, in order.
fn assert_delivered_in_order(report: &FanoutReport, table: &str) {
    assert!(report.outcome.ok, "{table}");
    assert_eq!(report.connect_errors + report.disconnects, 0, "{table}");
    assert_eq!(report.publish_errors, 0, "{table}");
    assert_eq!(report.deliveries, report.expected_deliveries, "{table}");
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.offset_errors,
            report.unexpected_messages
        ),
        (0, 0, 0, 0, 0),
        "{table}"
    );
    let latency = report.latency_us.as_ref().expect("latency measured");
    assert_eq!(latency.count, report.deliveries, "{table}");
    assert!(
        latency.p99 >= latency.p50 && latency.max >= latency.p999,
        "{table}"
    );
}
