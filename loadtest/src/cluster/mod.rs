//! `loadtest cluster`: a throwaway local cluster to run a scenario against. One
//! `redis-server` (its own directory, no persistence) and N gateway processes on
//! free loopback ports, sharing a generated secret, a generated server API key and
//! a generated config without a publish rate limit; optionally the stand-in
//! backend as their connect proxy. Torn down after the scenario, on Ctrl-C and on
//! failure.
//!
//! - `process`: the child processes and the cluster's directory.

mod process;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use shared::auth::{mint_hs256, unix_now, MintClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::sys::interrupted;
use process::{ChildGuard, DirGuard, POLL};

/// Options of `loadtest cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// Gateway processes. Default 3.
    #[arg(long, hide_default_value = true, default_value_t = 3)]
    pub nodes: u32,
    /// The gateway binary. Default: `gateway` next to this loadtest binary, else
    /// `gateway` on PATH.
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// The redis-server binary. Default: `redis-server` on PATH.
    #[arg(long)]
    pub redis_server: Option<PathBuf>,
    /// After the report, keep the cluster running until Ctrl-C (its URLs, secret
    /// and a demo token are printed).
    #[arg(long)]
    pub keep: bool,
    /// Start the stand-in backend (`loadtest backend`) in this process and make it
    /// the nodes' connect proxy (`[proxy] connect_url`): clients that connect
    /// without a token (`connect --no-token`) are admitted by it. Its call counts
    /// are printed at the end.
    #[arg(long)]
    pub connect_proxy: bool,
    /// The scenario and its options, after `--`: `-- fanout --rooms 10 --duration
    /// 10s`. The cluster sets --url and --secret.
    #[arg(last = true, required = true, value_name = "SCENARIO")]
    pub scenario: Vec<String>,
}

/// Bound on Redis answering PING, and separately on every node's `/readyz`
/// answering 200.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The nodes' `shutdown.grace_period`: the scenario's clients are gone by then, so
/// the nodes stop at once (no readiness delay, no drain window).
const GATEWAY_GRACE: &str = "5s";
/// Bound on a process exiting after SIGTERM before it is killed (SIGKILL); above
/// the grace period.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one readiness probe (connect, request, status line).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Ports tried for Redis: a free port can be taken between the probe and the bind.
const REDIS_PORT_ATTEMPTS: usize = 3;

/// What a scenario needs to reach and use a cluster.
#[derive(Debug, Clone)]
pub struct Access {
    /// The nodes' WebSocket URLs.
    pub urls: Vec<String>,
    /// The HMAC secret every node verifies tokens with.
    pub secret: String,
    /// The key of every node's server HTTP API (`X-API-Key`).
    pub api_key: String,
}

/// A running cluster. Dropping it kills every process; [`Cluster::stop`] stops them
/// in order.
pub struct Cluster {
    pub access: Access,
    /// The connect proxy's stand-in backend, with `--connect-proxy`.
    backend: Option<Backend>,
    gateways: Vec<ChildGuard>,
    redis: ChildGuard,
    /// Declared last: removed once the processes are gone.
    dir: DirGuard,
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("loadtest cluster: {msg}");
}

/// A random u64 (from the standard library's random hasher keys).
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A binary given by an option: a path, or a bare name looked up on PATH.
fn given_binary(p: &Path, option: &str) -> anyhow::Result<PathBuf> {
    let found = match p.to_str() {
        Some(name) if !name.contains('/') => on_path(name),
        _ => Some(p.to_owned()).filter(|p| is_executable(p)),
    };
    found.ok_or_else(|| anyhow!("{option} {}: no such executable file", p.display()))
}

/// The gateway binary: `--gateway`, else the one next to this binary, else PATH's.
fn gateway_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        let p = given_binary(p, "--gateway")?;
        say(format_args!("gateway {} (--gateway)", p.display()));
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot tell where this loadtest binary is")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join("gateway");
    if is_executable(&beside) {
        say(format_args!(
            "gateway {} (next to loadtest)",
            beside.display()
        ));
        return Ok(beside);
    }
    if let Some(p) = on_path("gateway") {
        say(format_args!(
            "gateway {} (on PATH; none next to loadtest in {})",
            p.display(),
            dir.display()
        ));
        return Ok(p);
    }
    bail!(
        "no gateway binary: none next to loadtest in {} and none on PATH; build it with `cargo build --release -p gateway` or pass --gateway PATH",
        dir.display()
    )
}

fn redis_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => given_binary(p, "--redis-server"),
        None => on_path("redis-server").ok_or_else(|| {
            anyhow!("redis-server is not on PATH: install it (e.g. `apt-get install redis-server`) or pass --redis-server PATH")
        }),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free loopback port")?
        .port())
}

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

