//! A run over time, for the charts of `--report`: a sampler task that once a second
//! takes the deliveries counted and the latencies recorded since its last sample,
//! and connection events counted per whole second by kind. Both are bounded by the
//! run's length; the per-delivery path is untouched (connection tasks record into
//! their latency shards and counters as before, and the sampler empties the shards).
//!
//! - [`Sampler`]: the sampling task and its [`Sample`]s.
//! - [`Events`]: connection events (and a few marks) per second, by kind.
//! - [`Series`]: what a finished run keeps for its charts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::latency::{self, LatencyRecorder, LatencyUs, LogBucket};
use crate::options::CommonOptions;

/// How often the sampler takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Time a series may cover beyond the duration and the drain: connecting (bounded
/// by the connect timeouts, once per gate turn) and stopping (bounded by
/// `dial::STOP_TIMEOUT`). Past it, samples and events are still counted in the
/// run's totals, not in the series.
const SERIES_SLACK: Duration = Duration::from_secs(600);
/// Event kinds kept apart; further kinds are counted as [`OTHER_KIND`].
const MAX_EVENT_KINDS: usize = 12;
const OTHER_KIND: &str = "other";
/// Marks kept (phase changes: a handful per run).
const MAX_MARKS: usize = 16;
/// Latency histogram buckets per doubling (each bucket about 19% wide).
const BUCKETS_PER_OCTAVE: u32 = 4;

/// Seconds a run's series may cover: its duration and drain, and room to connect and
/// stop.
pub fn series_seconds(common: &CommonOptions) -> usize {
    let covered = common.duration + common.drain_timeout + SERIES_SLACK;
    covered.as_secs() as usize + 1
}

/// What the sampler reads once a second.
pub trait Sampled: Send + Sync + 'static {
    /// Deliveries so far (a running total); `None` when the scenario has none.
    fn deliveries(&self) -> Option<u64> {
        None
    }
    /// Where the latencies are recorded.
    fn latency(&self) -> &LatencyRecorder;
}

impl Sampled for LatencyRecorder {
    fn latency(&self) -> &LatencyRecorder {
        self
    }
}

/// One interval of a run (about a second).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// End of the interval, in seconds since the run started.
    pub end: f64,
    /// Length of the interval, in seconds.
    pub span: f64,
    /// Deliveries counted in the interval; `None` when the scenario has none.
    pub deliveries: Option<u64>,
    /// Latencies recorded in the interval; `None` when there were none.
    pub latency: Option<LatencyUs>,
}

impl Sample {
    /// Middle of the interval, where a chart puts it.
    pub fn mid(&self) -> f64 {
        self.end - self.span / 2.0
    }
}

/// What a sampler took: its samples, and whether the run outlasted the bound.
#[derive(Debug, Default)]
pub struct Samples {
    /// In time order, about one a second.
    pub samples: Vec<Sample>,
    /// Set when the run outlasted the bound and sampling stopped.
    pub truncated: bool,
}

/// The sampling task of a run. Dropping it stops the task; [`Sampler::finish`]
/// takes the last sample and returns them all.
pub struct Sampler {
    /// Ends the task (it takes a last sample first).
    stop: CancellationToken,
    /// `None` once finished.
    task: Option<JoinHandle<Samples>>,
}

