//! The Redis engine: any number of nodes on one Redis (standalone, or a Redis Cluster
//! with sharded pub/sub) act as one.
//!
//! Keys of a room share the hash tag `{room}`, so in a cluster they live in one slot:
//! `<prefix>{room}.m` (hash: `t` top offset, `e` epoch), `<prefix>{room}.s` (stream
//! of publications, entry id `<offset>-0`, field `d` = envelope), `<prefix>{room}.p`
//! (presence: client id -> info) and `<prefix>{room}.pe` (presence expiry, a sorted
//! set). The room's channel is `<prefix>{room}`.
//!
//! Publishing with history is one script on the room's slot: increment the offset,
//! create the epoch when absent, append to the stream (bounded length, TTL), publish
//! `<offset>:<epoch>:<envelope>`. Subscribing nodes spread rooms over a few pub/sub
//! connections by hash and batch SUBSCRIBE/UNSUBSCRIBE. Messages are handed to
//! per-room-ordered workers; a worker delivers in offset order and repairs gaps
//! (an offset jump, a reconnect) from the stream, or reports the room lost.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use shared::envelope::{ChannelMessage, Envelope, EnvelopeClientInfo};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerError, BrokerHandler, ClientInfo, Control, HistoryOptions, HistoryPage,
    HistoryQuery, NodeInfo, NodeRegistry, PresenceStats, Publication, StreamPosition,
};

/// Settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`, `rediss://…`, or `redis+cluster://h1:p1,h2:p2`.
    pub url: String,
    /// Prefix of every key and channel. Default `gw`.
    pub prefix: String,
    /// Dedicated pub/sub connections rooms are spread over. Default 4.
    pub pubsub_shards: usize,
    /// Ordered delivery workers. Default 4.
    pub workers: usize,
    /// Messages a worker may have queued before further ones are dropped and the
    /// room is repaired from history. Default 65536.
    pub worker_queue: usize,
    /// Presence entries expire unless their node refreshes them (a crashed node's
    /// entries go away). Default 60s; refreshed every third of it.
    pub presence_ttl: Duration,
    /// Timeout of one command and of connecting. Default 5s.
    pub command_timeout: Duration,
    /// How often pub/sub connections and the command connection are probed; a probe
    /// unanswered within `command_timeout` restarts the connection. Default 5s.
    pub probe_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "gw".into(),
            pubsub_shards: 4,
            workers: 4,
            worker_queue: 65536,
            presence_ttl: Duration::from_secs(60),
            command_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(5),
        }
    }
}

/// The room whose channel carries node heartbeats and cluster-wide commands.
/// Client publications there are ignored as control (they are not `Control`
/// envelopes), so sharing the name with a client channel is harmless.
const CONTROL_ROOM: &str = ".control";

const PUBLISH_SCRIPT: &str = r#"
local top = redis.call('hincrby', KEYS[1], 't', 1)
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('del', KEYS[2])
end
redis.call('expire', KEYS[1], ARGV[5])
redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[3], top .. '-0', 'd', ARGV[2])
redis.call('expire', KEYS[2], ARGV[4])
redis.call(ARGV[7], ARGV[1], top .. ':' .. epoch .. ':' .. ARGV[2])
return {top, epoch}
"#;

/// ARGV: 1 new epoch ("" = do not create), 2 meta ttl, 3 since offset, 4 since epoch,
/// 5 count (-1 all, 0 none), 6 reverse (1/0), 7 since given (1/0).
const HISTORY_SCRIPT: &str = r#"
local epoch = redis.call('hget', KEYS[1], 'e')
local top = tonumber(redis.call('hget', KEYS[1], 't') or '0')
if not epoch then
  if ARGV[1] == '' then
    return {0, '', {}, {}}
  end
  epoch = ARGV[1]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('expire', KEYS[1], ARGV[2])
  redis.call('del', KEYS[2])
end
local ids, data = {}, {}
local count = tonumber(ARGV[5])
if count == 0 or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then
  return {top, epoch, ids, data}
end
local entries
if ARGV[6] == '0' then
  local from = '-'
  if ARGV[7] == '1' then from = '(' .. ARGV[3] .. '-0' end
  if count > 0 then
    entries = redis.call('xrange', KEYS[2], from, '+', 'COUNT', count)
  else
    entries = redis.call('xrange', KEYS[2], from, '+')
  end
else
  local to = '+'
  if ARGV[7] == '1' then to = '(' .. ARGV[3] .. '-0' end
  if count > 0 then
    entries = redis.call('xrevrange', KEYS[2], to, '-', 'COUNT', count)
  else
    entries = redis.call('xrevrange', KEYS[2], to, '-')
  end
end
for i, e in ipairs(entries) do
  ids[i] = e[1]
  data[i] = e[2][2]
end
return {top, epoch, ids, data}
"#;

/// Put presence entries of one room: ARGV[1] is the TTL in seconds, then client id
/// and info pairs. Used for one new entry and for a node's periodic refresh.
const PRESENCE_ADD_SCRIPT: &str = r#"
local now = tonumber(redis.call('time')[1])
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], now + ttl, ARGV[i])
end
redis.call('expire', KEYS[1], ttl)
redis.call('expire', KEYS[2], ttl)
return (#ARGV - 1) / 2
"#;

const PRESENCE_REMOVE_SCRIPT: &str = r#"
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"#;

const PRESENCE_GET_SCRIPT: &str = r#"
local now = tonumber(redis.call('time')[1])
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for i = 1, #expired, 500 do
  redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 499, #expired)))
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
return redis.call('hgetall', KEYS[1])
"#;

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 8)
}

