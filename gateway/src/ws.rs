//! The one task of a WebSocket connection: it reads frames and handles commands in
//! order (publishes run in the connection's pipeline while it reads on), drains
//! the outbound queue into one frame per wake-up (or per `client.write_delay`), and
//! runs the connection's timers.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{Frame, Payload, Role, WebSocket, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shared::codes::{
    DisconnectCode, DISCONNECT_BAD_REQUEST, DISCONNECT_MESSAGE_TOO_BIG, DISCONNECT_SHUTDOWN,
    DISCONNECT_WS_INVALID_PAYLOAD, DISCONNECT_WS_PROTOCOL_ERROR,
};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::conn::{Conn, Pause, Pipeline, PongOverdue};
use crate::frame::{FrameReader, Message, ReadError};
use crate::metrics::CLOSE_ABNORMAL;
use crate::node::Node;
use crate::outbound::{Drained, Item};
use crate::proxy::Headers;

type Io = TokioIo<Upgraded>;

/// A normal closure, used to answer a client's close frame or when it vanished.
const CLOSE_NORMAL: DisconnectCode = DisconnectCode {
    code: 1000,
    reason: "",
};

/// Frames larger than this are written with their reusable buffer shrunk back after.
const FRAME_BUFFER_KEEP: usize = 16 << 10;

/// How long queued messages wait for the replies of a client's publishes in
/// flight, so that they share one frame (one write) with them.
const IN_FLIGHT_HOLD: std::time::Duration = std::time::Duration::from_millis(2);

/// Frames read, at most, to look for a pong before a connection is judged silent.
const PONG_LOOKAHEAD_FRAMES: usize = 64;

/// Serve one upgraded WebSocket until it closes, then leave its rooms. `headers`
/// are the upgrade request's headers kept for proxy calls.
pub(crate) async fn serve(node: Arc<Node>, ws: WebSocket<Io>, headers: Option<Headers>) {
    // Reads go through our own frame reader (no buffer while idle); writes through
    // fastwebsockets, vectored from the first byte so it keeps no write buffer either.
    let (rd, wr) = tokio::io::split(ws.into_inner());
    let (_, mut tx) = fastwebsockets::after_handshake_split(tokio::io::empty(), wr, Role::Server);
    tx.set_writev_threshold(0);
    let mut rx = FrameReader::new(rd, node.config.client.max_message_bytes);
    let guard = TeardownGuard::new(Conn::new(node, headers));
    drive(guard.conn(), &mut rx, &mut tx).await;
    guard.finish().await;
}

/// Counts a connection while it lives and leaves its rooms (hub, presence, user
/// index) when it ends: normally through [`TeardownGuard::finish`], and from `Drop`
/// if the task ends any other way (a panic, an aborted task), so that no slot or
/// ghost member is left behind.
struct TeardownGuard(Option<Arc<Conn>>);

impl TeardownGuard {
    fn new(conn: Arc<Conn>) -> Self {
        conn.node.metrics.connections.inc();
        TeardownGuard(Some(conn))
    }

    fn conn(&self) -> &Arc<Conn> {
        self.0
            .as_ref()
            .expect("bug: the connection is taken only at the end")
    }

    async fn finish(mut self) {
        if let Some(conn) = self.0.take() {
            teardown(conn).await;
        }
    }
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // A panic is reported by the panic hook; this only says what follows.
            tracing::debug!(client = %conn.client, "connection task ended abnormally; releasing it");
            // Without a runtime (the process is exiting) there is nothing to release.
            if tokio::runtime::Handle::try_current().is_ok() {
                let tasks = conn.node.tasks.clone();
                tasks.spawn(teardown(conn));
            }
        }
    }
}

async fn teardown(conn: Arc<Conn>) {
    conn.teardown().await;
    conn.node.metrics.connections.dec();
    conn.node.release_connection();
}

