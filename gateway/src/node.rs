//! One gateway node's shared state: configuration, broker, hub, token verifier,
//! counters, and the shutdown signal every connection watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::broker::{Control, NodeInfo};
use fanout::Broker;
use shared::auth::Verifier;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The server version reported in connect and refresh results and heartbeats.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("token keys: {0}")]
    Keys(#[from] shared::auth::KeyError),
}

/// How long a room stays subscribed at the broker after its last local member left,
/// so that members hopping in and out do not thrash the broker with SUBSCRIBE and
/// UNSUBSCRIBE.
const ROOM_UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

pub struct Node {
    pub config: Config,
    pub broker: Arc<dyn Broker>,
    /// Rooms to local subscribers.
    pub hub: Arc<Hub>,
    pub(crate) verifier: Verifier,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node starts shutting down: connections close with 3001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task and background loop, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    started: Instant,
    /// Unique per process start, in the node registry.
    pub id: String,
    ready: AtomicBool,
}

impl Node {
    /// Build a node on `broker` and start its background loops.
    pub fn new(config: Config, broker: Arc<dyn Broker>) -> Result<Arc<Node>, NodeError> {
        config.validate()?;
        let verifier = Verifier::new(&config.token)?;
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(metrics.clone()));
        broker.set_handler(hub.clone());
        let node = Arc::new(Node {
            config,
            broker,
            hub,
            verifier,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            id: uuid::Uuid::new_v4().to_string(),
            ready: AtomicBool::new(true),
        });
        node.tasks.spawn(unsubscribe_idle_rooms(node.clone()));
        node.tasks.spawn(heartbeat(node.clone()));
        Ok(node)
    }

    /// Whether the node takes new clients (`/readyz`): not draining, and its broker
    /// reaches its backing store.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.shutdown.is_cancelled()
            && self.broker.is_healthy()
    }

    /// Take the node out of rotation (`/readyz` 503) or back, while it keeps serving.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// What this node says about itself in its heartbeat.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id.clone(),
            name: self.config.node_name.clone(),
            version: VERSION.into(),
            uptime_secs: self.started.elapsed().as_secs(),
            num_clients: self.metrics.connections.get(),
            num_users: self.hub.num_users() as u64,
            num_subs: self.hub.num_subscriptions() as u64,
            num_rooms: self.hub.num_rooms() as u64,
            ttl_ms: (self.config.heartbeat_interval * 3).as_millis() as u64,
        }
    }
}

/// Announce this node to the cluster every `heartbeat_interval`.
async fn heartbeat(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.heartbeat_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        if let Err(e) = node
            .broker
            .publish_control(&Control::Node(node.info()))
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

/// Unsubscribe at the broker the rooms that stayed empty for the delay.
async fn unsubscribe_idle_rooms(node: Arc<Node>) {
    let mut tick = tokio::time::interval(ROOM_UNSUBSCRIBE_DELAY / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        for room in node.hub.take_idle_rooms(ROOM_UNSUBSCRIBE_DELAY) {
            if let Err(e) = node.broker.unsubscribe(&room).await {
                tracing::warn!(room = %room, error = %e, "broker unsubscribe failed");
            }
            // A member may have joined between the check and the unsubscribe, seen
            // the room still subscribed and skipped subscribing: subscribe again.
            // (Positioned members notice the gap and recover.)
            if node.hub.has_room(&room) {
                if let Err(e) = node.broker.subscribe(&room).await {
                    tracing::warn!(room = %room, error = %e, "broker resubscribe failed");
                }
            }
        }
    }
}