fn hash_index(s: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    (h.finish() as usize) % n.max(1)
}

/// What the history script returns: top offset, epoch, entry ids, entry bodies.
type HistoryReply = (u64, String, Vec<String>, Vec<Vec<u8>>);

/// The command connection: multiplexed and pipelined, reconnecting by itself.
#[derive(Clone)]
enum CmdConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for CmdConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            CmdConn::Single(c) => c.req_packed_command(cmd),
            CmdConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            CmdConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            CmdConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            CmdConn::Single(c) => c.get_db(),
            CmdConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Flatten arguments for [`Inner::eval`].
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $(v.extend(redis::ToRedisArgs::to_redis_args(&$a));)*
        v
    }};
}

/// Whether a failed command may be run again.
fn retryable(e: &redis::RedisError, idempotent: bool) -> bool {
    let never_sent = e.is_connection_refusal()
        || matches!(e.kind(), redis::ErrorKind::Io)
            && e.to_string().to_ascii_lowercase().contains("broken pipe");
    never_sent || (idempotent && (e.is_connection_dropped() || e.is_io_error()))
}

/// Where the engine connects.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// Seed nodes, for the pub/sub clients (each has its own push callback).
        nodes: Vec<String>,
    },
}

/// Parse the URL into a target. `redis+cluster://h1:p1,h2:p2` lists seed nodes.
fn target(url: &str, timeout: Duration) -> Result<Target, BrokerError> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let nodes: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| format!("redis://{n}"))
            .collect();
        if nodes.is_empty() {
            return Err(BrokerError::Internal(
                "redis+cluster:// needs at least one host:port".into(),
            ));
        }
        let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(|e| BrokerError::Internal(format!("cluster url: {e}")))?;
        Ok(Target::Cluster {
            client: Box::new(client),
            nodes,
        })
    } else {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Internal(format!("redis url: {e}")))?;
        Ok(Target::Single(client))
    }
}

async fn connect_cmd(target: &Target, timeout: Duration) -> Result<CmdConn, BrokerError> {
    match target {
        Target::Single(client) => {
            let mc = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            let cm = tokio::time::timeout(timeout, client.get_connection_manager_with_config(mc))
                .await
                .map_err(|_| unavailable("connect timed out"))?
                .map_err(unavailable)?;
            Ok(CmdConn::Single(cm))
        }
        Target::Cluster { client, .. } => {
            let c = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| unavailable("connect timed out"))?
                .map_err(unavailable)?;
            Ok(CmdConn::Cluster(c))
        }
    }
}

enum SubState {
    /// SUBSCRIBE sent, waiting for confirmation.
    Pending(Vec<oneshot::Sender<Result<(), String>>>),
    Active,
}

/// An event for an ordered delivery worker.
enum Event {
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

struct Worker {
    tx: mpsc::Sender<Event>,
    /// Rooms whose messages were dropped because the queue was full.
    overflowed: Mutex<HashSet<Arc<str>>>,
    wake: tokio::sync::Notify,
}

struct Shard {
    /// Rooms whose wanted state changed.
    tx: mpsc::Sender<Arc<str>>,
    connected: AtomicBool,
}

struct Inner {
    cfg: RedisConfig,
    cluster: bool,
    target: Target,
    /// Swapped for a new one when probes find it silent.
    cmd: Mutex<CmdConn>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    rooms: Mutex<HashMap<Arc<str>, SubState>>,
    shards: Vec<Shard>,
    workers: Vec<Worker>,
    /// Presence entries this node added, refreshed periodically: room -> client -> info.
    presence: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
    cmd_ok: AtomicBool,
    dropped: AtomicU64,
    /// Pub/sub connections re-established after a loss.
    reconnects: AtomicU64,
    registry: NodeRegistry,
    scripts: Scripts,
    stop: CancellationToken,
}

struct Scripts {
    publish: Script,
    history: Script,
    presence_add: Script,
    presence_remove: Script,
    presence_get: Script,
}

/// The Redis broker. Cloning shares the engine; background tasks stop when the last
/// clone is dropped.
pub struct RedisBroker {
    inner: Arc<Inner>,
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
            .field("url", &self.inner.cfg.url)
            .field("cluster", &self.inner.cluster)
            .finish()
    }
}

