//! `loadtest backend`: a stand-in application backend for the gateways' proxies
//! (Centrifugo's HTTP proxy format). `POST .../connect` admits every client at once
//! as a user of its own (`backend-<n>`, n counting the connect calls);
//! `refresh`, `subscribe`, `publish`, `sub_refresh` and `rpc` answer
//! `{"result":{}}`. It counts the calls by kind, so a connect storm through the
//! connect proxy can be checked against it. Keep-alive HTTP/1.1, bounded
//! connections and bodies.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{read_request, write_response};
use crate::sys;

/// Options of `loadtest backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendOptions {
    /// Address to listen on; the gateways' `[proxy] connect_url` is then
    /// `http://ADDR/connect`. Default 127.0.0.1:9000.
    #[arg(long, hide_default_value = true, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
}

/// Connections served at once; further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 10_000;
/// Bound on the connection tasks ending once the backend stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls answered, by proxy kind.
#[derive(Debug, Default)]
struct Counters {
    connect: AtomicU64,
    refresh: AtomicU64,
    subscribe: AtomicU64,
    publish: AtomicU64,
    sub_refresh: AtomicU64,
    rpc: AtomicU64,
    /// Requests to other paths or with other methods (answered 404 or 405).
    other: AtomicU64,
}

/// Calls a backend answered, by proxy kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BackendCounts {
    pub connect: u64,
    pub refresh: u64,
    pub subscribe: u64,
    pub publish: u64,
    pub sub_refresh: u64,
    pub rpc: u64,
    pub other: u64,
}

impl fmt::Display for BackendCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connect {}, refresh {}, subscribe {}, publish {}, sub_refresh {}, rpc {}, other {}",
            self.connect,
            self.refresh,
            self.subscribe,
            self.publish,
            self.sub_refresh,
            self.rpc,
            self.other
        )
    }
}

/// A running backend; [`Backend::stop`] ends it.
pub struct Backend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
    accept: JoinHandle<()>,
}

impl Backend {
    /// Listen on `listen` (port 0: any free one) and serve until stopped.
    pub async fn start(listen: SocketAddr) -> anyhow::Result<Backend> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("backend: listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let accept = tokio::spawn(accept_loop(
            listener,
            counters.clone(),
            cancel.clone(),
            slots.clone(),
        ));
        Ok(Backend {
            addr,
            counters,
            cancel,
            slots,
            accept,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of its connect endpoint.
    pub fn connect_url(&self) -> String {
        format!("http://{}/connect", self.addr)
    }

    /// Calls answered so far.
    pub fn counts(&self) -> BackendCounts {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackendCounts {
            connect: n(&c.connect),
            refresh: n(&c.refresh),
            subscribe: n(&c.subscribe),
            publish: n(&c.publish),
            sub_refresh: n(&c.sub_refresh),
            rpc: n(&c.rpc),
            other: n(&c.other),
        }
    }

    /// Stop accepting, end every connection (bounded) and return the counts.
    pub async fn stop(mut self) -> BackendCounts {
        self.cancel.cancel();
        (&mut self.accept).await.ok();
        // Every connection task holds a slot until it ends.
        let all = u32::try_from(MAX_CONNECTIONS).expect("bug: small bound");
        tokio::time::timeout(STOP_TIMEOUT, self.slots.acquire_many(all))
            .await
            .ok();
        self.counts()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Its tasks end with it, also when it was not stopped.
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
) {
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => s.expect("bug: the slots are never closed"),
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: wait, then go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        stream.set_nodelay(true).ok();
        let (counters, cancel) = (counters.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_connection(stream, &counters) => {}
            }
            drop(slot);
        });
    }
}

/// Answer requests on one connection until the client closes it or errs.
async fn serve_connection(mut stream: TcpStream, counters: &Counters) {
    let mut buf = Vec::with_capacity(1024);
    while let Ok(Some(req)) = read_request(&mut stream, &mut buf).await {
        let (status, body) = answer(counters, &req.method, &req.path);
        if write_response(&mut stream, status, body.as_bytes())
            .await
            .is_err()
            || req.close
        {
            return;
        }
    }
}

/// The status and body for a request; counts it.
fn answer(c: &Counters, method: &str, path: &str) -> (u16, String) {
    let kind = path
        .split('?')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let counter = match kind {
        "connect" => &c.connect,
        "refresh" => &c.refresh,
        "subscribe" => &c.subscribe,
        "publish" => &c.publish,
        "sub_refresh" => &c.sub_refresh,
        "rpc" => &c.rpc,
        _ => {
            c.other.fetch_add(1, Ordering::Relaxed);
            return (404, "no such proxy endpoint\n".into());
        }
    };
    if method != "POST" {
        c.other.fetch_add(1, Ordering::Relaxed);
        return (405, "POST only\n".into());
    }
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if kind == "connect" {
        (200, format!("{{\"result\":{{\"user\":\"backend-{n}\"}}}}"))
    } else {
        (200, "{\"result\":{}}".into())
    }
}

/// `loadtest backend`: serve until Ctrl-C or SIGTERM, then print the counts.
pub async fn serve(opts: &BackendOptions) -> anyhow::Result<bool> {
    let backend = Backend::start(opts.listen).await?;
    eprintln!(
        "loadtest backend: listening on {}; set the gateways' [proxy] connect_url = \"{}\"; Ctrl-C stops",
        backend.addr(),
        backend.connect_url()
    );
    sys::interrupted().await;
    let counts = backend.stop().await;
    println!("loadtest backend: requests answered: {counts}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Endpoint;
    use crate::http::HttpConn;

    #[tokio::test]
    async fn backend_admits_each_connect_as_its_own_user_and_counts_calls() {
        let backend = Backend::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let post = |path: &str| format!("http://{}{path}", backend.addr());
        let connect = Endpoint::resolve_http(&post("/connect")).await.unwrap();
        let rpc = Endpoint::resolve_http(&post("/proxy/rpc")).await.unwrap();
        let nowhere = Endpoint::resolve_http(&post("/other")).await.unwrap();
        let mut conn = HttpConn::open(&connect, None, Duration::from_secs(5))
            .await
            .unwrap();
        let body =
            br#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json"}"#;
        let mut users = Vec::new();
        for _ in 0..3 {
            let r = conn.post(&connect, "", body).await.unwrap();
            assert_eq!(r.status, 200);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            users.push(v["result"]["user"].as_str().unwrap().to_owned());
        }
        assert_eq!(users, ["backend-1", "backend-2", "backend-3"]);
        let r = conn.post(&rpc, "", b"{}").await.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &br#"{"result":{}}"#[..])
        );
        assert_eq!(conn.post(&nowhere, "", b"{}").await.unwrap().status, 404);
        let counts = backend.stop().await;
        assert_eq!(
            counts,
            BackendCounts {
                connect: 3,
                rpc: 1,
                other: 1,
                ..BackendCounts::default()
            }
        );
    }
}
