//! `gateway`: run a node (the default command) or mint tokens.
//!
//! - `logging`: text or JSON log lines on stderr.

mod logging;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::{Config, Node};
use rand::distr::{Alphanumeric, SampleString};
use shared::auth::{mint_hs256, unix_now, MintClaims};
use shared::protocol::raw_from_slice;
use tokio::net::TcpListener;

/// mimalloc: the connect path spent ~12% of its CPU in glibc malloc/free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "WebSocket chat gateway (Centrifugo client protocol v2)"
)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node (the default).
    Serve,
    /// Print a connection JWT, or a subscription JWT with --channel, signed with the
    /// configured HMAC secret.
    Token {
        /// User id (`sub` claim).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 1h or 30m; without it the token does not expire.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// JSON for the `info` claim, shown to other clients, e.g. '{"name":"Ann"}'.
        #[arg(long)]
        info: Option<String>,
        /// Make a subscription token for this channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Check the configuration and exit.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::Token {
            user,
            ttl,
            info,
            channel,
        } => {
            let secret = config.token.hmac_secret.take().context(
                "no HMAC secret configured: set GATEWAY_TOKEN_HMAC_SECRET or token.hmac_secret",
            )?;
            let info = info
                .map(|i| raw_from_slice(i.as_bytes()).context("--info must be JSON"))
                .transpose()?;
            let claims = MintClaims {
                sub: user,
                exp: ttl.map(|t| unix_now() + t.as_secs()),
                info,
                channel,
                ..Default::default()
            };
            println!("{}", mint_hs256(&secret, &claims));
            Ok(())
        }
    }
}

fn serve(mut config: Config) -> anyhow::Result<()> {
    logging::init(&config)?;
    raise_open_files(config.client.max_connections);
    let generated = if config.token.has_key() {
        None
    } else {
        let secret = Alphanumeric.sample_string(&mut rand::rng(), 32);
        config.token.hmac_secret = Some(secret.clone());
        config.development = true;
        Some(secret)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = config.listen_addr()?;
        let listener = bind(addr).with_context(|| format!("bind {addr}"))?;
        let local = listener.local_addr()?;
        let api = match &config.api.listen {
            Some(a) => {
                let a: std::net::SocketAddr = a.parse().context("api.listen")?;
                Some(bind(a).with_context(|| format!("bind api.listen {a}"))?)
            }
            None => None,
        };
        let admin = match config.admin.listen_addr()? {
            Some(a) => Some(bind(a).with_context(|| format!("bind admin.listen {a}"))?),
            None => None,
        };
        let broker: Arc<dyn fanout::Broker> = match config.redis_config() {
            Some(rc) => {
                // Never log credentials.
                let url = shared::redact::redact_url(&rc.url).into_owned();
                let b = fanout::RedisBroker::connect(rc)
                    .await
                    .with_context(|| format!("redis_url ({url}): cannot reach Redis"))?;
                tracing::info!(engine = "redis", %url, "node {} in a cluster on Redis", config.node_name);
                b
            }
            None => {
                tracing::info!(engine = "memory", "node {} alone on the in-memory broker", config.node_name);
                fanout::MemoryBroker::new()
            }
        };
        let node: Arc<Node> = Node::new(config, broker)?;
        tracing::info!("clients connect to ws://{local}{}", gateway::WEBSOCKET_PATH);
        match (&node.config.api_key, &api) {
            (None, _) => tracing::info!("server API off: set GATEWAY_API_KEY to enable it"),
            (Some(_), Some(l)) => tracing::info!("server API on http://{}/api", l.local_addr()?),
            (Some(_), None) => tracing::info!("server API on http://{local}/api"),
        }
        match &admin {
            Some(l) => tracing::info!("metrics on http://{}/metrics", l.local_addr()?),
            None => tracing::info!("admin listener off (admin.listen is empty)"),
        }
        if let Some(secret) = generated {
            tracing::warn!(
                "no token key configured: generated a random HMAC secret for this run. \
                 FOR DEVELOPMENT ONLY; set GATEWAY_TOKEN_HMAC_SECRET in production"
            );
            tracing::info!("GATEWAY_TOKEN_HMAC_SECRET={secret}");
            let demo = mint_hs256(
                &secret,
                &MintClaims {
                    sub: "demo".into(),
                    exp: Some(unix_now() + 24 * 3600),
                    ..Default::default()
                },
            );
            tracing::info!("connection token for user \"demo\" (24h): {demo}");
        }
        log_demo(&node.config, local);
        let listeners = gateway::Listeners {
            clients: listener,
            api,
            admin,
        };
        let first = async {
            shutdown_signal().await;
            // A second signal ends the process without waiting for the drain.
            tokio::spawn(async {
                shutdown_signal().await;
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            });
        };
        gateway::run_listeners(listeners, node, first).await;
        Ok(())
    })
}

/// Where the demo chat page is, and a loud warning when it mints tokens (in
/// development mode) on an address others can reach.
fn log_demo(config: &Config, local: std::net::SocketAddr) {
    if !config.demo_page() {
        return;
    }
    tracing::info!("demo chat page on http://{local}/ (demo.enabled = false turns it off)");
    if config.demo_mint_secret().is_some() && !local.ip().is_loopback() {
        tracing::warn!(
            "development mode on {local}: anyone who reaches it can get a token at POST /demo/token"
        );
    }
}

/// Listen with a deep accept queue: a connection storm (a rolling deploy's
/// reconnects) overflowed the default and cost clients a 1 s SYN retransmit.
/// The kernel still caps it at `net.core.somaxconn`.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept queue length asked of the kernel.
const LISTEN_BACKLOG: u32 = 4096;

/// Descriptors a node needs besides its clients: listener, Redis, runtime, logs.
const RESERVED_FILES: u64 = 256;

/// Every client is a file descriptor, and the usual soft limit (1,024) would stop a
/// node far below `max_connections` with `accept` failing. Raise the soft limit to
/// the hard one, as Go's runtime does, and say when even that is too low.
fn raise_open_files(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    let wanted = (max_connections as u64).saturating_add(RESERVED_FILES);
    if limit < wanted {
        tracing::warn!(
            open_files = limit,
            max_connections,
            "open-file limit caps this node at about {} clients, below client.max_connections: \
             raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd, the container's nofile)",
            limit.saturating_sub(RESERVED_FILES)
        );
    } else {
        tracing::info!(open_files = limit, "open-file limit");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
