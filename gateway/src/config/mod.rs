//! Node configuration: a TOML file (`--config` or `GATEWAY_CONFIG`) with environment
//! overrides merged after it, validated at start-up.
//!
//! Environment names are a public contract: `GATEWAY_LISTEN`,
//! `GATEWAY_TOKEN_HMAC_SECRET`, `GATEWAY_API_KEY`, `GATEWAY_REDIS_URL`,
//! `GATEWAY_NODE_NAME`, `GATEWAY_LOG`, `GATEWAY_LOG_FORMAT`, `GATEWAY_ALLOWED_ORIGINS`
//! (comma-separated), `GATEWAY_API_LISTEN`, `GATEWAY_ADMIN_LISTEN`, `GATEWAY_DEMO`.
//! One file per section; `Debug` (in `redact`) never shows a secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shared::auth::KeyConfig;
use shared::channel::ChannelName;

mod admin;
mod api;
mod channel;
mod client;
mod demo;
mod error;
mod http;
mod log;
mod proxy;
mod redact;
mod redis;

pub use admin::AdminConfig;
pub use api::ApiConfig;
pub use channel::ChannelOptions;
pub use client::ClientConfig;
pub use demo::{demo_room_options, DemoConfig, DemoSwitch, DEMO_NAMESPACE};
use error::invalid;
pub use error::ConfigError;
pub use http::HttpConfig;
pub use log::LogFormat;
pub use proxy::ProxyConfig;
pub use redis::RedisSection;

/// Everything a gateway node is configured with. `Debug` redacts the secrets.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds. Default `127.0.0.1:8000`.
    pub listen: String,
    /// This node's name in logs and the node registry. Default: the host name, or
    /// `gateway` when it cannot be read.
    pub node_name: String,
    /// Redis URL (`redis://host:port`, `redis+cluster://h1:p1,h2:p2`, or
    /// `redis+sentinel://s1:p1,s2:p2/master-name` for the primary Sentinel names).
    /// Absent: the in-memory engine, one node alone.
    pub redis_url: Option<String>,
    /// Key for the server HTTP API. Absent: the API is disabled.
    pub api_key: Option<String>,
    /// Tracing filter (`info`, `gateway=debug`, ...). Default `info`.
    pub log: String,
    /// Log line format: `text` (the default) or `json` (one object per line).
    pub log_format: String,
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
    /// HTTP limits before the WebSocket upgrade.
    pub http: HttpConfig,
    /// The server HTTP API.
    pub api: ApiConfig,
    /// Calls to the application backend.
    pub proxy: ProxyConfig,
    /// The admin listener (metrics, health).
    pub admin: AdminConfig,
    /// The demo chat page and its token endpoint.
    pub demo: DemoConfig,
    /// Set by the binary when no token key was configured and it generated a
    /// random HMAC secret for the run (development mode); never read from the
    /// file. Default false.
    #[serde(skip)]
    pub development: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            node_name: default_node_name(),
            redis_url: None,
            api_key: None,
            log: "info".into(),
            log_format: "text".into(),
            token: KeyConfig::default(),
            client: ClientConfig::default(),
            channel: ChannelOptions::default(),
            namespaces: HashMap::new(),
            heartbeat_interval: Duration::from_secs(5),
            redis: RedisSection::default(),
            shutdown: ShutdownConfig::default(),
            http: HttpConfig::default(),
            api: ApiConfig::default(),
            proxy: ProxyConfig::default(),
            admin: AdminConfig::default(),
            demo: DemoConfig::default(),
            development: false,
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
/// Why a channel name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    /// Longer than `client.max_channel_length`.
    TooLong,
    /// Its namespace is not configured.
    UnknownNamespace,
    /// It holds a control character, or `{` or `}` (which would change the Redis
    /// Cluster hash tag of the room's keys and split them over slots).
    BadCharacter,
}

