//! `[client]`: the limits and timers of one client connection.

use std::time::Duration;

use serde::Deserialize;

/// Limits and timers of one client connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Close with 3502 when no `connect` arrives within this. Default 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server ping interval. Default 25s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Close with 3012 when a ping is not answered within this; 0 disables pongs.
    /// Default 8s.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Grace after a connection token expires before closing with 3005. Default 25s.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Grace after a subscription token expires before the 2501 unsubscribe. Default 25s.
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
    /// Bytes queued for one client before it is closed with 3008. Default 1 MiB.
    pub queue_max_bytes: usize,
    /// A write to a client that does not complete within this ends the connection.
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// After sending a close frame, how long to wait for the client's close reply.
    /// Default 2s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Largest incoming WebSocket message. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Subscriptions per connection (error 106 beyond). Default 128.
    pub max_subscriptions: usize,
    /// Longest channel name in bytes (error 107 beyond). Default 255.
    pub max_channel_length: usize,
    /// Publications per second one connection may make (error 111 beyond); 0 is
    /// unlimited. Default 50.
    pub publish_rate_per_sec: u32,
    /// Burst allowance for `publish_rate_per_sec`. Default 100.
    pub publish_burst: u32,
    /// Commands other than publishes and pongs (which have their own budget or
    /// none) per second one connection may send (error 111 beyond), so subscribe,
    /// presence and history churn cannot load Redis or flood join/leave pushes; 0 is
    /// unlimited. Default 100.
    pub command_rate_per_sec: u32,
    /// Burst allowance for `command_rate_per_sec`. Default 200.
    pub command_burst: u32,
    /// Commands in one WebSocket message; more close the connection with 3013.
    /// Default 100.
    pub max_commands_per_frame: usize,
    /// Publishes of one connection in flight to the broker at once (started in
    /// the order sent, answered in that order). With this many waiting, the node
    /// stops reading the connection until one is answered, so TCP slows the
    /// client down. At least 1. Default 16.
    pub max_publishes_in_flight: usize,
    /// How long the first message queued for a client waits for others to share
    /// its WebSocket frame (one socket write). 0 writes as soon as the
    /// connection's task runs. A few milliseconds cut the writes, and the node's
    /// CPU, of clients that receive many messages a second, for that much latency.
    /// Default 0.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// The write delay while the node is saturated (its runtime runs tasks
    /// late; `gateway_scheduler_lag_seconds`): then fewer, larger writes leave
    /// more CPU for the backlog. 0 keeps `write_delay` always. Default 20ms.
    #[serde(with = "humantime_serde")]
    pub busy_write_delay: Duration,
    /// Connections this node accepts; more get HTTP 503 so the client retries
    /// (another node, after backoff). Default 500000.
    pub max_connections: usize,
    /// Connections one user (not anonymous) may hold on this node; a `connect`
    /// beyond gets error 106. 0 is unlimited. Default 0.
    pub max_connections_per_user: usize,
    /// Subscription tokens that fail verification (bad signature, wrong key,
    /// malformed) one connection may present before it is closed with 3509; 0
    /// never closes. Expired tokens do not count. Default 5.
    pub max_invalid_sub_tokens: u32,
    /// Allowed `Origin` values (`*` for any). Requests without Origin, and requests
    /// whose Origin host equals the Host header, are always accepted. Default empty.
    pub allowed_origins: Vec<String>,
    /// Accept a `connect` without a token as an anonymous user. Default false.
    pub allow_anonymous_connect_without_token: bool,
    /// Cap for `history` limits (and `limit: -1`). Default 300.
    pub history_max_publication_limit: usize,
    /// Most publications one recovery returns; a larger gap is `recovered:false`.
    /// Default 300.
    pub recovery_max_publication_limit: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            queue_max_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_message_bytes: 64 << 10,
            max_subscriptions: 128,
            max_channel_length: 255,
            publish_rate_per_sec: 50,
            publish_burst: 100,
            command_rate_per_sec: 100,
            command_burst: 200,
            max_commands_per_frame: 100,
            max_publishes_in_flight: 16,
            write_delay: Duration::ZERO,
            busy_write_delay: Duration::from_millis(20),
            max_connections: 500_000,
            max_connections_per_user: 0,
            max_invalid_sub_tokens: 5,
            allowed_origins: Vec::new(),
            allow_anonymous_connect_without_token: false,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}
