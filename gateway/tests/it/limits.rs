//! Per-connection and per-node limits, and what the HTTP server accepts.

use serde_json::json;

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
