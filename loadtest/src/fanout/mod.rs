//! The `fanout` scenario: rooms of subscribers, publishers at a fixed total rate,
//! and for every delivery its latency and its place in its (room, publisher)
//! sequence. Subscribers connect and subscribe first; publishing starts when all
//! are in; at the end the run waits, bounded, for in-flight deliveries and reports.

mod api;
mod lanes;
mod plan;
mod publisher;
mod receiver;
mod report;
mod state;
mod tally;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::{self, Dialer};
use crate::latency::{LatencyRecorder, LatencyUs};
use crate::options::{self, CommonOptions};
use crate::progress::{Progress, ProgressFn, Ticker};
use crate::report::{Problems, Stopwatch};
use crate::stamp::validate_payload;
use crate::sys;
use crate::timeline::{self, Events, Sampler, Series};

pub use api::ApiFigures;
use api::ApiRun;
pub use api::{PublishOptions, PublishVia};
use plan::Plan;
use receiver::Receiver;
pub use report::{FanoutParameters, FanoutReport};
use state::{Counters, PublisherDone, Ready, Run};
use tally::{count_published, count_received, Published, Received};

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutOptions {
    /// Rooms. Default 1.
    #[arg(long, hide_default_value = true, default_value_t = 1)]
    pub rooms: u32,
    /// Subscribers per room. Default 100.
    #[arg(long, hide_default_value = true, default_value_t = 100)]
    pub subscribers: u32,
    /// Publishing connections. Publisher p publishes in room p % rooms; with fewer
    /// publishers than rooms, room r is published in by publisher r % publishers.
    /// Publishers subscribe to their rooms (the gateway lets only subscribers
    /// publish), so they receive and check those rooms too. Default 1.
    #[arg(long, hide_default_value = true, default_value_t = 1)]
    pub publishers: u32,
    /// Publications per second in total, split evenly over the publishers and over
    /// each publisher's rooms. Default 100.
    #[arg(long, hide_default_value = true, default_value_t = 100.0)]
    pub rate: f64,
    /// Bytes of each publication's data (JSON padded with `p`; never less than its
    /// fields, about 50 bytes). Default 64.
    #[arg(long, hide_default_value = true, default_value_t = 64)]
    pub payload: usize,
    /// Room names are `<prefix>-<run id>-<n>`, the run id random, so runs never share
    /// rooms. Default `loadtest`.
    #[arg(long, hide_default_value = true, default_value = "loadtest")]
    pub room_prefix: String,
    #[command(flatten)]
    pub publish: PublishOptions,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            rooms: 1,
            subscribers: 100,
            publishers: 1,
            rate: 100.0,
            payload: 64,
            room_prefix: "loadtest".into(),
            publish: PublishOptions::default(),
        }
    }
}

/// The gateway's default subscriptions per connection.
const MAX_ROOMS_PER_PUBLISHER: usize = 128;
fn validate(common: &CommonOptions, opts: &FanoutOptions) -> anyhow::Result<()> {
    if opts.rooms == 0 || opts.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of publications per second");
    }
    validate_payload(opts.payload)?;
    opts.publish.validate(common, opts.publishers)?;
    if common.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let per_publisher = (opts.rooms as usize).div_ceil(opts.publishers as usize);
    if per_publisher > MAX_ROOMS_PER_PUBLISHER {
        bail!(
            "each publisher would subscribe to {per_publisher} rooms; the gateway allows {MAX_ROOMS_PER_PUBLISHER} subscriptions per connection by default: use more --publishers"
        );
    }
    Ok(())
}

