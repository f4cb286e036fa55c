//! Node configuration: a TOML file (`--config` or `GATEWAY_CONFIG`) with environment
//! overrides merged after it, validated at start-up.
//!
//! Environment names are a public contract: `GATEWAY_LISTEN`,
//! `GATEWAY_TOKEN_HMAC_SECRET`, `GATEWAY_API_KEY`, `GATEWAY_REDIS_URL`,
//! `GATEWAY_NODE_NAME`, `GATEWAY_LOG`, `GATEWAY_ALLOWED_ORIGINS` (comma-separated).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shared::auth::KeyConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Everything a gateway node is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds. Default `127.0.0.1:8000`.
    pub listen: String,
    /// This node's name in logs and the node registry. Default: the host name, or
    /// `gateway` when it cannot be read.
    pub node_name: String,
    /// Redis URL (`redis://host:port` or `redis+cluster://h1:p1,h2:p2`). Absent: the
    /// in-memory engine, one node alone.
    pub redis_url: Option<String>,
    /// Key for the server HTTP API. Absent: the API is disabled.
    pub api_key: Option<String>,
    /// Tracing filter (`info`, `gateway=debug`, ...). Default `info`.
    pub log: String,
    /// Token verification keys.
    pub token: KeyConfig,
    /// Per-connection limits and timers.
    pub client: ClientConfig,
    /// Options of channels without a namespace.
    pub channel: ChannelOptions,
    /// Namespaces by name: a channel `ns:room` takes the options of `ns`.
    pub namespaces: HashMap<String, ChannelOptions>,
    /// How often the node announces itself to the cluster (node registry). Default 5s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Redis engine tuning (used when `redis_url` is set).
    pub redis: RedisSection,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            node_name: default_node_name(),
            redis_url: None,
            api_key: None,
            log: "info".into(),
            token: KeyConfig::default(),
            client: ClientConfig::default(),
            channel: ChannelOptions::default(),
            namespaces: HashMap::new(),
            heartbeat_interval: Duration::from_secs(5),
            redis: RedisSection::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

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
    /// Connections this node accepts; more get HTTP 503 so the client retries
    /// (another node, after backoff). Default 500000.
    pub max_connections: usize,
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
            max_connections: 500_000,
            allowed_origins: Vec::new(),
            allow_anonymous_connect_without_token: false,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}

/// Options of a channel, from its namespace (or the top level).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Publications kept per room; 0 disables history, positioning and recovery.
    /// Default 100.
    pub history_size: usize,
    /// How long history lives after the last publication. Default 300s.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long a room's position (offset, epoch) outlives its publications. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Track who is in a room; subscribers may call presence and presence_stats.
    /// Default true.
    pub presence: bool,
    /// Announce joins and leaves; delivered to subscribers that asked (`join_leave`).
    /// Default false.
    pub join_leave: bool,
    /// Subscribers may publish. Default true.
    pub allow_publish: bool,
    /// Any authenticated user may subscribe; otherwise a subscription token or the
    /// `channels` claim is needed. Default true.
    pub allow_subscribe: bool,
    /// Every subscription is recoverable, whether the client asked or not. Default false.
    pub force_recovery: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            history_meta_ttl: Duration::from_secs(7 * 24 * 3600),
            presence: true,
            join_leave: false,
            allow_publish: true,
            allow_subscribe: true,
            force_recovery: false,
        }
    }
}

impl ChannelOptions {
    pub fn history(&self) -> Option<fanout::HistoryOptions> {
        (self.history_size > 0 && !self.history_ttl.is_zero()).then_some(fanout::HistoryOptions {
            size: self.history_size,
            ttl: self.history_ttl,
            meta_ttl: self.history_meta_ttl,
        })
    }

    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return Err(invalid(
                format!("{field}.history_ttl"),
                "must be > 0 when history_size > 0",
            ));
        }
        if self.history_size > 0 && self.history_meta_ttl < self.history_ttl {
            return Err(invalid(
                format!("{field}.history_meta_ttl"),
                "must be >= history_ttl",
            ));
        }
        Ok(())
    }
}

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

