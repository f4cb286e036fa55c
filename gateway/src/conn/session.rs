//! One connection's state: the [`Conn`] every command family works on, its
//! session behind one mutex (never held across an await), and the helpers the
//! families share (channel resolution, replies, failures).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use shared::channel::ChannelName;
use shared::codes::{
    DisconnectCode, ErrorCode, DISCONNECT_BAD_REQUEST, DISCONNECT_FORCE, ERROR_BAD_REQUEST,
    ERROR_INTERNAL, ERROR_UNKNOWN_CHANNEL,
};
use shared::protocol::{self, ClientInfo, ErrorBody, Raw, ReplyBody};
use shared::proxy::{Decision, ProxyDisconnect};
use tokio::time::Instant;

use super::bucket::TokenBucket;
use crate::config::{ChannelError, ChannelOptions};
use crate::hub::Subscriber;
use crate::node::Node;
use crate::outbound::{Close, Outbound};
use crate::proxy::{CallError, Headers, Kind};

/// Why a command did not succeed: an error reply, or the end of the connection.
#[derive(Debug)]
pub(crate) enum Failure {
    Error(ErrorCode),
    /// An error the application backend chose (a proxy's reply).
    Custom(ErrorBody),
    Disconnect(DisconnectCode),
    /// A close the application backend chose.
    Close(Close),
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

/// A proxy call gave no usable answer: the client gets the temporary internal
/// error, so its SDK retries.
pub(crate) fn proxy_failed(kind: Kind, client: &str, e: CallError) -> Failure {
    tracing::warn!(proxy = kind.name(), %client, kind = e.kind(), error = %e, "proxy call failed");
    Failure::Error(ERROR_INTERNAL)
}

/// What the backend decided, as the command's outcome.
pub(crate) fn allowed<T>(decision: Decision<T>) -> Outcome<T> {
    match decision {
        Decision::Allow(t) => Ok(t),
        Decision::Error(e) => Err(Failure::Custom(ErrorBody {
            code: e.code,
            message: Cow::Owned(e.message),
            temporary: e.temporary,
        })),
        Decision::Disconnect(d) => Err(Failure::Close(backend_close(d))),
    }
}

/// The backend's close code, if it is one a client may be sent (3000-4999);
/// otherwise 3503 "force disconnect" with its reason.
pub(crate) fn backend_close(d: ProxyDisconnect) -> Close {
    match u16::try_from(d.code) {
        Ok(code @ 3000..=4999) => Close {
            code,
            reason: Cow::Owned(d.reason),
        },
        _ => Close {
            code: DISCONNECT_FORCE.code,
            reason: Cow::Owned(d.reason),
        },
    }
}

/// A payload the backend sent (`field` or `b64field`), or the temporary error
/// when it is not JSON.
pub(crate) fn backend_payload(
    kind: Kind,
    field: &str,
    raw: &Option<Raw>,
    b64: &str,
) -> Outcome<Option<Raw>> {
    shared::api::payload(field, raw, b64).map_err(|e| {
        tracing::warn!(proxy = kind.name(), error = %e.message, "proxy reply has a bad payload");
        Failure::Error(ERROR_INTERNAL)
    })
}

/// Unix seconds from a backend or API field (0 or less: none).
pub(crate) fn expire_at(unix: i64) -> Option<u64> {
    u64::try_from(unix).ok().filter(|&t| t > 0)
}

/// Longest expiry honoured: a token's or backend's `exp` further away than this is
/// taken as this far (an `Instant` that far out would overflow).
const MAX_EXPIRY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When something that expires at unix second `expire_at` is due here, `grace`
/// after it. Past expiries are due now; far ones are clamped to [`MAX_EXPIRY`].
pub(crate) fn due_at(expire_at: u64, now_unix: u64, grace: Duration) -> Instant {
    let left = Duration::from_secs(expire_at.saturating_sub(now_unix)).min(MAX_EXPIRY);
    Instant::now() + left + grace
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
    /// At expiry the node asks the sub_refresh proxy instead of ending it.
    pub(crate) proxy_refresh: bool,
}

pub(crate) struct Session {
    pub(crate) phase: Phase,
    pub(crate) user: Arc<str>,
    pub(crate) conn_info: Option<Raw>,
    /// When the connection is closed with 3005 unless refreshed (or, with
    /// `proxy_refresh`, when the refresh proxy is asked).
    pub(crate) expires: Option<Instant>,
    /// The connect proxy admitted this connection and a refresh proxy is set: the
    /// node renews its expiry itself.
    pub(crate) proxy_refresh: bool,
    pub(crate) subs: HashMap<Arc<str>, Sub>,
    pub(crate) connect_deadline: Instant,
    pub(crate) next_ping: Option<Instant>,
    /// Set while a ping waits for its pong.
    pub(crate) pong_deadline: Option<Instant>,
    /// Pings sent and not answered yet (more than one when pongs wait unread
    /// behind the node's backlog while the next ping goes out).
    pub(crate) pings_unanswered: u8,
    /// Publications (`client.publish_rate_per_sec`).
    pub(crate) publish_bucket: TokenBucket,
    /// Every command with an id (`client.command_rate_per_sec`).
    pub(crate) command_bucket: TokenBucket,
    /// Subscription tokens that failed verification (`client.max_invalid_sub_tokens`).
    pub(crate) invalid_sub_tokens: u32,
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
    /// The upgrade request's headers that proxy calls forward (only when a proxy
    /// is configured).
    pub(crate) headers: Option<Headers>,
    pub(crate) session: Mutex<Session>,
}

impl Conn {
    /// A new connection, waiting for its `connect` command.
    pub(crate) fn new(node: Arc<Node>, headers: Option<Headers>) -> Arc<Self> {
        let now = Instant::now();
        let cfg = &node.config.client;
        let out = Arc::new(Outbound::new(cfg.queue_max_bytes, node.metrics.clone()));
        let session = Session {
            phase: Phase::Connecting,
            user: "".into(),
            conn_info: None,
            expires: None,
            proxy_refresh: false,
            subs: HashMap::new(),
            connect_deadline: now + cfg.connect_timeout,
            next_ping: None,
            pong_deadline: None,
            pings_unanswered: 0,
            publish_bucket: TokenBucket::full(cfg.publish_burst, now),
            command_bucket: TokenBucket::full(cfg.command_burst, now),
            invalid_sub_tokens: 0,
            next_timer: now,
            timers_dirty: true,
        };
        Arc::new(Conn {
            node,
            out,
            client: uuid::Uuid::new_v4().to_string().into(),
            headers,
            session: Mutex::new(session),
        })
    }

