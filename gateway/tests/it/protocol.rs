//! Connect, subscribe, publish and the shapes of replies and pushes.

use std::time::Duration;

use fastwebsockets::{Frame, Payload};
use gateway::config::ChannelOptions;
use serde_json::{json, Value};
use shared::auth::{unix_now, MintClaims};

use crate::support::*;

#[tokio::test]
async fn connect_subscribe_publish_receive() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    let mut b = gw.client("2").await;
    let sa = a.subscribe("chat").await;
    assert_eq!(sa, json!({}), "not positioned unless asked: {sa}");
    b.subscribe("chat").await;
    let r = a.publish("chat", json!({"text": "hi"})).await;
    assert_eq!(r["publish"], json!({}));
    for c in [&mut a, &mut b] {
        let p = c.push("chat").await;
        assert_eq!(p["pub"]["data"], json!({"text": "hi"}));
        assert_eq!(p["pub"]["offset"], json!(1));
        assert_eq!(p["pub"]["info"]["user"], json!("1"));
    }
}

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn offsets(history: &Value) -> Vec<u64> {
    history["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications array: {history}"))
        .iter()
        .map(|p| p["offset"].as_u64().expect("publication offset"))
        .collect()
}

fn error(code: u32, message: &str) -> Value {
    json!({"code": code, "message": message})
}

fn bad_request() -> (u16, String) {
    (3501, "bad request".to_string())
}

fn ns(f: impl FnOnce(&mut ChannelOptions)) -> ChannelOptions {
    let mut o = ChannelOptions::default();
    f(&mut o);
    o
}

/// A connected client that is subscribed to `channel`, with its client id.
async fn member(gw: &TestGateway, user: &str, channel: &str) -> (Client, String) {
    let (mut c, r) = Client::connected(gw.addr, &token(user)).await;
    c.subscribe(channel).await;
    (c, client_id(&r))
}

