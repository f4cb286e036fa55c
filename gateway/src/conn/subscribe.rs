//! Subscriptions: `subscribe` (tokens, permissions, recovery, the sync with live
//! publications), `unsubscribe`, `sub_refresh`, server-side subscriptions and
//! unsubscribes on the server's initiative, and leaving rooms.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout::{HistoryPage, HistoryQuery};
use shared::auth::{unix_now, TokenError};
use shared::codes::*;
use shared::envelope::{EnvelopeError, SubscribeCommand};
use shared::protocol::{
    self, ClientInfo, EmptyResult, Raw, ReplyBody, StreamPosition, SubRefreshRequest,
    SubRefreshResult, SubscribeRequest, SubscribeResult, SUBSCRIBE_FLAG_REJECT_UNRECOVERED,
};
use shared::proxy::ConnFields;

use super::recovery;
use super::session::{
    allowed, backend_payload, due_at, expire_at, internal, proxy_failed, ttl_secs, Conn, Failure,
    Outcome, Sub,
};
use crate::config::ChannelOptions;
use crate::hub::Subscriber;
use crate::proxy::Kind;

/// What a subscription is asked to be, from a subscribe command or the server.
pub(crate) struct SubParams {
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
    /// At expiry, ask the sub_refresh proxy instead of ending the subscription.
    proxy_refresh: bool,
    /// Overrides of the namespace's `presence` and `join_leave`.
    presence: Option<bool>,
    announce: Option<bool>,
}

/// What the server grants a server-side subscription (from the connect proxy's
/// `subs`, or none from a token's `channels` claim).
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerSub {
    pub(crate) info: Option<Raw>,
    pub(crate) data: Option<Raw>,
    /// Unix seconds.
    pub(crate) expire_at: Option<u64>,
}

impl SubParams {
    /// A server-side subscription made at connect; `recovery` is the client's
    /// position from `connect.subs`.
    pub(crate) fn server_side(recovery: Option<&SubscribeRequest>, grant: &ServerSub) -> Self {
        SubParams {
            recover: recovery.is_some_and(|r| r.recover),
            offset: recovery.map_or(0, |r| r.offset),
            epoch: recovery.map(|r| r.epoch.clone()).unwrap_or_default(),
            positioned: true,
            recoverable: true,
            join_leave: true,
            reject_unrecovered: false,
            server_side: true,
            chan_info: grant.info.clone(),
            data: grant.data.clone(),
            expire_at: grant.expire_at,
            proxy_refresh: false,
            presence: None,
            announce: None,
        }
    }

    /// A server-side subscription the server API asks for.
    pub(crate) fn from_api(cmd: &SubscribeCommand) -> Result<Self, EnvelopeError> {
        let since = cmd.recover_since.clone().unwrap_or_default();
        Ok(SubParams {
            recover: cmd.recover_since.is_some(),
            offset: since.offset,
            epoch: since.epoch,
            positioned: cmd.force_positioning.unwrap_or(false),
            recoverable: cmd.force_recovery.unwrap_or(false) || cmd.recover_since.is_some(),
            join_leave: true,
            reject_unrecovered: false,
            server_side: true,
            chan_info: cmd.info()?,
            data: cmd.data()?,
            expire_at: (cmd.expire_at > 0).then_some(cmd.expire_at),
            proxy_refresh: false,
            presence: cmd.presence,
            announce: cmd.join_leave,
        })
    }
}

/// A subscription that has joined its room but whose reply is not queued yet.
pub(crate) struct Joined {
    pub(crate) entry: Arc<Subscriber>,
    pub(crate) result: SubscribeResult,
    pub(crate) position: Option<(u64, String)>,
    info: ClientInfo,
    join_leave: bool,
}

