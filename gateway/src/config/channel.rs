//! `[channel]` and `[namespaces.*]`: the options of a channel, from its namespace.

use std::time::Duration;

use serde::Deserialize;

use super::error::{invalid, ConfigError};
use super::proxy::ProxyConfig;

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
    /// Largest publication payload (`data`, bytes) from a client or the server API
    /// (107 beyond), so that history cannot grow Redis faster than this times
    /// `history_size` per room. Default 65536.
    pub max_publication_bytes: usize,
    /// Subscribes without a token ask `proxy.subscribe_url`, which decides instead of
    /// `allow_subscribe`. Default false.
    pub proxy_subscribe: bool,
    /// Client publications ask `proxy.publish_url`, which decides instead of
    /// `allow_publish` and may replace the data. Default false.
    pub proxy_publish: bool,
    /// Subscriptions the subscribe proxy gave an expiry ask
    /// `proxy.sub_refresh_url` when it comes. Default false.
    pub proxy_sub_refresh: bool,
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
            max_publication_bytes: 64 << 10,
            proxy_subscribe: false,
            proxy_publish: false,
            proxy_sub_refresh: false,
        }
    }
}

impl ChannelOptions {
    /// How long a stream position made by a read (a subscribe or history call on a
    /// room nobody has published to) lives: the history TTL, not
    /// `history_meta_ttl`, so reads of made-up names leave nothing lasting in the
    /// broker. Nodes keep the positions of rooms they have subscribers in.
    pub(crate) fn read_position_ttl(&self) -> Duration {
        self.history_ttl
    }

    pub fn history(&self) -> Option<fanout::HistoryOptions> {
        (self.history_size > 0 && !self.history_ttl.is_zero()).then_some(fanout::HistoryOptions {
            size: self.history_size,
            ttl: self.history_ttl,
            meta_ttl: self.history_meta_ttl,
        })
    }

    pub(crate) fn validate(&self, field: &str, proxy: &ProxyConfig) -> Result<(), ConfigError> {
        if self.max_publication_bytes == 0 {
            return Err(invalid(
                format!("{field}.max_publication_bytes"),
                "must be > 0",
            ));
        }
        let needs = [
            (
                self.proxy_subscribe,
                "proxy_subscribe",
                &proxy.subscribe_url,
                "proxy.subscribe_url",
            ),
            (
                self.proxy_publish,
                "proxy_publish",
                &proxy.publish_url,
                "proxy.publish_url",
            ),
            (
                self.proxy_sub_refresh,
                "proxy_sub_refresh",
                &proxy.sub_refresh_url,
                "proxy.sub_refresh_url",
            ),
        ];
        for (on, option, url, url_field) in needs {
            if on && url.is_none() {
                return Err(invalid(
                    format!("{field}.{option}"),
                    format!("needs {url_field}"),
                ));
            }
        }
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
