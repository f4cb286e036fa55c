//! How members came back: failed attempts by kind, and the close code of a node
//! shutting down (3001: reconnect). Reconnects per second are the run's `reconnect`
//! events (`timeline`), counted when each new connection's connect and subscribe
//! were answered, client-side.

use serde::Serialize;

use crate::client::ClientError;

/// The close code of a node that is shutting down: reconnect elsewhere.
pub(super) const SHUTDOWN_CLOSE: u16 = 3001;

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
    fn failures_count_by_kind() {
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
