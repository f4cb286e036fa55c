//! The `soak` scenario: mixed load for long runs. Rooms of members that each publish
//! at a slow rate, receive their room, and once per `--reconnect-every` drop their
//! connection at a random moment and come back (to the next URL, round-robin)
//! recovering from the last offset and epoch they saw. Every member must see its
//! room's stream exactly once and in order across its reconnects, unless the server
//! says it cannot recover (`recovered:false`).

mod member;
mod report;
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
use crate::options::{self, CommonOptions};
use crate::progress::{Progress, ProgressFn, PROGRESS_INTERVAL};
use crate::report::{Problems, Stopwatch};
use crate::sys;

pub use report::{SoakCounts, SoakParameters, SoakReport};

/// Options of the `soak` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// Rooms. Default 50.
    #[arg(long, hide_default_value = true, default_value_t = 50)]
    pub rooms: u32,
    /// Members per room; each is one connection that subscribes (recoverable),
    /// publishes in its room and reconnects. Default 20.
    #[arg(long, hide_default_value = true, default_value_t = 20)]
    pub members: u32,
    /// Publications per second of each member. Default 0.5.
    #[arg(long, hide_default_value = true, default_value_t = 0.5)]
    pub rate: f64,
    /// Each member disconnects once in every such interval, at a random moment
    /// within it, stays away up to 500 ms, and reconnects to the next URL with
    /// recovery (humantime: 20s, 1m). Default 20s.
    #[arg(long, hide_default_value = true, default_value = "20s", value_parser = humantime::parse_duration)]
    pub reconnect_every: Duration,
    /// Bytes of each publication's data (as for fanout). Default 64.
    #[arg(long, hide_default_value = true, default_value_t = 64)]
    pub payload: usize,
    /// Room names are `<prefix>-<run id>-<n>`; the rooms need history (the
    /// gateway's default for top-level channels). Default `soak`.
    #[arg(long, hide_default_value = true, default_value = "soak")]
    pub room_prefix: String,
    /// Also fail on recovery failures (`recovered:false`), unplanned disconnects,
    /// failed reconnects and unanswered publications; without it they are only
    /// reported.
    #[arg(long)]
    pub strict: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            rooms: 50,
            members: 20,
            rate: 0.5,
            reconnect_every: Duration::from_secs(20),
            payload: 64,
            room_prefix: "soak".into(),
            strict: false,
        }
    }
}

/// Longest a member stays away after a planned disconnect (a random time up to
/// this), so that recovery has publications to return.
const MAX_OFFLINE: Duration = Duration::from_millis(500);
/// Position of a member that is out of the run (it never connected).
const GONE: u64 = u64::MAX;

/// Counters read while the run goes on (progress, the drain wait).
#[derive(Debug, Default)]
struct Counters {
    /// Members connected now.
    connected: AtomicU64,
    connect_errors: AtomicU64,
    publications: AtomicU64,
    deliveries: AtomicU64,
    /// Publications sent and not yet answered or given up on.
    in_flight: AtomicU64,
}

/// State shared by the coordinator and every member task of one run.
pub(crate) struct Run {
    opts: SoakOptions,
    common: CommonOptions,
    dialer: Dialer,
    names: Vec<String>,
    counters: Counters,
    /// Publications the server acked, per room.
    room_acked: Vec<AtomicU64>,
    /// Each member's position (the last offset it saw), for the drain wait.
    positions: Vec<AtomicU64>,
    /// Latencies of live deliveries (recovered ones are as old as the absence).
    latency: LatencyRecorder,
    problems: Mutex<Problems>,
    /// Ends every member task.
    cancel: CancellationToken,
    /// Set once to the instant publishing starts.
    go: watch::Receiver<Option<Instant>>,
    /// The reading half of every session.
    readers: TaskTracker,
    /// Seeds each member's random schedule.
    seed: u64,
}

impl Run {
    fn note(&self, kind: &'static str, line: String) {
        self.problems.lock().sample(kind, line);
    }

