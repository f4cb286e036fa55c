//! The Redis engine: any number of nodes on one Redis (standalone, or a Redis Cluster
//! with sharded pub/sub) act as one.
//!
//! Keys of a room share the hash tag `{room}`, so in a cluster they live in one slot:
//! `<prefix>{room}.m` (hash: `t` top offset, `e` epoch), `<prefix>{room}.s` (stream
//! of publications, entry id `<offset>-0`, field `d` = envelope, `i` = the publish's
//! random id, so that a retried publish is not applied twice), `<prefix>{room}.p`
//! (presence: client id -> info), `<prefix>{room}.pe` (presence expiry, a sorted
//! set) and `<prefix>{room}.pu` (presence: user -> entries). The room's channel is `<prefix>{room}`. Every key has a TTL; a position
//! made by a read (no publication yet) has a short one.
//!
//! Publishing with history is one script on the room's slot: increment the offset,
//! create the epoch when absent, append to the stream (bounded length, TTL), publish
//! `<offset>:<epoch>:<envelope>`. Subscribing nodes spread rooms over a few pub/sub
//! connections by hash and batch SUBSCRIBE/UNSUBSCRIBE. Messages are handed to
//! per-room-ordered workers; a worker delivers in offset order and repairs gaps
//! (an offset jump, a reconnect) from the stream, or reports the room lost.
//!
//! Modules, each importing only those below it:
//! - `pubsub`: the room subscription table and the pub/sub connections;
//! - `delivery`: the ordered delivery workers, deciding with `position`;
//! - `presence`: presence entries and their periodic refresh;
//! - `command`: the command connection, retries, health, history reads;
//! - `order`: publishes kept in order through a dropped connection;
//! - `target`: where to connect (one server, a cluster, Sentinel's primary);
//! - `scripts` (Lua in `lua/`), `keys`, `config`.
//!
//! This module ties them together as [`RedisBroker`].

mod command;
mod config;
mod delivery;
mod keys;
mod order;
mod position;
mod presence;
mod pubsub;
mod scripts;
mod target;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use shared::envelope::{ChannelMessage, Envelope};
use tokio_util::sync::CancellationToken;

use self::command::{args, Commands};
pub use self::config::RedisConfig;
use self::delivery::Delivery;
use self::keys::CONTROL_ROOM;
use self::presence::Presence;
use self::pubsub::Subscriptions;
use crate::broker::new_epoch;
use crate::broker::{
    Broker, BrokerError, BrokerHandler, BrokerStats, ClientInfo, Control, HistoryOptions,
    HistoryPage, HistoryQuery, NodeInfo, PresenceStats, Publication, StreamPosition,
};

/// Position keep-alives in flight at once, pipelined on the command connection.
const KEEP_POSITIONS_CONCURRENCY: usize = 16;

/// The Redis broker. Cloning shares the engine; background tasks stop when the last
/// clone is dropped.
pub struct RedisBroker {
    url: String,
    commands: Arc<Commands>,
    delivery: Arc<Delivery>,
    subscriptions: Arc<Subscriptions>,
    presence: Arc<Presence>,
    _stop: Arc<StopGuard>,
}

struct StopGuard(CancellationToken);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("cluster", &self.commands.is_cluster())
            .finish()
    }
}

impl RedisBroker {
    /// Connect the command connection and start the pub/sub shards, workers and
    /// probes. Fails if Redis cannot be reached within the command timeout, so that a
    /// misconfigured node does not start.
    pub async fn connect(cfg: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        let commands = Commands::connect(&cfg).await?;
        let stop = CancellationToken::new();
        let delivery = Delivery::start(
            commands.clone(),
            cfg.workers,
            cfg.worker_queue,
            stop.clone(),
        );
        let subscriptions =
            Subscriptions::start(&cfg, commands.target(), delivery.clone(), stop.clone());
        let presence = Arc::new(Presence::new(commands.clone(), cfg.presence_ttl));
        tokio::spawn(maintenance_loop(
            commands.clone(),
            presence.clone(),
            cfg.probe_interval,
            (cfg.presence_ttl / 3).max(Duration::from_millis(100)),
            stop.clone(),
        ));
        let broker = Arc::new(RedisBroker {
            url: cfg.url,
            commands,
            delivery,
            subscriptions,
            presence,
            _stop: Arc::new(StopGuard(stop)),
        });
        broker.subscribe(CONTROL_ROOM).await?;
        Ok(broker)
    }

    /// Messages dropped because a worker queue was full (each repaired or reported).
    pub fn dropped_messages(&self) -> u64 {
        self.delivery.dropped()
    }

    /// Pub/sub connections re-established after a loss since start.
    pub fn pubsub_reconnects(&self) -> u64 {
        self.subscriptions.reconnect_count()
    }

    async fn publish_event(&self, room: &str, env: Envelope) -> Result<(), BrokerError> {
        let c = &self.commands;
        let body = env
            .encode()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let mut cmd = redis::cmd(c.publish_command());
        cmd.arg(c.keys.channel(room))
            .arg(ChannelMessage::unpositioned(&body));
        c.query::<i64>(&cmd, false, false).await.map(|_| ())
    }
}

