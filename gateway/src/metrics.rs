//! The node's metrics, all defined here, in a per-node Prometheus registry that
//! the admin listener serves at `GET /metrics` (text format 0.0.4). No metric has
//! a user, client or room label: every label takes a small, fixed set of values.
//!
//! | metric | type | incremented in |
//! | --- | --- | --- |
//! | `gateway_build_info{version}` | gauge, always 1 | here |
//! | `gateway_connections` | gauge | `ws` (upgraded socket opens, task ends) |
//! | `gateway_connects_total{result="ok"\|"refused"\|"error"}` | counter | `conn` (connect command), `server` (503 at `max_connections`) |
//! | `gateway_disconnects_total{code}` | counter | `ws` (the close frame sent; `1006`: none could be) |
//! | `gateway_subscriptions`, `gateway_rooms`, `gateway_users` | gauges | read from the hub at scrape |
//! | `gateway_publications_total{source="client"\|"api"}` | counter | `node` (`Node::publish`, for `conn::publish` and `api::publish`: accepted by the broker) |
//! | `gateway_broker_publications_total` | counter | `hub` (publications the broker delivered to this node) |
//! | `gateway_deliveries_total` | counter | `hub` (one add per publication: its local recipients) |
//! | `gateway_slow_consumer_disconnects_total` | counter | `outbound` (3008) |
//! | `gateway_queue_dropped_bytes_total` | counter | `outbound` (bytes queued or refused at a 3008) |
//! | `gateway_positions_lost_total` | counter | `conn::subscribe` (2500 unsubscribe pushes) |
//! | `gateway_rooms_lost_total` | counter | `hub` (rooms the broker could not repair) |
//! | `gateway_frames_written_total` | counter | `ws` |
//! | `gateway_protocol_errors_total` | counter | `ws` (closes for a bad frame or command) |
//! | `gateway_command_duration_seconds{command}` | histogram | `conn` (client commands) |
//! | `gateway_read_pauses_total`, `gateway_read_paused_seconds_total` | counters | `ws` (a connection's publish pipeline was full, so its socket was not read: overload as backpressure) |
//! | `gateway_scheduler_lag_seconds` | gauge | `load` (how late the runtime runs a ticking task: saturation) |
//! | `gateway_broker_publish_duration_seconds` | histogram | `node` (`Node::publish`: every publish through the broker) |
//! | `gateway_redis_command_errors_total`, `gateway_redis_pubsub_reconnects_total`, `gateway_redis_gap_repairs_total`, `gateway_redis_dropped_messages_total`, `gateway_redis_diverged_streams_total` | counters | read from the broker at scrape ([`fanout::BrokerStats`]; Redis engine only) |
//! | `gateway_redis_presence_refresh_duration_seconds` | summary (sum, count) | as above |
//! | `gateway_proxy_calls_total{kind, result}` | counter | `proxy` (each call to the backend: `ok`, or why it failed) |
//! | `gateway_proxy_duration_seconds{kind}` | histogram | `proxy` (every call, whatever its result) |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fanout::Broker;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Close codes counted under their own label; any other is `other`.
const DISCONNECT_CODES: &[u16] = &[
    1000, 1002, 1006, 1007, 1009, 3001, 3004, 3005, 3006, 3008, 3009, 3010, 3011, 3012, 3013, 3500,
    3501, 3502, 3503, 3504, 3505, 3506, 3507, 3508, 3509,
];

/// The close code counted for a connection that ended without a close frame.
pub(crate) const CLOSE_ABNORMAL: u16 = 1006;

/// Client commands, as timed in `gateway_command_duration_seconds` (names in
/// `CMD_NAMES`, in this order).
#[rustfmt::skip]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmd {
    Connect, Subscribe, Unsubscribe, Publish, Presence, PresenceStats, History, Refresh,
    SubRefresh, Rpc,
}

#[rustfmt::skip]
const CMD_NAMES: [&str; 10] = [
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
    "refresh", "sub_refresh", "rpc",
];

/// Where a publication comes from (`gateway_publications_total{source}`).
#[rustfmt::skip]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source { Client, Api }

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the hub holds, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubCounts {
    pub subscriptions: usize,
    pub rooms: usize,
    pub users: usize,
}

