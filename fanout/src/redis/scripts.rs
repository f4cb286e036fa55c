//! The Lua scripts the engine runs, each on one room's slot. Their text lives in
//! `lua/*.lua`; their arguments are documented here.

use redis::Script;

/// What the history script returns: top offset, epoch, entry ids, entry bodies.
pub(super) type HistoryReply = (u64, String, Vec<String>, Vec<Vec<u8>>);

pub(super) struct Scripts {
    /// KEYS: meta hash, stream. ARGV: 1 channel, 2 envelope, 3 stream length,
    /// 4 stream TTL, 5 meta TTL, 6 new epoch, 7 `publish` or `spublish`, 8 this
    /// publish's id, 9 `1` on a retry.
    /// Increments the offset, creates the epoch when absent, appends to the stream
    /// (field `d` the envelope, `i` the id) and publishes
    /// `<offset>:<epoch>:<envelope>`; returns `{offset, epoch}`. A retry whose id is
    /// in the stream returns that entry's position instead of running again.
    pub(super) publish: Script,
    /// KEYS: meta hash, stream.
    /// ARGV: 1 new epoch ("" = do not create), 2 meta ttl, 3 since offset, 4 since epoch,
    /// 5 count (-1 all, 0 none), 6 reverse (1/0), 7 since given (1/0).
    pub(super) history: Script,
    /// KEYS: meta hash. ARGV: 1 the epoch the node followed, 2 a new epoch.
    /// Replaces the epoch when it is still ARGV[1]; returns `{epoch, top}` ("" for
    /// the epoch when the room has no stream).
    pub(super) epoch_bump: Script,
    /// The presence scripts take KEYS: entries, expiries, user counts.
    /// Put presence entries of one room: ARGV[1] is the TTL in seconds, then client
    /// id, user and info triples. Used for one new entry and for a node's periodic
    /// refresh; only a new entry counts for its user.
    pub(super) presence_add: Script,
    /// Remove one presence entry: ARGV 1 client id, 2 user.
    pub(super) presence_remove: Script,
    /// Drop expired presence entries and return the rest (client id, info pairs).
    pub(super) presence_get: Script,
    /// Drop expired presence entries and return `{clients, users}`: two counts,
    /// not a read of every entry.
    pub(super) presence_stats: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            publish: Script::new(include_str!("lua/publish.lua")),
            history: Script::new(include_str!("lua/history.lua")),
            epoch_bump: Script::new(include_str!("lua/epoch_bump.lua")),
            presence_add: Script::new(include_str!("lua/presence_add.lua")),
            presence_remove: Script::new(include_str!("lua/presence_remove.lua")),
            presence_get: Script::new(concat!(
                include_str!("lua/presence_purge.lua"),
                include_str!("lua/presence_get.lua")
            )),
            presence_stats: Script::new(concat!(
                include_str!("lua/presence_purge.lua"),
                include_str!("lua/presence_stats.lua")
            )),
        }
    }
}
