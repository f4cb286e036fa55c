//! A crowd: many connections, each subscribed to one room, held open answering
//! pings until the run ends; what the connect and idle scenarios measure (how they
//! arrive, what fails, who drops out), and over time (connects, failures and
//! disconnects per second, connect latency per second).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientError};
use crate::dial::{self, Dialer};
use crate::latency::{LatencyRecorder, LatencyUs};
use crate::options::{self, CommonOptions};
use crate::progress::{Progress, ProgressFn, PROGRESS_INTERVAL};
use crate::report::Problems;
use crate::sys;
use crate::timeline::{self, Events, Sampler, Series};

/// Options of a crowd, shared by the connect and idle scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct CrowdOptions {
    // Several source addresses help below 28k too: the kernel's search for a free
    // ephemeral port grows with the ports in use (19.9k connects on a busy 2-core
    // host: 2.4k/s and 7.4 harness CPU s from one address, 6.6k/s and 2.8 s from
    // four).
    /// Connections. Beyond about 28k to one gateway, pass several --source-addr
    /// (they make connecting cheaper below that too). Default 10000.
    #[arg(long, hide_default_value = true, default_value_t = 10_000)]
    pub connections: usize,
    /// Rooms the connections subscribe to, one each, round-robin. Default 100.
    #[arg(long, hide_default_value = true, default_value_t = 100)]
    pub rooms: u32,
    /// Room names are `<prefix>-<run id>-<n>`. Default `loadtest`.
    #[arg(long, hide_default_value = true, default_value = "loadtest")]
    pub room_prefix: String,
}

impl Default for CrowdOptions {
    fn default() -> Self {
        CrowdOptions {
            connections: 10_000,
            rooms: 100,
            room_prefix: "loadtest".into(),
        }
    }
}

/// What a crowd was asked to be; flattened into the reports' parameters.
#[derive(Debug, Clone, Serialize)]
pub struct CrowdParameters {
    pub urls: Vec<String>,
    pub connections: usize,
    pub rooms: u32,
    pub source_addrs: Vec<IpAddr>,
}

impl CrowdParameters {
    pub fn new(common: &CommonOptions, opts: &CrowdOptions) -> CrowdParameters {
        CrowdParameters {
            urls: common.url.clone(),
            connections: opts.connections,
            rooms: opts.rooms,
            source_addrs: common.source_addr.clone(),
        }
    }

    /// The plan row of a table.
    pub fn describe(&self) -> String {
        format!("{} connections over {} rooms", self.connections, self.rooms)
    }
}

/// How a crowd's connections went; flattened into the connect and idle reports.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionFigures {
    pub connections_attempted: u64,
    /// Connected and subscribed (both replies received).
    pub connections_accepted: u64,
    /// Attempts that failed: TCP, HTTP upgrade, refused connect or subscribe, close,
    /// timeout (by kind in `errors`).
    pub connect_errors: u64,
    /// From the first attempt until the last accept.
    pub connect_seconds: f64,
    /// Accepted connections per second of `connect_seconds`.
    pub accepted_per_sec: f64,
    /// From the TCP connect to the subscribe reply, per accepted connection;
    /// `null` when none was accepted.
    pub connect_latency_us: Option<LatencyUs>,
    /// Accepted connections that ended before the run did.
    pub disconnects: u64,
    /// Failures by kind: `tcp <io error>`, `http <status>` (upgrade refused),
    /// `close <code>`, `error <protocol code>`, `timeout <what>`; disconnects as
    /// `disconnect <kind>`.
    pub errors: BTreeMap<String, u64>,
}

impl ConnectionFigures {
    /// The counts [`ConnectionFigures::clean`] rests on.
    pub fn checks(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "not accepted",
                self.connections_attempted - self.connections_accepted,
            ),
            ("connect errors", self.connect_errors),
            ("disconnects", self.disconnects),
        ]
    }

    /// Every connection was accepted and none dropped.
    pub fn clean(&self) -> bool {
        self.connections_accepted == self.connections_attempted
            && self.connect_errors + self.disconnects == 0
    }

    /// Table rows for people.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "connections",
                format!(
                    "{} of {} accepted in {:.2}s, {:.0}/s (connect errors {}, disconnects {})",
                    self.connections_accepted,
                    self.connections_attempted,
                    self.connect_seconds,
                    self.accepted_per_sec,
                    self.connect_errors,
                    self.disconnects
                ),
            ),
            (
                "connect (us)",
                self.connect_latency_us
                    .as_ref()
                    .map_or_else(|| "no samples".into(), |l| l.to_string()),
            ),
            ("errors", crate::report::counts(&self.errors)),
        ]
    }
}

