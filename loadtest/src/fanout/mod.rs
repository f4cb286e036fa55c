//! The `fanout` scenario: rooms of subscribers, publishers at a fixed total rate,
//! and for every delivery its latency and its place in its (room, publisher)
//! sequence. Subscribers connect and subscribe first; publishing starts when all
//! are in; at the end the run waits, bounded, for in-flight deliveries and reports.

mod publisher;
mod receiver;
mod report;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dial::{self, Dialer, Session};
use crate::latency::{LatencyRecorder, LatencyUs};
use crate::options::{self, CommonOptions};
use crate::progress::{Progress, ProgressFn, PROGRESS_INTERVAL};
use crate::report::{Problems, Stopwatch};
use crate::sys;

pub(crate) use publisher::write_stamp;
pub(crate) use receiver::{fast_publication, Stamp};
pub use report::{FanoutParameters, FanoutReport};

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
        }
    }
}

/// Largest `--payload`: the gateway's default inbound limit is 64 KiB per message,
/// and the publish command wraps the data.
const MAX_PAYLOAD_BYTES: usize = 60_000;
/// The gateway's default subscriptions per connection.
const MAX_ROOMS_PER_PUBLISHER: usize = 128;
/// Anomalies kept for the report (they are all counted).
const ANOMALY_SAMPLES: usize = 1000;

/// Which publishers publish in which rooms, and the room names.
#[derive(Debug)]
pub(crate) struct Plan {
    rooms: u32,
    publishers: u32,
    names: Vec<String>,
}

impl Plan {
    fn new(rooms: u32, publishers: u32, names: Vec<String>) -> Plan {
        Plan {
            rooms,
            publishers,
            names,
        }
    }

    /// The rooms publisher `p` publishes in (and subscribes to).
    fn publisher_rooms(&self, p: u32) -> Vec<u32> {
        if self.publishers >= self.rooms {
            vec![p % self.rooms]
        } else {
            (p..self.rooms).step_by(self.publishers as usize).collect()
        }
    }

    /// Publishers of room `r`.
    fn publishers_in(&self, r: u32) -> usize {
        if self.publishers >= self.rooms {
            ((self.publishers - r).div_ceil(self.rooms)) as usize
        } else {
            1
        }
    }

    /// Publisher `p`'s index among room `r`'s publishers, if it publishes there.
    fn slot(&self, r: u32, p: u32) -> Option<usize> {
        if p >= self.publishers || r >= self.rooms {
            None
        } else if self.publishers >= self.rooms {
            (p % self.rooms == r).then_some((p / self.rooms) as usize)
        } else {
            (r % self.publishers == p).then_some(0)
        }
    }

    /// The publisher at `slot` of room `r`.
    fn publisher_at(&self, r: u32, slot: usize) -> u32 {
        if self.publishers >= self.rooms {
            r + slot as u32 * self.rooms
        } else {
            r % self.publishers
        }
    }
}

/// Counters read while the run goes on (progress, the drain wait).
#[derive(Debug, Default)]
struct Counters {
    deliveries: AtomicU64,
    publications: AtomicU64,
    publish_errors: AtomicU64,
}

/// A delivery that broke an order rule, where it was seen.
#[derive(Debug, Clone)]
pub(crate) struct Anomaly {
    conn: usize,
    room: u32,
    kind: AnomalyKind,
}

#[derive(Debug, Clone)]
pub(crate) enum AnomalyKind {
    Gap { publisher: u32, from: u64, to: u64 },
    Duplicate { publisher: u32, q: u64 },
    Reordered { publisher: u32, q: u64, last: u64 },
    Offset { offset: u64, prev: u64 },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, c) = (self.room, self.conn);
        match self.kind {
            AnomalyKind::Gap { publisher, from, to } if from == to => write!(
                f,
                "lost: room {r} publisher {publisher} sequence {from} (connection {c})"
            ),
            AnomalyKind::Gap { publisher, from, to } => write!(
                f,
                "lost: room {r} publisher {publisher} sequences {from}..={to} (connection {c})"
            ),
            AnomalyKind::Duplicate { publisher, q } => write!(
                f,
                "duplicated: room {r} publisher {publisher} sequence {q} (connection {c})"
            ),
            AnomalyKind::Reordered { publisher, q, last } => write!(
                f,
                "reordered: room {r} publisher {publisher} sequence {q} after {last} (connection {c})"
            ),
            AnomalyKind::Offset { offset, prev } => write!(
                f,
                "offset: room {r} offset {offset} after {prev} (connection {c})"
            ),
        }
    }
}

