//! The server HTTP API over real HTTP: auth, every method's effect on real
//! WebSocket clients, errors and their HTTP statuses, and two nodes sharing Redis.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{client_id, http_post, token, Client, TestGateway, WAIT};

const KEY: &str = "api-key-for-tests";

async fn gateway() -> TestGateway {
    TestGateway::with(|c| {
        c.api_key = Some(KEY.into());
        c.namespaces.insert(
            "news".into(),
            gateway::config::ChannelOptions {
                history_size: 0,
                presence: false,
                ..Default::default()
            },
        );
    })
    .await
}

/// POST `body` to `/api/<method>` with the right key; the status and JSON body.
async fn api(gw: &TestGateway, method: &str, body: Value) -> (u16, Value) {
    api_at(gw.addr, method, body).await
}

async fn api_at(addr: std::net::SocketAddr, method: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = http_post(
        addr,
        &format!("/api/{method}"),
        &[("X-API-Key", KEY), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A method that must succeed: its `result`.
async fn ok(gw: &TestGateway, method: &str, body: Value) -> Value {
    let (status, v) = api(gw, method, body).await;
    assert_eq!(status, 200, "{method}: {v}");
    assert!(v.get("result").is_some(), "{method}: {v}");
    v["result"].clone()
}

/// A method that must fail with an API error: its `error`.
async fn err(gw: &TestGateway, method: &str, body: Value) -> Value {
    let (status, v) = api(gw, method, body).await;
    assert_eq!(status, 200, "{method}: {v}");
    assert!(v.get("error").is_some(), "{method} should fail: {v}");
    v["error"].clone()
}

#[tokio::test]
async fn the_api_is_off_without_a_key() {
    let gw = TestGateway::start().await;
    let (status, _, _) = http_post(gw.addr, "/api/publish", &[("X-API-Key", "x")], b"{}").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn keys_are_checked_in_either_header() {
    let gw = gateway().await;
    let body = br#"{"channel":"chat","data":{"x":1}}"#;
    for headers in [
        vec![],
        vec![("X-API-Key", "wrong")],
        vec![("Authorization", "apikey wrong")],
        vec![("Authorization", "Bearer api-key-for-tests")],
        vec![("X-API-Key", "api-key-for-test")],
    ] {
        let (status, _, text) = http_post(gw.addr, "/api/publish", &headers, body).await;
        assert_eq!((status, text.as_str()), (401, ""), "{headers:?}");
    }
    for headers in [
        vec![("X-API-Key", KEY)],
        vec![("Authorization", "apikey api-key-for-tests")],
        vec![("Authorization", "ApiKey api-key-for-tests")],
    ] {
        let (status, _, text) = http_post(gw.addr, "/api/publish", &headers, body).await;
        assert_eq!(status, 200, "{headers:?}: {text}");
    }
    let (status, headers, _) =
        crate::support::http_request(gw.addr, "GET", "/api/publish", &[], b"").await;
    assert_eq!(status, 405);
    assert!(
        headers.iter().any(|(k, v)| k == "allow" && v == "POST"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn publish_reaches_subscribers_with_its_position() {
    let gw = gateway().await;
    let (mut c, _) = Client::connected(gw.addr, &token("u1")).await;
    c.subscribe("chat").await;
    c.subscribe("news:today").await;
    let r = ok(
        &gw,
        "publish",
        json!({"channel":"chat","data":{"text":"hi"}}),
    )
    .await;
    assert_eq!(r["offset"], json!(1), "{r}");
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let p = c.push("chat").await;
    assert_eq!(p["pub"]["data"], json!({"text":"hi"}));
    assert_eq!(p["pub"]["offset"], json!(1));
    assert!(p["pub"].get("info").is_none(), "no publisher info: {p}");
    // Without history: no position; with tags and base64 data.
    let r = ok(
        &gw,
        "publish",
        json!({"channel":"news:today","b64data":"eyJuIjoxfQ==","tags":{"k":"v"}}),
    )
    .await;
    assert_eq!(r, json!({}));
    let p = c.push("news:today").await;
    assert_eq!(p["pub"]["data"], json!({"n":1}));
    assert_eq!(p["pub"]["tags"], json!({"k":"v"}));
    // skip_history: delivered, not kept.
    let r = ok(
        &gw,
        "publish",
        json!({"channel":"chat","data":2,"skip_history":true}),
    )
    .await;
    assert_eq!(r, json!({}));
    assert_eq!(c.push("chat").await["pub"]["data"], json!(2));
    let h = ok(&gw, "history", json!({"channel":"chat","limit":10})).await;
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(1), "{h}");
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_published() {
    let gw = TestGateway::with(|c| {
        c.api_key = Some(KEY.into());
        c.api.max_body_bytes = 2048;
    })
    .await;
    let (mut c, _) = Client::connected(gw.addr, &token("u1")).await;
    c.subscribe("chat").await;
    assert_eq!(
        err(&gw, "publish", json!({"channel":"nope:x","data":1})).await["code"],
        json!(102)
    );
    assert_eq!(
        err(&gw, "publish", json!({"data":1})).await["code"],
        json!(107)
    );
    assert_eq!(
        err(&gw, "publish", json!({"channel":"chat"})).await["code"],
        json!(107)
    );
    let long = "x".repeat(300);
    assert_eq!(
        err(&gw, "publish", json!({"channel": long, "data":1})).await["code"],
        json!(107)
    );
    assert_eq!(
        err(&gw, "publish", json!({"channel":"chat","b64data":"%%%"})).await["code"],
        json!(107)
    );
    for bad in ["a{b}", "ctl\u{1}"] {
        assert_eq!(
            err(&gw, "publish", json!({"channel": bad, "data":1})).await["code"],
            json!(107),
            "{bad:?}"
        );
    }
    let (status, _, _) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", KEY)],
        b"{\"channel\":",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", KEY)],
        br#"{"channel":7,"data":1}"#,
    )
    .await;
    assert_eq!(status, 400);
    let big = json!({"channel":"chat","data":"y".repeat(4096)}).to_string();
    let (status, _, _) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", KEY)],
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _, _) = http_post(gw.addr, "/api/nope", &[("X-API-Key", KEY)], b"{}").await;
    assert_eq!(status, 404);
    let (status, _, _) = http_post(gw.addr, "/api/PUBLISH", &[("X-API-Key", KEY)], b"{}").await;
    assert_eq!(status, 404);
    // Transport error mode: the error as an HTTP status.
    let (status, _, text) = http_post(
        gw.addr,
        "/api/publish",
        &[("X-API-Key", KEY), ("X-Centrifugo-Error-Mode", "transport")],
        br#"{"channel":"nope:x","data":1}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["code"],
        json!(102)
    );
    c.silent_for(Duration::from_millis(200)).await;
    let h = ok(&gw, "history", json!({"channel":"chat"})).await;
    assert_eq!(h["offset"], json!(0), "nothing was published: {h}");
}

#[tokio::test]
async fn broadcast_entries_fail_alone() {
    let gw = gateway().await;
    let (mut c, _) = Client::connected(gw.addr, &token("u1")).await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let r = ok(
        &gw,
        "broadcast",
        json!({"channels":["a","nope:x","","b"],"data":{"all":true}}),
    )
    .await;
    let resp = r["responses"].as_array().expect("responses");
    assert_eq!(resp.len(), 4, "{r}");
    assert_eq!(resp[0]["result"]["offset"], json!(1), "{r}");
    assert_eq!(resp[1]["error"]["code"], json!(102), "{r}");
    assert_eq!(resp[2]["error"]["code"], json!(107), "{r}");
    assert_eq!(resp[3]["result"]["offset"], json!(1), "{r}");
    assert_eq!(c.push("a").await["pub"]["data"], json!({"all":true}));
    assert_eq!(c.push("b").await["pub"]["data"], json!({"all":true}));
    assert_eq!(
        err(&gw, "broadcast", json!({"channels":[],"data":1})).await["code"],
        json!(107)
    );
}

#[tokio::test]
async fn presence_history_and_history_remove() {
    let gw = gateway().await;
    let (mut c, r) = Client::connected(gw.addr, &token("u1")).await;
    let client = client_id(&r);
    c.subscribe("chat").await;
    let p = ok(&gw, "presence", json!({"channel":"chat"})).await;
    assert_eq!(p["presence"][&client]["user"], json!("u1"), "{p}");
    let s = ok(&gw, "presence_stats", json!({"channel":"chat"})).await;
    assert_eq!(s, json!({"num_clients":1,"num_users":1}));
    assert_eq!(
        err(&gw, "presence", json!({"channel":"news:x"})).await["code"],
        json!(108)
    );
    for i in 1..=3 {
        ok(&gw, "publish", json!({"channel":"chat","data":i})).await;
    }
    let h = ok(
        &gw,
        "history",
        json!({"channel":"chat","limit":2,"reverse":true}),
    )
    .await;
    let data: Vec<Value> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(3), json!(2)], "{h}");
    let epoch = h["epoch"].clone();
    let since = ok(
        &gw,
        "history",
        json!({"channel":"chat","since":{"offset":1,"epoch":epoch},"limit":-1}),
    )
    .await;
    assert_eq!(
        since["publications"].as_array().map(Vec::len),
        Some(2),
        "{since}"
    );
    assert_eq!(
        err(
            &gw,
            "history",
            json!({"channel":"chat","since":{"offset":1,"epoch":"other"}})
        )
        .await["code"],
        json!(112)
    );
    assert_eq!(
        err(&gw, "history", json!({"channel":"news:x"})).await["code"],
        json!(108)
    );
    assert_eq!(
        ok(&gw, "history_remove", json!({"channel":"chat"})).await,
        json!({})
    );
    let h = ok(&gw, "history", json!({"channel":"chat","limit":10})).await;
    assert_eq!(h["publications"], json!([]));
    assert_eq!((h["offset"].clone(), h["epoch"].clone()), (json!(3), epoch));
}

#[tokio::test]
async fn user_commands_reach_the_users_connections() {
    let gw = gateway().await;
    let (mut a1, r1) = Client::connected(gw.addr, &token("alice")).await;
    let (mut a2, r2) = Client::connected(gw.addr, &token("alice")).await;
    let (mut b, _) = Client::connected(gw.addr, &token("bob")).await;
    let (id1, id2) = (client_id(&r1), client_id(&r2));
    // subscribe: a push, then the channel's publications, on both of alice's.
    ok(
        &gw,
        "subscribe",
        json!({"user":"alice","channel":"room","data":{"hello":1},"info":{"role":"guest"}}),
    )
    .await;
    for c in [&mut a1, &mut a2] {
        let p = c.push("room").await;
        assert_eq!(p["subscribe"]["data"], json!({"hello":1}), "{p}");
    }
    ok(&gw, "publish", json!({"channel":"room","data":"x"})).await;
    assert_eq!(a1.push("room").await["pub"]["data"], json!("x"));
    assert_eq!(a2.push("room").await["pub"]["data"], json!("x"));
    let p = ok(&gw, "presence", json!({"channel":"room"})).await;
    assert_eq!(
        p["presence"][&id1]["chan_info"],
        json!({"role":"guest"}),
        "{p}"
    );
    // unsubscribe one connection only: push 2000.
    ok(
        &gw,
        "unsubscribe",
        json!({"user":"alice","channel":"room","client":id2}),
    )
    .await;
    let p = a2.push("room").await;
    assert_eq!(p["unsubscribe"]["code"], json!(2000), "{p}");
    ok(&gw, "publish", json!({"channel":"room","data":"y"})).await;
    assert_eq!(a1.push("room").await["pub"]["data"], json!("y"));
    // disconnect with a whitelist and a custom code: a1 stays, a2 goes.
    ok(
        &gw,
        "disconnect",
        json!({"user":"alice","whitelist":[id1],"disconnect":{"code":4000,"reason":"moved"}}),
    )
    .await;
    assert_eq!(a2.closed().await, (4000, "moved".to_string()));
    a1.silent_for(Duration::from_millis(200)).await;
    assert_eq!(
        err(
            &gw,
            "disconnect",
            json!({"user":"alice","disconnect":{"code":1000}})
        )
        .await["code"],
        json!(107)
    );
    assert_eq!(err(&gw, "disconnect", json!({})).await["code"], json!(107));
    // refresh: expired closes with 3005; bob is untouched.
    ok(&gw, "refresh", json!({"user":"alice","expired":true})).await;
    assert_eq!(a1.closed().await.0, 3005);
    ok(&gw, "disconnect", json!({"user":"carol"})).await;
    b.subscribe("room").await;
    let r = b.publish("room", json!("still here")).await;
    assert_eq!(r["publish"], json!({}), "{r}");
}

#[tokio::test]
async fn batch_runs_in_order_or_in_parallel_and_the_legacy_route_works() {
    let gw = gateway().await;
    for parallel in [false, true] {
        let (status, v) = api(
            &gw,
            "batch",
            json!({"parallel": parallel, "commands":[
                {"publish":{"channel":"b","data":1}},
                {"presence_stats":{"channel":"b"}},
                {"publish":{"channel":"nope:x","data":1}},
                {"nope":{}},
                {"batch":{"commands":[]}},
                {"publish":{"channel":"b","data":2},"info":{}}
            ]}),
        )
        .await;
        assert_eq!(status, 200);
        let r = v["replies"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(r.len(), 6, "{v}");
        assert!(r[0]["publish"]["offset"].as_u64().is_some(), "{v}");
        assert_eq!(
            r[1]["presence_stats"],
            json!({"num_clients":0,"num_users":0})
        );
        assert_eq!(r[2]["error"]["code"], json!(102));
        assert_eq!(r[3]["error"]["code"], json!(104));
        assert_eq!(r[4]["error"]["code"], json!(107));
        assert_eq!(r[5]["error"]["code"], json!(107));
    }
    let body = b"{\"id\":1,\"method\":\"publish\",\"params\":{\"channel\":\"a\",\"data\":{\"x\":1}}}\n{\"method\":\"presence_stats\",\"params\":{\"channel\":\"a\"}}\n{\"id\":3,\"method\":\"nope\"}";
    let (status, _, text) = http_post(gw.addr, "/api", &[("X-API-Key", KEY)], body).await;
    assert_eq!(status, 200, "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["id"], json!(1));
    assert_eq!(lines[0]["result"]["offset"], json!(1));
    assert_eq!(lines[1]["result"], json!({"num_clients":0,"num_users":0}));
    assert_eq!(lines[2]["error"]["code"], json!(104));
}

#[tokio::test]
async fn the_api_can_have_its_own_listener() {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let gw = TestGateway::with_api_listener(api, |c| c.api_key = Some(KEY.into())).await;
    let (status, _, _) = http_post(gw.addr, "/api/info", &[("X-API-Key", KEY)], b"{}").await;
    assert_eq!(status, 404, "not on the client port");
    let (status, v) = api_at(api_addr, "info", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = crate::support::http_get(api_addr, "/connection/websocket").await;
    assert_eq!(status, 404, "no WebSockets on the API port");
    let (status, _) = crate::support::http_get(api_addr, "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn any_node_answers_for_the_cluster() {
    let redis = fanout::testing::RedisServer::start();
    let quick = |c: &mut gateway::Config| {
        c.api_key = Some(KEY.into());
        c.heartbeat_interval = Duration::from_millis(200);
    };
    let a = TestGateway::on_redis(&redis.url(), quick).await;
    let b = TestGateway::on_redis(&redis.url(), quick).await;
    let (mut on_b, _) = Client::connected(b.addr, &token("u1")).await;
    on_b.subscribe("room").await;
    let (mut on_a, _) = Client::connected(a.addr, &token("u2")).await;
    on_a.subscribe("room").await;
    let r = ok(
        &a,
        "publish",
        json!({"channel":"room","data":"from the API on A"}),
    )
    .await;
    assert_eq!(r["offset"], json!(1));
    assert_eq!(
        on_b.push("room").await["pub"]["data"],
        json!("from the API on A")
    );
    assert_eq!(
        on_a.push("room").await["pub"]["data"],
        json!("from the API on A")
    );
    // Presence and history agree on both nodes.
    for gw in [&a, &b] {
        let s = ok(gw, "presence_stats", json!({"channel":"room"})).await;
        assert_eq!(s, json!({"num_clients":2,"num_users":2}));
        let h = ok(gw, "history", json!({"channel":"room","limit":5})).await;
        assert_eq!(h["offset"], json!(1), "{h}");
    }
    // `channels` counts the room's subscribers on both nodes; `info` lists both.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = ok(&a, "info", json!({})).await;
        if info["nodes"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ch = ok(&a, "channels", json!({"pattern":"ro*"})).await;
    assert_eq!(ch["channels"], json!({"room":{"num_clients":2}}), "{ch}");
    let ch = ok(&b, "channels", json!({"pattern":"x*"})).await;
    assert_eq!(ch["channels"], json!({}), "{ch}");
    // A user command on A reaches the connection on B.
    ok(&a, "disconnect", json!({"user":"u1"})).await;
    assert_eq!(on_b.closed().await, (3503, "force disconnect".to_string()));
    let r = on_a.publish("room", json!("u2 stays")).await;
    assert_eq!(r["publish"], json!({}), "{r}");
}
