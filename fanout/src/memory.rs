//! The in-memory engine. Complete, but for ONE node only: nothing leaves the
//! process, so a second node would see none of this node's publications.
//!
//! Rooms are sharded by name hash. Publications to a room with history are offset,
//! stored and handed to the handler under the room's shard lock, so delivery order
//! equals offset order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::broker::{
    new_epoch, Broker, BrokerError, BrokerHandler, ClientInfo, Control, HistoryOptions,
    HistoryPage, HistoryQuery, NodeInfo, NodeRegistry, PresenceStats, Publication, StreamPosition,
};

const SHARDS: usize = 64;

/// How often expired streams are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

struct Stream {
    epoch: Arc<str>,
    top: u64,
    items: VecDeque<Arc<Publication>>,
    /// The publications are dropped after this.
    items_expire: Instant,
    /// The position (top, epoch) is dropped after this.
    meta_expire: Instant,
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration) -> Self {
        Stream {
            epoch: new_epoch().into(),
            top: 0,
            items: VecDeque::new(),
            items_expire: now,
            meta_expire: now + meta_ttl,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.to_string(),
        }
    }
}

#[derive(Default)]
struct StoreShard {
    streams: HashMap<String, Stream>,
    presence: HashMap<String, HashMap<String, ClientInfo>>,
}

impl StoreShard {
    /// The live stream of `room`, dropping expired parts first.
    fn stream(&mut self, room: &str, now: Instant) -> Option<&mut Stream> {
        let expired = self.streams.get(room).map(|s| s.meta_expire <= now)?;
        if expired {
            self.streams.remove(room);
            return None;
        }
        let s = self.streams.get_mut(room).expect("bug: checked above");
        if s.items_expire <= now {
            s.items.clear();
        }
        Some(s)
    }

    fn stream_or_new(&mut self, room: &str, now: Instant, meta_ttl: Duration) -> &mut Stream {
        if self.stream(room, now).is_none() {
            self.streams
                .insert(room.to_owned(), Stream::new(now, meta_ttl));
        }
        self.streams.get_mut(room).expect("bug: inserted above")
    }
}

/// In-memory broker for a single node. See the module docs.
pub struct MemoryBroker {
    shards: Box<[Mutex<StoreShard>]>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    registry: NodeRegistry,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A new broker. When called inside a Tokio runtime it also starts a sweeper
    /// that drops expired streams; the sweeper ends when the broker is dropped.
    pub fn new() -> Arc<Self> {
        let broker = Arc::new(MemoryBroker {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(StoreShard::default()))
                .collect(),
            handler: OnceLock::new(),
            registry: NodeRegistry::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&broker);
            tokio::spawn(sweep(weak));
        }
        broker
    }

    fn shard(&self, room: &str) -> &Mutex<StoreShard> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Internal("no handler registered".into()))
    }

    /// Drop every expired stream and return how many remain.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut remaining = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.streams.retain(|_, s| s.meta_expire > now);
            for s in shard.streams.values_mut() {
                if s.items_expire <= now {
                    s.items = VecDeque::new();
                }
            }
            remaining += shard.streams.len();
        }
        remaining
    }
}

