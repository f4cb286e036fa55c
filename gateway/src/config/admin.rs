//! `[admin]`: the operators' listener (metrics and health).

use std::net::SocketAddr;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// The admin listener: `GET /metrics` (Prometheus), `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener. Default `127.0.0.1:9000`; empty: no admin
    /// listener.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9000".into(),
        }
    }
}

impl AdminConfig {
    /// The address to bind, `None` when the admin listener is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|e| {
            invalid(
                "admin.listen",
                format!("{:?} is not host:port: {e}", self.listen),
            )
        })
    }
}