/// How far the client's side of the stream can still be read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// Frames are read and handled.
    Open,
    /// The stream cannot be parsed any more (an oversized message, a protocol
    /// error): what arrives is dropped until the client goes, so that our close
    /// frame is read instead of lost to a reset of a socket with unread data.
    Discarding,
    /// The client sent its close frame or went away.
    Ended,
}

/// The connection's one task: read and handle commands, write what the outbound
/// queue holds, and run the timers, until the connection closes.
///
/// A command other than a publish is handled to completion before the next
/// wake-up, so writes queue behind a command that waits for Redis (bounded by the
/// queue's byte budget, and then flushed as one frame). Publishes run in the
/// pipeline while the task reads on; a full pipeline stops reading. One task
/// instead of a reader and a writer saved a task and two cancellation tokens per
/// connection.
async fn drive<R, W>(conn: &Arc<Conn>, rx: &mut FrameReader<R>, tx: &mut WebSocketWrite<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut items = VecDeque::new();
    let mut parts: Vec<Bytes> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut inbound = Inbound::Open;
    let mut pipeline = Pipeline::default();
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    // Created once: re-creating it on every wake-up re-registered a waiter per
    // delivery (2-4% of the gateway's CPU in a fan-out profile). Once the node
    // drains, the connection waits for its turn before it is closed.
    let node = &conn.node;
    let shutdown = async {
        node.shutdown.cancelled().await;
        // Boxed: a timer inline would cost every idle connection 64 bytes.
        Box::pin(tokio::time::sleep(node.drain_delay())).await;
    };
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    loop {
        let now = Instant::now();
        let mut next = match conn.poll_timers(now, false) {
            Ok(next) => next,
            Err(PongOverdue) => {
                if let Some(since) = pipeline.pause_so_far() {
                    // Not read since `since` (a full pipeline): the pong may wait
                    // in the socket, and that time is the node's.
                    conn.was_busy_since(since);
                    conn.node.metrics.read_paused(since.elapsed());
                } else if inbound == Inbound::Open {
                    // The pong may have arrived and wait unread behind the node's
                    // backlog: read what is there before judging the client.
                    inbound = Box::pin(read_ahead(conn, rx, &mut pipeline)).await;
                }
                let now = Instant::now();
                conn.poll_timers(now, true).unwrap_or(now)
            }
        };
        // With `client.write_delay` (or `busy_write_delay` while the node is
        // saturated) the first message queued waits that long for others to
        // share its frame (a close goes at once). While the client's
        // publishes are in flight, what is queued (often the client's own
        // publication, which Redis sends with the reply) waits for their replies,
        // up to `IN_FLIGHT_HOLD`.
        let cfg = &conn.node.config.client;
        let mut hold = cfg.write_delay;
        if conn.node.load.is_busy() {
            hold = hold.max(cfg.busy_write_delay);
        }
        if !pipeline.is_empty() {
            hold = hold.max(IN_FLIGHT_HOLD);
        }
        let drained = match conn.out.drain_after(&mut items, hold) {
            Ok(drained) => drained,
            Err(at) => {
                next = next.min(at);
                Drained { close: None }
            }
        };
        let had_items = !items.is_empty();
        // Messages go out as one frame up to each control item, which follows them.
        // Every write is boxed: the task then carries no write state while idle,
        // for one allocation per wake-up that writes.
        loop {
            let control = loop {
                match items.pop_front() {
                    Some(Item::Data(b)) => parts.push(b),
                    other => break other,
                }
            };
            if !parts.is_empty() {
                let flushed = Box::pin(write_parts(conn, tx, &mut parts, &mut buf, sleep.as_mut()));
                if flushed.await.is_err() {
                    return abandoned(conn);
                }
            }
            match control {
                None => break,
                Some(Item::Pong(payload)) => {
                    let pong = Frame::pong(Payload::Borrowed(&payload));
                    if Box::pin(write(conn, tx, pong, sleep.as_mut()))
                        .await
                        .is_err()
                    {
                        return abandoned(conn);
                    }
                }
                Some(Item::Data(_)) => {} // collected above
                // Work the server asks of the connection (unsubscribe, subscribe,
                // refresh), in order with the messages around it.
                Some(item) => {
                    let started = Instant::now();
                    Box::pin(conn.handle_item(item)).await;
                    conn.was_busy_since(started);
                }
            }
        }
        if let Some(code) = drained.close {
            conn.node.metrics.disconnected(code.code);
            let reason = truncate_reason(&code.reason);
            let close = Frame::close(code.code, reason.as_bytes());
            if Box::pin(write(conn, tx, close, sleep.as_mut()))
                .await
                .is_ok()
            {
                // Give the client time to answer with its close frame, so that the
                // socket is not reset under a close frame it has not read yet.
                let wait = conn.node.config.client.close_timeout;
                tokio::time::timeout(wait, Box::pin(await_client_close(rx, inbound)))
                    .await
                    .ok();
            }
            return;
        }
        if had_items {
            continue;
        }
        // A full pipeline stops reading: TCP pushes back on the client. That time
        // is the node's backlog, not the client's silence.
        let full = pipeline.is_full(conn.max_in_flight());
        match pipeline.pause(full) {
            Pause::Began => conn.node.metrics.read_pauses.inc(),
            Pause::Ended(since) => {
                conn.was_busy_since(since);
                conn.node.metrics.read_paused(since.elapsed());
            }
            Pause::Unchanged => {}
        }
        sleep.as_mut().reset(next);
        tokio::select! {
            // The frame reader keeps partial frames in its own buffer, so dropping
            // `next()` when another branch wins loses nothing.
            r = rx.next(), if inbound == Inbound::Open && !full => {
                let started = Instant::now();
                inbound = Box::pin(handle_inbound(conn, r, &mut pipeline)).await;
                conn.was_busy_since(started);
            }
            // Only a unit comes out of the select: a publish's outcome inline
            // would grow every connection's task. Every reply ready now is answered in this wake-up, so that they
            // share a frame. (The noop waker `take_ready` leaves is replaced when
            // the select polls `head_done` again before sleeping.)
            _ = pipeline.head_done(), if !pipeline.is_empty() => {
                let mut next = pipeline.pop_done();
                while let Some(f) = next {
                    if let Err(code) = conn.finish(f) {
                        conn.node.metrics.protocol_errors.inc();
                        conn.out.close(code);
                        break;
                    }
                    next = pipeline.take_ready();
                }
            }
            // While publishes are in flight, the next reply wakes the task (as
            // soon as Redis answers, or at the broker's command timeout) and what
            // was queued meanwhile goes out with it, within `IN_FLIGHT_HOLD`:
            // such a message needs no wake-up of its own. A close waits for that
            // wake-up too.
            _ = conn.out.notified(), if pipeline.is_empty() => {}
            _ = &mut sleep => {}
            _ = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                conn.out.close(DISCONNECT_SHUTDOWN);
            }
        }
    }
}

