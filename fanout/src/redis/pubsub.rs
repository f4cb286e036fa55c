//! Room subscriptions: the table of rooms this node wants (pending, with waiters,
//! or active), and the pub/sub connections that carry them: rooms spread over a
//! few connections by hash, SUBSCRIBE/UNSUBSCRIBE batched, SSUBSCRIBE on a
//! cluster, probes, and repair of every room after a reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::command::{backoff, unavailable};
use super::config::RedisConfig;
use super::delivery::Delivery;
use super::keys::{hash_index, Keys};
use super::target::Target;
use crate::broker::BrokerError;

/// Where one room's subscription stands.
enum ChannelState {
    /// SUBSCRIBE sent, waiting for confirmation.
    Pending(Vec<oneshot::Sender<Result<(), String>>>),
    Active,
}

/// One dedicated pub/sub connection, as the rest of the engine sees it.
struct PubsubShard {
    /// Rooms whose wanted state changed.
    tx: mpsc::Sender<Arc<str>>,
    connected: AtomicBool,
}

/// The rooms this node subscribes to and the connections that carry them.
pub(super) struct Subscriptions {
    delivery: Arc<Delivery>,
    keys: Keys,
    rooms: Mutex<HashMap<Arc<str>, ChannelState>>,
    shards: Vec<PubsubShard>,
    /// Pub/sub connections re-established after a loss.
    reconnects: AtomicU64,
    timeout: Duration,
    probe_interval: Duration,
    stop: CancellationToken,
}

impl Subscriptions {
    /// Start one pub/sub loop per shard on `target`, handing messages to `delivery`.
    pub(super) fn start(
        cfg: &RedisConfig,
        target: &Target,
        delivery: Arc<Delivery>,
        stop: CancellationToken,
    ) -> Arc<Subscriptions> {
        let mut shard_rx = Vec::new();
        let shards = (0..cfg.pubsub_shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                shard_rx.push(rx);
                PubsubShard {
                    tx,
                    connected: AtomicBool::new(false),
                }
            })
            .collect();
        let subs = Arc::new(Subscriptions {
            delivery,
            keys: Keys::new(cfg.prefix.clone()),
            rooms: Mutex::new(HashMap::new()),
            shards,
            reconnects: AtomicU64::new(0),
            timeout: cfg.command_timeout,
            probe_interval: cfg.probe_interval,
            stop,
        });
        for (i, rx) in shard_rx.into_iter().enumerate() {
            match target {
                Target::Single(_) | Target::Sentinel(_) => {
                    tokio::spawn(single_shard_loop(subs.clone(), target.clone(), i, rx));
                }
                Target::Cluster { nodes, .. } => {
                    tokio::spawn(cluster_shard_loop(subs.clone(), nodes.clone(), i, rx));
                }
            }
        }
        subs
    }

    /// Whether every pub/sub connection is up.
    pub(super) fn all_connected(&self) -> bool {
        self.shards
            .iter()
            .all(|s| s.connected.load(Ordering::Relaxed))
    }

    /// Pub/sub connections re-established after a loss since start.
    pub(super) fn reconnect_count(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn pubsub_shard(&self, room: &str) -> &PubsubShard {
        &self.shards[hash_index(room, self.shards.len())]
    }

    /// Subscribe to `room`; resolves once the subscription is active.
    pub(super) async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let (rx, send) = {
            let mut map = self.rooms.lock();
            match map.get_mut(room) {
                Some(ChannelState::Active) => return Ok(()),
                Some(ChannelState::Pending(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    (rx, false)
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    map.insert(room.into(), ChannelState::Pending(vec![tx]));
                    (rx, true)
                }
            }
        };
        if send {
            self.pubsub_shard(room)
                .tx
                .send(room.into())
                .await
                .map_err(|_| unavailable("engine stopped"))?;
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(unavailable(e)),
            Ok(Err(_)) => Err(unavailable("subscription abandoned")),
            Err(_) => Err(unavailable("subscribe timed out")),
        }
    }

    /// Unsubscribe from `room`, if subscribed, and forget its position.
    pub(super) async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        if self.rooms.lock().remove(room).is_none() {
            return Ok(());
        }
        let room: Arc<str> = room.into();
        self.delivery.forget(room.clone()).await;
        self.pubsub_shard(&room)
            .tx
            .send(room)
            .await
            .map_err(|_| unavailable("engine stopped"))
    }

    /// Rooms of shard `index` that should be subscribed.
    fn shard_rooms(&self, index: usize) -> Vec<Arc<str>> {
        self.rooms
            .lock()
            .keys()
            .filter(|r| hash_index(r, self.shards.len()) == index)
            .cloned()
            .collect()
    }

    /// Mark `rooms` subscribed and wake whoever waits for them.
    fn confirm(&self, rooms: &[Arc<str>]) {
        let mut map = self.rooms.lock();
        for r in rooms {
            if let Some(state) = map.get_mut(r) {
                if let ChannelState::Pending(waiters) =
                    std::mem::replace(state, ChannelState::Active)
                {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Split changed rooms into those to subscribe and those to unsubscribe.
    fn wanted(&self, changed: HashSet<Arc<str>>) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let map = self.rooms.lock();
        changed.into_iter().partition(|r| map.contains_key(r))
    }

    fn channels(&self, rooms: &[Arc<str>]) -> Vec<String> {
        rooms.iter().map(|r| self.keys.channel(r)).collect()
    }

    /// Ask the workers to read what `rooms` may have missed (without waiting).
    fn resync_all(&self, rooms: Vec<Arc<str>>) {
        for r in rooms {
            self.delivery.request_resync(r);
        }
    }
}

async fn drain_changes(first: Arc<str>, rx: &mut mpsc::Receiver<Arc<str>>) -> HashSet<Arc<str>> {
    let mut changed = HashSet::from([first]);
    while changed.len() < 1000 {
        match rx.try_recv() {
            Ok(r) => {
                changed.insert(r);
            }
            Err(_) => break,
        }
    }
    changed
}

/// How often a cluster shard tries again to subscribe its rooms after a
/// disconnection, until the slot map names live masters.
const RESUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

/// How a pub/sub connection's command side ended.
enum End {
    /// The engine stopped.
    Stop,
    /// The initial subscribe failed: reconnect after a backoff.
    Failed,
    /// The connection was lost or stopped answering: reconnect now.
    Lost,
}

/// One dedicated pub/sub connection to a standalone Redis (or the primary Sentinel
/// names, asked at every connect): reconnects with backoff, resubscribes its rooms
/// in batches, probes itself with PING.
///
/// Reading and commanding run side by side: the reader only routes messages, never
/// waiting (a full worker queue marks the room for repair), while SUBSCRIBE,
/// UNSUBSCRIBE and PING are awaited on the other side. So messages never pile up
/// in the connection's unbounded buffer behind a command or a busy worker.
async fn single_shard_loop(
    subs: Arc<Subscriptions>,
    target: Target,
    index: usize,
    mut rx: mpsc::Receiver<Arc<str>>,
) {
    let shard = &subs.shards[index];
    let timeout = subs.timeout;
    let mut attempt = 0u32;
    let mut first_connect = true;
    loop {
        let client = match target.single().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(shard = index, error = %e, "no server to connect pub/sub to");
                if !backoff(&subs.stop, &mut attempt).await {
                    return;
                }
                continue;
            }
        };
        let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(shard = index, error = %e, "pub/sub connect failed");
                if !backoff(&subs.stop, &mut attempt).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                if !backoff(&subs.stop, &mut attempt).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let reader = async {
            while let Some(m) = stream.next().await {
                subs.delivery
                    .route_message(m.get_channel_name(), m.get_payload_bytes());
            }
        };
        let control = shard_commands(&subs, index, &mut sink, &mut rx, first_connect);
        let end = tokio::select! {
            () = reader => End::Lost,
            end = control => end,
            _ = subs.stop.cancelled() => End::Stop,
        };
        let was_connected = shard.connected.swap(false, Ordering::Relaxed);
        match end {
            End::Stop => return,
            End::Failed => {
                if !backoff(&subs.stop, &mut attempt).await {
                    return;
                }
            }
            End::Lost => {
                attempt = 0;
                tracing::warn!(shard = index, "pub/sub connection lost");
            }
        }
        first_connect &= !was_connected;
    }
}