impl RedisBroker {
    /// Connect the command connection and start the pub/sub shards, workers and
    /// probes. Fails if Redis cannot be reached within the command timeout, so that a
    /// misconfigured node does not start.
    pub async fn connect(cfg: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        let target = target(&cfg.url, cfg.command_timeout)?;
        let cmd = connect_cmd(&target, cfg.command_timeout).await?;
        let stop = CancellationToken::new();
        let mut shard_rx = Vec::new();
        let shards = (0..cfg.pubsub_shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                shard_rx.push(rx);
                Shard {
                    tx,
                    connected: AtomicBool::new(false),
                }
            })
            .collect();
        let mut worker_rx = Vec::new();
        let workers = (0..cfg.workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(cfg.worker_queue.max(16));
                worker_rx.push(rx);
                Worker {
                    tx,
                    overflowed: Mutex::new(HashSet::new()),
                    wake: tokio::sync::Notify::new(),
                }
            })
            .collect();
        let inner = Arc::new(Inner {
            cluster: matches!(target, Target::Cluster { .. }),
            cfg,
            target: target.clone(),
            cmd: Mutex::new(cmd),
            handler: OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            shards,
            workers,
            presence: Mutex::new(HashMap::new()),
            cmd_ok: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            registry: NodeRegistry::default(),
            scripts: Scripts {
                publish: Script::new(PUBLISH_SCRIPT),
                history: Script::new(HISTORY_SCRIPT),
                presence_add: Script::new(PRESENCE_ADD_SCRIPT),
                presence_remove: Script::new(PRESENCE_REMOVE_SCRIPT),
                presence_get: Script::new(PRESENCE_GET_SCRIPT),
            },
            stop: stop.clone(),
        });
        for (i, rx) in worker_rx.into_iter().enumerate() {
            tokio::spawn(worker_loop(inner.clone(), i, rx));
        }
        for (i, rx) in shard_rx.into_iter().enumerate() {
            match &target {
                Target::Single(client) => {
                    tokio::spawn(single_shard_loop(inner.clone(), client.clone(), i, rx));
                }
                Target::Cluster { nodes, .. } => {
                    tokio::spawn(cluster_shard_loop(inner.clone(), nodes.clone(), i, rx));
                }
            }
        }
        tokio::spawn(maintenance_loop(inner.clone()));
        let broker = Arc::new(RedisBroker {
            inner,
            _stop: Arc::new(StopGuard(stop)),
        });
        broker.subscribe(CONTROL_ROOM).await?;
        Ok(broker)
    }

    /// Messages dropped because a worker queue was full (each repaired or reported).
    pub fn dropped_messages(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Pub/sub connections re-established after a loss since start.
    pub fn pubsub_reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn channel(&self, room: &str) -> String {
        format!("{}{{{}}}", self.cfg.prefix, room)
    }

    fn key(&self, room: &str, suffix: &str) -> String {
        format!("{}{{{}}}.{}", self.cfg.prefix, room, suffix)
    }

    /// The room of a channel name, if it is one of ours.
    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.cfg.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    fn cmd(&self) -> CmdConn {
        self.cmd.lock().clone()
    }

    /// Run a command, once more on a fresh connection if the first attempt failed
    /// on a dropped connection (the first command after a Redis restart does) and a
    /// second run is harmless: `idempotent`, or the command cannot have been sent.
    async fn run<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, BrokerError>
    where
        F: Fn(CmdConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match f(self.cmd()).await {
            Err(e) if retryable(&e, idempotent) => {
                tracing::debug!(error = %e, "redis command failed on a dropped connection; retrying once");
                let r = f(self.cmd()).await;
                self.note(r)
            }
            r => self.note(r),
        }
    }

    /// Run `script` on `keys` (one slot) with `args`; see [`Inner::run`].
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        idempotent: bool,
    ) -> Result<T, BrokerError> {
        self.run(idempotent, |mut cmd| async move {
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a.as_slice());
            }
            inv.invoke_async(&mut cmd).await
        })
        .await
    }

    /// Run one command; see [`Inner::run`].
    async fn query<T: redis::FromRedisValue>(
        &self,
        c: &Cmd,
        idempotent: bool,
    ) -> Result<T, BrokerError> {
        self.run(idempotent, |mut cmd| async move {
            c.query_async(&mut cmd).await
        })
        .await
    }

    fn note<T>(&self, r: Result<T, redis::RedisError>) -> Result<T, BrokerError> {
        match r {
            Ok(v) => {
                self.cmd_ok.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.cmd_ok.store(false, Ordering::Relaxed);
                }
                Err(unavailable(e))
            }
        }
    }

    /// Route one pub/sub message to its room's worker without blocking.
    fn route(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.room_of(channel) else {
            return;
        };
        let w = &self.workers[hash_index(room, self.workers.len())];
        let room: Arc<str> = room.into();
        let ev = Event::Message {
            room: room.clone(),
            payload: Bytes::copy_from_slice(payload),
        };
        if w.tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            w.overflowed.lock().insert(room);
            w.wake.notify_one();
        }
    }

    /// Ask the room's worker to read what it may have missed.
    async fn resync(&self, room: Arc<str>) {
        let w = &self.workers[hash_index(&room, self.workers.len())];
        if w.tx.send(Event::Resync { room }).await.is_err() {
            tracing::debug!("worker gone");
        }
    }

    async fn read_history(
        &self,
        room: &str,
        query: &HistoryQuery,
        create_epoch: bool,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BrokerError> {
        let since = query.since.clone().unwrap_or_default();
        let count: i64 = match query.limit {
            None => -1,
            Some(n) => n.min(i64::MAX as usize) as i64,
        };
        let fresh_epoch = if create_epoch {
            new_epoch()
        } else {
            String::new()
        };
        let args = args![
            fresh_epoch,
            meta_ttl.as_secs().max(1),
            since.offset,
            since.epoch,
            count,
            u8::from(query.reverse),
            u8::from(query.since.is_some()),
        ];
        let keys = [self.key(room, "m"), self.key(room, "s")];
        let (top, epoch, ids, data): HistoryReply =
            self.eval(&self.scripts.history, &keys, &args, true).await?;
        let mut publications = Vec::with_capacity(ids.len());
        for (id, body) in ids.iter().zip(data) {
            let offset: u64 = id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| BrokerError::Internal(format!("bad stream id {id}")))?;
            let env = Envelope::decode(&body).map_err(|e| BrokerError::Internal(e.to_string()))?;
            if let Some(p) = env
                .to_publication(offset)
                .map_err(|e| BrokerError::Internal(e.to_string()))?
            {
                publications.push(Arc::new(p));
            }
        }
        Ok(HistoryPage {
            publications,
            position: StreamPosition { offset: top, epoch },
        })
    }
}

