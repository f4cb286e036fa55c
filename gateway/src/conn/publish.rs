//! Publish, presence, history and rpc: the commands that read or write a room the
//! connection is subscribed to (publish with its rate limit and proxy), and the
//! RPC proxy.

use shared::codes::*;
use shared::protocol::{
    EmptyResult, HistoryRequest, HistoryResult, PresenceResult, PresenceStatsResult, Publication,
    PublishRequest, ReplyBody, RpcRequest, RpcResult,
};
use shared::proxy::ConnFields;
use tokio::time::Instant;

use super::pipeline::Call;
use super::recovery::{fitting, reply_bytes};
use super::session::{allowed, backend_payload, internal, proxy_failed, Conn, Outcome};
use crate::metrics::Source;
use crate::node::{HistoryError, Node};
use crate::proxy::Kind;

/// How a checked publish goes on.
pub(super) enum Begun {
    /// The broker call, for the connection's pipeline.
    Call(Call),
    /// The publish proxy is asked first.
    Proxied(Prepared),
}

/// A publication checked and ready for the broker.
pub(super) struct Prepared {
    channel: String,
    publication: Publication,
    history: Option<fanout::HistoryOptions>,
}

impl Prepared {
    async fn publish(self, node: &Node) -> Outcome<ReplyBody> {
        node.publish(
            &self.channel,
            self.publication,
            self.history,
            Source::Client,
        )
        .await
        .map_err(internal)?;
        Ok(ReplyBody::Publish(EmptyResult {}))
    }
}

impl Conn {
    fn take_publish_token(&self) -> bool {
        let cfg = &self.node.config.client;
        let mut s = self.session.lock();
        s.publish_bucket
            .take(Instant::now(), cfg.publish_rate_per_sec, cfg.publish_burst)
    }

    /// Check a publish and take its rate token. Without the publish proxy the
    /// broker call is returned to run in the connection's pipeline; with it, the
    /// prepared publication for [`Conn::publish_proxied`].
    pub(super) fn begin_publish(&self, req: PublishRequest) -> Outcome<Begun> {
        let Some(data) = req.data else {
            return Err(DISCONNECT_BAD_REQUEST.into());
        };
        let (_, opts) = self.resolve(&req.channel)?;
        if data.get().len() > opts.max_publication_bytes {
            return Err(ERROR_BAD_REQUEST.into());
        }
        // With the publish proxy the backend decides who may publish, subscribed
        // or not (as in Centrifugo); otherwise subscribers of a room that allows it.
        let info = match self.subscribed_info(&req.channel) {
            Some(info) if opts.proxy_publish || opts.allow_publish => info,
            None if opts.proxy_publish => self.client_info(),
            _ => return Err(ERROR_PERMISSION_DENIED.into()),
        };
        if !self.take_publish_token() {
            return Err(ERROR_TOO_MANY_REQUESTS.into());
        }
        let history = opts.history();
        let proxy_publish = opts.proxy_publish;
        let prepared = Prepared {
            channel: req.channel,
            publication: Publication {
                data,
                info: Some(info),
                offset: 0,
                tags: Default::default(),
            },
            history,
        };
        if proxy_publish {
            return Ok(Begun::Proxied(prepared));
        }
        let node = self.node.clone();
        Ok(Begun::Call(Box::pin(async move {
            prepared.publish(&node).await
        })))
    }

    /// A publish the backend is asked about first (not pipelined: the backend's
    /// answer may rewrite it).
    pub(super) async fn publish_proxied(&self, mut p: Prepared) -> Outcome<ReplyBody> {
        let r = self.ask_publish_proxy(&p.channel, &p.publication).await?;
        if let Some(data) = backend_payload(Kind::Publish, "data", &r.data, &r.b64data)? {
            p.publication.data = data;
        }
        if r.skip_history {
            p.history = None;
        }
        p.publication.tags = r.tags;
        p.publish(&self.node).await
    }

    async fn ask_publish_proxy(
        &self,
        channel: &str,
        publication: &Publication,
    ) -> Outcome<shared::proxy::PublishResult> {
        let proxy = self
            .node
            .proxy
            .as_ref()
            .expect("bug: validated: proxy_publish needs a publish proxy");
        let req = shared::proxy::PublishRequest {
            conn: ConnFields::new(&self.client),
            user: self.user().to_string(),
            channel: channel.to_owned(),
            data: publication.data.clone(),
        };
        let decision = proxy
            .publish(self.headers.as_ref(), &req)
            .await
            .map_err(|e| proxy_failed(Kind::Publish, &self.client, e))?;
        allowed(decision)
    }

    /// `rpc`: answered by the RPC proxy, or 108 without one.
    pub(super) async fn rpc(&self, req: RpcRequest) -> Outcome<ReplyBody> {
        let Some(proxy) = self.node.proxy.as_ref().filter(|p| p.has(Kind::Rpc)) else {
            return Err(ERROR_NOT_AVAILABLE.into());
        };
        let call = shared::proxy::RpcRequest {
            conn: ConnFields::new(&self.client),
            user: self.user().to_string(),
            method: req.method,
            data: req.data,
        };
        let decision = proxy
            .rpc(self.headers.as_ref(), &call)
            .await
            .map_err(|e| proxy_failed(Kind::Rpc, &self.client, e))?;
        let r = allowed(decision)?;
        let data = backend_payload(Kind::Rpc, "data", &r.data, &r.b64data)?;
        Ok(ReplyBody::Rpc(RpcResult { data }))
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
        let page = self
            .node
            .read_history(&req.channel, opts, req.since, req.limit, req.reverse)
            .await
            .map_err(|e| match e {
                HistoryError::ReverseFromZero => ERROR_BAD_REQUEST.into(),
                HistoryError::EpochChanged => ERROR_UNRECOVERABLE_POSITION.into(),
                HistoryError::Broker(e) => internal(e),
            })?;
        // A page never takes more than half the outbound budget: more would close
        // the connection as slow. The client reads on from the last offset it got.
        let mut page = page;
        let fits = fitting(
            page.publications.iter().map(|p| reply_bytes(p)),
            self.out.max_bytes() / 2,
        );
        page.publications.truncate(fits);
        Ok(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }
}
