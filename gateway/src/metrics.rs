//! Node counters. Plain atomics for now; exported in Prometheus format by a later
//! module.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections (upgraded WebSockets).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Upgrades refused because the node was at `max_connections`.
    pub connections_refused: Counter,
    /// Clients closed with 3008 because their queue passed its byte budget.
    pub slow_disconnects: Counter,
    /// Publications handed to the hub by the broker.
    pub publications_received: Counter,
    /// Messages enqueued to client sockets by the hub (one per subscriber).
    pub deliveries: Counter,
    /// WebSocket frames written to clients.
    pub frames_written: Counter,
    /// Rooms whose lost publications could not be repaired from history.
    pub rooms_lost: Counter,
    /// Clients closed by a protocol error (3501 and friends).
    pub protocol_errors: Counter,
}
