//! The admin listener: `/metrics` in the Prometheus text format after real
//! traffic, parsed with a Prometheus parser; its health endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use fanout::testing::RedisServer;
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::backend::{Backend, Mode};
use crate::support::{
    eventually, http_get, http_post, http_request, token, ws_connect, Client, TestGateway, WAIT,
};

const KEY: &str = "metrics-api-key";

/// A gateway with its admin listener on 127.0.0.1:0, the server API on, and a
/// small queue budget; returns it and the admin address.
async fn gateway() -> (TestGateway, SocketAddr) {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let gw = TestGateway::with_admin_listener(admin, |c| {
        c.api_key = Some(KEY.into());
        c.client.max_connections = 3;
        c.client.queue_max_bytes = 4096;
    })
    .await;
    (gw, admin_addr)
}

async fn api_publish(gw: &TestGateway, channel: &str, data: Value) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, _, text) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", KEY), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"result\""), "{text}");
}

/// `GET /metrics` on `admin`, checked and parsed.
async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, headers, body) = http_request(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        content_type,
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition")
}

/// The value of the one sample `name` with exactly `labels`.
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                && s.labels.len() == labels.len()
        })
        .filter_map(|s| match s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one sample {name}{labels:?}: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic() {
    let (gw, admin) = gateway().await;
    // Three clients: a and b in "room", c alone in "solo".
    let mut a = gw.client("a").await;
    let mut b = gw.client("b").await;
    let mut c = gw.client("c").await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    c.subscribe("solo").await;
    // A fourth socket is over max_connections: 503.
    let err = ws_connect(gw.addr, &[]).await.err().expect("refused");
    assert_eq!(err, "Invalid status code: 503");

    // One publication from the API to two subscribers.
    api_publish(&gw, "room", json!({"n": 1})).await;
    assert_eq!(a.push("room").await["pub"]["data"], json!({"n": 1}));
    assert_eq!(b.push("room").await["pub"]["data"], json!({"n": 1}));
    // One from a client to itself.
    let r = c.publish("solo", json!("hi")).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(c.push("solo").await["pub"]["data"], json!("hi"));
    // One larger than c's whole queue budget: c is closed as slow.
    api_publish(&gw, "solo", json!("x".repeat(5000))).await;
    assert_eq!(c.closed().await, (3008, "slow".to_string()));
    eventually("c's connection to end", || {
        gw.node.metrics.connections.get() == 2
    })
    .await;
    // A connect with a forged token fails (3500).
    let mut d = Client::open(gw.addr).await;
    d.send("connect", json!({"token": format!("{}x", token("d"))}))
        .await;
    assert_eq!(d.closed().await.0, 3500);
    eventually("d's connection to end", || {
        gw.node.metrics.connections.get() == 2
    })
    .await;

    let m = scrape(admin).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&m, "gateway_build_info", &[("version", version)]),
        1.0
    );
    assert_eq!(value(&m, "gateway_connections", &[]), 2.0);
    let connects = |result| value(&m, "gateway_connects_total", &[("result", result)]);
    assert_eq!(connects("ok"), 3.0);
    assert_eq!(connects("refused"), 1.0);
    assert_eq!(connects("error"), 1.0);
    let disconnects = |code| value(&m, "gateway_disconnects_total", &[("code", code)]);
    assert_eq!(disconnects("3008"), 1.0);
    assert_eq!(disconnects("3500"), 1.0);
    assert_eq!(disconnects("1000"), 0.0);
    assert_eq!(disconnects("other"), 0.0);
    assert_eq!(value(&m, "gateway_subscriptions", &[]), 2.0);
    assert_eq!(value(&m, "gateway_rooms", &[]), 1.0);
    assert_eq!(value(&m, "gateway_users", &[]), 2.0);
    let publications = |source| value(&m, "gateway_publications_total", &[("source", source)]);
    assert_eq!(publications("api"), 2.0);
    assert_eq!(publications("client"), 1.0);
    assert_eq!(value(&m, "gateway_broker_publications_total", &[]), 3.0);
    // 2 in "room", 1 + 1 (refused by the full queue) in "solo".
    assert_eq!(value(&m, "gateway_deliveries_total", &[]), 4.0);
    assert_eq!(
        value(&m, "gateway_slow_consumer_disconnects_total", &[]),
        1.0
    );
    let dropped = value(&m, "gateway_queue_dropped_bytes_total", &[]);
    assert!(
        (5000.0..5200.0).contains(&dropped),
        "the refused push, about 5000 bytes: {dropped}"
    );
    assert_eq!(value(&m, "gateway_positions_lost_total", &[]), 0.0);
    assert_eq!(value(&m, "gateway_rooms_lost_total", &[]), 0.0);
    let commands = |command| {
        value(
            &m,
            "gateway_command_duration_seconds_count",
            &[("command", command)],
        )
    };
    assert_eq!(commands("connect"), 4.0);
    assert_eq!(commands("subscribe"), 3.0);
    assert_eq!(commands("publish"), 1.0);
    assert_eq!(commands("history"), 0.0);
    assert_eq!(
        value(&m, "gateway_broker_publish_duration_seconds_count", &[]),
        3.0
    );
    drop((a, b));
}

#[tokio::test]
async fn the_admin_listener_serves_health_and_only_that() {
    let (gw, admin) = gateway().await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/api/info").await.0, 404);
    assert_eq!(http_get(admin, "/connection/websocket").await.0, 404);
    // Metrics are not on the client port.
    assert_eq!(http_get(gw.addr, "/metrics").await.0, 404);
    gw.node.set_ready(false);
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
}

