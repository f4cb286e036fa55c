//! One connection's state: the [`Conn`] every command family works on, its
//! session behind one mutex (never held across an await), and the helpers the
//! families share (channel resolution, replies, failures).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use shared::channel::ChannelName;
use shared::codes::{
    DisconnectCode, ErrorCode, DISCONNECT_BAD_REQUEST, ERROR_BAD_REQUEST, ERROR_INTERNAL,
    ERROR_UNKNOWN_CHANNEL,
};
use shared::protocol::{self, ClientInfo, Raw, ReplyBody};
use tokio::time::Instant;

use crate::config::ChannelOptions;
use crate::hub::Subscriber;
use crate::node::Node;
use crate::outbound::Outbound;

/// Why a command did not succeed: an error reply, or the end of the connection.
#[derive(Debug)]
pub(crate) enum Failure {
    Error(ErrorCode),
    Disconnect(DisconnectCode),
}

impl From<ErrorCode> for Failure {
    fn from(e: ErrorCode) -> Self {
        Failure::Error(e)
    }
}

impl From<DisconnectCode> for Failure {
    fn from(d: DisconnectCode) -> Self {
        Failure::Disconnect(d)
    }
}

pub(crate) type Outcome<T> = Result<T, Failure>;

/// A broker call failed: the client gets the temporary internal error (its SDK
/// retries).
pub(crate) fn internal(e: fanout::BrokerError) -> Failure {
    tracing::warn!(error = %e, "broker call failed");
    Failure::Error(ERROR_INTERNAL)
}

/// Seconds from `now` to `expire_at`, as the protocol's `ttl` (at least 1).
pub(crate) fn ttl_secs(expire_at: u64, now: u64) -> u32 {
    expire_at.saturating_sub(now).clamp(1, u32::MAX as u64) as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for `connect`.
    Connecting,
    Connected,
    /// `connect` was answered with an error: any further command is a violation.
    Failed,
}

/// One subscription of this connection.
pub(crate) struct Sub {
    pub(crate) entry: Arc<Subscriber>,
    /// How this connection appears in the room (presence, join/leave, publisher).
    pub(crate) info: ClientInfo,
    /// Made by the server from the `channels` claim, not by a subscribe command.
    pub(crate) server_side: bool,
    pub(crate) presence: bool,
    pub(crate) join_leave: bool,
    /// When the subscription ends unless refreshed (token expiry plus grace).
    pub(crate) expires: Option<Instant>,
}

pub(crate) struct Session {
    pub(crate) phase: Phase,
    pub(crate) user: Arc<str>,
    pub(crate) conn_info: Option<Raw>,
    /// When the connection is closed with 3005 unless refreshed.
    pub(crate) expires: Option<Instant>,
    pub(crate) subs: HashMap<Arc<str>, Sub>,
    pub(crate) connect_deadline: Instant,
    pub(crate) next_ping: Option<Instant>,
    /// Set while a ping waits for its pong.
    pub(crate) pong_deadline: Option<Instant>,
    /// Publish token bucket.
    pub(crate) publish_tokens: f64,
    pub(crate) publish_refilled: Instant,
    /// Cached earliest timer; recomputed when due or when `timers_dirty`.
    pub(crate) next_timer: Instant,
    pub(crate) timers_dirty: bool,
}

/// One client connection: its mailbox, identity and session.
pub struct Conn {
    pub(crate) node: Arc<Node>,
    pub(crate) out: Arc<Outbound>,
    /// Connection id (a UUID), `client` in client info.
    pub(crate) client: Arc<str>,
    pub(crate) session: Mutex<Session>,
}

impl Conn {
    /// A new connection, waiting for its `connect` command.
    pub(crate) fn new(node: Arc<Node>) -> Arc<Self> {
        let now = Instant::now();
        let cfg = &node.config.client;
        let out = Arc::new(Outbound::new(cfg.queue_max_bytes, node.metrics.clone()));
        let session = Session {
            phase: Phase::Connecting,
            user: "".into(),
            conn_info: None,
            expires: None,
            subs: HashMap::new(),
            connect_deadline: now + cfg.connect_timeout,
            next_ping: None,
            pong_deadline: None,
            publish_tokens: cfg.publish_burst as f64,
            publish_refilled: now,
            next_timer: now,
            timers_dirty: true,
        };
        Arc::new(Conn {
            node,
            out,
            client: uuid::Uuid::new_v4().to_string().into(),
            session: Mutex::new(session),
        })
    }

    pub(crate) fn reply(&self, id: u32, body: ReplyBody) {
        self.out
            .push(Bytes::from(protocol::encode_reply(id, &body)));
    }

    pub(crate) fn user(&self) -> Arc<str> {
        self.session.lock().user.clone()
    }

    /// Validate a channel name and find its options.
    pub(crate) fn resolve<'a>(
        &'a self,
        channel: &'a str,
    ) -> Outcome<(ChannelName<'a>, &'a ChannelOptions)> {
        if channel.is_empty() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        if channel.len() > self.node.config.client.max_channel_length {
            return Err(ERROR_BAD_REQUEST.into());
        }
        let name = ChannelName::parse(channel);
        let opts = self
            .node
            .config
            .channel_options(name.namespace)
            .ok_or(ERROR_UNKNOWN_CHANNEL)?;
        Ok((name, opts))
    }

    /// This connection's hub entry in `channel`, if subscribed.
    pub(crate) fn sub_entry(&self, channel: &str) -> Option<Arc<Subscriber>> {
        self.session
            .lock()
            .subs
            .get(channel)
            .map(|s| s.entry.clone())
    }

    /// This connection's subscription info in `channel`, if subscribed.
    pub(crate) fn subscribed_info(&self, channel: &str) -> Option<ClientInfo> {
        self.session
            .lock()
            .subs
            .get(channel)
            .map(|s| s.info.clone())
    }
}
