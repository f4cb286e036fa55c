//! Start-up, the `gateway` binary and its commands, and shutdown (in process and
//! by SIGTERM to the real binary).

use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test]
async fn shutdown_flushes_queued_messages_then_closes_with_3001() {
    let mut gw = TestGateway::with(|c| c.client.publish_rate_per_sec = 0).await;
    let mut a = gw.client("1").await;
    let mut b = gw.client("2").await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    for n in 0..100 {
        b.publish("room", json!({ "n": n })).await;
    }
    gw.shutdown().await;
    for n in 0..100 {
        assert_eq!(a.push("room").await["pub"]["data"]["n"], json!(n));
    }
    assert_eq!(a.closed().await, (3001, "shutdown".to_string()));
    assert_eq!(
        gw.node.metrics.connections.get(),
        0,
        "every connection ended"
    );
    assert!(!gw.node.is_ready());
}

/// Start the real binary on port 0; returns it, the address it printed, and its
/// log lines up to the first one containing `until`.
async fn spawn_gateway(
    envs: &[(&str, &str)],
    until: &str,
) -> (Child, std::net::SocketAddr, Vec<String>) {
    spawn_command(Command::new(BIN), envs, until).await
}

/// [`spawn_gateway`] with `cmd`, which must end up executing the gateway.
async fn spawn_command(
    mut cmd: Command,
    envs: &[(&str, &str)],
    until: &str,
) -> (Child, std::net::SocketAddr, Vec<String>) {
    cmd.env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gateway");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut addr = None;
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("gateway exited early");
            if let Some(rest) = line.split("clients connect to ws://").nth(1) {
                addr = Some(
                    rest.split('/')
                        .next()
                        .unwrap()
                        .parse::<std::net::SocketAddr>()
                        .unwrap(),
                );
            }
            let done = line.contains(until);
            seen.push(line);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gateway did not print {until:?}: {seen:?}"));
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr.expect("address printed"), seen)
}

/// The soft and hard "Max open files" of a running process.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let hard = open_file_limits(std::process::id()).1;
    if hard == "unlimited" || hard.parse::<u64>().unwrap() <= 256 {
        panic!("this test needs a finite hard open-file limit above 256, not {hard}");
    }
    // A shell lowers the soft limit, then becomes the gateway.
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", "ulimit -Sn 256 && exec \"$0\"", BIN]);
    let (child, _, lines) = spawn_command(
        sh,
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
        "clients connect to",
    )
    .await;
    let (soft, now_hard) = open_file_limits(child.id().unwrap());
    assert_eq!(
        (soft.as_str(), now_hard.as_str()),
        (hard.as_str(), hard.as_str())
    );
    // Below the default max_connections (500,000) plus reserve, the node says so.
    let text = lines.join("\n");
    let caps = hard.parse::<u64>().unwrap() < 500_256;
    assert_eq!(
        text.contains("open-file limit caps this node"),
        caps,
        "{text}"
    );
    assert!(text.contains(&format!("open_files={hard}")), "{text}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_3001_and_exits() {
    let (mut child, addr, _) = spawn_gateway(
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
        "clients connect to",
    )
    .await;
    let mut c = Client::open(addr).await;
    c.connect(&token("1")).await;
    c.subscribe("room").await;
    sigterm(child.id().unwrap());
    assert_eq!(c.closed().await, (3001, "shutdown".to_string()));
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
}

/// The drain waits (`shutdown.readiness_delay`, 5 s by default); a second signal
/// ends the process at once, with code 130.
#[tokio::test]
async fn a_second_sigterm_exits_without_draining() {
    let (mut child, addr, _) = spawn_gateway(
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
        "clients connect to",
    )
    .await;
    let mut c = Client::open(addr).await;
    c.connect(&token("1")).await;
    let pid = child.id().unwrap();
    sigterm(pid);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    sigterm(pid);
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(130), "{exit:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "exited {:?} after the second signal, not at once",
        started.elapsed()
    );
}

