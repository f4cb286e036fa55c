//! Connection and subscription tokens: verification, claims, expiry and refresh.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use shared::auth::{mint_hs256, unix_now, MintClaims};

use crate::support::*;

const RSA_PRIVATE: &str = include_str!("../fixtures/test_only_rs256_private.pem");
const RSA_PUBLIC: &str = include_str!("../fixtures/test_only_rs256_public.pem");
const EC_PRIVATE: &str = include_str!("../fixtures/test_only_es256_private.pem");
const EC_PUBLIC: &str = include_str!("../fixtures/test_only_es256_public.pem");

fn error(code: u32, message: &str) -> Value {
    json!({"code": code, "message": message})
}

fn invalid_token() -> (u16, String) {
    (3500, "invalid token".to_string())
}

fn bad_request() -> (u16, String) {
    (3501, "bad request".to_string())
}

fn expired() -> (u16, String) {
    (3005, "connection expired".to_string())
}

/// A connection token for `user` expiring `secs` from now (negative: in the past).
fn token_exp(user: &str, secs: i64) -> String {
    mint(MintClaims {
        sub: user.into(),
        exp: Some(unix_now().saturating_add_signed(secs)),
        ..Default::default()
    })
}

/// A subscription token of `user` for `channel`, expiring `secs` from now.
fn sub_token(user: &str, channel: &str, secs: i64) -> String {
    mint(MintClaims {
        sub: user.into(),
        channel: Some(channel.into()),
        exp: Some(unix_now().saturating_add_signed(secs)),
        ..Default::default()
    })
}

/// An HS256 token with arbitrary claims (those `MintClaims` has no field for).
fn mint_json(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn ttl(result: &Value) -> u64 {
    result["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ttl: {result}"))
}

// ---------------------------------------------------------------------------------
// connection tokens
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_signature_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let forged = mint_hs256(
        "not-the-secret",
        &MintClaims {
            sub: "1".into(),
            ..Default::default()
        },
    );
    let closed = c.send_and_close("connect", json!({"token": forged})).await;
    assert_eq!(closed, invalid_token());
}

#[tokio::test]
async fn connection_token_with_channel_claim_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let closed = c
        .send_and_close("connect", json!({"token": sub_token("1", "chat", 3600)}))
        .await;
    assert_eq!(closed, invalid_token());
}

#[tokio::test]
async fn expired_token_is_109_and_then_any_command_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let r = c.connect(&token_exp("1", -10)).await;
    assert_eq!(r["error"], error(109, "token expired"), "{r}");
    let closed = c
        .send_and_close("subscribe", json!({"channel": "chat"}))
        .await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn expire_at_in_the_past_with_valid_exp_is_110() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let t = mint(MintClaims {
        sub: "1".into(),
        exp: Some(unix_now() + 3600),
        expire_at: Some(unix_now() - 10),
        ..Default::default()
    });
    let r = c.connect(&t).await;
    assert_eq!(r["error"], error(110, "expired"), "{r}");
}

#[tokio::test]
async fn connect_without_token_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let closed = c.send_and_close("connect", json!({"name": "js"})).await;
    assert_eq!(closed, bad_request());
}

#[tokio::test]
async fn anonymous_connect_without_token_when_allowed_is_user_empty() {
    let gw = TestGateway::with(|c| c.client.allow_anonymous_connect_without_token = true).await;
    let mut c = Client::open(gw.addr).await;
    let r = c.call("connect", json!({"name": "js"})).await;
    let id = client_id(&r["connect"]);
    c.subscribe("lobby").await;
    let r = c.call("presence", json!({"channel": "lobby"})).await;
    assert_eq!(
        r["presence"]["presence"],
        json!({ id.clone(): {"user": "", "client": id} }),
        "{r}"
    );
}

