//! History positions and recovery: no gap, gap within history, gap beyond history,
//! epoch mismatch (the stream handed over when whole), and the subscribe reply
//! racing live publications.

use std::time::Duration;

use serde_json::{json, Value};
use shared::auth::{unix_now, MintClaims};

use crate::support::*;

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

/// Subscribe `c` to `channel` as recoverable, optionally recovering from a position.
async fn sub_recover(c: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut body = json!({"channel": channel, "recoverable": true, "flag": 1});
    if let Some((offset, epoch)) = since {
        body["recover"] = json!(true);
        body["offset"] = json!(offset);
        body["epoch"] = json!(epoch);
    }
    let r = c.call("subscribe", body).await;
    assert!(r.get("subscribe").is_some(), "subscribe failed: {r}");
    r["subscribe"].clone()
}

async fn publish_n(c: &mut Client, channel: &str, range: std::ops::RangeInclusive<u32>) {
    for n in range {
        let r = c.publish(channel, json!({ "n": n })).await;
        assert_eq!(r["publish"], json!({}), "publish {n}: {r}");
    }
}

#[tokio::test]
async fn recover_with_no_gap() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    let s = sub_recover(&mut a, "room", None).await;
    assert_eq!(
        (s["recoverable"].clone(), s["positioned"].clone()),
        (json!(true), json!(true))
    );
    publish_n(&mut a, "room", 1..=2).await;
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    drop(a);
    let mut b = gw.client("1").await;
    let s = sub_recover(&mut b, "room", Some((2, &epoch))).await;
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(s["was_recovering"], json!(true));
    assert_eq!(s["offset"], json!(2));
    assert!(s.get("publications").is_none(), "nothing missed: {s}");
}

#[tokio::test]
async fn recover_gap_within_history_in_order_then_live() {
    let gw = TestGateway::with(|c| c.client.publish_rate_per_sec = 0).await;
    let mut publisher = gw.client("p").await;
    let mut a = gw.client("1").await;
    let s = sub_recover(&mut a, "room", None).await;
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    publisher.subscribe("room").await;
    publish_n(&mut publisher, "room", 1..=2).await;
    assert_eq!(a.push("room").await["pub"]["offset"], json!(1));
    assert_eq!(a.push("room").await["pub"]["offset"], json!(2));
    drop(a);
    publish_n(&mut publisher, "room", 3..=7).await;
    let mut b = gw.client("1").await;
    let s = sub_recover(&mut b, "room", Some((2, &epoch))).await;
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(
        s["offset"],
        json!(2),
        "the client's offset, so replay moves it to the top"
    );
    assert_eq!(s["epoch"], json!(epoch));
    assert_eq!(offsets(&s["publications"]), vec![3, 4, 5, 6, 7]);
    assert_eq!(s["publications"][0]["data"], json!({"n": 3}));
    publish_n(&mut publisher, "room", 8..=8).await;
    let p = b.push("room").await;
    assert_eq!(p["pub"]["offset"], json!(8));
}

#[tokio::test]
async fn recover_gap_beyond_history_is_not_recovered() {
    let gw = TestGateway::with(|c| {
        c.client.publish_rate_per_sec = 0;
        c.channel.history_size = 3;
    })
    .await;
    let mut p = gw.client("p").await;
    p.subscribe("room").await;
    publish_n(&mut p, "room", 1..=1).await;
    let mut a = gw.client("1").await;
    let s = sub_recover(&mut a, "room", None).await;
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    assert_eq!(s["offset"], json!(1));
    drop(a);
    publish_n(&mut p, "room", 2..=6).await;
    let mut b = gw.client("1").await;
    let s = sub_recover(&mut b, "room", Some((1, &epoch))).await;
    assert!(
        s.get("recovered").is_none(),
        "offsets 2,3 left history: {s}"
    );
    assert_eq!(s["was_recovering"], json!(true));
    assert_eq!(s["offset"], json!(6), "the current top");
    assert!(s.get("publications").is_none());
}

#[tokio::test]
async fn recover_gap_beyond_recovery_limit_is_not_recovered() {
    let gw = TestGateway::with(|c| {
        c.client.publish_rate_per_sec = 0;
        c.client.recovery_max_publication_limit = 3;
    })
    .await;
    let mut p = gw.client("p").await;
    let s = sub_recover(&mut p, "room", None).await;
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    publish_n(&mut p, "room", 1..=5).await;
    let mut b = gw.client("1").await;
    let s = sub_recover(&mut b, "room", Some((1, &epoch))).await;
    assert!(s.get("recovered").is_none(), "4 missed, limit 3: {s}");
    let s = sub_recover(&mut gw.client("2").await, "room", Some((2, &epoch))).await;
    assert_eq!(s["recovered"], json!(true), "3 missed, limit 3: {s}");
    assert_eq!(offsets(&s["publications"]), vec![3, 4, 5]);
}