/// What a connection task tells the coordinator once its session is set up:
/// when its TCP connect started and how long the setup took, or why it failed.
type Arrival = Result<(Instant, Duration), ClientError>;

/// The connections of one run and their tally.
pub struct Crowd {
    /// Ends every connection task.
    cancel: CancellationToken,
    /// Each returns why it dropped out before the end, if it did.
    tasks: JoinSet<Option<ClientError>>,
    arrivals: mpsc::Receiver<Arrival>,
    /// Accepted connections that have ended so far.
    dropped: Arc<AtomicU64>,
    /// Connects, failures and disconnects per second.
    events: Arc<Events>,
    /// Connect latency per second.
    sampler: Sampler,
    /// Scenario start, for progress.
    t0: Instant,
    first_attempt: Instant,
    last_accept: Option<Instant>,
    attempted: u64,
    accepted: u64,
    failed: u64,
    latency: Arc<LatencyRecorder>,
    errors: BTreeMap<String, u64>,
}

impl Crowd {
    /// Check the options, open the connections (at most `concurrency` at once), and
    /// wait until every one is in or has failed. `started` is the scenario's start,
    /// for progress.
    pub async fn assemble(
        common: &CommonOptions,
        opts: &CrowdOptions,
        concurrency: usize,
        started: Instant,
        problems: &mut Problems,
        progress: Option<ProgressFn<'_>>,
    ) -> anyhow::Result<Crowd> {
        if opts.connections == 0 || opts.rooms == 0 {
            bail!("--connections and --rooms must be at least 1");
        }
        let dialer = Dialer::new(common, concurrency).await?;
        sys::ensure_nofile(opts.connections)?;
        let rooms = options::room_names(&opts.room_prefix, opts.rooms);
        let cap = timeline::series_seconds(common);
        let mut crowd = Crowd::spawn(dialer, rooms, opts.connections, started, cap);
        crowd.arrive(problems, progress).await;
        Ok(crowd)
    }

    /// Start `connections` connection tasks; connection n subscribes to
    /// `rooms[n % rooms.len()]`. The series start at `t0` and cover `cap` seconds.
    fn spawn(
        dialer: Dialer,
        rooms: Vec<String>,
        connections: usize,
        t0: Instant,
        cap: usize,
    ) -> Crowd {
        let dialer = Arc::new(dialer);
        let rooms = Arc::new(rooms);
        let cancel = CancellationToken::new();
        let dropped = Arc::new(AtomicU64::new(0));
        let events = Arc::new(Events::new(t0, cap));
        let latency = Arc::new(LatencyRecorder::new(1));
        let (tx, arrivals) = mpsc::channel(1024);
        let first_attempt = Instant::now();
        let mut tasks = JoinSet::new();
        for conn in 0..connections {
            tasks.spawn(member(
                dialer.clone(),
                conn,
                rooms.clone(),
                tx.clone(),
                cancel.clone(),
                dropped.clone(),
                events.clone(),
            ));
        }
        Crowd {
            cancel,
            tasks,
            arrivals,
            dropped,
            events,
            sampler: Sampler::start(t0, latency.clone(), cap),
            t0,
            first_attempt,
            last_accept: None,
            attempted: connections as u64,
            accepted: 0,
            failed: 0,
            latency,
            errors: BTreeMap::new(),
        }
    }