// ---------------------------------------------------------------------------------
// the `channels` claim
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn channels_claim_subscribes_at_connect_and_publications_arrive() {
    let gw = TestGateway::start().await;
    let t = mint(MintClaims {
        sub: "1".into(),
        channels: vec!["news".into(), "#1".into()],
        ..Default::default()
    });
    let (mut a, r) = Client::connected(gw.addr, &t).await;
    let subs = r["subs"]
        .as_object()
        .unwrap_or_else(|| panic!("no subs: {r}"));
    let mut names: Vec<&str> = subs.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["#1", "news"], "{r}");

    let mut b = gw.client("2").await;
    b.subscribe("news").await;
    b.publish("news", json!({"headline": 1})).await;
    let p = a.push("news").await;
    assert_eq!(p["pub"]["data"], json!({"headline": 1}), "{p}");
    assert_eq!(p["pub"]["info"]["user"], json!("2"), "{p}");

    let r = a.publish("#1", json!({"note": "to self"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = a.push("#1").await;
    assert_eq!(p["pub"]["data"], json!({"note": "to self"}), "{p}");
}

#[tokio::test]
async fn channels_claim_with_unknown_namespace_is_102() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let t = mint(MintClaims {
        sub: "1".into(),
        channels: vec!["news".into(), "nope:room".into()],
        ..Default::default()
    });
    let r = c.connect(&t).await;
    assert_eq!(r["error"], error(102, "unknown channel"), "{r}");
}

// ---------------------------------------------------------------------------------
// connection expiry and refresh
// ---------------------------------------------------------------------------------

fn short_expiry(c: &mut gateway::Config) {
    c.client.expired_close_delay = Duration::from_millis(100);
}

#[tokio::test]
async fn unrefreshed_connection_closes_3005() {
    let gw = TestGateway::with(short_expiry).await;
    let (mut c, r) = Client::connected(gw.addr, &token_exp("1", 2)).await;
    assert_eq!(r["expires"], json!(true), "{r}");
    assert!((1..=2).contains(&ttl(&r)), "{r}");
    assert_eq!(c.closed().await, expired());
}

#[tokio::test]
async fn refresh_with_fresh_token_keeps_connection_open() {
    let gw = TestGateway::with(short_expiry).await;
    let (mut c, r) = Client::connected(gw.addr, &token_exp("1", 2)).await;
    let rr = c
        .call("refresh", json!({"token": token_exp("1", 600)}))
        .await;
    let res = &rr["refresh"];
    assert_eq!(res["client"], r["client"], "{rr}");
    assert_eq!(res["expires"], json!(true), "{rr}");
    assert!((590..=600).contains(&ttl(res)), "{rr}");
    // The first token's expiry plus the close delay pass without a close.
    c.silent_for(Duration::from_millis(2500)).await;
    c.subscribe("still-open").await;
}

#[tokio::test]
async fn refresh_with_expired_token_closes_3005() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close("refresh", json!({"token": token_exp("1", -10)}))
        .await;
    assert_eq!(closed, expired());
}

#[tokio::test]
async fn refresh_with_another_users_token_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close("refresh", json!({"token": token("2")}))
        .await;
    assert_eq!(closed, invalid_token());
}

#[tokio::test]
async fn refresh_without_token_closes_3501() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c.send_and_close("refresh", json!({})).await;
    assert_eq!(closed, bad_request());
}

