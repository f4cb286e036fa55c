//! `[demo]`: the chat page served at `/` (README "Try it in the browser"), the
//! demo token endpoint, and the `demo` namespace its rooms live in.
//!
//! The rules (`DemoConfig::page`, `DemoConfig::mints`, pure functions of this
//! section and of development mode): the page is on in development mode (no token
//! key configured, so the binary generated a secret) unless `enabled = false`, and
//! otherwise only with `enabled = true`; the node mints demo tokens only where the
//! page is on in development mode: with a key configured, `POST /demo/token` does
//! not exist, whatever the configuration says.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::channel::ChannelOptions;
use super::error::{invalid, ConfigError};

/// The namespace of the demo page's rooms: `demo:<room>`.
pub const DEMO_NAMESPACE: &str = "demo";

/// Whether the demo page is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSwitch {
    /// Only in development mode (no token key configured).
    Auto,
    On,
    Off,
}

impl DemoSwitch {
    /// `auto`, `true` or `false` (as in the file and `GATEWAY_DEMO`).
    pub fn parse(s: &str) -> Result<DemoSwitch, ConfigError> {
        match s.trim() {
            "auto" => Ok(DemoSwitch::Auto),
            "true" => Ok(DemoSwitch::On),
            "false" => Ok(DemoSwitch::Off),
            other => Err(invalid(
                "demo.enabled",
                format!("{other:?} is not \"auto\", true or false"),
            )),
        }
    }
}

/// The demo chat page and its token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// `"auto"` (the default): the page is served in development mode only (no
    /// token key configured); `true`: always; `false`: never. Kept as written
    /// (`GATEWAY_DEMO` overrides it) and checked by `validate`.
    #[serde(deserialize_with = "bool_or_string")]
    pub enabled: String,
    /// Lifetime of a demo connection token; the page asks for a new one before it
    /// expires. Default 15m.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// WebSocket URLs (`ws://host:port/connection/websocket`) the page moves
    /// through when the one it uses stays unreachable. Default empty: the page's
    /// own node only. Each node must accept the page's `Origin`
    /// (`client.allowed_origins`).
    pub endpoints: Vec<String>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: "auto".into(),
            token_ttl: Duration::from_secs(15 * 60),
            endpoints: Vec::new(),
        }
    }
}

/// `enabled = true` and `enabled = "auto"` both read.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Bool(bool),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::Bool(b) => b.to_string(),
        Either::Text(s) => s,
    })
}

/// Shortest and longest `token_ttl`: the SDK refreshes a token shortly before it
/// expires, and a demo token should not outlive a working day.
const MIN_TOKEN_TTL: Duration = Duration::from_secs(30);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The options of the demo rooms when the configuration does not define the
/// `demo` namespace: presence with join/leave notices, an hour of history (the
/// room's recent messages on entering, recovery after a drop), short messages.
pub fn demo_room_options() -> ChannelOptions {
    ChannelOptions {
        history_size: 100,
        history_ttl: Duration::from_secs(3600),
        presence: true,
        join_leave: true,
        allow_publish: true,
        allow_subscribe: true,
        max_publication_bytes: 8 << 10,
        ..ChannelOptions::default()
    }
}

impl DemoConfig {
    /// The switch; an unknown value is an error naming the field.
    pub fn switch(&self) -> Result<DemoSwitch, ConfigError> {
        DemoSwitch::parse(&self.enabled)
    }

    /// Whether the page is served, in `development` mode or not.
    pub fn page(&self, development: bool) -> bool {
        match self.switch() {
            Ok(DemoSwitch::Auto) => development,
            Ok(DemoSwitch::On) => true,
            Ok(DemoSwitch::Off) | Err(_) => false,
        }
    }

    /// Whether the node mints demo tokens (`POST /demo/token` exists): only with
    /// the page on in development mode. A node with a key configured never hands
    /// out tokens for the asking.
    pub fn mints(&self, development: bool) -> bool {
        development && self.page(development)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.switch()?;
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&self.token_ttl) {
            return Err(invalid(
                "demo.token_ttl",
                format!("must be between {MIN_TOKEN_TTL:?} and {MAX_TOKEN_TTL:?}"),
            ));
        }
        for url in &self.endpoints {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.contains(',') {
                return Err(invalid(
                    "demo.endpoints",
                    format!("{url:?} is not a ws:// or wss:// URL"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn with_key() -> Config {
        let mut c = Config::default();
        c.token.hmac_secret = Some("s".into());
        c
    }

    #[test]
    fn auto_is_on_only_in_development_mode() {
        // No key: development mode (the binary generates a secret).
        let mut c = Config::default();
        assert!(c.development_mode() && c.demo_page());
        assert_eq!(c.demo_mint_secret(), None, "no secret generated yet");
        c.token.hmac_secret = Some("generated".into());
        c.development = true;
        assert!(c.demo_page());
        assert_eq!(c.demo_mint_secret(), Some("generated"));
        c.demo.enabled = "false".into();
        assert!(!c.demo_page() && c.demo_mint_secret().is_none());

        // A configured key: off unless enabled, and never minting.
        let mut c = with_key();
        assert!(!c.development_mode() && !c.demo_page());
        c.demo.enabled = "true".into();
        c.validate().unwrap();
        assert!(c.demo_page());
        assert_eq!(c.demo_mint_secret(), None);
    }

    #[test]
    fn the_file_takes_a_bool_or_auto_and_the_env_overrides() {
        let c = Config::from_toml("[demo]\nenabled = true\n").unwrap();
        assert_eq!(c.demo.switch().unwrap(), DemoSwitch::On);
        let mut c = Config::from_toml("[demo]\nenabled = \"auto\"\n").unwrap();
        assert_eq!(c.demo.switch().unwrap(), DemoSwitch::Auto);
        c.apply_env(|k| (k == "GATEWAY_DEMO").then(|| "false".to_string()));
        assert_eq!(c.demo.switch().unwrap(), DemoSwitch::Off);
        c.apply_env(|k| (k == "GATEWAY_DEMO").then(|| "yes".to_string()));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("demo.enabled") && e.contains("yes"), "{e}");
        assert!(Config::from_toml("[demo]\nenabled = 1\n").is_err());
        assert!(Config::from_toml("development = true\n").is_err());
    }

    #[test]
    fn bad_demo_settings_name_the_field() {
        // There is no switch that makes a node with a key mint tokens.
        let e = Config::from_toml("[demo]\nenabled = true\nmint_tokens = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mint_tokens"), "{e}");

        let mut c = Config::default();
        c.demo.token_ttl = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().to_string().contains("token_ttl"));
        let mut c = Config::default();
        c.demo.endpoints = vec!["http://a:1/".into()];
        assert!(c.validate().unwrap_err().to_string().contains("endpoints"));
    }

    #[test]
    fn demo_rooms_get_presence_join_leave_and_history_unless_configured() {
        let mut c = Config::default();
        c.add_demo_namespace();
        let o = c.channel_options(Some(DEMO_NAMESPACE)).unwrap();
        assert!(o.presence && o.join_leave && o.history().is_some());

        let mut c = Config::from_toml("[namespaces.demo]\nhistory_size = 0\n").unwrap();
        c.add_demo_namespace();
        assert!(c.channel_options(Some("demo")).unwrap().history().is_none());

        let mut c = with_key();
        c.add_demo_namespace();
        assert!(c.channel_options(Some("demo")).is_none(), "demo off");
    }
}
