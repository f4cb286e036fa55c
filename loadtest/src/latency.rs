//! Latency recording: HDR histograms in microseconds, sharded so thousands of
//! connection tasks record without contending on one lock; emptied once a second by
//! the run's sampler (`timeline`), which keeps the run's total. Also the
//! percentiles of a histogram, and its counts in log-scaled buckets for a chart.

use std::fmt;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency tracked, in microseconds (60 s); larger values count as this.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A set of histogram shards; a connection always records into the same one.
pub struct LatencyRecorder {
    /// What was recorded since the last [`LatencyRecorder::take`].
    shards: Vec<Mutex<Histogram<u64>>>,
    /// Everything taken out of the shards so far.
    taken: Mutex<Histogram<u64>>,
}

/// An empty histogram with the recorder's bounds.
pub fn histogram() -> Histogram<u64> {
    // 3 significant digits: p99.9 is exact to 0.1 %; about 140 KiB per shard.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("bug: valid histogram bounds")
}

impl LatencyRecorder {
    /// `shards` histograms (at least one); twice the worker threads keeps
    /// contention negligible.
    pub fn new(shards: usize) -> Self {
        LatencyRecorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
            taken: Mutex::new(histogram()),
        }
    }

    /// Record a batch of latencies (microseconds) for connection `key`: one lock per
    /// frame, not per message.
    pub fn record(&self, key: usize, values_us: &[u64]) {
        let mut h = self.shards[key % self.shards.len()].lock();
        for &v in values_us {
            h.saturating_record(v);
        }
    }

    /// Move what was recorded since the last call into `interval` (emptied first);
    /// the run's total keeps it. Each shard is locked once, for one pass over its
    /// counts (about 17k of them): once a second, next to a lock per frame.
    pub fn take(&self, interval: &mut Histogram<u64>) {
        interval.reset();
        for s in &self.shards {
            let mut s = s.lock();
            interval.add(&*s).expect("bug: shards share bounds");
            s.reset();
        }
        self.taken
            .lock()
            .add(&*interval)
            .expect("bug: shards share bounds");
    }

    /// Everything recorded: what was taken and what the shards hold.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = self.taken.lock().clone();
        for s in &self.shards {
            all.add(&*s.lock()).expect("bug: shards share bounds");
        }
        all
    }
}

/// Latencies from `low_us` (inclusive) to `high_us` (exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct LogBucket {
    pub low_us: f64,
    pub high_us: f64,
    pub count: u64,
}

/// The counts of `h` in buckets `per_octave` to a doubling, from the lowest value
/// recorded to the highest (empty buckets between included); values below 1 us count
/// as 1 us.
pub fn log_buckets(h: &Histogram<u64>, per_octave: u32) -> Vec<LogBucket> {
    let per_octave = per_octave.max(1);
    let index = |v: u64| ((v.max(1) as f64).log2() * f64::from(per_octave)).floor() as usize;
    let mut counts: Vec<u64> = Vec::new();
    let mut first = usize::MAX;
    for v in h.iter_recorded() {
        let i = index(h.median_equivalent(v.value_iterated_to()));
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += v.count_at_value();
        first = first.min(i);
    }
    let bound = |i: usize| 2f64.powf(i as f64 / f64::from(per_octave));
    counts
        .iter()
        .enumerate()
        .skip(first)
        .map(|(i, &count)| LogBucket {
            low_us: bound(i),
            high_us: bound(i + 1),
            count,
        })
        .collect()
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// Samples behind these figures.
    pub count: u64,
}

impl LatencyUs {
    /// The summary of `h`, or `None` when it holds no samples.
    pub fn of(h: &Histogram<u64>) -> Option<LatencyUs> {
        (!h.is_empty()).then(|| LatencyUs {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        })
    }
}

impl fmt::Display for LatencyUs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_add_up_and_double_every_few_buckets() {
        let r = LatencyRecorder::new(2);
        r.record(0, &[0, 1, 1, 3, 900]);
        r.record(1, &[1000, 1100, 2_000_000, MAX_LATENCY_US * 2]);
        let h = r.merged();
        let b = log_buckets(&h, 4);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), h.len());
        assert_eq!(h.len(), 9);
        assert_eq!(
            (b[0].low_us, b[0].count),
            (1.0, 3),
            "0 and 1 us in the first"
        );
        assert!((b[4].low_us - 2.0).abs() < 1e-9 && (b[8].low_us - 4.0).abs() < 1e-9);
        for w in b.windows(2) {
            assert!((w[0].high_us - w[1].low_us).abs() < 1e-9);
        }
        let holds = |us: f64| {
            b.iter()
                .find(|b| b.low_us <= us && us < b.high_us)
                .unwrap()
                .count
        };
        assert_eq!(holds(3.0), 1);
        assert_eq!(holds(1000.0), 2, "900 and 1000 share 861..1024");
        assert!(b.last().unwrap().high_us > MAX_LATENCY_US as f64);
        assert!(log_buckets(&histogram(), 4).is_empty());
    }
}