// ---------------------------------------------------------------------------------
// subscription tokens
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn private_channel_without_token_is_103() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("subscribe", json!({"channel": "$private"}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn private_channel_with_token_subscribes_and_info_is_chan_info() {
    let gw = TestGateway::start().await;
    let conn_token = mint(MintClaims {
        sub: "1".into(),
        info: Some(raw(r#"{"name":"Ann"}"#)),
        ..Default::default()
    });
    let (mut c, r) = Client::connected(gw.addr, &conn_token).await;
    let id = client_id(&r);
    let t = mint(MintClaims {
        sub: "1".into(),
        channel: Some("$private".into()),
        info: Some(raw(r#"{"role":"mod"}"#)),
        ..Default::default()
    });
    let r = c
        .call("subscribe", json!({"channel": "$private", "token": t}))
        .await;
    assert_eq!(r["subscribe"], json!({}), "{r}");
    let info = json!({
        "user": "1", "client": id, "conn_info": {"name": "Ann"}, "chan_info": {"role": "mod"}
    });
    c.publish("$private", json!({"x": 1})).await;
    let p = c.push("$private").await;
    assert_eq!(p["pub"]["info"], info, "{p}");
    let r = c.call("presence", json!({"channel": "$private"})).await;
    assert_eq!(r["presence"]["presence"], json!({ id: info }), "{r}");
}

#[tokio::test]
async fn subscription_token_for_another_channel_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close(
            "subscribe",
            json!({"channel": "$private", "token": sub_token("1", "$other", 3600)}),
        )
        .await;
    assert_eq!(closed, invalid_token());
}

#[tokio::test]
async fn subscription_token_for_another_user_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let closed = c
        .send_and_close(
            "subscribe",
            json!({"channel": "$private", "token": sub_token("2", "$private", 3600)}),
        )
        .await;
    assert_eq!(closed, invalid_token());
}

#[tokio::test]
async fn subscription_token_with_bad_signature_is_103() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let forged = mint_hs256(
        "not-the-secret",
        &MintClaims {
            sub: "1".into(),
            channel: Some("$private".into()),
            ..Default::default()
        },
    );
    let e = c
        .call_err("subscribe", json!({"channel": "$private", "token": forged}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn expired_subscription_token_is_109() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err(
            "subscribe",
            json!({"channel": "$private", "token": sub_token("1", "$private", -10)}),
        )
        .await;
    assert_eq!(e, error(109, "token expired"));
}

#[tokio::test]
async fn namespace_without_allow_subscribe_needs_a_token() {
    let gw = TestGateway::with(|c| {
        let locked = gateway::config::ChannelOptions {
            allow_subscribe: false,
            ..Default::default()
        };
        c.namespaces.insert("locked".into(), locked);
    })
    .await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err("subscribe", json!({"channel": "locked:room"}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
    let r = c
        .call(
            "subscribe",
            json!({"channel": "locked:room", "token": sub_token("1", "locked:room", 3600)}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
}

#[tokio::test]
async fn user_limited_channel_admits_only_listed_users() {
    let gw = TestGateway::start().await;
    for user in ["1", "2"] {
        let mut c = gw.client(user).await;
        c.subscribe("dialog#1,2").await;
    }
    let mut c = gw.client("3").await;
    let e = c
        .call_err("subscribe", json!({"channel": "dialog#1,2"}))
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn personal_channel_admits_only_its_user() {
    let gw = TestGateway::start().await;
    let mut owner = gw.client("42").await;
    owner.subscribe("#42").await;
    let mut c = gw.client("43").await;
    let e = c.call_err("subscribe", json!({"channel": "#42"})).await;
    assert_eq!(e, error(103, "permission denied"));
}

// ---------------------------------------------------------------------------------
// subscription expiry and sub_refresh
// ---------------------------------------------------------------------------------

fn short_sub_expiry(c: &mut gateway::Config) {
    c.client.expired_sub_close_delay = Duration::from_millis(100);
}

#[tokio::test]
async fn unrefreshed_subscription_gets_unsubscribe_2501() {
    let gw = TestGateway::with(short_sub_expiry).await;
    let mut c = gw.client("1").await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "$p", "token": sub_token("1", "$p", 2)}),
        )
        .await;
    let s = &r["subscribe"];
    assert_eq!(s["expires"], json!(true), "{r}");
    assert!((1..=2).contains(&ttl(s)), "{r}");
    let p = c.push("$p").await;
    assert_eq!(
        p,
        json!({"channel": "$p", "unsubscribe": {"code": 2501, "reason": "subscription expired"}})
    );
    let e = c
        .call_err("publish", json!({"channel": "$p", "data": {}}))
        .await;
    assert_eq!(e, error(103, "permission denied"), "no longer subscribed");
}

#[tokio::test]
async fn sub_refresh_with_fresh_token_extends_subscription() {
    let gw = TestGateway::with(short_sub_expiry).await;
    let mut c = gw.client("1").await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "$p", "token": sub_token("1", "$p", 2)}),
        )
        .await;
    assert_eq!(r["subscribe"]["expires"], json!(true), "{r}");
    let r = c
        .call(
            "sub_refresh",
            json!({"channel": "$p", "token": sub_token("1", "$p", 600)}),
        )
        .await;
    let res = &r["sub_refresh"];
    assert_eq!(res["expires"], json!(true), "{r}");
    assert!((590..=600).contains(&ttl(res)), "{r}");
    c.silent_for(Duration::from_millis(2500)).await;
    c.publish("$p", json!({"still": "subscribed"})).await;
    let p = c.push("$p").await;
    assert_eq!(p["pub"]["data"], json!({"still": "subscribed"}), "{p}");
}

#[tokio::test]
async fn sub_refresh_when_not_subscribed_is_103() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let e = c
        .call_err(
            "sub_refresh",
            json!({"channel": "$p", "token": sub_token("1", "$p", 600)}),
        )
        .await;
    assert_eq!(e, error(103, "permission denied"));
}

#[tokio::test]
async fn sub_refresh_without_token_is_107() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.call(
        "subscribe",
        json!({"channel": "$p", "token": sub_token("1", "$p", 600)}),
    )
    .await;
    let e = c.call_err("sub_refresh", json!({"channel": "$p"})).await;
    assert_eq!(e, error(107, "bad request"));
}

#[tokio::test]
async fn sub_refresh_with_bad_token_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.call(
        "subscribe",
        json!({"channel": "$p", "token": sub_token("1", "$p", 600)}),
    )
    .await;
    let forged = mint_hs256(
        "not-the-secret",
        &MintClaims {
            sub: "1".into(),
            channel: Some("$p".into()),
            ..Default::default()
        },
    );
    let closed = c
        .send_and_close("sub_refresh", json!({"channel": "$p", "token": forged}))
        .await;
    assert_eq!(closed, invalid_token());
}

// ---------------------------------------------------------------------------------
// RSA and ECDSA keys
// ---------------------------------------------------------------------------------

fn sign(alg: Algorithm, claims: &MintClaims) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()),
        other => panic!("no test key for {other:?}"),
    }
    .expect("test key parses");
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign")
}

