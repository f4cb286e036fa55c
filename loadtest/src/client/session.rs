//! Starting a session on an open connection: `connect` and the `subscribe`s sent
//! in one frame, then their replies awaited (bounded), with pushes read meanwhile
//! kept for the reader and pings answered.

use std::time::Duration;

use super::error::ClientError;
use super::frames::{Inbound, Reader, Writer};
use super::message::{is_ping, messages, ConnectResult, Reply, SubscribeResult, Subscription};

/// Send `connect` and the `subscribe`s in one frame and wait, bounded by `timeout`,
/// for all their replies. Pushes read meanwhile are kept for the next
/// [`Reader::read`]; pings are answered once the connect result allows it.
pub async fn start_session(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    channels: &[&str],
    timeout: Duration,
) -> Result<ConnectResult, ClientError> {
    let subs: Vec<Subscription<'_>> = channels.iter().map(|&c| Subscription::to(c)).collect();
    Ok(start_session_with(reader, writer, token, &subs, timeout)
        .await?
        .0)
}

/// [`start_session`] with the subscribe options of each channel; also returns the
/// subscribe results, one per subscription.
pub async fn start_session_with(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    subs: &[Subscription<'_>],
    timeout: Duration,
) -> Result<(ConnectResult, Vec<SubscribeResult>), ClientError> {
    tokio::time::timeout(timeout, start_session_inner(reader, writer, token, subs))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "connect and subscribe replies",
            after: timeout,
        })?
}

async fn start_session_inner(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    subs: &[Subscription<'_>],
) -> Result<(ConnectResult, Vec<SubscribeResult>), ClientError> {
    let (connect_id, sub_ids) = writer.send_subscriptions(token, subs).await?;
    let mut connected: Option<ConnectResult> = None;
    let mut subscribed = vec![SubscribeResult::default(); subs.len()];
    let mut pending = sub_ids.len();
    let mut backlog: Vec<u8> = Vec::new();
    while connected.is_none() || pending > 0 {
        let payload = match reader.read().await? {
            Inbound::Text(p) => p,
            Inbound::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
        };
        if let Some(f) = reader.take_owed() {
            writer.send_owed(f).await?;
        }
        let mut pongs = 0;
        for msg in messages(&payload) {
            if is_ping(msg) {
                pongs += 1;
                continue;
            }
            let reply = Reply::parse(msg).map_err(|e| {
                ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(msg)))
            })?;
            if reply.id == 0 {
                if reply.push.is_some() {
                    if !backlog.is_empty() {
                        backlog.push(b'\n');
                    }
                    backlog.extend_from_slice(msg);
                } else {
                    pongs += 1;
                }
                continue;
            }
            let what = if reply.id == connect_id {
                "connect".to_owned()
            } else if let Some(i) = sub_ids.iter().position(|&id| id == reply.id) {
                format!("subscribe {}", subs[i].channel)
            } else {
                return Err(ClientError::Protocol(format!(
                    "reply to unknown id {}",
                    reply.id
                )));
            };
            if let Some(e) = reply.error {
                return Err(ClientError::Refused {
                    what,
                    code: e.code,
                    message: e.message.into_owned(),
                });
            }
            if reply.id == connect_id {
                connected = Some(reply.connect.unwrap_or_default());
            } else if let Some(i) = sub_ids.iter().position(|&id| id == reply.id) {
                subscribed[i] = reply.subscribe.unwrap_or_default();
                pending -= 1;
            }
        }
        if connected.as_ref().is_some_and(|c| c.pong) {
            for _ in 0..pongs {
                writer.pong().await?;
            }
        }
    }
    if !backlog.is_empty() {
        reader.set_backlog(backlog);
    }
    Ok((
        connected.expect("bug: loop ends only once connected"),
        subscribed,
    ))
}
