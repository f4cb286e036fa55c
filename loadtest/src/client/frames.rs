//! Frame I/O on an open connection: the [`Reader`] and [`Writer`] halves (commands
//! encoded into one reused buffer, every write bounded), and [`serve`], which reads
//! frames and answers pings until cancelled.

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketRead, WebSocketWrite,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use super::error::ClientError;
use super::message::Subscription;

/// What one read returned.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame: one or more messages joined by `\n` (see
    /// [`messages`](super::message::messages)).
    Text(Payload<'static>),
    /// The server's close frame.
    Closed { code: u16, reason: String },
}

/// The receiving half of a connection.
pub struct Reader {
    ws: FragmentCollectorRead<OwnedReadHalf>,
    /// Messages read while the session was set up that were not replies to it;
    /// handed out by the next [`Reader::read`].
    backlog: Option<Vec<u8>>,
    /// A control frame the WebSocket layer owes the server (a pong to a WebSocket
    /// ping, the echo of a close), for the [`Writer`] to send.
    owed: Option<Frame<'static>>,
}

impl Reader {
    pub(super) fn new(read: WebSocketRead<OwnedReadHalf>) -> Reader {
        Reader {
            ws: FragmentCollectorRead::new(read),
            backlog: None,
            owed: None,
        }
    }

    /// Keep messages read while the session was set up for the next [`Reader::read`].
    pub(super) fn set_backlog(&mut self, backlog: Vec<u8>) {
        self.backlog = Some(backlog);
    }

    /// The next text or close frame. Not cancel-safe (fastwebsockets' `read_frame`
    /// is not): cancel it only when the connection is dropped afterwards.
    ///
    /// A WebSocket-level ping is answered through [`Reader::take_owed`] after the
    /// next data frame; the gateway pings at the protocol level (`{}`), so this
    /// delay does not arise against it.
    pub async fn read(&mut self) -> Result<Inbound, ClientError> {
        if let Some(b) = self.backlog.take() {
            return Ok(Inbound::Text(Payload::Owned(b)));
        }
        loop {
            let owed = &mut self.owed;
            let frame = self
                .ws
                .read_frame(&mut |f: Frame<'static>| {
                    *owed = Some(f);
                    std::future::ready(Ok::<(), Infallible>(()))
                })
                .await?;
            match frame.opcode {
                OpCode::Text => return Ok(Inbound::Text(frame.payload)),
                OpCode::Close => {
                    let p = &frame.payload;
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                    return Ok(Inbound::Closed { code, reason });
                }
                OpCode::Binary => {
                    return Err(ClientError::Protocol(
                        "binary frame on a JSON connection".into(),
                    ))
                }
                OpCode::Ping | OpCode::Pong | OpCode::Continuation => {}
            }
        }
    }

    /// A control frame owed to the server since the last call, if any.
    pub fn take_owed(&mut self) -> Option<Frame<'static>> {
        self.owed.take()
    }
}

/// The sending half of a connection. Every write is bounded by the write timeout.
pub struct Writer {
    ws: WebSocketWrite<OwnedWriteHalf>,
    /// Reused for every command, so sending allocates nothing in the steady state.
    buf: Vec<u8>,
    next_id: u32,
    write_timeout: Duration,
}

impl Writer {
    pub(super) fn new(ws: WebSocketWrite<OwnedWriteHalf>, write_timeout: Duration) -> Writer {
        Writer {
            ws,
            buf: Vec::with_capacity(256),
            next_id: 0,
            write_timeout,
        }
    }

    /// A fresh command id (never 0: id 0 means pong).
    pub fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Send `connect` (with `token` if any) and one `subscribe` per channel in one
    /// frame, as the SDKs do. Returns the ids: the connect's, then one per channel.
    pub async fn send_session(
        &mut self,
        token: Option<&str>,
        channels: &[&str],
    ) -> Result<(u32, Vec<u32>), ClientError> {
        let subs: Vec<Subscription<'_>> = channels.iter().map(|&c| Subscription::to(c)).collect();
        self.send_subscriptions(token, &subs).await
    }