/// Run the scenario against the gateways in `common.url` and report what was seen.
/// `Err` means the run could not be carried out (bad options, no address);
/// failed checks are in the report (`ok`, `problems`).
pub async fn run(
    common: &CommonOptions,
    opts: &FanoutOptions,
    progress: Option<ProgressFn<'_>>,
) -> anyhow::Result<FanoutReport> {
    let watch = Stopwatch::start();
    validate(common, opts)?;
    let (run, go) = prepare(common, opts, watch.started).await?;
    let sampler = Sampler::start(watch.started, run.clone(), timeline::series_seconds(common));
    let Connections {
        tasks,
        mut ready,
        mut done,
    } = spawn_connections(&run, opts);
    let mut monitor = Monitor::new(&run, watch.started, progress);
    let mut problems = Problems::default();
    let joined = wait_connected(opts, &mut ready, &mut monitor, &mut problems).await;
    let connect_seconds = watch.started.elapsed().as_secs_f64();
    let (publish_start, dones) = publish(
        &run,
        &go,
        joined.publishers,
        &mut done,
        &mut monitor,
        &mut problems,
    )
    .await;
    let published = count_published(&run, opts.rooms, &dones, &mut problems);
    let expected = published.expected(&joined.receivers_in);
    let settle = published.unanswered > 0;
    let delivery_end = drain(&run, expected, settle, &mut monitor).await;
    let receivers = stop(&run, tasks, &mut problems).await;
    let samples = sampler.finish().await;
    let received = count_received(&run, &receivers, &published, &mut problems);
    let counts = Counts {
        connections: monitor.connections,
        connect_errors: monitor.connect_errors,
        connect_seconds,
        window: delivery_end.duration_since(publish_start).as_secs_f64(),
        published,
        expected,
        received,
    };
    let latencies = run.latency.merged();
    let series = Series::new(samples, &run.events, "delivery latency", &latencies);
    Ok(build_report(
        common, opts, &watch, &run, counts, series, problems,
    ))
}

/// Resolve the gateways, check the open-file limit, and set up the state of the run;
/// also returns the sender of the start signal.
async fn prepare(
    common: &CommonOptions,
    opts: &FanoutOptions,
    t0: Instant,
) -> anyhow::Result<(Arc<Run>, watch::Sender<Option<Instant>>)> {
    let dialer = Dialer::new(common, common.connect_concurrency).await?;
    sys::ensure_nofile(connection_count(opts))?;
    let (go_tx, go_rx) = watch::channel(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let api = ApiRun::new(common, &opts.publish, workers * 2).await?;
    let run = Arc::new(Run {
        plan: Plan::new(
            opts.rooms,
            opts.publishers,
            opts.publish.lanes(),
            options::room_names(&opts.room_prefix, opts.rooms),
        ),
        api,
        common: common.clone(),
        dialer,
        payload: opts.payload,
        rate_per_publisher: opts.rate / f64::from(opts.publishers),
        counters: Counters::default(),
        latency: LatencyRecorder::new(workers * 2),
        events: Events::new(t0, timeline::series_seconds(common)),
        anomalies: Mutex::new(Vec::new()),
        cancel: CancellationToken::new(),
        go: go_rx,
    });
    Ok((run, go_tx))
}

/// Pure subscribers of the run: every room's.
fn subscriber_count(opts: &FanoutOptions) -> usize {
    opts.rooms as usize * opts.subscribers as usize
}

/// Connections of the run: subscribers and publishers.
fn connection_count(opts: &FanoutOptions) -> usize {
    subscriber_count(opts) + opts.publishers as usize
}

/// The connection tasks of a run and what they report on.
struct Connections {
    /// Each returns what its connection received (`None` if it never connected).
    tasks: JoinSet<Option<Receiver>>,
    /// One message per task once its session is set up, or failed.
    ready: mpsc::Receiver<Ready>,
    /// One account per publisher once its publishing is over.
    done: mpsc::Receiver<PublisherDone>,
}

/// Start every connection task: subscribers first, then publishers; all at once,
/// the dialer's gate bounds the handshakes in progress.
fn spawn_connections(run: &Arc<Run>, opts: &FanoutOptions) -> Connections {
    let subscribers = subscriber_count(opts);
    let (ready_tx, ready) = mpsc::channel(256);
    let (done_tx, done) = mpsc::channel(64);
    let mut tasks = JoinSet::new();
    for i in 0..subscribers {
        let room = (i % opts.rooms as usize) as u32;
        tasks.spawn(receiver::subscriber(run.clone(), i, room, ready_tx.clone()));
    }
    for p in 0..opts.publishers {
        tasks.spawn(publisher::publisher(
            run.clone(),
            subscribers + p as usize,
            p,
            ready_tx.clone(),
            done_tx.clone(),
        ));
    }
    Connections { tasks, ready, done }
}

/// Progress while the run goes on, and the connections counted while connecting.
struct Monitor<'a> {
    run: &'a Run,
    ticker: Ticker<'a>,
    connections: u64,
    connect_errors: u64,
}

