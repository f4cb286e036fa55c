//! Real `redis-server` processes for tests (feature `test-util`): each on a free
//! loopback port with its own directory, stopped when dropped. Never a shared Redis.
//! One server, a Redis Cluster, or a primary with a replica under three sentinels.
//! Also [`run_bounded`], for tests that run the project's own binaries.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to start answering PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Run `cmd` with stdout and stderr in files under `dir`; kill it and panic past
/// `timeout`. Returns its exit status, stdout and stderr.
pub fn run_bounded(
    cmd: &mut Command,
    dir: &Path,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out), read(&err))
}

/// Send one inline command and return the raw reply (bounded wait).
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with append-only persistence (history survives a restart).
    pub fn start_aof() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut s = RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if raw_command(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the process (SIGKILL: no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and directory (AOF data, if any, is reloaded).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` masters without replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// `masters` masters with `replicas` replicas each (nodes after the first
    /// `masters` in [`RedisCluster::nodes`] are replicas at start); a replica takes
    /// over about two seconds after its master dies (`cluster-node-timeout` 2000).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until("cluster_state:ok", START_TIMEOUT, || {
                raw_command(n.port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
        if replicas > 0 {
            for n in &nodes {
                wait_until("replicas in sync", START_TIMEOUT, || {
                    raw_command(n.port, "INFO replication").is_some_and(|r| {
                        r.contains("role:master") || r.contains("master_link_status:up")
                    })
                });
            }
        }
        RedisCluster { nodes }
    }

    /// The port of the master serving `tag`'s slot (keys `...{tag}...`), as the
    /// node at `ask` sees it.
    pub fn master_of(&self, ask: u16, tag: &str) -> Option<u16> {
        let slot: u16 = raw_command(ask, &format!("CLUSTER KEYSLOT {tag}"))?
            .trim()
            .trim_start_matches(':')
            .parse()
            .ok()?;
        let nodes = raw_command(ask, "CLUSTER NODES")?;
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                return None;
            }
            let serves = f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            let port = f[1].split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// `redis+cluster://` URL listing every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// The master name [`RedisSentinels`] monitor.
pub const SENTINEL_MASTER: &str = "mymaster";
/// How long sentinels get to find each other and the replica.
const SENTINEL_SETTLE: Duration = Duration::from_secs(30);

/// Wait until `cond` holds (every 50 ms), or panic naming `what` past `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary, one replica and three sentinels monitoring it as
/// [`SENTINEL_MASTER`] (quorum 2, down after one second), so a failover completes
/// a few seconds after the primary dies.
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<SentinelProcess>,
}

impl RedisSentinels {
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let port = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        wait_until("the replica in sync", START_TIMEOUT, || {
            raw_command(replica.port, "INFO replication")
                .is_some_and(|r| r.contains("master_link_status:up"))
        });
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| SentinelProcess::start(primary.port))
            .collect();
        for s in &sentinels {
            wait_until(
                "sentinels knowing each other and the replica",
                SENTINEL_SETTLE,
                || {
                    raw_command(s.port, &format!("SENTINEL MASTER {SENTINEL_MASTER}")).is_some_and(
                        |r| {
                            r.contains("num-other-sentinels\r\n$1\r\n2")
                                && r.contains("num-slaves\r\n$1\r\n1")
                        },
                    )
                },
            );
        }
        RedisSentinels {
            primary,
            replica,
            sentinels,
        }
    }

    /// `redis+sentinel://` URL listing the sentinels and the master name.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The primary's port as the first sentinel answers now.
    pub fn primary_port(&self) -> Option<u16> {
        let r = raw_command(
            self.sentinels[0].port,
            &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_MASTER}"),
        )?;
        r.lines().nth(4)?.trim().parse().ok()
    }

    /// Wait until the sentinels name the replica as the primary.
    pub fn wait_for_failover(&self, timeout: Duration) {
        wait_until("the failover to the replica", timeout, || {
            self.primary_port() == Some(self.replica.port)
        });
    }
}

/// One `redis-server --sentinel` child process with its own config file.
struct SentinelProcess {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl SentinelProcess {
    fn start(primary: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sentinel-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("sentinel test dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nloglevel warning\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        let s = SentinelProcess { port, dir, child };
        wait_until("a sentinel answering PING", START_TIMEOUT, || {
            raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
        });
        s
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a server, for fault tests: [`Proxy::freeze`] stops
/// forwarding on the connections open now (a silent connection, as in a failover);
/// [`Proxy::cut`] closes them; [`Proxy::trap`] lets one request through and loses
/// its reply with the connection. New connections always flow.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    stop: tokio_util::sync::CancellationToken,
}

#[derive(Default)]
struct ProxyState {
    /// Connections open now: (frozen flag, cut token).
    conns: parking_lot::Mutex<
        Vec<(
            std::sync::Arc<std::sync::atomic::AtomicBool>,
            tokio_util::sync::CancellationToken,
        )>,
    >,
    /// Armed by [`Proxy::trap`]: the bytes a request must contain.
    trap: parking_lot::Mutex<Option<Vec<u8>>>,
}

impl Proxy {
    /// Start a proxy to `127.0.0.1:target` (inside a Tokio runtime).
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let (st, stp) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(v) => v, Err(_) => return },
                    _ = stp.cancelled() => return,
                };
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let cut = stp.child_token();
                st.conns.lock().push((frozen.clone(), cut.clone()));
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pipe(cr, uw, frozen.clone(), cut.clone(), Some(st.clone())));
                tokio::spawn(pipe(ur, cw, frozen, cut, None));
            }
        });
        Proxy { port, state, stop }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop forwarding on every connection open now (data stays unread); each
    /// stays open, silent, until [`Proxy::cut`], even if the server goes away.
    pub fn freeze(&self) {
        for (f, _) in self.state.conns.lock().iter() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The next request (a read from the client) containing `pattern` reaches the
    /// server, and then its connection freezes and is cut: the server has run the
    /// command and its reply is lost, as when a connection drops after sending.
    pub fn trap(&self, pattern: &[u8]) {
        *self.state.trap.lock() = Some(pattern.to_vec());
    }

    /// Close every connection open now; what they held is lost.
    pub fn cut(&self) {
        for (_, c) in self.state.conns.lock().drain(..) {
            c.cancel();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
    trap: Option<std::sync::Arc<ProxyState>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            cut.cancelled().await;
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    // A frozen connection stays open and silent whatever the other
                    // side does (the server may even be restarted meanwhile).
                    if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                        cut.cancelled().await;
                    }
                    return;
                }
                Ok(n) => n,
            },
            _ = cut.cancelled() => return,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // Frozen while reading: what was read is held back, i.e. lost on cut.
            cut.cancelled().await;
            return;
        }
        let trapped = trap.as_ref().is_some_and(|st| {
            let mut armed = st.trap.lock();
            let hit = armed
                .as_ref()
                .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p.as_slice()));
            if hit {
                *armed = None;
            }
            hit
        });
        if trapped {
            // Freeze first, so the reply cannot slip through; the request goes on.
            frozen.store(true, std::sync::atomic::Ordering::SeqCst);
            let cut = cut.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                cut.cancel();
            });
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
