//! The HTTP server: WebSocket upgrades at `/connection/websocket`, health at
//! `/healthz` and `/readyz`, the server API under `/api` (on the client listener
//! or its own), the demo chat page at `/` and `/demo/` (client listener, demo mode
//! only), metrics at `/metrics` on the admin listener, and graceful shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::API_PREFIX;
use crate::metrics::{HubCounts, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::node::Node;
use crate::origin::origin_allowed;

/// The WebSocket endpoint, as in Centrifugo.
pub const WEBSOCKET_PATH: &str = "/connection/websocket";

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("bug: static response")
}

/// Serve on `listener` until `shutdown` resolves, then drain: readiness goes false
/// at once, the listener closes `shutdown.readiness_delay` later, clients are told
/// 3001 spread over `shutdown.drain_window`, and this returns once every
/// connection has ended or `shutdown.grace_period` (from the signal) has passed. The server API (when
/// `api_key` is set) is served on the same listener.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    run_with(listener, None, node, shutdown).await
}

/// As [`run`], with the server API on its own listener when `api` is given
/// (`api.listen`), so that it can stay inside the cluster network.
pub async fn run_with(
    listener: TcpListener,
    api: Option<TcpListener>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
) {
    let listeners = Listeners {
        clients: listener,
        api,
        admin: None,
    };
    run_listeners(listeners, node, shutdown).await
}

/// What a node listens on.
#[derive(Debug)]
pub struct Listeners {
    /// WebSockets and health (and the API when it has no listener of its own).
    pub clients: TcpListener,
    /// The server API and health (`api.listen`).
    pub api: Option<TcpListener>,
    /// Metrics and health (`admin.listen`).
    pub admin: Option<TcpListener>,
}

/// As [`run`], on every listener of `listeners`. The API listener closes when the
/// drain begins; the admin listener serves until this returns.
pub async fn run_listeners(
    listeners: Listeners,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
) {
    // The admin listener and its connections live until this returns, so that
    // the drain can be watched; its own tracker keeps them out of the drain's wait.
    let admin_stop = CancellationToken::new();
    let _stop_admin_if_dropped = admin_stop.clone().drop_guard();
    let admin_tasks = TaskTracker::new();
    if let Some(admin) = listeners.admin {
        let conns = Conns {
            tasks: admin_tasks.clone(),
            stop: admin_stop.clone(),
        };
        let stop = admin_stop.clone().cancelled_owned();
        admin_tasks.spawn(accept(admin, node.clone(), Role::Admin, stop, conns));
    }
    let role = if let Some(api) = listeners.api {
        let stop = node.shutdown.clone();
        let api = accept(
            api,
            node.clone(),
            Role::Api,
            stop.cancelled_owned(),
            Conns::of(&node),
        );
        node.tasks.spawn(api);
        Role::Clients
    } else {
        Role::ClientsAndApi
    };
    let cfg = &node.config.shutdown;
    // Readiness turns false at the signal, while the listener keeps accepting for
    // `readiness_delay`: load balancers notice before clients are refused.
    let signalled = async {
        shutdown.await;
        node.set_ready(false);
        tracing::info!(
            readiness_delay = ?cfg.readiness_delay,
            "shutting down: readiness off, still accepting while load balancers notice"
        );
        tokio::time::sleep(cfg.readiness_delay).await;
    };
    let conns = Conns::of(&node);
    accept(listeners.clients, node.clone(), role, signalled, conns).await;
    let deadline =
        tokio::time::Instant::now() + cfg.grace_period.saturating_sub(cfg.readiness_delay);
    tracing::info!(
        clients = node.metrics.connections.get(),
        drain_window = ?cfg.drain_window,
        "listener closed: disconnecting clients with 3001, spread over the drain window"
    );
    node.begin_drain();
    node.tasks.close();
    let drained = tokio::time::timeout_at(deadline, node.tasks.wait()).await;
    match drained {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            remaining = node.metrics.connections.get(),
            "grace period over with connections still open"
        ),
    }
    admin_stop.cancel();
    admin_tasks.close();
    let _ = tokio::time::timeout(ADMIN_CLOSE_WAIT, admin_tasks.wait()).await;
}