/// Read and handle the frames that have already arrived, without waiting, until
/// none is left, the pipeline is full or [`PONG_LOOKAHEAD_FRAMES`] were read.
async fn read_ahead<R: AsyncRead + Unpin>(
    conn: &Conn,
    rx: &mut FrameReader<R>,
    pipeline: &mut Pipeline,
) -> Inbound {
    let started = Instant::now();
    let inbound = read_ahead_frames(conn, rx, pipeline).await;
    conn.was_busy_since(started);
    inbound
}

async fn read_ahead_frames<R: AsyncRead + Unpin>(
    conn: &Conn,
    rx: &mut FrameReader<R>,
    pipeline: &mut Pipeline,
) -> Inbound {
    use futures_util::FutureExt;
    for _ in 0..PONG_LOOKAHEAD_FRAMES {
        if pipeline.is_full(conn.max_in_flight()) {
            break;
        }
        let Some(r) = rx.next().now_or_never() else {
            break;
        };
        let inbound = handle_inbound(conn, r, pipeline).await;
        if inbound != Inbound::Open {
            return inbound;
        }
    }
    Inbound::Open
}

/// Count a connection whose socket failed before a close frame could be sent.
fn abandoned(conn: &Conn) {
    conn.node.metrics.disconnected(CLOSE_ABNORMAL);
}