/// Characters a channel name may not hold.
fn forbidden_in_channel(c: char) -> bool {
    c.is_control() || c == '{' || c == '}'
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, readiness turns false at once and the node keeps accepting
    /// clients this long, so load balancers stop sending new ones first. Default 5s.
    #[serde(with = "humantime_serde")]
    pub readiness_delay: Duration,
    /// Then the listener closes and clients are told 3001 spread evenly over this
    /// window, so the other nodes take them over gradually. Default 20s.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// From SIGTERM, how long until the process exits even with clients left.
    /// Must exceed `readiness_delay + drain_window`. Default 30s.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            readiness_delay: Duration::from_secs(5),
            drain_window: Duration::from_secs(20),
            grace_period: Duration::from_secs(30),
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
        if let Some(v) = var("GATEWAY_API_LISTEN") {
            self.api.listen = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = var("GATEWAY_ADMIN_LISTEN") {
            self.admin.listen = v;
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
        if let Some(v) = var("GATEWAY_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = var("GATEWAY_DEMO") {
            self.demo.enabled = v;
        }
        if let Some(v) = var("GATEWAY_ALLOWED_ORIGINS") {
            self.client.allowed_origins = v
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
    }

    /// The configured [`LogFormat`]; an unknown `log_format` is an error naming it.
    pub fn log_format(&self) -> Result<LogFormat, ConfigError> {
        LogFormat::parse(&self.log_format)
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
        self.log_format()?;
        if let Some(url) = &self.redis_url {
            // The redis client is built without a TLS feature: refuse `rediss://`
            // here rather than fail to connect at start.
            if url.starts_with("rediss://") {
                return Err(invalid(
                    "redis_url",
                    "rediss:// (TLS) is not supported by this build: use redis:// \
                     (e.g. through a TLS sidecar such as stunnel)",
                ));
            }
            if !["redis://", "redis+cluster://", "redis+sentinel://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(invalid(
                    "redis_url",
                    "must start with redis://, redis+cluster:// or redis+sentinel://",
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
        if c.command_rate_per_sec > 0 && c.command_burst == 0 {
            return Err(invalid(
                "client.command_burst",
                "must be > 0 when command_rate_per_sec is set",
            ));
        }
        if c.max_commands_per_frame == 0 {
            return Err(invalid("client.max_commands_per_frame", "must be > 0"));
        }
        if c.max_publishes_in_flight == 0 {
            return Err(invalid("client.max_publishes_in_flight", "must be > 0"));
        }
        self.http.validate()?;
        self.api.validate()?;
        self.admin.listen_addr()?;
        self.proxy.validate()?;
        self.channel.validate("channel", &self.proxy)?;
        for (name, ns) in &self.namespaces {
            if name.is_empty() || name.contains(shared::channel::NAMESPACE_SEPARATOR) {
                return Err(invalid(
                    format!("namespaces.{name:?}"),
                    "namespace names must be non-empty and have no ':'",
                ));
            }
            ns.validate(&format!("namespaces.{name}"), &self.proxy)?;
        }
        self.demo.validate()?;
        let s = &self.shutdown;
        if s.grace_period <= s.readiness_delay + s.drain_window {
            return Err(invalid(
                "shutdown.grace_period",
                "must exceed shutdown.readiness_delay + shutdown.drain_window",
            ));
        }
        Ok(())
    }

    /// Check a channel name and find its options.
    pub fn resolve_channel<'c, 'n>(
        &'c self,
        channel: &'n str,
    ) -> Result<(ChannelName<'n>, &'c ChannelOptions), ChannelError> {
        if channel.is_empty() {
            return Err(ChannelError::Empty);
        }
        if channel.len() > self.client.max_channel_length {
            return Err(ChannelError::TooLong);
        }
        if channel.chars().any(forbidden_in_channel) {
            return Err(ChannelError::BadCharacter);
        }
        let name = ChannelName::parse(channel);
        let opts = self
            .channel_options(name.namespace)
            .ok_or(ChannelError::UnknownNamespace)?;
        Ok((name, opts))
    }

    /// How often a node extends the read-made positions of rooms it has
    /// subscribers in: a third of the shortest history TTL (at least 500 ms);
    /// `None` when no namespace keeps history.
    pub(crate) fn position_keepalive_interval(&self) -> Option<Duration> {
        std::iter::once(&self.channel)
            .chain(self.namespaces.values())
            .filter_map(|o| o.history().map(|h| h.ttl))
            .min()
            .map(|ttl| (ttl / 3).max(Duration::from_millis(500)))
    }

    /// Development mode: no token key was configured, so the binary generated a
    /// random HMAC secret for this run (and set `development`).
    pub fn development_mode(&self) -> bool {
        self.development || !self.token.has_key()
    }

    /// Whether the demo page is served (on the client listener).
    pub fn demo_page(&self) -> bool {
        self.demo.page(self.development_mode())
    }

    /// The secret demo tokens are minted with, when this node mints them
    /// (`POST /demo/token` exists).
    pub fn demo_mint_secret(&self) -> Option<&str> {
        let mints = self.demo.mints(self.development_mode());
        mints.then_some(self.token.hmac_secret.as_deref()).flatten()
    }

    /// With the demo page on, the `demo` namespace gets [`demo_room_options`]
    /// unless the configuration defines it.
    pub(crate) fn add_demo_namespace(&mut self) {
        if self.demo_page() {
            self.namespaces
                .entry(DEMO_NAMESPACE.into())
                .or_insert_with(demo_room_options);
        }
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
        assert_eq!(
            c.admin.listen_addr().unwrap(),
            Some("127.0.0.1:9000".parse().unwrap())
        );
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
            "GATEWAY_ADMIN_LISTEN" => Some(String::new()),
            "GATEWAY_ALLOWED_ORIGINS" => Some("https://a.example, https://b.example".to_string()),
            _ => None,
        });
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9100");
        assert_eq!(
            c.admin.listen_addr().unwrap(),
            None,
            "empty: no admin listener"
        );
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
        let c = Config {
            redis_url: Some("rediss://redis.internal:6380".into()),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("redis_url") && e.contains("TLS"), "{e}");
    }
}