impl Cluster {
    /// Start Redis, then the nodes, and wait (bounded) until every node is ready.
    /// What started is stopped again if anything fails (or the future is dropped).
    pub async fn start(opts: &ClusterOptions) -> anyhow::Result<Cluster> {
        if opts.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let gateway = gateway_binary(opts.gateway.as_deref())?;
        let redis_bin = redis_binary(opts.redis_server.as_deref())?;
        let path = std::env::temp_dir().join(format!(
            "loadtest-cluster-{}-{:08x}",
            std::process::id(),
            random_u64() as u32
        ));
        std::fs::create_dir_all(path.join("redis"))
            .with_context(|| format!("create {}", path.display()))?;
        let dir = DirGuard(path);
        let secret = format!("{:016x}{:016x}", random_u64(), random_u64());
        let api_key = format!("{:016x}{:016x}", random_u64(), random_u64());
        let backend = match opts.connect_proxy {
            true => Some(Backend::start(([127, 0, 0, 1], 0).into()).await?),
            false => None,
        };
        let mut toml = format!(
            "# Written by `loadtest cluster`.\n[client]\npublish_rate_per_sec = 0\n\n[shutdown]\nreadiness_delay = \"0s\"\ndrain_window = \"0s\"\ngrace_period = \"{GATEWAY_GRACE}\"\n"
        );
        if let Some(b) = &backend {
            toml.push_str(&format!(
                "\n[proxy]\nconnect_url = \"{}\"\n",
                b.connect_url()
            ));
            say(format_args!(
                "stand-in backend at {} is the connect proxy",
                b.addr()
            ));
        }
        let config = dir.0.join("gateway.toml");
        std::fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;

        let (redis, port) = start_redis(&redis_bin, &dir.0).await?;
        say(format_args!(
            "redis-server {} on 127.0.0.1:{port} (no persistence, in {})",
            redis_bin.display(),
            dir.0.display()
        ));
        let redis_url = format!("redis://127.0.0.1:{port}");
        let mut gateways = Vec::new();
        for n in 1..=opts.nodes {
            let name = format!("node-{n}");
            let mut cmd = Command::new(&gateway);
            cmd.env("GATEWAY_LISTEN", "127.0.0.1:0")
                .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
                .env("GATEWAY_TOKEN_HMAC_SECRET", &secret)
                .env("GATEWAY_API_KEY", &api_key)
                .env("GATEWAY_REDIS_URL", &redis_url)
                .env("GATEWAY_NODE_NAME", &name)
                .env("GATEWAY_CONFIG", &config)
                .env("NO_COLOR", "1");
            if std::env::var_os("GATEWAY_LOG").is_none() {
                cmd.env("GATEWAY_LOG", "info");
            }
            let log = dir.0.join(format!("{name}.log"));
            gateways.push(ChildGuard::spawn(name, &mut cmd, log)?);
        }
        let urls = wait_ready(&mut gateways).await?;
        for (g, url) in gateways.iter().zip(&urls) {
            say(format_args!("{} ready at {url}", g.name));
        }
        Ok(Cluster {
            access: Access {
                urls,
                secret,
                api_key,
            },
            backend,
            gateways,
            redis,
            dir,
        })
    }

    /// Stop the nodes (SIGTERM, all at once, each waited for, bounded), then Redis,
    /// then remove the directory.
    pub async fn stop(mut self) {
        for g in &self.gateways {
            g.terminate();
        }
        let mut ended = Vec::new();
        for g in &mut self.gateways {
            ended.push(g.wait_or_kill(STOP_TIMEOUT).await);
        }
        self.redis.terminate();
        ended.push(self.redis.wait_or_kill(STOP_TIMEOUT).await);
        say(format_args!("stopped: {}", ended.join(", ")));
        if let Some(b) = self.backend.take() {
            say(format_args!("backend answered: {}", b.stop().await));
        }
    }
}

/// Start `redis-server` without persistence on a free loopback port and wait,
/// bounded, until it answers PING.
async fn start_redis(bin: &Path, dir: &Path) -> anyhow::Result<(ChildGuard, u16)> {
    let mut last_error = None;
    for _ in 0..REDIS_PORT_ATTEMPTS {
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.join("redis"));
        let mut redis = ChildGuard::spawn("redis-server".into(), &mut cmd, dir.join("redis.log"))?;
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
async fn wait_ready(gateways: &mut [ChildGuard]) -> anyhow::Result<Vec<String>> {
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
                let addr = url
                    .trim_start_matches("ws://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
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

/// Start a cluster, run `scenario` against it (given its [`Access`]), and stop the cluster, also when the scenario fails or on Ctrl-C or
/// SIGTERM. With `--keep`, the cluster stays up after a finished scenario until
/// Ctrl-C. Returns what the scenario returned.
pub async fn run<R, F>(
    opts: &ClusterOptions,
    scenario: impl FnOnce(Access) -> F,
) -> anyhow::Result<R>
where
    F: Future<Output = anyhow::Result<R>>,
{
    let signal = interrupted();
    tokio::pin!(signal);
    let cluster = tokio::select! {
        c = Cluster::start(opts) => c?,
        _ = &mut signal => bail!("interrupted while the cluster was starting; what had started was killed"),
    };
    say(format_args!(
        "running the scenario against {} node(s)",
        cluster.access.urls.len()
    ));
    let result = tokio::select! {
        r = scenario(cluster.access.clone()) => r,
        _ = &mut signal => Err(anyhow!("interrupted: the scenario was stopped")),
    };
    if opts.keep && result.is_ok() {
        let access = &cluster.access;
        let demo = mint_hs256(
            &access.secret,
            &MintClaims {
                sub: "demo".into(),
                exp: Some(unix_now() + 24 * 3600),
                ..Default::default()
            },
        );
        say(format_args!(
            "kept running until Ctrl-C:\n  urls: {}\n  GATEWAY_TOKEN_HMAC_SECRET={}\n  GATEWAY_API_KEY={}\n  connection token for user \"demo\" (24h): {demo}\n  logs: {}",
            access.urls.join(","),
            access.secret,
            access.api_key,
            cluster.dir.0.display()
        ));
        signal.await;
    }
    say("stopping");
    cluster.stop().await;
    result
}
