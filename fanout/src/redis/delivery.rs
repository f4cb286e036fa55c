//! Ordered delivery: pub/sub messages are handed to per-room-ordered workers; a
//! worker delivers in offset order and repairs gaps (an offset jump, a reconnect,
//! a dropped message) from the stream, or reports the room lost. A resync that
//! finds the stream lost what the node delivered (a failover or a restart from an
//! older copy) gives the room a new epoch, so that every client is told
//! (`Delivery::retire_epoch`). What to do is decided by the pure functions of
//! [`super::position`]; this code reads history and acts on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use shared::envelope::{ChannelMessage, Envelope, EnvelopeClientInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::command::{backoff, Commands};
use super::keys::{hash_index, CONTROL_ROOM};
use super::position::{
    advance, check_entry, covers, digest, diverged, plan_resync, resync_query, step, Positions,
    ResyncPlan, RoomPosition, Step,
};
use crate::broker::{BrokerHandler, HistoryQuery, NodeInfo, NodeRegistry, StreamPosition};

/// Reads a resync retries (with backoff, about 15 s in all) while Redis is away.
const RESYNC_ATTEMPTS: u32 = 18;

/// An event for an ordered delivery worker.
enum WorkerEvent {
    Message {
        room: Arc<str>,
        payload: Bytes,
    },
    /// Read what may have been missed since the last delivered offset (after a
    /// (re)subscribe or a dropped message).
    Resync {
        room: Arc<str>,
    },
    /// The room is no longer subscribed: forget its position.
    Forget {
        room: Arc<str>,
    },
}

/// The lowest stream position a room lost to a full queue, if it was a positioned
/// publication (a resync request that did not fit records none).
type Dropped = Option<(u64, Arc<str>)>;

struct Worker {
    tx: mpsc::Sender<WorkerEvent>,
    /// Rooms to resync because a message or resync request did not fit the queue.
    overflowed: Mutex<HashMap<Arc<str>, Dropped>>,
    wake: tokio::sync::Notify,
}

impl Worker {
    /// Mark `room` for a resync, keeping the lowest dropped position.
    fn mark(&self, room: Arc<str>, dropped: Dropped) {
        let mut o = self.overflowed.lock();
        let slot = o.entry(room).or_default();
        if let Some((offset, epoch)) = dropped {
            if slot.as_ref().is_none_or(|(o, _)| offset < *o) {
                *slot = Some((offset, epoch));
            }
        }
        drop(o);
        self.wake.notify_one();
    }

    /// The first publication `room` lost to a full queue, if any.
    fn dropped(&self, room: &str) -> Dropped {
        self.overflowed.lock().get(room).cloned().flatten()
    }
}

/// The delivery workers and what they deliver to.
pub(super) struct Delivery {
    /// For history reads (repair, resync).
    commands: Arc<Commands>,
    workers: Vec<Worker>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    registry: NodeRegistry,
    dropped: AtomicU64,
    /// Gaps filled from the stream.
    repairs: AtomicU64,
    /// Rooms whose stream was found to have lost what this node delivered.
    diverged: AtomicU64,
    stop: CancellationToken,
}

