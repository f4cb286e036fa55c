//! The Django example (`examples/django-chat`) with real parts: Django's dev
//! server on a fresh SQLite file, a `redis-server`, a gateway process whose
//! connect and publish proxies are Django views, and the real centrifuge-js SDK
//! logging in through Django, and the room page in headless Chromium
//! (`tests/sdk/django.mjs`).
//!
//! Map:
//! - `django_backend_authenticates_stores_and_moderates_the_room`: the whole
//!   flow (see django.mjs), then the room the clients saw against the rows in
//!   SQLite: every message stored exactly once, with the author, the rewritten
//!   text and the moderator's edit; the deleted one gone; the messages sent one
//!   after another through the publish proxy, and the concurrent burst sent
//!   with the `send` RPC, stored in the order the room delivered them.
//! - Helpers: `Site` (the scratch directory, the Django and gateway processes)
//!   and `manage` (a bounded `manage.py` run).
//!
//! Django and `cent` are pinned in `tests/python/requirements.txt`, Node's packages
//! (centrifuge, ws, playwright-core) in `tests/sdk/package.json`; `scripts/test`
//! installs them and Debian's chromium. Without them the test fails rather than
//! skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fanout::testing::RedisServer;
use serde_json::{json, Value};

use crate::deploy::{free_port, wait_http, Proc};
use crate::support::{repo_root, run_checked_script, SECRET};

/// Bound on the Node script (its own bound is 30 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Bound on one `manage.py` command (migrate takes about a second).
const MANAGE_TIMEOUT: Duration = Duration::from_secs(30);
const API_KEY: &str = "django-api-key";
/// The key the proxy URLs carry (`?key=`), checked by the Django views.
const PROXY_KEY: &str = "django-proxy-key";
const ROOM: &str = "lobby";
/// Messages django.mjs sends concurrently with the `send` RPC (four connections,
/// `BURST_EACH` each).
const SENDS: usize = 20;

fn example_dir() -> PathBuf {
    repo_root().join("examples").join("django-chat")
}

fn deps_dir() -> PathBuf {
    repo_root().join(".test-deps").join("python")
}

/// Fail (never skip) when Django or cent is not installed.
fn require_django(deps: &Path) {
    for package in ["django", "asgiref", "sqlparse", "cent"] {
        assert!(
            deps.join(package).is_dir(),
            "{} has no {package}: run `scripts/test` (it runs `python3 -m pip install \
             --target .test-deps/python -r gateway/tests/python/requirements.txt`)",
            deps.display()
        );
    }
}