// ---------------------------------------------------------------------------------
// reply shapes
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn connect_result_has_uuid_version_ping_seconds_and_pong() {
    let gw = TestGateway::with(|c| {
        c.client.ping_interval = Duration::from_secs(25);
        c.client.pong_timeout = Duration::from_secs(8);
    })
    .await;
    let no_exp = mint(MintClaims {
        sub: "1".into(),
        ..Default::default()
    });
    let (_c, r) = Client::connected(gw.addr, &no_exp).await;
    assert_eq!(keys(&r), ["client", "ping", "pong", "version"], "{r}");
    assert!(is_uuid(r["client"].as_str().unwrap()), "{r}");
    assert_eq!(r["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(r["ping"], json!(25));
    assert_eq!(r["pong"], json!(true));
    let (_d, r2) = Client::connected(gw.addr, &no_exp).await;
    assert_ne!(r["client"], r2["client"], "every connection has its own id");
}

#[tokio::test]
async fn connect_result_with_exp_has_expires_and_ttl() {
    let gw = TestGateway::start().await;
    let (_c, r) = Client::connected(gw.addr, &token("1")).await;
    assert_eq!(r["expires"], json!(true), "{r}");
    let ttl = r["ttl"].as_u64().expect("ttl");
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn subscribe_result_positioned_and_recoverable_carry_stream_position() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("1").await;
    a.subscribe("room").await;
    for n in 0..2 {
        a.publish("room", json!({ "n": n })).await;
    }
    let mut b = gw.client("2").await;
    let r = b
        .call("subscribe", json!({"channel": "room", "positioned": true}))
        .await;
    let s = &r["subscribe"];
    assert_eq!(keys(s), ["epoch", "offset", "positioned"], "{r}");
    assert_eq!(s["offset"], json!(2));
    let epoch = s["epoch"].as_str().expect("epoch");
    assert!(!epoch.is_empty());
    let r = b
        .call(
            "subscribe",
            json!({"channel": "room2", "recoverable": true}),
        )
        .await;
    let s = &r["subscribe"];
    assert_eq!(s["recoverable"], json!(true), "{r}");
    assert_eq!(s["positioned"], json!(true), "{r}");
    assert!(s["epoch"].is_string(), "{r}");
}

#[tokio::test]
async fn unsubscribe_and_publish_reply_empty_objects() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.subscribe("chat").await;
    let id = c
        .send("publish", json!({"channel": "chat", "data": {"a": 1}}))
        .await;
    assert_eq!(c.reply(id).await, json!({"id": id, "publish": {}}));
    let id = c.send("unsubscribe", json!({"channel": "chat"})).await;
    assert_eq!(c.reply(id).await, json!({"id": id, "unsubscribe": {}}));
    let e = c
        .call_err("publish", json!({"channel": "chat", "data": {}}))
        .await;
    assert_eq!(e, error(103, "permission denied"), "no longer subscribed");
}

#[tokio::test]
async fn unsubscribe_of_channel_not_subscribed_replies_empty() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let r = c.call("unsubscribe", json!({"channel": "never"})).await;
    assert_eq!(r["unsubscribe"], json!({}), "{r}");
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn presence_is_keyed_by_client_id_with_user_client_conn_info() {
    let gw = TestGateway::start().await;
    let with_info = mint(MintClaims {
        sub: "1".into(),
        info: Some(raw(r#"{"name":"Ann"}"#)),
        ..Default::default()
    });
    let (mut a, ra) = Client::connected(gw.addr, &with_info).await;
    a.subscribe("chat").await;
    let (_b, idb) = member(&gw, "2", "chat").await;
    let ida = client_id(&ra);
    let r = a.call("presence", json!({"channel": "chat"})).await;
    assert_eq!(
        r["presence"],
        json!({"presence": {
            ida.clone(): {"user": "1", "client": ida, "conn_info": {"name": "Ann"}},
            idb.clone(): {"user": "2", "client": idb},
        }}),
        "{r}"
    );
}

#[tokio::test]
async fn presence_stats_counts_clients_and_users_separately() {
    let gw = TestGateway::start().await;
    let (mut a1, _) = member(&gw, "1", "chat").await;
    let (mut a2, _) = member(&gw, "1", "chat").await;
    let (_b, _) = member(&gw, "2", "chat").await;
    let r = a1.call("presence_stats", json!({"channel": "chat"})).await;
    assert_eq!(
        r["presence_stats"],
        json!({"num_clients": 3, "num_users": 2}),
        "{r}"
    );
    a2.call("unsubscribe", json!({"channel": "chat"})).await;
    let r = a1.call("presence_stats", json!({"channel": "chat"})).await;
    assert_eq!(
        r["presence_stats"],
        json!({"num_clients": 2, "num_users": 2}),
        "{r}"
    );
}

#[tokio::test]
async fn history_of_empty_stream_still_has_publications_epoch_offset() {
    let gw = TestGateway::start().await;
    let (mut c, _) = member(&gw, "1", "fresh").await;
    let r = c
        .call("history", json!({"channel": "fresh", "limit": 10}))
        .await;
    let h = &r["history"];
    assert_eq!(keys(h), ["epoch", "offset", "publications"], "{r}");
    assert_eq!(h["publications"], json!([]));
    assert_eq!(h["offset"], json!(0));
    assert!(h["epoch"].is_string(), "{r}");
}

/// A client in `room` after five publications `{"n":1}`..`{"n":5}`; returns the epoch.
async fn five_publications(gw: &TestGateway) -> (Client, String) {
    let (mut c, _) = member(gw, "1", "room").await;
    for n in 1..=5 {
        let r = c.publish("room", json!({ "n": n })).await;
        assert_eq!(r["publish"], json!({}), "{r}");
    }
    let r = c.call("history", json!({"channel": "room"})).await;
    let epoch = r["history"]["epoch"].as_str().expect("epoch").to_owned();
    (c, epoch)
}

#[tokio::test]
async fn history_limit_zero_returns_only_the_position() {
    let gw = TestGateway::start().await;
    let (mut c, epoch) = five_publications(&gw).await;
    for body in [
        json!({"channel": "room"}),
        json!({"channel": "room", "limit": 0}),
    ] {
        let r = c.call("history", body).await;
        assert_eq!(
            r["history"],
            json!({"publications": [], "epoch": epoch, "offset": 5}),
            "{r}"
        );
    }
}

#[tokio::test]
async fn history_limit_since_and_reverse() {
    let gw = TestGateway::start().await;
    let (mut c, epoch) = five_publications(&gw).await;
    let r = c
        .call("history", json!({"channel": "room", "limit": 2}))
        .await;
    assert_eq!(offsets(&r["history"]), [1, 2], "oldest first: {r}");
    assert_eq!(r["history"]["offset"], json!(5), "top of the stream: {r}");
    let first = &r["history"]["publications"][0];
    assert_eq!(first["data"], json!({"n": 1}));
    assert_eq!(first["info"]["user"], json!("1"));

    let since = json!({"offset": 2, "epoch": epoch});
    let r = c
        .call(
            "history",
            json!({"channel": "room", "limit": 10, "since": since}),
        )
        .await;
    assert_eq!(offsets(&r["history"]), [3, 4, 5], "{r}");

    let r = c
        .call(
            "history",
            json!({"channel": "room", "limit": 2, "reverse": true}),
        )
        .await;
    assert_eq!(offsets(&r["history"]), [5, 4], "newest first: {r}");

    let since = json!({"offset": 4, "epoch": epoch});
    let r = c
        .call(
            "history",
            json!({"channel": "room", "limit": 10, "since": since, "reverse": true}),
        )
        .await;
    assert_eq!(offsets(&r["history"]), [3, 2, 1], "before offset 4: {r}");
}

#[tokio::test]
async fn history_unlimited_is_capped_by_history_max_publication_limit() {
    let gw = TestGateway::with(|c| c.client.history_max_publication_limit = 3).await;
    let (mut c, _) = five_publications(&gw).await;
    let r = c
        .call("history", json!({"channel": "room", "limit": -1}))
        .await;
    assert_eq!(offsets(&r["history"]), [1, 2, 3], "{r}");
    let r = c
        .call("history", json!({"channel": "room", "limit": 100}))
        .await;
    assert_eq!(offsets(&r["history"]), [1, 2, 3], "{r}");
    let r = c
        .call(
            "history",
            json!({"channel": "room", "limit": -1, "reverse": true}),
        )
        .await;
    assert_eq!(offsets(&r["history"]), [5, 4, 3], "{r}");
}

#[tokio::test]
async fn refresh_result_has_client_expires_ttl() {
    let gw = TestGateway::start().await;
    let (mut c, r) = Client::connected(gw.addr, &token("1")).await;
    let r2 = c.call("refresh", json!({"token": token("1")})).await;
    let res = &r2["refresh"];
    assert_eq!(keys(res), ["client", "expires", "ttl", "version"], "{r2}");
    assert_eq!(res["client"], r["client"]);
    assert_eq!(res["expires"], json!(true));
    let ttl = res["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn sub_refresh_result_has_expires_ttl() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let sub_token = |secs: u64| {
        mint(MintClaims {
            sub: "1".into(),
            channel: Some("$p".into()),
            exp: Some(unix_now() + secs),
            ..Default::default()
        })
    };
    let r = c
        .call(
            "subscribe",
            json!({"channel": "$p", "token": sub_token(3600)}),
        )
        .await;
    assert_eq!(r["subscribe"]["expires"], json!(true), "{r}");
    let r = c
        .call(
            "sub_refresh",
            json!({"channel": "$p", "token": sub_token(1800)}),
        )
        .await;
    let res = &r["sub_refresh"];
    assert_eq!(keys(res), ["expires", "ttl"], "{r}");
    assert_eq!(res["expires"], json!(true));
    let ttl = res["ttl"].as_u64().unwrap();
    assert!((1790..=1800).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn rpc_without_handler_is_108() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("rpc", json!({"method": "echo", "data": {"x": 1}}))
        .await;
    assert_eq!(e, error(108, "not available"));
}

#[tokio::test]
async fn send_without_handler_closes_3508() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text(r#"{"send":{"data":{"fire":"and forget"}}}"#)
        .await;
    assert_eq!(c.closed().await, (3508, "not available".to_string()));
}

#[tokio::test]
async fn several_commands_in_one_frame_are_answered_in_order() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let frame = [
        json!({"connect": {"token": token("1"), "name": "js"}, "id": 11}),
        json!({"subscribe": {"channel": "chat"}, "id": 12}),
        json!({"presence_stats": {"channel": "chat"}, "id": 13}),
        json!({"publish": {"channel": "chat", "data": {"k": 1}}, "id": 14}),
        json!({"unsubscribe": {"channel": "chat"}, "id": 15}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    c.send_text(&frame).await;
    let mut replies = Vec::new();
    while replies.len() < 5 {
        if let Msg::Json(v) = c.next().await {
            if v.get("id").is_some() {
                replies.push(v);
            }
        } else {
            panic!("closed after {replies:?}");
        }
    }
    let ids: Vec<&Value> = replies.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [&json!(11), &json!(12), &json!(13), &json!(14), &json!(15)]
    );
    for (r, key) in replies.iter().zip([
        "connect",
        "subscribe",
        "presence_stats",
        "publish",
        "unsubscribe",
    ]) {
        assert!(r.get(key).is_some(), "expected {key}: {r}");
    }
    assert_eq!(
        replies[2]["presence_stats"],
        json!({"num_clients": 1, "num_users": 1})
    );
}

#[tokio::test]
async fn frame_with_one_trailing_newline_is_accepted() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text("{\"subscribe\":{\"channel\":\"chat\"},\"id\":50}\n")
        .await;
    let r = c.reply(50).await;
    assert_eq!(r, json!({"id": 50, "subscribe": {}}));
}

// ---------------------------------------------------------------------------------
// protocol violations: close 3501
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn command_before_connect_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let closed = c
        .send_and_close("subscribe", json!({"channel": "chat"}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn second_connect_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close("connect", json!({"token": token("1")}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn empty_frame_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text("").await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn empty_line_between_commands_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text("{\"presence_stats\":{\"channel\":\"a\"},\"id\":50}\n\n{\"presence_stats\":{\"channel\":\"a\"},\"id\":51}")
        .await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn malformed_json_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text(r#"{"subscribe":{"channel":"chat"},"id":5"#)
        .await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn text_frame_that_is_not_utf8_closes_1007() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_frame(Frame::text(Payload::Owned(vec![b'{', 0xff, 0xfe, b'}'])))
        .await;
    assert_eq!(c.closed().await, (1007, "invalid payload data".to_string()));
}

#[tokio::test]
async fn binary_frame_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let cmd = br#"{"subscribe":{"channel":"chat"},"id":5}"#.to_vec();
    c.send_frame(Frame::binary(Payload::Owned(cmd))).await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn command_with_id_and_no_known_request_closes_3501() {
    let gw = TestGateway::start().await;
    for text in [r#"{"id":3,"frobnicate":{}}"#, r#"{"id":3}"#] {
        let mut c = gw.client("1").await;
        c.send_text(text).await;
        assert_eq!(c.closed().await, bad_request(), "{text}");
    }
}

#[tokio::test]
async fn ping_command_with_id_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text(r#"{"id":5,"ping":{}}"#).await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn pong_without_outstanding_ping_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.send_text("{}").await;
    assert_eq!(c.closed().await, bad_request());
}

#[tokio::test]
async fn non_send_command_with_id_zero_closes_3501() {
    let gw = TestGateway::start().await;
    for text in [
        r#"{"subscribe":{"channel":"chat"}}"#,
        r#"{"id":0,"presence_stats":{"channel":"chat"}}"#,
    ] {
        let mut c = gw.client("1").await;
        c.send_text(text).await;
        assert_eq!(c.closed().await, bad_request(), "{text}");
    }
}

#[tokio::test]
async fn command_after_failed_connect_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let past_expire_at = mint(MintClaims {
        sub: "1".into(),
        exp: Some(unix_now() + 3600),
        expire_at: Some(unix_now() - 10),
        ..Default::default()
    });
    let r = c.connect(&past_expire_at).await;
    assert_eq!(r["error"], error(110, "expired"), "{r}");
    let closed = c
        .send_and_close("connect", json!({"token": token("1")}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn unknown_delta_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close("subscribe", json!({"channel": "chat", "delta": "zstd"}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn subscribe_with_empty_channel_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c.send_and_close("subscribe", json!({"channel": ""})).await;
    assert_eq!(closed, bad_request());
}

// ---------------------------------------------------------------------------------
// error replies
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_namespace_is_102() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("subscribe", json!({"channel": "nope:room"}))
        .await;
    assert_eq!(e, error(102, "unknown channel"));
}

#[tokio::test]
async fn channel_longer_than_max_channel_length_is_107() {
    let gw = TestGateway::with(|c| c.client.max_channel_length = 10).await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("subscribe", json!({"channel": "a".repeat(11)}))
        .await;
    assert_eq!(e, error(107, "bad request"));
    c.subscribe(&"a".repeat(10)).await;
}

#[tokio::test]
async fn duplicate_subscribe_is_105() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.subscribe("chat").await;
    let e = c.call_err("subscribe", json!({"channel": "chat"})).await;
    assert_eq!(e, error(105, "already subscribed"));
}

#[tokio::test]
async fn publish_while_not_subscribed_is_103() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("publish", json!({"channel": "chat", "data": {"a": 1}}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn publish_in_namespace_without_allow_publish_is_103() {
    let gw = TestGateway::with(|c| {
        c.namespaces
            .insert("ro".into(), ns(|o| o.allow_publish = false));
    })
    .await;
    let mut c = gw.client("1").await;
    c.subscribe("ro:news").await;
    let e = c
        .call_err("publish", json!({"channel": "ro:news", "data": {"a": 1}}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn presence_in_namespace_without_presence_is_108() {
    let gw = TestGateway::with(|c| {
        c.namespaces.insert("np".into(), ns(|o| o.presence = false));
    })
    .await;
    let mut c = gw.client("1").await;
    c.subscribe("np:room").await;
    for method in ["presence", "presence_stats"] {
        let e = c.call_err(method, json!({"channel": "np:room"})).await;
        assert_eq!(e, error(108, "not available"), "{method}");
    }
}

#[tokio::test]
async fn history_in_namespace_without_history_is_108() {
    let gw = TestGateway::with(|c| {
        c.namespaces.insert("nh".into(), ns(|o| o.history_size = 0));
    })
    .await;
    let mut c = gw.client("1").await;
    c.subscribe("nh:room").await;
    let e = c
        .call_err("history", json!({"channel": "nh:room", "limit": 10}))
        .await;
    assert_eq!(e, error(108, "not available"));
}

#[tokio::test]
async fn history_since_other_epoch_is_112() {
    let gw = TestGateway::start().await;
    let (mut c, epoch) = five_publications(&gw).await;
    let other = format!("{epoch}x");
    let e = c
        .call_err(
            "history",
            json!({"channel": "room", "limit": 10, "since": {"offset": 2, "epoch": other}}),
        )
        .await;
    assert_eq!(e, error(112, "unrecoverable position"));
}

#[tokio::test]
async fn history_reverse_since_offset_zero_is_107() {
    let gw = TestGateway::start().await;
    let (mut c, epoch) = five_publications(&gw).await;
    let e = c
        .call_err(
            "history",
            json!({"channel": "room", "limit": 10, "reverse": true,
                   "since": {"offset": 0, "epoch": epoch}}),
        )
        .await;
    assert_eq!(e, error(107, "bad request"));
}

// ---------------------------------------------------------------------------------
// join and leave
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn join_leave_pushes_go_only_to_subscribers_that_asked() {
    let gw = TestGateway::with(|c| {
        c.namespaces
            .insert("jl".into(), ns(|o| o.join_leave = true));
    })
    .await;
    let ch = "jl:room";
    let mut asked = gw.client("1").await;
    let r = asked
        .call("subscribe", json!({"channel": ch, "join_leave": true}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut quiet = gw.client("2").await;
    quiet.subscribe(ch).await;

    let with_info = mint(MintClaims {
        sub: "3".into(),
        info: Some(raw(r#"{"name":"Cy"}"#)),
        ..Default::default()
    });
    let (mut other, ro) = Client::connected(gw.addr, &with_info).await;
    let idc = client_id(&ro);
    other.subscribe(ch).await;
    let info = json!({"user": "3", "client": idc, "conn_info": {"name": "Cy"}});
    let join = asked
        .find(
            "join of user 3",
            |m| matches!(m, Msg::Json(v) if v["push"]["join"]["info"]["user"] == json!("3")),
        )
        .await;
    let Msg::Json(join) = join else {
        unreachable!()
    };
    assert_eq!(
        join,
        json!({"push": {"channel": ch, "join": {"info": info}}})
    );

    let r = other.call("unsubscribe", json!({"channel": ch})).await;
    assert_eq!(r["unsubscribe"], json!({}));
    let leave = asked
        .find(
            "leave of user 3",
            |m| matches!(m, Msg::Json(v) if v["push"]["leave"]["info"]["user"] == json!("3")),
        )
        .await;
    let Msg::Json(leave) = leave else {
        unreachable!()
    };
    assert_eq!(
        leave,
        json!({"push": {"channel": ch, "leave": {"info": info}}})
    );

    // The join and the leave were announced before this publication, so a client
    // that would get them sees them first.
    asked.publish(ch, json!({"after": true})).await;
    let Msg::Json(first) = quiet.next().await else {
        panic!("quiet client closed")
    };
    assert_eq!(
        first["push"]["pub"]["data"],
        json!({"after": true}),
        "{first}"
    );
}

// ---------------------------------------------------------------------------------
// ping, pong and the connect deadline
// ---------------------------------------------------------------------------------

fn fast_pings(c: &mut gateway::Config) {
    c.client.ping_interval = Duration::from_millis(400);
    c.client.pong_timeout = Duration::from_millis(300);
}

#[tokio::test]
async fn answered_pings_keep_the_connection_open() {
    let gw = TestGateway::with(fast_pings).await;
    let (mut c, r) = Client::connected(gw.addr, &token("1")).await;
    assert_eq!(r["ping"], json!(1), "whole seconds, at least 1");
    assert_eq!(r["pong"], json!(true));
    for _ in 0..4 {
        match c.next().await {
            Msg::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        }
        c.send_text("{}").await;
    }
    c.subscribe("still-here").await;
}

#[tokio::test]
async fn unanswered_ping_closes_3012() {
    let gw = TestGateway::with(fast_pings).await;
    let mut c = gw.client("1").await;
    match c.next().await {
        Msg::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
        Msg::Close(code, reason) => panic!("closed {code} {reason} before a ping"),
    }
    assert_eq!(c.closed().await, (3012, "no pong".to_string()));
}

#[tokio::test]
async fn no_connect_within_connect_timeout_closes_3502() {
    let gw = TestGateway::with(|c| c.client.connect_timeout = Duration::from_millis(300)).await;
    let mut c = Client::open(gw.addr).await;
    assert_eq!(c.closed().await, (3502, "stale".to_string()));
}

// ---------------------------------------------------------------------------------
// isolation
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn client_closed_for_bad_input_does_not_affect_the_room() {
    let gw = TestGateway::start().await;
    let (mut good, _) = member(&gw, "1", "chat").await;
    let (mut bad, _) = member(&gw, "2", "chat").await;
    bad.send_text("not json").await;
    assert_eq!(bad.closed().await, bad_request());
    let (mut third, _) = member(&gw, "3", "chat").await;
    third.publish("chat", json!({"n": 1})).await;
    let p = good.push("chat").await;
    assert_eq!(p["pub"]["data"], json!({"n": 1}));
    let r = good.publish("chat", json!({"n": 2})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = good.push("chat").await;
    assert_eq!(p["pub"]["data"], json!({"n": 2}));
}

// ---------------------------------------------------------------------------------
// more of sections 2, 3 and 5
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn zero_pong_timeout_means_no_pong_in_connect_result() {
    let gw = TestGateway::with(|c| c.client.pong_timeout = Duration::ZERO).await;
    let (_c, r) = Client::connected(gw.addr, &token("1")).await;
    assert_eq!(r["ping"], json!(60), "{r}");
    assert!(
        r.get("pong").is_none(),
        "pong only with a pong timeout: {r}"
    );
}

#[tokio::test]
async fn second_pong_for_one_ping_closes_3501() {
    let gw = TestGateway::with(fast_pings).await;
    let mut c = gw.client("1").await;
    match c.next().await {
        Msg::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
        Msg::Close(code, reason) => panic!("closed {code} {reason} before a ping"),
    }
    c.send_text("{}").await;
    c.send_text("{}").await;
    assert_eq!(c.closed().await, bad_request());
}

/// docs/protocol.md §2.2: a command with id 0 (other than `send`) is the pong,
/// whatever else it contains.
#[tokio::test]
async fn command_with_id_zero_answers_an_outstanding_ping() {
    let gw = TestGateway::with(fast_pings).await;
    let mut c = gw.client("1").await;
    match c.next().await {
        Msg::Json(v) => assert_eq!(v, json!({}), "expected a ping"),
        Msg::Close(code, reason) => panic!("closed {code} {reason} before a ping"),
    }
    c.send_text(r#"{"presence_stats":{"channel":"chat"}}"#)
        .await;
    // Not a 3012 (pong timeout 300 ms < ping interval 400 ms) and not a 3501.
    match c.next().await {
        Msg::Json(v) => assert_eq!(v, json!({}), "expected the next ping"),
        Msg::Close(code, reason) => panic!("closed {code} {reason}"),
    }
}

#[tokio::test]
async fn publish_without_data_or_channel_closes_3501() {
    let gw = TestGateway::start().await;
    for body in [
        json!({"channel": "chat"}),
        json!({"channel": "", "data": {}}),
    ] {
        let mut c = gw.client("1").await;
        c.subscribe("chat").await;
        let closed = c.send_and_close("publish", body.clone()).await;
        assert_eq!(closed, bad_request(), "{body}");
    }
}

#[tokio::test]
async fn unsubscribe_with_empty_channel_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close("unsubscribe", json!({"channel": ""}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn presence_and_history_without_subscription_are_103() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    for method in ["presence", "presence_stats", "history"] {
        let e = c.call_err(method, json!({"channel": "chat"})).await;
        assert_eq!(e, error(103, "permission denied"), "{method}");
    }
}

#[tokio::test]
async fn fossil_delta_is_accepted_but_not_negotiated() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let r = c
        .call("subscribe", json!({"channel": "chat", "delta": "fossil"}))
        .await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
}

#[tokio::test]
async fn leave_is_pushed_when_a_member_disconnects() {
    let gw = TestGateway::with(|c| {
        c.namespaces
            .insert("jl".into(), ns(|o| o.join_leave = true));
    })
    .await;
    let mut watcher = gw.client("1").await;
    watcher
        .call(
            "subscribe",
            json!({"channel": "jl:room", "join_leave": true}),
        )
        .await;
    let (mut gone, idg) = member(&gw, "2", "jl:room").await;
    gone.send_text("not json").await;
    assert_eq!(gone.closed().await, bad_request());
    let leave = watcher
        .find(
            "leave of user 2",
            |m| matches!(m, Msg::Json(v) if v["push"]["leave"].is_object()),
        )
        .await;
    let Msg::Json(leave) = leave else {
        unreachable!()
    };
    assert_eq!(
        leave["push"]["leave"]["info"],
        json!({"user": "2", "client": idg})
    );
}
