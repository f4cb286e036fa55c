//! The local hub: which of this node's connections are in which room. The broker's
//! handler delivers through it: one encode per publication, then an enqueue per
//! local subscriber, never blocking.
//!
//! Sharded by room hash. A room's subscriber list is a copy-on-write snapshot, so
//! delivery holds the shard lock only long enough to clone one `Arc`. The hub knows
//! connections only by their mailbox ([`Outbound`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout::broker::Control;
use fanout::BrokerHandler;
use parking_lot::Mutex;
use shared::codes::{UnsubscribeCode, UNSUBSCRIBE_INSUFFICIENT_STATE, UNSUBSCRIBE_SERVER};
use shared::protocol::{self, ClientInfo, Publication};

use crate::metrics::Metrics;
use crate::outbound::{Close, Item, Outbound};
use crate::survey::{Query, Surveys};

const SHARDS: usize = 64;

/// Subscription ids, unique per process: an [`Item::Unsubscribe`] names the
/// subscription it ends, not just its channel.
static NEXT_SUB_ID: AtomicU64 = AtomicU64::new(1);

/// One connection's membership in one room.
pub(crate) struct Subscriber {
    pub(crate) channel: Arc<str>,
    pub(crate) id: u64,
    out: Arc<Outbound>,
    /// Deliver join/leave pushes (the client asked for them).
    join_leave: bool,
    /// Track offsets: skip duplicates, and on a gap or new epoch end the
    /// subscription with 2500 so the SDK resubscribes and recovers.
    positioned: bool,
    state: Mutex<DeliveryState>,
}

struct DeliveryState {
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
    pub(crate) fn new(
        channel: Arc<str>,
        out: Arc<Outbound>,
        join_leave: bool,
        positioned: bool,
    ) -> Self {
        Subscriber {
            channel,
            id: NEXT_SUB_ID.fetch_add(1, Ordering::Relaxed),
            out,
            join_leave,
            positioned,
            state: Mutex::new(DeliveryState {
                syncing: true,
                pending: Vec::new(),
                pending_bytes: 0,
                offset: 0,
                epoch: "".into(),
                broken: false,
            }),
        }
    }

