//! Proxies to the application backend, against a real HTTP backend
//! (`backend.rs`): connect by cookie without a JWT, subscribe and publish decided
//! (and rewritten) by the backend, RPC, server-side refresh, and a backend that is
//! down, slow or saturated.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::{unix_now, Backend, Mode};
use crate::support::{client_id, token, ws_connect, Client, Msg, TestGateway};

/// A gateway whose proxies all point at `backend`, with namespaces `room`
/// (subscribe proxy, sub_refresh proxy), `vip` (subscribe proxy) and `mod`
/// (publish proxy).
async fn gateway(backend: &Backend, f: impl FnOnce(&mut gateway::Config)) -> TestGateway {
    TestGateway::with(|c| {
        c.proxy.connect_url = Some(backend.url("connect"));
        c.proxy.refresh_url = Some(backend.url("refresh"));
        c.proxy.subscribe_url = Some(backend.url("subscribe"));
        c.proxy.publish_url = Some(backend.url("publish"));
        c.proxy.sub_refresh_url = Some(backend.url("sub_refresh"));
        c.proxy.rpc_url = Some(backend.url("rpc"));
        let proxied = |subscribe: bool, publish: bool| gateway::config::ChannelOptions {
            proxy_subscribe: subscribe,
            proxy_sub_refresh: subscribe,
            proxy_publish: publish,
            allow_subscribe: false,
            allow_publish: false,
            ..Default::default()
        };
        c.namespaces.insert("room".into(), proxied(true, false));
        c.namespaces.insert("vip".into(), proxied(true, false));
        let mut moderated = proxied(false, true);
        moderated.allow_subscribe = true;
        c.namespaces.insert("mod".into(), moderated);
        f(c);
    })
    .await
}

/// A socket opened with `headers` on its upgrade request.
async fn open_with(gw: &TestGateway, headers: &[(&str, &str)]) -> Client {
    Client::from_ws(ws_connect(gw.addr, headers).await.expect("upgrade"))
}

/// Connect with no token (the connect proxy decides) and `data`.
async fn connect_by_cookie(gw: &TestGateway, cookie: &str, data: Value) -> (Client, Value) {
    let mut c = open_with(gw, &[("Cookie", cookie), ("X-Secret", "not forwarded")]).await;
    let r = c.call("connect", json!({"data": data})).await;
    (c, r)
}

#[tokio::test]
async fn connect_proxy_admits_a_cookie_session_without_a_jwt() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    let (mut c, r) = connect_by_cookie(&gw, "session=alice", json!({"app":"web"})).await;
    let connect = &r["connect"];
    assert_eq!(connect["data"], json!({"welcome":"alice"}), "{r}");
    assert!(connect.get("expires").is_none(), "{r}");
    c.subscribe("mod:lobby").await;
    let p = c.call("presence", json!({"channel":"mod:lobby"})).await;
    let me = &p["presence"]["presence"][client_id(connect)];
    assert_eq!(me["user"], json!("alice"), "{p}");
    assert_eq!(me["conn_info"], json!({"name":"ALICE"}), "{p}");
    let calls = backend.calls("connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.body["client"], connect["client"]);
    assert_eq!(call.body["transport"], json!("websocket"));
    assert_eq!(call.body["data"], json!({"app":"web"}));
    assert_eq!(call.header("cookie"), Some("session=alice"));
    assert_eq!(
        call.header("x-secret"),
        None,
        "only allow-listed headers go"
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    // Server-side channels from the backend.
    let (_, r) = connect_by_cookie(&gw, "session=staff", json!({})).await;
    assert!(r["connect"]["subs"].get("#staff").is_some(), "{r}");
    // A token still works, without asking the backend.
    let (_, _) = Client::connected(gw.addr, &token("bob")).await;
    assert_eq!(backend.calls("connect").len(), 2);
    // No session: the backend's close code.
    let (mut c, _) = {
        let mut c = open_with(&gw, &[]).await;
        c.send("connect", json!({})).await;
        (c, ())
    };
    assert_eq!(c.closed().await, (4401, "no session".to_string()));
}

#[tokio::test]
async fn subscribe_proxy_decides_and_attaches_data() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    let (mut c, r) = Client::connected(gw.addr, &token("u1")).await;
    let s = c.call("subscribe", json!({"channel":"room:a"})).await;
    assert_eq!(
        s["subscribe"]["data"],
        json!({"topic":"welcome to room:a"}),
        "{s}"
    );
    let p = c.call("presence", json!({"channel":"room:a"})).await;
    assert_eq!(
        p["presence"]["presence"][client_id(&r)]["chan_info"],
        json!({"seat":6}),
        "{p}"
    );
    let e = c
        .call_err("subscribe", json!({"channel":"vip:lounge"}))
        .await;
    assert_eq!(e, json!({"code":4403,"message":"members only"}));
    let call = &backend.calls("subscribe")[1];
    assert_eq!(call.body["user"], json!("u1"));
    assert_eq!(call.body["channel"], json!("vip:lounge"));
    // allow_subscribe is off there: without the proxy the answer would be 103.
    assert_eq!(backend.calls("subscribe").len(), 2);
}

