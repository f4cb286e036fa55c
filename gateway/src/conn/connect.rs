//! Connect, refresh and the connection's timers: the `connect` command (token,
//! server-side subscriptions), `refresh`, the pong, and what expires (the connect
//! deadline, pings and their pongs, the connection token, subscription tokens).

use std::time::Duration;

use bytes::Bytes;
use shared::auth::{unix_now, TokenError};
use shared::codes::*;
use shared::protocol::{
    self, ConnectRequest, ConnectResult, Raw, RefreshRequest, RefreshResult, ReplyBody,
};
use shared::proxy::ConnFields;
use tokio::time::Instant;

use super::session::{
    allowed, backend_payload, due_at, expire_at, proxy_failed, ttl_secs, Conn, Failure, Outcome,
    Phase, Session,
};
use super::subscribe::{ServerSub, SubParams};
use crate::node::VERSION;
use crate::outbound::Item;
use crate::proxy::Kind;

/// Who a connection is and what it is granted, from a token or the connect proxy.
#[derive(Default)]
struct Credentials {
    user: String,
    /// Unix seconds.
    expire_at: Option<u64>,
    info: Option<Raw>,
    /// Returned to the client in the connect result.
    data: Option<Raw>,
    /// Server-side subscriptions.
    channels: Vec<(String, ServerSub)>,
    /// The node renews the expiry through the refresh proxy.
    proxy_refresh: bool,
}

/// A ping's pong is overdue: read what has arrived, then ask again.
#[derive(Debug)]
pub(crate) struct PongOverdue;

/// Busy spells shorter than this are not worth taking the session lock for.
const BUSY_UNNOTICED: Duration = Duration::from_micros(200);

impl Conn {
    pub(super) async fn connect(&self, id: u32, req: ConnectRequest) -> Outcome<()> {
        let outcome = self.try_connect(id, req).await;
        if let Err(Failure::Error(_) | Failure::Custom(_)) = outcome {
            self.session.lock().phase = Phase::Failed;
        }
        outcome
    }

    /// Who the client is: from its connection token, or, without one, from the
    /// connect proxy (when configured) or as an anonymous user (when allowed).
    async fn credentials(&self, req: &ConnectRequest) -> Outcome<Credentials> {
        if !req.token.is_empty() {
            let token = match self.node.verifier.verify_connect(&req.token) {
                Ok(t) => t,
                Err(TokenError::Expired) => return Err(ERROR_TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(why)) => {
                    tracing::debug!(client = %self.client, %why, "invalid connection token");
                    return Err(DISCONNECT_INVALID_TOKEN.into());
                }
            };
            return Ok(Credentials {
                user: token.user,
                expire_at: token.expire_at,
                info: token.info,
                data: None,
                channels: token
                    .channels
                    .into_iter()
                    .map(|c| (c, ServerSub::default()))
                    .collect(),
                proxy_refresh: false,
            });
        }
        if let Some(proxy) = self.node.proxy.as_ref().filter(|p| p.has(Kind::Connect)) {
            let call = shared::proxy::ConnectRequest {
                conn: ConnFields::new(&self.client),
                data: req.data.clone(),
                name: req.name.clone(),
                version: req.version.clone(),
            };
            let decision = proxy
                .connect(self.headers.as_ref(), &call)
                .await
                .map_err(|e| proxy_failed(Kind::Connect, &self.client, e))?;
            let r = allowed(decision)?;
            // `subs` first: a channel named in both keeps its options (the sort
            // below is stable and keeps the first of equal names).
            let mut channels: Vec<(String, ServerSub)> = Vec::new();
            for (channel, o) in r.subs {
                channels.push((
                    channel,
                    ServerSub {
                        info: backend_payload(Kind::Connect, "info", &o.info, &o.b64info)?,
                        data: backend_payload(Kind::Connect, "data", &o.data, &o.b64data)?,
                        expire_at: expire_at(o.expire_at),
                    },
                ));
            }
            channels.extend(r.channels.into_iter().map(|c| (c, ServerSub::default())));
            let expires = expire_at(r.expire_at);
            return Ok(Credentials {
                user: r.user,
                expire_at: expires,
                info: backend_payload(Kind::Connect, "info", &r.info, &r.b64info)?,
                data: backend_payload(Kind::Connect, "data", &r.data, &r.b64data)?,
                channels,
                proxy_refresh: expires.is_some() && proxy.has(Kind::Refresh),
            });
        }
        if self
            .node
            .config
            .client
            .allow_anonymous_connect_without_token
        {
            return Ok(Credentials::default());
        }
        Err(DISCONNECT_BAD_REQUEST.into())
    }

