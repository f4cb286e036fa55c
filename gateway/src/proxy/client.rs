//! The HTTP client every proxy call goes through: pooled keep-alive connections
//! (hyper-util's client), a cap on calls in flight per node, and one deadline per
//! call that covers waiting for a slot, the request and reading the reply.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a proxy call gave no usable reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("no free proxy slot within the timeout")]
    Busy,
    #[error("timed out")]
    Timeout,
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("reply body: {0}")]
    Body(String),
    #[error("reply is not the expected JSON: {0}")]
    Decode(String),
}

impl CallError {
    /// A label for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CallError::Busy => "busy",
            CallError::Timeout => "timeout",
            CallError::Request(_) => "request",
            CallError::Status(_) => "status",
            CallError::Body(_) => "body",
            CallError::Decode(_) => "decode",
        }
    }
}

pub(crate) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    slots: Semaphore,
    timeout: Duration,
    max_reply_bytes: usize,
}

impl HttpClient {
    pub(crate) fn new(timeout: Duration, max_in_flight: usize, max_reply_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // As many idle connections as calls may be in flight: a burst opens them
        // once, and later bursts reuse them instead of closing and reopening
        // (each close leaves a TIME_WAIT port behind).
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        HttpClient {
            client,
            slots: Semaphore::new(max_in_flight),
            timeout,
            max_reply_bytes,
        }
    }

    /// POST `body` (JSON) to `url` with `headers`, and decode the 200 reply as `T`.
    pub(crate) async fn post_json<T: DeserializeOwned>(
        &self,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<T, CallError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _slot = tokio::time::timeout_at(deadline, self.slots.acquire())
            .await
            .map_err(|_| CallError::Busy)?
            .expect("bug: the proxy semaphore is never closed");
        let mut req = Request::builder().method(Method::POST).uri(url.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Request(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Request(e.to_string()))?;
            if resp.status() != hyper::StatusCode::OK {
                return Err(CallError::Status(resp.status().as_u16()));
            }
            let bytes = Limited::new(resp.into_body(), self.max_reply_bytes)
                .collect()
                .await
                .map_err(|e| CallError::Body(e.to_string()))?
                .to_bytes();
            serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
        };
        tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}