    fn room_of(&self, member: usize) -> usize {
        member / self.opts.members as usize
    }
}

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
    crate::fanout::validate_payload(opts.payload)?;
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
    let t0 = watch.started;
    validate(common, opts)?;
    let dialer = Dialer::new(common, common.connect_concurrency).await?;
    let total = opts.rooms as usize * opts.members as usize;
    sys::ensure_nofile(total)?;
    let (go_tx, go_rx) = watch::channel(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let run = Arc::new(Run {
        opts: opts.clone(),
        common: common.clone(),
        dialer,
        names: options::room_names(&opts.room_prefix, opts.rooms),
        counters: Counters::default(),
        room_acked: (0..opts.rooms).map(|_| AtomicU64::new(0)).collect(),
        positions: (0..total).map(|_| AtomicU64::new(0)).collect(),
        latency: LatencyRecorder::new(workers * 2),
        problems: Mutex::new(Problems::default()),
        cancel: CancellationToken::new(),
        go: go_rx,
        readers: TaskTracker::new(),
        seed: std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    });
    let snapshot = |phase| Progress {
        phase,
        elapsed: t0.elapsed(),
        connections: run.counters.connected.load(Ordering::Relaxed),
        connect_errors: run.counters.connect_errors.load(Ordering::Relaxed),
        publications: run.counters.publications.load(Ordering::Relaxed),
        deliveries: run.counters.deliveries.load(Ordering::Relaxed),
    };
    let emit = |p: Progress| {
        if let Some(f) = progress {
            f(&p);
        }
    };

    // Connect every member; the dialer bounds the handshakes in progress.
    let (ready_tx, mut ready_rx) = mpsc::channel(256);
    let mut tasks = JoinSet::new();
    for m in 0..total {
        tasks.spawn(member::member(run.clone(), m, ready_tx.clone()));
    }
    drop(ready_tx);
    let (mut connected, mut connect_errors) = (0u64, 0u64);
    let mut tick = tokio::time::interval_at(Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    // Bounded: every member reports within its two connect timeouts once through
    // the dialer's gate.
    while connected + connect_errors < total as u64 {
        tokio::select! {
            m = ready_rx.recv() => match m {
                Some(Ok(())) => connected += 1,
                Some(Err(e)) => {
                    connect_errors += 1;
                    run.note("connect", e);
                }
                None => break,
            },
            _ = tick.tick() => emit(snapshot("connecting")),
        }
    }
    let connect_seconds = t0.elapsed().as_secs_f64();

    // Publish and reconnect for the duration.
    let start = Instant::now();
    go_tx.send_replace(Some(start));
    let end = start + common.duration;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => emit(snapshot("running")),
            _ = tokio::time::sleep_until(end) => {}
        }
    }

    // Wait, bounded, for the last acks and for every member to reach its room's top.
    let drain_deadline = Instant::now() + common.drain_timeout;
    while !caught_up(&run) && Instant::now() < drain_deadline {
        tokio::select! {
            _ = tick.tick() => emit(snapshot("draining")),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let delivery_end = Instant::now();
    run.cancel.cancel();

    let mut stopping = Problems::default();
    let tallies: Vec<member::Tally> = dial::join_tasks(tasks, &mut stopping)
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

    let c = tally(&run, &tallies, &mut problems);
    if c.publications == 0 {
        problems.push("no publication was acked".into());
    }
    let failures = c.lost
        + c.duplicated
        + c.reordered
        + c.unexpected_messages
        + c.epoch_mismatches
        + c.publish_errors
        + connect_errors;
    let strict_failures = c.recovery_failed + c.disconnects + c.reconnect_errors + c.unanswered;
    let ok = failures == 0
        && c.publications > 0
        && c.deliveries > 0
        && !(opts.strict && strict_failures > 0);
    let window = delivery_end.duration_since(start).as_secs_f64();
    Ok(SoakReport {
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
        connections: connected,
        connect_errors,
        connect_seconds,
        publications_per_sec: c.publications as f64 / common.duration.as_secs_f64(),
        deliveries_per_sec: if window > 0.0 {
            c.deliveries as f64 / window
        } else {
            0.0
        },
        latency_us: LatencyUs::of(&run.latency.merged()),
        counts: c,
        outcome: watch.outcome(ok, problems),
    })
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
fn tally(run: &Run, tallies: &[member::Tally], problems: &mut Problems) -> SoakCounts {
    let mut r = SoakCounts::default();
    for t in tallies {
        r.reconnects += t.reconnects;
        r.reconnect_errors += t.reconnect_errors;
        r.disconnects += t.disconnects;
        r.recovered_ok += t.recovered_ok;
        r.recovery_failed += t.recovery_failed;
        r.recovered_publications += t.recovered_publications;
        r.publications += t.acked;
        r.publish_errors += t.publish_errors;
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
        let members: Vec<&member::Tally> = tallies.iter().filter(|t| t.room == room).collect();
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
fn majority_epoch(members: &[&member::Tally]) -> Option<String> {
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