#[tokio::test]
async fn publish_proxy_rewrites_what_every_subscriber_receives() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    let (mut a, _) = Client::connected(gw.addr, &token("ann")).await;
    let (mut b, _) = Client::connected(gw.addr, &token("ben")).await;
    a.subscribe("mod:chat").await;
    b.subscribe("mod:chat").await;
    let r = a.publish("mod:chat", json!({"text":"hello"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    for c in [&mut a, &mut b] {
        let p = c.push("mod:chat").await;
        assert_eq!(p["pub"]["data"], json!({"text":"HELLO","by":"ann"}), "{p}");
        assert_eq!(p["pub"]["info"]["user"], json!("ann"), "{p}");
    }
    let e = a
        .call_err(
            "publish",
            json!({"channel":"mod:chat","data":{"text":"spam!"}}),
        )
        .await;
    assert_eq!(e, json!({"code":4000,"message":"no spam"}));
    b.silent_for(Duration::from_millis(200)).await;
    let h = a
        .call("history", json!({"channel":"mod:chat","limit":10}))
        .await;
    let pubs = h["history"]["publications"].as_array().expect("history");
    assert_eq!(pubs.len(), 1, "only the accepted one: {h}");
    assert_eq!(pubs[0]["data"], json!({"text":"HELLO","by":"ann"}));
}

#[tokio::test]
async fn rpc_goes_to_the_backend() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    let (mut c, _) = Client::connected(gw.addr, &token("u1")).await;
    let r = c.call("rpc", json!({"method":"sum","data":{"a":1}})).await;
    assert_eq!(
        r["rpc"]["data"],
        json!({"method":"sum","echo":{"a":1}}),
        "{r}"
    );
}

#[tokio::test]
async fn a_failing_slow_or_unreachable_backend_gives_the_temporary_error() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |c| c.proxy.timeout = Duration::from_millis(300)).await;
    let temporary = json!({"code":100,"message":"internal server error","temporary":true});
    backend.set_mode(Mode::Failing);
    let (_, r) = connect_by_cookie(&gw, "session=alice", json!({})).await;
    assert_eq!(r["error"], temporary, "{r}");
    // Slow: the client gets the error at the timeout, and a client that needs no
    // backend is served meanwhile.
    backend.set_mode(Mode::Slow(Duration::from_secs(2)));
    let (mut other, _) = Client::connected(gw.addr, &token("bob")).await;
    other.subscribe("chat").await;
    let started = Instant::now();
    let slow = tokio::spawn({
        let addr = gw.addr;
        async move {
            let mut c =
                Client::from_ws(ws_connect(addr, &[("Cookie", "session=x")]).await.unwrap());
            c.call("connect", json!({})).await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let r = other.publish("chat", json!("quick")).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let r = slow.await.unwrap();
    assert_eq!(r["error"], temporary, "{r}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Recovered: the same request succeeds.
    backend.set_mode(Mode::Normal);
    let (_, r) = connect_by_cookie(&gw, "session=alice", json!({})).await;
    assert_eq!(r["connect"]["data"], json!({"welcome":"alice"}), "{r}");
    // Unreachable: nothing listens on the port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw2 = TestGateway::with(|c| {
        c.proxy.connect_url = Some(format!("http://{closed}/connect"));
        c.proxy.timeout = Duration::from_millis(300);
    })
    .await;
    let (_, r) = connect_by_cookie(&gw2, "session=alice", json!({})).await;
    assert_eq!(r["error"], temporary, "{r}");
}

#[tokio::test]
async fn calls_beyond_the_in_flight_cap_wait_within_the_timeout() {
    let backend = Backend::start().await;
    backend.set_mode(Mode::Slow(Duration::from_millis(600)));
    let gw = gateway(&backend, |c| {
        c.proxy.timeout = Duration::from_millis(1000);
        c.proxy.max_in_flight = 1;
    })
    .await;
    let mut tasks = Vec::new();
    for user in ["a", "b"] {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let cookie = format!("session={user}");
            let mut c = Client::from_ws(ws_connect(addr, &[("Cookie", &cookie)]).await.unwrap());
            c.call("connect", json!({})).await
        }));
    }
    let mut ok = 0;
    let mut temporary = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.get("connect").is_some() {
            ok += 1;
        } else if r["error"]["code"] == json!(100) {
            temporary += 1;
        } else {
            panic!("{r}");
        }
    }
    // One call at a time: the second waits 600 ms for the slot, then its own
    // 600 ms call passes the 1 s deadline (without the cap both would succeed).
    assert_eq!((ok, temporary), (1, 1));
}

