//! The `deploy/` files with real parts and no container runtime.
//!
//! Map:
//! - `the_sdk_through_haproxy_and_nginx_...`: two stacks at once, one per proxy,
//!   each a `redis-server`, three gateway processes (this build's binary, on free
//!   loopback ports) and the proxy running the shipped `deploy/haproxy/haproxy.cfg`
//!   or `deploy/nginx/nginx.conf` with only its addresses replaced
//!   (`haproxy_config`, `nginx_config`). Through each, `tests/sdk/proxies.mjs`
//!   drives the real centrifuge-js SDK: clients spread over the nodes, pub/sub
//!   across them, a silence on every socket longer than the proxies' default idle
//!   timeouts (`IDLE`; the nodes ping every 150 s), then a node SIGKILLed
//!   mid-sequence and its clients recovering through the proxy. Both stacks at
//!   once cost the silence's wall time once (about 75 s in all).
//! - `deploy_files_pass_hadolint_...`: hadolint on `deploy/Dockerfile`, the Compose
//!   schema on `deploy/docker-compose.yml` (both from `.test-deps/python`, which
//!   `scripts/test` installs) and `haproxy -c` on the shipped config as it is.
//! - `the_substitutions_touch_only_addresses`: what the first test changes.
//! - Pieces: `Proc` (a child in its own process group, killed with the group on
//!   drop, its log shown on failure), `Stack` (Redis, nodes, proxy), `substitute`
//!   (exact, counted replacements outside comments). `Proc`, `free_port`,
//!   `wait_http` and `system_binary` serve `demo.rs` too.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fanout::testing::{run_bounded, RedisServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{repo_root, run_checked_script, token, SECRET};

/// Silence on every socket: above nginx's default `proxy_read_timeout` (60 s)
/// and the 30-50 s client/server timeouts common in HAProxy configs.
const IDLE: Duration = Duration::from_secs(66);
/// The nodes' ping interval. The first ping comes at a random point of the
/// second half of the interval, so nothing is sent for at least 75 s after a
/// connect: the silence above fits in it.
const PING_INTERVAL: &str = "150s";
const NODES: usize = 3;
const CLIENTS: usize = 6;
const API_KEY: &str = "deploy-test-api-key";
/// Bound on a process becoming ready (a node's `/readyz`, a proxy answering).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the lint commands.
const LINT_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines shown per process when a test fails.
const LOG_TAIL: usize = 30;

fn shipped(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Debian-installed binary: on PATH, else in /usr/sbin. Fails (never skips)
/// when missing.
pub(crate) fn system_binary(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `scripts/test` (it runs `apt-get install {name}`)")
        })
}

/// `text` with each `(from, to)` replaced outside comments; each `from` must
/// occur exactly once there, so a change to the shipped file that the test would
/// silently miss fails here.
fn substitute(text: &str, pairs: &[(String, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (from, to) in pairs {
        let mut found = 0;
        for line in lines
            .iter_mut()
            .filter(|l| !l.trim_start().starts_with('#'))
        {
            found += line.matches(from.as_str()).count();
            *line = line.replace(from.as_str(), to);
        }
        assert_eq!(
            found, 1,
            "{from:?} occurs {found} times in the shipped config"
        );
    }
    lines.join("\n") + "\n"
}

/// The nodes' addresses in the shipped configs (the Compose service names).
fn node_pairs(ports: &[u16]) -> Vec<(String, String)> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("gateway-{}:8000", i + 1), format!("127.0.0.1:{p}")))
        .collect()
}

/// `deploy/haproxy/haproxy.cfg` with its frontend on `port` and the nodes on `nodes`.
fn haproxy_config(shipped: &str, port: u16, nodes: &[u16]) -> String {
    let mut pairs = vec![("bind :8000".to_owned(), format!("bind 127.0.0.1:{port}"))];
    pairs.extend(node_pairs(nodes));
    substitute(shipped, &pairs)
}

/// `deploy/nginx/nginx.conf` listening on `port`, with the nodes on `nodes`.
fn nginx_config(shipped: &str, port: u16, nodes: &[u16]) -> String {
    let mut pairs = vec![(
        "listen 8000;".to_owned(),
        format!("listen 127.0.0.1:{port};"),
    )];
    pairs.extend(node_pairs(nodes));
    substitute(shipped, &pairs)
}

