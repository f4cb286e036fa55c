//! Publishes in the order they were made, across a lost command connection.
//!
//! Normally a node's publishes go out on the multiplexed connection as they come,
//! so each client's reach Redis in its order. When the connection drops, the ones
//! in flight fail together and are retried, and the retries (and newer publishes)
//! wait on the reconnect: without more, they would go out in whatever order their
//! tasks wake. So from the first such failure the [`Gate`] closes: publishes queue
//! (first in, first out), and each in turn is handed to the connection (polled
//! until it is sent, not until it is answered), the first after Redis answers
//! again. The gate opens once Redis answers and the queue is empty. The cost while
//! open: two atomic loads per publish.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// After Redis did not answer, how long publishes at the head of the queue are
/// refused at once instead of each waiting for Redis in turn.
const DOWN_FOR: Duration = Duration::from_millis(250);

/// The gate (see the module map).
#[derive(Default)]
pub(super) struct Gate {
    /// Set by a publish that found the connection dropped; cleared when Redis
    /// answers again.
    closed: AtomicBool,
    /// Publishes queued at the gate or passing it.
    queued: AtomicUsize,
    turn: tokio::sync::Mutex<()>,
    /// Until when Redis counts as not answering (the last wait for it failed).
    down_until: Mutex<Option<Instant>>,
}

impl Gate {
    /// Whether a publish may go straight out.
    pub(super) fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.queued.load(Ordering::Acquire) == 0
    }

    /// A publish found the connection dropped: from now on publishes queue.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Redis answered a probe: the next publish at the head waits for it again
    /// rather than being refused at once.
    pub(super) fn redis_answered(&self) {
        if self.closed.load(Ordering::Acquire) {
            *self.down_until.lock() = None;
        }
    }

    /// Queue for the gate, then hand `make()`'s future to the connection and let
    /// the next one go; its result. While the gate is closed, the one at its head
    /// first runs `ready` (wait until Redis answers again, and make the publish
    /// script known to it); `ready` true opens the gate for those after. When
    /// `ready` fails, the publish is not sent (`None`), and for [`DOWN_FOR`] the
    /// ones queued behind are not sent either, without waiting: a long outage
    /// refuses publishes as it did without the gate, instead of queueing them.
    pub(super) async fn pass<R, Fut>(
        &self,
        ready: impl Future<Output = bool>,
        make: impl FnOnce() -> Fut,
    ) -> Option<R>
    where
        Fut: Future<Output = R>,
    {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let turn = self.turn.lock().await;
        if self.closed.load(Ordering::Acquire) {
            let down = self.down_until.lock().is_some_and(|t| Instant::now() < t);
            let up = !down && ready.await;
            if up {
                self.closed.store(false, Ordering::Release);
            } else {
                if !down {
                    *self.down_until.lock() = Some(Instant::now() + DOWN_FOR);
                }
                drop(turn);
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        let mut call = std::pin::pin!(make());
        // Polled once: the command is written to the connection's queue in this
        // poll (the connection is up), before the next publish gets its turn.
        let first = futures_util::poll!(call.as_mut());
        drop(turn);
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(match first {
            Poll::Ready(r) => r,
            Poll::Pending => call.await,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn open_until_closed_then_queued_until_ready() {
        let gate = Gate::default();
        assert!(gate.open());
        gate.close();
        assert!(!gate.open());
        // Redis not answering: not sent, and the gate stays closed.
        let r = gate.pass(async { false }, || async { 1 }).await;
        assert_eq!(r, None);
        assert!(!gate.open());
        // Within the next moment, refused without asking Redis again.
        let asked = AtomicBool::new(false);
        let ready = async {
            asked.store(true, Ordering::Relaxed);
            true
        };
        let r = gate.pass(ready, || async { 3 }).await;
        assert_eq!(r, None);
        assert!(!asked.load(Ordering::Relaxed), "Redis asked again at once");
        // Unless a probe found it answering.
        gate.redis_answered();
        // Answering: sent, and the gate opens behind it.
        let r = gate.pass(async { true }, || async { 2 }).await;
        assert_eq!(r, Some(2));
        assert!(gate.open());
    }

    /// Calls queued at a closed gate are sent in the order they queued, each
    /// before the next gets its turn, although they are answered in the other
    /// order; only the first waits for Redis.
    #[tokio::test]
    async fn queued_calls_are_sent_in_order_and_answered_in_any() {
        let gate = Arc::new(Gate::default());
        gate.close();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let readies = Arc::new(Mutex::new(0));
        let mut answers = Vec::new();
        let mut calls = Vec::new();
        for n in 0..3 {
            let (tx, rx) = oneshot::channel::<u32>();
            answers.push(tx);
            let (gate, sent, readies) = (gate.clone(), sent.clone(), readies.clone());
            calls.push(tokio::spawn(async move {
                let ready = async move {
                    *readies.lock() += 1;
                    true
                };
                gate.pass(ready, move || {
                    sent.lock().push(n);
                    async move { rx.await.unwrap() }
                })
                .await
            }));
            // Each queues before the next is spawned.
            tokio::task::yield_now().await;
        }
        for (n, tx) in answers.into_iter().enumerate().rev() {
            tx.send(n as u32 * 10).unwrap();
        }
        let mut got = Vec::new();
        for c in calls {
            got.push(c.await.unwrap());
        }
        assert_eq!(*sent.lock(), vec![0, 1, 2]);
        assert_eq!(got, vec![Some(0), Some(10), Some(20)]);
        assert_eq!(*readies.lock(), 1, "only the head waits for Redis");
        assert!(gate.open());
    }
}