impl Delivery {
    /// Start `workers` workers, each with a queue of `queue` events.
    pub(super) fn start(
        commands: Arc<Commands>,
        workers: usize,
        queue: usize,
        stop: CancellationToken,
    ) -> Arc<Delivery> {
        let mut worker_rx = Vec::new();
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue.max(16));
                worker_rx.push(rx);
                Worker {
                    tx,
                    overflowed: Mutex::new(HashMap::new()),
                    wake: tokio::sync::Notify::new(),
                }
            })
            .collect();
        let delivery = Arc::new(Delivery {
            commands,
            workers,
            handler: OnceLock::new(),
            registry: NodeRegistry::default(),
            dropped: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            diverged: AtomicU64::new(0),
            stop,
        });
        for (i, rx) in worker_rx.into_iter().enumerate() {
            tokio::spawn(worker_loop(delivery.clone(), i, rx));
        }
        delivery
    }

    /// Register where events go; false if one was registered already.
    pub(super) fn set_handler(&self, handler: Arc<dyn BrokerHandler>) -> bool {
        self.handler.set(handler).is_ok()
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    /// Nodes heard from by heartbeat on the control room.
    pub(super) fn nodes(&self) -> Vec<NodeInfo> {
        self.registry.alive()
    }

    /// Messages dropped because a worker queue was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Gaps filled from the stream.
    pub(super) fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    /// Rooms whose stream was found to have lost what this node delivered (each
    /// given a new epoch).
    pub(super) fn diverged_streams(&self) -> u64 {
        self.diverged.load(Ordering::Relaxed)
    }

    fn worker(&self, room: &str) -> &Worker {
        &self.workers[hash_index(room, self.workers.len())]
    }

    /// Route one pub/sub message to its room's worker without blocking.
    pub(super) fn route_message(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.commands.keys.room_of_channel(channel) else {
            return;
        };
        let w = self.worker(room);
        let room: Arc<str> = room.into();
        let ev = WorkerEvent::Message {
            room: room.clone(),
            payload: Bytes::copy_from_slice(payload),
        };
        if w.tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let dropped = ChannelMessage::parse(payload)
                .ok()
                .filter(|m| m.offset > 0)
                .map(|m| (m.offset, Arc::from(m.epoch)));
            w.mark(room, dropped);
        }
    }

    /// Ask the room's worker to read what it may have missed. Never waits: with
    /// the worker's queue full the room is marked, as for a dropped message, and
    /// the worker resyncs it when it gets to it.
    pub(super) fn request_resync(&self, room: Arc<str>) {
        let w = self.worker(&room);
        if let Err(e) = w.tx.try_send(WorkerEvent::Resync { room }) {
            let (mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev)) = e;
            if let WorkerEvent::Resync { room } = ev {
                w.mark(room, None);
            }
        }
    }

    /// Ask the room's worker to forget the room's position.
    pub(super) async fn forget(&self, room: Arc<str>) {
        let w = self.worker(&room);
        let _ = w.tx.send(WorkerEvent::Forget { room }).await;
    }

    fn deliver_publication(&self, room: &str, env: &Envelope, offset: u64, epoch: &str) {
        let Some(handler) = self.handler() else {
            return;
        };
        match env.to_publication(offset) {
            Ok(Some(p)) => handler.on_publication(room, &Arc::new(p), epoch),
            Ok(None) => {}
            Err(e) => tracing::warn!(%room, error = %e, "undecodable publication"),
        }
    }

    /// Handle one pub/sub message of `room`: a join, leave or control is passed on;
    /// a publication is delivered in offset order, after repairing a gap.
    async fn handle_message(&self, positions: &mut Positions, room: &Arc<str>, payload: &[u8]) {
        let Some(handler) = self.handler() else {
            return;
        };
        let msg = match ChannelMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%room, error = %e, "bad channel message");
                return;
            }
        };
        let env = match Envelope::decode(msg.body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%room, error = %e, "bad envelope");
                return;
            }
        };
        let info = |i: &EnvelopeClientInfo| i.to_client_info().ok();
        match &env {
            Envelope::Join(i) => {
                if let Some(i) = info(i) {
                    handler.on_join(room, &i);
                }
                return;
            }
            Envelope::Leave(i) => {
                if let Some(i) = info(i) {
                    handler.on_leave(room, &i);
                }
                return;
            }
            Envelope::Control(c) => {
                if **room == *CONTROL_ROOM {
                    self.registry.dispatch(c, Some(handler));
                }
                return;
            }
            Envelope::Publication { .. } => {}
        }
        if msg.offset == 0 {
            self.deliver_publication(room, &env, 0, "");
            return;
        }
        if positions.get(room).is_none_or(|p| !p.delivered) {
            // Nothing delivered beyond the baseline yet, but earlier publications
            // were dropped: they come first (the queue is in order, so none of those
            // before this one is still queued). Rare: only this state takes the lock.
            let dropped = self.worker(room).dropped(room);
            rewind_to_dropped(positions, room, dropped.filter(|(d, _)| *d < msg.offset));
        }
        match step(positions.get(room), msg.offset, msg.epoch) {
            Step::Skip => return,
            Step::Deliver => {}
            Step::Repair(after) => {
                if !self
                    .repair(positions, room, after, msg.offset - 1, msg.epoch)
                    .await
                {
                    handler.on_lost(room);
                }
            }
            Step::Lost => handler.on_lost(room),
        }
        advance(positions, room, msg.offset, msg.epoch, digest(msg.body));
        self.deliver_publication(room, &env, msg.offset, msg.epoch);
    }

    /// Deliver `after+1 ..= upto` from the stream. False if the range is not all there.
    async fn repair(
        &self,
        positions: &mut Positions,
        room: &Arc<str>,
        after: u64,
        upto: u64,
        epoch: &str,
    ) -> bool {
        let query = HistoryQuery {
            since: Some(StreamPosition {
                offset: after,
                epoch: epoch.to_owned(),
            }),
            limit: Some((upto - after) as usize),
            reverse: false,
        };
        let page = match self
            .commands
            .read_history(room, &query, false, Duration::ZERO)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%room, error = %e, "history read for repair failed");
                return false;
            }
        };
        if !covers(&page, after, upto, epoch) {
            return false;
        }
        let handler = self.handler().expect("bug: delivering without a handler");
        for p in &page.publications {
            handler.on_publication(room, p, epoch);
        }
        advance(positions, room, upto, epoch, 0);
        self.repairs.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// After a (re)subscribe or a dropped message. A room without a position gets its
    /// baseline (the stream top, or "no stream"). A room with one (or with a dropped
    /// publication, see [`rewind_to_dropped`]) gets what the stream holds beyond it,
    /// in order, or is reported lost.
    async fn resync(&self, positions: &mut Positions, room: &Arc<str>, dropped: Dropped) {
        rewind_to_dropped(positions, room, dropped);
        let known = positions.get(room).map(|p| (p.offset, p.epoch.clone()));
        let query = resync_query(known.as_ref().map(|(after, _)| *after));
        let mut attempt = 0u32;
        let page = loop {
            match self
                .commands
                .read_history(room, &query, false, Duration::ZERO)
                .await
            {
                Ok(p) => break p,
                Err(e) if attempt < RESYNC_ATTEMPTS => {
                    tracing::debug!(%room, error = %e, "history read for resync failed; retrying");
                    if !backoff(&self.stop, &mut attempt).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "history read for resync failed; room lost");
                    if let Some(h) = self.handler() {
                        h.on_lost(room);
                    }
                    positions.remove(room);
                    return;
                }
            }
        };
        let Some(handler) = self.handler() else {
            return;
        };
        let top = &page.position;
        if let Some(p) = positions.get(room) {
            let entry = if check_entry(p, top) {
                self.commands
                    .entry_digest(room, p.offset)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(%room, error = %e, "stream entry read for resync failed");
                        None
                    })
            } else {
                None
            };
            if diverged(p, top, entry) {
                let followed = p.epoch.clone();
                self.retire_epoch(positions, room, followed, top).await;
                return;
            }
        }
        match plan_resync(known.as_ref().map(|(o, e)| (*o, &**e)), &page) {
            ResyncPlan::Nothing => {}
            ResyncPlan::Baseline => {
                positions.insert(
                    room.clone(),
                    RoomPosition::at(top.offset, &top.epoch, false),
                );
            }
            ResyncPlan::Gone => {
                handler.on_lost(room);
                positions.insert(room.clone(), RoomPosition::at(0, "", false));
            }
            ResyncPlan::Deliver(publications) => {
                for p in publications {
                    handler.on_publication(room, p, &top.epoch);
                }
                advance(positions, room, top.offset, &top.epoch, 0);
            }
            ResyncPlan::Lost => {
                handler.on_lost(room);
                positions.insert(room.clone(), RoomPosition::at(top.offset, &top.epoch, true));
            }
        }
    }

    /// The room's stream lost publications this node delivered from epoch
    /// `followed`, and its offsets go to other publications: a client that
    /// recovers from a lost offset would get the new ones after it as if nothing
    /// was missing. The room gets a new epoch (one node wins; the others find it
    /// changed), so every recovery from `followed` answers `recovered: false`, and
    /// this node's subscribers are told now. Publications of `followed` still in
    /// flight are skipped. If Redis cannot be asked, the room is reported lost and
    /// followed from the top, below the position (the reused offsets must not be
    /// skipped as repeats).
    async fn retire_epoch(
        &self,
        positions: &mut Positions,
        room: &Arc<str>,
        followed: Arc<str>,
        top: &StreamPosition,
    ) {
        let Some(handler) = self.handler() else {
            return;
        };
        self.diverged.fetch_add(1, Ordering::Relaxed);
        // The epoch first: a client told now resubscribes at once, and must find it.
        let now = match self.commands.bump_epoch(room, &followed).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(%room, error = %e, "the room's stream lost publications this node delivered; changing its epoch failed");
                handler.on_lost(room);
                positions.insert(room.clone(), RoomPosition::at(top.offset, &top.epoch, true));
                return;
            }
        };
        handler.on_lost(room);
        tracing::warn!(%room, epoch = %followed, new_epoch = %now.epoch, top = now.offset,
            "the room's stream lost publications this node delivered: it has a new epoch, and its clients are told");
        let position = if now.epoch.is_empty() {
            RoomPosition::at(0, "", false)
        } else {
            RoomPosition {
                retired: Some(followed),
                ..RoomPosition::at(now.offset, &now.epoch, true)
            }
        };
        positions.insert(room.clone(), position);
    }
}