impl Conn {
    pub(super) async fn subscribe(&self, id: u32, req: SubscribeRequest) -> Outcome<()> {
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
            epoch: req.epoch.clone(),
            positioned: req.positioned,
            recoverable: req.recoverable,
            join_leave: req.join_leave,
            reject_unrecovered: req.flag & SUBSCRIBE_FLAG_REJECT_UNRECOVERED != 0,
            server_side: false,
            chan_info: None,
            data: None,
            expire_at: None,
            proxy_refresh: false,
            presence: None,
            announce: None,
        };
        if !req.token.is_empty() {
            let t = self.verify_sub_token(&req.token, &req.channel, &user)?;
            params.chan_info = t.info;
            params.data = t.data;
            params.expire_at = t.expire_at;
        } else if name.private || (name.is_user_limited() && !name.allows_user(&user)) {
            return Err(ERROR_PERMISSION_DENIED.into());
        } else if opts.proxy_subscribe {
            let r = self.ask_subscribe_proxy(&req, &user).await?;
            params.chan_info = backend_payload(Kind::Subscribe, "info", &r.info, &r.b64info)?;
            params.data = backend_payload(Kind::Subscribe, "data", &r.data, &r.b64data)?;
            params.expire_at = expire_at(r.expire_at);
            params.proxy_refresh = params.expire_at.is_some() && opts.proxy_sub_refresh;
            if let Some(o) = r.override_ {
                params.presence = o.presence.map(|v| v.value);
                params.announce = o.join_leave.map(|v| v.value);
                params.recoverable |= o.force_recovery.is_some_and(|v| v.value);
                params.positioned |= o.force_positioning.is_some_and(|v| v.value);
            }
        } else if !name.is_user_limited() && !opts.allow_subscribe {
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

    async fn ask_subscribe_proxy(
        &self,
        req: &SubscribeRequest,
        user: &str,
    ) -> Outcome<shared::proxy::SubscribeResult> {
        let proxy = self
            .node
            .proxy
            .as_ref()
            .expect("bug: validated: proxy_subscribe needs a subscribe proxy");
        let call = shared::proxy::SubscribeRequest {
            conn: ConnFields::new(&self.client),
            user: user.to_owned(),
            channel: req.channel.clone(),
            token: String::new(),
            data: req.data.clone(),
        };
        let decision = proxy
            .subscribe(self.headers.as_ref(), &call)
            .await
            .map_err(|e| proxy_failed(Kind::Subscribe, &self.client, e))?;
        allowed(decision)
    }

    /// Check a subscription token for `channel`. Invalid: 103, and close 3509 at the
    /// `client.max_invalid_sub_tokens`-th (each costs a signature check); for another
    /// user, channel or connection: close 3500; expired: 109.
    fn verify_sub_token(
        &self,
        token: &str,
        channel: &str,
        user: &str,
    ) -> Outcome<shared::auth::SubscribeToken> {
        let t = match self.node.verifier.verify_subscribe(token) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => {
                let limit = self.node.config.client.max_invalid_sub_tokens;
                let mut s = self.session.lock();
                s.invalid_sub_tokens = s.invalid_sub_tokens.saturating_add(1);
                if limit > 0 && s.invalid_sub_tokens >= limit {
                    return Err(DISCONNECT_TOO_MANY_ERRORS.into());
                }
                return Err(ERROR_PERMISSION_DENIED.into());
            }
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
    pub(super) async fn join_room(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        p: SubParams,
    ) -> Outcome<Joined> {
        let cfg = &self.node.config.client;
        let history = opts.history();
        let recoverable = history.is_some() && (p.recoverable || opts.force_recovery);
        let positioned = history.is_some() && (recoverable || p.positioned);
        let presence = p.presence.unwrap_or(opts.presence);
        let announce = p.announce.unwrap_or(opts.join_leave);
        let join_leave = announce && p.join_leave;
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
            // The sub_refresh proxy is asked at expiry; a token holder gets a
            // grace period to refresh.
            let grace = if p.proxy_refresh {
                Duration::ZERO
            } else {
                cfg.expired_sub_close_delay
            };
            let expires = p.expire_at.map(|t| due_at(t, now_unix, grace));
            s.subs.insert(
                channel.clone(),
                Sub {
                    entry: entry.clone(),
                    info: info.clone(),
                    server_side: p.server_side,
                    presence,
                    join_leave: announce,
                    expires,
                    proxy_refresh: p.proxy_refresh,
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
        if presence {
            if let Err(e) = self.node.broker.presence_add(&channel, &info).await {
                self.drop_subscription(&entry, false).await;
                return Err(internal(e));
            }
        }
        let (mut result, position) = synced;
        result.data = p.data;
        if let (Some(t), Some(_), false) = (p.expire_at, expires, p.proxy_refresh) {
            result.expires = true;
            result.ttl = ttl_secs(t, now_unix);
        }
        Ok(Joined {
            entry,
            result,
            position,
            info,
            join_leave: announce,
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
        let meta_ttl = opts.read_position_ttl();
        if recoverable && p.recover {
            result.was_recovering = true;
            let since = StreamPosition {
                offset: p.offset,
                epoch: p.epoch.clone(),
            };
            let (verdict, page) = self.read_recovery(channel, since, meta_ttl).await?;
            tracing::debug!(client = %self.client, %channel, ?verdict, "recovery");
            if verdict.answer(p.reject_unrecovered)? {
                result.recovered = true;
                result.offset = p.offset;
                result.publications = page.publications;
                result.epoch = page.position.epoch.clone();
                return Ok((result, Some((page.position.offset, page.position.epoch))));
            }
            if verdict == recovery::Recovery::EpochChanged {
                // The room's history started again (Redis restarted empty, or the
                // stream expired). When the new epoch is whole from its first
                // offset, the client gets all of it with `recovered: false`: it
                // learns of the gap before, and misses nothing after.
                let since = StreamPosition {
                    offset: 0,
                    epoch: page.position.epoch.clone(),
                };
                let (whole, new) = self.read_recovery(channel, since, meta_ttl).await?;
                tracing::debug!(client = %self.client, %channel, ?whole, "new epoch handed over");
                if whole == recovery::Recovery::Exact {
                    result.offset = 0;
                    result.publications = new.publications;
                    result.epoch = new.position.epoch.clone();
                    return Ok((result, Some((new.position.offset, new.position.epoch))));
                }
            }
            let top = page.position;
            result.offset = top.offset;
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

    /// Read the stream after `since` for a recovery, and judge the read
    /// (`recovery::verdict`, and whether the publications fit half the
    /// connection's outbound budget).
    async fn read_recovery(
        &self,
        channel: &str,
        since: StreamPosition,
        meta_ttl: Duration,
    ) -> Outcome<(recovery::Recovery, HistoryPage)> {
        let limit = self.node.config.client.recovery_max_publication_limit;
        let (since_offset, since_epoch) = (since.offset, since.epoch.clone());
        let query = HistoryQuery {
            since: Some(since),
            limit: Some(limit),
            reverse: false,
        };
        let page = self
            .node
            .broker
            .history(channel, query, meta_ttl)
            .await
            .map_err(internal)?;
        let verdict = recovery::verdict(&recovery::Attempt {
            since_offset,
            since_epoch: &since_epoch,
            top_offset: page.position.offset,
            top_epoch: &page.position.epoch,
            first: page.publications.first().map(|p| p.offset),
            last: page.publications.last().map(|p| p.offset),
            count: page.publications.len(),
            limit,
        });
        let budget = self.out.max_bytes() / 2;
        let sizes = page.publications.iter().map(|p| recovery::reply_bytes(p));
        let verdict = match verdict {
            recovery::Recovery::Exact
                if recovery::fitting(sizes, budget) < page.publications.len() =>
            {
                recovery::Recovery::OverBudget
            }
            v => v,
        };
        Ok((verdict, page))
    }

    pub(super) async fn announce_join(&self, j: &Joined) {
        if j.join_leave {
            if let Err(e) = self
                .node
                .broker
                .publish_join(&j.entry.channel, &j.info)
                .await
            {
                tracing::warn!(client = %self.client, channel = %j.entry.channel, error = %e, "join announcement failed");
            }
        }
    }

    /// Remove a subscription (if it is still this one) and leave its room.
    pub(super) async fn drop_subscription(
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

    pub(super) async fn leave_room(&self, sub: &Sub, announce_leave: bool) {
        let channel = &sub.entry.channel;
        let broker = &self.node.broker;
        if sub.presence {
            if let Err(e) = broker.presence_remove(channel, &sub.info).await {
                tracing::warn!(client = %self.client, %channel, error = %e, "presence remove failed");
            }
        }
        if announce_leave && sub.join_leave {
            if let Err(e) = broker.publish_leave(channel, &sub.info).await {
                tracing::warn!(client = %self.client, %channel, error = %e, "leave announcement failed");
            }
        }
    }

    pub(super) async fn unsubscribe(&self, channel: &str) -> Outcome<ReplyBody> {
        if channel.is_empty() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        let entry = self.sub_entry(channel);
        if let Some(entry) = entry {
            self.drop_subscription(&entry, true).await;
        }
        Ok(ReplyBody::Unsubscribe(EmptyResult {}))
    }

    /// End subscription `sub_id` to `channel` on the server's initiative (gap,
    /// expiry, a command): an unsubscribe push, except that a server-side
    /// subscription that lost state or expired closes the connection (3010, 3006)
    /// so that it is made again. Nothing happens if that subscription has ended.
    pub(crate) async fn server_unsubscribe(
        &self,
        channel: &str,
        sub_id: u64,
        code: &UnsubscribeCode,
    ) {
        let entry = self.sub_entry(channel).filter(|entry| entry.id == sub_id);
        let Some(entry) = entry else {
            return;
        };
        match self.drop_subscription(&entry, true).await {
            Some(true) if *code == UNSUBSCRIBE_EXPIRED => self.out.close(DISCONNECT_SUB_EXPIRED),
            Some(true) if *code == UNSUBSCRIBE_INSUFFICIENT_STATE => {
                self.out.close(DISCONNECT_INSUFFICIENT_STATE)
            }
            Some(_) => {
                if *code == UNSUBSCRIBE_INSUFFICIENT_STATE {
                    self.node.metrics.positions_lost.inc();
                }
                self.out.push(Bytes::from(protocol::encode_unsubscribe_push(
                    channel, *code,
                )));
            }
            None => {}
        }
    }

    pub(super) fn sub_refresh(&self, req: SubRefreshRequest) -> Outcome<ReplyBody> {
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
        let grace = self.node.config.client.expired_sub_close_delay;
        sub.expires = t.expire_at.map(|e| due_at(e, now_unix, grace));
        s.timers_dirty = true;
        Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: t.expire_at.is_some(),
            ttl: t.expire_at.map_or(0, |e| ttl_secs(e, now_unix)),
        }))
    }
}
