//! One behaviour suite, run against both engines: the in-memory one and the Redis
//! one on a real `redis-server` started by the test.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fanout::broker::{Control, NodeInfo};
use fanout::testing::{raw_command, Proxy, RedisServer};
use fanout::{
    Broker, BrokerHandler, HistoryOptions, HistoryQuery, MemoryBroker, RedisBroker, RedisConfig,
};
use parking_lot::Mutex;
use shared::protocol::{raw_from_slice, ClientInfo, Publication, StreamPosition};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Pub { room: String, offset: u64, n: u64 },
    Join(String, String),
    Leave(String, String),
    Lost(String),
    Control(Control),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Ev>>,
    notify: Notify,
}

impl Recorder {
    fn push(&self, e: Ev) {
        self.events.lock().push(e);
        self.notify.notify_waiters();
    }

    /// Wait until `pred` holds for the recorded events.
    async fn until(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            {
                let ev = self.events.lock();
                if pred(&ev) {
                    return ev.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}: {:?}", self.events.lock());
            }
        }
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, room: &str, p: &Arc<Publication>, _epoch: &str) {
        let n = serde_json::from_str::<serde_json::Value>(p.data.get()).unwrap()["n"]
            .as_u64()
            .unwrap_or(0);
        self.push(Ev::Pub {
            room: room.into(),
            offset: p.offset,
            n,
        });
    }
    fn on_join(&self, room: &str, info: &ClientInfo) {
        self.push(Ev::Join(room.into(), info.client.clone()));
    }
    fn on_leave(&self, room: &str, info: &ClientInfo) {
        self.push(Ev::Leave(room.into(), info.client.clone()));
    }
    fn on_lost(&self, room: &str) {
        self.push(Ev::Lost(room.into()));
    }
    fn on_control(&self, c: &Control) {
        self.push(Ev::Control(c.clone()));
    }
}

fn publication(n: u64) -> Publication {
    Publication {
        data: raw_from_slice(format!("{{\"n\":{n}}}").as_bytes()).unwrap(),
        info: Some(ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw_from_slice(br#"{"name":"Ann"}"#).unwrap()),
            chan_info: None,
        }),
        offset: 0,
        tags: Default::default(),
    }
}

const HIST: HistoryOptions = HistoryOptions {
    size: 5,
    ttl: Duration::from_secs(60),
    meta_ttl: Duration::from_secs(600),
};

fn pubs_in(ev: &[Ev], room: &str) -> Vec<(u64, u64)> {
    ev.iter()
        .filter_map(|e| match e {
            Ev::Pub { room: r, offset, n } if r == room => Some((*offset, *n)),
            _ => None,
        })
        .collect()
}

async fn memory() -> (Arc<dyn Broker>, Arc<Recorder>) {
    let b = MemoryBroker::new();
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    (b, rec)
}

