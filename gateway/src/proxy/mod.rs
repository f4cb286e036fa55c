//! Calls to the application backend (the role Lambda played behind API Gateway):
//! connect, refresh, subscribe, publish, sub_refresh and rpc, each a JSON POST in
//! Centrifugo's proxy format (`shared::proxy`) with the client's forwarded headers.
//!
//! - `client`: the pooled HTTP client, its in-flight cap and per-call deadline.

mod client;

use std::sync::Arc;
use std::time::Instant;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Uri;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shared::proxy::{
    ConnectRequest, ConnectResult, Decision, PublishRequest, PublishResult, RefreshRequest,
    RefreshResult, Reply, RpcRequest, RpcResult, SubRefreshRequest, SubRefreshResult,
    SubscribeRequest, SubscribeResult,
};

pub(crate) use client::CallError;
use client::HttpClient;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;

/// The client headers kept for proxy calls: only the configured ones, and only
/// when a proxy is configured. Boxed twice so that a connection's slot for them is
/// one thin pointer (an idle connection pays 8 bytes when there are none).
pub(crate) type Headers = Box<Vec<(HeaderName, HeaderValue)>>;

/// Which proxy a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    SubRefresh,
    Rpc,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }
}

pub(crate) struct Proxy {
    http: HttpClient,
    connect: Option<Uri>,
    refresh: Option<Uri>,
    subscribe: Option<Uri>,
    publish: Option<Uri>,
    sub_refresh: Option<Uri>,
    rpc: Option<Uri>,
    forward: Vec<HeaderName>,
    metrics: Arc<Metrics>,
}

fn uri(url: &Option<String>) -> Option<Uri> {
    url.as_ref()
        .map(|u| u.parse().expect("bug: proxy URLs are validated at start"))
}

impl Proxy {
    /// The proxy of a node, if any URL is configured.
    pub(crate) fn new(cfg: &ProxyConfig, metrics: Arc<Metrics>) -> Option<Proxy> {
        if !cfg.any() {
            return None;
        }
        Some(Proxy {
            http: HttpClient::new(cfg.timeout, cfg.max_in_flight, cfg.max_reply_bytes),
            connect: uri(&cfg.connect_url),
            refresh: uri(&cfg.refresh_url),
            subscribe: uri(&cfg.subscribe_url),
            publish: uri(&cfg.publish_url),
            sub_refresh: uri(&cfg.sub_refresh_url),
            rpc: uri(&cfg.rpc_url),
            forward: cfg
                .forward_headers
                .iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .expect("bug: header names are validated at start")
                })
                .collect(),
            metrics,
        })
    }

    /// Whether calls of `kind` are configured.
    pub(crate) fn has(&self, kind: Kind) -> bool {
        self.url(kind).is_some()
    }

    fn url(&self, kind: Kind) -> Option<&Uri> {
        match kind {
            Kind::Connect => self.connect.as_ref(),
            Kind::Refresh => self.refresh.as_ref(),
            Kind::Subscribe => self.subscribe.as_ref(),
            Kind::Publish => self.publish.as_ref(),
            Kind::SubRefresh => self.sub_refresh.as_ref(),
            Kind::Rpc => self.rpc.as_ref(),
        }
    }

    /// The headers of an upgrade request that later proxy calls forward.
    pub(crate) fn keep_headers(&self, headers: &HeaderMap) -> Option<Headers> {
        let kept: Vec<(HeaderName, HeaderValue)> = self
            .forward
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect();
        (!kept.is_empty()).then(|| Box::new(kept))
    }

    async fn call<Req: Serialize, Res: DeserializeOwned + Default>(
        &self,
        kind: Kind,
        headers: Option<&Headers>,
        req: &Req,
    ) -> Result<Decision<Res>, CallError> {
        let url = self
            .url(kind)
            .expect("bug: a proxy call of a kind that is not configured");
        let body = serde_json::to_vec(req).expect("bug: proxy requests always serialize");
        let headers = headers.map_or(&[][..], |h| &h[..]);
        let start = Instant::now();
        let reply: Result<Reply<Res>, CallError> = self.http.post_json(url, headers, body).await;
        let result = reply.as_ref().map_or_else(CallError::kind, |_| "ok");
        self.metrics.proxy_called(kind.name(), result, start);
        Ok(reply?.decision())
    }

    pub(crate) async fn connect(
        &self,
        headers: Option<&Headers>,
        req: &ConnectRequest,
    ) -> Result<Decision<ConnectResult>, CallError> {
        self.call(Kind::Connect, headers, req).await
    }

    pub(crate) async fn refresh(
        &self,
        headers: Option<&Headers>,
        req: &RefreshRequest,
    ) -> Result<Decision<RefreshResult>, CallError> {
        self.call(Kind::Refresh, headers, req).await
    }

    pub(crate) async fn subscribe(
        &self,
        headers: Option<&Headers>,
        req: &SubscribeRequest,
    ) -> Result<Decision<SubscribeResult>, CallError> {
        self.call(Kind::Subscribe, headers, req).await
    }

    pub(crate) async fn publish(
        &self,
        headers: Option<&Headers>,
        req: &PublishRequest,
    ) -> Result<Decision<PublishResult>, CallError> {
        self.call(Kind::Publish, headers, req).await
    }

    pub(crate) async fn sub_refresh(
        &self,
        headers: Option<&Headers>,
        req: &SubRefreshRequest,
    ) -> Result<Decision<SubRefreshResult>, CallError> {
        self.call(Kind::SubRefresh, headers, req).await
    }

    pub(crate) async fn rpc(
        &self,
        headers: Option<&Headers>,
        req: &RpcRequest,
    ) -> Result<Decision<RpcResult>, CallError> {
        self.call(Kind::Rpc, headers, req).await
    }
}