/// Connect and subscribe to `$keyed` with tokens signed by `alg`; the publication
/// info shows the user from the connection token.
async fn tokens_signed_with(gw: &TestGateway, alg: Algorithm) {
    let conn = sign(
        alg,
        &MintClaims {
            sub: "7".into(),
            exp: Some(unix_now() + 600),
            ..Default::default()
        },
    );
    let (mut c, _) = Client::connected(gw.addr, &conn).await;
    let sub = sign(
        alg,
        &MintClaims {
            sub: "7".into(),
            channel: Some("$keyed".into()),
            ..Default::default()
        },
    );
    let r = c
        .call("subscribe", json!({"channel": "$keyed", "token": sub}))
        .await;
    assert!(r.get("subscribe").is_some(), "{alg:?}: {r}");
    c.publish("$keyed", json!({"alg": format!("{alg:?}")}))
        .await;
    let p = c.push("$keyed").await;
    assert_eq!(p["pub"]["info"]["user"], json!("7"), "{p}");
}

#[tokio::test]
async fn rs256_tokens_verify_with_rsa_public_key() {
    let gw = TestGateway::with(|c| c.token.rsa_public_key = Some(RSA_PUBLIC.into())).await;
    tokens_signed_with(&gw, Algorithm::RS256).await;
}

#[tokio::test]
async fn es256_tokens_verify_with_ecdsa_public_key() {
    let gw = TestGateway::with(|c| c.token.ecdsa_public_key = Some(EC_PUBLIC.into())).await;
    tokens_signed_with(&gw, Algorithm::ES256).await;
}

#[tokio::test]
async fn es256_token_without_ecdsa_key_closes_3500() {
    let gw = TestGateway::with(|c| c.token.rsa_public_key = Some(RSA_PUBLIC.into())).await;
    let mut c = Client::open(gw.addr).await;
    let t = sign(
        Algorithm::ES256,
        &MintClaims {
            sub: "7".into(),
            ..Default::default()
        },
    );
    let closed = c.send_and_close("connect", json!({"token": t})).await;
    assert_eq!(closed, invalid_token());
}

// ---------------------------------------------------------------------------------
// more of section 7
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn expire_at_zero_means_the_connection_never_expires() {
    let gw = TestGateway::start().await;
    let t = mint(MintClaims {
        sub: "1".into(),
        exp: Some(unix_now() + 600),
        expire_at: Some(0),
        ..Default::default()
    });
    let (_c, r) = Client::connected(gw.addr, &t).await;
    assert!(r.get("expires").is_none() && r.get("ttl").is_none(), "{r}");
}

#[tokio::test]
async fn token_not_yet_valid_closes_3500() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(gw.addr).await;
    let t = mint_json(json!({"sub": "1", "nbf": unix_now() + 600}));
    let closed = c.send_and_close("connect", json!({"token": t})).await;
    assert_eq!(closed, invalid_token());
}

fn audience_and_issuer(c: &mut gateway::Config) {
    c.token.audience = Some("chat-app".into());
    c.token.issuer = Some("auth-service".into());
}