// ---------------------------------------------------------------------------------
// Ordered delivery
// ---------------------------------------------------------------------------------

struct Position {
    /// The highest offset delivered, or the stream top when the room was
    /// subscribed (a baseline, see `delivered`).
    offset: u64,
    /// Empty: the room had no stream when it was subscribed; the first epoch seen
    /// is adopted and repaired from offset 0.
    epoch: Arc<str>,
    /// False while `offset` is only the baseline: publications at or below it may
    /// still arrive from pub/sub and are delivered (subscribers drop what they
    /// already have), not skipped.
    delivered: bool,
}

/// What to do with a publication, given the room's position.
enum Step {
    Deliver,
    Skip,
    /// Deliver `after+1 ..` from the stream first.
    Repair(u64),
    Lost,
}

fn step(p: Option<&Position>, offset: u64, epoch: &str) -> Step {
    match p {
        None => Step::Deliver,
        Some(p) if p.epoch.is_empty() => {
            if offset == 1 {
                Step::Deliver
            } else {
                Step::Repair(0)
            }
        }
        Some(p) if *p.epoch != *epoch => Step::Lost,
        Some(p) if offset <= p.offset => {
            if p.delivered {
                Step::Skip
            } else {
                Step::Deliver
            }
        }
        Some(p) if offset == p.offset + 1 => Step::Deliver,
        Some(p) => Step::Repair(p.offset),
    }
}

/// Record that `offset` of `epoch` was delivered.
fn advance(positions: &mut HashMap<Arc<str>, Position>, room: &Arc<str>, offset: u64, epoch: &str) {
    match positions.get_mut(room) {
        // The common case: no allocation per message.
        Some(p) if *p.epoch == *epoch => {
            if offset > p.offset {
                p.offset = offset;
                p.delivered = true;
            }
        }
        _ => {
            positions.insert(
                room.clone(),
                Position {
                    offset,
                    epoch: epoch.into(),
                    delivered: true,
                },
            );
        }
    }
}

async fn worker_loop(inner: Arc<Inner>, index: usize, mut rx: mpsc::Receiver<Event>) {
    let mut positions: HashMap<Arc<str>, Position> = HashMap::new();
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => Some(ev),
                None => return,
            },
            _ = inner.workers[index].wake.notified() => None,
            _ = inner.stop.cancelled() => return,
        };
        if let Some(ev) = ev {
            match ev {
                Event::Message { room, payload } => {
                    deliver(&inner, &mut positions, &room, &payload).await
                }
                Event::Resync { room } => resync(&inner, &mut positions, &room).await,
                Event::Forget { room } => {
                    positions.remove(&room);
                }
            }
        }
        let overflowed: Vec<Arc<str>> = inner.workers[index].overflowed.lock().drain().collect();
        for room in overflowed {
            resync(&inner, &mut positions, &room).await;
        }
    }
}

fn deliver_publication(inner: &Inner, room: &str, env: &Envelope, offset: u64, epoch: &str) {
    let Some(handler) = inner.handler() else {
        return;
    };
    match env.to_publication(offset) {
        Ok(Some(p)) => handler.on_publication(room, &Arc::new(p), epoch),
        Ok(None) => {}
        Err(e) => tracing::warn!(%room, error = %e, "undecodable publication"),
    }
}

async fn deliver(
    inner: &Inner,
    positions: &mut HashMap<Arc<str>, Position>,
    room: &Arc<str>,
    payload: &[u8],
) {
    let Some(handler) = inner.handler() else {
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
                inner.registry.dispatch(c, Some(handler));
            }
            return;
        }
        Envelope::Publication { .. } => {}
    }
    if msg.offset == 0 {
        deliver_publication(inner, room, &env, 0, "");
        return;
    }
    match step(positions.get(room), msg.offset, msg.epoch) {
        Step::Skip => return,
        Step::Deliver => {}
        Step::Repair(after) => {
            if !repair(inner, positions, room, after, msg.offset - 1, msg.epoch).await {
                handler.on_lost(room);
            }
        }
        Step::Lost => handler.on_lost(room),
    }
    advance(positions, room, msg.offset, msg.epoch);
    deliver_publication(inner, room, &env, msg.offset, msg.epoch);
}

