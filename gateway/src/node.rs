//! One gateway node's shared state: configuration, broker, hub, token verifier,
//! counters, and the shutdown signal every connection watches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::broker::{Control, NodeInfo};
use fanout::{Broker, HistoryOptions, HistoryPage, HistoryQuery};
use shared::auth::Verifier;
use shared::protocol::{Publication, StreamPosition};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ChannelOptions, Config, ConfigError};
use crate::hub::Hub;
use crate::load::Load;
use crate::metrics::{Metrics, Source};
use crate::proxy::Proxy;
use crate::survey::{glob_match, Query, Surveys};

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
    /// Calls to the application backend, when any proxy is configured.
    pub(crate) proxy: Option<Proxy>,
    /// Channel surveys this node asks and answers.
    surveys: Arc<Surveys>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node starts draining: each connection closes with 3001
    /// at its turn (see [`Node::drain_delay`]).
    pub(crate) shutdown: CancellationToken,
    /// The drain's turns: how many connections there were when it began, and
    /// how many have taken a turn.
    drain_total: AtomicUsize,
    drain_taken: AtomicUsize,
    /// Every connection task and background loop, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Whether the node is saturated (connections then coalesce writes).
    pub(crate) load: Arc<Load>,
    started: Instant,
    /// Unique per process start, in the node registry.
    pub id: String,
    /// HTTP connections not upgraded (yet), against `http.max_pending_connections`.
    pub(crate) http_pending: AtomicUsize,
    /// WebSocket connections admitted, from the upgrade request until the
    /// connection's teardown, against `client.max_connections`.
    clients: AtomicUsize,
    ready: AtomicBool,
}

impl Node {
    /// Build a node on `broker` and start its background loops.
    pub fn new(mut config: Config, broker: Arc<dyn Broker>) -> Result<Arc<Node>, NodeError> {
        config.add_demo_namespace();
        config.validate()?;
        let verifier = Verifier::new(&config.token)?;
        let metrics = Arc::new(Metrics::new());
        metrics.watch_broker(broker.clone());
        let id = uuid::Uuid::new_v4().to_string();
        let (surveys, queries) = Surveys::new(id.clone());
        let surveys = Arc::new(surveys);
        let hub = Arc::new(Hub::new(metrics.clone(), surveys.clone()));
        broker.set_handler(hub.clone());
        let proxy = Proxy::new(&config.proxy, metrics.clone());
        let node = Arc::new(Node {
            config,
            broker,
            hub,
            verifier,
            proxy,
            surveys,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            load: Arc::default(),
            started: Instant::now(),
            id,
            http_pending: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            ready: AtomicBool::new(true),
            drain_total: AtomicUsize::new(0),
            drain_taken: AtomicUsize::new(0),
        });
        node.tasks.spawn(unsubscribe_idle_rooms(node.clone()));
        node.tasks.spawn(heartbeat(node.clone()));
        node.tasks.spawn(keep_room_positions(node.clone()));
        node.tasks.spawn(answer_surveys(node.clone(), queries));
        let lag = node.metrics.scheduler_lag.clone();
        node.tasks
            .spawn(node.load.clone().watch(lag, node.shutdown.clone()));
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

    /// Start the drain: every connection closes with 3001 at its turn, the turns
    /// spread evenly over `shutdown.drain_window`; background loops stop.
    pub(crate) fn begin_drain(&self) {
        let open = self.metrics.connections.get() as usize;
        self.drain_total.store(open, Ordering::Relaxed);
        self.shutdown.cancel();
    }

    /// A connection's wait, once the drain has begun, before it is closed: the
    /// i-th of n waits `drain_window * i / n`, so the other nodes see a steady
    /// rate of reconnects rather than one burst. Late arrivals wait the window.
    pub(crate) fn drain_delay(&self) -> Duration {
        let window = self.config.shutdown.drain_window;
        let turn = self.drain_taken.fetch_add(1, Ordering::Relaxed);
        let total = self.drain_total.load(Ordering::Relaxed);
        if turn >= total {
            return window;
        }
        window.mul_f64(turn as f64 / total as f64)
    }

    /// What this node says about itself in its heartbeat.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id.clone(),
            name: self.config.node_name.clone(),
            version: VERSION.into(),
            uptime_secs: self.started.elapsed().as_secs(),
            num_clients: self.metrics.connections.get().max(0) as u64,
            num_users: self.hub.num_users() as u64,
            num_subs: self.hub.num_subscriptions() as u64,
            num_rooms: self.hub.num_rooms() as u64,
            ttl_ms: (self.config.heartbeat_interval * 3).as_millis() as u64,
        }
    }
}

impl Node {
    /// Publish through the broker, timed, and counted by `source` once accepted.
    pub(crate) async fn publish(
        &self,
        room: &str,
        publication: Publication,
        history: Option<HistoryOptions>,
        source: Source,
    ) -> Result<StreamPosition, fanout::BrokerError> {
        let start = Instant::now();
        let res = self.broker.publish(room, publication, history).await;
        self.metrics.published(source, start, res.is_ok());
        res
    }
}

