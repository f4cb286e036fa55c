//! Names in Redis: the keys and channel of a room (all under the hash tag `{room}`,
//! so that in a cluster they share one slot), the control room, and the
//! hash that spreads rooms over workers and pub/sub connections.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// The room whose channel carries node heartbeats and cluster-wide commands.
/// Client publications there are ignored as control (they are not `Control`
/// envelopes), so sharing the name with a client channel is harmless.
pub(super) const CONTROL_ROOM: &str = ".control";

/// Which of `n` (at least one) buckets `s` falls in.
pub(super) fn hash_index(s: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    (h.finish() as usize) % n.max(1)
}

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: String) -> Self {
        Keys { prefix }
    }

    /// The room's channel: `<prefix>{room}`.
    pub(super) fn channel(&self, room: &str) -> String {
        format!("{}{{{}}}", self.prefix, room)
    }

    /// `<prefix>{room}.<suffix>`.
    fn key(&self, room: &str, suffix: &str) -> String {
        format!("{}{{{}}}.{}", self.prefix, room, suffix)
    }

    /// The stream of publications, `<prefix>{room}.s` (entry id `<offset>-0`,
    /// field `d` = envelope).
    pub(super) fn stream_key(&self, room: &str) -> String {
        self.key(room, "s")
    }

    /// The history script's keys: the meta hash `<prefix>{room}.m` (`t` top
    /// offset, `e` epoch) and the stream.
    pub(super) fn history_keys(&self, room: &str) -> [String; 2] {
        [self.key(room, "m"), self.stream_key(room)]
    }

    /// The presence scripts' keys: `<prefix>{room}.p` (client id -> info),
    /// `<prefix>{room}.pe` (expiry of `<user>\n<client>`, a sorted set) and
    /// `<prefix>{room}.pu` (user -> its number of entries, so stats are counts).
    pub(super) fn presence_keys(&self, room: &str) -> [String; 3] {
        [
            self.key(room, "p"),
            self.key(room, "pe"),
            self.key(room, "pu"),
        ]
    }

    /// The room of a channel name, if it is one of ours.
    pub(super) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_room_hash_tag() {
        let k = Keys::new("gw".into());
        assert_eq!(k.channel("a"), "gw{a}");
        assert_eq!(
            k.history_keys("a"),
            ["gw{a}.m".to_owned(), "gw{a}.s".to_owned()]
        );
        assert_eq!(
            k.presence_keys("a"),
            [
                "gw{a}.p".to_owned(),
                "gw{a}.pe".to_owned(),
                "gw{a}.pu".to_owned()
            ]
        );
        assert_eq!(k.stream_key("a"), "gw{a}.s");
    }

    #[test]
    fn room_of_channel_inverts_channel() {
        let k = Keys::new("gw".into());
        assert_eq!(k.room_of_channel(&k.channel("room:1")), Some("room:1"));
        assert_eq!(k.room_of_channel("xx{room}"), None);
        assert_eq!(k.room_of_channel("gwroom"), None);
    }

    #[test]
    fn hash_index_stays_in_range() {
        assert_eq!(hash_index("a", 0), 0);
        assert!((0..100).all(|i| hash_index(&i.to_string(), 3) < 3));
    }
}
