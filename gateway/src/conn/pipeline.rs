//! A connection's publishes in flight to the broker, so that the connection's task
//! reads on (pongs included) while Redis answers.
//!
//! Calls start in the order they were read, and a call is first polled only after
//! every call before it was, so they reach the node's one multiplexed Redis
//! connection, and Redis, in that order (after a lost Redis connection too: the
//! broker retries them, and sends newer ones, in order; not yet on a Redis
//! Cluster, see docs/operations.md §4). Their replies
//! (and the errors of publishes refused before any call, entered already
//! finished) leave in the same order. At most `client.max_publishes_in_flight`
//! are held (one while the node is saturated, see
//! [`Conn::max_in_flight`](super::Conn::max_in_flight)): a full pipeline makes the
//! task stop reading the socket, so TCP pushes back on a client that sends faster
//! than the node can publish.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesOrdered, StreamExt};
use shared::protocol::ReplyBody;
use tokio::time::Instant;

use super::session::Outcome;

/// One publish's broker call, owning what it needs.
pub(crate) type Call = Pin<Box<dyn Future<Output = Outcome<ReplyBody>> + Send>>;

/// What is known of an entry before it finishes.
struct Entry {
    id: u32,
    started: Instant,
}

/// A command that left the pipeline, in the order it entered.
pub(crate) struct Finished {
    pub id: u32,
    pub started: Instant,
    pub outcome: Outcome<ReplyBody>,
}

/// How a connection's reading changed (see [`Pipeline::pause`]).
pub(crate) enum Pause {
    Unchanged,
    /// A full pipeline stopped reading.
    Began,
    /// Reading goes on; it stopped at this instant.
    Ended(Instant),
}

/// The publishes of one connection in flight. Nothing until its first publish (an
/// idle connection carries one pointer for it).
#[derive(Default)]
pub(crate) struct Pipeline {
    inner: Option<Box<Inner>>,
}

/// The calls, and what is known of each, in the same order. `FuturesOrdered`
/// polls only the calls that were woken, and a new call first after every call
/// pushed before it.
#[derive(Default)]
struct Inner {
    calls: FuturesOrdered<Call>,
    entries: VecDeque<Entry>,
    /// The oldest call's outcome, once it is done and not yet taken.
    head: Option<Outcome<ReplyBody>>,
    /// Since when a full pipeline has kept the connection from being read.
    paused: Option<Instant>,
}

impl Pipeline {
    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.entries.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn is_full(&self, max: usize) -> bool {
        self.len() >= max
    }

    fn inner(&mut self) -> &mut Inner {
        self.inner.get_or_insert_with(Default::default)
    }

    /// Record whether the pipeline is `full` (and the connection not read).
    pub(crate) fn pause(&mut self, full: bool) -> Pause {
        let Some(inner) = self.inner.as_mut() else {
            return Pause::Unchanged;
        };
        match (full, inner.paused) {
            (true, None) => {
                inner.paused = Some(Instant::now());
                Pause::Began
            }
            (false, Some(since)) => {
                inner.paused = None;
                Pause::Ended(since)
            }
            _ => Pause::Unchanged,
        }
    }

    /// Enter a running call (the caller keeps the bound).
    pub(crate) fn push(&mut self, id: u32, started: Instant, call: Call) {
        let inner = self.inner();
        inner.calls.push_back(call);
        inner.entries.push_back(Entry { id, started });
    }

    /// Enter a command already answered, so its reply keeps its place.
    pub(crate) fn push_done(&mut self, id: u32, started: Instant, outcome: Outcome<ReplyBody>) {
        self.push(id, started, Box::pin(std::future::ready(outcome)));
    }

    /// While paused: when the pause began, and the pause counted from now on.
    pub(crate) fn pause_so_far(&mut self) -> Option<Instant> {
        let paused = self.inner.as_mut()?.paused.as_mut()?;
        Some(std::mem::replace(paused, Instant::now()))
    }

    /// Drive the calls that were woken; ready once the oldest entry is done (or
    /// none is left). Cancel-safe: nothing is lost when the caller drops the wait.
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(());
        };
        if inner.head.is_some() {
            return Poll::Ready(());
        }
        match inner.calls.poll_next_unpin(cx) {
            Poll::Ready(Some(outcome)) => {
                inner.head = Some(outcome);
                Poll::Ready(())
            }
            Poll::Ready(None) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Resolves once the oldest entry is done (at once when empty).
    pub(crate) fn head_done(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_head(cx))
    }

    /// Take the oldest entry if [`Pipeline::poll_head`] found it done.
    pub(crate) fn pop_done(&mut self) -> Option<Finished> {
        let inner = self.inner.as_mut()?;
        let outcome = inner.head.take()?;
        let e = inner.entries.pop_front().expect("bug: an entry per call");
        Some(Finished {
            id: e.id,
            started: e.started,
            outcome,
        })
    }

    /// Poll the calls once (a new call's first poll sends it), registering the
    /// caller's task for their wake-ups; never waits.
    pub(crate) async fn start(&mut self) {
        std::future::poll_fn(|cx| {
            let _ = self.poll_head(cx);
            Poll::Ready(())
        })
        .await
    }

    /// Take the oldest entry if it is done now, polling the calls without
    /// registering for a wake-up: only for a caller that polls
    /// [`Pipeline::poll_head`] again before it waits, as the connection's task
    /// does when it returns to its `select`.
    pub(crate) fn take_ready(&mut self) -> Option<Finished> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if self.poll_head(&mut cx).is_pending() {
            return None;
        }
        self.pop_done()
    }

    /// The oldest entry, once done; `None` when empty.
    pub(crate) async fn next(&mut self) -> Option<Finished> {
        self.head_done().await;
        self.pop_done()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use shared::codes::ERROR_TOO_MANY_REQUESTS;
    use shared::protocol::{EmptyResult, ReplyBody};
    use tokio::time::Instant;

    use super::{Call, Pipeline};
    use crate::conn::session::Failure;

    /// Calls start in order, finish in any order, and leave in order.
    #[tokio::test]
    async fn calls_start_in_order_and_leave_in_order() {
        let started: Arc<Mutex<Vec<u32>>> = Arc::default();
        let mut p = Pipeline::default();
        for id in 1..=5u32 {
            let started = started.clone();
            let call: Call = Box::pin(async move {
                started.lock().unwrap().push(id);
                // The later ones finish first.
                tokio::time::sleep(Duration::from_millis(u64::from(60 - 10 * id))).await;
                Ok(ReplyBody::Publish(EmptyResult {}))
            });
            p.push(id, Instant::now(), call);
            if id == 3 {
                p.push_done(
                    30,
                    Instant::now(),
                    Err(Failure::Error(ERROR_TOO_MANY_REQUESTS)),
                );
            }
        }
        assert_eq!(p.len(), 6);
        let mut out = Vec::new();
        while let Some(f) = tokio::time::timeout(Duration::from_secs(5), p.next())
            .await
            .unwrap()
        {
            out.push((f.id, f.outcome.is_ok()));
        }
        assert_eq!(*started.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            out,
            vec![
                (1, true),
                (2, true),
                (3, true),
                (30, false),
                (4, true),
                (5, true)
            ]
        );
        assert!(p.is_empty());
    }
}