impl Sampler {
    /// Sample `source` every [`SAMPLE_INTERVAL`] from `t0` on, at most `cap` times.
    pub fn start<S: Sampled + ?Sized>(t0: Instant, source: Arc<S>, cap: usize) -> Sampler {
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(t0, source, cap, stop.clone()));
        Sampler {
            stop,
            task: Some(task),
        }
    }

    /// Take the last sample (what came since the one before) and return them all.
    /// Call it once nothing records any more, so the samples add up to the totals.
    pub async fn finish(mut self) -> Samples {
        self.stop.cancel();
        let task = self.task.take().expect("bug: a sampler finishes once");
        task.await.expect("bug: the sampler does not panic")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sample<S: Sampled + ?Sized>(
    t0: Instant,
    source: Arc<S>,
    cap: usize,
    stop: CancellationToken,
) -> Samples {
    let mut tick = tokio::time::interval_at(t0 + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut book = Book::new(cap);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let end = t0.elapsed().as_secs_f64();
        book.take(end, source.deliveries(), source.latency(), last);
        if last {
            return book.out;
        }
    }
}

/// The samples taken so far and what the next one starts from.
struct Book {
    out: Samples,
    /// Samples taken at most.
    cap: usize,
    /// The interval being taken, and the last one (kept so that a short last
    /// interval can be merged into it).
    now: Histogram<u64>,
    last: Histogram<u64>,
    /// Where the next sample starts (seconds since the start), and the deliveries
    /// counted until then.
    last_end: f64,
    last_deliveries: u64,
}

impl Book {
    fn new(cap: usize) -> Book {
        Book {
            out: Samples::default(),
            cap,
            now: latency::histogram(),
            last: latency::histogram(),
            last_end: 0.0,
            last_deliveries: 0,
        }
    }

    /// Take the sample that ends at `end` (seconds since the start): `deliveries` is
    /// the running total, and the latencies recorded since the last sample are
    /// taken out of `latency`. `last`: the run is over. Past the cap nothing is
    /// taken: the shards keep it for the run's totals.
    fn take(&mut self, end: f64, deliveries: Option<u64>, latency: &LatencyRecorder, last: bool) {
        if self.out.samples.len() >= self.cap {
            self.out.truncated = true;
            return;
        }
        latency.take(&mut self.now);
        let delta = deliveries.map(|d| d - std::mem::replace(&mut self.last_deliveries, d));
        let span = end - std::mem::replace(&mut self.last_end, end);
        // A last interval much shorter than the others reads as a spike: merge it.
        let merge = last && span < SAMPLE_INTERVAL.as_secs_f64() / 2.0;
        match self.out.samples.last_mut() {
            Some(prev) if merge => {
                self.last
                    .add(&self.now)
                    .expect("bug: interval histograms share bounds");
                prev.end = end;
                prev.span += span;
                prev.deliveries = prev.deliveries.zip(delta).map(|(a, b)| a + b);
                prev.latency = LatencyUs::of(&self.last);
            }
            _ => {
                self.out.samples.push(Sample {
                    end,
                    span,
                    deliveries: delta,
                    latency: LatencyUs::of(&self.now),
                });
                std::mem::swap(&mut self.now, &mut self.last);
            }
        }
    }
}

/// Connection events per whole second of a run, by kind (`connect`,
/// `disconnect close 3001`, `reconnect`, ...), and marks (phase changes). Events are
/// rare next to deliveries (one per connection and per reconnect), so one lock each
/// is cheap.
pub struct Events {
    t0: Instant,
    /// Wall-clock milliseconds of `t0`, to line the series up with other events.
    pub started_unix_ms: u64,
    /// Seconds counted; later events only count in [`EventBook::beyond`].
    cap: usize,
    book: Mutex<EventBook>,
}

#[derive(Debug, Default)]
struct EventBook {
    /// Counts per second since `t0`, by kind, in order of first appearance.
    kinds: Vec<(String, Vec<u64>)>,
    marks: Vec<(String, f64)>,
    /// Events past the cap.
    beyond: u64,
}

impl Events {
    /// Events of a run that started at `t0`, counted for `cap` seconds.
    pub fn new(t0: Instant, cap: usize) -> Events {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Events {
            t0,
            started_unix_ms: unix_now.saturating_sub(t0.elapsed().as_millis() as u64),
            cap,
            book: Mutex::new(EventBook::default()),
        }
    }

    /// Count one event of `kind` at `at`.
    pub fn record(&self, kind: &str, at: Instant) {
        let second = at.saturating_duration_since(self.t0).as_secs() as usize;
        let mut b = self.book.lock();
        if second >= self.cap {
            b.beyond += 1;
            return;
        }
        let i = match b.kinds.iter().position(|(k, _)| k == kind) {
            Some(i) => i,
            None if b.kinds.len() < MAX_EVENT_KINDS => {
                b.kinds.push((kind.to_owned(), Vec::new()));
                b.kinds.len() - 1
            }
            None => match b.kinds.iter().position(|(k, _)| k == OTHER_KIND) {
                Some(i) => i,
                None => {
                    b.kinds.push((OTHER_KIND.to_owned(), Vec::new()));
                    b.kinds.len() - 1
                }
            },
        };
        let counts = &mut b.kinds[i].1;
        if counts.len() <= second {
            counts.resize(second + 1, 0);
        }
        counts[second] += 1;
    }

    /// Note that a phase (`publishing`, ...) begins at `at`.
    pub fn mark(&self, label: &str, at: Instant) {
        let mut b = self.book.lock();
        if b.marks.len() < MAX_MARKS {
            b.marks.push((
                label.to_owned(),
                at.saturating_duration_since(self.t0).as_secs_f64(),
            ));
        }
    }

    /// Events of `kind` in each second since the start, up to the last one.
    pub fn per_second(&self, kind: &str) -> Vec<u64> {
        let b = self.book.lock();
        b.kinds
            .iter()
            .find(|(k, _)| k == kind)
            .map_or_else(Vec::new, |(_, c)| c.clone())
    }
}

/// What a finished run keeps for its charts (not part of the JSON report).
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Wall-clock start of the run (Unix milliseconds): second 0.
    pub started_unix_ms: u64,
    /// About one a second, from the start of the run to its end.
    pub samples: Vec<Sample>,
    /// What the latencies measure (`delivery latency`, `connect latency`).
    pub latency_of: &'static str,
    /// The latencies of the whole run in log-scaled buckets.
    pub latency_buckets: Vec<LogBucket>,
    /// Connection events per whole second since the start, by kind.
    pub events: Vec<(String, Vec<u64>)>,
    /// Phase changes: (label, seconds since the start).
    pub marks: Vec<(String, f64)>,
    /// Whether the run outlasted the series' bound (its later part is only in the
    /// totals).
    pub truncated: bool,
}

