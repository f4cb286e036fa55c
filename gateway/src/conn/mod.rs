//! One client connection: its session and the commands it sends, one file per
//! command family.
//!
//! The connection's task (in [`crate::ws`]) feeds text frames to
//! [`Conn::handle_frame`], which handles the commands in order and enqueues
//! replies on the connection's mailbox ([`crate::outbound::Outbound`]). Publishes
//! enter the connection's [`Pipeline`] and are answered, in order, as Redis
//! answers; any other command waits for them first. Between
//! frames the same task writes what is queued and calls [`Conn::poll_timers`]
//! and [`Conn::server_unsubscribe`].
//!
//! - `session`: the [`Conn`], its session state and the helpers every family uses.
//! - `connect`: connect, refresh, the pong and the connection's timers.
//! - `subscribe`: subscribe (with recovery), unsubscribe, sub_refresh, server-side
//!   subscriptions, leaving rooms.
//! - `recovery`: the pure recovery verdict.
//! - `pipeline`: a connection's publishes in flight to the broker, in order.
//! - `publish`: publish, presence, presence_stats, history, rpc.
//! - `server`: what the server API asks of a connection (subscribe, refresh).

mod bucket;
mod connect;
mod pipeline;
mod publish;
mod recovery;
mod server;
mod session;
mod subscribe;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shared::codes::{
    DisconnectCode, DISCONNECT_BAD_REQUEST, DISCONNECT_NOT_AVAILABLE, DISCONNECT_TOO_MANY_REQUESTS,
    ERROR_TOO_MANY_REQUESTS,
};
use shared::protocol::{self, Command, ReplyBody, Request};

use crate::metrics::Cmd;
pub(crate) use connect::PongOverdue;
pub(crate) use pipeline::{Finished, Pause, Pipeline};
use publish::Begun;
pub(crate) use session::Conn;
use session::{Failure, Outcome, Phase, Sub};

