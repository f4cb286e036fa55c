//! Options every scenario shares: where the gateways are, how clients authenticate,
//! how long to run, and the bounds on connecting and draining.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shared::auth::{mint_hs256, unix_now, MintClaims};

/// Options shared by all scenarios (global flags of the `loadtest` binary).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonOptions {
    /// Gateway WebSocket URLs, comma-separated
    /// (`ws://a:8000/connection/websocket,ws://b:8000/connection/websocket`);
    /// clients are spread over them round-robin. Required.
    #[arg(long, value_delimiter = ',', global = true)]
    pub url: Vec<String>,
    /// HMAC secret of the gateways: each connection gets its own HS256 token
    /// (`sub` = `loadtest-<n>`). Default: none.
    #[arg(long, env = "LOADTEST_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,
    /// One connection token for every client, instead of --secret. Default: none
    /// (without either, clients connect without a token, which the gateway refuses
    /// unless anonymous connections are allowed).
    #[arg(long, global = true, conflicts_with = "secret")]
    pub token: Option<String>,
    /// Key of the gateways' server HTTP API (their `api_key`), for publishing
    /// through it (`fanout --publish-via api`). Default: none.
    #[arg(long, env = "LOADTEST_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// How long publishers publish, or `idle` holds its connections (humantime:
    /// 30s, 2m). Default 30s.
    #[arg(long, hide_default_value = true, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub duration: Duration,
    /// Local source addresses to bind, comma-separated (e.g. 127.0.0.2,127.0.0.3),
    /// used round-robin; each gives another ~28k ephemeral ports. Default: none.
    #[arg(long, value_delimiter = ',', global = true)]
    pub source_addr: Vec<IpAddr>,
    /// Connections being opened at once (TCP connect, handshake, connect and
    /// subscribe replies). Default 256.
    #[arg(long, hide_default_value = true, default_value_t = 256, global = true)]
    pub connect_concurrency: usize,
    /// Bound on opening one connection, and separately on its connect and subscribe
    /// replies. Default 10s.
    #[arg(long, hide_default_value = true, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// After publishing stops, how long to wait for publish acks and for in-flight
    /// deliveries. Default 5s.
    #[arg(long, hide_default_value = true, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub drain_timeout: Duration,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            url: Vec::new(),
            secret: None,
            token: None,
            api_key: None,
            duration: Duration::from_secs(30),
            source_addr: Vec::new(),
            connect_concurrency: 256,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl CommonOptions {
    /// The connection token for connection number `n`, if clients use one.
    pub fn token_for(&self, n: usize) -> Option<String> {
        if let Some(t) = &self.token {
            return Some(t.clone());
        }
        let secret = self.secret.as_deref()?;
        // Valid for the whole run with room to spare; a gateway closes expired
        // connections, which would read as a harness failure.
        let exp = unix_now() + self.duration.as_secs() + 3600;
        Some(mint_hs256(
            secret,
            &MintClaims {
                sub: format!("loadtest-{n}"),
                exp: Some(exp),
                ..Default::default()
            },
        ))
    }
}

/// `rooms` room names `<prefix>-<run id>-<n>`; the run id is random, so runs never
/// share rooms.
pub fn room_names(prefix: &str, rooms: u32) -> Vec<String> {
    let id = run_id();
    (0..rooms).map(|r| format!("{prefix}-{id}-{r}")).collect()
}

/// A short random id (from the standard library's random hasher keys).
fn run_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:06x}", h.finish() & 0xff_ffff)
}