/// What a connection task tells the coordinator once its session is set up.
#[derive(Debug)]
pub(crate) enum Ready {
    Connected { rooms: Vec<u32>, publisher: bool },
    Failed { error: String },
}

/// State shared by the coordinator and every connection task of one run.
pub(crate) struct Run {
    plan: Plan,
    common: CommonOptions,
    dialer: Dialer,
    payload: usize,
    rate_per_publisher: f64,
    counters: Counters,
    latency: LatencyRecorder,
    anomalies: Mutex<Vec<Anomaly>>,
    /// Ends every connection task.
    cancel: CancellationToken,
    /// Set once to the instant publishing starts.
    go: watch::Receiver<Option<Instant>>,
}

impl Run {
    /// Keep an anomaly for the report (the first [`ANOMALY_SAMPLES`]).
    fn note(&self, a: Anomaly) {
        let mut v = self.anomalies.lock();
        if v.len() < ANOMALY_SAMPLES {
            v.push(a);
        }
    }
}

/// Open connection `conn` subscribed to `rooms` (see [`Dialer::open_session`]) and
/// tell the coordinator whether it worked; `None` when it did not.
pub(crate) async fn open_session(
    run: &Run,
    conn: usize,
    rooms: &[u32],
    publisher: bool,
    ready: tokio::sync::mpsc::Sender<Ready>,
) -> Option<Session> {
    let names: Vec<&str> = rooms
        .iter()
        .map(|&r| run.plan.names[r as usize].as_str())
        .collect();
    let (session, msg) = match run.dialer.open_session(conn, &names).await {
        Ok(session) => (
            Some(session),
            Ready::Connected {
                rooms: rooms.to_vec(),
                publisher,
            },
        ),
        Err(e) => (
            None,
            Ready::Failed {
                error: e.to_string(),
            },
        ),
    };
    ready.send(msg).await.ok();
    session
}

/// Wall-clock time in unix microseconds: publishers stamp it, receivers subtract it.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `--payload` fits the gateway's default message limit.
pub(crate) fn validate_payload(payload: usize) -> anyhow::Result<()> {
    if payload > MAX_PAYLOAD_BYTES {
        bail!("--payload must be at most {MAX_PAYLOAD_BYTES} bytes (the gateway's message limit is 64 KiB by default)");
    }
    Ok(())
}

