//! Starting the cluster's processes: redis-server on a free port until it answers
//! PING, and the nodes until each has logged its URL and answers `/readyz` with 200.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::haproxy;
use super::process::{
    free_port, ChildGuard, POLL, PROBE_TIMEOUT, REDIS_PORT_ATTEMPTS, START_TIMEOUT,
};

/// Send `request` to `addr` and whether the answer starts with `expect`; bounded.
async fn probe(addr: &str, request: &[u8], expect: &[u8]) -> bool {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).await?;
        Ok::<bool, std::io::Error>(got == expect)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}

/// The address in the node's `clients connect to ws://ADDR/connection/websocket`
/// log line, once it is there.
fn logged_url(log: &Path) -> Option<String> {
    const MARK: &str = "clients connect to ";
    let text = std::fs::read_to_string(log).ok()?;
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let url: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    url.starts_with("ws://").then_some(url)
}

/// How the cluster's Redis runs: its binary, the cluster's directory (data in
/// `redis/`), whether with append-only persistence (fsync always), and its port
/// once it has one (a restart keeps it).
pub(super) struct RedisSpec {
    pub(super) bin: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) aof: bool,
    pub(super) port: Option<u16>,
}

/// Start `redis-server` as `spec` says, on its port or a free loopback port, and
/// wait, bounded, until it answers PING. Its output goes to `log` in the directory.
pub(super) async fn start_redis(spec: &RedisSpec, log: &str) -> anyhow::Result<(ChildGuard, u16)> {
    let (bin, dir) = (&spec.bin, &spec.dir);
    let mut last_error = None;
    let attempts = if spec.port.is_some() {
        1
    } else {
        REDIS_PORT_ATTEMPTS
    };
    for _ in 0..attempts {
        let port = match spec.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut cmd = Command::new(bin);
        let aof = if spec.aof { "yes" } else { "no" };
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir.join("redis"));
        let mut redis = ChildGuard::spawn("redis-server".into(), &mut cmd, dir.join(log))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = redis.exited() {
                // Most likely the port was taken meanwhile: try another.
                last_error = Some(redis.died(status));
                break;
            }
            let addr = format!("127.0.0.1:{port}");
            if probe(&addr, b"PING\r\n", b"+PONG").await {
                return Ok((redis, port));
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not answer PING on 127.0.0.1:{port} within {START_TIMEOUT:?}; {}",
                    redis.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Err(last_error.expect("bug: at least one attempt"))
}

/// Wait, bounded, until every node has logged its URL and answers `/readyz` with
/// 200; their URLs, in order.
pub(super) async fn wait_ready(gateways: &mut [ChildGuard]) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<Option<String>> = vec![None; gateways.len()];
    let mut ready = vec![false; gateways.len()];
    let deadline = Instant::now() + START_TIMEOUT;
    while ready.iter().any(|r| !r) {
        for (i, g) in gateways.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if let Some(status) = g.exited() {
                return Err(g.died(status));
            }
            if urls[i].is_none() {
                urls[i] = logged_url(&g.log);
            }
            if let Some(url) = &urls[i] {
                let addr = haproxy::host_port(url);
                ready[i] = probe(
                    addr,
                    b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    b"HTTP/1.1 200",
                )
                .await;
            }
        }
        if Instant::now() >= deadline {
            let late: Vec<String> = gateways
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(g, _)| format!("{}: {}", g.name, g.log_tail()))
                .collect();
            bail!(
                "not ready within {START_TIMEOUT:?} (/readyz did not answer 200): {}",
                late.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(urls.into_iter().flatten().collect())
}
