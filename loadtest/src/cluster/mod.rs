//! `loadtest cluster`: a throwaway local cluster to run a scenario against. One
//! `redis-server` (its own directory, no persistence) and N gateway processes on
//! free loopback ports, sharing a generated secret, a generated server API key and
//! a generated config without a publish rate limit; optionally the stand-in
//! backend as their connect proxy; optionally HAProxy in front of them; optionally
//! one node drained (SIGTERM) during the run; optionally Redis killed and started
//! again on a schedule. Torn down after the scenario, on Ctrl-C and on failure.
//!
//! - `process`: the child processes and the cluster's directory.
//! - `binaries`: finding the gateway, redis-server and haproxy binaries.
//! - `haproxy`: HAProxy's config, start and the wait for every node UP.
//! - `start`: starting Redis and the nodes, bounded.
//! - `drain`: the SIGTERM to one node during the run and its exit.
//! - `fault`: Redis killed and restarted during the run.

mod binaries;
mod drain;
mod fault;
mod haproxy;
mod process;
mod start;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use binaries::{gateway_binary, redis_binary};
pub use drain::Drained;
use shared::auth::{mint_hs256, unix_now, MintClaims};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::sys::interrupted;
use process::{say, ChildGuard, DirGuard};
use start::{start_redis, wait_ready, RedisSpec};

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
    /// Put HAProxy (`haproxy` from PATH or /usr/sbin) in front of the nodes: an
    /// HTTP frontend on a free loopback port, round-robin, each node checked with
    /// `GET /readyz` every second (out after one failure, back after two). The
    /// scenario's URL is HAProxy's.
    #[arg(long)]
    pub haproxy: bool,
    /// SIGTERM this node (0 is the first) --drain-at after the scenario starts; it
    /// drains as its `[shutdown]` settings say (--readiness-delay, --drain-window).
    #[arg(long, value_name = "INDEX")]
    pub drain_node: Option<u32>,
    /// When --drain-node is signalled, from the start of the scenario (humantime).
    /// Default 10s.
    #[arg(long, hide_default_value = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_at: Duration,
    /// The nodes' `shutdown.readiness_delay`: after SIGTERM, /readyz answers 503
    /// while the node still accepts for this long. Default 0s.
    #[arg(long, hide_default_value = true, default_value = "0s", value_parser = humantime::parse_duration)]
    pub readiness_delay: Duration,
    /// The nodes' `shutdown.drain_window`: then clients are closed with 3001 spread
    /// evenly over this window (0s: all at once). Default 0s.
    #[arg(long, hide_default_value = true, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,
    /// Kill redis-server (SIGKILL) this long after the scenario starts and again
    /// at every such interval, and start it again on the same port after
    /// --redis-down (humantime: 30s). Default: never.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub redis_fault_every: Option<Duration>,
    /// At most this many faults (--redis-fault-every). Default: no limit.
    #[arg(long, value_name = "N")]
    pub redis_faults: Option<u32>,
    /// How long Redis stays down at each --redis-fault-every. Default 2s.
    #[arg(long, hide_default_value = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_down: Duration,
    /// Run Redis with append-only persistence (fsync always), so that its data
    /// survives --redis-fault-every; without it Redis starts again empty.
    #[arg(long)]
    pub redis_aof: bool,
    /// The scenario and its options, after `--`: `-- fanout --rooms 10 --duration
    /// 10s --report fanout.html`. The cluster sets --url and --secret.
    #[arg(last = true, required = true, value_name = "SCENARIO")]
    pub scenario: Vec<String>,
}

/// The nodes' `shutdown.grace_period` beyond their readiness delay and drain
/// window.
const GATEWAY_GRACE_EXTRA: Duration = Duration::from_secs(5);
/// Bound on a process exiting after SIGTERM before it is killed (SIGKILL), beyond
/// the nodes' grace period.
const STOP_EXTRA: Duration = Duration::from_secs(5);
/// What a scenario needs to reach and use a cluster.
#[derive(Debug, Clone)]
pub struct Access {
    /// The nodes' WebSocket URLs.
    pub urls: Vec<String>,
    /// The HMAC secret every node verifies tokens with.
    pub secret: String,
    /// The key of every node's server HTTP API (`X-API-Key`).
    pub api_key: String,
    /// The nodes' own WebSocket URLs (the same as `urls` without HAProxy).
    pub nodes: Vec<String>,
}

/// A running cluster. Dropping it kills every process; [`Cluster::stop`] stops them
/// in order.
pub struct Cluster {
    pub access: Access,
    /// The connect proxy's stand-in backend, with `--connect-proxy`.
    backend: Option<Backend>,
    haproxy: Option<ChildGuard>,
    gateways: Vec<ChildGuard>,
    /// Bound on a node exiting after SIGTERM.
    stop_timeout: Duration,
    redis: ChildGuard,
    redis_spec: RedisSpec,
    /// Declared last: removed once the processes are gone.
    dir: DirGuard,
}