/// A child process in its own process group (nginx's workers included), killed
/// with the group and reaped when dropped; its output goes to `log`, whose tail
/// is printed when the test is failing.
pub(crate) struct Proc {
    name: String,
    pub(crate) child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panic, with its log, if it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: nginx's workers outlive a master killed alone.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (last {LOG_TAIL} lines) ---\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

/// The status of `GET path` on `port`, or `None` when nothing answers in time.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let ask = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()?
}

/// Poll until `GET path` on `port` answers `want` (any status when `None`),
/// panicking if `proc` exits or START_TIMEOUT passes.
pub(crate) async fn wait_http(proc: &mut Proc, port: u16, path: &str, want: Option<u16>) {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        proc.assert_running();
        if let Some(s) = http_status(port, path).await {
            if want.is_none_or(|w| w == s) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: GET {path} on port {port} did not answer {want:?} within {START_TIMEOUT:?}:\n{}",
            proc.name,
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum ProxyKind {
    Haproxy,
    Nginx,
}

/// A gateway process: its client port and its admin port.
struct Node {
    proc: Proc,
    port: u16,
    admin: u16,
}

/// One `redis-server`, three gateway processes on it and a proxy in front, in a
/// directory of their own (logs, configs) removed unless the test fails.
struct Stack {
    kind: ProxyKind,
    dir: PathBuf,
    /// The proxy's port.
    port: u16,
    // Dropped in this order: the proxy, then the nodes, then Redis.
    proxy: Proc,
    nodes: Vec<Node>,
    _redis: RedisServer,
}

impl Stack {
    async fn start(kind: ProxyKind) -> Stack {
        let dir =
            std::env::temp_dir().join(format!("gateway-deploy-{}-{kind:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("stack dir");
        let redis = RedisServer::start();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!("[client]\nping_interval = \"{PING_INTERVAL}\"\n"),
        )
        .expect("write gateway.toml");
        let mut nodes = Vec::new();
        for i in 1..=NODES {
            let (port, admin) = (free_port(), free_port());
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GATEWAY_")) {
                cmd.env_remove(k);
            }
            cmd.env("GATEWAY_CONFIG", &config)
                .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
                .env("GATEWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("GATEWAY_REDIS_URL", redis.url())
                .env("GATEWAY_TOKEN_HMAC_SECRET", SECRET)
                .env("GATEWAY_API_KEY", API_KEY)
                .env("GATEWAY_NODE_NAME", format!("gateway-{i}"))
                .env("GATEWAY_LOG", "warn");
            let log = dir.join(format!("gateway-{i}.log"));
            let mut proc = Proc::spawn(&format!("{kind:?} stack: gateway-{i}"), &mut cmd, log);
            wait_http(&mut proc, admin, "/readyz", Some(200)).await;
            nodes.push(Node { proc, port, admin });
        }
        let port = free_port();
        let node_ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let mut proxy = match kind {
            ProxyKind::Haproxy => {
                let cfg = dir.join("haproxy.cfg");
                let text =
                    haproxy_config(&shipped("deploy/haproxy/haproxy.cfg"), port, &node_ports);
                std::fs::write(&cfg, text).expect("write haproxy.cfg");
                let mut cmd = Command::new(system_binary("haproxy"));
                // Zero-warning mode: a warning about the shipped file fails the test.
                cmd.arg("-dW").arg("-f").arg(&cfg).arg("-db");
                Proc::spawn("haproxy", &mut cmd, dir.join("haproxy.log"))
            }
            ProxyKind::Nginx => {
                let cfg = dir.join("nginx.conf");
                let text = nginx_config(&shipped("deploy/nginx/nginx.conf"), port, &node_ports);
                std::fs::write(&cfg, text).expect("write nginx.conf");
                // Prefix, pid file and start-up log on the command line, not in the
                // file; nothing under /var/log.
                let mut cmd = Command::new(system_binary("nginx"));
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&cfg)
                    .args(["-e", "stderr", "-g"])
                    .arg(format!(
                        "daemon off; pid {};",
                        dir.join("nginx.pid").display()
                    ));
                Proc::spawn("nginx", &mut cmd, dir.join("nginx.log"))
            }
        };
        // Nodes are ready already; the proxy answers once it listens.
        wait_http(&mut proxy, port, "/", None).await;
        Stack {
            kind,
            dir,
            port,
            proxy,
            nodes,
            _redis: redis,
        }
    }

    /// Run `tests/sdk/proxies.mjs` through the proxy; it SIGKILLs node `kill`.
    async fn run_sdk(&mut self, kill: usize) {
        let dir = crate::sdk::sdk_dir();
        crate::sdk::require_node(&dir).await;
        let tokens: Vec<String> = (1..=CLIENTS).map(|i| token(&format!("user-{i}"))).collect();
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| json!({"admin": format!("http://127.0.0.1:{}", n.admin), "pid": n.proc.pid()}))
            .collect();
        let args = json!({
            "name": format!("{:?}", self.kind).to_lowercase(),
            "ws": format!("ws://127.0.0.1:{}/connection/websocket", self.port),
            "http": format!("http://127.0.0.1:{}", self.port),
            "apiKey": API_KEY,
            "tokens": tokens,
            "nodes": nodes,
            "idleMs": IDLE.as_millis() as u64,
            "kill": kill,
        });
        let mut command = tokio::process::Command::new("node");
        command
            .arg(dir.join("proxies.mjs"))
            .arg(args.to_string())
            .current_dir(&dir);
        let timeout = IDLE + Duration::from_secs(90);
        run_checked_script(command, &format!("proxies.mjs ({:?})", self.kind), timeout).await;

        // The script's SIGKILL hit the node, and only that one.
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if i == kill {
                let status = n.proc.child.wait().expect("wait for the killed node");
                assert_eq!(status.signal(), Some(9), "{}: {status}", n.proc.name);
            } else {
                n.proc.assert_running();
            }
        }
        self.proxy.assert_running();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{:?} stack: configs and logs kept in {}",
                self.kind,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn exercise(kind: ProxyKind, kill: usize) {
    let mut stack = Stack::start(kind).await;
    stack.run_sdk(kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_through_haproxy_and_nginx_spreads_stays_idle_and_survives_a_killed_node() {
    let haproxy = tokio::spawn(exercise(ProxyKind::Haproxy, 0));
    let nginx = tokio::spawn(exercise(ProxyKind::Nginx, 2));
    let (haproxy, nginx) = tokio::join!(haproxy, nginx);
    let failures: Vec<String> = [("haproxy", haproxy), ("nginx", nginx)]
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {}", panic_message(e))))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}

/// Run `program args` from the repository root (bounded); assert it succeeds.
fn lint(what: &str, cmd: &mut Command, scratch: &Path) {
    cmd.current_dir(repo_root());
    let (status, out, err) = run_bounded(cmd, scratch, LINT_TIMEOUT);
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
    println!("{what}: ok\n{out}{err}");
}

#[test]
fn deploy_files_pass_hadolint_the_compose_schema_and_haproxy_check() {
    let deps = repo_root().join(".test-deps").join("python");
    let hadolint = deps.join("bin").join("hadolint");
    assert!(
        hadolint.is_file() && deps.join("check_jsonschema").is_dir(),
        "{} has no hadolint and check-jsonschema: run `scripts/test` (it runs \
         `python3 -m pip install --target .test-deps/python -r gateway/tests/python/requirements.txt`)",
        deps.display()
    );
    let scratch = std::env::temp_dir().join(format!("gateway-deploy-lint-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    lint(
        "hadolint deploy/Dockerfile",
        Command::new(&hadolint).arg("deploy/Dockerfile"),
        &scratch,
    );
    lint(
        "check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml",
        Command::new("python3")
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
            ])
            .arg("deploy/docker-compose.yml")
            .env("PYTHONPATH", &deps)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        &scratch,
    );
    // As shipped: the node names need not resolve (init-addr none).
    lint(
        "haproxy -c -f deploy/haproxy/haproxy.cfg",
        Command::new(system_binary("haproxy")).args(["-c", "-f", "deploy/haproxy/haproxy.cfg"]),
        &scratch,
    );
    std::fs::remove_dir_all(&scratch).ok();
}

#[test]
fn the_substitutions_touch_only_addresses() {
    let h = haproxy_config(&shipped("deploy/haproxy/haproxy.cfg"), 1, &[2, 3, 4]);
    assert!(h.contains("bind 127.0.0.1:1\n"), "{h}");
    assert!(h.contains("server gateway-3 127.0.0.1:4\n"), "{h}");
    assert!(h.contains("timeout tunnel 1h"), "{h}");
    let n = nginx_config(&shipped("deploy/nginx/nginx.conf"), 1, &[2, 3, 4]);
    assert!(n.contains("listen 127.0.0.1:1;"), "{n}");
    assert!(n.contains("server 127.0.0.1:2 max_fails=1"), "{n}");
    assert!(n.contains("proxy_read_timeout 1h;"), "{n}");
}