/// Why a history read gave no page.
#[derive(Debug)]
pub(crate) enum HistoryError {
    /// `reverse` from offset 0 asks for nothing that exists (107).
    ReverseFromZero,
    /// The `since` epoch is not the stream's (112).
    EpochChanged,
    Broker(fanout::BrokerError),
}

impl Node {
    /// Read `channel`'s history as clients and the API ask for it: at most
    /// `limit` publications (a negative limit, or one over
    /// `client.history_max_publication_limit`, is that cap; 0 is only the
    /// position), after (or with `reverse`, before) `since`.
    pub(crate) async fn read_history(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        since: Option<StreamPosition>,
        limit: i32,
        reverse: bool,
    ) -> Result<HistoryPage, HistoryError> {
        if reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(HistoryError::ReverseFromZero);
        }
        let max = self.config.client.history_max_publication_limit;
        let limit = usize::try_from(limit).map_or(max, |l| l.min(max));
        let since_epoch = since.as_ref().map(|s| s.epoch.clone()).unwrap_or_default();
        let query = HistoryQuery {
            since,
            limit: Some(limit),
            reverse,
        };
        let page = self
            .broker
            .history(channel, query, opts.read_position_ttl())
            .await
            .map_err(HistoryError::Broker)?;
        if !since_epoch.is_empty() && since_epoch != page.position.epoch {
            return Err(HistoryError::EpochChanged);
        }
        Ok(page)
    }

    /// Every room with subscribers on any live node whose name matches the glob
    /// `pattern`, with its subscriber count over all nodes. Waits for every live
    /// node's answer, or `api.survey_timeout`.
    pub(crate) async fn channels(
        &self,
        pattern: &str,
    ) -> Result<HashMap<String, u32>, fanout::BrokerError> {
        let (id, mut answers) = self.surveys.open();
        let query = Control::ChannelsQuery {
            id,
            from: self.surveys.node_id().to_owned(),
            pattern: pattern.to_owned(),
        };
        let expected = self.broker.nodes().len().max(1);
        let published = self.broker.publish_control(&query).await;
        let mut channels: HashMap<String, u32> = HashMap::new();
        if published.is_ok() {
            let deadline = tokio::time::Instant::now() + self.config.api.survey_timeout;
            let mut answered = 0;
            while answered < expected {
                match tokio::time::timeout_at(deadline, answers.recv()).await {
                    Ok(Some(answer)) => {
                        answered += 1;
                        for (room, n) in answer {
                            *channels.entry(room).or_default() += n;
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::info!(answered, expected, "channels survey incomplete");
                        break;
                    }
                }
            }
        }
        self.surveys.close(id);
        published.map(|()| channels)
    }
}

/// Answer other nodes' (and this node's) channel surveys.
async fn answer_surveys(node: Arc<Node>, mut queries: mpsc::Receiver<Query>) {
    loop {
        let query = tokio::select! {
            q = queries.recv() => match q {
                Some(q) => q,
                None => return,
            },
            _ = node.shutdown.cancelled() => return,
        };
        let channels = node.hub.rooms(|room| glob_match(&query.pattern, room));
        let reply = Control::ChannelsReply {
            id: query.id,
            to: query.from,
            channels,
        };
        if let Err(e) = node.broker.publish_control(&reply).await {
            tracing::debug!(error = %e, "survey answer failed");
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

/// Keep the stream positions of rooms with local subscribers alive: a position
/// made by a read lives only its namespace's history TTL, and a quiet room must
/// keep the epoch its subscribers were given.
async fn keep_room_positions(node: Arc<Node>) {
    let Some(every) = node.config.position_keepalive_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        let rooms: Vec<(String, Duration)> = node
            .hub
            .rooms(|_| true)
            .into_iter()
            .filter_map(|(room, _)| {
                let (_, opts) = node.config.resolve_channel(&room).ok()?;
                let ttl = opts.history()?.ttl;
                Some((room, ttl))
            })
            .collect();
        if rooms.is_empty() {
            continue;
        }
        if let Err(e) = node.broker.keep_positions(&rooms).await {
            tracing::debug!(rooms = rooms.len(), error = %e, "position keep-alive failed");
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

impl Node {
    /// Admit one more WebSocket connection if `client.max_connections` allows:
    /// taken at the upgrade request, before anything is awaited, so that a storm
    /// of concurrent upgrades cannot overshoot the limit. Each `true` is matched
    /// by one [`Node::release_connection`].
    pub(crate) fn admit_connection(&self) -> bool {
        let max = self.config.client.max_connections;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A connection admitted by [`Node::admit_connection`] ended (or its upgrade
    /// failed).
    pub(crate) fn release_connection(&self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
