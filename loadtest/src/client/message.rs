//! The server's messages as the harness reads them: frames split on `\n`, pings
//! (`{}`), and replies and pushes decoded (borrowed from the frame) into the few
//! fields used; also the subscription options of a session.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The messages of one text frame (joined by `\n`; a trailing `\n` is tolerated).
pub fn messages(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = frame;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (msg, tail) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        if !msg.is_empty() {
            return Some(msg);
        }
    })
}

/// Whether a message is the server's ping, `{}` (the gateway's exact encoding).
pub fn is_ping(msg: &[u8]) -> bool {
    msg == b"{}"
}

/// One server message: a reply (`id` > 0), a push, or a ping (neither). Only the
/// fields the harness reads are decoded; borrowed from the frame, no copies.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    #[serde(default)]
    pub id: u32,
    #[serde(default, borrow)]
    pub error: Option<ReplyError<'a>>,
    #[serde(default, borrow)]
    pub push: Option<Push<'a>>,
    #[serde(default)]
    pub connect: Option<ConnectResult>,
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
}

impl<'a> Reply<'a> {
    /// Decode one message.
    pub fn parse(msg: &'a [u8]) -> Result<Reply<'a>, serde_json::Error> {
        serde_json::from_slice(msg)
    }
}

#[derive(Debug, Deserialize)]
pub struct ReplyError<'a> {
    #[serde(default)]
    pub code: u32,
    #[serde(default, borrow)]
    pub message: Cow<'a, str>,
    /// The server says a retry may succeed (error 100 while Redis is away).
    #[serde(default)]
    pub temporary: bool,
}

#[derive(Debug, Deserialize)]
pub struct Push<'a> {
    #[serde(default, borrow)]
    pub channel: Cow<'a, str>,
    #[serde(rename = "pub", default, borrow)]
    pub publication: Option<Publication<'a>>,
    #[serde(default)]
    pub unsubscribe: Option<Unsubscribed>,
}

/// A server-side unsubscribe push; from code 2500 the SDKs resubscribe.
#[derive(Debug, Deserialize)]
pub struct Unsubscribed {
    #[serde(default)]
    pub code: u32,
}

#[derive(Debug, Deserialize)]
pub struct Publication<'a> {
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// Position in the room's stream; 0 when the room keeps no history.
    #[serde(default)]
    pub offset: u64,
}

/// The parts of the connect result the harness uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectResult {
    /// Connection id given by the server.
    #[serde(default)]
    pub client: String,
    /// Whether the server expects `{}` in answer to its pings.
    #[serde(default)]
    pub pong: bool,
}

/// The parts of a subscribe result the harness uses (see `docs/protocol.md`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscribeResult {
    #[serde(default)]
    pub recoverable: bool,
    /// The recovery asked for succeeded: `publications` are exactly the missed ones.
    #[serde(default)]
    pub recovered: bool,
    #[serde(default)]
    pub was_recovering: bool,
    #[serde(default)]
    pub epoch: String,
    /// The room's top offset; after a successful recovery, the offset asked for.
    #[serde(default)]
    pub offset: u64,
    /// Recovered publications, in order.
    #[serde(default)]
    pub publications: Vec<RecoveredPublication>,
}

/// A publication returned in a subscribe reply.
#[derive(Debug, Clone, Deserialize)]
pub struct RecoveredPublication {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub offset: u64,
}

/// A position in a room's stream: the last offset seen, in its epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// One channel of a session and how to subscribe to it.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    pub channel: &'a str,
    /// Ask for a recoverable subscription (`recoverable:true`): the reply carries
    /// the room's position. Default false.
    pub recoverable: bool,
    /// Recover from this position (`recover:true`, `offset`, `epoch`); needs
    /// `recoverable`. Default none.
    pub recover_from: Option<Position>,
}

impl<'a> Subscription<'a> {
    /// A plain subscription to `channel`.
    pub fn to(channel: &'a str) -> Self {
        Subscription {
            channel,
            recoverable: false,
            recover_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_decodes_pushes() {
        let frame = b"{\"id\":3,\"publish\":{}}\n{}\n{\"push\":{\"channel\":\"r\",\"pub\":{\"data\":{\"s\":1},\"offset\":7}}}\n";
        let msgs: Vec<&[u8]> = messages(frame).collect();
        assert_eq!(msgs.len(), 3);
        assert!(is_ping(msgs[1]));
        assert_eq!(Reply::parse(msgs[0]).unwrap().id, 3);
        let push = Reply::parse(msgs[2]).unwrap().push.unwrap();
        assert_eq!(push.channel, "r");
        let p = push.publication.unwrap();
        assert_eq!(p.offset, 7);
        assert_eq!(p.data.unwrap().get(), "{\"s\":1}");
        let err =
            Reply::parse(b"{\"id\":4,\"error\":{\"code\":111,\"message\":\"too many requests\"}}")
                .unwrap();
        assert_eq!(err.error.unwrap().code, 111);
    }
}