impl Series {
    /// The series of a run: the sampler's samples, the events, and the run's whole
    /// latency histogram.
    pub fn new(
        samples: Samples,
        events: &Events,
        latency_of: &'static str,
        latencies: &Histogram<u64>,
    ) -> Series {
        let book = events.book.lock();
        Series {
            started_unix_ms: events.started_unix_ms,
            samples: samples.samples,
            latency_of,
            latency_buckets: latency::log_buckets(latencies, BUCKETS_PER_OCTAVE),
            events: book.kinds.clone(),
            marks: book.marks.clone(),
            truncated: samples.truncated || book.beyond > 0,
        }
    }

    /// Deliveries over all samples (`None` when the scenario has none).
    pub fn deliveries(&self) -> Option<u64> {
        self.samples
            .iter()
            .map(|s| s.deliveries)
            .try_fold(0u64, |sum, d| d.map(|d| sum + d))
            .filter(|_| !self.samples.is_empty())
    }

    /// Latencies over all samples.
    pub fn latency_count(&self) -> u64 {
        self.samples
            .iter()
            .filter_map(|s| s.latency.as_ref())
            .map(|l| l.count)
            .sum()
    }

    /// Events of each kind over the run.
    pub fn event_totals(&self) -> BTreeMap<&str, u64> {
        self.events
            .iter()
            .map(|(k, c)| (k.as_str(), c.iter().sum()))
            .collect()
    }

