//! Redis failing under a publish stream, with the real centrifuge-js SDK
//! (`tests/sdk/redis_faults.mjs`): ten recoverable readers on two nodes, a
//! publisher that retries every publication until it is acknowledged, and Redis
//! broken once the script says `FAULT`. Every acknowledged publication must reach
//! every reader, once and in order, each change of epoch reported once as
//! `recovered: false` (docs/protocol.md §4.3).
//!
//! Map:
//! - `sdk_readers_keep_every_acknowledged_publication_across_a_redis_restart`:
//!   SIGKILL, two seconds down, restarted empty on the same port.
//! - `sdk_readers_see_no_gap_across_a_redis_restart_with_aof`: the same with
//!   append-only persistence: the epoch stays and no reader is told of a gap.
//! - `sdk_readers_keep_every_acknowledged_publication_across_a_sentinel_failover`:
//!   a primary, its replica and three sentinels; the primary SIGKILLed, the
//!   replica promoted; the nodes follow through `redis+sentinel://`.
//! - `sdk_readers_keep_every_acknowledged_publication_across_a_cluster_failover`:
//!   three masters with a replica each; the room's master SIGKILLed, its replica
//!   promoted by the cluster.
//! - `loadtest_soak_with_redis_restarts_loses_nothing`: the real `loadtest cluster
//!   --redis-fault-every` around the soak scenario (raw protocol clients): no
//!   loss, and every publisher's order kept through the kills.
//! - `FaultScript`: the Node script, its stdout read line by line so the test can
//!   act on `FAULT`, bounded throughout.

use std::process::Stdio;
use std::time::Duration;

use fanout::testing::{RedisCluster, RedisSentinels, RedisServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{token, TestGateway};

/// Bound on the script (its own bound is 110 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the wait for the script's `FAULT` line.
const FAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `redis_faults.mjs` running: `fault` fires on its `FAULT` line, `done` yields
/// its final JSON line (asserted `"ok": true`).
struct FaultScript {
    fault: oneshot::Receiver<()>,
    done: JoinHandle<Value>,
}

impl FaultScript {
    async fn start(gateways: &[&TestGateway], total: u32, fault_at: u32, max_epochs: u32) -> Self {
        let sdk = crate::sdk::sdk_dir();
        crate::sdk::require_node(&sdk).await;
        let args = json!({
            "ws": gateways.iter().map(|g| g.url()).collect::<Vec<_>>(),
            "token": token("reader"),
            "channel": "room",
            "total": total,
            "fault_at": fault_at,
            "max_epochs": max_epochs,
        });
        let mut child = tokio::process::Command::new("node")
            .arg(sdk.join("redis_faults.mjs"))
            .arg(args.to_string())
            .current_dir(&sdk)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node redis_faults.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, fault) = oneshot::channel();
        let done = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = Vec::new();
            let read = async {
                while let Some(line) = lines.next_line().await.expect("read stdout") {
                    println!("redis_faults.mjs: {line}");
                    if line == "FAULT" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    seen.push(line);
                }
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err).await;
                (child.wait().await.expect("wait for node"), err)
            };
            let (status, err) = tokio::time::timeout(SCRIPT_TIMEOUT, read)
                .await
                .unwrap_or_else(|_| panic!("redis_faults.mjs ran over {SCRIPT_TIMEOUT:?}"));
            let last: Value = seen
                .iter()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| panic!("no final JSON line ({status}); stderr:\n{err}"));
            assert!(
                status.success() && last["ok"] == json!(true),
                "redis_faults.mjs failed ({status}): {last}\nstderr:\n{err}"
            );
            last
        });
        FaultScript { fault, done }
    }

    /// Wait for the script's `FAULT` line.
    async fn fault_point(&mut self) {
        tokio::time::timeout(FAULT_TIMEOUT, &mut self.fault)
            .await
            .expect("the script did not reach its fault point")
            .expect("the script ended before its fault point");
    }

    async fn result(self) -> Value {
        self.done.await.expect("the script's reader panicked")
    }
}