    fn admit(&self, s: &mut DeliveryState, offset: u64, epoch: &str) -> Admit {
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

    fn gap(&self, s: &mut DeliveryState) {
        s.broken = true;
        s.pending = Vec::new();
        self.unsubscribe(&UNSUBSCRIBE_INSUFFICIENT_STATE);
    }

    /// Ask the connection to end this subscription with `code`.
    pub(crate) fn unsubscribe(&self, code: &'static UnsubscribeCode) {
        self.out.push_item(Item::Unsubscribe {
            channel: self.channel.clone(),
            sub_id: self.id,
            code,
        });
    }

    /// The node lost publications of this room: end the subscription with 2500 so
    /// the SDK resubscribes and recovers (or learns it cannot).
    fn lost(&self) {
        let mut s = self.state.lock();
        if !s.broken {
            self.gap(&mut s);
        }
    }

    /// Deliver one push with its stream position (offset 0: not positioned).
    fn deliver(&self, offset: u64, epoch: &str, bytes: &Bytes) {
        let mut s = self.state.lock();
        if s.broken {
            return;
        }
        if s.syncing {
            s.pending_bytes += bytes.len();
            if s.pending_bytes > self.out.max_bytes() {
                s.broken = true;
                s.pending = Vec::new();
                let dropped = std::mem::take(&mut s.pending_bytes);
                drop(s);
                self.out.close_slow(dropped);
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
    pub(crate) fn finish_sync(&self, reply: Option<Bytes>, position: Option<(u64, &str)>) {
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

/// One connection of a user: its client id and mailbox.
type UserConn = (Arc<str>, Arc<Outbound>);
type RoomShard = Mutex<HashMap<Arc<str>, Snapshot>>;

/// Rooms and their local subscribers.
pub struct Hub {
    shards: Box<[RoomShard]>,
    /// Rooms that lost their last local subscriber, and when: unsubscribed from the
    /// broker after a delay if still empty, so that churn does not thrash Redis.
    emptied: Mutex<HashMap<Arc<str>, Instant>>,
    /// Connections (client id and mailbox) by user, for cluster-wide commands
    /// (disconnect, unsubscribe, subscribe, refresh).
    users: Mutex<HashMap<Arc<str>, Vec<UserConn>>>,
    /// Where channel surveys (queries and answers) go.
    surveys: Arc<Surveys>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub(crate) fn new(metrics: Arc<Metrics>, surveys: Arc<Surveys>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            emptied: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            surveys,
            metrics,
        }
    }

    fn shard(&self, room: &str) -> &RoomShard {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn snapshot(&self, room: &str) -> Option<Snapshot> {
        self.shard(room).lock().get(room).cloned()
    }

    /// Add a subscriber to its room.
    pub(crate) fn add(&self, sub: Arc<Subscriber>) {
        let room = sub.channel.clone();
        {
            let mut shard = self.shard(&room).lock();
            Arc::make_mut(shard.entry(room.clone()).or_default()).push(sub);
        }
        self.emptied.lock().remove(&room);
    }

    /// Remove a subscriber. Returns true if it was there.
    pub(crate) fn remove(&self, sub: &Arc<Subscriber>) -> bool {
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
    pub(crate) fn take_idle_rooms(&self, idle_for: Duration) -> Vec<Arc<str>> {
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

    /// Record a connection of `user`, unless the user already holds `limit`
    /// connections here (0: no limit). False when refused.
    pub(crate) fn add_user(
        &self,
        user: &str,
        client: &Arc<str>,
        mailbox: Arc<Outbound>,
        limit: usize,
    ) -> bool {
        let mut users = self.users.lock();
        let list = users.entry(user.into()).or_default();
        if limit > 0 && list.len() >= limit {
            return false;
        }
        list.push((client.clone(), mailbox));
        true
    }

    pub(crate) fn remove_user(&self, user: &str, mailbox: &Arc<Outbound>) {
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(user) {
            list.retain(|(_, c)| !Arc::ptr_eq(c, mailbox));
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Users with at least one connection on this node.
    pub fn num_users(&self) -> usize {
        self.users.lock().len()
    }

    /// The mailboxes of `user`'s connections on this node; only connection
    /// `client` when it is not empty.
    fn user_mailboxes(&self, user: &str, client: &str) -> Vec<UserConn> {
        let users = self.users.lock();
        let Some(list) = users.get(user) else {
            return Vec::new();
        };
        list.iter()
            .filter(|(c, _)| client.is_empty() || **c == *client)
            .cloned()
            .collect()
    }

    /// Rooms with local subscribers whose name `keep` accepts, with their
    /// subscriber counts.
    pub(crate) fn rooms(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (room, subs) in shard.iter() {
                if keep(room) {
                    out.push((room.to_string(), subs.len() as u32));
                }
            }
        }
        out
    }

    /// Whether `room` has local subscribers.
    pub(crate) fn has_room(&self, room: &str) -> bool {
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
        self.metrics.broker_publications.inc();
        let Some(subs) = self.snapshot(room) else {
            return;
        };
        let bytes = Bytes::from(protocol::encode_publication_push(room, publication));
        for s in subs.iter() {
            s.deliver(publication.offset, epoch, &bytes);
        }
        self.metrics.deliveries.inc_by(subs.len() as u64);
    }

    fn on_join(&self, room: &str, info: &ClientInfo) {
        self.deliver_presence_event(room, || protocol::encode_join_push(room, info));
    }

    fn on_leave(&self, room: &str, info: &ClientInfo) {
        self.deliver_presence_event(room, || protocol::encode_leave_push(room, info));
    }

    fn on_control(&self, control: &Control) {
        match control {
            Control::Disconnect {
                user,
                code,
                reason,
                client,
                whitelist,
            } => {
                for (c, mailbox) in self.user_mailboxes(user, client) {
                    if !whitelist.iter().any(|w| **w == *c) {
                        mailbox.close(Close {
                            code: *code,
                            reason: reason.clone().into(),
                        });
                    }
                }
            }
            Control::Subscribe(cmd) => {
                let mailboxes = self.user_mailboxes(&cmd.user, &cmd.client);
                if !mailboxes.is_empty() {
                    let cmd = Arc::new((**cmd).clone());
                    for (_, m) in mailboxes {
                        m.push_item(Item::Subscribe(cmd.clone()));
                    }
                }
            }
            Control::Refresh(cmd) => {
                let mailboxes = self.user_mailboxes(&cmd.user, &cmd.client);
                if !mailboxes.is_empty() {
                    let cmd = Arc::new(cmd.clone());
                    for (_, m) in mailboxes {
                        m.push_item(Item::Refresh(cmd.clone()));
                    }
                }
            }
            Control::ChannelsQuery { id, from, pattern } => self.surveys.on_query(Query {
                id: *id,
                from: from.clone(),
                pattern: pattern.clone(),
            }),
            Control::ChannelsReply { id, to, channels } => {
                self.surveys.on_answer(*id, to, channels.clone())
            }
            Control::Unsubscribe {
                user,
                channel,
                client,
            } => {
                let mailboxes = self.user_mailboxes(user, client);
                if mailboxes.is_empty() {
                    return;
                }
                let Some(subs) = self.snapshot(channel) else {
                    return;
                };
                for s in subs.iter() {
                    if mailboxes.iter().any(|(_, m)| Arc::ptr_eq(m, &s.out)) {
                        s.unsubscribe(&UNSUBSCRIBE_SERVER);
                    }
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