impl<'a> Monitor<'a> {
    fn new(run: &'a Run, t0: Instant, progress: Option<ProgressFn<'a>>) -> Self {
        Monitor {
            run,
            ticker: Ticker::new(t0, progress),
            connections: 0,
            connect_errors: 0,
        }
    }

    /// Hand the caller a snapshot of the run in `phase`.
    fn emit(&self, phase: &'static str) {
        let p = Progress {
            phase,
            elapsed: self.ticker.elapsed(),
            connections: self.connections,
            connect_errors: self.connect_errors,
            publications: self.run.counters.publications.load(Ordering::Relaxed),
            deliveries: self.run.counters.deliveries.load(Ordering::Relaxed),
        };
        self.ticker.emit(&p);
    }
}

/// Who got in.
struct Joined {
    /// Publishers that set up their session.
    publishers: u64,
    /// Connections receiving each room (subscribers and publishers).
    receivers_in: Vec<u64>,
}

/// Wait until every connection task has set up its session or failed to.
async fn wait_connected(
    opts: &FanoutOptions,
    ready: &mut mpsc::Receiver<Ready>,
    monitor: &mut Monitor<'_>,
    problems: &mut Problems,
) -> Joined {
    let total = connection_count(opts) as u64;
    let mut joined = Joined {
        publishers: 0,
        receivers_in: vec![0u64; opts.rooms as usize],
    };
    // Bounded: every task reports within its two connect timeouts once through the gate.
    while monitor.connections + monitor.connect_errors < total {
        tokio::select! {
            m = ready.recv() => match m {
                Some(Ready::Connected { rooms, publisher }) => {
                    monitor.connections += 1;
                    monitor.run.events.record("connect", Instant::now());
                    joined.publishers += u64::from(publisher);
                    for r in rooms {
                        joined.receivers_in[r as usize] += 1;
                    }
                }
                Some(Ready::Failed { error, kind }) => {
                    monitor.connect_errors += 1;
                    let kind = format!("connect error {kind}");
                    monitor.run.events.record(&kind, Instant::now());
                    problems.sample("connect", error);
                }
                None => break,
            },
            _ = monitor.ticker.tick() => monitor.emit("connecting"),
        }
    }
    joined
}

/// Give the start signal, then collect every connected publisher's account once
/// its publishing is over, bounded by the duration, the drain timeout and a second.
/// Returns the start and the accounts.
async fn publish(
    run: &Run,
    go: &watch::Sender<Option<Instant>>,
    publishers_up: u64,
    done: &mut mpsc::Receiver<PublisherDone>,
    monitor: &mut Monitor<'_>,
    problems: &mut Problems,
) -> (Instant, Vec<PublisherDone>) {
    let publish_start = Instant::now();
    go.send_replace(Some(publish_start));
    run.events.mark("publishing", publish_start);
    run.events
        .mark("publishing ends", publish_start + run.common.duration);
    let mut dones = Vec::new();
    let done_deadline =
        publish_start + run.common.duration + run.common.drain_timeout + Duration::from_secs(1);
    while (dones.len() as u64) < publishers_up {
        tokio::select! {
            d = done.recv() => match d {
                Some(d) => dones.push(d),
                None => break,
            },
            _ = monitor.ticker.tick() => monitor.emit("publishing"),
            _ = tokio::time::sleep_until(done_deadline) => {
                problems.push(format!(
                    "{} of {publishers_up} publishers did not finish in time",
                    publishers_up - dones.len() as u64
                ));
                break;
            }
        }
    }
    (publish_start, dones)
}

