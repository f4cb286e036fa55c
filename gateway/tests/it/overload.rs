//! A node driven past what it can publish: a flood sender is slowed by
//! backpressure (its pipeline full, its socket not read), while every client that
//! answers its pings stays connected and every accepted publication reaches every
//! member once, in order.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{token, Client, Msg, TestGateway};

/// Publications the flood sender offers, in frames of `PER_FRAME` commands.
const FLOOD: u32 = 4_000;
const PER_FRAME: u32 = 100;
/// Publications each of the steady members makes, one at a time.
const STEADY: u32 = 20;
const STEADY_MEMBERS: usize = 3;
const ROOM: &str = "crowded";

/// What one member saw of the room and of its own commands.
#[derive(Default)]
struct Seen {
    /// (publisher, seq) of each publication received, in order of arrival.
    pubs: Vec<(String, u64)>,
    offsets: Vec<u64>,
    /// Command ids answered, in order, and how many were errors.
    acks: Vec<u32>,
    errors: Vec<Value>,
    pings: u32,
}

impl Seen {
    /// Note one message; pings are answered. Panics on a close.
    async fn note(&mut self, who: &str, c: &mut Client, m: Msg) {
        match m {
            Msg::Close(code, reason) => panic!("{who} was closed: {code} {reason:?}"),
            Msg::Json(v) if v == json!({}) => {
                self.pings += 1;
                c.send_text("{}").await;
            }
            Msg::Json(v) if v.get("push").is_some() => {
                let p = &v["push"]["pub"];
                self.offsets.push(p["offset"].as_u64().expect("offset"));
                let from = p["data"]["from"].as_str().expect("from").to_owned();
                self.pubs
                    .push((from, p["data"]["seq"].as_u64().expect("seq")));
            }
            Msg::Json(v) => {
                let id = v["id"].as_u64().expect("a reply has an id") as u32;
                if v.get("error").is_some() {
                    self.errors.push(v);
                }
                self.acks.push(id);
            }
        }
    }
}

fn publish(id: u32, from: &str, seq: u32) -> String {
    json!({"id": id, "publish": {"channel": ROOM, "data": {"from": from, "seq": seq}}}).to_string()
}

fn metric(gw: &TestGateway, name: &str) -> f64 {
    let text = gw.node.metrics.render(Default::default());
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition");
    crate::metrics::value(&scrape, name, &[])
}

