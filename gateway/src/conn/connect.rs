//! Connect, refresh and the connection's timers: the `connect` command (token,
//! server-side subscriptions), `refresh`, the pong, and what expires (the connect
//! deadline, pings and their pongs, the connection token, subscription tokens).

use std::time::Duration;

use bytes::Bytes;
use shared::auth::{unix_now, TokenError};
use shared::codes::*;
use shared::protocol::{
    self, ConnectRequest, ConnectResult, RefreshRequest, RefreshResult, ReplyBody,
};
use tokio::time::Instant;

use super::session::{ttl_secs, Conn, Failure, Outcome, Phase};
use super::subscribe::SubParams;
use crate::node::VERSION;

impl Conn {
    pub(super) async fn connect(&self, id: u32, req: ConnectRequest) -> Outcome<()> {
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
            self.node.hub.add_user(&token.user, self.out.clone());
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

    pub(super) fn pong(&self) -> Outcome<()> {
        let mut s = self.session.lock();
        if s.pong_deadline.take().is_none() {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        s.timers_dirty = true;
        Ok(())
    }

    pub(super) fn refresh(&self, req: RefreshRequest) -> Outcome<ReplyBody> {
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

    /// Fire due timers and return when to call again. Cheap when nothing is due.
    pub(crate) fn poll_timers(&self, now: Instant) -> Instant {
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
                            sub.entry.unsubscribe(UNSUBSCRIBE_EXPIRED);
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
}