/// The command side of one standalone pub/sub connection: subscribe its rooms,
/// then follow changes to the wanted rooms and probe, until the connection fails.
async fn shard_commands(
    subs: &Subscriptions,
    index: usize,
    sink: &mut redis::aio::PubSubSink,
    rx: &mut mpsc::Receiver<Arc<str>>,
    first_connect: bool,
) -> End {
    let shard = &subs.shards[index];
    let timeout = subs.timeout;
    let rooms = subs.shard_rooms(index);
    for chunk in rooms.chunks(500) {
        match tokio::time::timeout(timeout, sink.subscribe(subs.channels(chunk))).await {
            Ok(Ok(())) => subs.confirm(chunk),
            _ => return End::Failed,
        }
    }
    shard.connected.store(true, Ordering::Relaxed);
    if !first_connect {
        subs.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            shard = index,
            rooms = rooms.len(),
            "pub/sub reconnected; repairing rooms"
        );
        subs.resync_all(rooms);
    }
    let mut probe = tokio::time::interval(subs.probe_interval);
    probe.tick().await;
    loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(first) = r else { return End::Stop };
                let changed = drain_changes(first, rx).await;
                let (subscribe, unsubscribe) = subs.wanted(changed);
                if !subscribe.is_empty() {
                    match tokio::time::timeout(timeout, sink.subscribe(subs.channels(&subscribe))).await {
                        Ok(Ok(())) => {
                            subs.confirm(&subscribe);
                            subs.resync_all(subscribe);
                        }
                        _ => return End::Lost,
                    }
                }
                if !unsubscribe.is_empty() {
                    let channels = subs.channels(&unsubscribe);
                    if !matches!(tokio::time::timeout(timeout, sink.unsubscribe(channels)).await, Ok(Ok(()))) {
                        return End::Lost;
                    }
                }
            }
            _ = probe.tick() => {
                // A pub/sub connection can go silent in a failover without closing.
                // (Subscribed, PING answers ["pong", ""]: any reply will do.)
                if !matches!(tokio::time::timeout(timeout, sink.ping::<Value>()).await, Ok(Ok(_))) {
                    tracing::warn!(shard = index, "pub/sub probe failed; reconnecting");
                    return End::Lost;
                }
            }
        }
    }
}