impl Conn {
    /// Handle one text frame: one or more commands joined by `\n`. Publishes enter
    /// `pipeline` and are answered as they complete; any other command waits for
    /// the publishes before it. An `Err` is the code to close the connection with.
    pub(crate) async fn handle_frame(
        &self,
        frame: &[u8],
        pipeline: &mut Pipeline,
    ) -> Result<(), DisconnectCode> {
        let lines = protocol::split_frame(frame).ok_or(DISCONNECT_BAD_REQUEST)?;
        let max = self.node.config.client.max_commands_per_frame;
        for (i, line) in lines.enumerate() {
            if i >= max {
                return Err(DISCONNECT_TOO_MANY_REQUESTS);
            }
            let cmd = Command::parse(line).map_err(|_| DISCONNECT_BAD_REQUEST)?;
            self.handle_command(cmd, pipeline).await?;
            if self.out.is_closing() {
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(
        &self,
        cmd: Command,
        pipeline: &mut Pipeline,
    ) -> Result<(), DisconnectCode> {
        let id = cmd.id;
        let phase = {
            let mut s = self.session.lock();
            self.heard_from_client(&mut s);
            s.phase
        };
        let request = cmd.request();
        let outcome = match (phase, request) {
            (Phase::Connecting, Some(Request::Connect(r))) if id > 0 => {
                let start = Instant::now();
                let outcome = self.connect(id, r).await;
                let m = &self.node.metrics;
                m.command(Cmd::Connect, start);
                match outcome {
                    Ok(()) => m.connects_ok.inc(),
                    Err(_) => m.connects_error.inc(),
                }
                outcome
            }
            (Phase::Connected, Some(Request::Send(_))) => Err(DISCONNECT_NOT_AVAILABLE.into()),
            // Id 0 without `send` is a pong, whatever else the command holds.
            (Phase::Connected, _) if id == 0 => self.pong(),
            // Publishes have their own budget (`publish_rate_per_sec`).
            (Phase::Connected, Some(Request::Publish(r))) if id > 0 => {
                let start = tokio::time::Instant::now();
                let begun = self.begin_publish(r);
                self.make_room(pipeline).await?;
                match begun {
                    Ok(Begun::Call(call)) => {
                        pipeline.push(id, start, call);
                        // Started now (sent to Redis), not on the task's next turn.
                        pipeline.start().await;
                    }
                    Ok(Begun::Proxied(p)) => {
                        self.settle(pipeline).await?;
                        let outcome = self.publish_proxied(p).await;
                        pipeline.push_done(id, start, outcome);
                        self.settle(pipeline).await?;
                    }
                    // In its place, after the replies of the publishes before it.
                    Err(failure) => pipeline.push_done(id, start, Err(failure)),
                }
                return Ok(());
            }
            (Phase::Connected, Some(request)) if id > 0 => {
                self.settle(pipeline).await?;
                if self.take_command_token() {
                    self.dispatch(id, request).await
                } else {
                    Err(ERROR_TOO_MANY_REQUESTS.into())
                }
            }
            _ => Err(DISCONNECT_BAD_REQUEST.into()),
        };
        self.conclude(id, outcome)
    }

    /// Send what a command's outcome says: a reply was sent by the command, an
    /// error reply here, or a close.
    fn conclude(&self, id: u32, outcome: Outcome<()>) -> Result<(), DisconnectCode> {
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Error(e)) => {
                self.out.push(Bytes::from(protocol::encode_error(id, e)));
                Ok(())
            }
            Err(Failure::Custom(body)) => {
                self.reply(id, ReplyBody::Error(body));
                Ok(())
            }
            Err(Failure::Disconnect(d)) => Err(d),
            Err(Failure::Close(close)) => {
                tracing::debug!(client = %self.client, user = %self.user(), code = close.code, "closed by the backend");
                self.out.close(close);
                Ok(())
            }
        }
    }

    /// Answer a publish that left the pipeline.
    pub(crate) fn finish(&self, f: Finished) -> Result<(), DisconnectCode> {
        self.node
            .metrics
            .command(Cmd::Publish, f.started.into_std());
        let outcome = f.outcome.map(|body| self.reply(f.id, body));
        self.conclude(f.id, outcome)
    }

    /// How many of this connection's publishes may be in flight now:
    /// `client.max_publishes_in_flight`, or one while the node is saturated, and
    /// always one on a broker that cannot keep the order of publishes in flight
    /// through a failure (a Redis Cluster's master failover).
    /// Pipelining lets one connection publish faster than a round trip allows
    /// when the node has CPU to spare; a saturated node would only take in
    /// publications faster than it delivers them, moving the backlog from the
    /// senders' sockets into its own queues, past the rooms' history (so that
    /// reconnecting clients could no longer recover).
    pub(crate) fn max_in_flight(&self) -> usize {
        if self.node.load.is_busy() || !self.node.broker.keeps_publish_order() {
            1
        } else {
            self.node.config.client.max_publishes_in_flight
        }
    }

    /// Wait until the pipeline has room for one more publish (the socket is not
    /// read meanwhile: counted as a pause).
    async fn make_room(&self, pipeline: &mut Pipeline) -> Result<(), DisconnectCode> {
        if !pipeline.is_full(self.max_in_flight()) {
            return Ok(());
        }
        let since = std::time::Instant::now();
        self.node.metrics.read_pauses.inc();
        while pipeline.is_full(self.max_in_flight()) {
            self.settle_one(pipeline).await?;
        }
        self.node.metrics.read_paused(since.elapsed());
        Ok(())
    }

    /// Wait for every publish in the pipeline and answer them.
    async fn settle(&self, pipeline: &mut Pipeline) -> Result<(), DisconnectCode> {
        while !pipeline.is_empty() {
            self.settle_one(pipeline).await?;
        }
        Ok(())
    }

    async fn settle_one(&self, pipeline: &mut Pipeline) -> Result<(), DisconnectCode> {
        match pipeline.next().await {
            Some(f) => self.finish(f),
            None => Ok(()),
        }
    }

    async fn dispatch(&self, id: u32, request: Request) -> Outcome<()> {
        let start = Instant::now();
        let cmd = match &request {
            Request::Subscribe(_) => Cmd::Subscribe,
            Request::Unsubscribe(_) => Cmd::Unsubscribe,
            Request::Presence(_) => Cmd::Presence,
            Request::PresenceStats(_) => Cmd::PresenceStats,
            Request::History(_) => Cmd::History,
            Request::Refresh(_) => Cmd::Refresh,
            Request::SubRefresh(_) => Cmd::SubRefresh,
            Request::Rpc(_) => Cmd::Rpc,
            // Publishes go through the pipeline.
            Request::Connect(_) | Request::Ping | Request::Send(_) | Request::Publish(_) => {
                return Err(DISCONNECT_BAD_REQUEST.into())
            }
        };
        let outcome = self.run(id, request).await;
        self.node.metrics.command(cmd, start);
        outcome
    }

    async fn run(&self, id: u32, request: Request) -> Outcome<()> {
        let body = match request {
            Request::Subscribe(r) => return self.subscribe(id, r).await,
            Request::Unsubscribe(r) => self.unsubscribe(&r.channel).await?,
            Request::Presence(r) => self.presence(&r.channel).await?,
            Request::PresenceStats(r) => self.presence_stats(&r.channel).await?,
            Request::History(r) => self.history(r).await?,
            Request::Refresh(r) => self.refresh(r)?,
            Request::SubRefresh(r) => self.sub_refresh(r)?,
            Request::Rpc(r) => self.rpc(r).await?,
            Request::Connect(_) | Request::Ping | Request::Send(_) | Request::Publish(_) => {
                return Err(DISCONNECT_BAD_REQUEST.into())
            }
        };
        self.reply(id, body);
        Ok(())
    }

    /// Whether the command rate allows one more command now.
    fn take_command_token(&self) -> bool {
        let cfg = &self.node.config.client;
        self.session.lock().command_bucket.take(
            tokio::time::Instant::now(),
            cfg.command_rate_per_sec,
            cfg.command_burst,
        )
    }

    /// Leave every room after the socket is gone.
    pub(crate) async fn teardown(&self) {
        let (user, subs): (Arc<str>, Vec<Sub>) = {
            let mut s = self.session.lock();
            (s.user.clone(), s.subs.drain().map(|(_, v)| v).collect())
        };
        // Once per connection; `code` is absent when the socket failed first.
        tracing::debug!(client = %self.client, user = %user, code = self.out.close_code(), rooms = subs.len(), "client disconnected");
        if !user.is_empty() {
            self.node.hub.remove_user(&user, &self.out);
        }
        for sub in &subs {
            self.node.hub.remove(&sub.entry);
        }
        for sub in &subs {
            self.leave_room(sub, true).await;
        }
    }
}
