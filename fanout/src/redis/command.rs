//! The command connection and how commands are run on it: connecting (standalone,
//! cluster, or the primary Sentinel names), the retry-once policy, the health flag
//! and its probe, reconnect backoff, and the history read that publishing nodes and
//! repairs share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use shared::envelope::Envelope;
use tokio_util::sync::CancellationToken;

use super::config::RedisConfig;
use super::keys::Keys;
use super::order::Gate;
use super::position::digest;
use super::scripts::{HistoryReply, Scripts};
use super::target::Target;
use crate::broker::new_epoch;
use crate::broker::{BrokerError, HistoryPage, HistoryQuery, StreamPosition};

/// A stream entry as XRANGE returns it: id, then field and value pairs.
type StreamEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Flatten arguments for [`Commands::eval`].
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $(v.extend(redis::ToRedisArgs::to_redis_args(&$a));)*
        v
    }};
}
pub(super) use args;

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

/// Invoke `script` on `cmd` with `keys`, `args` and `extra` as a last argument.
async fn invoke<T: redis::FromRedisValue>(
    script: &Script,
    keys: &[String],
    args: &[Vec<u8>],
    extra: Option<&[u8]>,
    mut cmd: CmdConn,
) -> Result<T, redis::RedisError> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    for a in args {
        inv.arg(a.as_slice());
    }
    if let Some(x) = extra {
        inv.arg(x);
    }
    inv.invoke_async(&mut cmd).await
}

/// The error of a publish the gate did not send: Redis did not answer.
fn not_answering() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "redis is not answering").into()
}

/// Whether the first element of a ROLE reply is `master`.
fn is_master(v: &Value) -> bool {
    match v {
        Value::BulkString(b) => b == b"master",
        Value::SimpleString(s) => s == "master",
        _ => false,
    }
}

/// Whether a failed command may be run again.
fn retryable(e: &redis::RedisError, idempotent: bool) -> bool {
    let never_sent = e.is_connection_refusal()
        || matches!(e.kind(), redis::ErrorKind::Io)
            && e.to_string().to_ascii_lowercase().contains("broken pipe");
    never_sent || (idempotent && (e.is_connection_dropped() || e.is_io_error()))
}