#[tokio::test]
async fn a_flood_is_slowed_and_nobody_healthy_is_hurt() {
    let redis = fanout::testing::RedisServer::start();
    let gw = TestGateway::on_redis(&redis.url(), |c| {
        c.client.publish_rate_per_sec = 0;
        c.client.max_publishes_in_flight = 2;
        c.client.ping_interval = Duration::from_millis(400);
        c.client.pong_timeout = Duration::from_millis(300);
        // The flood's own echo waits in its queue while it floods.
        c.client.queue_max_bytes = 8 << 20;
    })
    .await;

    let mut steady = Vec::new();
    for n in 0..STEADY_MEMBERS {
        let (mut c, _) = Client::connected(gw.addr, &token(&format!("steady-{n}"))).await;
        c.subscribe(ROOM).await;
        steady.push(c);
    }
    let (mut flood, _) = Client::connected(gw.addr, &token("flood")).await;
    flood.subscribe(ROOM).await;

    // The flood goes out as fast as the socket takes it; TCP stops it once the
    // node stops reading. Meanwhile the steady members publish one at a time
    // and read everything (answering pings).
    let expected = FLOOD as usize + STEADY_MEMBERS * STEADY as usize;
    let started = tokio::time::Instant::now();
    let flood_task = tokio::spawn(async move {
        let mut id = 100;
        for frame in 0..FLOOD / PER_FRAME {
            let lines: Vec<String> = (0..PER_FRAME)
                .map(|i| {
                    id += 1;
                    publish(id, "flood", frame * PER_FRAME + i + 1)
                })
                .collect();
            flood.send_text(&lines.join("\n")).await;
        }
        // Then it reads everything, answering pings.
        let mut fs = Seen::default();
        while (fs.acks.len() as u32) < FLOOD || fs.pubs.len() < expected {
            let m = tokio::time::timeout(Duration::from_secs(30), flood.next())
                .await
                .expect("the flood sender hears everything");
            fs.note("flood", &mut flood, m).await;
        }
        (flood, fs, started.elapsed())
    });

    let mut members = Vec::new();
    for (n, mut c) in steady.into_iter().enumerate() {
        members.push(tokio::spawn(async move {
            let who = format!("steady-{n}");
            let mut s = Seen::default();
            let mut slowest = Duration::ZERO;
            for seq in 1..=STEADY {
                c.send_text(&publish(1000 + seq, &who, seq)).await;
                let sent = tokio::time::Instant::now();
                while s.acks.len() < seq as usize {
                    let m = tokio::time::timeout(Duration::from_secs(30), c.next())
                        .await
                        .expect("an answer");
                    s.note(&who, &mut c, m).await;
                }
                slowest = slowest.max(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while s.pubs.len() < expected {
                let m = tokio::time::timeout(Duration::from_secs(30), c.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{who}: {} of {expected} publications", s.pubs.len())
                    });
                s.note(&who, &mut c, m).await;
            }
            (c, s, slowest)
        }));
    }
    let mut steady = Vec::new();
    let mut seen = Vec::new();
    let mut slowest = Duration::ZERO;
    for m in members {
        let (c, s, slow) = tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .expect("a steady member is done")
            .unwrap();
        steady.push(c);
        seen.push(s);
        slowest = slowest.max(slow);
    }
    let (mut flood, fs, flood_took) = tokio::time::timeout(Duration::from_secs(60), flood_task)
        .await
        .expect("the flood sender is done")
        .unwrap();

    // The flood sender was slowed: its pipeline filled and its socket went unread.
    assert!(metric(&gw, "gateway_read_pauses_total") > 0.0);
    assert!(metric(&gw, "gateway_read_paused_seconds_total") > 0.0);
    eprintln!("slowest steady publish {slowest:?}, flood {flood_took:?}");
    // The others were not: none of their publishes waited behind the flood.
    assert!(
        slowest < flood_took / 4,
        "a steady publish took {slowest:?}; the whole flood {flood_took:?}"
    );
    // Every publish was accepted and answered, in the order sent.
    assert!(fs.errors.is_empty(), "{:?}", &fs.errors[..1]);
    assert_eq!(fs.acks, (101..=100 + FLOOD).collect::<Vec<_>>());
    for (n, s) in seen.iter().enumerate() {
        assert!(s.errors.is_empty(), "steady-{n}: {:?}", s.errors);
        assert!(s.pings > 0, "steady-{n} was never pinged");
    }
    // Every member (the flood sender too) got every publication once: offsets
    // 1..=expected in order, and each publisher's sequence complete and in order.
    for (who, s) in seen.iter().map(|s| ("steady", s)).chain([("flood", &fs)]) {
        assert_eq!(
            s.offsets,
            (1..=expected as u64).collect::<Vec<_>>(),
            "{who}: offsets"
        );
        let mut per: std::collections::HashMap<&str, Vec<u64>> = Default::default();
        for (from, seq) in &s.pubs {
            per.entry(from).or_default().push(*seq);
        }
        assert_eq!(
            per["flood"],
            (1..=u64::from(FLOOD)).collect::<Vec<_>>(),
            "{who}"
        );
        for n in 0..STEADY_MEMBERS {
            let name = format!("steady-{n}");
            assert_eq!(
                per[name.as_str()],
                (1..=u64::from(STEADY)).collect::<Vec<_>>()
            );
        }
    }
    // Still open, all of them: a ping comes and is answered.
    for c in steady.iter_mut().chain([&mut flood]) {
        let ping = c
            .find("a ping", |m| {
                matches!(m, Msg::Json(v) if *v == json!({})) || matches!(m, Msg::Close(..))
            })
            .await;
        assert!(matches!(ping, Msg::Json(_)), "{ping:?}");
    }
}

/// A connection whose pipeline is full while Redis stalls is not read, so its
/// pongs wait in the socket: that time is the node's, and the client, which
/// answered every ping, stays connected.
#[tokio::test]
async fn a_client_paused_behind_a_stalled_redis_keeps_its_connection() {
    let redis = fanout::testing::RedisServer::start();
    let gw = TestGateway::on_redis(&redis.url(), |c| {
        c.client.max_publishes_in_flight = 1;
        c.client.ping_interval = Duration::from_millis(400);
        c.client.pong_timeout = Duration::from_millis(300);
        c.redis.command_timeout = Duration::from_secs(5);
    })
    .await;
    let (mut c, _) = Client::connected(gw.addr, &token("patient")).await;
    c.subscribe(ROOM).await;
    // Writes (the publish script among them) wait for 1.5 s.
    let paused = fanout::testing::raw_command(redis.port, "CLIENT PAUSE 1500 WRITE");
    assert_eq!(paused.as_deref(), Some("+OK\r\n"));
    for seq in 1..=3 {
        c.send_text(&publish(seq, "patient", seq)).await;
    }
    let mut s = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.acks.len() < 3 || s.pubs.len() < 3 || s.pings < 6 {
        let m = tokio::time::timeout_at(deadline, c.next())
            .await
            .unwrap_or_else(|_| panic!("acks {:?}, pubs {:?}, pings {}", s.acks, s.pubs, s.pings));
        s.note("patient", &mut c, m).await;
    }
    assert_eq!(s.acks, vec![1, 2, 3]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.offsets, vec![1, 2, 3]);
    assert!(metric(&gw, "gateway_read_paused_seconds_total") >= 1.0);
}
