//! What the server asks of a connection through its mailbox, in order with the
//! messages around it: end a subscription (a gap, an expiry, the server API), make
//! one (the server API), refresh or expire the connection (the server API), and
//! ask the refresh and sub_refresh proxies when an expiry comes.

use std::time::Duration;

use bytes::Bytes;
use shared::auth::unix_now;
use shared::codes::{DISCONNECT_EXPIRED, UNSUBSCRIBE_EXPIRED};
use shared::envelope::{RefreshCommand, SubscribeCommand};
use shared::protocol::{self, Raw};
use shared::proxy::{ConnFields, Decision};
use tokio::time::Instant;

use super::session::{backend_close, backend_payload, due_at, expire_at, Conn, Phase};
use super::subscribe::SubParams;
use crate::outbound::Item;
use crate::proxy::Kind;

/// When a refresh proxy gave no usable answer, it is asked again after this; the
/// connection (or subscription) stays meanwhile, so a backend outage does not
/// disconnect everyone.
const PROXY_REFRESH_RETRY: Duration = Duration::from_secs(5);

impl Conn {
    /// Act on a mailbox item other than a message or a pong.
    pub(crate) async fn handle_item(&self, item: Item) {
        match item {
            Item::Unsubscribe {
                channel,
                sub_id,
                code,
            } => self.server_unsubscribe(&channel, sub_id, code).await,
            Item::Subscribe(cmd) => self.server_subscribe(&cmd).await,
            Item::Refresh(cmd) => self.server_refresh(&cmd),
            Item::RefreshDue => self.refresh_through_proxy().await,
            Item::SubRefreshDue { channel, sub_id } => {
                self.sub_refresh_through_proxy(&channel, sub_id).await
            }
            Item::Data(_) | Item::Pong(_) => {
                unreachable!("bug: the connection's task writes messages and pongs itself")
            }
        }
    }

