//! State one soak run shares between its coordinator and its member tasks: the
//! options, counters, each room's acked publications and each member's position,
//! the latency recorder, connection events, the problems noted, and the start and
//! stop signals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::options::SoakOptions;
use crate::dial::Dialer;
use crate::latency::LatencyRecorder;
use crate::options::CommonOptions;
use crate::report::Problems;
use crate::timeline::{Events, Sampled};

/// Longest a member stays away after a planned disconnect (a random time up to
/// this), so that recovery has publications to return.
pub(super) const MAX_OFFLINE: Duration = Duration::from_millis(500);
/// Position of a member that is out of the run (it never connected).
pub(super) const GONE: u64 = u64::MAX;

/// Counters read while the run goes on (progress, the drain wait).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Members connected now.
    pub(super) connected: AtomicU64,
    pub(super) connect_errors: AtomicU64,
    pub(super) publications: AtomicU64,
    pub(super) deliveries: AtomicU64,
    /// Publications sent and not yet answered or given up on.
    pub(super) in_flight: AtomicU64,
    /// When a member last received a publication (µs after the run's origin; 0:
    /// none yet), and the longest time between two such moments: how long the
    /// whole run went without a delivery, as during a Redis outage.
    last_delivery_us: AtomicU64,
    longest_silence_us: AtomicU64,
}

impl Counters {
    /// A member received publications `at` after the run's origin.
    pub(super) fn delivered(&self, at: Duration) {
        let now = u64::try_from(at.as_micros()).unwrap_or(u64::MAX).max(1);
        let last = self.last_delivery_us.swap(now, Ordering::Relaxed);
        if last != 0 && now > last {
            self.longest_silence_us
                .fetch_max(now - last, Ordering::Relaxed);
        }
    }

    /// The longest time the run went without a delivery, so far.
    pub(super) fn longest_silence(&self) -> Duration {
        Duration::from_micros(self.longest_silence_us.load(Ordering::Relaxed))
    }
}

/// State shared by the coordinator and every member task of one run.
pub(crate) struct Run {
    pub(super) opts: SoakOptions,
    pub(super) common: CommonOptions,
    pub(super) dialer: Dialer,
    pub(super) names: Vec<String>,
    pub(super) counters: Counters,
    /// Publications the server acked, per room.
    pub(super) room_acked: Vec<AtomicU64>,
    /// Each member's position (the last offset it saw), for the drain wait.
    pub(super) positions: Vec<AtomicU64>,
    /// Latencies of live deliveries (recovered ones are as old as the absence).
    pub(super) latency: LatencyRecorder,
    pub(super) problems: Mutex<Problems>,
    /// Ends every member task.
    pub(super) cancel: CancellationToken,
    /// Set once to the instant publishing starts.
    pub(super) go: watch::Receiver<Option<Instant>>,
    /// The reading half of every session.
    pub(super) readers: TaskTracker,
    /// Connects, reconnects and disconnects per second, by kind.
    pub(super) events: Events,
    /// Seeds each member's random schedule.
    pub(super) seed: u64,
    /// What [`Counters::delivered`] times are measured from.
    pub(super) origin: Instant,
}

impl Run {
    pub(super) fn note(&self, kind: &'static str, line: String) {
        self.problems.lock().sample(kind, line);
    }

    pub(super) fn room_of(&self, member: usize) -> usize {
        member / self.opts.members as usize
    }
}

impl Sampled for Run {
    fn deliveries(&self) -> Option<u64> {
        Some(self.counters.deliveries.load(Ordering::Relaxed))
    }

    fn latency(&self) -> &LatencyRecorder {
        &self.latency
    }
}
