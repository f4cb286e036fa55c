//! One client connection: its session state and the commands it sends.
//!
//! The connection's task (in [`crate::ws`]) feeds frames to [`Conn::handle_frame`],
//! which handles the commands in order and enqueues replies on the connection's
//! [`Outbound`]. Between frames the same task writes what is queued and calls
//! [`Conn::poll_timers`] (connect timeout, pings, expiry) and
//! [`Conn::server_unsubscribe`]. Session state sits behind one mutex that
//! is never held across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout::HistoryQuery;
use parking_lot::Mutex;
use shared::auth::{unix_now, TokenError};
use shared::channel::ChannelName;
use shared::codes::*;
use shared::protocol::StreamPosition;
use shared::protocol::{
    self, ClientInfo, Command, ConnectRequest, ConnectResult, EmptyResult, HistoryRequest,
    HistoryResult, PresenceResult, PresenceStatsResult, Publication, PublishRequest, Raw,
    RefreshRequest, RefreshResult, ReplyBody, Request, SubRefreshRequest, SubRefreshResult,
    SubscribeRequest, SubscribeResult, SUBSCRIBE_FLAG_REJECT_UNRECOVERED,
};
use tokio::time::Instant;

use crate::config::ChannelOptions;
use crate::hub::Subscriber;
use crate::node::Node;
use crate::outbound::{Item, Outbound};

