//! Two real Python packages against gateways, run as scripts in `tests/python/`:
//! PyPI `cent` (Centrifugo's server API client) drives the server HTTP API of a
//! two-node cluster (`cent_api.py`), and `centrifuge-python` (the official client
//! SDK) is the user's connection there and, in `sdk_interop.py`, checks connect,
//! publish, presence, history and recovery like the centrifuge-js test in `sdk.rs`.
//! Versions are pinned in `tests/python/requirements.txt`; `scripts/test` installs
//! them into `.test-deps/python`. Without them these tests fail rather than skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gateway::Config;

use crate::support::{repo_root, run_checked_script, token, TestGateway};

/// Bound for a whole script; its own waits are 5 s each and it stops itself at 75 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

const API_KEY: &str = "py-interop-key";

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
}

/// Where `scripts/test` installs the pinned packages.
fn deps_dir() -> PathBuf {
    repo_root().join(".test-deps").join("python")
}

/// Fail (never skip) when python3 or the pinned packages are missing.
async fn require_python(deps: &Path) {
    let found = tokio::process::Command::new("python3")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`python3` is not on PATH: run `scripts/test`, which checks for Python and installs the packages"
    );
    assert!(
        deps.join("cent").is_dir() && deps.join("centrifuge").is_dir(),
        "{} has no cent and centrifuge packages: run `scripts/test` (it runs \
         `python3 -m pip install --target .test-deps/python -r gateway/tests/python/requirements.txt`)",
        deps.display()
    );
}

/// Run `script` with `args`; assert it exits 0 and ends with `{"ok":true,...}`.
async fn run_script(script: &str, args: &[String]) {
    let deps = deps_dir();
    require_python(&deps).await;
    let dir = scripts_dir();

    let mut command = tokio::process::Command::new("python3");
    command
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .env("PYTHONPATH", &deps)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    // With INTEROP_TRACE=1 the SDK's frames go to stderr.
    run_checked_script(command, script, SCRIPT_TIMEOUT).await;
}

/// A cluster node for the API test: the API on, heartbeats short so that `info`
/// lists both nodes quickly.
fn api_node(c: &mut Config) {
    c.api_key = Some(API_KEY.into());
    c.heartbeat_interval = Duration::from_millis(200);
}

fn api_url(gw: &TestGateway) -> String {
    format!("http://{}/api", gw.addr)
}

#[tokio::test]
async fn cent_drives_the_server_api_of_two_nodes_with_a_centrifuge_python_user() {
    let redis = fanout::testing::RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), api_node).await;
    let b = TestGateway::on_redis(&redis.url(), api_node).await;
    run_script(
        "cent_api.py",
        &[
            api_url(&a),
            api_url(&b),
            b.url(),
            API_KEY.into(),
            token("carol"),
        ],
    )
    .await;
}

#[tokio::test]
async fn centrifuge_python_connects_publishes_reads_presence_history_and_recovers() {
    // The script checks join and leave events too.
    let gw = TestGateway::with(|c| c.channel.join_leave = true).await;
    run_script(
        "sdk_interop.py",
        &[gw.url(), gw.url(), token("alice"), token("bob")],
    )
    .await;
}

#[tokio::test]
async fn centrifuge_python_across_two_nodes_sharing_redis() {
    let redis = fanout::testing::RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    let b = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    run_script(
        "sdk_interop.py",
        &[a.url(), b.url(), token("alice"), token("bob")],
    )
    .await;
}