/// Sharded pub/sub on a Redis Cluster: SSUBSCRIBE through a RESP3 cluster
/// connection, which routes each room to its slot's node. Messages arrive through
/// the push callback. After a disconnection (a node died, as in a failover) the
/// connection's own resubscription may have gone to a master that is gone, before
/// its replica took over: the shard's rooms are subscribed again, every
/// [`RESUBSCRIBE_RETRY`] until all succeed (the slot map then names live masters),
/// and only then resynced from history. The shard counts as disconnected meanwhile.
async fn cluster_shard_loop(
    subs: Arc<Subscriptions>,
    nodes: Vec<String>,
    index: usize,
    mut rx: mpsc::Receiver<Arc<str>>,
) {
    let shard = &subs.shards[index];
    let timeout = subs.timeout;
    let disconnected = Arc::new(AtomicBool::new(false));
    let weak = Arc::downgrade(&subs.delivery);
    let flag = disconnected.clone();
    let push = move |info: redis::PushInfo| -> Result<(), ()> {
        match info.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                if let (Some(delivery), [Value::BulkString(ch), Value::BulkString(payload)]) =
                    (weak.upgrade(), info.data.as_slice())
                {
                    delivery.route_message(&String::from_utf8_lossy(ch), payload);
                }
            }
            redis::PushKind::Disconnection => flag.store(true, Ordering::Relaxed),
            _ => {}
        }
        Ok(())
    };
    let client = match redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cluster pub/sub client");
            return;
        }
    };
    let mut attempt = 0u32;
    let mut con = loop {
        match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(Ok(c)) => break c,
            _ => {
                if !backoff(&subs.stop, &mut attempt).await {
                    return;
                }
            }
        }
    };
    // Set after a disconnection until every room is subscribed again.
    let mut resubscribe = false;
    shard.connected.store(true, Ordering::Relaxed);
    let mut probe = tokio::time::interval(subs.probe_interval);
    probe.tick().await;
    loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(first) = r else { return };
                let changed = drain_changes(first, &mut rx).await;
                let (subscribe, unsubscribe) = subs.wanted(changed);
                // SSUBSCRIBE takes channels of one slot: one command per room,
                // pipelined over the multiplexed connection.
                let results = futures_util::future::join_all(subscribe.iter().map(|r| {
                    let mut c = con.clone();
                    let ch = subs.keys.channel(r);
                    async move { tokio::time::timeout(timeout, c.ssubscribe(ch)).await }
                }))
                .await;
                let mut done = Vec::new();
                for (room, res) in subscribe.into_iter().zip(results) {
                    match res {
                        Ok(Ok(())) => done.push(room),
                        _ => {
                            tracing::warn!(shard = index, %room, "ssubscribe failed; retrying");
                            let _ = shard.tx.try_send(room);
                        }
                    }
                }
                subs.confirm(&done);
                subs.resync_all(done);
                for room in unsubscribe {
                    let mut c = con.clone();
                    let _ = tokio::time::timeout(timeout, c.sunsubscribe(subs.keys.channel(&room))).await;
                }
            }
            _ = probe.tick() => {
                let ok = matches!(
                    tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(&mut con)).await,
                    Ok(Ok(_))
                );
                if ok && disconnected.swap(false, Ordering::Relaxed) {
                    subs.reconnects.fetch_add(1, Ordering::Relaxed);
                    resubscribe = true;
                }
                shard.connected.store(ok && !resubscribe, Ordering::Relaxed);
            }
            _ = tokio::time::sleep(RESUBSCRIBE_RETRY), if resubscribe => {
                let rooms = subs.shard_rooms(index);
                let results = futures_util::future::join_all(rooms.iter().map(|r| {
                    let mut c = con.clone();
                    let ch = subs.keys.channel(r);
                    async move { tokio::time::timeout(timeout, c.ssubscribe(ch)).await }
                }))
                .await;
                if results.iter().all(|r| matches!(r, Ok(Ok(())))) {
                    resubscribe = false;
                    shard.connected.store(true, Ordering::Relaxed);
                    tracing::info!(shard = index, rooms = rooms.len(), "cluster pub/sub resubscribed; repairing rooms");
                    subs.resync_all(rooms);
                } else {
                    tracing::debug!(shard = index, "cluster resubscribe incomplete; retrying");
                }
            }
            _ = subs.stop.cancelled() => return,
        }
    }
}