/// The server version reported in connect and refresh results.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a command did not succeed: an error reply, or the end of the connection.
#[derive(Debug)]
enum Failure {
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

type Outcome<T> = Result<T, Failure>;

fn internal(e: fanout::BrokerError) -> Failure {
    tracing::warn!(error = %e, "broker call failed");
    Failure::Error(ERROR_INTERNAL)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `connect`.
    Connecting,
    Connected,
    /// `connect` was answered with an error: any further command is a violation.
    Failed,
}

/// One subscription of this connection.
struct Sub {
    entry: Arc<Subscriber>,
    /// How this connection appears in the room (presence, join/leave, publisher).
    info: ClientInfo,
    /// Made by the server from the `channels` claim, not by a subscribe command.
    server_side: bool,
    presence: bool,
    join_leave: bool,
    /// When the subscription ends unless refreshed (token expiry plus grace).
    expires: Option<Instant>,
}

struct Session {
    phase: Phase,
    user: Arc<str>,
    conn_info: Option<Raw>,
    /// When the connection is closed with 3005 unless refreshed.
    expires: Option<Instant>,
    subs: HashMap<Arc<str>, Sub>,
    connect_deadline: Instant,
    next_ping: Option<Instant>,
    /// Set while a ping waits for its pong.
    pong_deadline: Option<Instant>,
    /// Publish token bucket.
    publish_tokens: f64,
    publish_refilled: Instant,
    /// Cached earliest timer; recomputed when due or when `timers_dirty`.
    next_timer: Instant,
    timers_dirty: bool,
}

/// What a subscription is asked to be, from a subscribe command or the server.
struct SubParams {
    recover: bool,
    offset: u64,
    epoch: String,
    positioned: bool,
    recoverable: bool,
    join_leave: bool,
    reject_unrecovered: bool,
    server_side: bool,
    chan_info: Option<Raw>,
    data: Option<Raw>,
    /// Unix seconds at which the subscription expires.
    expire_at: Option<u64>,
}

impl SubParams {
    fn server_side(recovery: Option<&SubscribeRequest>) -> Self {
        SubParams {
            recover: recovery.is_some_and(|r| r.recover),
            offset: recovery.map_or(0, |r| r.offset),
            epoch: recovery.map(|r| r.epoch.clone()).unwrap_or_default(),
            positioned: true,
            recoverable: true,
            join_leave: true,
            reject_unrecovered: false,
            server_side: true,
            chan_info: None,
            data: None,
            expire_at: None,
        }
    }
}

/// A subscription that has joined its room but whose reply is not queued yet.
struct Joined {
    entry: Arc<Subscriber>,
    result: SubscribeResult,
    position: Option<(u64, String)>,
    info: ClientInfo,
    join_leave: bool,
}

pub struct Conn {
    pub node: Arc<Node>,
    pub out: Arc<Outbound>,
    /// Connection id (a UUID), `client` in client info.
    pub client: Arc<str>,
    session: Mutex<Session>,
    /// This connection, for the hub's user index.
    me: std::sync::Weak<Conn>,
}

fn ttl_secs(expire_at: u64, now: u64) -> u32 {
    expire_at.saturating_sub(now).clamp(1, u32::MAX as u64) as u32
}

impl Conn {
    /// A new connection.
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(node, me.clone()))
    }

    fn build(node: Arc<Node>, me: std::sync::Weak<Conn>) -> Self {
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
        Conn {
            node,
            out,
            client: uuid::Uuid::new_v4().to_string().into(),
            session: Mutex::new(session),
            me,
        }
    }

    fn reply(&self, id: u32, body: ReplyBody) {
        self.out
            .push(Bytes::from(protocol::encode_reply(id, &body)));
    }

    /// Handle one text frame: one or more commands joined by `\n`. An `Err` is the
    /// code to close the connection with.
    pub async fn handle_frame(&self, frame: &[u8]) -> Result<(), DisconnectCode> {
        let lines = protocol::split_frame(frame).ok_or(DISCONNECT_BAD_REQUEST)?;
        for line in lines {
            let cmd = Command::parse(line).map_err(|_| DISCONNECT_BAD_REQUEST)?;
            self.handle_command(cmd).await?;
            if self.out.is_closing() {
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(&self, cmd: Command) -> Result<(), DisconnectCode> {
        let id = cmd.id;
        let phase = self.session.lock().phase;
        let request = cmd.request();
        let outcome = match (phase, request) {
            (Phase::Connecting, Some(Request::Connect(r))) if id > 0 => self.connect(id, r).await,
            (Phase::Connected, Some(Request::Send(_))) => Err(DISCONNECT_NOT_AVAILABLE.into()),
            // Id 0 without `send` is a pong, whatever else the command holds.
            (Phase::Connected, _) if id == 0 => self.pong(),
            (Phase::Connected, Some(request)) if id > 0 => self.dispatch(id, request).await,
            _ => Err(DISCONNECT_BAD_REQUEST.into()),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Error(e)) => {
                self.out.push(Bytes::from(protocol::encode_error(id, e)));
                Ok(())
            }
            Err(Failure::Disconnect(d)) => Err(d),
        }
    }

    async fn dispatch(&self, id: u32, request: Request) -> Outcome<()> {
        let body = match request {
            Request::Subscribe(r) => return self.subscribe(id, r).await,
            Request::Unsubscribe(r) => self.unsubscribe(&r.channel).await?,
            Request::Publish(r) => self.publish(r).await?,
            Request::Presence(r) => self.presence(&r.channel).await?,
            Request::PresenceStats(r) => self.presence_stats(&r.channel).await?,
            Request::History(r) => self.history(r).await?,
            Request::Refresh(r) => self.refresh(r)?,
            Request::SubRefresh(r) => self.sub_refresh(r)?,
            // No RPC handler is configured on this node.
            Request::Rpc(_) => return Err(ERROR_NOT_AVAILABLE.into()),
            Request::Connect(_) | Request::Ping | Request::Send(_) => {
                return Err(DISCONNECT_BAD_REQUEST.into())
            }
        };
        self.reply(id, body);
        Ok(())
    }

    fn user(&self) -> Arc<str> {
        self.session.lock().user.clone()
    }

    /// Validate a channel name and find its options.
    fn resolve<'a>(&'a self, channel: &'a str) -> Outcome<(ChannelName<'a>, &'a ChannelOptions)> {
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
    fn sub_entry(&self, channel: &str) -> Option<Arc<Subscriber>> {
        self.session
            .lock()
            .subs
            .get(channel)
            .map(|s| s.entry.clone())
    }

    /// This connection's subscription info in `channel`, if subscribed.
    fn subscribed_info(&self, channel: &str) -> Option<ClientInfo> {
        self.session
            .lock()
            .subs
            .get(channel)
            .map(|s| s.info.clone())
    }

    // -----------------------------------------------------------------------------
    // connect, refresh, pong
    // -----------------------------------------------------------------------------

    async fn connect(&self, id: u32, req: ConnectRequest) -> Outcome<()> {
        let outcome = self.try_connect(id, req).await;
        if let Err(Failure::Error(_)) = outcome {
            self.session.lock().phase = Phase::Failed;
        }
        outcome
    }

    async fn try_connect(&self, id: u32, req: ConnectRequest) -> Outcome<()> {
        let cfg = &self.node.config.client;
        let token = if req.token.is_empty() {
            if !cfg.allow_anonymous_connect_without_token {
                return Err(DISCONNECT_BAD_REQUEST.into());
            }
            shared::auth::ConnectToken::default()
        } else {
            match self.node.verifier.verify_connect(&req.token) {
                Ok(t) => t,
                Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(why)) => {
                    tracing::debug!(client = %self.client, %why, "invalid connection token");
                    return Err(DISCONNECT_INVALID_TOKEN.into());
                }
            }
        };
        let now_unix = unix_now();
        if token.expire_at.is_some_and(|t| t <= now_unix) {
            return Err(ERROR_EXPIRED.into());
        }
        // Validate every server-side channel before joining any.
        let mut channels: Vec<&str> = token.channels.iter().map(String::as_str).collect();
        channels.sort_unstable();
        channels.dedup();
        if channels.len() > cfg.max_subscriptions {
            return Err(ERROR_LIMIT_EXCEEDED.into());
        }
        let mut resolved = Vec::with_capacity(channels.len());
        for ch in &channels {
            let (_, opts) = self.resolve(ch).map_err(|f| match f {
                Failure::Disconnect(_) => Failure::Error(ERROR_BAD_REQUEST),
                e => e,
            })?;
            resolved.push((*ch, opts));
        }
        {
            let mut s = self.session.lock();
            s.user = token.user.as_str().into();
            s.conn_info = token.info.clone();
            s.expires = token.expire_at.map(|t| {
                Instant::now()
                    + Duration::from_secs(t.saturating_sub(now_unix))
                    + cfg.expired_close_delay
            });
        }
        let mut joined = Vec::with_capacity(resolved.len());
        for (ch, opts) in resolved {
            match self
                .join_room(ch, opts, SubParams::server_side(req.subs.get(ch)))
                .await
            {
                Ok(j) => joined.push(j),
                Err(f) => {
                    for j in joined {
                        self.drop_subscription(&j.entry, false).await;
                    }
                    return Err(f);
                }
            }
        }
        let mut result = ConnectResult {
            client: self.client.to_string(),
            version: VERSION.into(),
            ping: cfg.ping_interval.as_secs().max(1) as u32,
            pong: !cfg.pong_timeout.is_zero(),
            ..Default::default()
        };
        if let Some(exp) = token.expire_at {
            result.expires = true;
            result.ttl = ttl_secs(exp, now_unix);
        }
        let mut positions = Vec::with_capacity(joined.len());
        for j in &mut joined {
            positions.push(j.position.take());
            result
                .subs
                .insert(j.entry.channel.to_string(), std::mem::take(&mut j.result));
        }
        if !token.user.is_empty() {
            self.node.hub.add_user(&token.user, self.me.clone());
        }
        {
            let mut s = self.session.lock();
            s.phase = Phase::Connected;
            let interval = cfg.ping_interval;
            let first = rand::random_range(interval / 2..=interval);
            s.next_ping = Some(Instant::now() + first);
            s.timers_dirty = true;
        }
        let mut reply = Some(Bytes::from(protocol::encode_reply(
            id,
            &ReplyBody::Connect(result),
        )));
        if joined.is_empty() {
            self.out.push(reply.take().expect("bug: reply set above"));
        }
        for (j, pos) in joined.iter().zip(positions) {
            j.entry
                .finish_sync(reply.take(), pos.as_ref().map(|(o, e)| (*o, e.as_str())));
        }
        for j in &joined {
            self.announce_join(j).await;
        }
        Ok(())
    }

    fn pong(&self) -> Outcome<()> {
        let mut s = self.session.lock();
        if s.pong_deadline.take().is_none() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        s.timers_dirty = true;
        Ok(())
    }

    fn refresh(&self, req: RefreshRequest) -> Outcome<ReplyBody> {
        if req.token.is_empty() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        let token = match self.node.verifier.verify_connect(&req.token) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Err(DISCONNECT_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(DISCONNECT_INVALID_TOKEN.into()),
        };
        let now_unix = unix_now();
        let mut s = self.session.lock();
        if *s.user != *token.user {
            return Err(DISCONNECT_INVALID_TOKEN.into());
        }
        if token.expire_at.is_some_and(|t| t <= now_unix) {
            return Err(ERROR_EXPIRED.into());
        }
        s.conn_info = token.info;
        s.expires = token.expire_at.map(|t| {
            Instant::now()
                + Duration::from_secs(t - now_unix)
                + self.node.config.client.expired_close_delay
        });
        s.timers_dirty = true;
        Ok(ReplyBody::Refresh(RefreshResult {
            client: self.client.to_string(),
            version: VERSION.into(),
            expires: token.expire_at.is_some(),
            ttl: token.expire_at.map_or(0, |t| ttl_secs(t, now_unix)),
        }))
    }

    // -----------------------------------------------------------------------------
    // subscriptions
    // -----------------------------------------------------------------------------

    async fn subscribe(&self, id: u32, req: SubscribeRequest) -> Outcome<()> {
        let (name, opts) = self.resolve(&req.channel)?;
        if !req.delta.is_empty() && req.delta != "fossil" {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        {
            let s = self.session.lock();
            if s.subs.contains_key(req.channel.as_str()) {
                return Err(ERROR_ALREADY_SUBSCRIBED.into());
            }
            if s.subs.len() >= self.node.config.client.max_subscriptions {
                return Err(ERROR_LIMIT_EXCEEDED.into());
            }
        }
        let user = self.user();
        let mut params = SubParams {
            recover: req.recover,
            offset: req.offset,
            epoch: req.epoch,
            positioned: req.positioned,
            recoverable: req.recoverable,
            join_leave: req.join_leave,
            reject_unrecovered: req.flag & SUBSCRIBE_FLAG_REJECT_UNRECOVERED != 0,
            server_side: false,
            chan_info: None,
            data: None,
            expire_at: None,
        };
        if !req.token.is_empty() {
            let t = self.verify_sub_token(&req.token, &req.channel, &user)?;
            params.chan_info = t.info;
            params.data = t.data;
            params.expire_at = t.expire_at;
        } else if name.private {
            return Err(ERROR_PERMISSION_DENIED.into());
        } else if name.is_user_limited() {
            if !name.allows_user(&user) {
                return Err(ERROR_PERMISSION_DENIED.into());
            }
        } else if !opts.allow_subscribe {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        let mut j = self.join_room(&req.channel, opts, params).await?;
        let reply =
            protocol::encode_reply(id, &ReplyBody::Subscribe(std::mem::take(&mut j.result)));
        j.entry.finish_sync(
            Some(Bytes::from(reply)),
            j.position.as_ref().map(|(o, e)| (*o, e.as_str())),
        );
        self.announce_join(&j).await;
        Ok(())
    }

    /// Check a subscription token for `channel`. Invalid: 103; for another user,
    /// channel or connection: close 3500; expired: 109.
    fn verify_sub_token(
        &self,
        token: &str,
        channel: &str,
        user: &str,
    ) -> Outcome<shared::auth::SubscribeToken> {
        let t = match self.node.verifier.verify_subscribe(token) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(ERROR_PERMISSION_DENIED.into()),
        };
        if t.user != user
            || t.channel != channel
            || t.client.as_deref().is_some_and(|c| c != &*self.client)
        {
            return Err(DISCONNECT_INVALID_TOKEN.into());
        }
        if t.expire_at.is_some_and(|e| e <= unix_now()) {
            return Err(ERROR_EXPIRED.into());
        }
        Ok(t)
    }

    /// Join `channel`'s room: register locally, subscribe at the broker, read the
    /// stream position (recovering if asked) and record presence. The caller queues
    /// the reply through [`Subscriber::finish_sync`].
    async fn join_room(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        p: SubParams,
    ) -> Outcome<Joined> {
        let cfg = &self.node.config.client;
        let history = opts.history();
        let recoverable = history.is_some() && (p.recoverable || opts.force_recovery);
        let positioned = history.is_some() && (recoverable || p.positioned);
        let join_leave = opts.join_leave && p.join_leave;
        let channel: Arc<str> = channel.into();
        let entry = Arc::new(Subscriber::new(
            channel.clone(),
            self.out.clone(),
            join_leave,
            positioned,
        ));
        let now_unix = unix_now();
        let (info, expires) = {
            let mut s = self.session.lock();
            let info = ClientInfo {
                user: s.user.to_string(),
                client: self.client.to_string(),
                conn_info: s.conn_info.clone(),
                chan_info: p.chan_info.clone(),
            };
            let expires = p.expire_at.map(|t| {
                Instant::now()
                    + Duration::from_secs(t.saturating_sub(now_unix))
                    + cfg.expired_sub_close_delay
            });
            s.subs.insert(
                channel.clone(),
                Sub {
                    entry: entry.clone(),
                    info: info.clone(),
                    server_side: p.server_side,
                    presence: opts.presence,
                    join_leave: opts.join_leave,
                    expires,
                },
            );
            s.timers_dirty |= expires.is_some();
            (info, expires)
        };
        self.node.hub.add(entry.clone());
        let synced = self
            .sync_room(&channel, opts, &p, positioned, recoverable)
            .await;
        let synced = match synced {
            Ok(v) => v,
            Err(f) => {
                self.drop_subscription(&entry, false).await;
                return Err(f);
            }
        };
        if opts.presence {
            if let Err(e) = self.node.broker.presence_add(&channel, &info).await {
                self.drop_subscription(&entry, false).await;
                return Err(internal(e));
            }
        }
        let (mut result, position) = synced;
        result.data = p.data;
        if let (Some(t), Some(_)) = (p.expire_at, expires) {
            result.expires = true;
            result.ttl = ttl_secs(t, now_unix);
        }
        Ok(Joined {
            entry,
            result,
            position,
            info,
            join_leave: opts.join_leave,
        })
    }

    /// Subscribe at the broker and work out the subscribe result's stream fields.
    async fn sync_room(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        p: &SubParams,
        positioned: bool,
        recoverable: bool,
    ) -> Outcome<(SubscribeResult, Option<(u64, String)>)> {
        let broker = &self.node.broker;
        broker.subscribe(channel).await.map_err(internal)?;
        let mut result = SubscribeResult::default();
        if !positioned {
            return Ok((result, None));
        }
        result.positioned = true;
        result.recoverable = recoverable;
        let meta_ttl = opts.history_meta_ttl;
        if recoverable && p.recover {
            result.was_recovering = true;
            let query = HistoryQuery {
                since: Some(StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                }),
                limit: Some(self.node.config.client.recovery_max_publication_limit),
                reverse: false,
            };
            let page = broker
                .history(channel, query, meta_ttl)
                .await
                .map_err(internal)?;
            let top = page.position;
            let recovered = if !p.epoch.is_empty() && p.epoch != top.epoch {
                false
            } else {
                match (page.publications.first(), page.publications.last()) {
                    (Some(first), Some(last)) => {
                        first.offset == p.offset + 1 && last.offset == top.offset
                    }
                    _ => top.offset == p.offset,
                }
            };
            if recovered {
                result.recovered = true;
                result.offset = p.offset;
                result.publications = page.publications;
            } else {
                if p.reject_unrecovered {
                    return Err(ERROR_UNRECOVERABLE_POSITION.into());
                }
                result.offset = top.offset;
            }
            result.epoch = top.epoch.clone();
            Ok((result, Some((top.offset, top.epoch))))
        } else {
            let query = HistoryQuery {
                limit: Some(0),
                ..Default::default()
            };
            let top = broker
                .history(channel, query, meta_ttl)
                .await
                .map_err(internal)?
                .position;
            result.offset = top.offset;
            result.epoch = top.epoch.clone();
            Ok((result, Some((top.offset, top.epoch))))
        }
    }

    async fn announce_join(&self, j: &Joined) {
        if j.join_leave {
            if let Err(e) = self
                .node
                .broker
                .publish_join(&j.entry.channel, &j.info)
                .await
            {
                tracing::warn!(channel = %j.entry.channel, error = %e, "join announcement failed");
            }
        }
    }

    /// Remove a subscription (if it is still this one) and leave its room.
    async fn drop_subscription(
        &self,
        entry: &Arc<Subscriber>,
        announce_leave: bool,
    ) -> Option<bool> {
        let sub = {
            let mut s = self.session.lock();
            match s.subs.get(&entry.channel) {
                Some(sub) if Arc::ptr_eq(&sub.entry, entry) => s.subs.remove(&entry.channel),
                _ => None,
            }
        };
        self.node.hub.remove(entry);
        let sub = sub?;
        self.leave_room(&sub, announce_leave).await;
        Some(sub.server_side)
    }

    async fn leave_room(&self, sub: &Sub, announce_leave: bool) {
        let channel = &sub.entry.channel;
        let broker = &self.node.broker;
        if sub.presence {
            if let Err(e) = broker.presence_remove(channel, &self.client).await {
                tracing::warn!(%channel, error = %e, "presence remove failed");
            }
        }
        if announce_leave && sub.join_leave {
            if let Err(e) = broker.publish_leave(channel, &sub.info).await {
                tracing::warn!(%channel, error = %e, "leave announcement failed");
            }
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Outcome<ReplyBody> {
        if channel.is_empty() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        let entry = self.sub_entry(channel);
        if let Some(entry) = entry {
            self.drop_subscription(&entry, true).await;
        }
        Ok(ReplyBody::Unsubscribe(EmptyResult {}))
    }

    /// End a subscription on the server's initiative (gap, expiry, a command): an
    /// unsubscribe push, except that a server-side subscription that lost state or
    /// expired closes the connection (3010, 3006) so that it is made again.
    pub async fn server_unsubscribe(&self, entry: &Arc<Subscriber>, code: UnsubscribeCode) {
        match self.drop_subscription(entry, true).await {
            Some(true) if code == UNSUBSCRIBE_EXPIRED => self.out.close(DISCONNECT_SUB_EXPIRED),
            Some(true) if code == UNSUBSCRIBE_INSUFFICIENT_STATE => {
                self.out.close(DISCONNECT_INSUFFICIENT_STATE)
            }
            Some(_) => {
                self.out.push(Bytes::from(protocol::encode_unsubscribe_push(
                    &entry.channel,
                    code,
                )));
            }
            None => {}
        }
    }

    /// Unsubscribe this connection from `channel` by command (code 2000).
    pub fn unsubscribe_by_server(&self, channel: &str) {
        let entry = self.sub_entry(channel);
        if let Some(entry) = entry {
            self.out
                .push_item(Item::Unsubscribe(entry, UNSUBSCRIBE_SERVER));
        }
    }

    fn sub_refresh(&self, req: SubRefreshRequest) -> Outcome<ReplyBody> {
        if req.channel.is_empty() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        if self.subscribed_info(&req.channel).is_none() {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        if req.token.is_empty() {
            return Err(ERROR_BAD_REQUEST.into());
        }
        let user = self.user();
        let t = match self.verify_sub_token(&req.token, &req.channel, &user) {
            Err(Failure::Error(e)) if e == ERROR_PERMISSION_DENIED => {
                return Err(DISCONNECT_INVALID_TOKEN.into())
            }
            other => other?,
        };
        let now_unix = unix_now();
        let mut s = self.session.lock();
        let Some(sub) = s.subs.get_mut(req.channel.as_str()) else {
            return Err(ERROR_PERMISSION_DENIED.into());
        };
        sub.expires = t.expire_at.map(|e| {
            Instant::now()
                + Duration::from_secs(e.saturating_sub(now_unix))
                + self.node.config.client.expired_sub_close_delay
        });
        s.timers_dirty = true;
        Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: t.expire_at.is_some(),
            ttl: t.expire_at.map_or(0, |e| ttl_secs(e, now_unix)),
        }))
    }

    // -----------------------------------------------------------------------------
    // publish, presence, history
    // -----------------------------------------------------------------------------

    fn take_publish_token(&self) -> bool {
        let cfg = &self.node.config.client;
        if cfg.publish_rate_per_sec == 0 {
            return true;
        }
        let mut s = self.session.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(s.publish_refilled).as_secs_f64();
        s.publish_refilled = now;
        s.publish_tokens = (s.publish_tokens + elapsed * cfg.publish_rate_per_sec as f64)
            .min(cfg.publish_burst as f64);
        if s.publish_tokens < 1.0 {
            return false;
        }
        s.publish_tokens -= 1.0;
        true
    }

    async fn publish(&self, req: PublishRequest) -> Outcome<ReplyBody> {
        let Some(data) = req.data else {
            return Err(DISCONNECT_BAD_REQUEST.into());
        };
        let (_, opts) = self.resolve(&req.channel)?;
        if !opts.allow_publish {
            return Err(ERROR_PERMISSION_DENIED.into());
        }
        let info = self
            .subscribed_info(&req.channel)
            .ok_or(ERROR_PERMISSION_DENIED)?;
        if !self.take_publish_token() {
            return Err(ERROR_TOO_MANY_REQUESTS.into());
        }
        let publication = Publication {
            data,
            info: Some(info),
            offset: 0,
            tags: Default::default(),
        };
        self.node
            .broker
            .publish(&req.channel, publication, opts.history())
            .await
            .map_err(internal)?;
        Ok(ReplyBody::Publish(EmptyResult {}))
    }

    fn presence_allowed(&self, channel: &str) -> Outcome<()> {
        let (_, opts) = self.resolve(channel)?;
        if !opts.presence {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        self.subscribed_info(channel)
            .ok_or(ERROR_PERMISSION_DENIED)?;
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Outcome<ReplyBody> {
        self.presence_allowed(channel)?;
        let presence = self.node.broker.presence(channel).await.map_err(internal)?;
        Ok(ReplyBody::Presence(PresenceResult { presence }))
    }

    async fn presence_stats(&self, channel: &str) -> Outcome<ReplyBody> {
        self.presence_allowed(channel)?;
        let s = self
            .node
            .broker
            .presence_stats(channel)
            .await
            .map_err(internal)?;
        Ok(ReplyBody::PresenceStats(PresenceStatsResult {
            num_clients: s.num_clients,
            num_users: s.num_users,
        }))
    }

    async fn history(&self, req: HistoryRequest) -> Outcome<ReplyBody> {
        let (_, opts) = self.resolve(&req.channel)?;
        if opts.history().is_none() {
            return Err(ERROR_NOT_AVAILABLE.into());
        }
        self.subscribed_info(&req.channel)
            .ok_or(ERROR_PERMISSION_DENIED)?;
        if req.reverse && req.since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(ERROR_BAD_REQUEST.into());
        }
        let max = self.node.config.client.history_max_publication_limit;
        let limit = match req.limit {
            l if l < 0 => max,
            l => (l as usize).min(max),
        };
        let since_epoch = req
            .since
            .as_ref()
            .map(|s| s.epoch.clone())
            .unwrap_or_default();
        let query = HistoryQuery {
            since: req.since,
            limit: Some(limit),
            reverse: req.reverse,
        };
        let page = self
            .node
            .broker
            .history(&req.channel, query, opts.history_meta_ttl)
            .await
            .map_err(internal)?;
        if !since_epoch.is_empty() && since_epoch != page.position.epoch {
            return Err(ERROR_UNRECOVERABLE_POSITION.into());
        }
        Ok(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }

    // -----------------------------------------------------------------------------
    // timers and teardown
    // -----------------------------------------------------------------------------

    /// Fire due timers and return when to call again. Cheap when nothing is due.
    pub fn poll_timers(&self, now: Instant) -> Instant {
        let cfg = &self.node.config.client;
        let mut s = self.session.lock();
        if !s.timers_dirty && now < s.next_timer {
            return s.next_timer;
        }
        s.timers_dirty = false;
        let far = now + Duration::from_secs(3600);
        let mut next = far;
        match s.phase {
            Phase::Connecting | Phase::Failed => {
                if now >= s.connect_deadline {
                    self.out.close(DISCONNECT_STALE);
                } else {
                    next = s.connect_deadline;
                }
            }
            Phase::Connected => {
                if let Some(d) = s.pong_deadline {
                    if now >= d {
                        self.out.close(DISCONNECT_NO_PONG);
                        return far;
                    }
                    next = next.min(d);
                }
                if let Some(e) = s.expires {
                    if now >= e {
                        self.out.close(DISCONNECT_EXPIRED);
                        return far;
                    }
                    next = next.min(e);
                }
                if let Some(p) = s.next_ping {
                    let p = if now >= p {
                        self.out.push(Bytes::from_static(protocol::PING));
                        if !cfg.pong_timeout.is_zero() && s.pong_deadline.is_none() {
                            let d = now + cfg.pong_timeout;
                            s.pong_deadline = Some(d);
                            next = next.min(d);
                        }
                        now + cfg.ping_interval
                    } else {
                        p
                    };
                    s.next_ping = Some(p);
                    next = next.min(p);
                }
                for sub in s.subs.values_mut() {
                    match sub.expires {
                        Some(e) if now >= e => {
                            sub.expires = None;
                            self.out.push_item(Item::Unsubscribe(
                                sub.entry.clone(),
                                UNSUBSCRIBE_EXPIRED,
                            ));
                        }
                        Some(e) => next = next.min(e),
                        None => {}
                    }
                }
            }
        }
        s.next_timer = next;
        next
    }

    /// Leave every room after the socket is gone.
    pub async fn teardown(&self) {
        let (user, subs): (Arc<str>, Vec<Sub>) = {
            let mut s = self.session.lock();
            (s.user.clone(), s.subs.drain().map(|(_, v)| v).collect())
        };
        if !user.is_empty() {
            self.node.hub.remove_user(&user, &self.me);
        }
        for sub in &subs {
            self.node.hub.remove(&sub.entry);
        }
        for sub in &subs {
            self.leave_room(sub, true).await;
        }
    }
}