impl Config {
    /// The Redis engine's settings, if a Redis URL is configured.
    pub fn redis_config(&self) -> Option<fanout::RedisConfig> {
        let r = &self.redis;
        self.redis_url.as_ref().map(|url| fanout::RedisConfig {
            url: url.clone(),
            prefix: r.prefix.clone(),
            pubsub_shards: r.pubsub_shards,
            workers: r.workers,
            presence_ttl: r.presence_ttl,
            command_timeout: r.command_timeout,
            probe_interval: r.probe_interval,
            ..fanout::RedisConfig::default()
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long clients get to go before the process exits. Default 25s.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(25),
        }
    }
}

impl Config {
    /// Load from `path` (if any), then apply environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<toml>".into(),
            source: Box::new(e),
        })
    }

    /// Environment overrides, looked up through `var` (tests pass their own).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("GATEWAY_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = var("GATEWAY_TOKEN_HMAC_SECRET") {
            self.token.hmac_secret = Some(v);
        }
        if let Some(v) = var("GATEWAY_API_KEY") {
            self.api_key = Some(v);
        }
        if let Some(v) = var("GATEWAY_REDIS_URL") {
            self.redis_url = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = var("GATEWAY_NODE_NAME") {
            self.node_name = v;
        }
        if let Some(v) = var("GATEWAY_LOG") {
            self.log = v;
        }
        if let Some(v) = var("GATEWAY_ALLOWED_ORIGINS") {
            self.client.allowed_origins = v
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|e| invalid("listen", format!("{:?} is not host:port: {e}", self.listen)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.node_name.is_empty() {
            return Err(invalid("node_name", "must not be empty"));
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+cluster://"))
            {
                return Err(invalid(
                    "redis_url",
                    "must start with redis://, rediss:// or redis+cluster://",
                ));
            }
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        let r = &self.redis;
        if r.prefix.is_empty() || r.prefix.contains(['{', '}']) {
            return Err(invalid("redis.prefix", "must be non-empty, without { or }"));
        }
        if r.pubsub_shards == 0 {
            return Err(invalid("redis.pubsub_shards", "must be > 0"));
        }
        if r.workers == 0 {
            return Err(invalid("redis.workers", "must be > 0"));
        }
        if r.presence_ttl < Duration::from_secs(1) {
            return Err(invalid("redis.presence_ttl", "must be at least 1s"));
        }
        if r.command_timeout.is_zero() {
            return Err(invalid("redis.command_timeout", "must be > 0"));
        }
        if r.probe_interval.is_zero() {
            return Err(invalid("redis.probe_interval", "must be > 0"));
        }
        if let Some(k) = &self.api_key {
            if k.is_empty() {
                return Err(invalid("api_key", "must not be empty when set"));
            }
        }
        if matches!(&self.token.hmac_secret, Some(s) if s.is_empty()) {
            return Err(invalid("token.hmac_secret", "must not be empty when set"));
        }
        shared::auth::Verifier::new(&self.token).map_err(|e| invalid("token", e.to_string()))?;
        let c = &self.client;
        if c.ping_interval.is_zero() {
            return Err(invalid("client.ping_interval", "must be > 0"));
        }
        if c.pong_timeout >= c.ping_interval {
            return Err(invalid(
                "client.pong_timeout",
                "must be shorter than client.ping_interval",
            ));
        }
        if c.connect_timeout.is_zero() {
            return Err(invalid("client.connect_timeout", "must be > 0"));
        }
        if c.write_timeout.is_zero() {
            return Err(invalid("client.write_timeout", "must be > 0"));
        }
        if c.queue_max_bytes < 1024 {
            return Err(invalid("client.queue_max_bytes", "must be at least 1024"));
        }
        if c.max_message_bytes < 1024 {
            return Err(invalid("client.max_message_bytes", "must be at least 1024"));
        }
        if c.max_channel_length == 0 {
            return Err(invalid("client.max_channel_length", "must be > 0"));
        }
        if c.max_connections == 0 {
            return Err(invalid("client.max_connections", "must be > 0"));
        }
        if c.publish_rate_per_sec > 0 && c.publish_burst == 0 {
            return Err(invalid(
                "client.publish_burst",
                "must be > 0 when publish_rate_per_sec is set",
            ));
        }
        self.channel.validate("channel")?;
        for (name, ns) in &self.namespaces {
            if name.is_empty() || name.contains(shared::channel::NAMESPACE_SEPARATOR) {
                return Err(invalid(
                    format!("namespaces.{name:?}"),
                    "namespace names must be non-empty and have no ':'",
                ));
            }
            ns.validate(&format!("namespaces.{name}"))?;
        }
        if self.shutdown.grace_period.is_zero() {
            return Err(invalid("shutdown.grace_period", "must be > 0"));
        }
        Ok(())
    }

    /// The options of `namespace` (`None`: top level); `None` for an unknown one.
    pub fn channel_options(&self, namespace: Option<&str>) -> Option<&ChannelOptions> {
        match namespace {
            None => Some(&self.channel),
            Some(ns) => self.namespaces.get(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_chat_friendly() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8000");
        assert_eq!(c.channel.history_size, 100);
        assert_eq!(c.channel.history_ttl, Duration::from_secs(300));
        assert!(c.channel.presence && c.channel.allow_publish && c.channel.allow_subscribe);
        assert!(!c.channel.join_leave);
    }

    #[test]
    fn file_then_env() {
        let mut c = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            [client]
            ping_interval = "5s"
            pong_timeout = "2s"
            [namespaces.news]
            history_size = 0
            allow_publish = false
            "#,
        )
        .unwrap();
        c.apply_env(|k| match k {
            "GATEWAY_LISTEN" => Some("127.0.0.1:9100".to_string()),
            "GATEWAY_ALLOWED_ORIGINS" => Some("https://a.example, https://b.example".to_string()),
            _ => None,
        });
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9100");
        assert_eq!(
            c.client.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(c.client.ping_interval, Duration::from_secs(5));
        let news = c.channel_options(Some("news")).unwrap();
        assert!(news.history().is_none() && !news.allow_publish);
        assert!(c.channel_options(Some("nope")).is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("lisen = 1").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let c = Config {
            listen: "nope".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
        let mut c = Config::default();
        c.client.pong_timeout = Duration::from_secs(30);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("client.pong_timeout"));
        let mut c = Config::default();
        c.token.rsa_public_key = Some("not a pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("token"));
    }
}