/// Deliver `after+1 ..= upto` from the stream. False if the range is not all there.
async fn repair(
    inner: &Inner,
    positions: &mut HashMap<Arc<str>, Position>,
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
    let page = match inner
        .read_history(room, &query, false, Duration::ZERO)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%room, error = %e, "history read for repair failed");
            return false;
        }
    };
    if page.position.epoch != epoch {
        return false;
    }
    let complete = page.publications.len() as u64 == upto - after
        && page
            .publications
            .first()
            .is_some_and(|p| p.offset == after + 1);
    if !complete {
        return false;
    }
    let handler = inner.handler().expect("bug: delivering without a handler");
    for p in &page.publications {
        handler.on_publication(room, p, epoch);
    }
    advance(positions, room, upto, epoch);
    true
}

/// Reads a resync retries (with backoff, about 15 s in all) while Redis is away.
const RESYNC_ATTEMPTS: u32 = 8;

/// After a (re)subscribe or a dropped message. A room without a position gets its
/// baseline (the stream top, or "no stream"). A room with one gets what the stream
/// holds beyond it, in order, or is reported lost.
async fn resync(inner: &Inner, positions: &mut HashMap<Arc<str>, Position>, room: &Arc<str>) {
    let known = positions.get(room).map(|p| (p.offset, p.epoch.clone()));
    let query = match &known {
        None => HistoryQuery {
            limit: Some(0),
            ..Default::default()
        },
        Some((after, _)) => HistoryQuery {
            since: Some(StreamPosition {
                offset: *after,
                epoch: String::new(),
            }),
            limit: None,
            reverse: false,
        },
    };
    let mut attempt = 0u32;
    let page = loop {
        match inner
            .read_history(room, &query, false, Duration::ZERO)
            .await
        {
            Ok(p) => break p,
            Err(e) if attempt < RESYNC_ATTEMPTS => {
                tracing::debug!(%room, error = %e, "history read for resync failed; retrying");
                if !backoff(inner, &mut attempt).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "history read for resync failed; room lost");
                if let Some(h) = inner.handler() {
                    h.on_lost(room);
                }
                positions.remove(room);
                return;
            }
        }
    };
    let Some(handler) = inner.handler() else {
        return;
    };
    let top = page.position;
    let Some((after, epoch)) = known else {
        positions.insert(
            room.clone(),
            Position {
                offset: top.offset,
                epoch: top.epoch.as_str().into(),
                delivered: false,
            },
        );
        return;
    };
    if top.epoch.is_empty() && epoch.is_empty() {
        // Still no stream: a room without history, or none published yet.
        return;
    }
    if top.epoch.is_empty() {
        // The stream we were following is gone (Redis lost it, or it expired).
        handler.on_lost(room);
        positions.insert(
            room.clone(),
            Position {
                offset: 0,
                epoch: "".into(),
                delivered: false,
            },
        );
        return;
    }
    if top.epoch == *epoch && top.offset == after {
        return;
    }
    // A stream that appeared after the baseline is read from its start.
    let after = if epoch.is_empty() { 0 } else { after };
    let complete = (epoch.is_empty() || top.epoch == *epoch)
        && top.offset >= after
        && page
            .publications
            .first()
            .is_some_and(|p| p.offset == after + 1)
        && page
            .publications
            .last()
            .is_some_and(|p| p.offset == top.offset);
    if complete {
        for p in &page.publications {
            handler.on_publication(room, p, &top.epoch);
        }
    } else {
        handler.on_lost(room);
    }
    advance(positions, room, top.offset, &top.epoch);
}

// ---------------------------------------------------------------------------------
// Pub/sub shards
// ---------------------------------------------------------------------------------

/// Rooms of shard `index` that should be subscribed.
fn shard_rooms(inner: &Inner, index: usize) -> Vec<Arc<str>> {
    inner
        .rooms
        .lock()
        .keys()
        .filter(|r| hash_index(r, inner.shards.len()) == index)
        .cloned()
        .collect()
}

/// Mark `rooms` subscribed and wake whoever waits for them.
fn confirm(inner: &Inner, rooms: &[Arc<str>]) {
    let mut map = inner.rooms.lock();
    for r in rooms {
        if let Some(state) = map.get_mut(r) {
            if let SubState::Pending(waiters) = std::mem::replace(state, SubState::Active) {
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
        }
    }
}

/// Split changed rooms into those to subscribe and those to unsubscribe.
fn wanted(inner: &Inner, changed: HashSet<Arc<str>>) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    let map = inner.rooms.lock();
    changed.into_iter().partition(|r| map.contains_key(r))
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

async fn backoff(inner: &Inner, attempt: &mut u32) -> bool {
    let delay = Duration::from_millis(100u64 << (*attempt).min(5)).min(Duration::from_secs(3));
    *attempt += 1;
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = inner.stop.cancelled() => false,
    }
}

