//! The node-to-node envelope: what one node publishes on a room's broker channel and
//! every subscribed node decodes.
//!
//! A channel message is `<offset>:<epoch>:<body>`: a short text header, because the
//! offset and epoch of a publication with history are assigned inside Redis by the
//! publish script, followed by the [`Envelope`] in MessagePack (rmp-serde), which
//! carries the client's raw JSON as bytes without re-escaping it. Offset 0 and an
//! empty epoch mean "no history".

use serde::{Deserialize, Serialize};

use crate::protocol::{raw_from_slice, ClientInfo, Publication, Raw, StreamPosition, Tags};

/// One event on a room's channel (the body of a channel message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    Publication {
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
        info: Option<EnvelopeClientInfo>,
        tags: Vec<(String, String)>,
    },
    Join(EnvelopeClientInfo),
    Leave(EnvelopeClientInfo),
    /// Node-to-node control, on the control channel.
    Control(Control),
}

/// Cluster-wide commands and node heartbeats. Commands for a user's connections
/// name the user and, optionally, one connection (`client`; empty: all of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// A node's heartbeat, for the node registry.
    Node(NodeInfo),
    /// Close the connections of `user` with this code and reason, except those in
    /// `whitelist`.
    Disconnect {
        user: String,
        code: u16,
        reason: String,
        #[serde(default)]
        client: String,
        #[serde(default)]
        whitelist: Vec<String>,
    },
    /// End the subscriptions of `user` to `channel` (unsubscribe push 2000).
    Unsubscribe {
        user: String,
        channel: String,
        #[serde(default)]
        client: String,
    },
    /// Subscribe the connections of a user to a channel (a `subscribe` push).
    Subscribe(Box<SubscribeCommand>),
    /// Change the expiry or info of a user's connections, or expire them.
    Refresh(RefreshCommand),
    /// Every node answers with its rooms matching `pattern` (the `channels` API).
    ChannelsQuery {
        /// Unique per query on the asking node.
        id: u64,
        /// The asking node's id: replies are addressed to it.
        from: String,
        pattern: String,
    },
    /// One node's answer to a [`Control::ChannelsQuery`]: room and local subscribers.
    ChannelsReply {
        id: u64,
        to: String,
        channels: Vec<(String, u32)>,
    },
}

/// A server-side subscription made through the server API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeCommand {
    pub user: String,
    /// Only this connection; empty: every connection of the user.
    pub client: String,
    pub channel: String,
    /// Unix seconds at which the subscription expires; 0 never.
    pub expire_at: u64,
    /// `chan_info` of the subscriber, JSON.
    #[serde(with = "opt_bytes_compat")]
    pub info: Option<Vec<u8>>,
    /// Returned to the subscriber in the `subscribe` push, JSON.
    #[serde(with = "opt_bytes_compat")]
    pub data: Option<Vec<u8>>,
    /// Recover from this position (positioned and recoverable).
    pub recover_since: Option<StreamPosition>,
    /// Namespace options this subscription overrides.
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub force_recovery: Option<bool>,
    pub force_positioning: Option<bool>,
}

/// A server-side refresh of a user's connections, through the server API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshCommand {
    pub user: String,
    /// Only this connection; empty: every connection of the user.
    pub client: String,
    /// Close the connections as expired (3005).
    pub expired: bool,
    /// New expiry, unix seconds; 0 leaves it as it is.
    pub expire_at: u64,
    /// New connection info, JSON.
    #[serde(with = "opt_bytes_compat")]
    pub info: Option<Vec<u8>>,
}

impl SubscribeCommand {
    pub fn info(&self) -> Result<Option<Raw>, EnvelopeError> {
        bytes_raw(&self.info)
    }

    pub fn data(&self) -> Result<Option<Raw>, EnvelopeError> {
        bytes_raw(&self.data)
    }
}

impl RefreshCommand {
    pub fn info(&self) -> Result<Option<Raw>, EnvelopeError> {
        bytes_raw(&self.info)
    }
}

/// JSON as the bytes an envelope carries.
pub fn raw_to_bytes(raw: &Option<Raw>) -> Option<Vec<u8>> {
    raw_bytes(raw)
}

/// What a node says about itself in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique per process start.
    pub id: String,
    pub name: String,
    pub version: String,
    pub uptime_secs: u64,
    pub num_clients: u64,
    pub num_users: u64,
    pub num_subs: u64,
    pub num_rooms: u64,
    /// Forget this node if no heartbeat arrives within this (a few intervals).
    pub ttl_ms: u64,
}

/// Publisher or member info in an envelope. Raw JSON fields travel as bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeClientInfo {
    pub user: String,
    pub client: String,
    #[serde(with = "opt_bytes_compat")]
    pub conn_info: Option<Vec<u8>>,
    #[serde(with = "opt_bytes_compat")]
    pub chan_info: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("encode envelope: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decode envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("bad channel message header")]
    Header,
    #[error("embedded JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn raw_bytes(raw: &Option<Raw>) -> Option<Vec<u8>> {
    raw.as_ref().map(|r| r.get().as_bytes().to_vec())
}

fn bytes_raw(bytes: &Option<Vec<u8>>) -> Result<Option<Raw>, EnvelopeError> {
    Ok(bytes.as_deref().map(raw_from_slice).transpose()?)
}