    /// [`Writer::send_session`] with the subscribe options of each channel.
    pub async fn send_subscriptions(
        &mut self,
        token: Option<&str>,
        subs: &[Subscription<'_>],
    ) -> Result<(u32, Vec<u32>), ClientError> {
        self.buf.clear();
        let connect_id = self.next_id();
        write!(self.buf, "{{\"id\":{connect_id},\"connect\":{{").expect("bug: Vec write");
        if let Some(t) = token {
            self.buf.extend_from_slice(b"\"token\":");
            serde_json::to_writer(&mut self.buf, t).expect("bug: Vec write");
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(b"\"name\":\"loadtest\"}}");
        let mut ids = Vec::with_capacity(subs.len());
        for sub in subs {
            let id = self.next_id();
            write!(self.buf, "\n{{\"id\":{id},\"subscribe\":{{\"channel\":")
                .expect("bug: Vec write");
            serde_json::to_writer(&mut self.buf, sub.channel).expect("bug: Vec write");
            if sub.recoverable {
                self.buf.extend_from_slice(b",\"recoverable\":true");
            }
            if let Some(p) = &sub.recover_from {
                write!(
                    self.buf,
                    ",\"recover\":true,\"offset\":{},\"epoch\":",
                    p.offset
                )
                .expect("bug: Vec write");
                serde_json::to_writer(&mut self.buf, &p.epoch).expect("bug: Vec write");
            }
            self.buf.extend_from_slice(b"}}");
            ids.push(id);
        }
        self.flush_text().await?;
        Ok((connect_id, ids))
    }

    /// Send `publish` on `channel` with command id `id`; `data` writes the
    /// publication's JSON (one line, no `\n`) into the buffer it is given.
    pub async fn publish(
        &mut self,
        id: u32,
        channel: &str,
        data: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ClientError> {
        self.buf.clear();
        write!(self.buf, "{{\"id\":{id},\"publish\":{{\"channel\":").expect("bug: Vec write");
        serde_json::to_writer(&mut self.buf, channel).expect("bug: Vec write");
        self.buf.extend_from_slice(b",\"data\":");
        data(&mut self.buf);
        self.buf.extend_from_slice(b"}}");
        self.flush_text().await
    }

    /// Answer a server ping: the empty command `{}`.
    pub async fn pong(&mut self) -> Result<(), ClientError> {
        self.buf.clear();
        self.buf.extend_from_slice(b"{}");
        self.flush_text().await
    }

    /// Send a control frame the reader owes the server ([`Reader::take_owed`]).
    pub async fn send_owed(&mut self, frame: Frame<'static>) -> Result<(), ClientError> {
        write_bounded(&mut self.ws, frame, self.write_timeout, "websocket write").await
    }

    /// Send a close frame with `code`, bounded by [`CLOSE_WRITE_TIMEOUT`]; the
    /// connection is dropped afterwards without waiting for the server's answer.
    pub async fn close(&mut self, code: u16) -> Result<(), ClientError> {
        let frame = Frame::close(code, b"");
        write_bounded(&mut self.ws, frame, CLOSE_WRITE_TIMEOUT, "websocket close").await
    }

    async fn flush_text(&mut self) -> Result<(), ClientError> {
        // The client masks in place: the buffer is rebuilt for every command anyway.
        let frame = Frame::text(Payload::BorrowedMut(&mut self.buf[..]));
        write_bounded(&mut self.ws, frame, self.write_timeout, "websocket write").await
    }
}

async fn write_bounded(
    ws: &mut WebSocketWrite<OwnedWriteHalf>,
    frame: Frame<'_>,
    after: Duration,
    what: &'static str,
) -> Result<(), ClientError> {
    tokio::time::timeout(after, ws.write_frame(frame))
        .await
        .map_err(|_| ClientError::Timeout { what, after })??;
    Ok(())
}

/// Bound on sending the close frame at the end of a run: a stuck server must not
/// hold up the end of the run by the whole write timeout.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Read frames until `cancel` fires, then close with 1000 (normal closure). Each
/// text frame goes to `on_frame`, which returns the pings it held; they are answered
/// when `pong` (the connect result asked for pongs), as are WebSocket control frames.
/// `Ok` when cancelled; `Err` when the connection ended first (a close frame from
/// the server is [`ClientError::Closed`]).
pub async fn serve(
    reader: &mut Reader,
    writer: &mut Writer,
    pong: bool,
    cancel: &CancellationToken,
    mut on_frame: impl FnMut(&[u8]) -> usize,
) -> Result<(), ClientError> {
    // Created once: a fresh `cancelled()` per frame registers and unregisters a
    // waiter under the token's lock, which every connection task contends for.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // `read` is not cancel-safe; cancelling it is fine here because the
        // connection is closed and dropped right after.
        let r = tokio::select! {
            biased;
            _ = &mut cancelled => {
                // The run is over either way; a failed close is not the server's fault.
                writer.close(1000).await.ok();
                return Ok(());
            }
            r = reader.read() => r,
        };
        match r? {
            Inbound::Text(frame) => {
                let pings = on_frame(&frame);
                if pong {
                    for _ in 0..pings {
                        writer.pong().await?;
                    }
                }
            }
            Inbound::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
        }
        if let Some(f) = reader.take_owed() {
            writer.send_owed(f).await?;
        }
    }
}