/// One dedicated pub/sub connection to a standalone Redis: reconnects with backoff,
/// resubscribes its rooms in batches, probes itself with PING.
async fn single_shard_loop(
    inner: Arc<Inner>,
    client: redis::Client,
    index: usize,
    mut rx: mpsc::Receiver<Arc<str>>,
) {
    let shard = &inner.shards[index];
    let timeout = inner.cfg.command_timeout;
    let mut attempt = 0u32;
    let mut first_connect = true;
    loop {
        let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(shard = index, error = %e, "pub/sub connect failed");
                if !backoff(&inner, &mut attempt).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                if !backoff(&inner, &mut attempt).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let rooms = shard_rooms(&inner, index);
        let mut ok = true;
        for chunk in rooms.chunks(500) {
            let channels: Vec<String> = chunk.iter().map(|r| inner.channel(r)).collect();
            match tokio::time::timeout(timeout, sink.subscribe(channels)).await {
                Ok(Ok(())) => confirm(&inner, chunk),
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            if !backoff(&inner, &mut attempt).await {
                return;
            }
            continue;
        }
        attempt = 0;
        shard.connected.store(true, Ordering::Relaxed);
        if !first_connect {
            inner.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                shard = index,
                rooms = rooms.len(),
                "pub/sub reconnected; repairing rooms"
            );
            for r in rooms {
                inner.resync(r).await;
            }
        }
        first_connect = false;
        let mut probe = tokio::time::interval(inner.cfg.probe_interval);
        probe.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => inner.route(m.get_channel_name(), m.get_payload_bytes()),
                    None => break,
                },
                r = rx.recv() => {
                    let Some(first) = r else { return };
                    let changed = drain_changes(first, &mut rx).await;
                    let (subs, unsubs) = wanted(&inner, changed);
                    if !subs.is_empty() {
                        let channels: Vec<String> = subs.iter().map(|r| inner.channel(r)).collect();
                        match tokio::time::timeout(timeout, sink.subscribe(channels)).await {
                            Ok(Ok(())) => {
                                confirm(&inner, &subs);
                                for r in subs {
                                    inner.resync(r).await;
                                }
                            }
                            _ => break,
                        }
                    }
                    if !unsubs.is_empty() {
                        let channels: Vec<String> = unsubs.iter().map(|r| inner.channel(r)).collect();
                        if !matches!(tokio::time::timeout(timeout, sink.unsubscribe(channels)).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
                _ = probe.tick() => {
                    // A pub/sub connection can go silent in a failover without closing.
                    // (Subscribed, PING answers ["pong", ""]: any reply will do.)
                    if !matches!(tokio::time::timeout(timeout, sink.ping::<Value>()).await, Ok(Ok(_))) {
                        tracing::warn!(shard = index, "pub/sub probe failed; reconnecting");
                        break;
                    }
                }
                _ = inner.stop.cancelled() => return,
            }
        }
        shard.connected.store(false, Ordering::Relaxed);
        tracing::warn!(shard = index, "pub/sub connection lost");
    }
}

/// Sharded pub/sub on a Redis Cluster: SSUBSCRIBE through a RESP3 cluster
/// connection, which routes each room to its slot's node and resubscribes by itself
/// after a disconnection or a topology change. Messages arrive through the push
/// callback; after a disconnection the shard's rooms are resynced from history.
async fn cluster_shard_loop(
    inner: Arc<Inner>,
    nodes: Vec<String>,
    index: usize,
    mut rx: mpsc::Receiver<Arc<str>>,
) {
    let shard = &inner.shards[index];
    let timeout = inner.cfg.command_timeout;
    let disconnected = Arc::new(AtomicBool::new(false));
    let weak = Arc::downgrade(&inner);
    let flag = disconnected.clone();
    let push = move |info: redis::PushInfo| -> Result<(), ()> {
        match info.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                if let (Some(inner), [Value::BulkString(ch), Value::BulkString(payload)]) =
                    (weak.upgrade(), info.data.as_slice())
                {
                    inner.route(&String::from_utf8_lossy(ch), payload);
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
                if !backoff(&inner, &mut attempt).await {
                    return;
                }
            }
        }
    };
    shard.connected.store(true, Ordering::Relaxed);
    let mut probe = tokio::time::interval(inner.cfg.probe_interval);
    probe.tick().await;
    loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(first) = r else { return };
                let changed = drain_changes(first, &mut rx).await;
                let (subs, unsubs) = wanted(&inner, changed);
                // SSUBSCRIBE takes channels of one slot: one command per room,
                // pipelined over the multiplexed connection.
                let results = futures_util::future::join_all(subs.iter().map(|r| {
                    let mut c = con.clone();
                    let ch = inner.channel(r);
                    async move { tokio::time::timeout(timeout, c.ssubscribe(ch)).await }
                }))
                .await;
                let mut done = Vec::new();
                for (room, res) in subs.into_iter().zip(results) {
                    match res {
                        Ok(Ok(())) => done.push(room),
                        _ => {
                            tracing::warn!(shard = index, %room, "ssubscribe failed; retrying");
                            let _ = shard.tx.try_send(room);
                        }
                    }
                }
                confirm(&inner, &done);
                for r in done {
                    inner.resync(r).await;
                }
                for room in unsubs {
                    let mut c = con.clone();
                    let _ = tokio::time::timeout(timeout, c.sunsubscribe(inner.channel(&room))).await;
                }
            }
            _ = probe.tick() => {
                let ok = matches!(
                    tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(&mut con)).await,
                    Ok(Ok(_))
                );
                shard.connected.store(ok, Ordering::Relaxed);
                if ok && disconnected.swap(false, Ordering::Relaxed) {
                    inner.reconnects.fetch_add(1, Ordering::Relaxed);
                    // The connection resubscribed by itself; fetch what was missed.
                    let rooms = shard_rooms(&inner, index);
                    tracing::info!(shard = index, rooms = rooms.len(), "cluster pub/sub reconnected; repairing rooms");
                    for r in rooms {
                        inner.resync(r).await;
                    }
                }
            }
            _ = inner.stop.cancelled() => return,
        }
    }
}

