//! JSON logs of the real binary: one object per line on stderr, each with its
//! level, target, message and the node's name; connection events carry the
//! client, user and close code as fields; no secret appears anywhere.

use std::process::Stdio;
use std::sync::Arc;

use fastwebsockets::Frame;
use parking_lot::Mutex;
use serde_json::Value;
use shared::auth::{mint_hs256, unix_now, MintClaims};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const NODE: &str = "logs-node-7";
const HMAC_SECRET: &str = "hmac-now-3f9a1c77";
const PREVIOUS_SECRET: &str = "hmac-before-b2d04e";
const API_KEY: &str = "api-key-5e81d0c2";

/// The lines received so far, and whether stderr has ended.
type Lines = Arc<Mutex<(Vec<String>, bool)>>;

/// Wait until a line satisfies `pred`; returns it.
async fn line_where(lines: &Lines, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(l) = lines.lock().0.iter().find(|l| pred(l)) {
                return l.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no line {what}: {:?}", lines.lock().0))
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn json_logs_carry_fields_and_the_node_name_but_no_secret() {
    let dir = std::env::temp_dir().join(format!("gateway-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!("log_format = \"text\"\n[token]\nhmac_previous_secret = \"{PREVIOUS_SECRET}\"\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("GATEWAY_CONFIG", &file)
        // The environment overrides the file.
        .env("GATEWAY_LOG_FORMAT", "json")
        .env("GATEWAY_LOG", "gateway=debug,info")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_NODE_NAME", NODE)
        .env("GATEWAY_TOKEN_HMAC_SECRET", HMAC_SECRET)
        .env("GATEWAY_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let lines: Lines = Arc::default();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = {
        let lines = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = stderr.next_line().await {
                lines.lock().0.push(l);
            }
            lines.lock().1 = true;
        })
    };

    let started = line_where(&lines, "with the address", |l| {
        l.contains("clients connect to")
    })
    .await;
    let message = parse(&started)["message"].as_str().unwrap().to_owned();
    let addr: std::net::SocketAddr = message
        .split("ws://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {message:?}"));

    // One client connects with a token signed by the secret, subscribes, leaves.
    let token = mint_hs256(
        HMAC_SECRET,
        &MintClaims {
            sub: "user-42".into(),
            exp: Some(unix_now() + 3600),
            ..Default::default()
        },
    );
    let (mut c, connected) = Client::connected(addr, &token).await;
    let client = client_id(&connected);
    c.subscribe("room").await;
    c.send_frame(Frame::close(1000, b"")).await;
    assert_eq!(c.closed().await.0, 1000);
    let gone = line_where(&lines, "for the disconnect", |l| {
        l.contains("client disconnected")
    })
    .await;

    sigterm(child.id().unwrap());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time");
    assert!(exit.unwrap().success());
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("stderr ends")
        .unwrap();
    let (all, ended) = lines.lock().clone();
    assert!(ended);

    for line in &all {
        let v = parse(line);
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v[field].is_string(), "no {field}: {line}");
        }
        assert_eq!(v["node"], NODE, "{line}");
        for secret in [HMAC_SECRET, PREVIOUS_SECRET, API_KEY, &token] {
            assert!(!line.contains(secret), "a secret in {line}");
        }
    }
    assert!(
        all.iter().any(|l| l.contains("all connections closed")),
        "{all:?}"
    );

    // The connection's events: client, user and close code as fields.
    let connected = line_where(&lines, "for the connect", |l| {
        l.contains("client connected")
    })
    .await;
    let connected = parse(&connected);
    assert_eq!(
        (connected["level"].as_str(), connected["target"].as_str()),
        (Some("DEBUG"), Some("gateway::conn::connect"))
    );
    assert_eq!(connected["client"], client.as_str());
    assert_eq!(connected["user"], "user-42");
    let gone = parse(&gone);
    assert_eq!(gone["client"], client.as_str());
    assert_eq!(gone["user"], "user-42");
    assert_eq!(gone["code"], 1000);
    assert_eq!(gone["rooms"], 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_unknown_log_format_fails_at_start_naming_the_field() {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .env_clear()
            .env("GATEWAY_LOG_FORMAT", "yaml")
            .arg("check-config")
            .output(),
    )
    .await
    .expect("exits in time")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log_format") && err.contains("yaml"), "{err}");
}
