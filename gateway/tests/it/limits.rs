//! Per-connection and per-node limits, and what the HTTP server accepts.

use serde_json::json;

use shared::auth::{mint_hs256, MintClaims};

use crate::support::*;

#[tokio::test]
async fn subscriptions_beyond_max_subscriptions_are_106() {
    let gw = TestGateway::with(|c| c.client.max_subscriptions = 2).await;
    let mut c = gw.client("1").await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let e = c.call_err("subscribe", json!({"channel": "c"})).await;
    assert_eq!(e, json!({"code": 106, "message": "limit exceeded"}));
    c.call("unsubscribe", json!({"channel": "a"})).await;
    c.subscribe("c").await;
}

#[tokio::test]
async fn publishes_beyond_the_burst_are_111_temporary() {
    let gw = TestGateway::with(|c| {
        c.client.publish_rate_per_sec = 1;
        c.client.publish_burst = 3;
    })
    .await;
    let mut c = gw.client("1").await;
    c.subscribe("chat").await;
    for n in 0..3 {
        let r = c.publish("chat", json!({ "n": n })).await;
        assert_eq!(r["publish"], json!({}), "within the burst: {r}");
    }
    let e = c
        .call_err("publish", json!({"channel": "chat", "data": {"n": 3}}))
        .await;
    assert_eq!(
        e,
        json!({"code": 111, "message": "too many requests", "temporary": true})
    );
}

#[tokio::test]
async fn frame_larger_than_max_message_bytes_closes_1009() {
    let gw = TestGateway::with(|c| c.client.max_message_bytes = 2048).await;
    let mut c = gw.client("1").await;
    c.subscribe("chat").await;
    let fits = json!({"publish": {"channel": "chat", "data": {"s": "x".repeat(1900)}}, "id": 100});
    assert!(fits.to_string().len() <= 2048);
    c.send_text(&fits.to_string()).await;
    assert_eq!(c.reply(100).await["publish"], json!({}));
    let big = json!({"publish": {"channel": "chat", "data": {"s": "x".repeat(2100)}}, "id": 101});
    c.send_text(&big.to_string()).await;
    assert_eq!(c.closed().await.0, 1009);
}

#[tokio::test]
async fn upgrade_beyond_max_connections_is_503() {
    let gw = TestGateway::with(|c| c.client.max_connections = 1).await;
    let first = gw.client("1").await;
    let err = ws_connect(gw.addr, &[]).await.err().expect("refused");
    assert_eq!(err, "Invalid status code: 503");
    drop(first);
    eventually("the first connection to end", || {
        gw.node.metrics.connections.get() == 0
    })
    .await;
    gw.client("2").await;
}

