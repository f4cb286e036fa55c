//! The JSON client protocol (docs/protocol.md §1-§3; stream fields §4).
//!
//! Incoming frames hold one or more [`Command`]s joined by `\n`; outgoing frames hold
//! one or more replies or pushes joined by `\n`. Fields typed `bytes` in the proto are
//! embedded raw JSON ([`Raw`]); zero values are omitted on output except where the
//! SDKs rely on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::{ErrorCode, UnsubscribeCode};

/// An embedded JSON value, validated once on input and written verbatim on output.
/// Cheap to clone: every subscriber's push shares one allocation.
pub type Raw = Arc<RawValue>;

/// Parse bytes as one JSON value for embedding. Newlines are whitespace in valid JSON
/// but are the frame separator on the wire, so they are stripped (as Centrifuge does).
pub fn raw_from_slice(bytes: &[u8]) -> Result<Raw, serde_json::Error> {
    let raw: Box<RawValue> = if bytes.contains(&b'\n') {
        let stripped: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'\n').collect();
        serde_json::from_slice(&stripped)?
    } else {
        serde_json::from_slice(bytes)?
    };
    Ok(Arc::from(raw))
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

// ---------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------

/// One client command. Exactly one request field is expected; the server takes the
/// first non-null one in field-number order (see [`Command::request`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Command {
    pub id: u32,
    pub connect: Option<ConnectRequest>,
    pub subscribe: Option<SubscribeRequest>,
    pub unsubscribe: Option<ChannelRequest>,
    pub publish: Option<PublishRequest>,
    pub presence: Option<ChannelRequest>,
    pub presence_stats: Option<ChannelRequest>,
    pub history: Option<HistoryRequest>,
    pub ping: Option<serde::de::IgnoredAny>,
    pub send: Option<SendRequest>,
    pub rpc: Option<RpcRequest>,
    pub refresh: Option<RefreshRequest>,
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// The request a [`Command`] carries.
#[derive(Debug)]
pub enum Request {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
}

impl Command {
    /// Parse one command line of a frame.
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The first non-null request field, or `None` for an empty command (a pong when
    /// the id is 0, a protocol violation otherwise).
    pub fn request(self) -> Option<Request> {
        if let Some(r) = self.connect {
            return Some(Request::Connect(r));
        }
        if let Some(r) = self.subscribe {
            return Some(Request::Subscribe(r));
        }
        if let Some(r) = self.unsubscribe {
            return Some(Request::Unsubscribe(r));
        }
        if let Some(r) = self.publish {
            return Some(Request::Publish(r));
        }
        if let Some(r) = self.presence {
            return Some(Request::Presence(r));
        }
        if let Some(r) = self.presence_stats {
            return Some(Request::PresenceStats(r));
        }
        if let Some(r) = self.history {
            return Some(Request::History(r));
        }
        if self.ping.is_some() {
            return Some(Request::Ping);
        }
        if let Some(r) = self.send {
            return Some(Request::Send(r));
        }
        if let Some(r) = self.rpc {
            return Some(Request::Rpc(r));
        }
        if let Some(r) = self.refresh {
            return Some(Request::Refresh(r));
        }
        self.sub_refresh.map(Request::SubRefresh)
    }
}

/// Split a frame into command lines: `\n` between messages, at most one trailing `\n`.
/// Returns `None` when the framing is invalid (empty frame, empty line).
pub fn split_frame(frame: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    if body.is_empty() || body.split(|&b| b == b'\n').any(|l| l.is_empty()) {
        return None;
    }
    Some(body.split(|&b| b == b'\n'))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    pub token: String,
    pub data: Option<Raw>,
    /// Server-side subscriptions the client wants to recover: channel -> position.
    pub subs: HashMap<String, SubscribeRequest>,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    pub channel: String,
    pub token: String,
    pub recover: bool,
    pub epoch: String,
    pub offset: u64,
    pub data: Option<Raw>,
    pub positioned: bool,
    pub recoverable: bool,
    pub join_leave: bool,
    pub delta: String,
    pub flag: i64,
}

/// Subscribe flag bit: reply 112 instead of `recovered:false` when recovery fails.
pub const SUBSCRIBE_FLAG_REJECT_UNRECOVERED: i64 = 2;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    pub channel: String,
    pub limit: i32,
    pub since: Option<StreamPosition>,
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    pub method: String,
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    pub channel: String,
    pub token: String,
}