/// Another epoch than the stream's: not recovered. The stream here is whole from
/// its first offset, so its publications come with the answer (docs/protocol.md
/// §4.3, the new epoch handed over), from offset 0.
#[tokio::test]
async fn recover_with_wrong_epoch_hands_over_a_whole_stream() {
    let gw = TestGateway::start().await;
    let mut p = gw.client("p").await;
    let s = sub_recover(&mut p, "room", None).await;
    publish_n(&mut p, "room", 1..=2).await;
    let mut b = gw.client("1").await;
    let r = sub_recover(&mut b, "room", Some((1, "stale-epoch"))).await;
    assert!(
        r.get("recovered").is_none(),
        "recovered:false is omitted: {r}"
    );
    assert_eq!(r["was_recovering"], json!(true));
    assert_eq!(r["epoch"], s["epoch"]);
    assert!(r.get("offset").is_none(), "from the stream's start: {r}");
    assert_eq!(offsets(&r["publications"]), vec![1, 2]);
}

/// Another epoch, and the stream's first publications have left history: not
/// recovered, the current position, no publications.
#[tokio::test]
async fn recover_with_wrong_epoch_reports_current_position_when_history_is_trimmed() {
    let gw = TestGateway::with(|c| c.channel.history_size = 2).await;
    let mut p = gw.client("p").await;
    let s = sub_recover(&mut p, "room", None).await;
    publish_n(&mut p, "room", 1..=5).await;
    let mut b = gw.client("1").await;
    let r = sub_recover(&mut b, "room", Some((1, "stale-epoch"))).await;
    assert!(r.get("recovered").is_none(), "{r}");
    assert_eq!(r["was_recovering"], json!(true));
    assert_eq!(r["epoch"], s["epoch"]);
    assert_eq!(r["offset"], json!(5));
    assert!(r.get("publications").is_none(), "{r}");
}

#[tokio::test]
async fn reject_unrecovered_flag_gives_112() {
    let gw = TestGateway::start().await;
    let mut b = gw.client("1").await;
    let r = b
        .call(
            "subscribe",
            json!({"channel": "room", "recoverable": true, "recover": true, "offset": 5, "epoch": "gone", "flag": 3}),
        )
        .await;
    assert_eq!(r["error"]["code"], json!(112), "{r}");
    // The failed subscription left nothing behind: subscribing again works.
    sub_recover(&mut b, "room", None).await;
}

#[tokio::test]
async fn force_recovery_makes_every_subscription_recoverable() {
    let gw = TestGateway::with(|c| {
        c.namespaces.insert(
            "f".into(),
            gateway::config::ChannelOptions {
                force_recovery: true,
                ..Default::default()
            },
        );
    })
    .await;
    let mut a = gw.client("1").await;
    let s = a.subscribe("f:room").await;
    assert_eq!(s["recoverable"], json!(true), "{s}");
    let s = a.subscribe("plain").await;
    assert!(s.get("recoverable").is_none(), "{s}");
}

#[tokio::test]
async fn no_history_namespace_is_not_positioned() {
    let gw = TestGateway::with(|c| {
        c.namespaces.insert(
            "live".into(),
            gateway::config::ChannelOptions {
                history_size: 0,
                ..Default::default()
            },
        );
    })
    .await;
    let mut a = gw.client("1").await;
    let s = sub_recover(&mut a, "live:x", Some((3, "e"))).await;
    assert_eq!(s, json!({}), "{s}");
    a.publish("live:x", json!(1)).await;
    let p = a.push("live:x").await;
    assert!(p["pub"].get("offset").is_none(), "{p}");
}

/// The SDK drops pushes that arrive before the subscribe reply, and recovery must
/// neither lose nor repeat publications made while the subscription is set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reply_precedes_pushes_and_recovery_joins_live_without_gap() {
    const MAX: u32 = 5000;
    let gw = TestGateway::with(|c| {
        c.client.publish_rate_per_sec = 0;
        c.client.recovery_max_publication_limit = MAX as usize;
        c.channel.history_size = MAX as usize;
    })
    .await;
    let mut p = gw.client("p").await;
    let s = sub_recover(&mut p, "race", None).await;
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    publish_n(&mut p, "race", 1..=20).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let publisher = tokio::spawn(async move {
        for n in 21..=MAX {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            publish_n(&mut p, "race", n..=n).await;
        }
    });
    let mut from = 0u64;
    for round in 0..5 {
        let mut c = gw.client("1").await;
        let id = c
            .send(
                "subscribe",
                json!({"channel": "race", "recoverable": true, "recover": true, "offset": from, "epoch": epoch}),
            )
            .await;
        // The first thing on the socket must be the reply, not a push.
        let mut seen: Vec<u64> = match c.next().await {
            Msg::Json(v) if v["id"] == json!(id) => {
                let s = &v["subscribe"];
                assert_eq!(s["recovered"], json!(true), "{v}");
                offsets(&s["publications"])
            }
            Msg::Json(v) if v.get("push").is_some() => panic!("push before subscribe reply: {v}"),
            other => panic!("unexpected {other:?}"),
        };
        let recovered = seen.len();
        // Live pushes must continue the recovered sequence: no gap, no repeat.
        for _ in 0..20 {
            let p = c.push("race").await;
            seen.push(p["pub"]["offset"].as_u64().unwrap());
        }
        let expected: Vec<u64> = (from + 1..=from + seen.len() as u64).collect();
        assert_eq!(
            seen, expected,
            "round {round}: from {from}, {recovered} recovered"
        );
        from = *seen.last().unwrap() - 5;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher stops")
        .unwrap();
}