/// A random u64 (from the standard library's random hasher keys).
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl ClusterOptions {
    /// The nodes' `shutdown.grace_period`.
    fn grace(&self) -> Duration {
        self.readiness_delay + self.drain_window + GATEWAY_GRACE_EXTRA
    }
}

impl Cluster {
    /// Start Redis, then the nodes, and wait (bounded) until every node is ready.
    /// What started is stopped again if anything fails (or the future is dropped).
    pub async fn start(opts: &ClusterOptions) -> anyhow::Result<Cluster> {
        if opts.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        if opts.drain_node.is_some_and(|n| n >= opts.nodes) {
            bail!("--drain-node is an index from 0 to --nodes - 1");
        }
        if opts.redis_fault_every.is_some_and(|d| d.is_zero()) {
            bail!("--redis-fault-every must be more than 0");
        }
        let haproxy_bin = match opts.haproxy {
            true => Some(haproxy::binary()?),
            false => None,
        };
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
            "# Written by `loadtest cluster`.\n[client]\npublish_rate_per_sec = 0\n\n[shutdown]\nreadiness_delay = \"{}\"\ndrain_window = \"{}\"\ngrace_period = \"{}\"\n",
            humantime::format_duration(opts.readiness_delay),
            humantime::format_duration(opts.drain_window),
            humantime::format_duration(opts.grace()),
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

        let mut redis_spec = RedisSpec {
            bin: redis_bin,
            dir: dir.0.clone(),
            aof: opts.redis_aof,
            port: None,
        };
        let (redis, port) = start_redis(&redis_spec, "redis.log").await?;
        redis_spec.port = Some(port);
        say(format_args!(
            "redis-server {} on 127.0.0.1:{port} ({}, in {})",
            redis_spec.bin.display(),
            if opts.redis_aof {
                "append-only file, fsync always"
            } else {
                "no persistence"
            },
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
        let (haproxy, front) = match haproxy_bin {
            Some(bin) => {
                let h = haproxy::start(&bin, &dir.0, &urls).await?;
                say(format_args!(
                    "haproxy {} at {} sees every node UP",
                    bin.display(),
                    h.url
                ));
                (Some(h.child), vec![h.url])
            }
            None => (None, urls.clone()),
        };
        Ok(Cluster {
            access: Access {
                urls: front,
                secret,
                api_key,
                nodes: urls,
            },
            backend,
            haproxy,
            gateways,
            stop_timeout: opts.grace() + STOP_EXTRA,
            redis,
            redis_spec,
            dir,
        })
    }

    /// Stop the nodes (SIGTERM, all at once, each waited for, bounded), then Redis,
    /// then remove the directory.
    pub async fn stop(mut self) {
        for g in &mut self.gateways {
            g.terminate();
        }
        let mut ended = Vec::new();
        for g in &mut self.gateways {
            ended.push(g.wait_or_kill(self.stop_timeout).await);
        }
        if let Some(h) = &mut self.haproxy {
            h.terminate();
            ended.push(h.wait_or_kill(STOP_EXTRA).await);
        }
        self.redis.terminate();
        ended.push(self.redis.wait_or_kill(STOP_EXTRA).await);
        say(format_args!("stopped: {}", ended.join(", ")));
        if let Some(b) = self.backend.take() {
            say(format_args!("backend answered: {}", b.stop().await));
        }
    }
}

/// Start a cluster, run `scenario` against it (given its [`Access`]) while
/// draining `--drain-node` if given, and stop the cluster, also when the scenario
/// fails or on Ctrl-C or SIGTERM. With `--keep`, the cluster stays up after a finished scenario until
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
    let mut cluster = tokio::select! {
        c = Cluster::start(opts) => c?,
        _ = &mut signal => bail!("interrupted while the cluster was starting; what had started was killed"),
    };
    say(format_args!(
        "running the scenario against {} node(s){}",
        cluster.access.nodes.len(),
        if cluster.haproxy.is_some() {
            " through haproxy"
        } else {
            ""
        }
    ));
    let access = cluster.access.clone();
    let bound = cluster.stop_timeout;
    let start = Instant::now();
    let (gateways, redis, spec) = (
        &mut cluster.gateways,
        &mut cluster.redis,
        &cluster.redis_spec,
    );
    let draining = async {
        let node = opts.drain_node.and_then(|n| gateways.get_mut(n as usize));
        match node {
            Some(node) => Some(drain::drain(node, start, opts.drain_at, bound).await),
            None => None,
        }
    };
    let faults = async {
        if let Some(every) = opts.redis_fault_every {
            let limit = opts.redis_faults.unwrap_or(u32::MAX);
            fault::break_redis(redis, spec, start, every, opts.redis_down, limit).await;
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        (r, _) = async { tokio::join!(scenario(access), draining) } => r,
        () = faults => unreachable!("faults never end by themselves"),
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