/// Connect with a token carrying `claims`; returns the close it causes.
async fn connect_closes(gw: &TestGateway, claims: Value) -> (u16, String) {
    let mut c = Client::open(gw.addr).await;
    c.send("connect", json!({"token": mint_json(claims.clone())}))
        .await;
    match c.next().await {
        Msg::Close(code, reason) => (code, reason),
        Msg::Json(v) => panic!("{claims}: expected a close, got {v}"),
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let gw = TestGateway::with(audience_and_issuer).await;
    let good = mint_json(json!({"sub": "1", "aud": "chat-app", "iss": "auth-service"}));
    Client::connected(gw.addr, &good).await;
    for claims in [
        json!({"sub": "1", "aud": "other-app", "iss": "auth-service"}),
        json!({"sub": "1", "aud": "chat-app", "iss": "someone-else"}),
    ] {
        assert_eq!(
            connect_closes(&gw, claims.clone()).await,
            invalid_token(),
            "{claims}"
        );
    }
}

/// docs/protocol.md §5: with `audience`/`issuer` configured, a token that does not name
/// them is not for this service (Centrifugo rejects it as invalid).
#[tokio::test]
async fn token_without_configured_audience_or_issuer_closes_3500() {
    let gw = TestGateway::with(audience_and_issuer).await;
    for claims in [
        json!({"sub": "1", "iss": "auth-service"}),
        json!({"sub": "1", "aud": "chat-app"}),
    ] {
        assert_eq!(
            connect_closes(&gw, claims.clone()).await,
            invalid_token(),
            "{claims}"
        );
    }
}

#[tokio::test]
async fn refresh_with_expire_at_in_the_past_is_110() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let t = mint(MintClaims {
        sub: "1".into(),
        exp: Some(unix_now() + 600),
        expire_at: Some(unix_now() - 10),
        ..Default::default()
    });
    let e = c.call_err("refresh", json!({"token": t})).await;
    assert_eq!(e, error(110, "expired"));
}

#[tokio::test]
async fn refresh_replaces_conn_info_for_later_subscriptions() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let t = mint(MintClaims {
        sub: "1".into(),
        exp: Some(unix_now() + 600),
        info: Some(raw(r#"{"v":2}"#)),
        ..Default::default()
    });
    let r = c.call("refresh", json!({"token": t})).await;
    assert!(r.get("refresh").is_some(), "{r}");
    c.subscribe("after").await;
    c.publish("after", json!({})).await;
    let p = c.push("after").await;
    assert_eq!(p["pub"]["info"]["conn_info"], json!({"v": 2}), "{p}");
}

#[tokio::test]
async fn subscription_token_data_is_returned_in_the_subscribe_result() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    let t = mint(MintClaims {
        sub: "1".into(),
        channel: Some("$private".into()),
        data: Some(raw(r#"{"welcome":true}"#)),
        ..Default::default()
    });
    let r = c
        .call("subscribe", json!({"channel": "$private", "token": t}))
        .await;
    assert_eq!(r["subscribe"], json!({"data": {"welcome": true}}), "{r}");
}

#[tokio::test]
async fn subscription_token_bound_to_another_client_closes_3500() {
    let gw = TestGateway::start().await;
    let (mut c, r) = Client::connected(gw.addr, &token("1")).await;
    let bound = |client: &str| {
        mint(MintClaims {
            sub: "1".into(),
            channel: Some("$bound".into()),
            client: Some(client.into()),
            ..Default::default()
        })
    };
    let own = bound(&client_id(&r));
    let ok = c
        .call("subscribe", json!({"channel": "$bound", "token": own}))
        .await;
    assert!(ok.get("subscribe").is_some(), "{ok}");
    let closed = c
        .send_and_close(
            "subscribe",
            json!({"channel": "$bound2", "token": bound("another-client")}),
        )
        .await;
    assert_eq!(closed, invalid_token());
}

/// docs/protocol.md §2.10: a new subscription expiry already in the past is 110.
#[tokio::test]
async fn sub_refresh_with_expire_at_in_the_past_is_110() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("1").await;
    c.call(
        "subscribe",
        json!({"channel": "$p", "token": sub_token("1", "$p", 600)}),
    )
    .await;
    let t = mint(MintClaims {
        sub: "1".into(),
        channel: Some("$p".into()),
        exp: Some(unix_now() + 600),
        expire_at: Some(unix_now() - 10),
        ..Default::default()
    });
    let e = c
        .call_err("sub_refresh", json!({"channel": "$p", "token": t}))
        .await;
    assert_eq!(e, error(110, "expired"));
}

/// Regression: an `exp` centuries away made the connection's expiry an `Instant`
/// that overflowed, and the task panicked. It is clamped instead.
#[tokio::test]
async fn an_exp_far_in_the_future_is_clamped_not_a_panic() {
    let gw = TestGateway::start().await;
    for exp in [u64::MAX, 1 << 63] {
        let token = mint(MintClaims {
            sub: "far".into(),
            exp: Some(exp),
            ..Default::default()
        });
        let (mut c, r) = Client::connected(gw.addr, &token).await;
        assert_eq!(r["expires"], json!(true), "{r}");
        assert_eq!(r["ttl"], json!(u32::MAX), "{r}");
        c.subscribe("chat").await;
        let p = c.publish("chat", json!("still alive")).await;
        assert_eq!(p["publish"], json!({}), "{p}");
    }
}