// ---------------------------------------------------------------------------------
// Shared shapes
// ---------------------------------------------------------------------------------

/// A position in a room's history stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// Who a connection is, as other clients see it (presence, join/leave, publisher).
/// `user` and `client` are always written, even when empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conn_info: Option<Raw>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chan_info: Option<Raw>,
}

/// Tags travel as an ordered map so that encodings are deterministic.
pub type Tags = BTreeMap<String, String>;

/// A publication in a room, as pushed live and as returned from history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub data: Raw,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<ClientInfo>,
    /// Position in the room's stream; 0 when the room keeps no history.
    #[serde(skip_serializing_if = "is_zero_u64", default)]
    pub offset: u64,
    #[serde(skip_serializing_if = "Tags::is_empty", default)]
    pub tags: Tags,
}

// ---------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Arc<Publication>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct EmptyResult {}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: u32,
    pub message: std::borrow::Cow<'static, str>,
    #[serde(skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl From<ErrorCode> for ErrorBody {
    fn from(e: ErrorCode) -> Self {
        ErrorBody {
            code: e.code,
            message: std::borrow::Cow::Borrowed(e.message),
            temporary: e.temporary,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

/// The result part of a reply; the JSON key is the command's name.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyBody {
    Error(ErrorBody),
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe(EmptyResult),
    Publish(EmptyResult),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
    Rpc(RpcResult),
}

#[derive(Serialize)]
struct Reply<'a> {
    id: u32,
    #[serde(flatten)]
    body: &'a ReplyBody,
}

/// Encode a reply to command `id`.
pub fn encode_reply(id: u32, body: &ReplyBody) -> Vec<u8> {
    serde_json::to_vec(&Reply { id, body }).expect("bug: reply serialization cannot fail")
}

/// Encode an error reply to command `id`.
pub fn encode_error(id: u32, error: ErrorCode) -> Vec<u8> {
    encode_reply(id, &ReplyBody::Error(error.into()))
}

/// The server ping: a reply with no id and no fields.
pub const PING: &[u8] = b"{}";

#[derive(Serialize)]
struct Push<'a> {
    push: PushInner<'a>,
}

#[derive(Serialize)]
struct PushInner<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    channel: &'a str,
    #[serde(flatten)]
    body: PushBody<'a>,
}

#[derive(Serialize)]
struct InfoBody<'a> {
    info: &'a ClientInfo,
}

