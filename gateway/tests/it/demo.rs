//! The demo chat page (README "Try it in the browser").
//!
//! Map:
//! - `two_browsers_chat_across_two_nodes_...`: a `redis-server`, two gateway
//!   processes on it (this build's binary; demo on, minting with one shared
//!   secret, each node accepting the other's page origin) and
//!   `tests/sdk/demo_browser.mjs`, which drives two headless Chromium pages
//!   through playwright-core: chat both ways, presence, history after a reload,
//!   and page 1 moving to node B with what it missed when node A is SIGKILLed.
//!   With `DEMO_SCREENSHOT=docs/demo-chat.png` it also saves the screenshot the
//!   README shows.
//! - `demo_mode_decides_which_demo_paths_exist`: the page and the token endpoint
//!   by mode (404s), and only on the client listener.
//! - `the_token_endpoint_mints_for_valid_nicknames_only`: 4xx for bad input, a
//!   token that connects, the demo namespace's options.
//! - `the_binary_with_no_key_serves_the_page_and_mints`: development mode as
//!   `main.rs` sets it up.
//! - `the_embedded_client_is_the_pinned_npm_build`: the served centrifuge.js is
//!   the pinned package's file, with its license beside it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use fanout::testing::RedisServer;
use serde_json::{json, Value};

use crate::deploy::{free_port, wait_http, Proc};
use crate::support::{http_get, http_post, http_request, Client, TestGateway};

/// Bound on the browser script (its own bound is 55 s).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(75);
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

/// Debian's chromium: `/usr/bin/chromium` or `chromium` on PATH. Fails (never
/// skips) when missing.
pub(crate) fn chromium() -> PathBuf {
    std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ))
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("chromium is not installed: run `scripts/test` (it runs `apt-get install chromium`)")
        })
}

/// The body of a `/demo/token` answer, parsed.
fn token_of(status: u16, body: &str) -> String {
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(body).expect("JSON");
    v["token"].as_str().expect("a token").to_owned()
}

async fn ask_token(addr: std::net::SocketAddr, body: &[u8]) -> (u16, Vec<(String, String)>, Value) {
    let (status, headers, text) = http_post(addr, "/demo/token", &[FORM], body).await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

#[tokio::test]
async fn demo_mode_decides_which_demo_paths_exist() {
    const PAGE_PATHS: [&str; 5] = [
        "/",
        "/demo/demo.js",
        "/demo/demo.css",
        "/demo/centrifuge.js",
        "/demo/config.json",
    ];
    // A key configured, demo "auto": neither the page nor the token endpoint.
    let gw = TestGateway::start().await;
    for path in PAGE_PATHS {
        assert_eq!(http_get(gw.addr, path).await.0, 404, "{path}");
    }
    assert_eq!(ask_token(gw.addr, b"user=alice").await.0, 404);

    // Development mode with demo.enabled = false: nothing either.
    let gw = TestGateway::with(|c| {
        c.development = true;
        c.demo.enabled = "false".into();
    })
    .await;
    assert_eq!(http_get(gw.addr, "/").await.0, 404);
    assert_eq!(ask_token(gw.addr, b"user=alice").await.0, 404);

    // A key and demo.enabled = true: the page, still no token endpoint; the page
    // is told so (it then takes ?token=).
    let gw = TestGateway::with(|c| c.demo.enabled = "true".into()).await;
    for path in PAGE_PATHS {
        assert_eq!(http_get(gw.addr, path).await.0, 200, "{path}");
    }
    let (_, page) = http_get(gw.addr, "/").await;
    assert!(
        page.contains("<label for=\"nick\">Nickname</label>"),
        "{page}"
    );
    let (_, config) = http_get(gw.addr, "/demo/config.json").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["mint"], json!(false), "{config}");
    assert_eq!(ask_token(gw.addr, b"user=alice").await.0, 404);
    assert_eq!(http_get(gw.addr, "/demo/other.js").await.0, 404);
    let (status, _, _) = http_request(gw.addr, "DELETE", "/", &[], b"").await;
    assert_eq!(status, 404);

    // The page's headers: no inline script may run, no sniffing.
    let (_, headers, _) = http_request(gw.addr, "GET", "/", &[], b"").await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(header("content-security-policy").contains("script-src 'self'"));
    assert_eq!(header("x-content-type-options"), "nosniff");

    // Development mode: page and token endpoint, on the client listener only.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let gw = TestGateway::with_api_listener(api, |c| {
        c.development = true;
        c.api_key = Some("k".into());
    })
    .await;
    assert_eq!(http_get(gw.addr, "/").await.0, 200);
    assert_eq!(ask_token(gw.addr, b"user=alice").await.0, 200);
    assert_eq!(http_get(api_addr, "/").await.0, 404);
    assert_eq!(ask_token(api_addr, b"user=alice").await.0, 404);
}