// ---------------------------------------------------------------------------------
// Maintenance: command connection probe, presence refresh
// ---------------------------------------------------------------------------------

async fn maintenance_loop(inner: Arc<Inner>) {
    let mut probe = tokio::time::interval(inner.cfg.probe_interval);
    let mut refresh =
        tokio::time::interval((inner.cfg.presence_ttl / 3).max(Duration::from_millis(100)));
    let mut failed_probes = 0u32;
    loop {
        tokio::select! {
            _ = probe.tick() => {
                let mut cmd = inner.cmd();
                let r = tokio::time::timeout(inner.cfg.command_timeout, redis::cmd("PING").query_async::<String>(&mut cmd)).await;
                let ok = matches!(r, Ok(Ok(_)));
                inner.cmd_ok.store(ok, Ordering::Relaxed);
                failed_probes = if ok { 0 } else { failed_probes + 1 };
                // A connection that stopped answering without closing is replaced;
                // one that closed reconnects by itself.
                if failed_probes >= 2 {
                    if let Ok(fresh) = connect_cmd(&inner.target, inner.cfg.command_timeout).await {
                        tracing::warn!("command connection unresponsive; replaced");
                        *inner.cmd.lock() = fresh;
                        failed_probes = 0;
                    }
                }
            }
            _ = refresh.tick() => refresh_presence(&inner).await,
            _ = inner.stop.cancelled() => return,
        }
    }
}

/// Entries per refresh call: one script call per room and chunk keeps Redis's
/// single thread from running one long script for a huge room.
const PRESENCE_REFRESH_BATCH: usize = 256;

/// Refresh calls in flight at once, pipelined on the multiplexed connection.
const PRESENCE_REFRESH_CONCURRENCY: usize = 16;

/// A room's presence entries held by this node: client id and encoded info.
type PresenceEntries = Vec<(String, Vec<u8>)>;

