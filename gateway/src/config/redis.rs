//! `[redis]`: tuning of the Redis engine, used when `redis_url` is set.

use std::time::Duration;

use serde::Deserialize;

/// Redis engine settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// Prefix of every key and channel, so several deployments can share a Redis.
    /// Default `gw`.
    pub prefix: String,
    /// Dedicated pub/sub connections rooms are spread over. Default 4.
    pub pubsub_shards: usize,
    /// Ordered delivery workers. Default 4.
    pub workers: usize,
    /// Presence entries of a node that stops refreshing them (it crashed) expire
    /// after this. Default 60s.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Timeout of one Redis command and of connecting. Default 5s.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often connections are probed; a silent one is restarted. Default 5s.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for RedisSection {
    fn default() -> Self {
        let d = fanout::RedisConfig::default();
        RedisSection {
            prefix: d.prefix,
            pubsub_shards: d.pubsub_shards,
            workers: d.workers,
            presence_ttl: d.presence_ttl,
            command_timeout: d.command_timeout,
            probe_interval: d.probe_interval,
        }
    }
}