    /// Seconds the series covers.
    pub fn seconds(&self) -> f64 {
        let samples = self.samples.last().map_or(0.0, |s| s.end);
        let events = self.events.iter().map(|(_, c)| c.len()).max().unwrap_or(0) as f64;
        samples.max(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record `n` latencies of `us` microseconds.
    fn record(latency: &LatencyRecorder, key: usize, n: usize, us: u64) {
        latency.record(key, &vec![us; n]);
    }

    #[test]
    fn samples_add_up_to_the_totals_and_a_short_last_one_is_merged() {
        let latency = LatencyRecorder::new(3);
        let mut book = Book::new(100);
        let mut total = 0;
        for second in 1..=5u64 {
            for key in 0..10 {
                record(&latency, key, second as usize, 100 * second);
            }
            total += 10 * second;
            book.take(second as f64, Some(total), &latency, false);
        }
        // A short last interval: merged into the fifth.
        record(&latency, 0, 1, 50_000);
        book.take(5.2, Some(total + 1), &latency, true);
        let s = &book.out.samples;
        assert!(!book.out.truncated);
        assert_eq!(
            s.iter().map(|s| s.deliveries.unwrap()).collect::<Vec<_>>(),
            vec![10, 20, 30, 40, 51]
        );
        assert!((s[4].span - 1.2).abs() < 1e-9 && (s[4].end - 5.2).abs() < 1e-9);
        let l = |i: usize| s[i].latency.clone().unwrap();
        assert_eq!((l(0).p50, l(2).p99, l(2).count), (100, 300, 30));
        assert_eq!((l(4).count, l(4).p50), (51, 500));
        assert!(l(4).max >= 50_000);
        let counted: u64 = s.iter().map(|s| s.latency.as_ref().unwrap().count).sum();
        assert_eq!(counted, total + 1);
        // Taking samples keeps the run's total.
        assert_eq!(latency.merged().len(), total + 1);
        // A last interval of half a second or more stands alone; an empty one has
        // no latency.
        book.take(6.0, Some(total + 1), &latency, true);
        assert_eq!(book.out.samples.len(), 6);
        assert_eq!(
            (s_last(&book).deliveries, s_last(&book).latency.clone()),
            (Some(0), None)
        );
    }

    fn s_last(book: &Book) -> &Sample {
        book.out.samples.last().unwrap()
    }

    #[test]
    fn sampling_stops_at_its_bound_and_the_totals_keep_the_rest() {
        let latency = LatencyRecorder::new(1);
        let mut book = Book::new(2);
        for second in 1..=4 {
            record(&latency, 0, 1, 10);
            book.take(second as f64, None, &latency, second == 4);
        }
        assert!(book.out.truncated);
        assert_eq!(book.out.samples.len(), 2);
        assert_eq!(book.out.samples[0].deliveries, None);
        assert_eq!(latency.merged().len(), 4);
    }

    #[tokio::test]
    async fn the_sampler_takes_a_last_sample_when_finished() {
        let latency = Arc::new(LatencyRecorder::new(2));
        let sampler = Sampler::start(Instant::now(), latency.clone(), 10);
        record(&latency, 1, 7, 250);
        let samples = sampler.finish().await;
        assert_eq!(samples.samples.len(), 1);
        assert_eq!(
            samples.samples[0].latency.as_ref().map(|l| l.count),
            Some(7)
        );
    }

    #[test]
    fn events_count_per_whole_second_by_kind_within_bounds() {
        let t0 = Instant::now();
        let events = Events::new(t0, 10);
        let at = |ms| t0 + Duration::from_millis(ms);
        events.record("reconnect", at(100));
        events.record("reconnect", at(2500));
        events.record("reconnect", at(2900));
        events.record("disconnect close 3001", at(2400));
        events.record("reconnect", at(12_000));
        events.mark("publishing", at(1500));
        assert_eq!(events.per_second("reconnect"), vec![1, 0, 2]);
        for n in 0..20 {
            events.record(&format!("kind {n}"), at(0));
        }
        let none = latency::histogram();
        let series = Series::new(Samples::default(), &events, "delivery latency", &none);
        assert!(series.truncated, "the event at 12 s is past the bound");
        assert_eq!(series.events.len(), MAX_EVENT_KINDS + 1);
        let totals = series.event_totals();
        assert_eq!(totals["reconnect"], 3);
        assert_eq!(totals[OTHER_KIND], 10);
        assert_eq!(totals.values().sum::<u64>(), 24);
        assert_eq!(series.marks, vec![("publishing".to_owned(), 1.5)]);
        assert_eq!(series.deliveries(), None);
        assert_eq!(series.seconds(), 3.0);
        assert!(series.latency_buckets.is_empty());
    }
}
