//! Publishing through the gateways' server HTTP API (`--publish-via api`): the
//! options, the endpoints and what the API lanes of a run count (see `lanes` for
//! the lanes themselves), and its part of the report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context};
use parking_lot::Mutex;
use serde::Serialize;

use crate::client::Endpoint;
use crate::latency::{LatencyRecorder, LatencyUs};
use crate::options::CommonOptions;

/// How publishers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// The `publish` command on the publisher's own WebSocket connection.
    #[value(alias = "ws")]
    Websocket,
    /// `POST /api/publish`, the server HTTP API.
    Api,
}

/// How a fanout or chat run publishes (flattened into their options).
#[derive(Debug, Clone, clap::Args)]
pub struct PublishOptions {
    /// `websocket` (alias `ws`): the publish command on each publisher's connection;
    /// `api`: POST /api/publish to the gateways' server HTTP API (needs --api-key,
    /// which `loadtest cluster` provides). Publishers keep their connection either
    /// way and receive their rooms. Default websocket.
    #[arg(long, value_enum, hide_default_value = true, default_value_t = PublishVia::Websocket)]
    pub publish_via: PublishVia,
    /// Base URLs of the server API, comma-separated (`http://host:port/api`); lanes
    /// use them round-robin. Default: each --url's host and port, path `/api`.
    #[arg(long, value_delimiter = ',')]
    pub api_url: Vec<String>,
    /// With --publish-via api: keep-alive HTTP connections (lanes) per publisher,
    /// each with one request at a time and its own sequence numbers (stamp
    /// publisher id = publisher x lanes + lane). Default 16.
    #[arg(long, hide_default_value = true, default_value_t = 16)]
    pub api_in_flight: u32,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            publish_via: PublishVia::Websocket,
            api_url: Vec::new(),
            api_in_flight: 16,
        }
    }
}

/// Most lanes per publisher.
const MAX_LANES: u32 = 1024;
/// Error kinds counted apart; beyond them errors count as `other`.
const MAX_ERROR_KINDS: usize = 64;

impl PublishOptions {
    /// Sequence streams per publisher and room.
    pub(super) fn lanes(&self) -> u32 {
        match self.publish_via {
            PublishVia::Websocket => 1,
            PublishVia::Api => self.api_in_flight,
        }
    }

    pub(super) fn validate(&self, common: &CommonOptions, publishers: u32) -> anyhow::Result<()> {
        if self.publish_via == PublishVia::Websocket {
            if !self.api_url.is_empty() {
                bail!("--api-url is for --publish-via api");
            }
            return Ok(());
        }
        if common.api_key.is_none() {
            bail!("--publish-via api needs the gateways' API key: pass --api-key (or LOADTEST_API_KEY), or run under `loadtest cluster`");
        }
        if !(1..=MAX_LANES).contains(&self.api_in_flight) {
            bail!("--api-in-flight must be 1 to {MAX_LANES}");
        }
        if publishers.checked_mul(self.api_in_flight).is_none() {
            bail!("--publishers x --api-in-flight is too large");
        }
        Ok(())
    }
}

/// `ws://host:port/...` -> `http://host:port/api`.
fn api_base(ws_url: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = ws_url
        .parse()
        .with_context(|| format!("bad url {ws_url:?}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("bad url {ws_url:?}: no host"))?;
    Ok(format!("http://{authority}/api"))
}

/// What the API lanes of a run share: where to publish, and what they count.
pub(crate) struct ApiRun {
    /// The `/publish` endpoints, one per API base URL.
    pub(super) targets: Vec<Endpoint>,
    /// Extra request header lines (the key).
    pub(super) headers: String,
    /// Publish request round trips, microseconds.
    pub(super) latency: LatencyRecorder,
    pub(super) requests: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl ApiRun {
    /// The API of a run, when it publishes through it.
    pub(super) async fn new(
        common: &CommonOptions,
        opts: &PublishOptions,
        shards: usize,
    ) -> anyhow::Result<Option<ApiRun>> {
        if opts.publish_via != PublishVia::Api {
            return Ok(None);
        }
        let bases = if opts.api_url.is_empty() {
            common
                .url
                .iter()
                .map(|u| api_base(u))
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            opts.api_url.clone()
        };
        let mut targets = Vec::new();
        for base in &bases {
            let url = format!("{}/publish", base.trim_end_matches('/'));
            targets.push(Endpoint::resolve_http(&url).await?);
        }
        let key = common.api_key.as_deref().unwrap_or_default();
        if key.contains(['\r', '\n']) {
            bail!("--api-key must be one line");
        }
        Ok(Some(ApiRun {
            targets,
            headers: format!("x-api-key: {key}\r\n"),
            latency: LatencyRecorder::new(shards),
            requests: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }))
    }

    pub(super) fn count_error(&self, kind: String) {
        let mut errors = self.errors.lock();
        let kind = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(&kind) {
            kind
        } else {
            "other".into()
        };
        *errors.entry(kind).or_default() += 1;
    }

    /// For the report.
    pub(super) fn figures(&self, lanes: u32) -> ApiFigures {
        ApiFigures {
            urls: self.targets.iter().map(|t| t.url.clone()).collect(),
            connections_per_publisher: lanes,
            requests: self.requests.load(Ordering::Relaxed),
            request_latency_us: LatencyUs::of(&self.latency.merged()),
            errors: self.errors.lock().clone(),
        }
    }
}

/// Publishing through the server API (`--publish-via api`).
#[derive(Debug, Clone, Serialize)]
pub struct ApiFigures {
    /// The publish endpoints, used round-robin.
    pub urls: Vec<String>,
    /// Keep-alive connections (lanes) per publisher, one request in flight each.
    pub connections_per_publisher: u32,
    /// Publish requests sent (answered or not).
    pub requests: u64,
    /// Publish request round trips (request written to response read);
    /// `null` when none was answered.
    pub request_latency_us: Option<LatencyUs>,
    /// Failures by kind: `http <status>`, `error <API code>`, `reply` (not the
    /// expected JSON), `timeout`, `io <kind>`, `closed`, `connect <kind>`.
    pub errors: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_follow_the_websocket_urls() {
        assert_eq!(
            api_base("ws://127.0.0.1:8000/connection/websocket").unwrap(),
            "http://127.0.0.1:8000/api"
        );
    }
}
