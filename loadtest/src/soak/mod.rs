//! The `soak` scenario: mixed load for long runs. Rooms of members that each publish
//! at a slow rate, receive their room, and once per `--reconnect-every` drop their
//! connection at a random moment and come back (to the next URL, round-robin)
//! recovering from the last offset and epoch they saw. Every member must see its
//! room's stream exactly once and in order across its reconnects, unless the server
//! says it cannot recover (`recovered:false`).
//! A connection the server ends (close 3001 from a node shutting down, or any other
//! loss) is reopened the same way at a random moment within 500 ms, as the SDKs do.
//! The report has the reconnects per second, the 3001 closes and failed attempts by
//! kind.

mod member;
mod options;
mod reconnects;
mod report;
mod schedule;
mod state;
mod stream;

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dial::{self, Dialer};
use crate::latency::{LatencyRecorder, LatencyUs};
use crate::options::CommonOptions;
use crate::progress::{Progress, ProgressFn, Ticker};
use crate::report::{Problems, Stopwatch};
use crate::stamp::validate_payload;
use crate::sys;
use crate::timeline::{self, Events, Sampler, Series};

use member::Tally;
pub use options::SoakOptions;
pub use reconnects::ConnectFailures;
pub use report::{SoakCounts, SoakParameters, SoakReport};
use state::{Counters, Run};

fn validate(common: &CommonOptions, opts: &SoakOptions) -> anyhow::Result<()> {
    if opts.rooms == 0 || opts.members == 0 {
        bail!("--rooms and --members must be at least 1");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of publications per second per member");
    }
    if opts.reconnect_every.is_zero() {
        bail!("--reconnect-every must be more than 0");
    }
    validate_payload(opts.payload)?;
    if common.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    Ok(())
}

/// Run the scenario against the gateways in `common.url` and report what was seen.
/// `Err` means the run could not be carried out (bad options, no address); failed
/// checks are in the report (`ok`, `problems`).
pub async fn run(
    common: &CommonOptions,
    opts: &SoakOptions,
    progress: Option<ProgressFn<'_>>,
) -> anyhow::Result<SoakReport> {
    let watch = Stopwatch::start();
    validate(common, opts)?;
    let (run, go) = prepare(common, opts, watch.started).await?;
    let sampler = Sampler::start(watch.started, run.clone(), timeline::series_seconds(common));
    let (tasks, mut ready) = spawn_members(&run);
    let mut monitor = Monitor::new(&run, watch.started, progress);
    let (connected, connect_errors) = wait_connected(&run, &mut ready, &mut monitor).await;
    let connect_seconds = watch.started.elapsed().as_secs_f64();
    let start = publish(common, &go, &mut monitor).await;
    run.events.mark("publishing", start);
    run.events.mark("publishing ends", start + common.duration);
    let delivery_end = drain(&run, &mut monitor).await;
    let (tallies, mut problems) = stop(&run, tasks).await;
    let samples = sampler.finish().await;
    let counts = tally(&run, &tallies, &mut problems);
    let latencies = run.latency.merged();
    let measured = Measured {
        connected,
        connect_errors,
        connect_seconds,
        window: delivery_end.duration_since(start).as_secs_f64(),
        series: Series::new(samples, &run.events, "delivery latency", &latencies),
    };
    Ok(build_report(
        common, opts, &watch, &run, measured, counts, problems,
    ))
}

/// Resolve the gateways, check the open-file limit, and set up the state of the run;
/// also returns the sender of the start signal.
async fn prepare(
    common: &CommonOptions,
    opts: &SoakOptions,
    t0: Instant,
) -> anyhow::Result<(Arc<Run>, watch::Sender<Option<Instant>>)> {
    let dialer = Dialer::new(common, common.connect_concurrency).await?;
    let total = opts.rooms as usize * opts.members as usize;
    sys::ensure_nofile(total)?;
    let (go_tx, go_rx) = watch::channel(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let run = Arc::new(Run {
        opts: opts.clone(),
        common: common.clone(),
        dialer,
        names: crate::options::room_names(&opts.room_prefix, opts.rooms),
        counters: Counters::default(),
        room_acked: (0..opts.rooms).map(|_| AtomicU64::new(0)).collect(),
        positions: (0..total).map(|_| AtomicU64::new(0)).collect(),
        latency: LatencyRecorder::new(workers * 2),
        problems: Mutex::new(Problems::default()),
        cancel: CancellationToken::new(),
        go: go_rx,
        readers: TaskTracker::new(),
        events: Events::new(t0, timeline::series_seconds(common)),
        seed: std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
        origin: t0,
    });
    Ok((run, go_tx))
}

/// Start every member task; the dialer bounds the handshakes in progress. Each
/// reports once on the returned channel whether it joined.
fn spawn_members(run: &Arc<Run>) -> (JoinSet<Option<Tally>>, mpsc::Receiver<Result<(), String>>) {
    let (ready_tx, ready) = mpsc::channel(256);
    let mut tasks = JoinSet::new();
    for m in 0..run.positions.len() {
        tasks.spawn(member::member(run.clone(), m, ready_tx.clone()));
    }
    (tasks, ready)
}

/// Progress while the run goes on: snapshots of the run's counters.
struct Monitor<'a> {
    run: &'a Run,
    ticker: Ticker<'a>,
}