    /// Wait until every connection is accepted or has failed. Bounded: each task
    /// reports within its two connect timeouts once through the gate.
    async fn arrive(&mut self, problems: &mut Problems, progress: Option<ProgressFn<'_>>) {
        let mut tick =
            tokio::time::interval_at(Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
        while self.accepted + self.failed < self.attempted {
            tokio::select! {
                a = self.arrivals.recv() => match a {
                    Some(Ok((started, setup))) => {
                        self.accepted += 1;
                        self.latency.record(0, &[setup.as_micros() as u64]);
                        let at = started + setup;
                        self.events.record("connect", at);
                        self.last_accept = Some(self.last_accept.map_or(at, |l| l.max(at)));
                    }
                    Some(Err(e)) => {
                        self.failed += 1;
                        let kind = format!("connect error {}", e.kind());
                        self.events.record(&kind, Instant::now());
                        *self.errors.entry(e.kind()).or_default() += 1;
                        problems.sample("connect", format!("connect: {e}"));
                    }
                    None => break,
                },
                _ = tick.tick() => self.report_progress("connecting", progress),
            }
        }
        self.events.mark("all in", Instant::now());
    }

    /// Keep the connections open until `deadline`, reporting progress.
    pub async fn hold_until(&self, deadline: Instant, progress: Option<ProgressFn<'_>>) {
        let mut tick =
            tokio::time::interval_at(Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick() => self.report_progress("holding", progress),
            }
        }
    }

    /// Accepted connections still open.
    pub fn open(&self) -> u64 {
        self.accepted - self.dropped.load(Ordering::Relaxed)
    }

    fn report_progress(&self, phase: &'static str, progress: Option<ProgressFn<'_>>) {
        if let Some(f) = progress {
            f(&Progress {
                phase,
                elapsed: self.t0.elapsed(),
                connections: self.open(),
                connect_errors: self.failed,
                publications: 0,
                deliveries: 0,
            });
        }
    }

    /// Close every connection and tally the run; its figures and series.
    pub async fn disperse(mut self, problems: &mut Problems) -> (ConnectionFigures, Series) {
        self.cancel.cancel();
        let mut disconnects = 0;
        for e in dial::join_tasks(self.tasks, problems)
            .await
            .into_iter()
            .flatten()
        {
            disconnects += 1;
            *self
                .errors
                .entry(format!("disconnect {}", e.kind()))
                .or_default() += 1;
            problems.sample("disconnect", format!("disconnected: {e}"));
        }
        let connect_seconds = self
            .last_accept
            .map_or(0.0, |l| l.duration_since(self.first_attempt).as_secs_f64());
        let samples = self.sampler.finish().await;
        let latencies = self.latency.merged();
        let series = Series::new(samples, &self.events, "connect latency", &latencies);
        let figures = ConnectionFigures {
            connections_attempted: self.attempted,
            connections_accepted: self.accepted,
            connect_errors: self.failed,
            connect_seconds,
            accepted_per_sec: if connect_seconds > 0.0 {
                self.accepted as f64 / connect_seconds
            } else {
                0.0
            },
            connect_latency_us: LatencyUs::of(&latencies),
            disconnects,
            errors: self.errors,
        };
        (figures, series)
    }
}

/// One connection: open, connect and subscribe, report, then answer pings until
/// the run is cancelled. Returns why it ended early, if it did after connecting.
async fn member(
    dialer: Arc<Dialer>,
    conn: usize,
    rooms: Arc<Vec<String>>,
    arrivals: mpsc::Sender<Arrival>,
    cancel: CancellationToken,
    dropped: Arc<AtomicU64>,
    events: Arc<Events>,
) -> Option<ClientError> {
    let room = rooms[conn % rooms.len()].as_str();
    let mut session = match dialer.open_session(conn, &[room]).await {
        Ok(s) => s,
        Err(e) => {
            arrivals.send(Err(e)).await.ok();
            return None;
        }
    };
    arrivals
        .send(Ok((session.started, session.setup)))
        .await
        .ok();
    drop(arrivals);
    let served = client::serve(
        &mut session.reader,
        &mut session.writer,
        session.connected.pong,
        &cancel,
        |frame| {
            client::messages(frame)
                .filter(|m| client::is_ping(m))
                .count()
        },
    )
    .await;
    let e = served.err()?;
    dropped.fetch_add(1, Ordering::Relaxed);
    events.record(&format!("disconnect {}", e.kind()), Instant::now());
    Some(e)
}