async fn redis(server: &RedisServer) -> (Arc<RedisBroker>, Arc<Recorder>) {
    redis_with(RedisConfig {
        url: server.url(),
        pubsub_shards: 2,
        presence_ttl: Duration::from_secs(2),
        probe_interval: Duration::from_millis(500),
        command_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
}

async fn redis_with(cfg: RedisConfig) -> (Arc<RedisBroker>, Arc<Recorder>) {
    let b = RedisBroker::connect(cfg)
        .await
        .expect("connect to the test redis");
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    (b, rec)
}

/// Publish with history: offsets from 1 in delivery order, history trimmed to size,
/// since/limit/reverse, epoch kept and checked.
async fn history_behaviour(b: Arc<dyn Broker>, rec: Arc<Recorder>) {
    b.subscribe("h").await.unwrap();
    let first = b
        .history("h", HistoryQuery::default(), HIST.meta_ttl)
        .await
        .unwrap();
    assert_eq!(first.position.offset, 0);
    assert!(!first.position.epoch.is_empty());
    for n in 1..=7 {
        let pos = b.publish("h", publication(n), Some(HIST)).await.unwrap();
        assert_eq!(
            pos,
            StreamPosition {
                offset: n,
                epoch: first.position.epoch.clone()
            }
        );
    }
    let ev = rec
        .until("7 publications", |e| pubs_in(e, "h").len() == 7)
        .await;
    assert_eq!(
        pubs_in(&ev, "h"),
        (1..=7).map(|n| (n, n)).collect::<Vec<_>>()
    );
    let all = b
        .history("h", HistoryQuery::default(), HIST.meta_ttl)
        .await
        .unwrap();
    let offs: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, vec![3, 4, 5, 6, 7], "trimmed to 5");
    assert_eq!(
        all.publications[0]
            .info
            .as_ref()
            .unwrap()
            .conn_info
            .as_ref()
            .unwrap()
            .get(),
        r#"{"name":"Ann"}"#
    );
    let since = |offset: u64, epoch: &str| StreamPosition {
        offset,
        epoch: epoch.into(),
    };
    let q = HistoryQuery {
        since: Some(since(4, &all.position.epoch)),
        limit: Some(2),
        reverse: false,
    };
    let page = b.history("h", q, HIST.meta_ttl).await.unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![5, 6]
    );
    let q = HistoryQuery {
        since: Some(since(6, "")),
        limit: None,
        reverse: true,
    };
    let page = b.history("h", q, HIST.meta_ttl).await.unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    let q = HistoryQuery {
        since: Some(since(1, "wrong")),
        limit: None,
        reverse: false,
    };
    let page = b.history("h", q, HIST.meta_ttl).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 7);
    let q = HistoryQuery {
        limit: Some(0),
        ..Default::default()
    };
    assert!(b
        .history("h", q, HIST.meta_ttl)
        .await
        .unwrap()
        .publications
        .is_empty());
    b.remove_history("h").await.unwrap();
    let after = b
        .history("h", HistoryQuery::default(), HIST.meta_ttl)
        .await
        .unwrap();
    assert!(after.publications.is_empty());
    assert_eq!(
        after.position.offset, 7,
        "position survives history removal"
    );
}

async fn no_history_and_presence_behaviour(b: Arc<dyn Broker>, rec: Arc<Recorder>) {
    b.subscribe("p").await.unwrap();
    let pos = b.publish("p", publication(1), None).await.unwrap();
    assert_eq!(pos, StreamPosition::default());
    rec.until("unpositioned publication", |e| {
        pubs_in(e, "p") == vec![(0, 1)]
    })
    .await;
    let info = |user: &str, client: &str| ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    };
    for (u, c) in [("1", "a"), ("1", "b"), ("2", "c")] {
        b.presence_add("p", &info(u, c)).await.unwrap();
    }
    let stats = b.presence_stats("p").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    // Stats count users, not entries: user 1 stays while one of its two is left.
    b.presence_remove("p", &info("1", "a")).await.unwrap();
    let stats = b.presence_stats("p").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (2, 2));
    let members = b.presence("p").await.unwrap();
    let mut clients: Vec<&str> = members.keys().map(String::as_str).collect();
    clients.sort();
    assert_eq!(clients, vec!["b", "c"]);
    // A refresh of a present entry does not count it twice; a second removal of a
    // gone entry does not count it off twice.
    b.presence_add("p", &info("1", "b")).await.unwrap();
    b.presence_remove("p", &info("1", "a")).await.unwrap();
    let stats = b.presence_stats("p").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (2, 2));
    b.presence_remove("p", &info("1", "b")).await.unwrap();
    let stats = b.presence_stats("p").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    b.publish_join("p", &info("9", "z")).await.unwrap();
    b.publish_leave("p", &info("9", "z")).await.unwrap();
    let ev = rec
        .until("join and leave", |e| {
            e.contains(&Ev::Leave("p".into(), "z".into()))
        })
        .await;
    let j = ev
        .iter()
        .position(|e| *e == Ev::Join("p".into(), "z".into()))
        .unwrap();
    let l = ev
        .iter()
        .position(|e| *e == Ev::Leave("p".into(), "z".into()))
        .unwrap();
    assert!(j < l);
}

#[tokio::test]
async fn memory_history() {
    let (b, rec) = memory().await;
    history_behaviour(b, rec).await;
}

#[tokio::test]
async fn memory_presence_and_events() {
    let (b, rec) = memory().await;
    no_history_and_presence_behaviour(b, rec).await;
}