    pub(crate) fn reply(&self, id: u32, body: ReplyBody) {
        self.out
            .push(Bytes::from(protocol::encode_reply(id, &body)));
    }

    /// How this connection appears to others outside any channel (a publication
    /// made without a subscription, through the publish proxy).
    pub(crate) fn client_info(&self) -> ClientInfo {
        let s = self.session.lock();
        ClientInfo {
            user: s.user.to_string(),
            client: self.client.to_string(),
            conn_info: s.conn_info.clone(),
            chan_info: None,
        }
    }

    pub(crate) fn user(&self) -> Arc<str> {
        self.session.lock().user.clone()
    }

    /// Validate a channel name and find its options.
    pub(crate) fn resolve<'a>(
        &'a self,
        channel: &'a str,
    ) -> Outcome<(ChannelName<'a>, &'a ChannelOptions)> {
        self.node
            .config
            .resolve_channel(channel)
            .map_err(|e| match e {
                ChannelError::Empty => DISCONNECT_BAD_REQUEST.into(),
                ChannelError::TooLong | ChannelError::BadCharacter => ERROR_BAD_REQUEST.into(),
                ChannelError::UnknownNamespace => ERROR_UNKNOWN_CHANNEL.into(),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_and_past_expiries_neither_overflow_nor_wait() {
        let now = 1_700_000_000;
        let far = due_at(u64::MAX, now, Duration::from_secs(25));
        assert!(far > Instant::now() + MAX_EXPIRY);
        assert!(due_at(now - 5, now, Duration::ZERO) <= Instant::now());
        assert_eq!(ttl_secs(u64::MAX, now), u32::MAX);
        assert_eq!(ttl_secs(now - 5, now), 1);
    }
}