async fn worker_loop(delivery: Arc<Delivery>, index: usize, mut rx: mpsc::Receiver<WorkerEvent>) {
    let mut positions = Positions::new();
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => Some(ev),
                None => return,
            },
            _ = delivery.workers[index].wake.notified() => None,
            _ = delivery.stop.cancelled() => return,
        };
        if let Some(ev) = ev {
            match ev {
                WorkerEvent::Message { room, payload } => {
                    delivery
                        .handle_message(&mut positions, &room, &payload)
                        .await
                }
                WorkerEvent::Resync { room } => delivery.resync(&mut positions, &room, None).await,
                WorkerEvent::Forget { room } => {
                    positions.remove(&room);
                }
            }
        }
        let worker = &delivery.workers[index];
        let overflowed: Vec<(Arc<str>, Dropped)> = worker.overflowed.lock().drain().collect();
        for (room, dropped) in overflowed {
            // A room with nothing delivered yet may still have publications queued
            // before the dropped one: it waits until the queue is empty.
            if dropped.is_some()
                && positions.get(&room).is_none_or(|p| !p.delivered)
                && !rx.is_empty()
            {
                worker.overflowed.lock().entry(room).or_insert(dropped);
                continue;
            }
            delivery.resync(&mut positions, &room, dropped).await;
        }
    }
}

/// A room that has delivered nothing beyond its baseline (or has no position) and
/// lost publication `first` to a full queue: its position goes back to just before
/// it, so that it is read back from the stream. (A baseline taken after the drop
/// would otherwise cover it, and it would never be delivered.) The caller makes
/// sure no publication before `first` is still queued.
fn rewind_to_dropped(positions: &mut Positions, room: &Arc<str>, dropped: Dropped) {
    let Some((first, epoch)) = dropped else {
        return;
    };
    let rewind = match positions.get(room) {
        None => true,
        Some(p) => !p.delivered && *p.epoch == *epoch && first <= p.offset,
    };
    if rewind {
        positions.insert(room.clone(), RoomPosition::at(first - 1, &epoch, true));
    }
}