/// How long the admin connections get to finish a request at the end.
const ADMIN_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a listener's HTTP connections are tracked, and what closes them.
struct Conns {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Conns {
    /// The node's: awaited by the drain, closed when it begins.
    fn of(node: &Node) -> Conns {
        Conns {
            tasks: node.tasks.clone(),
            stop: node.shutdown.clone(),
        }
    }
}

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// WebSockets and health; the API lives on its own listener.
    Clients,
    /// WebSockets, health and the API.
    ClientsAndApi,
    /// The API and health.
    Api,
    /// Metrics and health.
    Admin,
}

/// Accept HTTP connections on `listener` until `stop` resolves.
async fn accept(
    listener: TcpListener,
    node: Arc<Node>,
    role: Role,
    stop: impl Future<Output = ()>,
    conns: Conns,
) {
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "set_nodelay failed");
        }
        let node2 = node.clone();
        let service = service_fn(move |req| {
            let node = node2.clone();
            async move { Ok::<_, std::convert::Infallible>(route(node, role, req).await) }
        });
        let Some(pending) = PendingGuard::take(&node) else {
            // Over `http.max_pending_connections`: drop it before it costs more.
            tracing::debug!(%peer, "too many pending HTTP connections; closed");
            continue;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(node.config.http.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = conns.stop.clone();
        conns.tasks.spawn(async move {
            // Held while the HTTP side of the connection lives (until the upgrade).
            let _pending = pending;
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in flight, then close (upgraded sockets
                    // have left this future already and drain on their own).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "http connection error");
            }
        });
    }
}

/// One HTTP connection counted against `http.max_pending_connections` until it is
/// upgraded or closed.
struct PendingGuard(Arc<Node>);

impl PendingGuard {
    fn take(node: &Arc<Node>) -> Option<PendingGuard> {
        let cap = node.config.http.max_pending_connections;
        let counter = &node.http_pending;
        let mut n = counter.load(Ordering::Relaxed);
        loop {
            if n >= cap {
                return None;
            }
            match counter.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(PendingGuard(node.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.http_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

fn is_api_path(path: &str) -> bool {
    path.strip_prefix(API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

async fn route(node: Arc<Node>, role: Role, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if matches!(role, Role::ClientsAndApi | Role::Api) && is_api_path(path) {
        return crate::api::handle(node, req).await;
    }
    if matches!(role, Role::Clients | Role::ClientsAndApi) && crate::demo::serves(&node, path) {
        return crate::demo::handle(node, req).await;
    }
    match (req.method(), path) {
        (&Method::GET, WEBSOCKET_PATH) if matches!(role, Role::Clients | Role::ClientsAndApi) => {
            upgrade(node, req)
        }
        (&Method::GET, "/metrics") if role == Role::Admin => metrics(&node),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The node's metrics in the Prometheus text format.
fn metrics(node: &Node) -> Response<Body> {
    let hub = HubCounts {
        subscriptions: node.hub.num_subscriptions(),
        rooms: node.hub.num_rooms(),
        users: node.hub.num_users(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", METRICS_CONTENT_TYPE)
        .body(Full::new(Bytes::from(node.metrics.render(hub))))
        .expect("bug: static response")
}

fn upgrade(node: Arc<Node>, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    if !origin_allowed(&node, &req) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if node.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let json = offered.iter().any(|p| p == "centrifuge-json");
    if !offered.is_empty() && !json {
        return text(
            StatusCode::BAD_REQUEST,
            "only the JSON protocol (centrifuge-json) is served\n",
        );
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad upgrade request\n");
        }
    };
    // Released by the connection's teardown, or below if the upgrade fails.
    if !node.admit_connection() {
        node.metrics.connects_refused.inc();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    }
    let headers = node
        .proxy
        .as_ref()
        .and_then(|p| p.keep_headers(req.headers()));
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        match fut.await {
            Ok(ws) => crate::ws::serve(node, ws, headers).await,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                node.release_connection();
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    if json {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("centrifuge-json"),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