#[tokio::test]
async fn redis_history() {
    let server = RedisServer::start();
    let (b, rec) = redis(&server).await;
    history_behaviour(b, rec).await;
}

#[tokio::test]
async fn redis_presence_and_events() {
    let server = RedisServer::start();
    let (b, rec) = redis(&server).await;
    no_history_and_presence_behaviour(b, rec).await;
}

#[tokio::test]
async fn redis_delivers_across_brokers_only_to_subscribed_nodes() {
    let server = RedisServer::start();
    let (a, rec_a) = redis(&server).await;
    let (b, rec_b) = redis(&server).await;
    a.subscribe("x").await.unwrap();
    b.publish("x", publication(1), Some(HIST)).await.unwrap();
    b.publish("y", publication(2), Some(HIST)).await.unwrap();
    rec_a
        .until("x on node a", |e| pubs_in(e, "x") == vec![(1, 1)])
        .await;
    assert!(rec_b.events.lock().is_empty(), "b subscribed to nothing");
    a.unsubscribe("x").await.unwrap();
    b.subscribe("x").await.unwrap();
    b.publish("x", publication(3), Some(HIST)).await.unwrap();
    rec_b
        .until("x on node b", |e| pubs_in(e, "x") == vec![(2, 3)])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pubs_in(&rec_a.events.lock(), "x").len(),
        1,
        "a unsubscribed"
    );
    assert!(pubs_in(&rec_a.events.lock(), "y").is_empty());
}

#[tokio::test]
async fn redis_presence_of_a_vanished_node_expires() {
    let server = RedisServer::start();
    let (a, _) = redis(&server).await;
    let (b, _) = redis(&server).await;
    let info = ClientInfo {
        user: "1".into(),
        client: "gone".into(),
        ..Default::default()
    };
    a.presence_add("r", &info).await.unwrap();
    // b's own member keeps the room's keys alive, so the vanished entry goes by
    // its own expiry (and takes its user's count with it), not the keys'.
    let stays = ClientInfo {
        user: "2".into(),
        client: "stays".into(),
        ..Default::default()
    };
    b.presence_add("r", &stays).await.unwrap();
    let s = b.presence_stats("r").await.unwrap();
    assert_eq!((s.num_clients, s.num_users), (2, 2));
    drop(a);
    // presence_ttl is 2 s in these tests; nobody refreshes the entry any more.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = b.presence_stats("r").await.unwrap();
        if s.num_clients == 1 {
            assert_eq!(s.num_users, 1, "the vanished user is counted off");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = b.presence("r").await.unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), vec!["stays"]);
}

#[tokio::test]
async fn redis_live_node_keeps_its_presence_beyond_the_ttl() {
    let server = RedisServer::start();
    let (a, _) = redis(&server).await;
    let info = ClientInfo {
        user: "1".into(),
        client: "here".into(),
        ..Default::default()
    };
    a.presence_add("r", &info).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        a.presence_stats("r").await.unwrap().num_clients,
        1,
        "refreshed by its node"
    );
}