/// A storm of upgrades at once stays within `client.max_connections`, and the
/// slots come back: 200 upgrade requests sent at once on connections opened
/// beforehand, against a limit of 20, switch exactly 20. (The slot is taken when
/// the upgrade is answered; the count it replaced rose only when the connection's
/// task started, a window this test did not manage to hit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_upgrades_stays_within_max_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    const MAX: usize = 20;
    const STORM: usize = 200;
    let gw = TestGateway::with(|c| c.client.max_connections = MAX).await;
    let mut socks = Vec::new();
    for _ in 0..STORM {
        socks.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    );
    for s in &mut socks {
        s.write_all(request.as_bytes()).await.expect("send");
    }
    let mut switched = 0;
    let mut refused = 0;
    for s in &mut socks {
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .expect("a status line");
        match &head[9..12] {
            b"101" => switched += 1,
            b"503" => refused += 1,
            other => panic!("status {}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!((switched, refused), (MAX, STORM - MAX));
    // The slots come back when the connections end.
    drop(socks);
    eventually("the connections to end", || {
        gw.node.metrics.connections.get() == 0
    })
    .await;
    let mut again = Vec::new();
    for _ in 0..MAX {
        let ws = ws_connect(gw.addr, &[]).await;
        assert!(ws.is_ok(), "a slot was not given back: {:?}", ws.err());
        again.push(ws);
    }
}

#[tokio::test]
async fn origin_not_allowed_is_403() {
    let gw =
        TestGateway::with(|c| c.client.allowed_origins = vec!["https://app.example".into()]).await;
    for origin in ["https://evil.example", "http://127.0.0.1:1"] {
        let err = ws_connect(gw.addr, &[("Origin", origin)]).await.err();
        assert_eq!(err.as_deref(), Some("Invalid status code: 403"), "{origin}");
    }
}

#[tokio::test]
async fn missing_same_host_or_listed_origin_is_accepted() {
    let gw =
        TestGateway::with(|c| c.client.allowed_origins = vec!["https://app.example".into()]).await;
    let same_host = format!("http://{}", gw.addr);
    for headers in [
        vec![],
        vec![("Origin", same_host.as_str())],
        vec![("Origin", "https://app.example")],
    ] {
        let ws = ws_connect(gw.addr, &headers)
            .await
            .unwrap_or_else(|e| panic!("{headers:?}: {e}"));
        let mut c = Client::from_ws(ws);
        let r = c.connect(&token("1")).await;
        assert!(r.get("connect").is_some(), "{headers:?}: {r}");
    }
}

#[tokio::test]
async fn wildcard_allowed_origins_accept_any_origin() {
    let gw = TestGateway::with(|c| c.client.allowed_origins = vec!["*".into()]).await;
    let ws = ws_connect(gw.addr, &[("Origin", "https://anything.example")]).await;
    assert!(ws.is_ok(), "{:?}", ws.err());
}

#[tokio::test]
async fn centrifuge_json_subprotocol_is_accepted_and_echoed() {
    let gw = TestGateway::start().await;
    let (ws, headers) =
        ws_connect_with_response(gw.addr, &[("Sec-WebSocket-Protocol", "centrifuge-json")])
            .await
            .expect("upgrade");
    assert_eq!(
        headers.get("sec-websocket-protocol").map(|v| v.as_bytes()),
        Some(&b"centrifuge-json"[..])
    );
    let mut c = Client::from_ws(ws);
    let r = c.connect(&token("1")).await;
    assert!(r.get("connect").is_some(), "{r}");
}

#[tokio::test]
async fn no_subprotocol_offered_gets_none_echoed() {
    let gw = TestGateway::start().await;
    let (_ws, headers) = ws_connect_with_response(gw.addr, &[])
        .await
        .expect("upgrade");
    assert!(
        headers.get("sec-websocket-protocol").is_none(),
        "{headers:?}"
    );
}

#[tokio::test]
async fn only_protobuf_subprotocol_is_refused() {
    let gw = TestGateway::start().await;
    let err = ws_connect(
        gw.addr,
        &[("Sec-WebSocket-Protocol", "centrifuge-protobuf")],
    )
    .await
    .err();
    assert_eq!(err.as_deref(), Some("Invalid status code: 400"));
}

#[tokio::test]
async fn health_and_readiness_are_200_and_unknown_paths_404() {
    let gw = TestGateway::start().await;
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(gw.addr, "/readyz").await.0, 200);
    assert_eq!(http_get(gw.addr, "/nope").await.0, 404);
}

/// Read until the peer closes; how long that took, or `None` if it stayed open
/// for `within`.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn partial_request(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    s
}

/// Slowloris: headers that never finish hold a connection only for
/// `http.header_read_timeout`, idle keep-alive connections close after it too, and
/// no more than `http.max_pending_connections` are held at once.
#[tokio::test]
async fn slow_and_idle_http_connections_are_bounded() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::with(|c| {
        c.http.header_read_timeout = Duration::from_millis(300);
        c.http.max_pending_connections = 2;
    })
    .await;
    let opened = std::time::Instant::now();
    let mut a = partial_request(gw.addr).await;
    let mut b = partial_request(gw.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Over the cap: closed at once.
    let mut c = partial_request(gw.addr).await;
    let t = closed_within(&mut c, Duration::from_millis(200)).await;
    assert!(t.is_some(), "a third pending connection is refused");
    // The two slow ones are closed at the header timeout.
    for s in [&mut a, &mut b] {
        closed_within(s, Duration::from_secs(3))
            .await
            .expect("closed");
        let t = opened.elapsed();
        assert!(
            t >= Duration::from_millis(250),
            "held until the timeout: {t:?}"
        );
    }
    // Then the node takes connections again, and a WebSocket client works.
    let (mut ws, _) = Client::connected(gw.addr, &token("u")).await;
    ws.subscribe("chat").await;
    // An idle keep-alive connection closes after the timeout too.
    let mut k = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    k.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t = closed_within(&mut k, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(t >= Duration::from_millis(200), "{t:?}");
    // The WebSocket is not an HTTP connection any more: it stays.
    let r = ws.publish("chat", json!("still here")).await;
    assert_eq!(r["publish"], json!({}), "{r}");
}

/// Channel names with control characters, or with `{` `}` (which would move a
/// room's Redis keys off their shared hash tag), are refused with 107.
#[tokio::test]
async fn channel_names_with_control_characters_or_braces_are_107() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    for name in [
        "a\u{1}b",
        "line\nbreak",
        "tab\there",
        "del\u{7f}",
        "x{y}",
        "{",
        "}z",
    ] {
        let e = c.call_err("subscribe", json!({ "channel": name })).await;
        assert_eq!(e["code"], json!(107), "{name:?}: {e}");
        let e = c
            .call_err("publish", json!({ "channel": name, "data": 1 }))
            .await;
        assert_eq!(e["code"], json!(107), "{name:?}: {e}");
    }
    // Other characters pass, and so do user-limited names.
    c.subscribe("état-2024_x.y").await;
    c.subscribe("dialog#1,2").await;
}

