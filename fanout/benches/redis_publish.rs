//! Publications per second one node pushes into Redis through the engine, with and
//! without history, beside `redis-benchmark` PUBLISH on the same server as the
//! ceiling. Starts its own `redis-server` on a free loopback port.
//!
//! `cargo bench -p fanout --bench redis_publish` (env: `SECONDS`, `CONCURRENCY`,
//! `PAYLOAD`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::testing::RedisServer;
use fanout::{Broker, BrokerHandler, HistoryOptions, RedisBroker, RedisConfig};
use shared::protocol::{raw_from_slice, ClientInfo, Publication};

struct Nop;

impl BrokerHandler for Nop {
    fn on_publication(&self, _: &str, _: &Arc<Publication>, _: &str) {}
    fn on_join(&self, _: &str, _: &ClientInfo) {}
    fn on_leave(&self, _: &str, _: &ClientInfo) {}
    fn on_lost(&self, _: &str) {}
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(
    broker: Arc<RedisBroker>,
    history: Option<HistoryOptions>,
    concurrency: u64,
    secs: u64,
    payload: usize,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let data = format!("{{\"p\":\"{}\"}}", "x".repeat(payload));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (b, stop, count) = (broker.clone(), stop.clone(), count.clone());
        let publication = Publication {
            data: raw_from_slice(data.as_bytes()).unwrap(),
            info: Some(ClientInfo {
                user: "bench".into(),
                client: format!("c{i}"),
                ..Default::default()
            }),
            offset: 0,
            tags: Default::default(),
        };
        tasks.push(tokio::spawn(async move {
            // Rooms spread like real traffic: one room per publisher.
            let room = format!("bench-{i}");
            while !stop.load(Ordering::Relaxed) {
                b.publish(&room, publication.clone(), history)
                    .await
                    .expect("publish");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let done = count.load(Ordering::Relaxed) - start_count;
    let rate = done as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    rate
}

/// `redis-benchmark` PUBLISH with `pipeline` commands in flight per client.
fn redis_benchmark(port: u16, concurrency: u64, payload: usize, pipeline: u32) -> String {
    let msg = "x".repeat(payload + 60);
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &concurrency.to_string(),
            "-n",
            "500000",
            "-q",
        ])
        .args([
            "-P",
            &pipeline.to_string(),
            "PUBLISH",
            "bench-channel",
            &msg,
        ])
        .output();
    match out {
        // Progress lines are separated by \r; the summary is the last segment.
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split(['\r', '\n'])
            .rfind(|l| l.contains("requests per second"))
            .and_then(|l| l.split(": ").nth(1))
            .unwrap_or("no result")
            .trim()
            .to_owned(),
        Err(e) => format!("redis-benchmark not run: {e}"),
    }
}

fn main() {
    let secs = env("SECONDS", 5);
    let concurrency = env("CONCURRENCY", 64);
    let payload = env("PAYLOAD", 64) as usize;
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (on, off) = rt.block_on(async {
        let broker = RedisBroker::connect(RedisConfig {
            url: server.url(),
            ..Default::default()
        })
        .await
        .expect("connect");
        broker.set_handler(Arc::new(Nop));
        let history = HistoryOptions {
            size: 100,
            ttl: Duration::from_secs(300),
            meta_ttl: Duration::from_secs(3600),
        };
        let on = run(broker.clone(), Some(history), concurrency, secs, payload).await;
        let off = run(broker, None, concurrency, secs, payload).await;
        (on, off)
    });
    let plain = redis_benchmark(server.port, concurrency, payload, 1);
    let piped = redis_benchmark(server.port, concurrency, payload, 16);
    println!("engine publish, history on  ({concurrency} concurrent, {payload} B payload): {on:>9.0} publications/s");
    println!("engine publish, history off ({concurrency} concurrent, {payload} B payload): {off:>9.0} publications/s");
    println!("redis-benchmark PUBLISH, {concurrency} clients, no pipelining:  {plain}");
    println!("redis-benchmark PUBLISH, {concurrency} clients, 16 pipelined:   {piped}");
}
