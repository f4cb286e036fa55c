//! How members came back: reconnects per second of the run (when each new
//! connection's connect and subscribe were answered, client-side), failed attempts
//! by kind, and connections the server closed with 3001 (shutdown, reconnect).

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::ClientError;

/// The close code of a node that is shutting down: reconnect elsewhere.
pub(super) const SHUTDOWN_CLOSE: u16 = 3001;

/// Reconnects counted per whole second since the start of the run.
pub(crate) struct Series {
    t0: Instant,
    /// Wall-clock milliseconds of `t0`, to line the series up with other events.
    pub(super) started_unix_ms: u64,
    buckets: Mutex<Vec<u64>>,
}

impl Series {
    pub(super) fn new() -> Series {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Series {
            t0: Instant::now(),
            started_unix_ms: unix,
            buckets: Mutex::new(Vec::new()),
        }
    }

    /// Count one reconnect accepted at `at`.
    pub(super) fn record(&self, at: Instant) {
        let second = at.duration_since(self.t0).as_secs() as usize;
        let mut b = self.buckets.lock();
        if b.len() <= second {
            b.resize(second + 1, 0);
        }
        b[second] += 1;
    }

    /// Reconnects in each second since the start.
    pub(super) fn per_second(&self) -> Vec<u64> {
        self.buckets.lock().clone()
    }
}

/// Failed connect attempts by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectFailures {
    /// The TCP connect failed (e.g. connection refused).
    pub tcp: u64,
    /// The upgrade was answered with another HTTP status than 101 (e.g. 503).
    pub http_status: u64,
    /// Other WebSocket handshake or I/O errors, and closes during the setup.
    pub handshake: u64,
    /// The server refused `connect` or `subscribe` with an error.
    pub refused: u64,
    /// No answer in time.
    pub timeout: u64,
    pub other: u64,
}

impl ConnectFailures {
    pub(super) fn count(&mut self, e: &ClientError) {
        use fastwebsockets::WebSocketError;
        let n = match e {
            ClientError::Tcp { .. } => &mut self.tcp,
            ClientError::Handshake {
                source: WebSocketError::InvalidStatusCode(_),
                ..
            } => &mut self.http_status,
            ClientError::Handshake { .. } | ClientError::Ws(_) | ClientError::Closed { .. } => {
                &mut self.handshake
            }
            ClientError::Refused { .. } => &mut self.refused,
            ClientError::Timeout { .. } => &mut self.timeout,
            _ => &mut self.other,
        };
        *n += 1;
    }

    pub(super) fn add(&mut self, o: &ConnectFailures) {
        self.tcp += o.tcp;
        self.http_status += o.http_status;
        self.handshake += o.handshake;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.other += o.other;
    }

    pub fn total(&self) -> u64 {
        self.tcp + self.http_status + self.handshake + self.refused + self.timeout + self.other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn series_counts_per_whole_second_and_failures_by_kind() {
        let s = Series::new();
        s.record(s.t0 + Duration::from_millis(100));
        s.record(s.t0 + Duration::from_millis(2500));
        s.record(s.t0 + Duration::from_millis(2900));
        assert_eq!(s.per_second(), vec![1, 0, 2]);

        let mut f = ConnectFailures::default();
        f.count(&ClientError::Timeout {
            what: "connect",
            after: Duration::from_secs(1),
        });
        f.count(&ClientError::Refused {
            what: "connect".into(),
            code: 109,
            message: String::new(),
        });
        let mut sum = ConnectFailures::default();
        sum.add(&f);
        sum.add(&f);
        assert_eq!((sum.timeout, sum.refused, sum.total()), (2, 2, 4));
    }
}