#[tokio::test]
async fn development_mode_prints_a_working_token() {
    let (_child, addr, lines) = spawn_gateway(&[], "connection token for user").await;
    let text = lines.join("\n");
    assert!(text.contains("FOR DEVELOPMENT ONLY"), "{text}");
    let token = text
        .split("connection token for user \"demo\" (24h): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("token printed")
        .to_owned();
    let mut c = Client::open(addr).await;
    let r = c.connect(&token).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    c.subscribe("room").await;
    c.publish("room", json!("hi")).await;
    assert_eq!(c.push("room").await["pub"]["info"]["user"], json!("demo"));
}

async fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("cli finishes")
        .unwrap()
}

#[tokio::test]
async fn token_command_mints_tokens_the_gateway_accepts() {
    let out = run_cli(
        &[
            "token",
            "--user",
            "42",
            "--ttl",
            "1h",
            "--info",
            r#"{"name":"Ann"}"#,
        ],
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let conn_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = run_cli(
        &["token", "--user", "42", "--channel", "$secret"],
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let sub_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let r = c.connect(&conn_token).await;
    assert_eq!(r["connect"]["expires"], json!(true), "{r}");
    let ttl = r["connect"]["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    let r = c
        .call(
            "subscribe",
            json!({"channel": "$secret", "token": sub_token}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    c.publish("$secret", json!(1)).await;
    let p = c.push("$secret").await;
    assert_eq!(p["pub"]["info"]["conn_info"], json!({"name": "Ann"}));

    let out = run_cli(&["token", "--user", "1"], &[]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEWAY_TOKEN_HMAC_SECRET"));
}

#[tokio::test]
async fn invalid_configuration_fails_at_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[client]\nping_interval = \"5s\"\npong_timeout = \"9s\"\n",
    )
    .unwrap();
    let out = run_cli(&["--config", bad.to_str().unwrap(), "check-config"], &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.pong_timeout"), "{err}");

    std::fs::write(&bad, "[namespaces.news]\nhistory_sise = 3\n").unwrap();
    let out = run_cli(&["--config", bad.to_str().unwrap(), "check-config"], &[]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("history_sise"));

    let out = run_cli(&["check-config"], &[("GATEWAY_LISTEN", "not-an-address")]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));

    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9999\"\n[namespaces.news]\nhistory_size = 0\n",
    )
    .unwrap();
    let out = run_cli(
        &["check-config"],
        &[("GATEWAY_CONFIG", good.to_str().unwrap())],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn health_endpoints_follow_readiness() {
    let mut gw = TestGateway::start().await;
    assert!(gw.node.is_ready());
    gw.node.set_ready(false);
    assert!(!gw.node.is_ready());
    gw.node.set_ready(true);
    gw.shutdown().await;
    assert!(!gw.node.is_ready(), "not ready once shutting down");
    assert!(ws_connect(gw.addr, &[]).await.is_err(), "listener closed");
}

/// The binary binds `GATEWAY_ADMIN_LISTEN` and serves `/metrics` there; empty
/// turns the admin listener off.
#[tokio::test]
async fn the_binary_serves_metrics_on_the_admin_address() {
    let (_child, _, lines) = spawn_gateway(
        &[("GATEWAY_TOKEN_HMAC_SECRET", SECRET)],
        "metrics on http://",
    )
    .await;
    let admin: std::net::SocketAddr = lines
        .last()
        .and_then(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("admin address printed: {lines:?}"));
    let (status, _, body) = crate::support::http_request(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition");
    let connections = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gateway_connections")
        .map(|s| s.value.clone());
    assert_eq!(connections, Some(prometheus_parse::Value::Gauge(0.0)));
    let (_child, _, lines) = spawn_gateway(
        &[
            ("GATEWAY_TOKEN_HMAC_SECRET", SECRET),
            ("GATEWAY_ADMIN_LISTEN", ""),
        ],
        "admin listener off",
    )
    .await;
    assert!(!lines.iter().any(|l| l.contains("metrics on")), "{lines:?}");
}
