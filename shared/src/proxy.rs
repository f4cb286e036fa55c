//! What a node sends to the application backend's proxy endpoints, and what it
//! reads back (docs/protocol.md §11). The JSON shapes are Centrifugo's HTTP proxy
//! format, so backends written for Centrifugo answer unchanged.
//!
//! Every reply is `{"result":{…}}`, `{"error":{"code","message","temporary"}}` or
//! `{"disconnect":{"code","reason"}}`.

use serde::{Deserialize, Serialize};

use crate::api::SubscribeOverride;
use crate::protocol::{Raw, Tags};

/// Fields every proxy request carries about the connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnFields {
    pub client: String,
    /// Always `websocket`.
    pub transport: &'static str,
    /// Always `json`.
    pub protocol: &'static str,
    /// Always `json`.
    pub encoding: &'static str,
}

impl ConnFields {
    pub fn new(client: &str) -> Self {
        ConnFields {
            client: client.to_owned(),
            transport: "websocket",
            protocol: "json",
            encoding: "json",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    /// The client's `connect.data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Options of one server-side subscription a connect reply asks for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeOptions {
    pub expire_at: i64,
    pub info: Option<Raw>,
    pub b64info: String,
    pub data: Option<Raw>,
    pub b64data: String,
    #[serde(rename = "override")]
    pub override_: Option<SubscribeOverride>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// The user id; empty for an anonymous connection.
    pub user: String,
    /// Unix seconds at which the connection expires; 0 never.
    pub expire_at: i64,
    /// `conn_info` other clients see.
    pub info: Option<Raw>,
    pub b64info: String,
    /// Returned to the client in the connect result.
    pub data: Option<Raw>,
    pub b64data: String,
    /// Server-side subscriptions.
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    pub subs: std::collections::HashMap<String, SubscribeOptions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    pub user: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// Close the connection as expired (3005).
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<Raw>,
    pub b64info: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscribeRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    pub user: String,
    pub channel: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    pub expire_at: i64,
    /// `chan_info` of the subscriber.
    pub info: Option<Raw>,
    pub b64info: String,
    /// Returned to the subscriber in the subscribe result.
    pub data: Option<Raw>,
    pub b64data: String,
    #[serde(rename = "override")]
    pub override_: Option<SubscribeOverride>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    pub user: String,
    pub channel: String,
    pub data: Raw,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// Publish this instead of what the client sent.
    pub data: Option<Raw>,
    pub b64data: String,
    pub skip_history: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubRefreshRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    pub user: String,
    pub channel: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    /// End the subscription as expired (2501).
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<Raw>,
    pub b64info: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpcRequest {
    #[serde(flatten)]
    pub conn: ConnFields,
    pub user: String,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    pub data: Option<Raw>,
    pub b64data: String,
}

/// An error the backend wants the client to see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ProxyError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

/// A close code and reason the backend wants the connection closed with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ProxyDisconnect {
    pub code: u32,
    pub reason: String,
}

/// A proxy reply: exactly one of the three is expected; `disconnect` wins over
/// `error`, which wins over `result`.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Reply<T> {
    #[serde(default = "Option::default")]
    pub result: Option<T>,
    #[serde(default)]
    pub error: Option<ProxyError>,
    #[serde(default)]
    pub disconnect: Option<ProxyDisconnect>,
}

/// What a proxy reply decides.
#[derive(Debug, Clone)]
pub enum Decision<T> {
    Allow(T),
    Error(ProxyError),
    Disconnect(ProxyDisconnect),
}

impl<T: Default> Reply<T> {
    /// The reply's decision; an empty reply allows with default options.
    pub fn decision(self) -> Decision<T> {
        if let Some(d) = self.disconnect {
            return Decision::Disconnect(d);
        }
        if let Some(e) = self.error {
            return Decision::Error(e);
        }
        Decision::Allow(self.result.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_shaped_like_centrifugos() {
        let r = PublishRequest {
            conn: ConnFields::new("c1"),
            user: "42".into(),
            channel: "chat".into(),
            data: crate::protocol::raw_from_slice(br#"{"text":"hi"}"#).unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","user":"42","channel":"chat","data":{"text":"hi"}}"#
        );
    }

    #[test]
    fn replies_decide_disconnect_then_error_then_result() {
        let d: Reply<ConnectResult> = serde_json::from_str(
            r#"{"result":{"user":"7"},"error":{"code":1000,"message":"no"},"disconnect":{"code":4500,"reason":"bye"}}"#,
        )
        .unwrap();
        assert!(matches!(d.decision(), Decision::Disconnect(d) if d.code == 4500));
        let e: Reply<ConnectResult> =
            serde_json::from_str(r#"{"error":{"code":1000,"message":"no","temporary":true}}"#)
                .unwrap();
        let Decision::Error(err) = e.decision() else {
            panic!("not an error");
        };
        assert_eq!(
            err,
            ProxyError {
                code: 1000,
                message: "no".into(),
                temporary: true
            }
        );
        let ok: Reply<ConnectResult> = serde_json::from_str(
            r##"{"result":{"user":"7","expire_at":1700000000,"info":{"n":"Ann"},"channels":["#7"]}}"##,
        )
        .unwrap();
        let Decision::Allow(r) = ok.decision() else {
            panic!("not allowed");
        };
        assert_eq!((r.user.as_str(), r.expire_at), ("7", 1_700_000_000));
        assert_eq!(r.info.unwrap().get(), r#"{"n":"Ann"}"#);
        assert_eq!(r.channels, vec!["#7"]);
        let empty: Reply<PublishResult> = serde_json::from_str("{}").unwrap();
        assert!(matches!(empty.decision(), Decision::Allow(p) if p.data.is_none()));
    }
}
