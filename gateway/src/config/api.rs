//! `[api]`: the server HTTP API (enabled by `api_key`).

use std::time::Duration;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// Server HTTP API settings. The API is served only when `api_key` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API on this address instead of the client port (e.g. one only the
    /// cluster network reaches). Default: unset, the client port serves it.
    pub listen: Option<String>,
    /// Largest request body; larger ones get HTTP 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Channels of one `broadcast`, and commands of one parallel `batch`, in flight
    /// at once. Default 32.
    pub parallelism: usize,
    /// How long `channels` waits for every node's answer. Default 2s.
    #[serde(with = "humantime_serde")]
    pub survey_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            max_body_bytes: 1 << 20,
            parallelism: 32,
            survey_timeout: Duration::from_secs(2),
        }
    }
}

impl ApiConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("api.listen", format!("{l:?} is not host:port: {e}")))?;
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if self.parallelism == 0 {
            return Err(invalid("api.parallelism", "must be > 0"));
        }
        if self.survey_timeout.is_zero() {
            return Err(invalid("api.survey_timeout", "must be > 0"));
        }
        Ok(())
    }
}
