//! The node-to-node envelope: what one node publishes on a room's broker channel and
//! every subscribed node decodes. MessagePack (rmp-serde), because it is compact and
//! carries the client's raw JSON payload as bytes without re-escaping it.

use serde::{Deserialize, Serialize};

/// One event on a room's channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    /// A publication, with its position when the room keeps history (offset 0 otherwise).
    Publication {
        offset: u64,
        epoch: String,
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
        info: Option<EnvelopeClientInfo>,
        tags: Vec<(String, String)>,
    },
    Join(EnvelopeClientInfo),
    Leave(EnvelopeClientInfo),
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
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(rmp_serde::from_slice(bytes)?)
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
    fn publication_round_trips() {
        let env = Envelope::Publication {
            offset: 7,
            epoch: "abcd".into(),
            data: br#"{"text":"hi"}"#.to_vec(),
            info: Some(EnvelopeClientInfo {
                user: "42".into(),
                client: "c1".into(),
                conn_info: Some(br#"{"name":"Ann"}"#.to_vec()),
                chan_info: None,
            }),
            tags: vec![("k".into(), "v".into())],
        };
        let bytes = env.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(b"\xff\x00garbage").is_err());
    }
}