/// Act on what one read returned; returns how the stream is to be read from now on.
async fn handle_inbound(
    conn: &Conn,
    res: Result<Message, ReadError>,
    pipeline: &mut Pipeline,
) -> Inbound {
    match res {
        Ok(Message::Text(payload)) => {
            if !conn.out.is_closing() {
                if let Err(code) = conn.handle_frame(&payload, pipeline).await {
                    conn.node.metrics.protocol_errors.inc();
                    tracing::debug!(client = %conn.client, user = %conn.user(), code = code.code, "closing connection");
                    conn.out.close(code);
                }
            }
            Inbound::Open
        }
        // The JSON protocol has no binary messages.
        Ok(Message::Binary) => {
            conn.node.metrics.protocol_errors.inc();
            conn.out.close(DISCONNECT_BAD_REQUEST);
            Inbound::Open
        }
        Ok(Message::Close(_)) => {
            conn.out.close(CLOSE_NORMAL);
            Inbound::Ended
        }
        Ok(Message::Ping(payload)) => {
            conn.out.push_item(Item::Pong(payload));
            Inbound::Open
        }
        Err(ReadError::Eof) | Err(ReadError::Io(_)) => {
            conn.out.close(CLOSE_NORMAL);
            Inbound::Ended
        }
        Err(e) => {
            tracing::debug!(client = %conn.client, user = %conn.user(), error = %e, "websocket protocol error");
            conn.node.metrics.protocol_errors.inc();
            conn.out.close(close_code(&e));
            Inbound::Discarding
        }
    }
}

/// The RFC 6455 close code for a stream that cannot be read any further.
fn close_code(e: &ReadError) -> DisconnectCode {
    match e {
        ReadError::TooLarge => DISCONNECT_MESSAGE_TOO_BIG,
        ReadError::InvalidUtf8 => DISCONNECT_WS_INVALID_PAYLOAD,
        ReadError::Protocol(_) | ReadError::Eof | ReadError::Io(_) => DISCONNECT_WS_PROTOCOL_ERROR,
    }
}

/// After our close frame: read until the client's close frame or until it goes
/// (the caller bounds the wait).
async fn await_client_close<R: AsyncRead + Unpin>(rx: &mut FrameReader<R>, inbound: Inbound) {
    match inbound {
        Inbound::Ended => {}
        Inbound::Discarding => rx.discard().await,
        Inbound::Open => loop {
            match rx.next().await {
                Ok(Message::Close(_)) | Err(ReadError::Eof) | Err(ReadError::Io(_)) => return,
                Ok(_) => {}
                Err(_) => return rx.discard().await,
            }
        },
    }
}

enum Stop {
    /// The socket failed or timed out: abandon it.
    Abandon,
}

/// Close reasons must fit a control frame (125 bytes with the code).
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Write one frame within `write_timeout`, timed by the writer's own timer (a
/// `timeout()` per write would put a second timer in every connection's task).
async fn write<W: AsyncWrite + Unpin>(
    conn: &Conn,
    tx: &mut WebSocketWrite<W>,
    frame: Frame<'_>,
    mut deadline: Pin<&mut Sleep>,
) -> Result<(), Stop> {
    deadline
        .as_mut()
        .reset(Instant::now() + conn.node.config.client.write_timeout);
    tokio::select! {
        r = tx.write_frame(frame) => match r {
            Ok(()) => {
                conn.node.metrics.frames_written.inc();
                Ok(())
            }
            Err(e) => {
                tracing::debug!(client = %conn.client, error = %e, "write failed");
                Err(Stop::Abandon)
            }
        },
        _ = deadline => {
            tracing::debug!(client = %conn.client, "write timed out");
            Err(Stop::Abandon)
        }
    }
}

