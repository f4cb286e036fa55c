//! State one fanout run shares between its coordinator and its connection tasks:
//! the plan, counters, the latency recorder, connection events, the anomalies seen,
//! and the start and stop signals; what they report (ready, a publisher's account);
//! and opening a connection task's session.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::ApiRun;
use super::plan::Plan;
use crate::client::ClientError;
use crate::dial::{Dialer, Session};
use crate::latency::LatencyRecorder;
use crate::options::CommonOptions;
use crate::timeline::{Events, Sampled};

/// Anomalies kept for the report (they are all counted).
const ANOMALY_SAMPLES: usize = 1000;

/// Counters read while the run goes on (progress, the drain wait).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) deliveries: AtomicU64,
    pub(super) publications: AtomicU64,
    pub(super) publish_errors: AtomicU64,
}

/// A delivery that broke an order rule, where it was seen.
#[derive(Debug, Clone)]
pub(crate) struct Anomaly {
    pub(super) conn: usize,
    pub(super) room: u32,
    pub(super) kind: AnomalyKind,
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
    Connected {
        rooms: Vec<u32>,
        publisher: bool,
    },
    /// `kind`: [`ClientError::kind`].
    Failed {
        error: String,
        kind: String,
    },
}

/// A publisher's account, sent to the coordinator once its publishing is over.
#[derive(Debug)]
pub(crate) struct PublisherDone {
    pub publisher: u32,
    /// (room, stamp id, publications the server acked) of each of its streams.
    pub acked: Vec<(u32, u32, u64)>,
    /// Publications the server answered with an error (or, through the API, that
    /// failed).
    pub errors: u64,
    pub first_error: Option<String>,
    /// (room, stamp id, q) of refused publications (the first few thousand).
    pub refused: Vec<(u32, u32, u64)>,
    /// Sent but never answered within the drain timeout.
    pub unanswered: u64,
    /// Why publishing stopped early, if it did.
    pub stopped: Option<String>,
}

impl PublisherDone {
    /// The account of publisher `p` before it published.
    pub(crate) fn new(p: u32, rooms: &[u32]) -> PublisherDone {
        PublisherDone {
            publisher: p,
            acked: Vec::with_capacity(rooms.len()),
            errors: 0,
            first_error: None,
            refused: Vec::new(),
            unanswered: 0,
            stopped: None,
        }
    }
}

/// State shared by the coordinator and every connection task of one run.
pub(crate) struct Run {
    pub(super) plan: Plan,
    /// Set when publishers publish through the server API.
    pub(super) api: Option<ApiRun>,
    pub(super) common: CommonOptions,
    pub(super) dialer: Dialer,
    pub(super) payload: usize,
    pub(super) rate_per_publisher: f64,
    pub(super) counters: Counters,
    pub(super) latency: LatencyRecorder,
    /// Connects, connect errors and disconnects per second.
    pub(super) events: Events,
    pub(super) anomalies: Mutex<Vec<Anomaly>>,
    /// Ends every connection task.
    pub(super) cancel: CancellationToken,
    /// Set once to the instant publishing starts.
    pub(super) go: watch::Receiver<Option<Instant>>,
}

impl Run {
    /// Keep an anomaly for the report (the first [`ANOMALY_SAMPLES`]).
    pub(super) fn note(&self, a: Anomaly) {
        let mut v = self.anomalies.lock();
        if v.len() < ANOMALY_SAMPLES {
            v.push(a);
        }
    }

    /// Count a connection that ended before the run did, now.
    pub(super) fn disconnected(&self, e: &ClientError) {
        self.events
            .record(&format!("disconnect {}", e.kind()), Instant::now());
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
                kind: e.kind(),
            },
        ),
    };
    ready.send(msg).await.ok();
    session
}
