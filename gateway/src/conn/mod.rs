//! One client connection: its session and the commands it sends, one file per
//! command family.
//!
//! The connection's task (in [`crate::ws`]) feeds text frames to
//! [`Conn::handle_frame`], which handles the commands in order and enqueues
//! replies on the connection's mailbox ([`crate::outbound::Outbound`]). Between
//! frames the same task writes what is queued and calls [`Conn::poll_timers`]
//! and [`Conn::server_unsubscribe`].
//!
//! - `session`: the [`Conn`], its session state and the helpers every family uses.
//! - `connect`: connect, refresh, the pong and the connection's timers.
//! - `subscribe`: subscribe (with recovery), unsubscribe, sub_refresh, server-side
//!   subscriptions, leaving rooms.
//! - `recovery`: the pure recovery verdict.
//! - `publish`: publish, presence, presence_stats, history, rpc.
//! - `server`: what the server API asks of a connection (subscribe, refresh).

mod bucket;
mod connect;
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
pub(crate) use session::Conn;
use session::{Failure, Outcome, Phase, Sub};

impl Conn {
    /// Handle one text frame: one or more commands joined by `\n`. An `Err` is the
    /// code to close the connection with.
    pub(crate) async fn handle_frame(&self, frame: &[u8]) -> Result<(), DisconnectCode> {
        let lines = protocol::split_frame(frame).ok_or(DISCONNECT_BAD_REQUEST)?;
        let max = self.node.config.client.max_commands_per_frame;
        for (i, line) in lines.enumerate() {
            if i >= max {
                return Err(DISCONNECT_TOO_MANY_REQUESTS);
            }
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
            (Phase::Connected, Some(request)) if id > 0 => {
                if matches!(request, Request::Publish(_)) || self.take_command_token() {
                    self.dispatch(id, request).await
                } else {
                    Err(ERROR_TOO_MANY_REQUESTS.into())
                }
            }
            _ => Err(DISCONNECT_BAD_REQUEST.into()),
        };
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

    async fn dispatch(&self, id: u32, request: Request) -> Outcome<()> {
        let start = Instant::now();
        let cmd = match &request {
            Request::Subscribe(_) => Cmd::Subscribe,
            Request::Unsubscribe(_) => Cmd::Unsubscribe,
            Request::Publish(_) => Cmd::Publish,
            Request::Presence(_) => Cmd::Presence,
            Request::PresenceStats(_) => Cmd::PresenceStats,
            Request::History(_) => Cmd::History,
            Request::Refresh(_) => Cmd::Refresh,
            Request::SubRefresh(_) => Cmd::SubRefresh,
            Request::Rpc(_) => Cmd::Rpc,
            Request::Connect(_) | Request::Ping | Request::Send(_) => {
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
            Request::Publish(r) => self.publish(r).await?,
            Request::Presence(r) => self.presence(&r.channel).await?,
            Request::PresenceStats(r) => self.presence_stats(&r.channel).await?,
            Request::History(r) => self.history(r).await?,
            Request::Refresh(r) => self.refresh(r)?,
            Request::SubRefresh(r) => self.sub_refresh(r)?,
            Request::Rpc(r) => self.rpc(r).await?,
            Request::Connect(_) | Request::Ping | Request::Send(_) => {
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