#[tokio::test]
async fn server_side_subscription_recovers_through_connect_subs() {
    let gw = TestGateway::with(|c| c.client.publish_rate_per_sec = 0).await;
    let tok = mint(MintClaims {
        sub: "42".into(),
        exp: Some(unix_now() + 600),
        channels: vec!["#42".into()],
        ..Default::default()
    });
    let mut a = Client::open(gw.addr).await;
    let r = a.connect(&tok).await;
    let s = &r["connect"]["subs"]["#42"];
    assert_eq!(s["recoverable"], json!(true), "{r}");
    let epoch = s["epoch"].as_str().unwrap().to_owned();
    // The personal channel's owner can publish into it (it is subscribed).
    publish_n(&mut a, "#42", 1..=2).await;
    assert_eq!(a.push("#42").await["pub"]["offset"], json!(1));
    drop(a);
    let mut p = Client::open(gw.addr).await;
    p.connect(&tok).await;
    publish_n(&mut p, "#42", 3..=4).await;
    drop(p);
    let mut b = Client::open(gw.addr).await;
    let r = b
        .call(
            "connect",
            json!({"token": tok, "subs": {"#42": {"recover": true, "offset": 2, "epoch": epoch}}}),
        )
        .await;
    let s = &r["connect"]["subs"]["#42"];
    assert_eq!(s["recovered"], json!(true), "{r}");
    assert_eq!(offsets(&s["publications"]), vec![3, 4]);
    b.silent_for(Duration::from_millis(100)).await;
}

/// Offsets near `u64::MAX` from a client are answered, never overflowed.
#[tokio::test]
async fn offsets_near_the_top_of_u64_are_answered() {
    let gw = TestGateway::start().await;
    let (mut c, _) = Client::connected(gw.addr, &token("u")).await;
    let mut p = gw.client("p").await;
    p.subscribe("room").await;
    publish_n(&mut p, "room", 1..=2).await;
    let r = sub_recover(&mut c, "room", Some((u64::MAX, ""))).await;
    assert_eq!(r["recovered"], Value::Null, "not recovered: {r}");
    assert_eq!(r["offset"], json!(2), "{r}");
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for (reverse, offset) in [(false, u64::MAX), (true, u64::MAX), (false, u64::MAX - 1)] {
        let h = c
            .call(
                "history",
                json!({"channel":"room","since":{"offset":offset,"epoch":epoch},"reverse":reverse,"limit":10}),
            )
            .await;
        assert_eq!(h["history"]["offset"], json!(2), "{h}");
    }
}

/// A history page or a recovery larger than the connection's outbound budget used
/// to close the client with 3008 every time it asked (and its SDK asked again).
/// Now a page stops at half the budget, and such a recovery is `recovered: false`.
#[tokio::test]
async fn replies_larger_than_the_outbound_budget_do_not_close_the_client() {
    let gw = TestGateway::with(|c| {
        c.client.queue_max_bytes = 64 << 10;
        c.client.publish_rate_per_sec = 0;
    })
    .await;
    let mut p = gw.client("p").await;
    p.subscribe("room").await;
    let fill = "z".repeat(10_000);
    for n in 1..=10 {
        let r = p.publish("room", json!({ "n": n, "fill": fill })).await;
        assert_eq!(r["publish"], json!({}), "{r}");
    }
    let (mut c, _) = Client::connected(gw.addr, &token("u")).await;
    let sub = sub_recover(&mut c, "room", None).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let h = c
        .call("history", json!({"channel": "room", "limit": 10}))
        .await;
    let pubs = h["history"]["publications"]
        .as_array()
        .expect("history")
        .clone();
    assert!(
        !pubs.is_empty() && pubs.len() < 10,
        "a page within half of 64 KiB: {} publications",
        pubs.len()
    );
    assert_eq!(pubs[0]["data"]["n"], json!(1), "from the start");
    assert_eq!(h["history"]["offset"], json!(10));
    // Reading on from the last offset of the page gets the next ones.
    let last = pubs.last().unwrap()["offset"].as_u64().unwrap();
    let next = c
        .call(
            "history",
            json!({"channel": "room", "limit": 10, "since": {"offset": last, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        next["history"]["publications"][0]["offset"],
        json!(last + 1),
        "{next}"
    );
    // A recovery of all ten does not fit: not recovered, and the client stays.
    let (mut r, _) = Client::connected(gw.addr, &token("r")).await;
    let rec = sub_recover(&mut r, "room", Some((0, &epoch))).await;
    assert_eq!(rec["recovered"], Value::Null, "{rec}");
    assert_eq!(rec["offset"], json!(10));
    assert!(rec.get("publications").is_none(), "{rec}");
    let again = r.publish("room", json!("still connected")).await;
    assert_eq!(again["publish"], json!({}), "{again}");
    assert_eq!(gw.node.metrics.slow_disconnects.get(), 0);
}
