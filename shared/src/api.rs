//! The server HTTP API's wire types (docs/protocol.md §10): one request body per
//! method, the results, and the error object. Compatible with Centrifugo's API, so
//! its client libraries (PyPI `cent`, npm `cent.js`) work unchanged.
//!
//! Payloads (`data`, `info`) are embedded JSON; `b64data`/`b64info` carry the same
//! as base64 and win when both are set.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::protocol::{ClientInfo, Publication, Raw, StreamPosition, Tags};

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// The methods of the API, by the name in `POST /api/<method>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Publish,
    Broadcast,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Refresh,
    Presence,
    PresenceStats,
    History,
    HistoryRemove,
    Channels,
    Info,
    Batch,
}

impl Method {
    pub const ALL: [Method; 13] = [
        Method::Publish,
        Method::Broadcast,
        Method::Subscribe,
        Method::Unsubscribe,
        Method::Disconnect,
        Method::Refresh,
        Method::Presence,
        Method::PresenceStats,
        Method::History,
        Method::HistoryRemove,
        Method::Channels,
        Method::Info,
        Method::Batch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Publish => "publish",
            Method::Broadcast => "broadcast",
            Method::Subscribe => "subscribe",
            Method::Unsubscribe => "unsubscribe",
            Method::Disconnect => "disconnect",
            Method::Refresh => "refresh",
            Method::Presence => "presence",
            Method::PresenceStats => "presence_stats",
            Method::History => "history",
            Method::HistoryRemove => "history_remove",
            Method::Channels => "channels",
            Method::Info => "info",
            Method::Batch => "batch",
        }
    }

    /// The method called `name` (case-insensitive, as the legacy route allows).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// An API error: `{"code":N,"message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: u32,
    pub message: Cow<'static, str>,
}

impl From<ErrorCode> for ApiError {
    fn from(e: ErrorCode) -> Self {
        ApiError {
            code: e.code,
            message: Cow::Borrowed(e.message),
        }
    }
}

impl ApiError {
    /// A 107 "bad request" that says what was wrong.
    pub fn bad_request(why: impl Into<String>) -> Self {
        ApiError {
            code: crate::codes::ERROR_BAD_REQUEST.code,
            message: Cow::Owned(format!("bad request: {}", why.into())),
        }
    }
}

/// What one method answers: its result, or an error.
pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Option<Raw>,
    pub b64data: String,
    /// Publish without appending to the room's history (no offset).
    pub skip_history: bool,
    pub tags: Tags,
    /// Accepted for compatibility; not used for deduplication yet.
    pub idempotency_key: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    #[serde(skip_serializing_if = "is_zero_u64", default)]
    pub offset: u64,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub epoch: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BroadcastRequest {
    pub channels: Vec<String>,
    pub data: Option<Raw>,
    pub b64data: String,
    pub skip_history: bool,
    pub tags: Tags,
    pub idempotency_key: String,
}

/// One channel's outcome in a broadcast: `{"result":{…}}` or `{"error":{…}}`.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<PublishResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl From<ApiResult<PublishResult>> for BroadcastResponse {
    fn from(r: ApiResult<PublishResult>) -> Self {
        match r {
            Ok(result) => BroadcastResponse {
                result: Some(result),
                error: None,
            },
            Err(e) => BroadcastResponse {
                result: None,
                error: Some(e),
            },
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct BroadcastResult {
    pub responses: Vec<BroadcastResponse>,
}

/// `{"value": bool}`: an option a server-side subscription overrides.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoolValue {
    pub value: bool,
}

/// Per-subscription overrides of the namespace's options.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeOverride {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_recovery: Option<BoolValue>,
    pub force_positioning: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    pub channel: String,
    pub user: String,
    /// Only this connection of the user.
    pub client: String,
    pub session: String,
    /// Unix seconds at which the subscription expires; 0 never.
    pub expire_at: i64,
    pub info: Option<Raw>,
    pub b64info: String,
    pub data: Option<Raw>,
    pub b64data: String,
    pub recover_since: Option<StreamPosition>,
    #[serde(rename = "override")]
    pub override_: Option<SubscribeOverride>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct UnsubscribeRequest {
    pub channel: String,
    pub user: String,
    pub client: String,
    pub session: String,
}

/// A close code and reason an API call chooses.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DisconnectSpec {
    pub code: u32,
    pub reason: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DisconnectRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    /// Client ids left connected.
    pub whitelist: Vec<String>,
    pub disconnect: Option<DisconnectSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub user: String,
    pub client: String,
    pub session: String,
    /// Close the connections as expired (3005).
    pub expired: bool,
    /// New expiry, unix seconds; 0 leaves it.
    pub expire_at: i64,
    pub info: Option<Raw>,
    pub b64info: String,
}

/// The request of presence, presence_stats and history_remove.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    pub limit: i32,
    pub since: Option<StreamPosition>,
    pub reverse: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ChannelsRequest {
    /// A glob (`*` any run, `?` one character); empty matches every channel.
    pub pattern: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub num_clients: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ChannelsResult {
    pub channels: HashMap<String, ChannelInfo>,
}

/// One node in `info`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NodeResult {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub num_subs: u64,
    pub uptime: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct InfoResult {
    pub nodes: Vec<NodeResult>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct EmptyResult {}

/// `batch`: commands, each an object with one method key, run in order or (with
/// `parallel`) concurrently.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BatchRequest {
    pub commands: Vec<HashMap<String, Box<serde_json::value::RawValue>>>,
    pub parallel: bool,
}

/// The value of a URL-safe or standard base64 field, decoded.
pub fn decode_b64(field: &str, value: &str) -> ApiResult<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// The payload of a request: `b64<field>` when set (it must decode to JSON, since
/// clients speak the JSON protocol), else `<field>`.
pub fn payload(field: &str, raw: &Option<Raw>, b64: &str) -> ApiResult<Option<Raw>> {
    if b64.is_empty() {
        return Ok(raw.clone());
    }
    let bytes = decode_b64(field, b64)?;
    crate::protocol::raw_from_slice(&bytes)
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("b64{field} must decode to JSON")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_by_name() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("PUBLISH"), Some(Method::Publish));
        assert_eq!(Method::from_name("nope"), None);
    }

    #[test]
    fn payload_prefers_b64_and_requires_json() {
        let raw = Some(crate::protocol::raw_from_slice(b"{\"a\":1}").unwrap());
        assert_eq!(
            payload("data", &raw, "").unwrap().unwrap().get(),
            "{\"a\":1}"
        );
        // base64 of {"b":2}
        let p = payload("data", &raw, "eyJiIjoyfQ==").unwrap().unwrap();
        assert_eq!(p.get(), "{\"b\":2}");
        // base64 of "not json"
        assert_eq!(
            payload("data", &None, "bm90IGpzb24=").unwrap_err().code,
            107
        );
        assert_eq!(payload("data", &None, "%%%").unwrap_err().code, 107);
    }

    #[test]
    fn results_are_shaped_like_centrifugos() {
        let r = BroadcastResult {
            responses: vec![
                Ok(PublishResult {
                    offset: 3,
                    epoch: "e".into(),
                })
                .into(),
                Err(ApiError::from(crate::codes::ERROR_UNKNOWN_CHANNEL)).into(),
            ],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"responses":[{"result":{"offset":3,"epoch":"e"}},{"error":{"code":102,"message":"unknown channel"}}]}"#
        );
        assert_eq!(
            serde_json::to_string(&PublishResult::default()).unwrap(),
            "{}"
        );
    }
}