/// What a node counts. Every field is a handle into the node's registry; an
/// increment is one relaxed atomic operation.
pub struct Metrics {
    registry: Registry,
    /// Open client connections (upgraded WebSockets).
    pub connections: IntGauge,
    pub(crate) connects_ok: IntCounter,
    pub(crate) connects_refused: IntCounter,
    pub(crate) connects_error: IntCounter,
    disconnects: Vec<IntCounter>,
    disconnects_other: IntCounter,
    subscriptions: IntGauge,
    rooms: IntGauge,
    users: IntGauge,
    publications_client: IntCounter,
    publications_api: IntCounter,
    pub(crate) broker_publications: IntCounter,
    /// Messages enqueued to client mailboxes by the hub (one per recipient).
    pub deliveries: IntCounter,
    /// Clients closed with 3008 because their queue passed its byte budget.
    pub slow_disconnects: IntCounter,
    pub(crate) queue_dropped_bytes: IntCounter,
    pub(crate) positions_lost: IntCounter,
    pub(crate) rooms_lost: IntCounter,
    pub(crate) frames_written: IntCounter,
    pub(crate) protocol_errors: IntCounter,
    pub(crate) read_pauses: IntCounter,
    read_paused_seconds: Counter,
    pub(crate) scheduler_lag: Gauge,
    commands: Vec<Histogram>,
    broker_publish_duration: Histogram,
    proxy_calls: IntCounterVec,
    proxy_duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A node's metrics in a registry of their own.
    #[rustfmt::skip]
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let build = Opts::new("gateway_build_info", "Build of this node");
        let build = register(r, IntGaugeVec::new(build, &["version"]));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let connects = counter_vec(r, "gateway_connects_total",
            "Connect attempts by result: ok, refused (HTTP 503 at max_connections), error (the connect command failed)", &["result"]);
        let disconnects = counter_vec(r, "gateway_disconnects_total",
            "Connections closed, by the close code sent (1006: none could be sent; other: a code outside the protocol's)", &["code"]);
        let publications = counter_vec(r, "gateway_publications_total",
            "Publications accepted by the broker, by source: client or api", &["source"]);
        let commands = histogram(r, "gateway_command_duration_seconds",
            "Time to handle a client command, by command", &["command"]);
        let broker_publish_duration = histogram(r, "gateway_broker_publish_duration_seconds",
            "Time for the broker to accept a publication (history, offset, fan-out to nodes)", &[]);
        Metrics {
            connections: gauge(r, "gateway_connections", "Open client connections"),
            connects_ok: connects.with_label_values(&["ok"]),
            connects_refused: connects.with_label_values(&["refused"]),
            connects_error: connects.with_label_values(&["error"]),
            disconnects: DISCONNECT_CODES.iter()
                .map(|c| disconnects.with_label_values(&[c.to_string().as_str()]))
                .collect(),
            disconnects_other: disconnects.with_label_values(&["other"]),
            subscriptions: gauge(r, "gateway_subscriptions", "Client subscriptions on this node"),
            rooms: gauge(r, "gateway_rooms", "Rooms with subscribers on this node"),
            users: gauge(r, "gateway_users", "Users with a connection on this node"),
            publications_client: publications.with_label_values(&["client"]),
            publications_api: publications.with_label_values(&["api"]),
            broker_publications: counter(r, "gateway_broker_publications_total",
                "Publications the broker delivered to this node's hub"),
            deliveries: counter(r, "gateway_deliveries_total",
                "Publications handed to client mailboxes (one per local recipient)"),
            slow_disconnects: counter(r, "gateway_slow_consumer_disconnects_total",
                "Clients closed with 3008: their queue passed client.queue_max_bytes"),
            queue_dropped_bytes: counter(r, "gateway_queue_dropped_bytes_total",
                "Bytes of messages dropped with a slow client (queued, or refused by the full queue)"),
            positions_lost: counter(r, "gateway_positions_lost_total",
                "Unsubscribe pushes with 2500 (insufficient state): the client resubscribes and recovers"),
            rooms_lost: counter(r, "gateway_rooms_lost_total",
                "Times the broker lost publications of a room it could not repair from history"),
            frames_written: counter(r, "gateway_frames_written_total", "WebSocket frames written to clients"),
            protocol_errors: counter(r, "gateway_protocol_errors_total",
                "Connections closed for a malformed frame or command"),
            read_pauses: counter(r, "gateway_read_pauses_total",
                "Times a connection stopped being read because client.max_publishes_in_flight of its publishes were in flight"),
            read_paused_seconds: register(r, Counter::new("gateway_read_paused_seconds_total",
                "Time connections spent not being read because their publish pipeline was full")),
            scheduler_lag: register(r, Gauge::new("gateway_scheduler_lag_seconds",
                "How late the node's runtime runs a task due every 10 ms (smoothed): the node is saturated when it grows")),
            commands: CMD_NAMES.iter().map(|c| commands.with_label_values(&[*c])).collect(),
            broker_publish_duration: broker_publish_duration.with_label_values(&[] as &[&str]),
            proxy_calls: counter_vec(r, "gateway_proxy_calls_total",
                "Calls to the application backend, by kind and result: ok, or busy, timeout, request, status, body, decode", &["kind", "result"]),
            proxy_duration: histogram(r, "gateway_proxy_duration_seconds",
                "Time of a call to the application backend, by kind, whatever its result", &["kind"]),
            registry,
        }
    }

    /// Count the end of a pause in reading a connection that lasted `d`.
    pub(crate) fn read_paused(&self, d: std::time::Duration) {
        self.read_paused_seconds.inc_by(d.as_secs_f64());
    }

    /// Count a connection closed with `code` (an unknown code counts as `other`).
    pub(crate) fn disconnected(&self, code: u16) {
        match DISCONNECT_CODES.iter().position(|c| *c == code) {
            Some(i) => self.disconnects[i].inc(),
            None => self.disconnects_other.inc(),
        }
    }

    /// Record a publish through the broker begun at `start`, and count it by
    /// `source` if the broker `accepted` it.
    pub(crate) fn published(&self, source: Source, start: Instant, accepted: bool) {
        self.broker_publish_duration
            .observe(start.elapsed().as_secs_f64());
        if accepted {
            match source {
                Source::Client => self.publications_client.inc(),
                Source::Api => self.publications_api.inc(),
            }
        }
    }

    /// Record a call to the backend's `kind` proxy begun at `start`, ending in
    /// `result` (`ok` or the failure's kind).
    pub(crate) fn proxy_called(&self, kind: &str, result: &str, start: Instant) {
        self.proxy_calls.with_label_values(&[kind, result]).inc();
        self.proxy_duration
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Record the time a client command took since `start`.
    pub(crate) fn command(&self, cmd: Cmd, start: Instant) {
        self.commands[cmd as usize].observe(start.elapsed().as_secs_f64());
    }

    /// Export `broker`'s own counts too, when it has any (the Redis engine).
    pub(crate) fn watch_broker(&self, broker: Arc<dyn Broker>) {
        if broker.stats().is_none() {
            return;
        }
        let descs = BROKER_METRICS
            .iter()
            .map(|(name, help)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
            })
            .collect::<prometheus::Result<_>>()
            .expect("bug: invalid metric");
        let collector = BrokerCollector { broker, descs };
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::warn!(error = %e, "broker metrics not exported");
        }
    }

    /// Everything in the text exposition format ([`CONTENT_TYPE`]), with the hub's
    /// current counts.
    pub fn render(&self, hub: HubCounts) -> String {
        self.subscriptions.set(hub.subscriptions as i64);
        self.rooms.set(hub.rooms as i64);
        self.users.set(hub.users as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Register `metric` (valid by construction) in `r`.
fn register<M: Collector + Clone + 'static>(r: &Registry, metric: prometheus::Result<M>) -> M {
    let m = metric.expect("bug: invalid metric");
    r.register(Box::new(m.clone()))
        .expect("bug: metric registered twice");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help))
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(r, HistogramVec::new(opts, labels))
}

