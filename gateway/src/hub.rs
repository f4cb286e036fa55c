//! The local hub: which of this node's connections are in which room. The broker's
//! handler delivers through it: one encode per publication, then an enqueue per
//! local subscriber, never blocking.
//!
//! Sharded by room hash. A room's subscriber list is a copy-on-write snapshot, so
//! delivery holds the shard lock only long enough to clone one `Arc`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout::broker::Control;
use fanout::BrokerHandler;
use parking_lot::Mutex;
use shared::codes::UNSUBSCRIBE_INSUFFICIENT_STATE;
use shared::protocol::{self, ClientInfo, Publication};

use crate::conn::Conn;
use crate::metrics::Metrics;
use crate::outbound::{Close, Item, Outbound};

const SHARDS: usize = 64;

/// One connection's membership in one room.
pub struct Subscriber {
    pub channel: Arc<str>,
    pub out: Arc<Outbound>,
    /// Deliver join/leave pushes (the client asked for them).
    join_leave: bool,
    /// Track offsets: skip duplicates, and on a gap or new epoch end the
    /// subscription with 2500 so the SDK resubscribes and recovers.
    positioned: bool,
    state: Mutex<SubState>,
}

struct SubState {
    /// Until the subscribe reply is queued, deliveries wait in `pending`, because
    /// the SDK must see the reply before any push of the channel.
    syncing: bool,
    pending: Vec<(u64, Box<str>, Bytes)>,
    pending_bytes: usize,
    offset: u64,
    epoch: Box<str>,
    /// A gap was seen: nothing more is delivered on this subscription.
    broken: bool,
}

enum Admit {
    Deliver,
    Skip,
    Gap,
}

impl Subscriber {
    pub fn new(channel: Arc<str>, out: Arc<Outbound>, join_leave: bool, positioned: bool) -> Self {
        Subscriber {
            channel,
            out,
            join_leave,
            positioned,
            state: Mutex::new(SubState {
                syncing: true,
                pending: Vec::new(),
                pending_bytes: 0,
                offset: 0,
                epoch: "".into(),
                broken: false,
            }),
        }
    }

    fn admit(&self, s: &mut SubState, offset: u64, epoch: &str) -> Admit {
        if !self.positioned || offset == 0 {
            return Admit::Deliver;
        }
        if *s.epoch != *epoch {
            return Admit::Gap;
        }
        if offset <= s.offset {
            return Admit::Skip;
        }
        if offset != s.offset + 1 {
            return Admit::Gap;
        }
        s.offset = offset;
        Admit::Deliver
    }

    fn gap(self: &Arc<Self>, s: &mut SubState) {
        s.broken = true;
        s.pending = Vec::new();
        self.out.push_item(Item::Unsubscribe(
            self.clone(),
            UNSUBSCRIBE_INSUFFICIENT_STATE,
        ));
    }

    /// The node lost publications of this room: end the subscription with 2500 so
    /// the SDK resubscribes and recovers (or learns it cannot).
    pub fn lost(self: &Arc<Self>) {
        let mut s = self.state.lock();
        if !s.broken {
            self.gap(&mut s);
        }
    }

    /// Deliver one push with its stream position (offset 0: not positioned).
    pub fn deliver(self: &Arc<Self>, offset: u64, epoch: &str, bytes: &Bytes) {
        let mut s = self.state.lock();
        if s.broken {
            return;
        }
        if s.syncing {
            s.pending_bytes += bytes.len();
            if s.pending_bytes > self.out.max_bytes() {
                s.broken = true;
                s.pending = Vec::new();
                drop(s);
                self.out.close_slow();
                return;
            }
            s.pending.push((offset, epoch.into(), bytes.clone()));
            return;
        }
        match self.admit(&mut s, offset, epoch) {
            Admit::Deliver => {
                self.out.push(bytes.clone());
            }
            Admit::Skip => {}
            Admit::Gap => self.gap(&mut s),
        }
    }

    /// Queue the subscribe reply (`reply`, if any) and then whatever arrived while
    /// subscribing. `position` is the stream position the client is at after the
    /// reply; buffered publications at or before it are dropped as already known.
    pub fn finish_sync(self: &Arc<Self>, reply: Option<Bytes>, position: Option<(u64, &str)>) {
        let mut s = self.state.lock();
        if let Some(r) = reply {
            self.out.push(r);
        }
        if let Some((offset, epoch)) = position {
            s.offset = offset;
            s.epoch = epoch.into();
        }
        s.syncing = false;
        let pending = std::mem::take(&mut s.pending);
        s.pending_bytes = 0;
        for (offset, epoch, bytes) in pending {
            if s.broken {
                break;
            }
            match self.admit(&mut s, offset, &epoch) {
                Admit::Deliver => {
                    self.out.push(bytes);
                }
                Admit::Skip => {}
                Admit::Gap => self.gap(&mut s),
            }
        }
    }
}

type Snapshot = Arc<Vec<Arc<Subscriber>>>;
type Shard = Mutex<HashMap<Arc<str>, Snapshot>>;