/// Re-put this node's presence entries before their TTL runs out: one script call
/// per room (and per chunk of a large room), several in flight. One call per entry,
/// one after another, took a round trip each: at 1 ms per round trip a node with
/// 20,000 members needed the whole refresh interval, and entries began to expire.
async fn refresh_presence(inner: &Inner) {
    let batches: Vec<(String, PresenceEntries)> = {
        let presence = inner.presence.lock();
        presence
            .iter()
            .flat_map(|(room, members)| {
                let entries: PresenceEntries = members
                    .iter()
                    .map(|(c, i)| (c.clone(), i.clone()))
                    .collect();
                entries
                    .chunks(PRESENCE_REFRESH_BATCH)
                    .map(|chunk| (room.clone(), chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let failed = futures_util::stream::iter(batches)
        .map(|(room, entries)| async move {
            let res = presence_put(inner, &room, &entries).await;
            if res.is_ok() {
                forget_removed(inner, &room, &entries).await;
            }
            res
        })
        .buffer_unordered(PRESENCE_REFRESH_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect::<Vec<_>>()
        .await;
    if let Some(e) = failed.first() {
        tracing::debug!(failed = failed.len(), error = %e, "presence refresh failed");
    }
}

/// A member who left while its entry was being refreshed may have been put back
/// after its removal reached Redis: remove it again.
async fn forget_removed(inner: &Inner, room: &str, refreshed: &[(String, Vec<u8>)]) {
    let gone: Vec<&str> = {
        let presence = inner.presence.lock();
        let members = presence.get(room);
        refreshed
            .iter()
            .filter(|(c, _)| !members.is_some_and(|m| m.contains_key(c)))
            .map(|(c, _)| c.as_str())
            .collect()
    };
    for client in gone {
        if let Err(e) = presence_delete(inner, room, client).await {
            tracing::debug!(%room, error = %e, "presence removal after refresh failed");
        }
    }
}

/// Put presence entries (client id, encoded info) of one room.
async fn presence_put(
    inner: &Inner,
    room: &str,
    entries: &[(String, Vec<u8>)],
) -> Result<(), BrokerError> {
    let keys = [inner.key(room, "p"), inner.key(room, "pe")];
    let mut args = Vec::with_capacity(1 + 2 * entries.len());
    args.push(
        inner
            .cfg
            .presence_ttl
            .as_secs()
            .max(1)
            .to_string()
            .into_bytes(),
    );
    for (client, info) in entries {
        args.push(client.as_bytes().to_vec());
        args.push(info.clone());
    }
    inner
        .eval::<i64>(&inner.scripts.presence_add, &keys, &args, true)
        .await
        .map(|_| ())
}

/// Stop refreshing one presence entry.
fn forget_local_presence(inner: &Inner, room: &str, client: &str) {
    let mut p = inner.presence.lock();
    if let Some(m) = p.get_mut(room) {
        m.remove(client);
        if m.is_empty() {
            p.remove(room);
        }
    }
}

/// Remove one presence entry from Redis.
async fn presence_delete(inner: &Inner, room: &str, client: &str) -> Result<(), BrokerError> {
    let keys = [inner.key(room, "p"), inner.key(room, "pe")];
    inner
        .eval::<i64>(&inner.scripts.presence_remove, &keys, &args![client], true)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------
// The Broker implementation
// ---------------------------------------------------------------------------------

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        if self.inner.handler.set(handler).is_err() {
            tracing::warn!("redis broker handler set twice; keeping the first");
        }
    }

    fn is_healthy(&self) -> bool {
        self.inner.cmd_ok.load(Ordering::Relaxed)
            && self
                .inner
                .shards
                .iter()
                .all(|s| s.connected.load(Ordering::Relaxed))
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let (rx, send) = {
            let mut map = inner.rooms.lock();
            match map.get_mut(room) {
                Some(SubState::Active) => return Ok(()),
                Some(SubState::Pending(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    (rx, false)
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    map.insert(room.into(), SubState::Pending(vec![tx]));
                    (rx, true)
                }
            }
        };
        if send {
            let shard = &inner.shards[hash_index(room, inner.shards.len())];
            shard
                .tx
                .send(room.into())
                .await
                .map_err(|_| unavailable("engine stopped"))?;
        }
        match tokio::time::timeout(inner.cfg.command_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(unavailable(e)),
            Ok(Err(_)) => Err(unavailable("subscription abandoned")),
            Err(_) => Err(unavailable("subscribe timed out")),
        }
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        // The node itself needs the control room, whatever clients do there.
        if room == CONTROL_ROOM || inner.rooms.lock().remove(room).is_none() {
            return Ok(());
        }
        let room: Arc<str> = room.into();
        let w = &inner.workers[hash_index(&room, inner.workers.len())];
        let _ = w.tx.send(Event::Forget { room: room.clone() }).await;
        let shard = &inner.shards[hash_index(&room, inner.shards.len())];
        shard
            .tx
            .send(room)
            .await
            .map_err(|_| unavailable("engine stopped"))
    }

    async fn publish(
        &self,
        room: &str,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let inner = &self.inner;
        let body = Envelope::publication(&publication)
            .encode()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let publish_cmd = if inner.cluster { "spublish" } else { "publish" };
        let Some(h) = history.filter(|h| h.size > 0 && !h.ttl.is_zero()) else {
            let mut c = redis::cmd(publish_cmd);
            c.arg(inner.channel(room))
                .arg(ChannelMessage::unpositioned(&body));
            inner.query::<i64>(&c, false).await?;
            return Ok(StreamPosition::default());
        };
        let keys = [inner.key(room, "m"), inner.key(room, "s")];
        let args = args![
            inner.channel(room),
            body,
            h.size,
            h.ttl.as_secs().max(1),
            h.meta_ttl.max(h.ttl).as_secs().max(1),
            new_epoch(),
            publish_cmd,
        ];
        // Not idempotent: a second run would publish twice.
        let (offset, epoch): (u64, String) = inner
            .eval(&inner.scripts.publish, &keys, &args, false)
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
        self.inner.read_history(room, &query, true, meta_ttl).await
    }

    async fn remove_history(&self, room: &str) -> Result<(), BrokerError> {
        let mut c = redis::cmd("DEL");
        c.arg(self.inner.key(room, "s"));
        self.inner.query::<i64>(&c, true).await.map(|_| ())
    }

    async fn presence_add(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let bytes = rmp_encode_info(info)?;
        // Recorded here first, so that a refresh running meanwhile does not take
        // the entry for a removed one and delete it again.
        self.inner
            .presence
            .lock()
            .entry(room.to_owned())
            .or_default()
            .insert(info.client.clone(), bytes.clone());
        let res = presence_put(&self.inner, room, &[(info.client.clone(), bytes)]).await;
        if res.is_err() {
            forget_local_presence(&self.inner, room, &info.client);
        }
        res
    }

    async fn presence_remove(&self, room: &str, client: &str) -> Result<(), BrokerError> {
        forget_local_presence(&self.inner, room, client);
        presence_delete(&self.inner, room, client).await
    }

    async fn presence(&self, room: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let inner = &self.inner;
        let keys = [inner.key(room, "p"), inner.key(room, "pe")];
        let entries: Vec<(String, Vec<u8>)> = inner
            .eval(&inner.scripts.presence_get, &keys, &[], true)
            .await?;
        let mut out = HashMap::with_capacity(entries.len());
        for (client, bytes) in entries {
            match rmp_serde::from_slice::<EnvelopeClientInfo>(&bytes).map(|e| e.to_client_info()) {
                Ok(Ok(info)) => {
                    out.insert(client, info);
                }
                _ => tracing::warn!(%room, %client, "undecodable presence entry"),
            }
        }
        Ok(out)
    }

    async fn presence_stats(&self, room: &str) -> Result<PresenceStats, BrokerError> {
        let members = self.presence(room).await?;
        let users: HashSet<&str> = members.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: members.len() as u32,
            num_users: users.len() as u32,
        })
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BrokerError> {
        self.publish_event(CONTROL_ROOM, Envelope::Control(control.clone()))
            .await
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.registry.alive()
    }
}

fn rmp_encode_info(info: &ClientInfo) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(&EnvelopeClientInfo::from(info))
        .map_err(|e| BrokerError::Internal(e.to_string()))
}

impl RedisBroker {
    async fn publish_event(&self, room: &str, env: Envelope) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let body = env
            .encode()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let mut c = redis::cmd(if inner.cluster { "spublish" } else { "publish" });
        c.arg(inner.channel(room))
            .arg(ChannelMessage::unpositioned(&body));
        inner.query::<i64>(&c, false).await.map(|_| ())
    }
}
