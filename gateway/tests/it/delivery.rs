//! Fan-out: every subscriber gets every publication once and in order; a slow
//! client is closed with 3008 without slowing the room; empty rooms go away.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpSocket;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_get_every_publication_once_in_offset_order() {
    let gw = TestGateway::with(|c| c.client.publish_rate_per_sec = 0).await;
    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: usize = 3;
    const EACH: u64 = 30;
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = gw.client(&format!("s{i}")).await;
        c.subscribe("room").await;
        subs.push(c);
    }
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = gw.client(&format!("p{p}")).await;
        c.subscribe("room").await;
        pubs.push(tokio::spawn(async move {
            for n in 0..EACH {
                let r = c.publish("room", json!({"p": p, "n": n})).await;
                assert_eq!(r["publish"], json!({}), "{r}");
            }
            c
        }));
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                let mut per_publisher = vec![Vec::new(); PUBLISHERS];
                for _ in 0..PUBLISHERS as u64 * EACH {
                    let p = c.push("room").await;
                    offsets.push(p["pub"]["offset"].as_u64().unwrap());
                    let d = &p["pub"]["data"];
                    per_publisher[d["p"].as_u64().unwrap() as usize].push(d["n"].as_u64().unwrap());
                }
                c.silent_for(Duration::from_millis(50)).await;
                (offsets, per_publisher)
            })
        })
        .collect();
    for p in pubs {
        p.await.unwrap();
    }
    for r in readers {
        let (offsets, per_publisher) = r.await.unwrap();
        let expected: Vec<u64> = (1..=PUBLISHERS as u64 * EACH).collect();
        assert_eq!(
            offsets, expected,
            "offsets contiguous, no loss, no duplicate"
        );
        for seq in per_publisher {
            assert_eq!(
                seq,
                (0..EACH).collect::<Vec<_>>(),
                "each publisher's order kept"
            );
        }
    }
    assert_eq!(gw.node.metrics.slow_disconnects.get(), 0);
}

/// A client with a tiny receive window that stops reading.
async fn slow_client(gw: &TestGateway) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(gw.addr))
        .await
        .unwrap()
        .unwrap();
    let ws = ws_handshake(gw.addr, stream, &[]).await.unwrap();
    let mut c = Client::from_ws(ws);
    let r = c.connect(&token("slow")).await;
    assert!(r.get("connect").is_some(), "{r}");
    c
}

/// A client that stops reading fills the kernel buffers; its deliveries queue and
/// its connection waits on the full socket. When it reads again it must find every
/// frame intact and in order, across all three frame-length encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_gets_every_publication_intact_in_order() {
    let gw = TestGateway::with(|c| {
        c.client.publish_rate_per_sec = 0;
        c.client.queue_max_bytes = 64 << 20;
        c.client.max_message_bytes = 1 << 20;
        c.channel.max_publication_bytes = 1 << 20;
    })
    .await;
    let mut paused = slow_client(&gw).await;
    paused.subscribe("room").await;
    let mut publisher = gw.client("pub").await;
    publisher.subscribe("room").await;
    const N: usize = 1000;
    // Sizes that straddle the frame-length encodings (125/126, 65,535): about
    // 12 MB, more than loopback's kernel buffers hold, within the queue budget.
    let size = |n: usize| [1, 125, 126, 127, 3000, 7919, 70_000][n % 7] + n;
    for n in 0..N {
        let r = publisher
            .publish("room", json!({"n": n, "fill": "y".repeat(size(n))}))
            .await;
        assert_eq!(r["publish"], json!({}), "{r}");
        while publisher.try_push().is_some() {}
    }
    for n in 0..N {
        let p = paused.push("room").await;
        let d = &p["pub"]["data"];
        assert_eq!(d["n"].as_u64(), Some(n as u64), "in order, none lost");
        assert_eq!(d["fill"].as_str().map(str::len), Some(size(n)), "intact");
    }
    paused.silent_for(Duration::from_millis(100)).await;
    assert_eq!(gw.node.metrics.slow_disconnects.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_with_3008_and_the_room_keeps_flowing() {
    let gw = TestGateway::with(|c| c.client.publish_rate_per_sec = 0).await;
    let mut slow = slow_client(&gw).await;
    slow.subscribe("room").await;
    let mut fast = gw.client("fast").await;
    fast.subscribe("room").await;
    let fast_reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let p = fast.push("room").await;
            let d = &p["pub"]["data"];
            if d["end"] == json!(true) {
                return n;
            }
            assert_eq!(
                d["n"].as_u64(),
                Some(n),
                "fast client sees every publication in order"
            );
            n += 1;
        }
    });
    let mut publisher = gw.client("pub").await;
    publisher.subscribe("room").await;
    let filler = "x".repeat(8000);
    let mut published = 0u64;
    let mut after_slow = 0;
    // The slow client's kernel buffers fill first, then its 1 MiB queue.
    while after_slow < 20 {
        assert!(
            published < 4000,
            "slow client never detected after {published} publications"
        );
        let r = publisher
            .publish("room", json!({"n": published, "fill": filler}))
            .await;
        assert_eq!(r["publish"], json!({}), "{r}");
        published += 1;
        if gw.node.metrics.slow_disconnects.get() > 0 {
            after_slow += 1;
        }
        // The publisher reads its own pushes so that it is not slow itself.
        while publisher.try_push().is_some() {}
    }
    publisher.publish("room", json!({"end": true})).await;
    let got = tokio::time::timeout(WAIT, fast_reader)
        .await
        .expect("fast client done")
        .unwrap();
    assert_eq!(got, published);
    assert_eq!(gw.node.metrics.slow_disconnects.get(), 1);
    // Reading again, the slow client finds what the kernel held, then 3008.
    let (code, reason) = slow.closed().await;
    assert_eq!((code, reason.as_str()), (3008, "slow"));
}

#[tokio::test]
async fn empty_rooms_are_removed() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    let mut b = gw.client("2").await;
    a.subscribe("r1").await;
    a.subscribe("r2").await;
    b.subscribe("r1").await;
    assert_eq!(gw.node.hub.num_rooms(), 2);
    assert_eq!(gw.node.hub.num_subscriptions(), 3);
    let r = a.call("unsubscribe", json!({"channel": "r2"})).await;
    assert_eq!(r["unsubscribe"], json!({}));
    assert_eq!(gw.node.hub.num_rooms(), 1);
    drop(a);
    drop(b);
    let hub = gw.node.hub.clone();
    eventually("rooms emptied", || {
        hub.num_rooms() == 0 && hub.num_subscriptions() == 0
    })
    .await;
}

#[tokio::test]
async fn publications_are_not_delivered_after_unsubscribe() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    let mut b = gw.client("2").await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.call("unsubscribe", json!({"channel": "room"})).await;
    b.publish("room", json!("after")).await;
    assert_eq!(b.push("room").await["pub"]["data"], json!("after"));
    a.silent_for(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn data_is_relayed_verbatim() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    a.subscribe("room").await;
    let data: Value = json!({"unicode": "héllo ✓", "nested": {"a": [1, 2.5, null, true]}, "esc": "line\nbreak \"q\""});
    a.publish("room", data.clone()).await;
    assert_eq!(a.push("room").await["pub"]["data"], data);
}