impl From<&ClientInfo> for EnvelopeClientInfo {
    fn from(i: &ClientInfo) -> Self {
        EnvelopeClientInfo {
            user: i.user.clone(),
            client: i.client.clone(),
            conn_info: raw_bytes(&i.conn_info),
            chan_info: raw_bytes(&i.chan_info),
        }
    }
}

impl EnvelopeClientInfo {
    pub fn to_client_info(&self) -> Result<ClientInfo, EnvelopeError> {
        Ok(ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: bytes_raw(&self.conn_info)?,
            chan_info: bytes_raw(&self.chan_info)?,
        })
    }
}

impl Envelope {
    pub fn publication(p: &Publication) -> Self {
        Envelope::Publication {
            data: p.data.get().as_bytes().to_vec(),
            info: p.info.as_ref().map(EnvelopeClientInfo::from),
            tags: p.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The publication this envelope carries, at `offset`.
    pub fn to_publication(&self, offset: u64) -> Result<Option<Publication>, EnvelopeError> {
        let Envelope::Publication { data, info, tags } = self else {
            return Ok(None);
        };
        Ok(Some(Publication {
            data: raw_from_slice(data)?,
            info: info.as_ref().map(|i| i.to_client_info()).transpose()?,
            offset,
            tags: tags.iter().cloned().collect::<Tags>(),
        }))
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// A decoded channel message: position header and envelope body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage<'a> {
    pub offset: u64,
    pub epoch: &'a str,
    pub body: &'a [u8],
}

impl<'a> ChannelMessage<'a> {
    /// Split `<offset>:<epoch>:<body>`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let colon = |from: usize| {
            bytes[from..]
                .iter()
                .position(|&b| b == b':')
                .map(|i| i + from)
        };
        let a = colon(0).ok_or(EnvelopeError::Header)?;
        let b = colon(a + 1).ok_or(EnvelopeError::Header)?;
        let offset = std::str::from_utf8(&bytes[..a])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(EnvelopeError::Header)?;
        let epoch = std::str::from_utf8(&bytes[a + 1..b]).map_err(|_| EnvelopeError::Header)?;
        Ok(ChannelMessage {
            offset,
            epoch,
            body: &bytes[b + 1..],
        })
    }

    /// `0::<body>`: a message without a stream position.
    pub fn unpositioned(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 3);
        out.extend_from_slice(b"0::");
        out.extend_from_slice(body);
        out
    }
}

/// Serialize `Vec<u8>` as a MessagePack bin (not an array of integers).
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(super::ByteBuf::deserialize(d)?.0)
    }
}

mod opt_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&super::BytesRef(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<super::ByteBuf>::deserialize(d)?.map(|b| b.0))
    }
}

struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_round_trips_through_a_channel_message() {
        let p = Publication {
            data: raw_from_slice(br#"{"text":"hi"}"#).unwrap(),
            info: Some(ClientInfo {
                user: "42".into(),
                client: "c1".into(),
                conn_info: Some(raw_from_slice(br#"{"name":"Ann"}"#).unwrap()),
                chan_info: None,
            }),
            offset: 0,
            tags: [("k".to_string(), "v".to_string())].into_iter().collect(),
        };
        let body = Envelope::publication(&p).encode().unwrap();
        let mut msg = b"17:abcd:".to_vec();
        msg.extend_from_slice(&body);
        let m = ChannelMessage::parse(&msg).unwrap();
        assert_eq!((m.offset, m.epoch), (17, "abcd"));
        let back = Envelope::decode(m.body)
            .unwrap()
            .to_publication(m.offset)
            .unwrap()
            .unwrap();
        assert_eq!(back.offset, 17);
        assert_eq!(back.data.get(), r#"{"text":"hi"}"#);
        assert_eq!(
            back.info.unwrap().conn_info.unwrap().get(),
            r#"{"name":"Ann"}"#
        );
        assert_eq!(back.tags.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn control_round_trips() {
        let c = Envelope::Control(Control::Disconnect {
            user: "42".into(),
            code: 3503,
            reason: "bye".into(),
            client: "c1".into(),
            whitelist: vec!["c2".into()],
        });
        assert_eq!(Envelope::decode(&c.encode().unwrap()).unwrap(), c);
        let s = Envelope::Control(Control::Subscribe(Box::new(SubscribeCommand {
            user: "42".into(),
            channel: "news".into(),
            info: Some(br#"{"a":1}"#.to_vec()),
            recover_since: Some(StreamPosition {
                offset: 3,
                epoch: "e".into(),
            }),
            join_leave: Some(true),
            ..Default::default()
        })));
        let back = Envelope::decode(&s.encode().unwrap()).unwrap();
        assert_eq!(back, s);
        let Envelope::Control(Control::Subscribe(cmd)) = back else {
            panic!("not a subscribe");
        };
        assert_eq!(cmd.info().unwrap().unwrap().get(), r#"{"a":1}"#);
    }

    #[test]
    fn unpositioned_header() {
        let msg = ChannelMessage::unpositioned(b"xyz");
        let m = ChannelMessage::parse(&msg).unwrap();
        assert_eq!((m.offset, m.epoch, m.body), (0, "", &b"xyz"[..]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(b"\xff\x00garbage").is_err());
        for bad in [&b""[..], b"12", b"x:e:body", b"1:e", b":"] {
            assert!(ChannelMessage::parse(bad).is_err(), "{bad:?}");
        }
    }
}
