//! The real centrifuge-js SDK (npm `centrifuge`, pinned in `tests/sdk/package.json`)
//! against a gateway: connect, publish, presence, history and recovery after a
//! reconnect, driven by `tests/sdk/interop.mjs` under Node; and the SDK through
//! the backend proxies (`tests/sdk/proxy.mjs`). `scripts/test` installs
//! Node's packages; without them this test fails rather than skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{run_checked_script, token, TestGateway};

/// Bound for the whole script; its own waits are 5 s each.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// Fail (never skip) when Node or the SDK packages are missing.
pub(crate) async fn require_node(dir: &Path) {
    let found = tokio::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`node` is not on PATH: run `scripts/test`, which checks for Node and installs the SDK"
    );
    let modules = dir.join("node_modules");
    assert!(
        modules.join("centrifuge").is_dir() && modules.join("ws").is_dir(),
        "{} has no node_modules with centrifuge and ws: run `scripts/test` (it runs `npm ci` there)",
        dir.display()
    );
}

/// Run the script with client A on `url_a` and client B on `url_b`.
async fn run_interop(url_a: String, url_b: String) {
    let args = [format!("{url_a},{url_b}"), token("alice"), token("bob")];
    run_script("interop.mjs", &args).await;
}

/// Run `script` (in `tests/sdk`) with `args`; it must end with `{"ok":true}`.
async fn run_script(script: &str, args: &[String]) {
    let dir = sdk_dir();
    require_node(&dir).await;

    let mut command = tokio::process::Command::new("node");
    command.arg(dir.join(script)).args(args).current_dir(&dir);
    run_checked_script(command, script, SCRIPT_TIMEOUT).await;
}

#[tokio::test]
async fn centrifuge_js_connects_publishes_reads_presence_history_and_recovers() {
    // The script checks join and leave events too.
    let gw = TestGateway::with(|c| c.channel.join_leave = true).await;
    run_interop(gw.url(), gw.url()).await;
}

#[tokio::test]
async fn centrifuge_js_across_two_nodes_sharing_redis() {
    let redis = fanout::testing::RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    let b = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    run_interop(a.url(), b.url()).await;
}

/// The SDK through the proxies: connected by a session cookie with no token, a
/// subscription refused with the backend's own error, a publication rewritten.
#[tokio::test]
async fn centrifuge_js_through_the_backend_proxies() {
    let backend = crate::backend::Backend::start().await;
    let gw = TestGateway::with(|c| {
        c.proxy.connect_url = Some(backend.url("connect"));
        c.proxy.subscribe_url = Some(backend.url("subscribe"));
        c.proxy.publish_url = Some(backend.url("publish"));
        c.namespaces.insert(
            "vip".into(),
            gateway::config::ChannelOptions {
                proxy_subscribe: true,
                ..Default::default()
            },
        );
        c.namespaces.insert(
            "mod".into(),
            gateway::config::ChannelOptions {
                proxy_publish: true,
                ..Default::default()
            },
        );
    })
    .await;
    run_script("proxy.mjs", &[gw.url(), "session=alice".into()]).await;
    assert_eq!(backend.calls("connect").len(), 1);
    assert_eq!(backend.calls("publish").len(), 1);
}