#[tokio::test]
async fn the_refresh_proxy_extends_or_ends_a_connection() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    backend.set_refresh_result(json!({"expire_at": unix_now() + 3600}));
    let (mut kept, r) = connect_by_cookie(&gw, "session=kept", json!({"expire_in": 1})).await;
    // The node refreshes, not the client.
    assert!(r["connect"].get("expires").is_none(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.calls("refresh").is_empty() {
        assert!(Instant::now() < deadline, "no refresh call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = &backend.calls("refresh")[0];
    assert_eq!(call.body["user"], json!("kept"));
    assert_eq!(call.header("cookie"), Some("session=kept"));
    kept.subscribe("mod:x").await;
    let r = kept.publish("mod:x", json!({"text":"still"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    backend.set_refresh_result(json!({"expired": true}));
    let (mut gone, _) = connect_by_cookie(&gw, "session=gone", json!({"expire_in": 1})).await;
    let t = Instant::now();
    assert_eq!(gone.closed().await.0, 3005);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test]
async fn the_sub_refresh_proxy_ends_an_expired_subscription() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |_| {}).await;
    backend.set_refresh_result(json!({"expired": true}));
    let (mut c, _) = Client::connected(gw.addr, &token("u1")).await;
    let s = c
        .call(
            "subscribe",
            json!({"channel":"room:b","data":{"expire_in":1}}),
        )
        .await;
    assert!(
        s["subscribe"].get("expires").is_none(),
        "the node refreshes: {s}"
    );
    let p = c.push("room:b").await;
    assert_eq!(p["unsubscribe"]["code"], json!(2501), "{p}");
    let call = &backend.calls("sub_refresh")[0];
    assert_eq!(call.body["channel"], json!("room:b"));
    assert_eq!(call.body["user"], json!("u1"));
}

#[tokio::test]
async fn proxy_settings_are_checked_at_start() {
    let mut c = gateway::Config::default();
    c.namespaces.insert(
        "x".into(),
        gateway::config::ChannelOptions {
            proxy_publish: true,
            ..Default::default()
        },
    );
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("namespaces.x.proxy_publish") && e.contains("proxy.publish_url"),
        "{e}"
    );
    let mut c = gateway::Config::default();
    c.proxy.connect_url = Some("https://backend/connect".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("proxy.connect_url"), "{e}");
}

/// A client whose pong arrived while the node was busy with its earlier command (a
/// slow publish proxy) answered in time: it is not closed with 3012.
#[tokio::test]
async fn a_pong_behind_a_slow_command_counts() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, |c| {
        c.client.ping_interval = Duration::from_millis(400);
        c.client.pong_timeout = Duration::from_millis(300);
        c.proxy.timeout = Duration::from_secs(5);
    })
    .await;
    let mut c = gw.client("alice").await;
    c.subscribe("mod:lobby").await;
    match c.next().await {
        Msg::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
        Msg::Close(code, reason) => panic!("closed {code} {reason} before a ping"),
    }
    // The publish reaches the node before the pong, which waits in the socket
    // while the backend takes a second and a half.
    backend.set_mode(Mode::Slow(Duration::from_millis(1500)));
    let publish = json!({"id": 77, "publish": {"channel": "mod:lobby", "data": {"text": "hi"}}});
    c.send_text(&publish.to_string()).await;
    c.send_text("{}").await;
    let r = c.reply(77).await;
    assert!(r.get("error").is_none(), "{r}");
    backend.set_mode(Mode::Normal);
    // Still open: the next message is a ping (or the publication), not 3012.
    for _ in 0..3 {
        match c.next().await {
            Msg::Json(v) if v == json!({}) => return,
            Msg::Json(_) => {}
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }
    panic!("no ping after the slow publish");
}