#[derive(Serialize)]
struct UnsubscribeBody {
    code: u32,
    reason: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum PushBody<'a> {
    Pub(&'a Publication),
    Join(InfoBody<'a>),
    Leave(InfoBody<'a>),
    Unsubscribe(UnsubscribeBody),
    Subscribe(&'a SubscribeResult),
}

fn encode_push(channel: &str, body: PushBody<'_>) -> Vec<u8> {
    serde_json::to_vec(&Push {
        push: PushInner { channel, body },
    })
    .expect("bug: push serialization cannot fail")
}

/// `{"push":{"channel":…,"pub":{…}}}`: encoded once per publication per node.
pub fn encode_publication_push(channel: &str, publication: &Publication) -> Vec<u8> {
    encode_push(channel, PushBody::Pub(publication))
}

pub fn encode_join_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(channel, PushBody::Join(InfoBody { info }))
}

pub fn encode_leave_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(channel, PushBody::Leave(InfoBody { info }))
}

pub fn encode_unsubscribe_push(channel: &str, code: UnsubscribeCode) -> Vec<u8> {
    encode_push(
        channel,
        PushBody::Unsubscribe(UnsubscribeBody {
            code: code.code,
            reason: code.reason,
        }),
    )
}

/// A server-side subscription added while connected.
pub fn encode_subscribe_push(channel: &str, result: &SubscribeResult) -> Vec<u8> {
    encode_push(channel, PushBody::Subscribe(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Raw {
        raw_from_slice(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_sdk_connect_and_subscribe_batch() {
        let frame = br#"{"connect":{"token":"t","data":{"custom":1},"name":"js"},"id":1}
{"subscribe":{"channel":"chat","recoverable":true,"join_leave":true,"flag":1,"recover":true,"offset":7,"epoch":"e1"},"id":2}"#;
        let lines: Vec<_> = split_frame(frame).unwrap().collect();
        assert_eq!(lines.len(), 2);
        let c = Command::parse(lines[0]).unwrap();
        assert_eq!(c.id, 1);
        match c.request() {
            Some(Request::Connect(r)) => {
                assert_eq!(r.token, "t");
                assert_eq!(r.data.unwrap().get(), r#"{"custom":1}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        match Command::parse(lines[1]).unwrap().request() {
            Some(Request::Subscribe(r)) => {
                assert_eq!((r.offset, r.epoch.as_str(), r.recover), (7, "e1", true));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_command_is_a_pong() {
        let c = Command::parse(b"{}").unwrap();
        assert_eq!(c.id, 0);
        assert!(c.request().is_none());
    }

    #[test]
    fn framing_rules() {
        assert!(split_frame(b"").is_none());
        assert!(split_frame(b"\n").is_none());
        assert!(split_frame(b"{}\n\n{}").is_none());
        assert_eq!(split_frame(b"{}\n").unwrap().count(), 1);
        assert_eq!(split_frame(b"{}\n{}").unwrap().count(), 2);
    }

    #[test]
    fn publication_push_shape() {
        let p = Publication {
            data: raw(r#"{"n":6}"#),
            info: Some(ClientInfo {
                user: "7".into(),
                client: "cx".into(),
                conn_info: Some(raw(r#"{"a":1}"#)),
                chan_info: None,
            }),
            offset: 6,
            tags: Tags::new(),
        };
        assert_eq!(
            String::from_utf8(encode_publication_push("chat", &p)).unwrap(),
            r#"{"push":{"channel":"chat","pub":{"data":{"n":6},"info":{"user":"7","client":"cx","conn_info":{"a":1}},"offset":6}}}"#
        );
    }

    #[test]
    fn reply_shapes() {
        let r = encode_reply(3, &ReplyBody::Publish(EmptyResult {}));
        assert_eq!(r, br#"{"id":3,"publish":{}}"#);
        let r = encode_error(7, crate::codes::ERROR_NOT_AVAILABLE);
        assert_eq!(
            r,
            br#"{"id":7,"error":{"code":108,"message":"not available"}}"#
        );
        let r = encode_reply(
            5,
            &ReplyBody::History(HistoryResult {
                publications: vec![],
                epoch: "e".into(),
                offset: 0,
            }),
        );
        assert_eq!(
            r,
            br#"{"id":5,"history":{"publications":[],"epoch":"e","offset":0}}"#
        );
        let r = encode_reply(6, &ReplyBody::PresenceStats(PresenceStatsResult::default()));
        assert_eq!(
            r,
            br#"{"id":6,"presence_stats":{"num_clients":0,"num_users":0}}"#
        );
    }

    #[test]
    fn raw_strips_newlines_and_rejects_garbage() {
        assert_eq!(
            raw_from_slice(b"{\n\"a\":\n1}").unwrap().get(),
            r#"{"a":1}"#
        );
        assert!(raw_from_slice(b"{nope").is_err());
    }
}