/// Names and help of the broker's counts, in [`BrokerCollector::collect`]'s
/// order: five counters, then a summary (sum and count only).
#[rustfmt::skip]
const BROKER_METRICS: [(&str, &str); 6] = [
    ("gateway_redis_command_errors_total", "Redis commands that failed (after their one retry)"),
    ("gateway_redis_pubsub_reconnects_total", "Redis pub/sub connections re-established after a loss"),
    ("gateway_redis_gap_repairs_total", "Gaps in a room's publications filled from its Redis stream"),
    ("gateway_redis_dropped_messages_total", "Pub/sub messages dropped at a full delivery worker queue (then repaired or reported lost)"),
    ("gateway_redis_diverged_streams_total", "Rooms whose Redis stream lost publications this node had delivered (a failover or a restart from an older copy); each got a new epoch"),
    ("gateway_redis_presence_refresh_duration_seconds", "Time of one round of presence refresh in Redis"),
];

/// The broker's own counts ([`fanout::BrokerStats`]), read at every scrape.
struct BrokerCollector {
    broker: Arc<dyn Broker>,
    descs: Vec<Desc>,
}

impl Collector for BrokerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(s) = self.broker.stats() else {
            return Vec::new();
        };
        let counters = [
            s.command_errors,
            s.pubsub_reconnects,
            s.gap_repairs,
            s.dropped_messages,
            s.diverged_streams,
        ];
        let mut metrics: Vec<(MetricType, proto::Metric)> = counters
            .into_iter()
            .map(|v| {
                let mut c = proto::Counter::default();
                c.set_value(v as f64);
                let mut m = proto::Metric::default();
                m.set_counter(c);
                (MetricType::COUNTER, m)
            })
            .collect();
        let mut summary = proto::Summary::default();
        summary.set_sample_count(s.presence_refreshes);
        summary.set_sample_sum(s.presence_refresh_seconds);
        let mut refresh = proto::Metric::default();
        refresh.set_summary(summary);
        metrics.push((MetricType::SUMMARY, refresh));
        (metrics.into_iter().zip(&self.descs))
            .map(|((kind, metric), desc)| {
                let mut f = MetricFamily::default();
                f.set_name(desc.fq_name.clone());
                f.set_help(desc.help.clone());
                f.set_field_type(kind);
                f.set_metric(vec![metric]);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_name_and_codes_are_labelled() {
        let m = Metrics::new();
        m.command(Cmd::Rpc, Instant::now());
        m.disconnected(3008);
        m.disconnected(4123);
        let text = m.render(HubCounts::default());
        assert!(text.contains("gateway_command_duration_seconds_count{command=\"rpc\"} 1"));
        assert!(text.contains("gateway_disconnects_total{code=\"3008\"} 1"));
        assert!(text.contains("gateway_disconnects_total{code=\"other\"} 1"));
        assert!(text.contains(&format!(
            "gateway_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
