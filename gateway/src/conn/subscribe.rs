//! Subscriptions: `subscribe` (tokens, permissions, recovery, the sync with live
//! publications), `unsubscribe`, `sub_refresh`, server-side subscriptions and
//! unsubscribes on the server's initiative, and leaving rooms.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout::HistoryQuery;
use shared::auth::{unix_now, TokenError};
use shared::codes::*;
use shared::protocol::{
    self, ClientInfo, EmptyResult, Raw, ReplyBody, StreamPosition, SubRefreshRequest,
    SubRefreshResult, SubscribeRequest, SubscribeResult, SUBSCRIBE_FLAG_REJECT_UNRECOVERED,
};
use tokio::time::Instant;

use super::recovery;
use super::session::{internal, ttl_secs, Conn, Failure, Outcome, Sub};
use crate::config::ChannelOptions;
use crate::hub::Subscriber;

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
}

impl SubParams {
    pub(crate) fn server_side(recovery: Option<&SubscribeRequest>) -> Self {
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
            let limit = self.node.config.client.recovery_max_publication_limit;
            let query = HistoryQuery {
                since: Some(StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                }),
                limit: Some(limit),
                reverse: false,
            };
            let page = broker
                .history(channel, query, meta_ttl)
                .await
                .map_err(internal)?;
            let top = page.position;
            let verdict = recovery::verdict(&recovery::Attempt {
                since_offset: p.offset,
                since_epoch: &p.epoch,
                top_offset: top.offset,
                top_epoch: &top.epoch,
                first: page.publications.first().map(|p| p.offset),
                last: page.publications.last().map(|p| p.offset),
                count: page.publications.len(),
                limit,
            });
            tracing::debug!(client = %self.client, %channel, ?verdict, "recovery");
            if verdict.answer(p.reject_unrecovered)? {
                result.recovered = true;
                result.offset = p.offset;
                result.publications = page.publications;
            } else {
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

    pub(super) async fn announce_join(&self, j: &Joined) {
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
        code: UnsubscribeCode,
    ) {
        let entry = self.sub_entry(channel).filter(|entry| entry.id == sub_id);
        let Some(entry) = entry else {
            return;
        };
        match self.drop_subscription(&entry, true).await {
            Some(true) if code == UNSUBSCRIBE_EXPIRED => self.out.close(DISCONNECT_SUB_EXPIRED),
            Some(true) if code == UNSUBSCRIBE_INSUFFICIENT_STATE => {
                self.out.close(DISCONNECT_INSUFFICIENT_STATE)
            }
            Some(_) => {
                self.out.push(Bytes::from(protocol::encode_unsubscribe_push(
                    channel, code,
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
}
