//! Whether the node is saturated, measured as how late its runtime runs a task
//! that ticks every [`TICK`] (scheduling lag). While it is, connections hold their
//! writes `client.busy_write_delay` so that more messages share a frame: a socket
//! write costs far more than a message, so a saturated node then does more with
//! the same CPU, and its backlog shrinks instead of growing. An idle node writes
//! at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Gauge;
use tokio_util::sync::CancellationToken;

/// How often the lag is sampled.
const TICK: Duration = Duration::from_millis(10);
/// Busy once the smoothed lag passes this...
const BUSY_ABOVE: Duration = Duration::from_millis(5);
/// ...and until it falls under this.
const IDLE_BELOW: Duration = Duration::from_millis(1);
/// Weight of each new sample in the smoothed lag.
const ALPHA: f64 = 0.2;

/// The node's load signal.
#[derive(Debug, Default)]
pub(crate) struct Load {
    busy: AtomicBool,
}

impl Load {
    /// Whether the runtime runs tasks late enough to count as saturated.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Sample the lag until `stop`, publishing the smoothed lag to `gauge`.
    pub(crate) async fn watch(self: Arc<Self>, gauge: Gauge, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut smoothed = 0.0f64;
        loop {
            let due = tokio::select! {
                due = tick.tick() => due,
                _ = stop.cancelled() => break,
            };
            let lag = due.elapsed().as_secs_f64();
            smoothed += ALPHA * (lag - smoothed);
            gauge.set(smoothed);
            let busy = self.is_busy();
            if !busy && smoothed > BUSY_ABOVE.as_secs_f64() {
                self.busy.store(true, Ordering::Relaxed);
            } else if busy && smoothed < IDLE_BELOW.as_secs_f64() {
                self.busy.store(false, Ordering::Relaxed);
            }
        }
        self.busy.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime kept from running the ticker reads as busy; an idle one does not.
    #[tokio::test(flavor = "current_thread")]
    async fn late_ticks_read_as_busy() {
        let load = Arc::new(Load::default());
        let stop = CancellationToken::new();
        let gauge = Gauge::new("lag", "lag").unwrap();
        let watcher = tokio::spawn(load.clone().watch(gauge.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!load.is_busy(), "idle, lag {}", gauge.get());
        // Block the only thread for 30 ms at a time: every tick is late.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(30));
            tokio::task::yield_now().await;
        }
        assert!(load.is_busy(), "lag {}", gauge.get());
        stop.cancel();
        watcher.await.unwrap();
        assert!(!load.is_busy());
    }
}
