//! `[http]`: limits of the HTTP side of the node, before a connection becomes a
//! WebSocket (and for the server API's keep-alive connections).

use std::time::Duration;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// HTTP server limits: what a client that never finishes its request may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request's headers must arrive within this, or the connection is closed
    /// (a slow-headers attack holds nothing longer). It also closes keep-alive
    /// connections that send no next request within it. Default 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// HTTP connections not (yet) upgraded to WebSockets held at once: requests
    /// being read, keep-alive API connections. Beyond it new TCP connections are
    /// closed at once. Default 10000.
    pub max_pending_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            max_pending_connections: 10_000,
        }
    }
}

impl HttpConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.header_read_timeout.is_zero() {
            return Err(invalid("http.header_read_timeout", "must be > 0"));
        }
        if self.max_pending_connections == 0 {
            return Err(invalid("http.max_pending_connections", "must be > 0"));
        }
        Ok(())
    }
}
