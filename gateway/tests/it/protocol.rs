//! Connect, subscribe, publish and the shapes of replies and pushes.

use serde_json::json;

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