/// A node with many members in many rooms (some rooms larger than one refresh
/// batch) keeps them all present over several TTLs, and members that leave while
/// refreshes run stay gone.
#[tokio::test]
async fn redis_node_refreshes_many_presence_entries_and_forgets_leavers() {
    let server = RedisServer::start();
    let (a, _) = redis(&server).await;
    let (b, _) = redis(&server).await;
    // 40 rooms of 20, and one room of 700 (three refresh batches).
    let mut members: Vec<(String, String)> = Vec::new();
    for r in 0..40 {
        for c in 0..20 {
            members.push((format!("room-{r}"), format!("c-{r}-{c}")));
        }
    }
    for c in 0..700 {
        members.push(("big".to_owned(), format!("big-{c}")));
    }
    for (room, client) in &members {
        let info = ClientInfo {
            user: "u".into(),
            client: client.clone(),
            ..Default::default()
        };
        a.presence_add(room, &info).await.unwrap();
    }
    // Every other member leaves, spread over the first TTL (2 s), so that removals
    // land while refreshes (every 667 ms) are running.
    let leavers: Vec<&(String, String)> = members.iter().step_by(2).collect();
    let pause = Duration::from_millis(2000) / leavers.len() as u32;
    for (room, client) in &leavers {
        let info = ClientInfo {
            user: "u".into(),
            client: client.clone(),
            ..Default::default()
        };
        a.presence_remove(room, &info).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    // Within a TTL of the last removal a leaver put back by a refresh would still
    // be there; two TTLs on, the stayers must have been refreshed.
    let mut rooms: Vec<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
    rooms.dedup();
    for wait in [Duration::from_millis(900), Duration::from_secs(3)] {
        tokio::time::sleep(wait).await;
        for &room in &rooms {
            let present = b.presence(room).await.unwrap();
            let expected: HashSet<&str> = members
                .iter()
                .enumerate()
                .filter(|(i, (r, _))| r == room && i % 2 == 1)
                .map(|(_, (_, c))| c.as_str())
                .collect();
            let got: HashSet<&str> = present.keys().map(String::as_str).collect();
            assert_eq!(got, expected, "presence of {room} after {wait:?}");
        }
    }
}

async fn redis_via(url: String) -> (Arc<RedisBroker>, Arc<Recorder>) {
    redis_with(RedisConfig {
        url,
        pubsub_shards: 1,
        probe_interval: Duration::from_millis(300),
        command_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await
}

/// The connection drops after a publish reached Redis and before its reply came
/// back: the publish is retried, and the retry must not append it a second time.
#[tokio::test]
async fn redis_publish_whose_reply_was_lost_is_applied_once() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (b, _) = redis_via(proxy.url()).await;
    let h = HistoryOptions {
        size: 100,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(60),
    };
    // The first publish loads the script; the trapped one runs it by its hash.
    let first = b.publish("x", publication(1), Some(h)).await.unwrap();
    proxy.trap(b"\"n\":424242");
    let lost = b
        .publish("x", publication(424_242), Some(h))
        .await
        .expect("the publish is retried on a fresh connection");
    assert_eq!(lost.offset, first.offset + 1, "the first run's position");
    let next = b.publish("x", publication(3), Some(h)).await.unwrap();
    assert_eq!(next.offset, first.offset + 2, "no offset was taken twice");
    let page = b
        .history("x", HistoryQuery::default(), Duration::from_secs(60))
        .await
        .unwrap();
    let data: Vec<String> = page
        .publications
        .iter()
        .map(|p| p.data.get().to_owned())
        .collect();
    assert_eq!(data, [r#"{"n":1}"#, r#"{"n":424242}"#, r#"{"n":3}"#]);
}

/// A node whose pub/sub connection breaks misses publications; after it reconnects
/// it repairs them from history, in order, before newer ones.
#[tokio::test]
async fn redis_repairs_from_history_after_pubsub_reconnect() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (a, rec) = redis_via(proxy.url()).await;
    let (b, _) = redis(&server).await;
    a.subscribe("r").await.unwrap();
    b.publish("r", publication(1), Some(HIST)).await.unwrap();
    rec.until("first", |e| pubs_in(e, "r").len() == 1).await;
    proxy.freeze();
    for n in 2..=4 {
        b.publish("r", publication(n), Some(HIST)).await.unwrap();
    }
    proxy.cut();
    let ev = rec
        .until("repaired 2..4", |e| pubs_in(e, "r").len() >= 4)
        .await;
    assert_eq!(pubs_in(&ev, "r"), vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
    b.publish("r", publication(5), Some(HIST)).await.unwrap();
    let ev = rec.until("live 5", |e| pubs_in(e, "r").len() >= 5).await;
    assert_eq!(
        pubs_in(&ev, "r"),
        (1..=5).map(|n| (n, n)).collect::<Vec<_>>()
    );
    assert!(!ev.iter().any(|e| matches!(e, Ev::Lost(_))));
}

/// What a failover to a replica that missed the last publications leaves: the
/// stream behind what the node delivered, in the same epoch, and the next
/// publications taking those offsets again. The node reports the room lost, gives
/// it a new epoch (so that a client recovering from offset 5 is told it cannot)
/// and goes on from the stream's top: the new publications are delivered, not
/// skipped as repeats of what it had.
#[tokio::test]
async fn redis_stream_behind_the_node_is_reported_and_its_reused_offsets_delivered() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (a, rec) = redis_via(proxy.url()).await;
    let (b, _) = redis(&server).await;
    a.subscribe("r").await.unwrap();
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = b
            .publish("r", publication(n), Some(HIST))
            .await
            .unwrap()
            .epoch;
    }
    rec.until("1..5", |e| pubs_in(e, "r").len() == 5).await;
    // The replica had 1..3: the top back at 3, entries 4 and 5 gone.
    for cmd in [
        "HSET gw{r}.m t 3",
        "XDEL gw{r}.s 4-0 5-0",
        "XSETID gw{r}.s 3-0",
    ] {
        let reply = raw_command(server.port, cmd).unwrap_or_default();
        assert!(!reply.starts_with('-'), "{cmd}: {reply}");
    }
    proxy.cut();
    rec.until("the room lost", |e| {
        e.iter().any(|e| matches!(e, Ev::Lost(r) if r == "r"))
    })
    .await;
    for n in 6..=7 {
        let p = b.publish("r", publication(n), Some(HIST)).await.unwrap();
        assert_eq!(p.offset, n - 2, "the replica's offsets are taken again");
        assert_ne!(p.epoch, epoch, "in a new epoch");
    }
    let ev = rec.until("6 and 7", |e| pubs_in(e, "r").len() >= 7).await;
    assert_eq!(pubs_in(&ev, "r")[5..], [(4, 6), (5, 7)]);
    assert_eq!(a.stats().map(|s| s.diverged_streams), Some(1));
}

/// Redis restarted from a copy older than what it acknowledged (a snapshot taken
/// at 3; 4 and 5 published and delivered; then killed and started again), and
/// three new publications take offsets 4..6 before the node is back: its stream
/// now runs past the node's position with other publications at 4 and 5. By
/// offsets alone nothing is missing; the node finds the entry at its position is
/// another publication, gives the room a new epoch and reports it lost, so no
/// client is told it recovered when it did not.
#[tokio::test]
async fn redis_restart_from_an_older_copy_is_found_by_content_and_gets_a_new_epoch() {
    let mut server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    // No probe during the test: the node hears of the restart only at the cut.
    let (a, rec) = redis_with(RedisConfig {
        url: proxy.url(),
        pubsub_shards: 1,
        probe_interval: Duration::from_secs(60),
        command_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let (b, _) = redis(&server).await;
    a.subscribe("r").await.unwrap();
    let mut epoch = String::new();
    for n in 1..=3 {
        epoch = b
            .publish("r", publication(n), Some(HIST))
            .await
            .unwrap()
            .epoch;
    }
    let saved = raw_command(server.port, "SAVE").unwrap_or_default();
    assert!(saved.starts_with("+OK"), "SAVE: {saved}");
    for n in 4..=5 {
        b.publish("r", publication(n), Some(HIST)).await.unwrap();
    }
    rec.until("1..5", |e| pubs_in(e, "r").len() == 5).await;

    proxy.freeze();
    server.restart();
    for n in 6..=8 {
        let p = publish_until_accepted(&b, n).await;
        assert_eq!((p.offset, p.epoch.as_str()), (n - 2, epoch.as_str()));
    }
    assert!(!rec.events.lock().contains(&Ev::Lost("r".into())));
    proxy.cut();
    rec.until("the room lost", |e| e.contains(&Ev::Lost("r".into())))
        .await;
    let p = b.publish("r", publication(9), Some(HIST)).await.unwrap();
    assert_eq!(p.offset, 7);
    assert_ne!(p.epoch, epoch, "a new epoch");
    let ev = rec
        .until("9 live", |e| pubs_in(e, "r").iter().any(|p| p.1 == 9))
        .await;
    // 6..8 are not delivered as if they followed 5: the room was reported lost.
    assert_eq!(
        pubs_in(&ev, "r"),
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 9)]
    );
    assert_eq!(a.stats().map(|s| s.diverged_streams), Some(1));
    // A client recovering from offset 5 of the old epoch finds another epoch.
    let since = HistoryQuery {
        since: Some(StreamPosition { offset: 5, epoch }),
        ..Default::default()
    };
    let page = a.history("r", since, HIST.meta_ttl).await.unwrap();
    assert_eq!(page.position.epoch, p.epoch);
}

/// Publish `n` with history, retrying while Redis is coming back.
async fn publish_until_accepted(b: &RedisBroker, n: u64) -> StreamPosition {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match b.publish("r", publication(n), Some(HIST)).await {
            Ok(p) => return p,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "publish {n}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pub/sub connection that goes silent without closing (as in a failover) is found
/// by the probe, restarted, and the room repaired.
#[tokio::test]
async fn redis_silent_pubsub_connection_is_probed_and_restarted() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (a, rec) = redis_via(proxy.url()).await;
    let (b, _) = redis(&server).await;
    a.subscribe("r").await.unwrap();
    b.publish("r", publication(1), Some(HIST)).await.unwrap();
    rec.until("first", |e| pubs_in(e, "r").len() == 1).await;
    proxy.freeze();
    for n in 2..=3 {
        b.publish("r", publication(n), Some(HIST)).await.unwrap();
    }
    // Nothing is cut: only the probe can notice.
    let ev = rec
        .until("repaired 2..3", |e| pubs_in(e, "r").len() >= 3)
        .await;
    assert_eq!(pubs_in(&ev, "r"), vec![(1, 1), (2, 2), (3, 3)]);
    assert!(a.pubsub_reconnects() >= 1);
}

/// Regression: PING on a subscribed connection answers ["pong", ""]; taking that
/// for a failure made every probe restart the connection.
#[tokio::test]
async fn redis_healthy_pubsub_connections_are_not_restarted_by_probes() {
    let server = RedisServer::start();
    let (a, _) = redis_via(server.url()).await;
    a.subscribe("r").await.unwrap();
    // Ten probe intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.pubsub_reconnects(), 0);
    assert!(a.is_healthy());
}

/// When the missed range has left history, the node says so instead of skipping.
#[tokio::test]
async fn redis_reports_a_room_lost_when_history_cannot_repair() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (a, rec) = redis_via(proxy.url()).await;
    let (b, _) = redis(&server).await;
    a.subscribe("r").await.unwrap();
    b.publish("r", publication(1), Some(HIST)).await.unwrap();
    rec.until("first", |e| pubs_in(e, "r").len() == 1).await;
    proxy.freeze();
    for n in 2..=12 {
        b.publish("r", publication(n), Some(HIST)).await.unwrap();
    }
    proxy.cut();
    rec.until("lost", |e| e.contains(&Ev::Lost("r".into())))
        .await;
    b.publish("r", publication(13), Some(HIST)).await.unwrap();
    let ev = rec
        .until("live 13", |e| pubs_in(e, "r").iter().any(|p| p.0 == 13))
        .await;
    assert_eq!(
        pubs_in(&ev, "r"),
        vec![(1, 1), (13, 13)],
        "nothing partial, nothing reordered"
    );
}

#[tokio::test]
async fn redis_unreachable_fails_fast_and_health_follows_the_server() {
    let mut server = RedisServer::start();
    let (a, _) = redis(&server).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !a.is_healthy() {
        assert!(tokio::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    let err = a.publish("r", publication(1), None).await;
    assert!(err.is_err(), "publish to a dead redis fails");
    while a.is_healthy() {
        assert!(tokio::time::Instant::now() < deadline, "never unhealthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !a.is_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.publish("r", publication(2), None).await.unwrap();
}

async fn cluster_broker(url: String) -> (Arc<RedisBroker>, Arc<Recorder>) {
    redis_with(RedisConfig {
        url,
        pubsub_shards: 2,
        command_timeout: Duration::from_secs(3),
        ..Default::default()
    })
    .await
}

/// Three masters: rooms spread over slots, sharded pub/sub, history and presence.
#[tokio::test]
async fn redis_cluster_rooms_over_slots() {
    let cluster = fanout::testing::RedisCluster::start(3);
    let (a, rec) = cluster_broker(cluster.url()).await;
    let (b, _) = cluster_broker(cluster.url()).await;
    let rooms: Vec<String> = (0..30).map(|i| format!("room-{i}")).collect();
    for r in &rooms {
        a.subscribe(r).await.unwrap();
    }
    for n in 1..=3 {
        for r in &rooms {
            let pos = b.publish(r, publication(n), Some(HIST)).await.unwrap();
            assert_eq!(pos.offset, n);
        }
    }
    let ev = rec
        .until("90 publications", |e| {
            e.iter().filter(|x| matches!(x, Ev::Pub { .. })).count() == 90
        })
        .await;
    for r in &rooms {
        assert_eq!(pubs_in(&ev, r), vec![(1, 1), (2, 2), (3, 3)], "{r}");
    }
    let page = b
        .history("room-7", HistoryQuery::default(), HIST.meta_ttl)
        .await
        .unwrap();
    assert_eq!(page.publications.len(), 3);
    let info = ClientInfo {
        user: "1".into(),
        client: "c".into(),
        ..Default::default()
    };
    b.presence_add("room-3", &info).await.unwrap();
    assert_eq!(a.presence_stats("room-3").await.unwrap().num_clients, 1);
    b.publish("room-5", publication(9), None).await.unwrap();
    rec.until("unpositioned", |e| pubs_in(e, "room-5").contains(&(0, 9)))
        .await;
    // Which masters hold the rooms: more than one, or the test proves nothing.
    let mut used = std::collections::HashSet::new();
    for n in &cluster.nodes {
        let keys = fanout::testing::raw_command(n.port, "DBSIZE").unwrap();
        if keys.trim() != ":0" {
            used.insert(n.port);
        }
    }
    assert!(used.len() > 1, "rooms spread over masters");
}

fn node_info(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        name: format!("node-{id}"),
        num_clients: 7,
        ttl_ms: 1500,
        ..Default::default()
    }
}

/// Control messages reach every node (the sender too); heartbeats feed the registry
/// and are forgotten after their ttl.
async fn control_behaviour(
    a: Arc<dyn Broker>,
    rec_a: Arc<Recorder>,
    b: Arc<dyn Broker>,
    rec_b: Arc<Recorder>,
) {
    let bye = Control::Disconnect {
        user: "42".into(),
        code: 3503,
        reason: "bye".into(),
        client: String::new(),
        whitelist: Vec::new(),
    };
    a.publish_control(&bye).await.unwrap();
    for rec in [&rec_a, &rec_b] {
        rec.until("control", |e| e.contains(&Ev::Control(bye.clone())))
            .await;
    }
    // A client channel of the same name coming and going does not cut control off.
    b.subscribe(".control").await.unwrap();
    b.unsubscribe(".control").await.unwrap();
    a.publish_control(&Control::Node(node_info("a")))
        .await
        .unwrap();
    b.publish_control(&Control::Node(node_info("b")))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.nodes().len() < 2 || a.nodes().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry: {:?}",
            b.nodes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.nodes()[0].name, "node-a");
    assert_eq!(b.nodes()[0].num_clients, 7);
    assert!(
        !rec_b
            .events
            .lock()
            .iter()
            .any(|e| matches!(e, Ev::Control(Control::Node(_)))),
        "heartbeats are not commands"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(b.nodes().is_empty(), "silent nodes are forgotten");
}

#[tokio::test]
async fn memory_control_and_registry() {
    let (a, rec) = memory().await;
    control_behaviour(a.clone(), rec.clone(), a, rec).await;
}

#[tokio::test]
async fn redis_control_and_registry_span_nodes() {
    let server = RedisServer::start();
    let (a, rec_a) = redis(&server).await;
    let (b, rec_b) = redis(&server).await;
    control_behaviour(a, rec_a, b, rec_b).await;
}

/// The pub/sub connection breaks before the room's first publication reached the
/// node: the baseline taken at subscribe time still lets it repair, whether the
/// room's stream existed then (`with_stream`) or was created by the missed
/// publications.
async fn repair_before_first_publication(with_stream: bool) {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let (a, rec) = redis_via(proxy.url()).await;
    let (b, _) = redis(&server).await;
    if with_stream {
        b.history("r", HistoryQuery::default(), HIST.meta_ttl)
            .await
            .unwrap();
    }
    a.subscribe("r").await.unwrap();
    // Let the node take its baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.freeze();
    for n in 1..=3 {
        b.publish("r", publication(n), Some(HIST)).await.unwrap();
    }
    proxy.cut();
    let ev = rec
        .until("repaired 1..3", |e| pubs_in(e, "r").len() >= 3)
        .await;
    assert_eq!(pubs_in(&ev, "r"), vec![(1, 1), (2, 2), (3, 3)]);
    assert!(!ev.iter().any(|e| matches!(e, Ev::Lost(_))), "{ev:?}");
    b.publish("r", publication(4), Some(HIST)).await.unwrap();
    let ev = rec.until("live 4", |e| pubs_in(e, "r").len() >= 4).await;
    assert_eq!(pubs_in(&ev, "r").last(), Some(&(4, 4)));
}

#[tokio::test]
async fn redis_repairs_a_room_whose_first_publications_were_missed() {
    repair_before_first_publication(true).await;
}

#[tokio::test]
async fn redis_repairs_a_room_whose_stream_appeared_while_disconnected() {
    repair_before_first_publication(false).await;
}

/// Offsets delivered per room, counted without keeping every event.
#[derive(Default)]
struct Tally {
    rooms: Mutex<std::collections::HashMap<String, Vec<u64>>>,
    total: std::sync::atomic::AtomicUsize,
    lost: std::sync::atomic::AtomicUsize,
}

impl BrokerHandler for Tally {
    fn on_publication(&self, room: &str, p: &Arc<Publication>, _epoch: &str) {
        self.rooms
            .lock()
            .entry(room.to_owned())
            .or_default()
            .push(p.offset);
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn on_join(&self, _: &str, _: &ClientInfo) {}
    fn on_leave(&self, _: &str, _: &ClientInfo) {}
    fn on_lost(&self, _: &str) {
        self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn on_control(&self, _: &Control) {}
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Publish `n` into each room, many at a time.
async fn publish_round(b: &Arc<RedisBroker>, rooms: &[String], n: u64, h: HistoryOptions) {
    for chunk in rooms.chunks(500) {
        let calls = chunk.iter().map(|r| b.publish(r, publication(n), Some(h)));
        for r in futures_util::future::join_all(calls).await {
            r.expect("publish");
        }
    }
}

/// Redis restarts under 10k subscribed rooms while the node's delivery workers have
/// queues of 16: the pub/sub reader never waits on them (a full queue marks the room
/// for repair), every room is repaired from history, each publication arrives once
/// and in order, and the process does not balloon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_10k_rooms_with_small_worker_queues() {
    const ROOMS: usize = 10_000;
    let mut server = RedisServer::start_aof();
    let (publisher, _) = redis(&server).await;
    let node = RedisBroker::connect(RedisConfig {
        url: server.url(),
        pubsub_shards: 2,
        workers: 2,
        worker_queue: 16,
        probe_interval: Duration::from_millis(300),
        command_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let tally = Arc::new(Tally::default());
    node.set_handler(tally.clone());
    let h = HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(300),
        meta_ttl: Duration::from_secs(300),
    };
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("r{i}")).collect();
    for chunk in rooms.chunks(1000) {
        for r in futures_util::future::join_all(chunk.iter().map(|r| node.subscribe(r))).await {
            r.expect("subscribe");
        }
    }
    let wait_total = |want: usize| {
        let tally = tally.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tally.total.load(std::sync::atomic::Ordering::Relaxed) < want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} of {want} delivered",
                    tally.total.load(std::sync::atomic::Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    publish_round(&publisher, &rooms, 1, h).await;
    wait_total(ROOMS).await;
    let before = rss_bytes();

    server.restart();
    // Published while the node's pub/sub connections are down or resubscribing:
    // delivered live or repaired from the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match publisher.publish(&rooms[0], publication(2), Some(h)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "redis back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    publish_round(&publisher, &rooms[1..], 2, h).await;
    publish_round(&publisher, &rooms, 3, h).await;
    wait_total(3 * ROOMS).await;
    // Nothing more arrives: no room was delivered twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tally.total.load(std::sync::atomic::Ordering::Relaxed),
        3 * ROOMS
    );
    assert_eq!(tally.lost.load(std::sync::atomic::Ordering::Relaxed), 0);
    let got = tally.rooms.lock();
    assert_eq!(got.len(), ROOMS);
    for (room, offsets) in got.iter() {
        assert_eq!(offsets, &[1, 2, 3], "{room}");
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 128 << 20, "the process grew by {grown} bytes");
}