impl<'a> Monitor<'a> {
    fn new(run: &'a Run, t0: Instant, progress: Option<ProgressFn<'a>>) -> Self {
        Monitor {
            run,
            ticker: Ticker::new(t0, progress),
        }
    }

    /// Hand the caller a snapshot of the run in `phase`.
    fn emit(&self, phase: &'static str) {
        let counters = &self.run.counters;
        let p = Progress {
            phase,
            elapsed: self.ticker.elapsed(),
            connections: counters.connected.load(Ordering::Relaxed),
            connect_errors: counters.connect_errors.load(Ordering::Relaxed),
            publications: counters.publications.load(Ordering::Relaxed),
            deliveries: counters.deliveries.load(Ordering::Relaxed),
        };
        self.ticker.emit(&p);
    }
}

/// Wait until every member has joined or failed to; returns how many of each.
async fn wait_connected(
    run: &Run,
    ready: &mut mpsc::Receiver<Result<(), String>>,
    monitor: &mut Monitor<'_>,
) -> (u64, u64) {
    let total = run.positions.len() as u64;
    let (mut connected, mut connect_errors) = (0u64, 0u64);
    // Bounded: every member reports within its two connect timeouts once through
    // the dialer's gate.
    while connected + connect_errors < total {
        tokio::select! {
            m = ready.recv() => match m {
                Some(Ok(())) => {
                    connected += 1;
                    run.events.record("connect", Instant::now());
                }
                Some(Err(e)) => {
                    connect_errors += 1;
                    run.events.record("connect error", Instant::now());
                    run.note("connect", e);
                }
                None => break,
            },
            _ = monitor.ticker.tick() => monitor.emit("connecting"),
        }
    }
    (connected, connect_errors)
}

/// Give the start signal and let the members publish and reconnect for the
/// duration; returns the start.
async fn publish(
    common: &CommonOptions,
    go: &watch::Sender<Option<Instant>>,
    monitor: &mut Monitor<'_>,
) -> Instant {
    let start = Instant::now();
    go.send_replace(Some(start));
    let end = start + common.duration;
    while Instant::now() < end {
        tokio::select! {
            _ = monitor.ticker.tick() => monitor.emit("running"),
            _ = tokio::time::sleep_until(end) => {}
        }
    }
    start
}

