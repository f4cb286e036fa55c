//! A connection's mailbox: its bounded outbound queue. Producers (the hub, command
//! handling, timers) enqueue without blocking; the connection's task drains
//! everything queued on each wake. It knows no hub or connection types: the hub
//! reaches a connection only through it.
//! The budget is in bytes: a client whose queue passes it is closed with 3008 and
//! its queue dropped, so one slow socket never slows a room.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use shared::codes::{DisconnectCode, UnsubscribeCode, DISCONNECT_SLOW};
use shared::envelope::{RefreshCommand, SubscribeCommand};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Something for the writer to do, in order.
pub(crate) enum Item {
    /// One encoded reply or push.
    Data(Bytes),
    /// A WebSocket pong answering the client's ping frame.
    Pong(Bytes),
    /// End subscription `sub_id` to `channel` on the server's initiative (then push
    /// `unsubscribe`). The id makes a late item harmless to a newer subscription
    /// to the same channel.
    Unsubscribe {
        channel: Arc<str>,
        sub_id: u64,
        code: &'static UnsubscribeCode,
    },
    /// Subscribe to a channel, asked through the server API.
    Subscribe(Arc<SubscribeCommand>),
    /// Refresh or expire the connection, asked through the server API.
    Refresh(Arc<RefreshCommand>),
    /// The connection's expiry came: ask the refresh proxy.
    RefreshDue,
    /// Subscription `sub_id` to `channel` expired: ask the sub_refresh proxy.
    SubRefreshDue { channel: Arc<str>, sub_id: u64 },
}

/// How the connection is to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl From<DisconnectCode> for Close {
    fn from(d: DisconnectCode) -> Self {
        Close {
            code: d.code,
            reason: Cow::Borrowed(d.reason),
        }
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    close: Option<Close>,
    /// With a write delay: when what is queued goes out.
    flush_at: Option<Instant>,
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

/// What one drain took out of the queue.
pub(crate) struct Drained {
    /// Set once the connection is to be closed; the items before it still go out,
    /// except after a slow-client close, which drops them.
    pub close: Option<Close>,
}

impl Outbound {
    pub fn new(max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Outbound {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_bytes,
            metrics,
        }
    }

    /// Enqueue one message. Returns false if it was not queued: the connection is
    /// closing, or this message put it over budget (then it is closed as slow).
    pub fn push(&self, bytes: Bytes) -> bool {
        let was_empty = {
            let mut s = self.state.lock();
            if s.close.is_some() {
                return false;
            }
            if s.bytes + bytes.len() > self.max_bytes {
                drop(s);
                self.close_slow(bytes.len());
                return false;
            }
            s.bytes += bytes.len();
            s.items.push_back(Item::Data(bytes));
            s.items.len() == 1
        };
        // A queue that already held items has a wake-up pending: the push that made
        // it non-empty sent one, and only the writer's drain empties it. (Under
        // load most pushes land behind others; `notify_one` was 8% of the gateway's
        // CPU in a 10k fan-out profile.)
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Close as a slow client (3008), dropping what is queued and the `refused`
    /// bytes that did not fit.
    pub fn close_slow(&self, refused: usize) {
        let dropped = {
            let mut s = self.state.lock();
            if s.close.is_some() {
                return;
            }
            s.close = Some(DISCONNECT_SLOW.into());
            s.items.clear();
            std::mem::take(&mut s.bytes) + refused
        };
        self.metrics.slow_disconnects.inc();
        self.metrics.queue_dropped_bytes.inc_by(dropped as u64);
        self.notify.notify_one();
    }

    /// Enqueue a control item (not counted against the byte budget: bounded by the
    /// number of subscriptions and pings).
    pub fn push_item(&self, item: Item) {
        {
            let mut s = self.state.lock();
            if s.close.is_some() {
                return;
            }
            s.items.push_back(item);
        }
        self.notify.notify_one();
    }

    /// Ask the writer to close with `code`. The first close wins.
    pub fn close(&self, code: impl Into<Close>) {
        {
            let mut s = self.state.lock();
            if s.close.is_some() {
                return;
            }
            s.close = Some(code.into());
        }
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// The code the connection was (or is to be) closed with, once decided.
    pub fn close_code(&self) -> Option<u16> {
        self.state.lock().close.as_ref().map(|c| c.code)
    }

    /// Move everything queued into `into` (which the writer reuses between wakes),
    /// except that the first item queued stays `delay` (if not zero) so that
    /// others can join it: then `Err` with when it is due. A close is never held.
    pub fn drain_after(
        &self,
        into: &mut VecDeque<Item>,
        delay: Duration,
    ) -> Result<Drained, Instant> {
        let mut s = self.state.lock();
        if !delay.is_zero() && s.close.is_none() && !s.items.is_empty() {
            let now = Instant::now();
            let at = *s.flush_at.get_or_insert(now + delay);
            if now < at {
                return Err(at);
            }
        }
        Ok(Self::take(&mut s, into))
    }

    fn take(s: &mut State, into: &mut VecDeque<Item>) -> Drained {
        s.flush_at = None;
        std::mem::swap(&mut s.items, into);
        s.bytes = 0;
        Drained {
            close: s.close.clone(),
        }
    }

    /// Resolves after the next `push`/`close` (or at once if one happened since the
    /// last wake).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    /// Every queued message is an `Item`: a reused drain buffer holds a few of them
    /// for the life of an idle connection.
    #[test]
    fn an_item_is_no_larger_than_a_message() {
        let item = std::mem::size_of::<super::Item>();
        assert!(item <= 40, "Item is {item} B");
    }
}