/// Check and print a failover's run: every publication acknowledged and received.
fn failover_done(kind: &str, promoted: Duration, r: &Value) {
    assert_eq!(r["acknowledged"], json!(200), "{r}");
    assert_eq!(r["missing"], json!(0), "{r}");
    println!(
        "{kind} failover: replica promoted {} ms after the kill; 200 acknowledged, 0 missing; \
         longest silence {} ms, first delivery {} ms after the fault",
        promoted.as_millis(),
        r["max_quiet_ms"],
        r["fault_to_first_delivery_ms"]
    );
}

/// [`config`], with the connections probed twice a second (so that a silent
/// connection is found quickly).
fn fast_probe(c: &mut gateway::Config) {
    config(c);
    c.redis.probe_interval = Duration::from_millis(500);
}

/// The publisher publishes as fast as it is acknowledged, and the room's history
/// holds the whole run: every acknowledged publication stays recoverable (beyond
/// the history, a reader is told `recovered: false` without them).
fn config(c: &mut gateway::Config) {
    c.client.publish_rate_per_sec = 0;
    c.channel.history_size = 1000;
}

/// `redis` killed (SIGKILL) at the script's fault point and restarted on the same
/// port two seconds later, under two nodes; the script's result.
async fn restart_under_script(mut redis: RedisServer, max_epochs: u32) -> Value {
    let a = TestGateway::on_redis(&redis.url(), config).await;
    let b = TestGateway::on_redis(&redis.url(), config).await;
    let mut script = FaultScript::start(&[&a, &b], 200, 60, max_epochs).await;
    script.fault_point().await;
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| redis.restart());
    let r = script.result().await;
    assert_eq!(r["acknowledged"], json!(200), "{r}");
    assert_eq!(r["missing"], json!(0), "{r}");
    r
}

/// The scenario of a Redis restart without persistence: killed at the 60th of 200
/// publications, restarted empty two seconds later. Every reader keeps all 200 and
/// reports the new epoch once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_readers_keep_every_acknowledged_publication_across_a_redis_restart() {
    let r = restart_under_script(RedisServer::start(), 2).await;
    let gaps = r["reported_gap"].as_array().expect("reported_gap");
    assert!(
        gaps.iter().all(|g| g == &json!(1)),
        "every reader learns of the new epoch once: {r}"
    );
    println!(
        "Redis restart: {} acknowledged, 0 missing; longest silence {} ms, first delivery {} ms after the fault",
        r["acknowledged"], r["max_quiet_ms"], r["fault_to_first_delivery_ms"]
    );
}

/// With AOF (fsync always) the history survives the restart: the same epoch, the
/// nodes repair their rooms from the stream, and no reader learns of a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_readers_see_no_gap_across_a_redis_restart_with_aof() {
    let r = restart_under_script(RedisServer::start_aof(), 1).await;
    assert_eq!(r["resubscribe_codes"], json!([0]), "no 2500: {r}");
    println!(
        "Redis restart with AOF: 200 acknowledged, 0 missing, no gap; longest silence {} ms",
        r["max_quiet_ms"]
    );
}

