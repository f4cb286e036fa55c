//! Progress snapshots a scenario hands to its caller while it runs (the binary
//! prints them on a terminal; tests ignore them).

use std::fmt;
use std::time::Duration;

use tokio::time::{Instant, Interval};

/// How often a scenario reports progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// A scenario's counters at one moment.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `connecting`, `publishing`, `draining` or `holding`.
    pub phase: &'static str,
    /// Since the scenario started.
    pub elapsed: Duration,
    pub connections: u64,
    pub connect_errors: u64,
    /// Publications acked by the server so far.
    pub publications: u64,
    pub deliveries: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>6.1}s] {:<10} connections {} (errors {})",
            self.elapsed.as_secs_f64(),
            self.phase,
            self.connections,
            self.connect_errors,
        )?;
        // Scenarios that publish nothing (connect, idle) leave these at 0.
        if self.publications + self.deliveries > 0 {
            write!(
                f,
                ", publications {}, deliveries {}",
                self.publications, self.deliveries
            )?;
        }
        Ok(())
    }
}

/// Where progress goes: a callback, called from the scenario's coordinating task.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// The progress side of a scenario's coordinator: a tick every [`PROGRESS_INTERVAL`]
/// from its creation, and the caller's callback, if any.
pub(crate) struct Ticker<'a> {
    started: Instant,
    progress: Option<ProgressFn<'a>>,
    interval: Interval,
}

impl<'a> Ticker<'a> {
    /// A ticker for a scenario that started at `started`.
    pub(crate) fn new(started: Instant, progress: Option<ProgressFn<'a>>) -> Self {
        Ticker {
            started,
            progress,
            interval: tokio::time::interval_at(
                Instant::now() + PROGRESS_INTERVAL,
                PROGRESS_INTERVAL,
            ),
        }
    }

    /// Wait for the next tick.
    pub(crate) async fn tick(&mut self) {
        self.interval.tick().await;
    }

    /// Time since the scenario started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Hand `p` to the caller.
    pub(crate) fn emit(&self, p: &Progress) {
        if let Some(f) = self.progress {
            f(p);
        }
    }
}
