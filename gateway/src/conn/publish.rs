//! Publish, presence and history: the commands that read or write a room the
//! connection is subscribed to, with the publish rate limit.

use fanout::HistoryQuery;
use shared::codes::*;
use shared::protocol::{
    EmptyResult, HistoryRequest, HistoryResult, PresenceResult, PresenceStatsResult, Publication,
    PublishRequest, ReplyBody,
};
use tokio::time::Instant;

use super::session::{internal, Conn, Outcome};

impl Conn {
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

    pub(super) async fn publish(&self, req: PublishRequest) -> Outcome<ReplyBody> {
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

    pub(super) async fn presence(&self, channel: &str) -> Outcome<ReplyBody> {
        self.presence_allowed(channel)?;
        let presence = self.node.broker.presence(channel).await.map_err(internal)?;
        Ok(ReplyBody::Presence(PresenceResult { presence }))
    }

    pub(super) async fn presence_stats(&self, channel: &str) -> Outcome<ReplyBody> {
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

    pub(super) async fn history(&self, req: HistoryRequest) -> Outcome<ReplyBody> {
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
}