async fn sweep(broker: Weak<MemoryBroker>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        match broker.upgrade() {
            Some(b) => {
                b.sweep_expired();
            }
            None => return,
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        if self.handler.set(handler).is_err() {
            tracing::warn!("memory broker handler set twice; keeping the first");
        }
    }

    async fn subscribe(&self, _room: &str) -> Result<(), BrokerError> {
        // One node: every publication is already local.
        Ok(())
    }

    async fn unsubscribe(&self, _room: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        room: &str,
        mut publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let handler = self.handler()?;
        let Some(opts) = history.filter(|h| h.size > 0 && !h.ttl.is_zero()) else {
            publication.offset = 0;
            handler.on_publication(room, &Arc::new(publication), "");
            return Ok(StreamPosition::default());
        };
        let now = Instant::now();
        let mut shard = self.shard(room).lock();
        let stream = shard.stream_or_new(room, now, opts.meta_ttl);
        stream.top += 1;
        publication.offset = stream.top;
        let publication = Arc::new(publication);
        stream.items.push_back(publication.clone());
        while stream.items.len() > opts.size {
            stream.items.pop_front();
        }
        stream.items_expire = now + opts.ttl;
        stream.meta_expire = now + opts.meta_ttl.max(opts.ttl);
        let position = stream.position();
        // Under the lock, so that delivery order is offset order.
        handler.on_publication(room, &publication, &stream.epoch);
        Ok(position)
    }

    async fn publish_join(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.on_join(room, info);
        Ok(())
    }

    async fn publish_leave(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.on_leave(room, info);
        Ok(())
    }

    async fn keep_positions(&self, rooms: &[(String, Duration)]) -> Result<(), BrokerError> {
        let now = Instant::now();
        for (room, ttl) in rooms {
            if let Some(s) = self.shard(room).lock().stream(room, now) {
                s.meta_expire = s.meta_expire.max(now + *ttl);
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BrokerError> {
        let now = Instant::now();
        let mut shard = self.shard(room).lock();
        let stream = shard.stream_or_new(room, now, meta_ttl);
        let position = stream.position();
        let limit = query.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(HistoryPage {
                publications: Vec::new(),
                position,
            });
        }
        if let Some(since) = &query.since {
            if !since.epoch.is_empty() && since.epoch != position.epoch {
                return Ok(HistoryPage {
                    publications: Vec::new(),
                    position,
                });
            }
        }
        let publications = match (query.reverse, &query.since) {
            (false, since) => {
                let after = since.as_ref().map_or(0, |s| s.offset);
                stream
                    .items
                    .iter()
                    .filter(|p| p.offset > after)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            (true, since) => {
                let before = since.as_ref().map_or(u64::MAX, |s| s.offset);
                stream
                    .items
                    .iter()
                    .rev()
                    .filter(|p| p.offset < before)
                    .take(limit)
                    .cloned()
                    .collect()
            }
        };
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove_history(&self, room: &str) -> Result<(), BrokerError> {
        let mut shard = self.shard(room).lock();
        if let Some(s) = shard.stream(room, Instant::now()) {
            s.items.clear();
        }
        Ok(())
    }

    async fn presence_add(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.shard(room)
            .lock()
            .presence
            .entry(room.to_owned())
            .or_default()
            .insert(info.client.clone(), info.clone());
        Ok(())
    }

    async fn presence_remove(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let client = info.client.as_str();
        let mut shard = self.shard(room).lock();
        if let Some(members) = shard.presence.get_mut(room) {
            members.remove(client);
            if members.is_empty() {
                shard.presence.remove(room);
            }
        }
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        Ok(self
            .shard(room)
            .lock()
            .presence
            .get(room)
            .cloned()
            .unwrap_or_default())
    }

    async fn presence_stats(&self, room: &str) -> Result<PresenceStats, BrokerError> {
        let shard = self.shard(room).lock();
        let Some(members) = shard.presence.get(room) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = members.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: members.len() as u32,
            num_users: users.len() as u32,
        })
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BrokerError> {
        self.registry.dispatch(control, self.handler.get());
        Ok(())
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.registry.alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::raw_from_slice;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, String)>>);

    impl BrokerHandler for Recorder {
        fn on_publication(&self, room: &str, p: &Arc<Publication>, epoch: &str) {
            self.0.lock().push((room.into(), p.offset, epoch.into()));
        }
        fn on_join(&self, _: &str, _: &ClientInfo) {}
        fn on_leave(&self, _: &str, _: &ClientInfo) {}
        fn on_lost(&self, _: &str) {}
    }

    fn publication(n: u32) -> Publication {
        Publication {
            data: raw_from_slice(format!("{{\"n\":{n}}}").as_bytes()).unwrap(),
            info: None,
            offset: 0,
            tags: Default::default(),
        }
    }

    const OPTS: HistoryOptions = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(600),
    };

    #[tokio::test]
    async fn offsets_history_and_trimming() {
        let b = MemoryBroker::new();
        let rec = Arc::new(Recorder::default());
        b.set_handler(rec.clone());
        let first = b
            .history("r", HistoryQuery::default(), OPTS.meta_ttl)
            .await
            .unwrap();
        assert_eq!(first.position.offset, 0);
        for n in 1..=5 {
            let pos = b.publish("r", publication(n), Some(OPTS)).await.unwrap();
            assert_eq!(pos.offset, n as u64);
            assert_eq!(
                pos.epoch, first.position.epoch,
                "epoch kept from the first read"
            );
        }
        let offsets: Vec<u64> = rec.0.lock().iter().map(|r| r.1).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);

        let all = b
            .history(
                "r",
                HistoryQuery {
                    limit: None,
                    ..Default::default()
                },
                OPTS.meta_ttl,
            )
            .await
            .unwrap();
        let got: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![3, 4, 5], "trimmed to size 3");

        let since = HistoryQuery {
            since: Some(StreamPosition {
                offset: 3,
                epoch: all.position.epoch.clone(),
            }),
            limit: Some(1),
            reverse: false,
        };
        let page = b.history("r", since, OPTS.meta_ttl).await.unwrap();
        assert_eq!(page.publications.len(), 1);
        assert_eq!(page.publications[0].offset, 4);

        let rev = HistoryQuery {
            since: None,
            limit: Some(2),
            reverse: true,
        };
        let page = b.history("r", rev, OPTS.meta_ttl).await.unwrap();
        let got: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![5, 4]);

        let wrong_epoch = HistoryQuery {
            since: Some(StreamPosition {
                offset: 1,
                epoch: "other".into(),
            }),
            limit: None,
            reverse: false,
        };
        let page = b.history("r", wrong_epoch, OPTS.meta_ttl).await.unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position.offset, 5);
    }

    #[tokio::test]
    async fn no_history_means_no_offset() {
        let b = MemoryBroker::new();
        let rec = Arc::new(Recorder::default());
        b.set_handler(rec.clone());
        let pos = b.publish("r", publication(1), None).await.unwrap();
        assert_eq!(pos, StreamPosition::default());
        assert_eq!(rec.0.lock()[0].1, 0);
    }

    #[tokio::test]
    async fn presence_counts_users_and_clients() {
        let b = MemoryBroker::new();
        for (user, client) in [("1", "a"), ("1", "b"), ("2", "c")] {
            let info = ClientInfo {
                user: user.into(),
                client: client.into(),
                ..Default::default()
            };
            b.presence_add("r", &info).await.unwrap();
        }
        let s = b.presence_stats("r").await.unwrap();
        assert_eq!((s.num_clients, s.num_users), (3, 2));
        let a = ClientInfo {
            user: "1".into(),
            client: "a".into(),
            ..Default::default()
        };
        b.presence_remove("r", &a).await.unwrap();
        assert_eq!(b.presence("r").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn expired_stream_gets_new_epoch() {
        let b = MemoryBroker::new();
        b.set_handler(Arc::new(Recorder::default()));
        let short = HistoryOptions {
            size: 10,
            ttl: Duration::from_millis(20),
            meta_ttl: Duration::from_millis(40),
        };
        let p1 = b.publish("r", publication(1), Some(short)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let page = b
            .history("r", HistoryQuery::default(), short.meta_ttl)
            .await
            .unwrap();
        assert_eq!(page.position, p1, "items gone, position kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.sweep_expired(), 0);
        let p2 = b.publish("r", publication(2), Some(short)).await.unwrap();
        assert_eq!(p2.offset, 1);
        assert_ne!(p2.epoch, p1.epoch);
    }
}
