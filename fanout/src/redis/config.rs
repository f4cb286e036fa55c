//! The engine's settings: [`RedisConfig`] and its defaults. Read once at connect;
//! each part of the engine keeps the values it needs.

use std::time::Duration;

/// Settings of the Redis engine. `Debug` shows the URL without its passwords.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `redis+cluster://h1:p1,h2:p2` (the client has no TLS
    /// feature; the gateway's config refuses `rediss://`).
    pub url: String,
    /// Prefix of every key and channel. Default `gw`.
    pub prefix: String,
    /// Dedicated pub/sub connections rooms are spread over. Default 4.
    pub pubsub_shards: usize,
    /// Ordered delivery workers. Default 4.
    pub workers: usize,
    /// Messages a worker may have queued before further ones are dropped and the
    /// room is repaired from history. Default 65536.
    pub worker_queue: usize,
    /// Presence entries expire unless their node refreshes them (a crashed node's
    /// entries go away). Default 60s; refreshed every third of it.
    pub presence_ttl: Duration,
    /// Timeout of one command and of connecting. Default 5s.
    pub command_timeout: Duration,
    /// How often pub/sub connections and the command connection are probed; a probe
    /// unanswered within `command_timeout` restarts the connection. Default 5s.
    pub probe_interval: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be left out unnoticed.
        let RedisConfig {
            url,
            prefix,
            pubsub_shards,
            workers,
            worker_queue,
            presence_ttl,
            command_timeout,
            probe_interval,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &shared::redact::redact_url(url))
            .field("prefix", prefix)
            .field("pubsub_shards", pubsub_shards)
            .field("workers", workers)
            .field("worker_queue", worker_queue)
            .field("presence_ttl", presence_ttl)
            .field("command_timeout", command_timeout)
            .field("probe_interval", probe_interval)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "gw".into(),
            pubsub_shards: 4,
            workers: 4,
            worker_queue: 65536,
            presence_ttl: Duration::from_secs(60),
            command_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(5),
        }
    }
}