/// Every command but publishes and pongs is budgeted per connection: a flood of
/// presence, history or subscribe churn gets 111 (temporary) beyond the burst, the
/// connection stays, and publishes keep their own budget.
#[tokio::test]
async fn commands_beyond_the_command_budget_are_111() {
    let gw = TestGateway::with(|c| {
        c.client.command_rate_per_sec = 2;
        c.client.command_burst = 4;
    })
    .await;
    let mut c = gw.client("1").await;
    // The subscribe is the first command of the budget.
    c.subscribe("room").await;
    let mut lines = Vec::new();
    for i in 0..6u32 {
        let cmd = match i % 3 {
            0 => json!({"id": 100 + i, "presence": {"channel": "room"}}),
            1 => json!({"id": 100 + i, "history": {"channel": "room", "limit": 1}}),
            _ => json!({"id": 100 + i, "subscribe": {"channel": format!("churn{i}")}}),
        };
        lines.push(cmd.to_string());
    }
    c.send_text(&lines.join("\n")).await;
    let mut limited = 0;
    for i in 0..6u32 {
        let r = c.reply(100 + i).await;
        if r["error"]["code"] == json!(111) {
            assert_eq!(r["error"]["temporary"], json!(true), "{r}");
            limited += 1;
        }
    }
    assert_eq!(limited, 3, "burst of 4, one spent on the first subscribe");
    // Publishes are not counted here.
    for n in 0..5 {
        let r = c.publish("room", json!(n)).await;
        assert_eq!(r["publish"], json!({}), "{r}");
    }
    // The budget refills.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = c.call("presence_stats", json!({"channel": "room"})).await;
    assert!(r.get("presence_stats").is_some(), "{r}");
}

/// A message with more commands than `client.max_commands_per_frame` closes the
/// connection with 3013.
#[tokio::test]
async fn a_frame_with_too_many_commands_closes_3013() {
    let gw = TestGateway::with(|c| c.client.max_commands_per_frame = 3).await;
    let mut c = gw.client("1").await;
    let three: Vec<String> = (1..=3)
        .map(|i| json!({"id": 50 + i, "presence_stats": {"channel": "x"}}).to_string())
        .collect();
    c.send_text(&three.join("\n")).await;
    for i in 1..=3 {
        c.reply(50 + i).await;
    }
    let four: Vec<String> = (1..=4)
        .map(|i| json!({"id": 60 + i, "presence_stats": {"channel": "x"}}).to_string())
        .collect();
    c.send_text(&four.join("\n")).await;
    assert_eq!(c.closed().await, (3013, "too many requests".to_string()));
}

/// A namespace's `max_publication_bytes` bounds what one publication may add to
/// history, from clients and from the server API alike.
#[tokio::test]
async fn publications_over_max_publication_bytes_are_107() {
    let gw = TestGateway::with(|c| {
        c.api_key = Some("k".into());
        c.channel.max_publication_bytes = 100;
    })
    .await;
    let mut c = gw.client("1").await;
    c.subscribe("room").await;
    let big = json!({ "fill": "x".repeat(200) });
    let e = c
        .call_err("publish", json!({"channel": "room", "data": big}))
        .await;
    assert_eq!(e["code"], json!(107), "{e}");
    let body = json!({"channel": "room", "data": big}).to_string();
    let (status, _, text) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", "k")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"]["code"],
        json!(107),
        "{text}"
    );
    let r = c.publish("room", json!({ "fill": "x".repeat(50) })).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = c.push("room").await;
    assert_eq!(
        p["pub"]["offset"],
        json!(1),
        "only the small one was kept: {p}"
    );
}