async fn connect_cmd(target: &Target, timeout: Duration) -> Result<CmdConn, BrokerError> {
    match target {
        Target::Single(_) | Target::Sentinel(_) => {
            let client = target.single().await?;
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

/// Wait before reconnect attempt `attempt` (then counted): 100 ms, doubling, at
/// most one second, so a Redis that comes back is found within a second (each
/// second of the wait is a second without deliveries). False once the engine stops.
pub(super) async fn backoff(stop: &CancellationToken, attempt: &mut u32) -> bool {
    let delay = Duration::from_millis(100u64 << (*attempt).min(4)).min(Duration::from_secs(1));
    *attempt += 1;
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

/// Commands to Redis over the shared command connection, with the key names and
/// scripts they use.
pub(super) struct Commands {
    target: Target,
    timeout: Duration,
    /// Swapped for a new one when probes find it silent.
    cmd: Mutex<CmdConn>,
    /// Whether the last command or probe reached Redis.
    ok: AtomicBool,
    /// Commands that failed, since start.
    errors: AtomicU64,
    pub(super) keys: Keys,
    pub(super) scripts: Scripts,
    /// Keeps publishes in order through a dropped connection.
    gate: Gate,
}

impl Commands {
    /// Parse the URL and connect. Fails if Redis cannot be reached within the
    /// command timeout.
    pub(super) async fn connect(cfg: &RedisConfig) -> Result<Arc<Commands>, BrokerError> {
        let target = Target::parse(&cfg.url, cfg.command_timeout)?;
        let cmd = connect_cmd(&target, cfg.command_timeout).await?;
        Ok(Arc::new(Commands {
            target,
            timeout: cfg.command_timeout,
            cmd: Mutex::new(cmd),
            ok: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            keys: Keys::new(cfg.prefix.clone()),
            scripts: Scripts::new(),
            gate: Gate::default(),
        }))
    }

    pub(super) fn target(&self) -> &Target {
        &self.target
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// `spublish` on a cluster (sharded pub/sub), `publish` otherwise.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "spublish"
        } else {
            "publish"
        }
    }

    /// Whether Redis answered the last command or probe.
    pub(super) fn is_healthy(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    fn conn(&self) -> CmdConn {
        self.cmd.lock().clone()
    }

    /// Run a command, once more on a fresh connection if the first attempt failed
    /// on a dropped connection (the first command after a Redis restart does) and a
    /// second run is harmless: `idempotent`, or the command cannot have been sent.
    /// `f` is told whether it is the retry. A publish (`ordered`, on one server or
    /// Sentinel's primary) keeps its order against the node's other publishes
    /// through such a failure: see [`Gate`].
    async fn with_retry<T, F, Fut>(
        &self,
        idempotent: bool,
        ordered: bool,
        f: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(CmdConn, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let ordered = ordered && !self.is_cluster();
        let first = if !ordered || self.gate.open() {
            f(self.conn(), false).await
        } else {
            match self.gate.pass(self.ready(), || f(self.conn(), false)).await {
                Some(r) => r,
                None => return self.record_health(Err(not_answering())),
            }
        };
        match first {
            Err(e) if retryable(&e, idempotent) => {
                tracing::debug!(error = %e, "redis command failed on a dropped connection; retrying once");
                if !ordered {
                    return self.record_health(f(self.conn(), true).await);
                }
                self.gate.close();
                match self.gate.pass(self.ready(), || f(self.conn(), true)).await {
                    Some(r) => self.record_health(r),
                    None => self.record_health(Err(not_answering())),
                }
            }
            r => self.record_health(r),
        }
    }

    /// Whether Redis answers on the command connection, with the publish script
    /// loaded (a restarted Redis has none, and a script loaded on demand would
    /// take its publishes out of order again).
    async fn ready(&self) -> bool {
        let mut cmd = self.conn();
        let check = async {
            redis::cmd("PING").query_async::<String>(&mut cmd).await?;
            self.scripts.publish.load_async(&mut cmd).await
        };
        matches!(tokio::time::timeout(self.timeout, check).await, Ok(Ok(_)))
    }

    /// Run `script` on `keys` (one slot) with `args`; see [`Commands::with_retry`].
    pub(super) async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        idempotent: bool,
    ) -> Result<T, BrokerError> {
        self.with_retry(idempotent, false, |cmd, _| {
            invoke(script, keys, args, None, cmd)
        })
        .await
    }

    /// As [`Commands::eval`] for the publish script, which makes its own retry
    /// harmless: it is retried, with `1` after `args` on the retry and `0` on the
    /// first run, in order (see [`Commands::with_retry`]).
    pub(super) async fn eval_marking_retry<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, BrokerError> {
        self.with_retry(true, true, |cmd, retry| {
            let mark: &[u8] = if retry { b"1" } else { b"0" };
            invoke(script, keys, args, Some(mark), cmd)
        })
        .await
    }

    /// Run one command; see [`Commands::with_retry`]. `ordered`: a publish.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        c: &Cmd,
        idempotent: bool,
        ordered: bool,
    ) -> Result<T, BrokerError> {
        self.with_retry(idempotent, ordered, |mut cmd, _| async move {
            c.query_async(&mut cmd).await
        })
        .await
    }

    /// Commands that failed since start.
    pub(super) fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Update the health flag from a command's result.
    fn record_health<T>(&self, r: Result<T, redis::RedisError>) -> Result<T, BrokerError> {
        match r {
            Ok(v) => {
                // Back from failing: publishes waiting at the gate ask Redis again.
                if !self.ok.load(Ordering::Relaxed) {
                    self.ok.store(true, Ordering::Relaxed);
                    self.gate.redis_answered();
                }
                Ok(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.ok.store(false, Ordering::Relaxed);
                }
                Err(unavailable(e))
            }
        }
    }

    /// Probe the command connection and set the health flag: PING, or behind
    /// Sentinel ROLE, which must say `master` (a primary demoted in a failover
    /// still answers PING). `failed_probes` counts probes failed in a row.
    pub(super) async fn probe_health(&self, failed_probes: &mut u32) {
        let mut cmd = self.conn();
        let sentinel = matches!(self.target, Target::Sentinel(_));
        let ok = if sentinel {
            let r = tokio::time::timeout(
                self.timeout,
                redis::cmd("ROLE").query_async::<Value>(&mut cmd),
            )
            .await;
            matches!(r, Ok(Ok(Value::Array(role))) if role.first().is_some_and(is_master))
        } else {
            let r = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut cmd),
            )
            .await;
            matches!(r, Ok(Ok(_)))
        };
        self.ok.store(ok, Ordering::Relaxed);
        if ok {
            self.gate.redis_answered();
        }
        *failed_probes = if ok { 0 } else { *failed_probes + 1 };
        // A connection that stopped answering without closing is replaced; one
        // that closed reconnects by itself, to the same address: behind Sentinel
        // the sentinels are asked for the primary at the first failed probe.
        if *failed_probes >= if sentinel { 1 } else { 2 } {
            match connect_cmd(&self.target, self.timeout).await {
                Ok(fresh) => {
                    tracing::warn!("command connection unresponsive or not to a primary; replaced");
                    *self.cmd.lock() = fresh;
                    *failed_probes = 0;
                }
                Err(e) => tracing::debug!(error = %e, "command connection not replaced yet"),
            }
        }
    }

    /// Read `room`'s history; with `create_epoch`, a room without a stream gets its
    /// position (offset 0, a fresh epoch) kept for `meta_ttl`.
    pub(super) async fn read_history(
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
        let keys = self.keys.history_keys(room);
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

    /// The [`digest`] of the envelope of `room`'s stream entry at `offset`, if
    /// the stream holds that entry.
    pub(super) async fn entry_digest(
        &self,
        room: &str,
        offset: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let id = format!("{offset}-0");
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.keys.stream_key(room)).arg(&id).arg(&id);
        let entries: Vec<StreamEntry> = self.query(&cmd, true, false).await?;
        Ok(entries.first().and_then(|(_, fields)| {
            fields
                .iter()
                .find(|(name, _)| name == b"d")
                .map(|(_, envelope)| digest(envelope))
        }))
    }

    /// Give `room` a new epoch if it is still `followed` (see the script); returns
    /// the room's epoch and top after.
    pub(super) async fn bump_epoch(
        &self,
        room: &str,
        followed: &str,
    ) -> Result<StreamPosition, BrokerError> {
        let keys = &self.keys.history_keys(room)[..1];
        let args = args![followed, new_epoch()];
        let (epoch, offset): (String, u64) = self
            .eval(&self.scripts.epoch_bump, keys, &args, true)
            .await?;
        Ok(StreamPosition { offset, epoch })
    }
}
