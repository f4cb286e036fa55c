//! Several gateway nodes on one Redis (standalone or a Redis Cluster) acting as one:
//! exactly-once ordered fan-out, presence and join/leave, recovery on another node,
//! and Redis killed and restarted under them.

use std::time::Duration;

use fanout::testing::{RedisCluster, RedisServer};
use serde_json::{json, Value};

use crate::support::*;

fn recover_body(channel: &str, offset: u64, epoch: &str) -> Value {
    json!({"channel": channel, "recoverable": true, "recover": true, "offset": offset, "epoch": epoch})
}

async fn sub_recoverable(c: &mut Client, channel: &str) -> Value {
    let r = c
        .call(
            "subscribe",
            json!({"channel": channel, "recoverable": true}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    r["subscribe"].clone()
}

async fn wait_ready(gws: &[&TestGateway], ready: bool) {
    let nodes: Vec<_> = gws.iter().map(|g| g.node.clone()).collect();
    eventually(
        if ready {
            "nodes ready"
        } else {
            "nodes not ready"
        },
        || nodes.iter().all(|n| n.is_ready() == ready),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_publication_once_in_order_with_the_same_offsets() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes
            .push(TestGateway::on_redis(&redis.url(), |c| c.client.publish_rate_per_sec = 0).await);
    }
    let mut subs = Vec::new();
    for i in 0..9 {
        let mut c = nodes[i % 3].client(&format!("s{i}")).await;
        sub_recoverable(&mut c, "room").await;
        subs.push(c);
    }
    const EACH: u64 = 20;
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut p = node.client(&format!("p{i}")).await;
        p.subscribe("room").await;
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let r = p.publish("room", json!({"p": i, "n": n})).await;
                assert_eq!(r["publish"], json!({}), "{r}");
            }
            p
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut reference: Option<Vec<Value>> = None;
    for (i, mut c) in subs.into_iter().enumerate() {
        let mut got = Vec::new();
        for _ in 0..3 * EACH {
            let p = c.push("room").await;
            got.push(p["pub"].clone());
        }
        c.silent_for(Duration::from_millis(100)).await;
        let offsets: Vec<u64> = got.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(
            offsets,
            (1..=3 * EACH).collect::<Vec<_>>(),
            "subscriber {i}"
        );
        for pi in 0..3 {
            let ns: Vec<u64> = got
                .iter()
                .filter(|p| p["data"]["p"] == json!(pi))
                .map(|p| p["data"]["n"].as_u64().unwrap())
                .collect();
            assert_eq!(
                ns,
                (0..EACH).collect::<Vec<_>>(),
                "publisher {pi} order at subscriber {i}"
            );
        }
        let data: Vec<Value> = got.iter().map(|p| p["data"].clone()).collect();
        match &reference {
            None => reference = Some(data),
            Some(r) => assert_eq!(&data, r, "same publication at the same offset everywhere"),
        }
    }
}

#[tokio::test]
async fn presence_and_join_leave_span_nodes() {
    let redis = RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    let b = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    let c = TestGateway::on_redis(&redis.url(), |c| c.channel.join_leave = true).await;
    let mut ca = a.client("1").await;
    let r = ca
        .call("subscribe", json!({"channel": "room", "join_leave": true}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut cb = b.client("2").await;
    cb.subscribe("room").await;
    let own = ca.push("room").await;
    assert_eq!(
        own["join"]["info"]["user"],
        json!("1"),
        "its own join first: {own}"
    );
    let join = ca.push("room").await;
    assert_eq!(join["join"]["info"]["user"], json!("2"), "{join}");
    let mut cc = c.client("2").await;
    cc.subscribe("room").await;
    let p = cc.call("presence", json!({"channel": "room"})).await;
    let users: Vec<&str> = p["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 3, "{p}");
    let s = ca.call("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(
        s["presence_stats"],
        json!({"num_clients": 3, "num_users": 2})
    );
    drop(cb);
    let mut leave = ca.push("room").await;
    if leave.get("join").is_some() {
        // c's join came first.
        leave = ca.push("room").await;
    }
    assert_eq!(leave["leave"]["info"]["user"], json!("2"), "{leave}");
    let nodes = [a.node.clone(), b.node.clone(), c.node.clone()];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = ca.call("presence_stats", json!({"channel": "room"})).await;
        if s["presence_stats"]["num_clients"] == json!(2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never dropped b: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nodes.iter().all(|n| n.is_ready()));
}

#[tokio::test]
async fn a_client_recovers_on_another_node_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let b = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let mut p = b.client("p").await;
    p.subscribe("room").await;
    let mut s = a.client("s").await;
    let sub = sub_recoverable(&mut s, "room").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        p.publish("room", json!({ "n": n })).await;
    }
    for n in 1..=3u64 {
        assert_eq!(s.push("room").await["pub"]["offset"], json!(n));
    }
    drop(s);
    for n in 4..=6 {
        p.publish("room", json!({ "n": n })).await;
    }
    let mut s = b.client("s").await;
    let r = s.call("subscribe", recover_body("room", 3, &epoch)).await;
    let r = &r["subscribe"];
    assert_eq!(r["recovered"], json!(true), "{r}");
    let got: Vec<(u64, Value)> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"]["n"].clone()))
        .collect();
    assert_eq!(got, vec![(4, json!(4)), (5, json!(5)), (6, json!(6))]);
    p.publish("room", json!({"n": 7})).await;
    assert_eq!(s.push("room").await["pub"]["offset"], json!(7));
}

/// Redis killed mid-stream and started again, empty: nodes go not-ready and back,
/// clients stay connected, the lost stream is reported (2500 unsubscribe, then
/// `recovered:false` on the new epoch), the publications acknowledged since the
/// restart, before the nodes' pub/sub was back, are handed over with it, and later
/// publications arrive.
#[tokio::test]
async fn redis_restart_without_persistence_is_reported_and_service_resumes() {
    let mut redis = RedisServer::start();
    let a = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let b = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let mut p = b.client("p").await;
    p.subscribe("room").await;
    let mut s = a.client("s").await;
    let sub = sub_recoverable(&mut s, "room").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        p.publish("room", json!({ "n": n })).await;
    }
    for n in 1..=5u64 {
        assert_eq!(s.push("room").await["pub"]["offset"], json!(n));
    }
    redis.kill();
    wait_ready(&[&a, &b], false).await;
    let r = p.publish("room", json!({"n": "during"})).await;
    assert_eq!(
        r["error"]["code"],
        json!(100),
        "publish fails while Redis is down: {r}"
    );
    assert_eq!(r["error"]["temporary"], json!(true));
    redis.restart();
    // Published at once, retried until acknowledged: the nodes' pub/sub
    // connections may not be back yet.
    let mut acknowledged = Vec::new();
    for k in 1..=3 {
        let data = json!({ "after": k });
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = p.publish("room", data.clone()).await;
            if r.get("publish").is_some() {
                break;
            }
            assert_eq!(r["error"]["code"], json!(100), "{r}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "not acknowledged: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acknowledged.push(data);
    }
    wait_ready(&[&a, &b], true).await;
    // The node finds the stream gone (new epoch) and tells its positioned members.
    let u = s.push("room").await;
    assert_eq!(u["unsubscribe"]["code"], json!(2500), "{u}");
    let r = s.call("subscribe", recover_body("room", 5, &epoch)).await;
    let r = &r["subscribe"];
    assert!(r.get("recovered").is_none(), "recovery impossible: {r}");
    assert_eq!(r["was_recovering"], json!(true));
    assert_ne!(r["epoch"], json!(epoch), "a new epoch");
    // ... handed over whole: every publication acknowledged since the restart
    // (docs/protocol.md §4.3).
    assert!(r.get("offset").is_none(), "from the new epoch's start: {r}");
    let handed: Vec<Value> = r["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("the new epoch's publications: {r}"))
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(handed, acknowledged, "{r}");
    assert_eq!(offsets_of(r), vec![1, 2, 3]);
    let r = p.publish("room", json!({"n": "after"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let got = s.push("room").await;
    assert_eq!(got["pub"]["data"], json!({"n": "after"}));
    assert_eq!(got["pub"]["offset"], json!(4));
}

fn offsets_of(subscribe: &Value) -> Vec<u64> {
    subscribe["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// With AOF, history survives a Redis restart: a client that was away recovers, and
/// a client that stayed sees no gap and no spurious resubscribe.
#[tokio::test]
async fn redis_restart_with_aof_keeps_history_and_recovery_succeeds() {
    let mut redis = RedisServer::start_aof();
    let a = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let b = TestGateway::on_redis(&redis.url(), |_| {}).await;
    let mut p = b.client("p").await;
    p.subscribe("room").await;
    let mut stay = a.client("stay").await;
    let sub = sub_recoverable(&mut stay, "room").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let mut away = a.client("away").await;
    sub_recoverable(&mut away, "room").await;
    for n in 1..=3 {
        p.publish("room", json!({ "n": n })).await;
    }
    for n in 1..=3u64 {
        assert_eq!(away.push("room").await["pub"]["offset"], json!(n));
    }
    drop(away);
    for n in 4..=5 {
        p.publish("room", json!({ "n": n })).await;
    }
    redis.restart();
    wait_ready(&[&a, &b], true).await;
    let mut back = b.client("away").await;
    let reply = back
        .call("subscribe", recover_body("room", 3, &epoch))
        .await;
    let r = &reply["subscribe"];
    assert_eq!(r["recovered"], json!(true), "{reply}");
    assert_eq!(offsets_of(r), vec![4, 5]);
    let r = p.publish("room", json!({"n": 6})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let offs: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let m = stay.push("room").await;
            assert!(m.get("unsubscribe").is_none(), "no resubscribe needed: {m}");
            v.push(m["pub"]["offset"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(offs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(back.push("room").await["pub"]["offset"], json!(6));
}

/// Three masters: rooms over many slots, delivery across nodes, recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_delivers_and_recovers_across_nodes() {
    let cluster = RedisCluster::start(3);
    let a = TestGateway::on_redis(&cluster.url(), |c| c.client.publish_rate_per_sec = 0).await;
    let b = TestGateway::on_redis(&cluster.url(), |c| c.client.publish_rate_per_sec = 0).await;
    let rooms: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let mut s = a.client("s").await;
    let mut epochs = Vec::new();
    for r in &rooms {
        epochs.push(
            sub_recoverable(&mut s, r).await["epoch"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut p = b.client("p").await;
    for r in &rooms {
        p.subscribe(r).await;
    }
    for n in 1..=2 {
        for r in &rooms {
            let res = p.publish(r, json!({ "n": n })).await;
            assert_eq!(res["publish"], json!({}), "{res}");
        }
    }
    for r in &rooms {
        for n in 1..=2u64 {
            let m = s.push(r).await;
            assert_eq!(m["pub"]["offset"], json!(n), "{r}: {m}");
        }
    }
    drop(s);
    for r in &rooms {
        p.publish(r, json!({"n": 3})).await;
    }
    let mut s = b.client("s").await;
    for (r, e) in rooms.iter().zip(&epochs) {
        let res = s.call("subscribe", recover_body(r, 2, e)).await;
        let sub = &res["subscribe"];
        assert_eq!(sub["recovered"], json!(true), "{r}: {res}");
        assert_eq!(sub["publications"][0]["offset"], json!(3));
    }
}

/// Cluster-wide commands reach a user's connections on any node; every node sees
/// every other in the registry, with its counts.
#[tokio::test]
async fn control_commands_and_the_node_registry_span_nodes() {
    use fanout::broker::Control;
    let redis = RedisServer::start();
    let quick = |c: &mut gateway::Config| c.heartbeat_interval = Duration::from_millis(200);
    let a = TestGateway::on_redis(&redis.url(), quick).await;
    let b = TestGateway::on_redis(&redis.url(), quick).await;
    let mut u = b.client("u").await;
    u.subscribe("room").await;
    let mut v = b.client("v").await;
    v.subscribe("room").await;
    let unsub = Control::Unsubscribe {
        user: "u".into(),
        channel: "room".into(),
        client: String::new(),
    };
    a.node.broker.publish_control(&unsub).await.unwrap();
    let p = u.push("room").await;
    assert_eq!(p["unsubscribe"]["code"], json!(2000), "{p}");
    let bye = Control::Disconnect {
        user: "u".into(),
        code: 3503,
        reason: "force disconnect".into(),
        client: String::new(),
        whitelist: Vec::new(),
    };
    a.node.broker.publish_control(&bye).await.unwrap();
    assert_eq!(u.closed().await, (3503, "force disconnect".to_string()));
    let r = v.publish("room", json!("still here")).await;
    assert_eq!(r["publish"], json!({}), "other users are untouched: {r}");
    let (na, nb) = (a.node.clone(), b.node.clone());
    eventually("both nodes in both registries, b with one client", || {
        let seen = na.broker.nodes();
        seen.len() == 2
            && nb.broker.nodes().len() == 2
            && seen
                .iter()
                .any(|n| n.id == nb.id && n.num_clients == 1 && n.num_users == 1)
    })
    .await;
}

/// Pauses in reading a connection because its publish pipeline was full.
fn read_pauses(gw: &TestGateway) -> f64 {
    let text = gw.node.metrics.render(Default::default());
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition");
    crate::metrics::value(&scrape, "gateway_read_pauses_total", &[])
}

/// Eight publishes of one connection in one frame, below
/// `client.max_publishes_in_flight` (16): on one Redis they are all in flight at
/// once; on a Redis Cluster, whose client retries a failed master's commands in
/// any order, they go one at a time (the socket waits: read pauses), so that a
/// failover cannot swap them. Answered in order either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_connections_publishes_go_one_at_a_time() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start(3);
    for (url, one_at_a_time) in [(server.url(), false), (cluster.url(), true)] {
        let gw = TestGateway::on_redis(&url, |c| c.client.publish_rate_per_sec = 0).await;
        assert_eq!(gw.node.broker.keeps_publish_order(), !one_at_a_time);
        let mut p = gw.client("p").await;
        p.subscribe("ordered").await;
        let frame: Vec<String> = (1..=8)
            .map(|id| {
                json!({"id": 100 + id, "publish": {"channel": "ordered", "data": {"n": id}}})
                    .to_string()
            })
            .collect();
        p.send_text(&frame.join("\n")).await;
        let (mut replies, mut pubs) = (Vec::new(), Vec::new());
        while replies.len() < 8 || pubs.len() < 8 {
            match p.next().await {
                Msg::Json(v) if v.get("push").is_some() => {
                    pubs.push(v["push"]["pub"]["data"]["n"].clone())
                }
                Msg::Json(v) => {
                    assert_eq!(v["publish"], json!({}), "{url}: {v}");
                    replies.push(v["id"].clone());
                }
                Msg::Close(code, why) => panic!("{url}: closed {code} {why}"),
            }
        }
        assert_eq!(
            replies,
            (101..=108).map(|i| json!(i)).collect::<Vec<_>>(),
            "{url}"
        );
        assert_eq!(pubs, (1..=8).map(|i| json!(i)).collect::<Vec<_>>(), "{url}");
        let pauses = read_pauses(&gw);
        assert_eq!(pauses > 0.0, one_at_a_time, "{url}: {pauses} read pauses");
    }
}