    async fn try_connect(&self, id: u32, req: ConnectRequest) -> Outcome<()> {
        let cfg = &self.node.config.client;
        let creds = self.credentials(&req).await?;
        let now_unix = unix_now();
        if creds.expire_at.is_some_and(|t| t <= now_unix) {
            return Err(ERROR_EXPIRED.into());
        }
        // Validate every server-side channel before joining any.
        let mut channels: Vec<&(String, ServerSub)> = creds.channels.iter().collect();
        channels.sort_by(|a, b| a.0.cmp(&b.0));
        channels.dedup_by(|a, b| a.0 == b.0);
        if channels.len() > cfg.max_subscriptions {
            return Err(ERROR_LIMIT_EXCEEDED.into());
        }
        let mut resolved = Vec::with_capacity(channels.len());
        for (ch, grant) in channels {
            let (_, opts) = self.resolve(ch).map_err(|f| match f {
                Failure::Disconnect(_) => Failure::Error(ERROR_BAD_REQUEST),
                e => e,
            })?;
            resolved.push((ch.as_str(), grant, opts));
        }
        {
            let mut s = self.session.lock();
            s.user = creds.user.as_str().into();
            s.conn_info = creds.info.clone();
            s.proxy_refresh = creds.proxy_refresh;
            // With the refresh proxy the node asks at expiry; otherwise the client
            // has a grace period to refresh its token.
            let grace = if creds.proxy_refresh {
                Duration::ZERO
            } else {
                cfg.expired_close_delay
            };
            s.expires = creds.expire_at.map(|t| due_at(t, now_unix, grace));
        }
        // The user's slot is taken before any room is joined, so a user over the
        // limit leaves no presence behind.
        if !creds.user.is_empty()
            && !self.node.hub.add_user(
                &creds.user,
                &self.client,
                self.out.clone(),
                cfg.max_connections_per_user,
            )
        {
            return Err(ERROR_LIMIT_EXCEEDED.into());
        }
        let mut joined = Vec::with_capacity(resolved.len());
        for (ch, grant, opts) in resolved {
            match self
                .join_room(ch, opts, SubParams::server_side(req.subs.get(ch), grant))
                .await
            {
                Ok(j) => joined.push(j),
                Err(f) => {
                    for j in joined {
                        self.drop_subscription(&j.entry, false).await;
                    }
                    if !creds.user.is_empty() {
                        self.node.hub.remove_user(&creds.user, &self.out);
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
            data: creds.data,
            ..Default::default()
        };
        // The client refreshes only what the node does not refresh itself.
        if let (Some(exp), false) = (creds.expire_at, creds.proxy_refresh) {
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
        tracing::debug!(client = %self.client, user = %creds.user, rooms = joined.len(), "client connected");
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

    /// The node was busy with this connection's commands or server work from
    /// `since` until now, not reading its socket: a pong sent meanwhile waits
    /// unread, so that time does not count against the pong deadline (the node's
    /// backlog is not the client's silence).
    pub(crate) fn was_busy_since(&self, since: Instant) {
        let now = Instant::now();
        if now.duration_since(since) < BUSY_UNNOTICED {
            return;
        }
        let timeout = self.node.config.client.pong_timeout;
        let mut s = self.session.lock();
        if let Some(d) = s.pong_deadline.as_mut() {
            let from = d.checked_sub(timeout).map_or(since, |ping| ping.max(since));
            if now > from {
                *d += now - from;
                s.timers_dirty = true;
            }
        }
    }

    /// A command arrived: the client is alive, so a pending pong deadline starts
    /// again from now (its pong may be queued behind what it sent). Called with
    /// the session lock the command takes anyway.
    pub(super) fn heard_from_client(&self, s: &mut Session) {
        if let Some(d) = s.pong_deadline.as_mut() {
            let fresh = Instant::now() + self.node.config.client.pong_timeout;
            if fresh > *d {
                *d = fresh;
                s.timers_dirty = true;
            }
        }
    }

    /// A pong answers the oldest unanswered ping; one with no ping outstanding
    /// is a protocol error. With more pings outstanding, the client has a whole
    /// `pong_timeout` from now for the next pong.
    pub(super) fn pong(&self) -> Outcome<()> {
        let mut s = self.session.lock();
        if s.pings_unanswered == 0 {
            return Err(DISCONNECT_BAD_REQUEST.into());
        }
        s.pings_unanswered -= 1;
        s.pong_deadline =
            (s.pings_unanswered > 0).then(|| Instant::now() + self.node.config.client.pong_timeout);
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
        let grace = self.node.config.client.expired_close_delay;
        s.expires = token.expire_at.map(|t| due_at(t, now_unix, grace));
        s.timers_dirty = true;
        Ok(ReplyBody::Refresh(RefreshResult {
            client: self.client.to_string(),
            version: VERSION.into(),
            expires: token.expire_at.is_some(),
            ttl: token.expire_at.map_or(0, |t| ttl_secs(t, now_unix)),
        }))
    }

    /// Fire due timers and return when to call again. Cheap when nothing is due.
    /// A pong deadline that passed closes with 3012 only once the connection's
    /// task has read what already arrived (`read_ahead`): until then it is
    /// reported as [`PongOverdue`].
    pub(crate) fn poll_timers(
        &self,
        now: Instant,
        read_ahead: bool,
    ) -> Result<Instant, PongOverdue> {
        let cfg = &self.node.config.client;
        let mut s = self.session.lock();
        if !s.timers_dirty && now < s.next_timer {
            return Ok(s.next_timer);
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
                    if now >= d && !read_ahead {
                        s.timers_dirty = true;
                        return Err(PongOverdue);
                    }
                    if now >= d {
                        self.out.close(DISCONNECT_NO_PONG);
                        return Ok(far);
                    }
                    next = next.min(d);
                }
                match s.expires {
                    Some(e) if now >= e && s.proxy_refresh => {
                        // Asked once; the answer sets the next expiry.
                        s.expires = None;
                        self.out.push_item(Item::RefreshDue);
                    }
                    Some(e) if now >= e => {
                        self.out.close(DISCONNECT_EXPIRED);
                        return Ok(far);
                    }
                    Some(e) => next = next.min(e),
                    None => {}
                }
                if let Some(p) = s.next_ping {
                    let p = if now >= p {
                        self.out.push(Bytes::from_static(protocol::PING));
                        if !cfg.pong_timeout.is_zero() {
                            s.pings_unanswered = s.pings_unanswered.saturating_add(1);
                            let d = *s.pong_deadline.get_or_insert(now + cfg.pong_timeout);
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
                        Some(e) if now >= e && sub.proxy_refresh => {
                            sub.expires = None;
                            self.out.push_item(Item::SubRefreshDue {
                                channel: sub.entry.channel.clone(),
                                sub_id: sub.entry.id,
                            });
                        }
                        Some(e) if now >= e => {
                            sub.expires = None;
                            sub.entry.unsubscribe(&UNSUBSCRIBE_EXPIRED);
                        }
                        Some(e) => next = next.min(e),
                        None => {}
                    }
                }
            }
        }
        s.next_timer = next;
        Ok(next)
    }
}