    /// Subscribe this connection as the server API asked: a `subscribe` push (with
    /// any recovered publications after it), then the channel's publications.
    async fn server_subscribe(&self, cmd: &SubscribeCommand) {
        let Ok((_, opts)) = self.node.config.resolve_channel(&cmd.channel) else {
            return; // the API checked the name; a node with other namespaces skips it
        };
        {
            let s = self.session.lock();
            if s.phase != Phase::Connected || s.subs.contains_key(cmd.channel.as_str()) {
                return;
            }
            if s.subs.len() >= self.node.config.client.max_subscriptions {
                tracing::info!(client = %self.client, channel = %cmd.channel, "server-side subscribe over max_subscriptions; skipped");
                return;
            }
        }
        let params = match SubParams::from_api(cmd) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(client = %self.client, channel = %cmd.channel, error = %e, "bad server-side subscribe");
                return;
            }
        };
        let mut j = match self.join_room(&cmd.channel, opts, params).await {
            Ok(j) => j,
            Err(f) => {
                tracing::info!(client = %self.client, channel = %cmd.channel, failure = ?f, "server-side subscribe failed");
                return;
            }
        };
        let mut result = std::mem::take(&mut j.result);
        let recovered = std::mem::take(&mut result.publications);
        let mut push = protocol::encode_subscribe_push(&cmd.channel, &result);
        for p in &recovered {
            push.push(b'\n');
            push.extend_from_slice(&protocol::encode_publication_push(&cmd.channel, p));
        }
        j.entry.finish_sync(
            Some(Bytes::from(push)),
            j.position.as_ref().map(|(o, e)| (*o, e.as_str())),
        );
        self.announce_join(&j).await;
    }

    /// Refresh or expire this connection as the server API asked.
    fn server_refresh(&self, cmd: &RefreshCommand) {
        let now_unix = unix_now();
        if cmd.expired || (cmd.expire_at > 0 && cmd.expire_at <= now_unix) {
            self.out.close(DISCONNECT_EXPIRED);
            return;
        }
        let info = match cmd.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(client = %self.client, error = %e, "bad server-side refresh info");
                None
            }
        };
        let mut s = self.session.lock();
        if cmd.expire_at > 0 {
            let grace = if s.proxy_refresh {
                Duration::ZERO
            } else {
                self.node.config.client.expired_close_delay
            };
            s.expires = Some(due_at(cmd.expire_at, now_unix, grace));
            s.timers_dirty = true;
        }
        if info.is_some() {
            s.conn_info = info;
        }
    }

    /// The connection's expiry came: the refresh proxy extends it or ends it.
    async fn refresh_through_proxy(&self) {
        let Some(proxy) = self.node.proxy.as_ref().filter(|p| p.has(Kind::Refresh)) else {
            return;
        };
        let call = shared::proxy::RefreshRequest {
            conn: ConnFields::new(&self.client),
            user: self.user().to_string(),
        };
        let r = match proxy.refresh(self.headers.as_ref(), &call).await {
            Ok(Decision::Allow(r)) => r,
            Ok(Decision::Disconnect(d)) => return self.out.close(backend_close(d)),
            Ok(Decision::Error(e)) => {
                tracing::warn!(client = %self.client, code = e.code, message = %e.message, "refresh proxy answered an error; asking again later");
                return self.retry_refresh();
            }
            Err(e) => {
                tracing::warn!(client = %self.client, kind = e.kind(), error = %e, "refresh proxy failed; asking again later");
                return self.retry_refresh();
            }
        };
        let info = backend_payload(Kind::Refresh, "info", &r.info, &r.b64info)
            .ok()
            .flatten();
        let now_unix = unix_now();
        let expires = expire_at(r.expire_at);
        if r.expired || expires.is_some_and(|t| t <= now_unix) {
            return self.out.close(DISCONNECT_EXPIRED);
        }
        let mut s = self.session.lock();
        s.expires = expires.map(|t| due_at(t, now_unix, Duration::ZERO));
        s.timers_dirty = true;
        if info.is_some() {
            s.conn_info = info;
        }
    }

    fn retry_refresh(&self) {
        let mut s = self.session.lock();
        s.expires = Some(Instant::now() + PROXY_REFRESH_RETRY);
        s.timers_dirty = true;
    }

    /// A subscription's expiry came: the sub_refresh proxy extends it or ends it.
    async fn sub_refresh_through_proxy(&self, channel: &str, sub_id: u64) {
        let Some(proxy) = self.node.proxy.as_ref().filter(|p| p.has(Kind::SubRefresh)) else {
            return;
        };
        if self.sub_entry(channel).is_none_or(|e| e.id != sub_id) {
            return;
        }
        let call = shared::proxy::SubRefreshRequest {
            conn: ConnFields::new(&self.client),
            user: self.user().to_string(),
            channel: channel.to_owned(),
        };
        let r = match proxy.sub_refresh(self.headers.as_ref(), &call).await {
            Ok(Decision::Allow(r)) => r,
            Ok(Decision::Disconnect(d)) => return self.out.close(backend_close(d)),
            Ok(Decision::Error(e)) => {
                tracing::warn!(client = %self.client, %channel, code = e.code, message = %e.message, "sub_refresh proxy answered an error; asking again later");
                return self.retry_sub_refresh(channel, sub_id, None);
            }
            Err(e) => {
                tracing::warn!(client = %self.client, %channel, kind = e.kind(), error = %e, "sub_refresh proxy failed; asking again later");
                return self.retry_sub_refresh(channel, sub_id, None);
            }
        };
        let now_unix = unix_now();
        let expires = expire_at(r.expire_at);
        if r.expired || expires.is_some_and(|t| t <= now_unix) {
            return self
                .server_unsubscribe(channel, sub_id, &UNSUBSCRIBE_EXPIRED)
                .await;
        }
        let info = backend_payload(Kind::SubRefresh, "info", &r.info, &r.b64info)
            .ok()
            .flatten();
        let next = expires.map(|t| due_at(t, now_unix, Duration::ZERO));
        self.retry_sub_refresh(channel, sub_id, Some((next, info)));
    }

    /// Set the subscription's next expiry: a retry soon, or what the proxy said
    /// (`Some((expiry, new chan_info))`).
    fn retry_sub_refresh(
        &self,
        channel: &str,
        sub_id: u64,
        answer: Option<(Option<Instant>, Option<Raw>)>,
    ) {
        let mut s = self.session.lock();
        let Some(sub) = s.subs.get_mut(channel).filter(|s| s.entry.id == sub_id) else {
            return;
        };
        match answer {
            None => sub.expires = Some(Instant::now() + PROXY_REFRESH_RETRY),
            Some((expires, info)) => {
                sub.expires = expires;
                if info.is_some() {
                    sub.info.chan_info = info;
                }
            }
        }
        s.timers_dirty = true;
    }
}