/// The scratch directory and the environment every Django process gets.
struct Site {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Site {
    fn new(gateway_port: u16) -> Site {
        let dir = std::env::temp_dir().join(format!("gateway-django-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let gateway = format!("127.0.0.1:{gateway_port}");
        let env = vec![
            ("PYTHONPATH", deps_dir().display().to_string()),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
            ("PYTHONUNBUFFERED", "1".into()),
            ("DJANGO_DB", dir.join("db.sqlite3").display().to_string()),
            ("DJANGO_DEBUG", "1".into()),
            ("DJANGO_SECRET_KEY", "django-test-secret".into()),
            ("DJANGO_ALLOWED_HOSTS", "127.0.0.1".into()),
            (
                "GATEWAY_WS_URL",
                format!("ws://{gateway}/connection/websocket"),
            ),
            ("GATEWAY_API_URL", format!("http://{gateway}/api")),
            ("GATEWAY_API_KEY", API_KEY.into()),
            ("GATEWAY_TOKEN_HMAC_SECRET", SECRET.into()),
            ("GATEWAY_PROXY_KEY", PROXY_KEY.into()),
        ];
        Site { dir, env }
    }

    fn python(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("manage.py").args(args).current_dir(example_dir());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Run `manage.py args` to the end (bounded); its stdout.
    async fn manage(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::from(self.python(args));
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(MANAGE_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("manage.py {args:?} ran over {MANAGE_TIMEOUT:?}"))
            .unwrap_or_else(|e| {
                panic!("manage.py {args:?}: {e} (is python3 on PATH? run scripts/test)")
            });
        assert!(
            out.status.success(),
            "manage.py {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The gateway's TOML: the block of the example's README, pointed at this
    /// Django and this proxy key (the `chat` namespace's publications go through
    /// the publish proxy and keep history; tokenless connects ask the connect proxy).
    fn gateway_config(&self, django_port: u16) -> PathBuf {
        let readme = std::fs::read_to_string(example_dir().join("README.md")).expect("README");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a TOML block in examples/django-chat/README.md");
        assert!(
            block.contains("127.0.0.1:8001") && block.contains("key=change-me-proxy-key"),
            "the README's TOML no longer names Django at 127.0.0.1:8001 with the proxy key"
        );
        let toml = block
            .replace("127.0.0.1:8001", &format!("127.0.0.1:{django_port}"))
            .replace("key=change-me-proxy-key", &format!("key={PROXY_KEY}"));
        let path = self.dir.join("gateway.toml");
        std::fs::write(&path, toml).expect("write gateway.toml");
        path
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn gateway_process(site: &Site, port: u16, django_port: u16, redis_url: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GATEWAY_")) {
        cmd.env_remove(k);
    }
    cmd.env("GATEWAY_CONFIG", site.gateway_config(django_port))
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_ADMIN_LISTEN", "")
        .env("GATEWAY_REDIS_URL", redis_url)
        .env("GATEWAY_TOKEN_HMAC_SECRET", SECRET)
        .env("GATEWAY_API_KEY", API_KEY)
        .env("GATEWAY_LOG", "warn");
    Proc::spawn("gateway", &mut cmd, site.dir.join("gateway.log"))
}

/// One stored or seen message: id, author, text, edited.
fn row(v: &Value) -> (u64, String, String, bool) {
    (
        v["id"].as_u64().expect("id"),
        v["user"].as_str().expect("user").to_owned(),
        v["text"].as_str().expect("text").to_owned(),
        v["edited"].as_bool().expect("edited"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_backend_authenticates_stores_and_moderates_the_room() {
    require_django(&deps_dir());
    let chromium = crate::demo::chromium();
    let sdk = crate::sdk::sdk_dir();
    crate::sdk::require_node(&sdk).await;
    crate::demo::require_playwright(&sdk);
    let (django_port, gateway_port) = (free_port(), free_port());
    let site = Site::new(gateway_port);
    site.manage(&["migrate", "--verbosity", "0"]).await;
    site.manage(&["seed_users", "alice:pw", "bob:pw", "mod:pw!"])
        .await;

    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{django_port}");
    let mut django = Proc::spawn(
        "django",
        &mut site.python(&["runserver", &addr, "--noreload"]),
        site.dir.join("django.log"),
    );
    wait_http(&mut django, django_port, "/accounts/login/", Some(200)).await;
    let mut gateway = gateway_process(&site, gateway_port, django_port, &redis.url());
    wait_http(&mut gateway, gateway_port, "/readyz", Some(200)).await;

    let args = json!({
        "django": format!("http://{addr}"),
        "ws": format!("ws://127.0.0.1:{gateway_port}/connection/websocket"),
        "room": ROOM,
        "chromium": chromium,
    });
    let mut node = tokio::process::Command::new("node");
    node.arg(sdk.join("django.mjs"))
        .arg(args.to_string())
        .current_dir(&sdk);
    let seen = run_checked_script(node, "django.mjs", SCRIPT_TIMEOUT).await;
    django.assert_running();
    gateway.assert_running();

    // The room as the clients saw it (in offset order, the moderator's events
    // applied) against SQLite (in the order the rows were stored).
    let stored: Vec<Value> = site
        .manage(&["dump_messages", ROOM])
        .await
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let mut seen_rows: Vec<_> = seen["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(row)
        .collect();
    let stored_rows: Vec<_> = stored.iter().map(row).collect();
    seen_rows.sort_by_key(|r| r.0);
    assert_eq!(
        seen_rows, stored_rows,
        "the messages the room delivered are not the rows Django stored"
    );
    assert!(
        stored
            .iter()
            .any(|r| r["edited"] == true && r["text"] == "edited by mod"),
        "the moderator's edit is not stored: {stored:?}"
    );
    // The first message was edited and the second deleted: the sequential ones
    // left (ids as delivered, in offset order) are stored in the same order.
    let sequential: Vec<u64> = seen["sequential"]
        .as_array()
        .expect("sequential")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect();
    let stored_ids: Vec<u64> = stored
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    // The `send` RPC's rows (the ones with an offset: the concurrent burst and
    // the page's message) are stored in the order the room delivered them, each
    // with the offset it was delivered at.
    let with_offset: Vec<(u64, u64)> = stored
        .iter()
        .filter_map(|r| Some((r["id"].as_u64()?, r["offset"].as_u64()?)))
        .collect();
    let delivered: Vec<(u64, u64)> = seen["delivered"]
        .as_array()
        .expect("delivered")
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().expect("id"),
                v["offset"].as_u64().expect("offset"),
            )
        })
        .filter(|(id, _)| with_offset.iter().any(|(stored, _)| stored == id))
        .collect();
    assert!(
        with_offset.len() > SENDS,
        "{} rows with an offset, want the {SENDS} sends and the page's message",
        with_offset.len()
    );
    assert_eq!(
        with_offset, delivered,
        "the send RPC's rows (id, offset) in storage order are not the room's order"
    );
    let kept: Vec<u64> = sequential
        .iter()
        .copied()
        .filter(|id| stored_ids.contains(id))
        .collect();
    let stored_sequential: Vec<u64> = stored_ids
        .iter()
        .copied()
        .filter(|id| sequential.contains(id))
        .collect();
    assert_eq!(
        kept, stored_sequential,
        "stored in another order than the room's"
    );
    assert_eq!(
        kept.len(),
        sequential.len() - 1,
        "only the deleted one is gone"
    );
}