/// Sentinel: the primary SIGKILLed at the 60th of 200 publications; the sentinels
/// promote the replica (down after 1 s) and the nodes follow. The replica had every
/// publication, so the epoch stays: no reader sees a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_readers_keep_every_acknowledged_publication_across_a_sentinel_failover() {
    let mut redis = tokio::task::block_in_place(RedisSentinels::start);
    let url = redis.url();
    let a = TestGateway::on_redis(&url, fast_probe).await;
    let b = TestGateway::on_redis(&url, fast_probe).await;
    let mut script = FaultScript::start(&[&a, &b], 200, 60, 1).await;
    script.fault_point().await;
    let killed = std::time::Instant::now();
    tokio::task::block_in_place(|| redis.primary.kill());
    let not_ready = tokio::time::timeout(Duration::from_secs(10), async {
        while a.node.is_ready() && b.node.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::task::block_in_place(|| redis.wait_for_failover(Duration::from_secs(30)));
    let promoted = killed.elapsed();
    let r = script.result().await;
    assert!(
        not_ready.is_ok(),
        "no node turned not-ready while there was no primary"
    );
    failover_done("Sentinel", promoted, &r);
}

/// Cluster: the master of the room's slot SIGKILLed at the 60th of 200
/// publications; its replica is promoted (node timeout 2 s) and the nodes follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_readers_keep_every_acknowledged_publication_across_a_cluster_failover() {
    let mut cluster = tokio::task::block_in_place(|| RedisCluster::start_with_replicas(3, 1));
    let url = cluster.url();
    let a = TestGateway::on_redis(&url, fast_probe).await;
    let b = TestGateway::on_redis(&url, fast_probe).await;
    let victim = cluster
        .master_of(cluster.nodes[0].port, "room")
        .expect("the room's master");
    let mut script = FaultScript::start(&[&a, &b], 200, 60, 1).await;
    script.fault_point().await;
    let killed = std::time::Instant::now();
    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == victim)
        .expect("the victim among the nodes");
    tokio::task::block_in_place(|| node.kill());
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.port != victim)
        .expect("a survivor")
        .port;
    let promoted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let master = tokio::task::block_in_place(|| cluster.master_of(survivor, "room"));
            if master.is_some_and(|m| m != victim) {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the replica promoted within 30 s");
    let r = script.result().await;
    failover_done("Cluster", promoted, &r);
}

/// `loadtest cluster --redis-fault-every` with the soak scenario: Redis killed at
/// +6 s and +12 s (and not again: `--redis-faults 2`, so that no restart falls into
/// the run's final wait), down 2 s each time, restarted empty. The soak's members
/// lose nothing they were not told of: each restart's new epoch is handed over
/// with `recovered:false`. And no publisher's publications change places, although
/// some were in flight at each kill (`fanout/src/redis/order.rs`).
#[test]
fn loadtest_soak_with_redis_restarts_loses_nothing() {
    let scratch = std::env::temp_dir().join(format!("gateway-redis-faults-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let loadtest = crate::rolling::loadtest_binary(&scratch);
    let (status, stdout, stderr) = fanout::testing::run_bounded(
        std::process::Command::new(&loadtest)
            .args(["cluster", "--nodes", "2", "--gateway"])
            .arg(env!("CARGO_BIN_EXE_gateway"))
            .args(["--redis-fault-every", "6s", "--redis-faults", "2"])
            .args(["--redis-down", "2s"])
            .args([
                "--",
                "soak",
                "--rooms",
                "10",
                "--members",
                "5",
                "--rate",
                "2",
            ])
            .args(["--reconnect-every", "1h", "--duration", "16s", "--json"]),
        &scratch,
        Duration::from_secs(120),
    );
    std::fs::remove_dir_all(&scratch).ok();
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let show = || format!("{report}\nstderr:\n{stderr}");
    let count = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {}", show()))
    };
    assert!(stderr.contains("killed (SIGKILL) at +6."), "{}", show());
    assert!(stderr.contains("killed (SIGKILL) at +12."), "{}", show());
    for k in [
        "lost",
        "duplicated",
        "reordered",
        "epoch_mismatches",
        "unexpected_messages",
        "publish_errors",
    ] {
        assert_eq!(count(k), 0, "{k}: {}", show());
    }
    assert!(
        count("publications") > 0 && count("deliveries") > 0,
        "{}",
        show()
    );
    // Every member stayed subscribed through both restarts: told once for each.
    assert_eq!(stderr.matches("started again").count(), 2, "{}", show());
    assert_eq!(count("recovery_failed"), 2 * 50, "{}", show());
    let silence = report["longest_silence_ms"]
        .as_f64()
        .expect("longest_silence_ms");
    assert!(
        (1500.0..6000.0).contains(&silence),
        "the longest time without a delivery, {silence} ms, is not about the 2 s outage: {}",
        show()
    );
    println!(
        "loadtest soak, 2 Redis restarts: {} acknowledged, lost 0, reordered 0, longest silence {silence:.0} ms",
        count("publications")
    );
}