/// Wait, bounded by the drain timeout, for the last acks and for every member to
/// reach its room's top; returns when the wait ended.
async fn drain(run: &Run, monitor: &mut Monitor<'_>) -> Instant {
    let drain_deadline = Instant::now() + run.common.drain_timeout;
    while !caught_up(run) && Instant::now() < drain_deadline {
        tokio::select! {
            _ = monitor.ticker.tick() => monitor.emit("draining"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    Instant::now()
}

/// End every member task, collect their tallies and wait, bounded, for the session
/// readers; returns the tallies and every problem noted.
async fn stop(run: &Run, tasks: JoinSet<Option<Tally>>) -> (Vec<Tally>, Problems) {
    run.cancel.cancel();
    let mut stopping = Problems::default();
    let tallies: Vec<Tally> = dial::join_tasks(tasks, &mut stopping)
        .await
        .into_iter()
        .flatten()
        .collect();
    run.readers.close();
    if tokio::time::timeout(dial::STOP_TIMEOUT, run.readers.wait())
        .await
        .is_err()
    {
        stopping.push("session readers did not stop in time".into());
    }
    // Every member task is over: nothing notes problems any more.
    let mut problems = std::mem::take(&mut *run.problems.lock());
    for line in stopping.finish() {
        problems.push(line);
    }
    (tallies, problems)
}

/// What the coordinator measured itself: how the members joined, and the window
/// of deliveries.
struct Measured {
    connected: u64,
    connect_errors: u64,
    connect_seconds: f64,
    /// Seconds from the start signal to the end of the drain.
    window: f64,
    /// The run over time.
    series: Series,
}

/// The verdict and the report.
fn build_report(
    common: &CommonOptions,
    opts: &SoakOptions,
    watch: &Stopwatch,
    run: &Run,
    measured: Measured,
    c: SoakCounts,
    mut problems: Problems,
) -> SoakReport {
    if c.publications == 0 {
        problems.push("no publication was acked".into());
    }
    let failures = c.lost
        + c.duplicated
        + c.reordered
        + c.unexpected_messages
        + c.epoch_mismatches
        + c.publish_errors
        + measured.connect_errors;
    let per_second = run.events.per_second("reconnect");
    let strict_failures = c.recovery_failed
        + c.disconnects
        + c.reconnect_errors
        + c.unanswered
        + c.publish_unavailable;
    let ok = failures == 0
        && c.publications > 0
        && c.deliveries > 0
        && !(opts.strict && strict_failures > 0);
    SoakReport {
        scenario: "soak".into(),
        parameters: SoakParameters {
            urls: common.url.clone(),
            rooms: opts.rooms,
            members_per_room: opts.members,
            rate_per_member: opts.rate,
            reconnect_every_seconds: opts.reconnect_every.as_secs_f64(),
            payload_bytes: opts.payload,
            duration_seconds: common.duration.as_secs_f64(),
            strict: opts.strict,
        },
        connections: measured.connected,
        connect_errors: measured.connect_errors,
        connect_seconds: measured.connect_seconds,
        publications_per_sec: c.publications as f64 / common.duration.as_secs_f64(),
        deliveries_per_sec: if measured.window > 0.0 {
            c.deliveries as f64 / measured.window
        } else {
            0.0
        },
        latency_us: LatencyUs::of(&run.latency.merged()),
        peak_reconnects_per_second: per_second.iter().copied().max().unwrap_or(0),
        reconnects_per_second: per_second,
        started_unix_ms: run.events.started_unix_ms,
        longest_silence_ms: run.counters.longest_silence().as_secs_f64() * 1000.0,
        counts: c,
        outcome: watch.outcome(ok, problems),
        series: measured.series,
    }
}

/// Whether nothing is in flight and every member that is in the run has reached the
/// number of publications acked in its room (offsets start at 1 in a fresh room).
fn caught_up(run: &Run) -> bool {
    run.counters.in_flight.load(Ordering::Relaxed) == 0
        && run.positions.iter().enumerate().all(|(m, p)| {
            let top = run.room_acked[run.room_of(m)].load(Ordering::Relaxed);
            p.load(Ordering::Relaxed) >= top
        })
}

/// Add up the members' tallies and check each member's end position against its
/// room's: the publications it never got at the end are lost too.
fn tally(run: &Run, tallies: &[Tally], problems: &mut Problems) -> SoakCounts {
    let mut r = SoakCounts::default();
    for t in tallies {
        r.reconnects += t.reconnects;
        r.reconnect_errors += t.reconnect_errors;
        r.reconnect_failures.add(&t.failures);
        r.closed_3001 += t.closed_3001;
        r.recovered_after_3001 += t.recovered_after_3001;
        r.disconnects += t.disconnects;
        r.recovered_ok += t.recovered_ok;
        r.recovery_failed += t.recovery_failed;
        r.recovered_publications += t.recovered_publications;
        r.publications += t.acked;
        r.publish_errors += t.publish_errors;
        r.publish_unavailable += t.publish_unavailable;
        r.unanswered += t.unanswered;
        r.deliveries += t.deliveries;
        let c = &t.check;
        r.lost += c.offsets.gaps;
        r.duplicated += c.offsets.duplicated + c.stamp_duplicated;
        r.reordered += c.offsets.reordered + c.stamp_reordered;
        r.unexpected_messages += t.unexpected;
    }
    // A room's top: its acked publications, or more when a publication the server
    // took was never acked (its connection dropped first). Members that ended on
    // another epoch than most of their room (the room's history was lost and they
    // were not told) are counted apart.
    for room in 0..run.opts.rooms as usize {
        let members: Vec<&Tally> = tallies.iter().filter(|t| t.room == room).collect();
        let Some(epoch) = majority_epoch(&members) else {
            continue;
        };
        let acked = run.room_acked[room].load(Ordering::Relaxed);
        let top = members
            .iter()
            .filter(|t| t.check.epoch == epoch)
            .map(|t| t.check.offsets.last)
            .max()
            .unwrap_or(0)
            .max(if members.iter().all(|t| t.check.first_epoch == epoch) {
                acked
            } else {
                0
            });
        for t in &members {
            if t.check.epoch != epoch {
                r.epoch_mismatches += 1;
                problems.sample(
                    "epoch",
                    format!(
                        "member {} ended on epoch {:?}, room {room} is on {epoch:?}",
                        t.member, t.check.epoch
                    ),
                );
                continue;
            }
            let missing = top.saturating_sub(t.check.offsets.last);
            if missing > 0 {
                r.lost += missing;
                problems.sample(
                    "missing",
                    format!(
                        "lost: room {room} offsets {}..={top} never reached member {}",
                        t.check.offsets.last + 1,
                        t.member
                    ),
                );
            }
        }
    }
    r
}

/// The epoch most members of a room ended on.
fn majority_epoch(members: &[&Tally]) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in members {
        match counts.iter_mut().find(|(e, _)| *e == t.check.epoch) {
            Some((_, n)) => *n += 1,
            None => counts.push((&t.check.epoch, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(e, _)| e.to_owned())
}
