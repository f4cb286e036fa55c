//! `[proxy]`: the application backend's HTTP endpoints the node asks about
//! connects, refreshes, subscribes, publishes, subscription refreshes and RPCs.

use std::time::Duration;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// Where and how the node calls the application backend. Each URL is optional:
/// the connect, refresh and RPC proxies apply to every connection once set; the
/// subscribe, publish and sub_refresh proxies to the namespaces that turn them on
/// (`proxy_subscribe`, `proxy_publish`, `proxy_sub_refresh`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Asked when a client connects without a token. Default unset.
    pub connect_url: Option<String>,
    /// Asked when a connection the connect proxy admitted with an expiry reaches
    /// it (the server refreshes; the client sends nothing). Default unset.
    pub refresh_url: Option<String>,
    /// Asked when a client subscribes without a token to a channel of a namespace
    /// with `proxy_subscribe`. Default unset.
    pub subscribe_url: Option<String>,
    /// Asked before a client's publication in a namespace with `proxy_publish`; it
    /// may reject it or replace its data. Default unset.
    pub publish_url: Option<String>,
    /// Asked when a subscription the subscribe proxy gave an expiry reaches it, in
    /// namespaces with `proxy_sub_refresh`. Default unset.
    pub sub_refresh_url: Option<String>,
    /// Answers the clients' `rpc` commands. Default unset (`rpc` gets 108).
    pub rpc_url: Option<String>,
    /// Longest a proxy call may take, connecting and reading the reply included;
    /// beyond it the client gets the temporary error 100 and retries. Default 1s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Proxy calls one node makes at once; a call that finds none free within
    /// `timeout` fails like a timed-out one. Default 256.
    pub max_in_flight: usize,
    /// Headers of the client's WebSocket upgrade request forwarded with every proxy
    /// call (case-insensitive). Default: `Cookie`, `Authorization`, `Origin`,
    /// `User-Agent`, `X-Forwarded-For`, `X-Real-Ip`.
    pub forward_headers: Vec<String>,
    /// Largest reply body read from the backend. Default 1 MiB.
    pub max_reply_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_url: None,
            refresh_url: None,
            subscribe_url: None,
            publish_url: None,
            sub_refresh_url: None,
            rpc_url: None,
            timeout: Duration::from_secs(1),
            max_in_flight: 256,
            forward_headers: [
                "Cookie",
                "Authorization",
                "Origin",
                "User-Agent",
                "X-Forwarded-For",
                "X-Real-Ip",
            ]
            .map(String::from)
            .to_vec(),
            max_reply_bytes: 1 << 20,
        }
    }
}

impl ProxyConfig {
    /// Whether any proxy is configured (then the node keeps the forwarded headers
    /// of each connection).
    pub fn any(&self) -> bool {
        self.urls().any(|(_, u)| u.is_some())
    }

    fn urls(&self) -> impl Iterator<Item = (&'static str, &Option<String>)> {
        [
            ("proxy.connect_url", &self.connect_url),
            ("proxy.refresh_url", &self.refresh_url),
            ("proxy.subscribe_url", &self.subscribe_url),
            ("proxy.publish_url", &self.publish_url),
            ("proxy.sub_refresh_url", &self.sub_refresh_url),
            ("proxy.rpc_url", &self.rpc_url),
        ]
        .into_iter()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (field, url) in self.urls() {
            let Some(url) = url else { continue };
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| invalid(field, format!("{url:?}: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(invalid(
                    field,
                    format!("{url:?}: must be an http:// URL with a host"),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(invalid("proxy.timeout", "must be > 0"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("proxy.max_in_flight", "must be > 0"));
        }
        if self.max_reply_bytes < 1024 {
            return Err(invalid("proxy.max_reply_bytes", "must be at least 1024"));
        }
        for h in &self.forward_headers {
            hyper::header::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                invalid(
                    "proxy.forward_headers",
                    format!("{h:?} is not a header name"),
                )
            })?;
        }
        Ok(())
    }
}
