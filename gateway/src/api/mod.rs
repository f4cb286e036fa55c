//! The server HTTP API (docs/protocol.md §10): `POST /api/<method>` with a JSON
//! body, compatible with Centrifugo's so that its client libraries work unchanged.
//! Any node answers for the whole cluster.
//!
//! - `dispatch`: from method and body to result; `batch`; the legacy route.
//! - `publish`: publish, broadcast.
//! - `users`: subscribe, unsubscribe, disconnect, refresh (cluster-wide commands).
//! - `rooms`: presence, presence_stats, history, history_remove, channels, info.
//! - `channel`: the checks those share.
//!
//! Off (404) unless `api_key` is set; the key comes in `X-API-Key: <key>` or
//! `Authorization: apikey <key>` and is compared in constant time.

mod channel;
mod dispatch;
mod publish;
mod rooms;
mod users;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method as HttpMethod, Request, Response, StatusCode};
use shared::api::{ApiError, Method};
use subtle::ConstantTimeEq;

use crate::node::Node;
use dispatch::CallError;

/// Where the API lives.
pub(crate) const API_PREFIX: &str = "/api";

/// Header that asks for errors as HTTP statuses (Centrifugo's "transport" mode).
const ERROR_MODE_HEADER: &str = "x-centrifugo-error-mode";

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let empty = body.is_empty();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if !empty {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    respond(status, "application/json", body)
}

/// Whether the request carries the configured key.
fn authorized(key: &str, req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    let given = match headers.get("x-api-key") {
        Some(v) => v.as_bytes(),
        None => match headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) {
            Some(v) if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"apikey ") => &v[7..],
            _ => return false,
        },
    };
    given.ct_eq(key.as_bytes()).into()
}

/// The HTTP status of an API error in transport error mode (as Centrifugo maps
/// them).
fn transport_status(code: u32) -> StatusCode {
    match code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Serve one API request (its path starts with [`API_PREFIX`]).
pub(crate) async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let Some(key) = node.config.api_key.as_deref() else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let path = req.uri().path();
    let method = match path.strip_prefix(API_PREFIX) {
        Some("") | Some("/") => None,
        Some(rest) => match rest.strip_prefix('/').and_then(Method::from_name) {
            Some(m) if rest[1..] == *m.name() => Some(m),
            _ => return plain(StatusCode::NOT_FOUND, "no such API method\n"),
        },
        None => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if req.method() != HttpMethod::POST {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "", Vec::new());
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !authorized(key, &req) {
        return respond(StatusCode::UNAUTHORIZED, "", Vec::new());
    }
    if node.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let transport_errors = req
        .headers()
        .get(ERROR_MODE_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport"));
    let max = node.config.api.max_body_bytes;
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {max} bytes\n"),
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "API request body unreadable");
            return plain(StatusCode::BAD_REQUEST, "request body unreadable\n");
        }
    };
    let Some(method) = method else {
        return match dispatch::legacy(&node, &body).await {
            Ok(out) => json(StatusCode::OK, out),
            Err(e) => plain(StatusCode::BAD_REQUEST, &format!("bad request: {e}\n")),
        };
    };
    match dispatch::call(&node, method, &body).await {
        Ok(result) if method == Method::Batch => {
            // Batch replies stand at the top level, not under `result`.
            json(StatusCode::OK, result.get().as_bytes().to_vec())
        }
        Ok(result) => {
            let mut out = Vec::with_capacity(result.get().len() + 11);
            out.extend_from_slice(b"{\"result\":");
            out.extend_from_slice(result.get().as_bytes());
            out.push(b'}');
            json(StatusCode::OK, out)
        }
        Err(CallError::BadJson(e)) => {
            plain(StatusCode::BAD_REQUEST, &format!("bad request: {e}\n"))
        }
        Err(CallError::Api(e)) if transport_errors => json(
            transport_status(e.code),
            serde_json::to_vec(&e).expect("bug: errors serialize"),
        ),
        Err(CallError::Api(e)) => json(StatusCode::OK, error_body(&e)),
    }
}

fn error_body(e: &ApiError) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Wrapped<'a> {
        error: &'a ApiError,
    }
    serde_json::to_vec(&Wrapped { error: e }).expect("bug: errors serialize")
}