/// Wait, bounded by the drain timeout, for what is still on its way; returns when
/// the wait ended.
///
/// With `settle` (some publications were never answered), the count can reach
/// `expected` early: deliveries of unanswered publications count too, while those
/// of answered ones may still be on their way. The wait then also goes on until no
/// delivery has arrived for [`SETTLE`], within the same deadline.
async fn drain(run: &Run, expected: u64, settle: bool, monitor: &mut Monitor<'_>) -> Instant {
    let drain_deadline = Instant::now() + run.common.drain_timeout;
    let mut seen = run.counters.deliveries.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < drain_deadline {
        let now_seen = run.counters.deliveries.load(Ordering::Relaxed);
        if now_seen != seen {
            seen = now_seen;
            last_change = Instant::now();
        }
        let quiet = !settle || last_change.elapsed() >= SETTLE;
        if seen >= expected && quiet {
            break;
        }
        tokio::select! {
            _ = monitor.ticker.tick() => monitor.emit("draining"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    Instant::now()
}

/// How long deliveries must have stopped before a run with unanswered
/// publications ends (see [`drain`]).
const SETTLE: Duration = Duration::from_millis(500);

/// End every connection task and collect what the connections received.
async fn stop(
    run: &Run,
    tasks: JoinSet<Option<Receiver>>,
    problems: &mut Problems,
) -> Vec<Receiver> {
    run.cancel.cancel();
    dial::join_tasks(tasks, problems)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// What a run counted, for its report.
struct Counts {
    connections: u64,
    connect_errors: u64,
    connect_seconds: f64,
    /// Seconds from the start signal to the end of the drain.
    window: f64,
    published: Published,
    expected: u64,
    received: Received,
}

/// The verdict and the report.
fn build_report(
    common: &CommonOptions,
    opts: &FanoutOptions,
    watch: &Stopwatch,
    run: &Run,
    counts: Counts,
    series: Series,
    mut problems: Problems,
) -> FanoutReport {
    let Counts {
        connections,
        connect_errors,
        connect_seconds,
        window,
        published,
        expected,
        received: r,
    } = counts;
    let publications = published.total();
    if r.deliveries < expected {
        problems.push(format!(
            "{} of {expected} expected deliveries were not seen within the drain timeout",
            expected - r.deliveries
        ));
    }
    if publications == 0 {
        problems.push("no publication was acked".into());
    }
    let ok = r.lost + r.duplicated + r.reordered + r.offset_errors == 0
        && r.deliveries >= expected
        && publications > 0
        && connect_errors + r.disconnects + published.errors + r.unexpected + published.unanswered
            == 0;
    FanoutReport {
        scenario: "fanout".into(),
        parameters: FanoutParameters {
            urls: common.url.clone(),
            rooms: opts.rooms,
            subscribers_per_room: opts.subscribers,
            publishers: opts.publishers,
            members_per_room: None,
            rate_per_sec: opts.rate,
            payload_bytes: opts.payload,
            duration_seconds: common.duration.as_secs_f64(),
            publish_via: opts.publish.publish_via,
        },
        api: run.api.as_ref().map(|a| a.figures(run.plan.lanes)),
        connections,
        connect_errors,
        disconnects: r.disconnects,
        disconnect_codes: r.disconnect_codes,
        connect_seconds,
        publications,
        publish_errors: published.errors,
        unanswered: published.unanswered,
        publications_per_sec: publications as f64 / common.duration.as_secs_f64(),
        deliveries: r.deliveries,
        expected_deliveries: expected,
        deliveries_per_sec: if window > 0.0 {
            r.deliveries as f64 / window
        } else {
            0.0
        },
        latency_us: LatencyUs::of(&run.latency.merged()),
        lost: r.lost,
        duplicated: r.duplicated,
        reordered: r.reordered,
        offset_errors: r.offset_errors,
        unexpected_messages: r.unexpected,
        outcome: watch.outcome(ok, problems),
        series,
    }
}