fn validate(common: &CommonOptions, opts: &FanoutOptions) -> anyhow::Result<()> {
    if opts.rooms == 0 || opts.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of publications per second");
    }
    validate_payload(opts.payload)?;
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
    let t0 = watch.started;
    validate(common, opts)?;
    let dialer = Dialer::new(common, common.connect_concurrency).await?;
    let subscribers = opts.rooms as usize * opts.subscribers as usize;
    let total = subscribers + opts.publishers as usize;
    sys::ensure_nofile(total)?;
    let (go_tx, go_rx) = watch::channel(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let run = Arc::new(Run {
        plan: Plan::new(
            opts.rooms,
            opts.publishers,
            options::room_names(&opts.room_prefix, opts.rooms),
        ),
        common: common.clone(),
        dialer,
        payload: opts.payload,
        rate_per_publisher: opts.rate / f64::from(opts.publishers),
        counters: Counters::default(),
        latency: LatencyRecorder::new(workers * 2),
        anomalies: Mutex::new(Vec::new()),
        cancel: CancellationToken::new(),
        go: go_rx,
    });
    let snapshot = |phase, connections, connect_errors| Progress {
        phase,
        elapsed: t0.elapsed(),
        connections,
        connect_errors,
        publications: run.counters.publications.load(Ordering::Relaxed),
        deliveries: run.counters.deliveries.load(Ordering::Relaxed),
    };
    let emit = |p: Progress| {
        if let Some(f) = progress {
            f(&p);
        }
    };

    // Connect: subscribers first, then publishers; all tasks at once, the gate
    // bounds the handshakes in progress.
    let (ready_tx, mut ready_rx) = mpsc::channel(256);
    let (done_tx, mut done_rx) = mpsc::channel(64);
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
    drop((ready_tx, done_tx));

    let mut problems = Problems::default();
    let mut receivers_in = vec![0u64; opts.rooms as usize];
    let (mut connections, mut connect_errors, mut publishers_up) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval_at(Instant::now() + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    // Bounded: every task reports within its two connect timeouts once through the gate.
    while connections + connect_errors < total as u64 {
        tokio::select! {
            m = ready_rx.recv() => match m {
                Some(Ready::Connected { rooms, publisher }) => {
                    connections += 1;
                    publishers_up += u64::from(publisher);
                    for r in rooms {
                        receivers_in[r as usize] += 1;
                    }
                }
                Some(Ready::Failed { error }) => {
                    connect_errors += 1;
                    problems.sample("connect", error);
                }
                None => break,
            },
            _ = tick.tick() => emit(snapshot("connecting", connections, connect_errors)),
        }
    }
    let connect_seconds = t0.elapsed().as_secs_f64();

    // Publish, then collect every publisher's account.
    let publish_start = Instant::now();
    go_tx.send_replace(Some(publish_start));
    let mut dones = Vec::new();
    let done_deadline =
        publish_start + common.duration + common.drain_timeout + Duration::from_secs(1);
    while (dones.len() as u64) < publishers_up {
        tokio::select! {
            d = done_rx.recv() => match d {
                Some(d) => dones.push(d),
                None => break,
            },
            _ = tick.tick() => emit(snapshot("publishing", connections, connect_errors)),
            _ = tokio::time::sleep_until(done_deadline) => {
                problems.push(format!(
                    "{} of {publishers_up} publishers did not finish in time",
                    publishers_up - dones.len() as u64
                ));
                break;
            }
        }
    }
    let mut acked: Vec<Vec<u64>> = (0..opts.rooms)
        .map(|r| vec![0; run.plan.publishers_in(r)])
        .collect();
    let mut refused: HashSet<(u32, u32, u64)> = HashSet::new();
    let (mut publish_errors, mut unanswered) = (0u64, 0u64);
    for d in &dones {
        for (&r, &n) in d.rooms.iter().zip(&d.acked) {
            let slot = run
                .plan
                .slot(r, d.publisher)
                .expect("bug: publisher in its own room");
            acked[r as usize][slot] = n;
        }
        publish_errors += d.errors;
        unanswered += d.unanswered;
        refused.extend(d.refused.iter().map(|&(r, q)| (r, d.publisher, q)));
        if let Some(e) = &d.first_error {
            problems.push(format!(
                "publisher {}: the server refused {} publications (first: {e}){}",
                d.publisher,
                d.errors,
                if e.starts_with("error 111") {
                    "; raise the gateway's [client] publish_rate_per_sec or use more --publishers"
                } else {
                    ""
                }
            ));
        }
        if let Some(e) = &d.stopped {
            problems.push(format!("publisher {} stopped early: {e}", d.publisher));
        }
    }
    if unanswered > 0 {
        problems.push(format!(
            "{unanswered} publications were never answered within the drain timeout"
        ));
    }
    let publications: u64 = acked.iter().flatten().sum();
    let expected: u64 = acked
        .iter()
        .zip(&receivers_in)
        .map(|(a, &n)| a.iter().sum::<u64>() * n)
        .sum();

    // Wait, bounded, for what is still on its way.
    let drain_deadline = Instant::now() + common.drain_timeout;
    while run.counters.deliveries.load(Ordering::Relaxed) < expected
        && Instant::now() < drain_deadline
    {
        tokio::select! {
            _ = tick.tick() => emit(snapshot("draining", connections, connect_errors)),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let delivery_end = Instant::now();
    run.cancel.cancel();

    let receivers: Vec<_> = dial::join_tasks(tasks, &mut problems)
        .await
        .into_iter()
        .flatten()
        .collect();

    // Tally.
    let (mut deliveries, mut lost, mut duplicated, mut reordered) = (0u64, 0u64, 0u64, 0u64);
    let (mut offset_errors, mut unexpected, mut disconnects) = (0u64, 0u64, 0u64);
    for rx in &receivers {
        deliveries += rx.deliveries;
        unexpected += rx.unexpected;
        if let Some(why) = &rx.disconnected {
            disconnects += 1;
            problems.sample("disconnect", format!("connection {}: {why}", rx.conn));
        }
        for room in &rx.rooms {
            offset_errors += room.offsets.errors;
            for (slot, s) in room.streams.iter().enumerate() {
                let published = acked[room.room as usize][slot];
                let l = s.lost(published);
                lost += l;
                duplicated += s.duplicated;
                reordered += s.reordered;
                if l > 0 && s.gaps < l {
                    problems.sample(
                        "missing",
                        format!(
                            "lost: room {} publisher {}: connection {} got {} of {published} (highest sequence {})",
                            room.room,
                            run.plan.publisher_at(room.room, slot),
                            rx.conn,
                            s.advanced,
                            s.last
                        ),
                    );
                }
            }
        }
    }
    for a in run.anomalies.lock().iter() {
        // Gaps the server made by refusing publications are not loss.
        if let AnomalyKind::Gap {
            publisher,
            from,
            to,
        } = a.kind
        {
            if (from..=to).all(|q| refused.contains(&(a.room, publisher, q))) {
                continue;
            }
        }
        problems.push(a.to_string());
    }
    if unexpected > 0 {
        problems.push(format!(
            "{unexpected} messages were neither replies nor publications of this run"
        ));
    }
    if deliveries < expected {
        problems.push(format!(
            "{} of {expected} expected deliveries were not seen within the drain timeout",
            expected - deliveries
        ));
    }
    if publications == 0 {
        problems.push("no publication was acked".into());
    }
    let ok = lost + duplicated + reordered + offset_errors == 0
        && deliveries >= expected
        && publications > 0
        && connect_errors + disconnects + publish_errors + unexpected + unanswered == 0;
    let window = delivery_end.duration_since(publish_start).as_secs_f64();
    Ok(FanoutReport {
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
        },
        connections,
        connect_errors,
        disconnects,
        connect_seconds,
        publications,
        publish_errors,
        publications_per_sec: publications as f64 / common.duration.as_secs_f64(),
        deliveries,
        expected_deliveries: expected,
        deliveries_per_sec: if window > 0.0 {
            deliveries as f64 / window
        } else {
            0.0
        },
        latency_us: LatencyUs::of(&run.latency.merged()),
        lost,
        duplicated,
        reordered,
        offset_errors,
        unexpected_messages: unexpected,
        outcome: watch.outcome(ok, problems),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_assigns_every_publisher_and_room() {
        for (rooms, publishers) in [(1, 1), (1, 3), (2, 5), (5, 2), (7, 3), (4, 4)] {
            let plan = Plan::new(rooms, publishers, options::room_names("t", rooms));
            let mut per_room = vec![0usize; rooms as usize];
            for p in 0..publishers {
                let rs = plan.publisher_rooms(p);
                assert!(!rs.is_empty(), "publisher {p} has rooms");
                for r in rs {
                    let slot = plan.slot(r, p).expect("own room has a slot");
                    assert_eq!(plan.publisher_at(r, slot), p);
                    per_room[r as usize] += 1;
                }
            }
            for r in 0..rooms {
                assert_eq!(
                    per_room[r as usize],
                    plan.publishers_in(r),
                    "{rooms}x{publishers} room {r}"
                );
                assert!(plan.publishers_in(r) >= 1);
            }
        }
    }
}
