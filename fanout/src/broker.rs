//! The [`Broker`] trait and the types it speaks.
//!
//! Engines are async and fallible because the real one (Redis) is remote: callers
//! must expect [`BrokerError::Unavailable`] and map it to a temporary protocol error.
//! Inbound events (publications, joins, leaves) are pushed to one registered
//! [`BrokerHandler`]; the handler must not block (it enqueues and returns).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use shared::envelope::{Control, NodeInfo};
pub use shared::protocol::{ClientInfo, Publication, StreamPosition};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached right now; retrying later may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The engine was used wrongly or returned something it should not have.
    #[error("broker internal error: {0}")]
    Internal(String),
}

/// A fresh random epoch for a stream that starts (or starts again): 8 alphanumeric
/// characters, as Centrifugo's engines make them.
pub(crate) fn new_epoch() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 8)
}

/// A room's history settings, taken from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Most publications kept.
    pub size: usize,
    /// How long the stream lives after its last publication.
    pub ttl: Duration,
    /// How long the stream's position (offset, epoch) outlives its publications, so
    /// that a late client learns that recovery is impossible instead of silently
    /// starting a new epoch.
    pub meta_ttl: Duration,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Publications after this offset (before it with `reverse`). When its epoch is
    /// non-empty and differs from the stream's, no publications are returned and the
    /// caller sees the mismatch in [`HistoryPage::position`].
    pub since: Option<StreamPosition>,
    /// At most this many publications; `None` for all, `Some(0)` for only the position.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// Publications read from history, with the stream's current top position.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

/// Receives what the broker delivers to this node. Called from the broker's delivery
/// path: it must only enqueue, never block or await.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication in `room`, in offset order per room. `epoch` is the stream's
    /// epoch (empty when the room keeps no history).
    fn on_publication(&self, room: &str, publication: &Arc<Publication>, epoch: &str);
    fn on_join(&self, room: &str, info: &ClientInfo);
    fn on_leave(&self, room: &str, info: &ClientInfo);
    /// Publications of `room` were lost on the way to this node and could not be
    /// repaired from history (the range left it, or the epoch changed). Positioned
    /// subscribers must resubscribe, so that their SDK recovers or reports that it
    /// cannot.
    fn on_lost(&self, room: &str);
    /// A cluster-wide command (not heartbeats: those feed [`Broker::nodes`]).
    fn on_control(&self, _control: &Control) {}
}

/// Nodes heard from by heartbeat, each kept for its own `ttl_ms`.
#[derive(Debug, Default)]
pub(crate) struct NodeRegistry {
    nodes: parking_lot::Mutex<HashMap<String, (NodeInfo, std::time::Instant)>>,
}

impl NodeRegistry {
    pub(crate) fn record(&self, info: NodeInfo) {
        let expires = std::time::Instant::now() + Duration::from_millis(info.ttl_ms);
        self.nodes.lock().insert(info.id.clone(), (info, expires));
    }

    /// Live nodes, by name.
    pub(crate) fn alive(&self) -> Vec<NodeInfo> {
        let now = std::time::Instant::now();
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, exp)| *exp > now);
        let mut out: Vec<NodeInfo> = nodes.values().map(|(i, _)| i.clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        out
    }

    /// Heartbeats feed the registry; other controls go to the handler.
    pub(crate) fn dispatch(&self, control: &Control, handler: Option<&Arc<dyn BrokerHandler>>) {
        match control {
            Control::Node(info) => self.record(info.clone()),
            other => {
                if let Some(h) = handler {
                    h.on_control(other);
                }
            }
        }
    }
}

/// Counts of an engine's work with its backing store since start, read when a
/// node's metrics are scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BrokerStats {
    /// Commands that failed (after their one retry).
    pub command_errors: u64,
    /// Pub/sub connections re-established after a loss.
    pub pubsub_reconnects: u64,
    /// Gaps in a room's publications filled from its stream.
    pub gap_repairs: u64,
    /// Rooms whose stream was found to have lost publications this node had
    /// delivered (a failover or restart from an older copy); each got a new epoch.
    pub diverged_streams: u64,
    /// Messages dropped because a delivery worker's queue was full (each repaired
    /// or reported lost).
    pub dropped_messages: u64,
    /// Rounds of presence refresh, and the seconds they took in all.
    pub presence_refreshes: u64,
    pub presence_refresh_seconds: f64,
}

/// What a node needs from the system that connects it to its peers.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Register where inbound events go. Called once, before any other method.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);

    /// Whether the engine can currently reach its backing store (readiness).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Counts of the engine's work with its backing store; `None` when it has none
    /// (the in-memory engine).
    fn stats(&self) -> Option<BrokerStats> {
        None
    }

    /// Whether publishes handed over while earlier ones are still in flight reach
    /// the store in the order they were handed over, a lost connection included.
    /// Where not (a Redis Cluster, whose client retries a failed master's commands
    /// by itself), a caller that needs one sender's order keeps one in flight.
    fn keeps_publish_order(&self) -> bool {
        true
    }

    /// Start receiving `room`'s events on this node. Idempotent: resolves once the
    /// subscription is active, so a caller may read history afterwards without a gap.
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Stop receiving `room`'s events on this node.
    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Publish to every node subscribed to `room`. With `history`, the publication is
    /// appended to the room's stream and gets the next offset; the returned position
    /// is that offset and the stream's epoch. Without, the position is zero.
    async fn publish(
        &self,
        room: &str,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError>;

    /// Announce that `info` joined `room` (delivered as `on_join` to every node).
    async fn publish_join(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Announce that `info` left `room`.
    async fn publish_leave(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Read `room`'s history. A room that never had publications gets a stream
    /// position (offset 0 and a fresh epoch) that later publications keep; made by
    /// a read, it lives only `meta_ttl` unless a publication or
    /// [`Broker::keep_positions`] extends it, so reads of made-up room names leave
    /// nothing lasting behind.
    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BrokerError>;

    /// Extend the position of each `(room, ttl)` to live at least `ttl` from now,
    /// where one exists (a position is never created, nor shortened). A node calls
    /// it for rooms with local subscribers, so that the epoch they were given stays.
    async fn keep_positions(&self, rooms: &[(String, Duration)]) -> Result<(), BrokerError>;

    /// Drop `room`'s publications (the position and epoch stay).
    async fn remove_history(&self, room: &str) -> Result<(), BrokerError>;

    /// Record that connection `info.client` is in `room`.
    async fn presence_add(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Record that connection `info.client` has left `room`.
    async fn presence_remove(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Every connection in `room`, by client id.
    async fn presence(&self, room: &str) -> Result<HashMap<String, ClientInfo>, BrokerError>;

    async fn presence_stats(&self, room: &str) -> Result<PresenceStats, BrokerError>;

    /// Send a control message to every node, this one included.
    async fn publish_control(&self, control: &Control) -> Result<(), BrokerError>;

    /// Nodes heard from recently (their heartbeats), this one included.
    fn nodes(&self) -> Vec<NodeInfo>;
}