#[tokio::test]
async fn the_token_endpoint_mints_for_valid_nicknames_only() {
    let gw = TestGateway::with(|c| c.development = true).await;

    let (status, headers, v) = ask_token(gw.addr, b"user=alice").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user"], json!("alice"));
    assert_eq!(v["expires_in"], json!(900));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "cache-control" && v == "no-store"));
    let token = v["token"].as_str().unwrap();
    let (mut client, connect) = Client::connected(gw.addr, token).await;
    assert_eq!(connect["expires"], json!(true), "{connect}");
    let ttl = connect["ttl"].as_u64().unwrap();
    assert!((890..=900).contains(&ttl), "{connect}");

    // The demo rooms have presence, join/leave and history.
    let sub = client
        .call(
            "subscribe",
            json!({"channel": "demo:lobby", "join_leave": true, "recoverable": true}),
        )
        .await;
    assert!(sub["subscribe"]["epoch"].is_string(), "{sub}");
    let presence = client
        .call("presence", json!({"channel": "demo:lobby"}))
        .await;
    assert_eq!(
        presence["presence"]["presence"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["user"],
        json!("alice"),
        "{presence}"
    );

    // Bad input: a clear 4xx with the reason, never a panic.
    for body in [
        &b""[..],
        b"user=",
        b"name=alice",
        b"user=al%20ice",
        b"user=%3Cb%3E",
        b"user=%FF%FE",
        b"user=abcdefghijklmnopqrstuvwxy",
        &[0xff, 0x00, 0x10][..],
    ] {
        let (status, headers, v) = ask_token(gw.addr, body).await;
        assert_eq!(status, 400, "{:?}: {v}", String::from_utf8_lossy(body));
        assert!(v["error"].is_string(), "{v}");
        assert!(!headers
            .iter()
            .any(|(k, _)| k == "access-control-allow-origin"));
    }
    // A page of this node may read its token; another website may not get one.
    let own = format!("http://{}", gw.addr);
    let (status, headers, _) = http_post(
        gw.addr,
        "/demo/token",
        &[FORM, ("origin", own.as_str())],
        b"user=alice",
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "access-control-allow-origin" && *v == own));
    let (status, headers, _) = http_post(
        gw.addr,
        "/demo/token",
        &[FORM, ("origin", "http://evil.example")],
        b"user=alice",
    )
    .await;
    assert_eq!(status, 403);
    assert!(!headers
        .iter()
        .any(|(k, _)| k == "access-control-allow-origin"));
    let big = format!("user=alice&pad={}", "x".repeat(2048));
    assert_eq!(ask_token(gw.addr, big.as_bytes()).await.0, 413);
    let (status, headers, _) = http_request(gw.addr, "GET", "/demo/token", &[], b"").await;
    assert_eq!(status, 405);
    assert!(headers.iter().any(|(k, v)| k == "allow" && v == "POST"));
    // The node still serves.
    assert_eq!(http_get(gw.addr, "/readyz").await.0, 200);
}