/// On Redis: a restart of Redis shows in the engine's counters (command errors,
/// pub/sub reconnects), the lost stream in `gateway_positions_lost_total`, and
/// presence refresh rounds in their summary.
#[tokio::test]
async fn redis_metrics_count_a_restart() {
    let mut redis = RedisServer::start();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let gw = TestGateway::on_redis_with_admin(&redis.url(), Some(admin), |_| {}).await;
    let mut p = gw.client("p").await;
    p.subscribe("room").await;
    let mut s = gw.client("s").await;
    let r = s
        .call("subscribe", json!({"channel": "room", "recoverable": true}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = p.publish("room", json!({"n": 1})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(s.push("room").await["pub"]["offset"], json!(1));

    let m = scrape(admin_addr).await;
    assert_eq!(value(&m, "gateway_redis_command_errors_total", &[]), 0.0);
    assert_eq!(value(&m, "gateway_redis_pubsub_reconnects_total", &[]), 0.0);
    assert_eq!(value(&m, "gateway_redis_dropped_messages_total", &[]), 0.0);
    assert_eq!(value(&m, "gateway_redis_diverged_streams_total", &[]), 0.0);
    let refreshes = "gateway_redis_presence_refresh_duration_seconds_count";
    assert!(value(&m, refreshes, &[]) >= 1.0, "one round at start");

    redis.kill();
    eventually("the node to go not ready", || !gw.node.is_ready()).await;
    let r = p.publish("room", json!({"n": "during"})).await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    redis.restart();
    eventually("the node to be ready again", || gw.node.is_ready()).await;
    let u = s.push("room").await;
    assert_eq!(u["unsubscribe"]["code"], json!(2500), "{u}");

    let m = scrape(admin_addr).await;
    assert!(value(&m, "gateway_redis_command_errors_total", &[]) >= 1.0);
    assert!(value(&m, "gateway_redis_pubsub_reconnects_total", &[]) >= 1.0);
    assert_eq!(value(&m, "gateway_positions_lost_total", &[]), 1.0);
    let publications = |source| value(&m, "gateway_publications_total", &[("source", source)]);
    assert_eq!(publications("client"), 1.0, "the failed one is not counted");
    let publishes = value(
        &m,
        "gateway_command_duration_seconds_count",
        &[("command", "publish")],
    );
    assert_eq!(publishes, 2.0);
    assert_eq!(
        value(&m, "gateway_broker_publish_duration_seconds_count", &[]),
        2.0
    );
}

/// The in-memory engine has no Redis counters.
#[tokio::test]
async fn no_redis_metrics_on_the_memory_engine() {
    let (_gw, admin) = gateway().await;
    let m = scrape(admin).await;
    assert!(m
        .samples
        .iter()
        .all(|s| !s.metric.starts_with("gateway_redis_")));
    assert!(!m.samples.is_empty());
}

/// The admin listener serves through the drain, so that it can be watched: the
/// 3001 closes are counted as they happen, and it closes when the node is done.
#[tokio::test]
async fn metrics_are_served_during_the_drain() {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let mut gw = TestGateway::with_admin_listener(admin, |c| {
        c.shutdown.readiness_delay = Duration::from_millis(100);
        c.shutdown.drain_window = Duration::from_secs(2);
        c.shutdown.grace_period = Duration::from_secs(5);
    })
    .await;
    let mut a = gw.client("a").await;
    let mut b = gw.client("b").await;
    gw.signal_shutdown();
    // Of two clients, the first goes at once, the second halfway through the window.
    let first = tokio::select! {
        c = a.closed() => c,
        c = b.closed() => c,
    };
    assert_eq!(first.0, 3001);
    eventually("the first to end", || {
        gw.node.metrics.connections.get() == 1
    })
    .await;
    let m = scrape(admin_addr).await;
    assert_eq!(value(&m, "gateway_connections", &[]), 1.0);
    let shutdowns = value(&m, "gateway_disconnects_total", &[("code", "3001")]);
    assert_eq!(shutdowns, 1.0);
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 503);
    gw.shutdown().await;
    assert_eq!(gw.node.metrics.connections.get(), 0);
    let refused = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(admin_addr)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "the admin listener closed with the node"
    );
}

/// Calls to the backend are counted by kind and result, and timed.
#[tokio::test]
async fn proxy_calls_are_counted_by_kind_and_result() {
    let backend = Backend::start().await;
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let gw = TestGateway::with_admin_listener(admin, |c| {
        c.proxy.connect_url = Some(backend.url("connect"));
        c.proxy.timeout = Duration::from_millis(200);
    })
    .await;
    let connect = |cookie: &'static str| async move {
        let mut c = Client::from_ws(ws_connect(gw.addr, &[("Cookie", cookie)]).await.unwrap());
        c.call("connect", json!({})).await
    };
    let r = connect("session=alice").await;
    assert!(r.get("connect").is_some(), "{r}");
    backend.set_mode(Mode::Failing);
    let r = connect("session=bob").await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    backend.set_mode(Mode::Slow(Duration::from_millis(600)));
    let r = connect("session=carol").await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");

    let m = scrape(admin_addr).await;
    let calls = "gateway_proxy_calls_total";
    for (result, n) in [("ok", 1.0), ("status", 1.0), ("timeout", 1.0)] {
        let labels = [("kind", "connect"), ("result", result)];
        assert_eq!(value(&m, calls, &labels), n, "{result}");
    }
    let timed = "gateway_proxy_duration_seconds_count";
    assert_eq!(value(&m, timed, &[("kind", "connect")]), 3.0);
}