/// Probe the command connection and refresh this node's presence entries.
async fn maintenance_loop(
    commands: Arc<Commands>,
    presence: Arc<Presence>,
    probe_interval: Duration,
    refresh_interval: Duration,
    stop: CancellationToken,
) {
    let mut probe = tokio::time::interval(probe_interval);
    let mut refresh = tokio::time::interval(refresh_interval);
    let mut failed_probes = 0u32;
    loop {
        tokio::select! {
            _ = probe.tick() => commands.probe_health(&mut failed_probes).await,
            _ = refresh.tick() => presence.refresh_entries().await,
            _ = stop.cancelled() => return,
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        if !self.delivery.set_handler(handler) {
            tracing::warn!("redis broker handler set twice; keeping the first");
        }
    }

    fn is_healthy(&self) -> bool {
        self.commands.is_healthy() && self.subscriptions.all_connected()
    }

    /// On one server or behind Sentinel the publish gate keeps the order
    /// (`order.rs`); a Cluster's client retries on its own, in any order.
    fn keeps_publish_order(&self) -> bool {
        !self.commands.is_cluster()
    }

    fn stats(&self) -> Option<BrokerStats> {
        let (presence_refreshes, presence_refresh_seconds) = self.presence.refresh_stats();
        Some(BrokerStats {
            command_errors: self.commands.error_count(),
            pubsub_reconnects: self.subscriptions.reconnect_count(),
            gap_repairs: self.delivery.repairs(),
            diverged_streams: self.delivery.diverged_streams(),
            dropped_messages: self.delivery.dropped(),
            presence_refreshes,
            presence_refresh_seconds,
        })
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        self.subscriptions.subscribe(room).await
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        // The node itself needs the control room, whatever clients do there.
        if room == CONTROL_ROOM {
            return Ok(());
        }
        self.subscriptions.unsubscribe(room).await
    }

    async fn publish(
        &self,
        room: &str,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let c = &self.commands;
        let body = Envelope::publication(&publication)
            .encode()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let publish_cmd = c.publish_command();
        let Some(h) = history.filter(|h| h.size > 0 && !h.ttl.is_zero()) else {
            let mut cmd = redis::cmd(publish_cmd);
            cmd.arg(c.keys.channel(room))
                .arg(ChannelMessage::unpositioned(&body));
            c.query::<i64>(&cmd, false, true).await?;
            return Ok(StreamPosition::default());
        };
        // The id tags the stream entry, so our retry after a lost reply finds the
        // first run's position instead of publishing twice.
        let id = format!("{:016x}", rand::random::<u64>());
        let keys = c.keys.history_keys(room);
        let args = args![
            c.keys.channel(room),
            body,
            h.size,
            h.ttl.as_secs().max(1),
            h.meta_ttl.max(h.ttl).as_secs().max(1),
            new_epoch(),
            publish_cmd,
            id,
        ];
        let (offset, epoch): (u64, String) = c
            .eval_marking_retry(&c.scripts.publish, &keys, &args)
            .await?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn publish_join(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_event(room, Envelope::Join(info.into())).await
    }

    async fn publish_leave(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_event(room, Envelope::Leave(info.into())).await
    }

    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BrokerError> {
        self.commands
            .read_history(room, &query, true, meta_ttl)
            .await
    }

    async fn keep_positions(&self, rooms: &[(String, Duration)]) -> Result<(), BrokerError> {
        let cmds: Vec<redis::Cmd> = rooms
            .iter()
            .map(|(room, ttl)| {
                // GT: never shortens a longer expiry; a missing key stays missing.
                let mut cmd = redis::cmd("EXPIRE");
                cmd.arg(&self.commands.keys.history_keys(room)[0])
                    .arg(ttl.as_secs().max(1))
                    .arg("GT");
                cmd
            })
            .collect();
        let c = self.commands.clone();
        let failed = futures_util::stream::iter(cmds)
            .map(move |cmd| {
                let c = c.clone();
                async move { c.query::<i64>(&cmd, true, false).await.err() }
            })
            .buffer_unordered(KEEP_POSITIONS_CONCURRENCY)
            .filter_map(|e| async move { e })
            .collect::<Vec<_>>()
            .await;
        match failed.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn remove_history(&self, room: &str) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.commands.keys.stream_key(room));
        self.commands
            .query::<i64>(&cmd, true, false)
            .await
            .map(|_| ())
    }

    async fn presence_add(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.presence.add_entry(room, info).await
    }

    async fn presence_remove(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.presence.remove_entry(room, info).await
    }

    async fn presence(&self, room: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        self.presence.members(room).await
    }

    async fn presence_stats(&self, room: &str) -> Result<PresenceStats, BrokerError> {
        self.presence.stats(room).await
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BrokerError> {
        self.publish_event(CONTROL_ROOM, Envelope::Control(control.clone()))
            .await
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.delivery.nodes()
    }
}