/// Every budgeted command kind runs out the same way: 111, temporary.
#[tokio::test]
async fn each_command_kind_is_budgeted() {
    let gw = TestGateway::with(|c| {
        c.client.command_rate_per_sec = 1;
        c.client.command_burst = 3;
    })
    .await;
    type Body = fn(u32) -> serde_json::Value;
    let kinds: [(&str, Body); 6] = [
        ("presence", |_| json!({"channel": "room"})),
        ("presence_stats", |_| json!({"channel": "room"})),
        ("history", |_| json!({"channel": "room", "limit": 1})),
        ("subscribe", |i| json!({"channel": format!("churn{i}")})),
        ("unsubscribe", |i| json!({"channel": format!("gone{i}")})),
        ("rpc", |_| json!({"method": "m", "data": {}})),
    ];
    for (kind, body) in kinds {
        let mut c = gw.client("1").await;
        let lines: Vec<String> = (0..8u32)
            .map(|i| json!({"id": 100 + i, kind: body(i)}).to_string())
            .collect();
        c.send_text(&lines.join("\n")).await;
        let mut limited = 0;
        for i in 0..8u32 {
            let r = c.reply(100 + i).await;
            if r["error"]["code"] == json!(111) {
                assert_eq!(r["error"]["temporary"], json!(true), "{kind}: {r}");
                limited += 1;
            }
        }
        assert!(
            limited >= 4,
            "{kind}: only {limited} of 8 over a burst of 3"
        );
    }
}

/// A connection that keeps presenting subscription tokens that fail verification
/// is closed with 3509 at `client.max_invalid_sub_tokens`; expired tokens (which
/// an SDK refreshes) do not count.
#[tokio::test]
async fn repeated_invalid_subscription_tokens_close_3509() {
    let gw = TestGateway::with(|c| c.client.max_invalid_sub_tokens = 3).await;
    let mut c = gw.client("1").await;
    let expired = mint(MintClaims {
        sub: "1".into(),
        channel: Some("room".into()),
        exp: Some(1),
        ..Default::default()
    });
    for _ in 0..3 {
        let e = c
            .call_err("subscribe", json!({"channel": "room", "token": expired}))
            .await;
        assert_eq!(e["code"], json!(109), "{e}");
    }
    let forged = mint_hs256(
        "not-the-secret",
        &MintClaims {
            sub: "1".into(),
            channel: Some("room".into()),
            ..Default::default()
        },
    );
    for _ in 0..2 {
        let e = c
            .call_err("subscribe", json!({"channel": "room", "token": forged}))
            .await;
        assert_eq!(e["code"], json!(103), "{e}");
    }
    let (code, _) = c
        .send_and_close("subscribe", json!({"channel": "room", "token": "x.y.z"}))
        .await;
    assert_eq!(code, 3509);
    // Other clients are unaffected.
    let mut other = gw.client("2").await;
    other.subscribe("room").await;
}

/// `client.max_connections_per_user` bounds one user's connections on a node
/// (error 106 to the connect beyond it); a slot frees when a connection ends.
#[tokio::test]
async fn connections_beyond_max_connections_per_user_are_106() {
    let gw = TestGateway::with(|c| c.client.max_connections_per_user = 2).await;
    let a = gw.client("1").await;
    let _b = gw.client("1").await;
    let mut c = Client::open(gw.addr).await;
    let e = c.connect(&token("1")).await;
    assert_eq!(
        e["error"],
        json!({"code": 106, "message": "limit exceeded"}),
        "{e}"
    );
    // Another user is not limited by user 1's connections.
    let _d = gw.client("2").await;
    drop(a);
    let node = gw.node.clone();
    eventually("user 1's slot freed", || node.hub.num_users() == 2).await;
    let mut e = Client::open(gw.addr).await;
    let r = e.connect(&token("1")).await;
    assert!(r.get("connect").is_some(), "{r}");
}