/// Write the queued messages as one text frame, newline-separated.
async fn write_parts<W: AsyncWrite + Unpin>(
    conn: &Conn,
    tx: &mut WebSocketWrite<W>,
    parts: &mut Vec<Bytes>,
    buf: &mut Vec<u8>,
    deadline: Pin<&mut Sleep>,
) -> Result<(), Stop> {
    match parts.len() {
        0 => return Ok(()),
        1 => {
            let one = parts.pop().expect("bug: one part");
            return write(conn, tx, Frame::text(Payload::Borrowed(&one)), deadline).await;
        }
        _ => {}
    }
    buf.clear();
    for (i, p) in parts.drain(..).enumerate() {
        if i > 0 {
            buf.push(b'\n');
        }
        buf.extend_from_slice(&p);
    }
    let res = write(conn, tx, Frame::text(Payload::Borrowed(buf)), deadline).await;
    if buf.capacity() > FRAME_BUFFER_KEEP {
        *buf = Vec::new();
    }
    res
}

#[cfg(test)]
mod tests {
    use crate::frame::ReadError;

    #[test]
    fn unreadable_streams_close_with_the_rfc_codes() {
        let code = |e: ReadError| super::close_code(&e).code;
        assert_eq!(code(ReadError::Protocol("reserved bits set")), 1002);
        assert_eq!(code(ReadError::InvalidUtf8), 1007);
        assert_eq!(code(ReadError::TooLarge), 1009);
    }

    /// A connection task that ends without finishing (here: dropped, as a panic
    /// would drop it) still leaves its rooms and frees its slot.
    #[tokio::test]
    async fn a_connection_dropped_mid_flight_is_torn_down() {
        let mut config = crate::Config::default();
        config.token.hmac_secret = Some("s".into());
        let node = crate::Node::new(config, fanout::MemoryBroker::new()).unwrap();
        let token = shared::auth::mint_hs256(
            "s",
            &shared::auth::MintClaims {
                sub: "u".into(),
                ..Default::default()
            },
        );
        let guard = super::TeardownGuard::new(crate::conn::Conn::new(node.clone(), None));
        let frame = format!(
            "{{\"id\":1,\"connect\":{{\"token\":\"{token}\"}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"room\"}}}}"
        );
        let mut pipeline = crate::conn::Pipeline::default();
        let conn = guard.conn();
        conn.handle_frame(frame.as_bytes(), &mut pipeline)
            .await
            .unwrap();
        assert_eq!((node.hub.num_rooms(), node.hub.num_users()), (1, 1));
        assert_eq!(node.metrics.connections.get(), 1);
        drop(guard);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while node.metrics.connections.get() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "never torn down");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!((node.hub.num_rooms(), node.hub.num_users()), (0, 0));
        let presence = node.broker.presence("room").await.unwrap();
        assert!(presence.is_empty(), "{presence:?}");
    }

    /// What an idle connection's task carries, inline, for its whole life.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let node = crate::Node::new(crate::Config::default(), fanout::MemoryBroker::new()).unwrap();
        let conn = crate::conn::Conn::new(node, None);
        let (rd, wr) = tokio::io::split(tokio::io::empty());
        let mut rx = crate::frame::FrameReader::new(rd, 1024);
        let (_, mut tx) = fastwebsockets::after_handshake_split(
            tokio::io::empty(),
            wr,
            fastwebsockets::Role::Server,
        );
        // As in `serve`: the task owns the reader and the writer half.
        let task = async move { super::drive(&conn, &mut rx, &mut tx).await };
        let size = std::mem::size_of_val(&task);
        // Measured 912 B: the publish pipeline added 40 B (its pointer and its
        // wait in the select) to the 872 B before it. A reader and a writer task
        // used to carry 392 + 744 B, and before the command path and writes were
        // boxed, 3 KB more.
        assert!(size <= 936, "connection task {size} B");
    }
}
