//! Latency recording: HDR histograms in microseconds, sharded so thousands of
//! connection tasks record without contending on one lock.

use std::fmt;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency tracked, in microseconds (60 s); larger values count as this.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A set of histogram shards; a connection always records into the same one.
pub struct LatencyRecorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
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

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.shards {
            all.add(&*s.lock()).expect("bug: shards share bounds");
        }
        all
    }
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