#[tokio::test]
async fn the_binary_with_no_key_serves_the_page_and_mints() {
    let dir = std::env::temp_dir().join(format!("gateway-demo-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_ADMIN_LISTEN", "")
        .env("GATEWAY_LOG", "info");
    let mut node = Proc::spawn("gateway (no key)", &mut cmd, dir.join("gateway.log"));
    wait_http(&mut node, port, "/readyz", Some(200)).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, page) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/demo/centrifuge.js"), "{page}");
    let (status, _, body) = http_post(addr, "/demo/token", &[FORM], b"user=carol").await;
    let (_, connect) = Client::connected(addr, &token_of(status, &body)).await;
    assert!(connect["client"].is_string(), "{connect}");
    let log = node.log_tail();
    assert!(
        log.contains(&format!("demo chat page on http://127.0.0.1:{port}/")),
        "{log}"
    );
    drop(node);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_embedded_client_is_the_pinned_npm_build() {
    let sdk = crate::sdk::sdk_dir();
    let package: Value = serde_json::from_str(
        &std::fs::read_to_string(sdk.join("package.json")).expect("tests/sdk/package.json"),
    )
    .expect("package.json is JSON");
    let pinned = package["dependencies"]["centrifuge"].as_str().unwrap();
    let installed = sdk.join("node_modules/centrifuge/dist/centrifuge.js");
    assert!(
        installed.is_file(),
        "{} is missing: run `scripts/test` (it runs `npm ci` in gateway/tests/sdk)",
        installed.display()
    );
    let assets = repo_root().join("gateway/assets/demo");
    let embedded = std::fs::read(assets.join("centrifuge.js")).unwrap();
    assert!(
        embedded == std::fs::read(&installed).unwrap(),
        "gateway/assets/demo/centrifuge.js differs from the pinned npm build: copy {} there",
        installed.display()
    );
    let license = std::fs::read_to_string(assets.join("centrifuge-LICENSE.txt")).unwrap();
    assert!(
        license.contains(&format!("`centrifuge` {pinned}")),
        "the license file names another version than {pinned}"
    );
    let upstream =
        std::fs::read_to_string(sdk.join("node_modules/centrifuge/LICENSE")).expect("LICENSE");
    assert!(
        license.contains(upstream.trim()),
        "the package's LICENSE text"
    );
    let page = std::fs::read_to_string(assets.join("index.html")).unwrap();
    assert!(
        page.contains(&format!("centrifuge-js {pinned}")),
        "the page names the version"
    );
}

/// Wait (bounded) for `proc` to exit.
async fn exited(proc: &mut Proc, within: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = proc.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fail (never skip) when npm `playwright-core` is missing from the SDK folder.
pub(crate) fn require_playwright(sdk: &std::path::Path) {
    assert!(
        sdk.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules/playwright-core: run `scripts/test` (it runs `npm ci` there)",
        sdk.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_across_two_nodes_and_one_moves_on_when_its_node_dies() {
    let chromium = chromium();
    let sdk = crate::sdk::sdk_dir();
    crate::sdk::require_node(&sdk).await;
    require_playwright(&sdk);
    let dir = std::env::temp_dir().join(format!("gateway-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let redis = RedisServer::start();
    let ports = [free_port(), free_port()];
    let origins: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    // Both nodes in development mode (no key): each mints with a secret of its
    // own, so the page that moves to node B must ask B for its token.
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GATEWAY_")) {
            cmd.env_remove(k);
        }
        cmd.env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_ADMIN_LISTEN", "")
            .env("GATEWAY_REDIS_URL", redis.url())
            .env("GATEWAY_ALLOWED_ORIGINS", origins.join(","))
            .env("GATEWAY_NODE_NAME", format!("demo-{i}"))
            .env("GATEWAY_LOG", "warn");
        let name = format!("gateway {}", ["A", "B"][i]);
        let mut proc = Proc::spawn(&name, &mut cmd, dir.join(format!("gateway-{i}.log")));
        wait_http(&mut proc, *port, "/readyz", Some(200)).await;
        nodes.push(proc);
    }
    let screenshot = std::env::var_os("DEMO_SCREENSHOT").map(|p| repo_root().join(p));
    let args = json!({
        "chromium": chromium,
        "nodes": nodes.iter().zip(ports).map(|(n, p)| json!({
            "http": format!("http://127.0.0.1:{p}"),
            "ws": format!("ws://127.0.0.1:{p}/connection/websocket"),
            "pid": n.pid(),
        })).collect::<Vec<_>>(),
        "screenshot": screenshot,
    });
    let mut node_cmd = Command::new("node");
    node_cmd
        .arg(sdk.join("demo_browser.mjs"))
        .arg(args.to_string())
        .current_dir(&sdk);
    // Its own process group: Chromium goes with it when the test ends.
    let mut script = Proc::spawn(
        "demo_browser.mjs",
        &mut node_cmd,
        dir.join("demo_browser.log"),
    );
    let status = exited(&mut script, BROWSER_TIMEOUT).await;
    let out = std::fs::read_to_string(dir.join("demo_browser.log")).unwrap_or_default();
    println!("{out}");
    let status = status.unwrap_or_else(|| panic!("demo_browser.mjs ran over {BROWSER_TIMEOUT:?}"));
    assert!(status.success(), "demo_browser.mjs failed ({status})");
    let last: Value = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a final JSON line");
    assert_eq!(last["ok"], json!(true), "{last}");

    // The script's SIGKILL hit node A, and only it.
    let killed = exited(&mut nodes[0], Duration::from_secs(5)).await;
    assert_eq!(
        killed.and_then(|s| s.signal()),
        Some(9),
        "node A: {killed:?}"
    );
    nodes[1].assert_running();
    drop(nodes);
    drop(redis);
    std::fs::remove_dir_all(&dir).ok();
}