/// Rooms and their local subscribers.
pub struct Hub {
    shards: Box<[Shard]>,
    /// Rooms that lost their last local subscriber, and when: unsubscribed from the
    /// broker after a delay if still empty, so that churn does not thrash Redis.
    emptied: Mutex<HashMap<Arc<str>, Instant>>,
    /// Connections by user, for cluster-wide commands (disconnect, unsubscribe).
    users: Mutex<HashMap<Arc<str>, Vec<Weak<Conn>>>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            emptied: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn shard(&self, room: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn snapshot(&self, room: &str) -> Option<Snapshot> {
        self.shard(room).lock().get(room).cloned()
    }

    /// Add a subscriber to its room.
    pub fn add(&self, sub: Arc<Subscriber>) {
        let room = sub.channel.clone();
        {
            let mut shard = self.shard(&room).lock();
            Arc::make_mut(shard.entry(room.clone()).or_default()).push(sub);
        }
        self.emptied.lock().remove(&room);
    }

    /// Remove a subscriber. Returns true if it was there.
    pub fn remove(&self, sub: &Arc<Subscriber>) -> bool {
        let room = &sub.channel;
        let (found, now_empty) = {
            let mut shard = self.shard(room).lock();
            let Some(list) = shard.get_mut(room) else {
                return false;
            };
            let before = list.len();
            Arc::make_mut(list).retain(|s| !Arc::ptr_eq(s, sub));
            let found = list.len() != before;
            let empty = list.is_empty();
            if empty {
                shard.remove(room);
            }
            (found, empty)
        };
        if now_empty {
            self.emptied.lock().insert(room.clone(), Instant::now());
        }
        found
    }

    /// Rooms empty for at least `idle_for`, still empty now: the caller unsubscribes
    /// them from the broker.
    pub fn take_idle_rooms(&self, idle_for: Duration) -> Vec<Arc<str>> {
        let now = Instant::now();
        let due: Vec<Arc<str>> = {
            let mut emptied = self.emptied.lock();
            let due: Vec<Arc<str>> = emptied
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= idle_for)
                .map(|(r, _)| r.clone())
                .collect();
            for r in &due {
                emptied.remove(r);
            }
            due
        };
        due.into_iter().filter(|r| !self.has_room(r)).collect()
    }

    pub fn add_user(&self, user: &str, conn: Weak<Conn>) {
        self.users.lock().entry(user.into()).or_default().push(conn);
    }

    pub fn remove_user(&self, user: &str, conn: &Weak<Conn>) {
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(user) {
            list.retain(|c| !c.ptr_eq(conn));
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Users with at least one connection on this node.
    pub fn num_users(&self) -> usize {
        self.users.lock().len()
    }

    fn user_conns(&self, user: &str) -> Vec<Arc<Conn>> {
        self.users
            .lock()
            .get(user)
            .map(|l| l.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Whether `room` has local subscribers.
    pub fn has_room(&self, room: &str) -> bool {
        self.shard(room).lock().contains_key(room)
    }

    /// Rooms with local subscribers.
    pub fn num_rooms(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Local subscriptions over all rooms.
    pub fn num_subscriptions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().map(|v| v.len()).sum::<usize>())
            .sum()
    }

    fn deliver_presence_event(&self, room: &str, encode: impl FnOnce() -> Vec<u8>) {
        let Some(subs) = self.snapshot(room) else {
            return;
        };
        if !subs.iter().any(|s| s.join_leave) {
            return;
        }
        let bytes = Bytes::from(encode());
        for s in subs.iter().filter(|s| s.join_leave) {
            s.deliver(0, "", &bytes);
        }
    }
}

impl BrokerHandler for Hub {
    fn on_publication(&self, room: &str, publication: &Arc<Publication>, epoch: &str) {
        self.metrics.publications_received.inc();
        let Some(subs) = self.snapshot(room) else {
            return;
        };
        let bytes = Bytes::from(protocol::encode_publication_push(room, publication));
        for s in subs.iter() {
            s.deliver(publication.offset, epoch, &bytes);
        }
        self.metrics.deliveries.add(subs.len() as u64);
    }

    fn on_join(&self, room: &str, info: &ClientInfo) {
        self.deliver_presence_event(room, || protocol::encode_join_push(room, info));
    }

    fn on_leave(&self, room: &str, info: &ClientInfo) {
        self.deliver_presence_event(room, || protocol::encode_leave_push(room, info));
    }

    fn on_control(&self, control: &Control) {
        match control {
            Control::Disconnect { user, code, reason } => {
                for c in self.user_conns(user) {
                    c.out.close(Close {
                        code: *code,
                        reason: reason.clone().into(),
                    });
                }
            }
            Control::Unsubscribe { user, channel } => {
                for c in self.user_conns(user) {
                    c.unsubscribe_by_server(channel);
                }
            }
            Control::Node(_) => {}
        }
    }

    fn on_lost(&self, room: &str) {
        self.metrics.rooms_lost.inc();
        let Some(subs) = self.snapshot(room) else {
            return;
        };
        for s in subs.iter().filter(|s| s.positioned) {
            s.lost();
        }
    }
}
