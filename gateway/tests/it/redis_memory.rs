//! What clients can leave behind in Redis: a client churning made-up room names
//! leaves nothing lasting, while rooms with subscribers keep their positions.

use std::time::{Duration, Instant};

use fanout::testing::{raw_command, RedisServer};
use serde_json::json;

use crate::support::*;

/// `INFO memory`'s `used_memory`, in bytes.
fn used_memory(port: u16) -> u64 {
    let info = raw_command(port, "INFO memory").expect("INFO answered");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

fn dbsize(port: u16) -> u64 {
    let r = raw_command(port, "DBSIZE").expect("DBSIZE answered");
    r.trim()
        .trim_start_matches(':')
        .parse()
        .expect("an integer")
}

/// One client subscribes to (and leaves) 3,000 rooms nobody publishes in, each with
/// recovery (a history read) and presence. Each read makes a stream position; made
/// by a read it lives the namespace's history TTL (2 s here), not
/// `history_meta_ttl` (7 days), so Redis holds at most a TTL's worth of churn (under
/// 4 MiB here; about 1.3 MB measured) and every key is gone soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_room_names_leaves_nothing_lasting_in_redis() {
    const ROOMS: usize = 3_000;
    /// Stated bound on what the churn may hold in Redis at any time.
    const PEAK_BOUND: u64 = 4 << 20;
    let redis = RedisServer::start();
    let gw = TestGateway::on_redis(&redis.url(), |c| {
        c.channel.history_ttl = Duration::from_secs(2);
        c.client.command_rate_per_sec = 0;
    })
    .await;
    let base = used_memory(redis.port);
    let mut c = gw.client("1").await;
    let mut peak = 0u64;
    for batch in 0..ROOMS / 50 {
        let mut lines = Vec::new();
        for i in 0..50 {
            let room = format!("churn-{}", batch * 50 + i);
            let id = (1000 + 2 * i) as u32;
            lines.push(
                json!({"id": id, "subscribe": {"channel": room, "recoverable": true}}).to_string(),
            );
            lines.push(json!({"id": id + 1, "unsubscribe": {"channel": room}}).to_string());
        }
        c.send_text(&lines.join("\n")).await;
        for i in 0..100u32 {
            let r = c.reply(1000 + i).await;
            assert!(r.get("error").is_none(), "{r}");
        }
        if batch % 10 == 0 {
            peak = peak.max(used_memory(redis.port).saturating_sub(base));
        }
    }
    peak = peak.max(used_memory(redis.port).saturating_sub(base));
    assert!(peak < PEAK_BOUND, "churn held {peak} bytes in Redis");
    let deadline = Instant::now() + Duration::from_secs(15);
    while dbsize(redis.port) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} keys outlived the churn",
            dbsize(redis.port)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Redis shrinks its tables a little later; then what is left is its own.
    loop {
        let left = used_memory(redis.port).saturating_sub(base);
        if left < 512 << 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} bytes stayed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A room whose position was made by a read keeps it while it has subscribers,
/// past the short TTL: the first publication after a quiet spell continues the
/// epoch the subscribers were given, and they recover within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_room_keeps_the_epoch_its_subscribers_were_given() {
    let redis = RedisServer::start();
    let gw = TestGateway::on_redis(&redis.url(), |c| {
        c.channel.history_ttl = Duration::from_secs(2);
    })
    .await;
    let mut a = gw.client("a").await;
    let s = a
        .call(
            "subscribe",
            json!({"channel": "quiet", "recoverable": true}),
        )
        .await;
    let epoch = s["subscribe"]["epoch"]
        .as_str()
        .expect("an epoch")
        .to_owned();
    // Three TTLs without a publication.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut p = gw.client("p").await;
    p.subscribe("quiet").await;
    let r = p.publish("quiet", json!({"n": 1})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let push = a.push("quiet").await;
    assert_eq!(push["pub"]["offset"], json!(1), "{push}");
    let mut b = gw.client("b").await;
    let r = b
        .call(
            "subscribe",
            json!({"channel": "quiet", "recoverable": true, "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], json!(true), "{r}");
    assert_eq!(r["subscribe"]["epoch"], json!(epoch), "{r}");
    assert_eq!(
        r["subscribe"]["publications"][0]["data"],
        json!({"n": 1}),
        "{r}"
    );
}
