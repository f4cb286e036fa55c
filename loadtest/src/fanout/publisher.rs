//! A publishing connection: subscribes to its rooms (the gateway lets only
//! subscribers publish), waits for the start signal, publishes at its share of the
//! rate, and matches the server's acks. Its reader half also checks what it receives.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::Frame;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lanes;
use super::receiver::Receiver;
use super::state::{open_session, PublisherDone, Ready, Run};
use crate::client::{ClientError, Inbound, Reply, Writer};
use crate::dial::Session;
use crate::stamp::{unix_micros, write_stamp};

/// Publications sent and not yet acked, per publisher. Beyond it the publisher
/// waits, so a stalled server shows as a publication rate below the target.
const MAX_IN_FLIGHT: usize = 4096;
/// Publications sent in one wake-up at most, so pongs are never held up long.
const MAX_BURST: u64 = 256;
/// Refused publications remembered per publisher, to tell their gaps from loss.
const REFUSED_SAMPLES: usize = 10_000;

/// Publications in flight and their outcomes; shared by the reader and writer halves.
#[derive(Default)]
struct Book {
    /// Command id -> (index into the publisher's rooms, q).
    in_flight: HashMap<u32, (usize, u64)>,
    acked: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// (room, stamp id, q) of refused publications.
    refused: Vec<(u32, u32, u64)>,
}

/// What the reader hands the writer to send.
enum Owed {
    Pong,
    Frame(Frame<'static>),
}

pub(crate) async fn publisher(
    run: Arc<Run>,
    conn: usize,
    p: u32,
    ready: mpsc::Sender<Ready>,
    done: mpsc::Sender<PublisherDone>,
) -> Option<Receiver> {
    let rooms = run.plan.publisher_rooms(p);
    let session = open_session(&run, conn, &rooms, true, ready).await?;
    let mut rx = Receiver::new(&run, conn, &rooms);
    if run.api.is_some() {
        return Some(lanes::publisher(run.clone(), p, rooms, session, rx, done).await);
    }
    let Session {
        mut reader,
        mut writer,
        connected: session,
        ..
    } = session;
    let book = Mutex::new(Book {
        acked: vec![0; rooms.len()],
        ..Book::default()
    });
    let permits = Semaphore::new(MAX_IN_FLIGHT);
    let reader_done = CancellationToken::new();
    let (owed_tx, mut owed_rx) = mpsc::channel::<Owed>(16);

    let read = async {
        let owed_tx = owed_tx;
        let _reader_done = reader_done.clone().drop_guard();
        let cancelled = run.cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Not cancel-safe, and not resumed after cancellation: the run is over.
            let r = tokio::select! {
                biased;
                _ = &mut cancelled => break,
                r = reader.read() => r,
            };
            match r {
                Ok(Inbound::Text(frame)) => {
                    let pings = rx.on_frame(&run, &frame, &mut |reply| {
                        on_reply(&run, p, &rooms, &book, &permits, reply)
                    });
                    if session.pong {
                        for _ in 0..pings {
                            owed_tx.send(Owed::Pong).await.ok();
                        }
                    }
                }
                Ok(Inbound::Closed { code, reason }) => {
                    run.disconnected(&ClientError::Closed {
                        code,
                        reason: String::new(),
                    });
                    rx.close_code = Some(code);
                    rx.disconnected = Some(format!("closed by the server: {code} {reason:?}"));
                    break;
                }
                Err(e) => {
                    run.disconnected(&e);
                    rx.disconnected = Some(e.to_string());
                    break;
                }
            }
            if let Some(f) = reader.take_owed() {
                owed_tx.send(Owed::Frame(f)).await.ok();
            }
        }
    };

    let write = async {
        let sh = Shared {
            run: &run,
            p,
            rooms: &rooms,
            book: &book,
            permits: &permits,
            reader_done: &reader_done,
        };
        let mut stopped = publish(&sh, &mut writer, &mut owed_rx)
            .await
            .err()
            .map(|e| e.to_string());
        // Wait, bounded, for the acks of what is still in flight.
        let deadline = Instant::now() + run.common.drain_timeout;
        while stopped.is_none() && permits.available_permits() < MAX_IN_FLIGHT {
            tokio::select! {
                biased;
                _ = run.cancel.cancelled() => break,
                _ = reader_done.cancelled() => break,
                Some(o) = owed_rx.recv() => {
                    if let Err(e) = send_owed(&mut writer, o).await {
                        stopped = Some(e.to_string());
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let report = {
            let mut b = book.lock();
            PublisherDone {
                acked: rooms
                    .iter()
                    .zip(&b.acked)
                    .map(|(&r, &n)| (r, p, n))
                    .collect(),
                errors: b.errors,
                first_error: b.first_error.take(),
                refused: std::mem::take(&mut b.refused),
                unanswered: b.in_flight.len() as u64,
                stopped: stopped.clone(),
                ..PublisherDone::new(p, &rooms)
            }
        };
        done.send(report).await.ok();
        // Keep answering pings until the run ends.
        while stopped.is_none() {
            tokio::select! {
                biased;
                _ = run.cancel.cancelled() => break,
                o = owed_rx.recv() => match o {
                    Some(o) => stopped = send_owed(&mut writer, o).await.err().map(|e| e.to_string()),
                    None => break,
                },
            }
        }
    };
    tokio::join!(read, write);
    Some(rx)
}

/// An answer to one of this publisher's commands.
fn on_reply(
    run: &Run,
    p: u32,
    rooms: &[u32],
    book: &Mutex<Book>,
    permits: &Semaphore,
    reply: &Reply<'_>,
) {
    let mut b = book.lock();
    let Some((ri, q)) = b.in_flight.remove(&reply.id) else {
        return;
    };
    permits.add_permits(1);
    match &reply.error {
        None => {
            b.acked[ri] += 1;
            run.counters.publications.fetch_add(1, Ordering::Relaxed);
        }
        Some(e) => {
            b.errors += 1;
            run.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
            if b.first_error.is_none() {
                b.first_error = Some(format!("error {} {:?}", e.code, e.message));
            }
            if b.refused.len() < REFUSED_SAMPLES {
                b.refused.push((rooms[ri], p, q));
            }
        }
    }
}

async fn send_owed(writer: &mut Writer, o: Owed) -> Result<(), ClientError> {
    match o {
        Owed::Pong => writer.pong().await,
        Owed::Frame(f) => writer.send_owed(f).await,
    }
}

/// What the publishing loop shares with the rest of its connection.
struct Shared<'a> {
    run: &'a Run,
    p: u32,
    rooms: &'a [u32],
    book: &'a Mutex<Book>,
    permits: &'a Semaphore,
    /// Cancelled when the reader half ends (the connection is gone).
    reader_done: &'a CancellationToken,
}

/// Wait for the start signal, then publish at this publisher's rate, from its phase
/// within the first interval until the duration is over, spreading publications
/// over its rooms in turn.
async fn publish(
    sh: &Shared<'_>,
    writer: &mut Writer,
    owed_rx: &mut mpsc::Receiver<Owed>,
) -> Result<(), ClientError> {
    let Shared {
        run,
        p,
        rooms,
        book,
        permits,
        reader_done,
    } = *sh;
    let mut go = run.go.clone();
    let start = loop {
        if let Some(s) = *go.borrow_and_update() {
            break s;
        }
        tokio::select! {
            biased;
            _ = run.cancel.cancelled() => return Ok(()),
            _ = reader_done.cancelled() => return Ok(()),
            Some(o) = owed_rx.recv() => send_owed(writer, o).await?,
            changed = go.changed() => if changed.is_err() { return Ok(()) },
        }
    };
    let end = start + run.common.duration;
    let rate = run.rate_per_publisher;
    // Publishers start spread over one interval of their rate, not in step: a
    // thousand chat members at 1/s would otherwise publish in one burst a second,
    // and the latency measured would be that burst's queueing.
    let start = start
        + Duration::from_secs_f64(f64::from(p) / f64::from(run.plan.publishers) / rate)
            .min(run.common.duration);
    let mut sent: u64 = 0;
    let mut next_room = 0;
    let mut q = vec![0u64; rooms.len()];
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        let due = match now.checked_duration_since(start) {
            Some(d) => (d.as_secs_f64() * rate) as u64 + 1,
            None => 0,
        };
        let mut burst = 0;
        let mut stalled = false;
        while sent < due && burst < MAX_BURST {
            let Ok(permit) = permits.try_acquire() else {
                stalled = true;
                break;
            };
            permit.forget();
            let ri = next_room;
            next_room = (next_room + 1) % rooms.len();
            q[ri] += 1;
            let seq = q[ri];
            let id = writer.next_id();
            // Booked before it is sent, so the ack cannot arrive first.
            book.lock().in_flight.insert(id, (ri, seq));
            let t = unix_micros();
            let payload = run.payload;
            writer
                .publish(id, &run.plan.names[rooms[ri] as usize], |buf| {
                    write_stamp(buf, p, seq, t, payload)
                })
                .await?;
            sent += 1;
            burst += 1;
        }
        let wake = if stalled {
            now + Duration::from_millis(1)
        } else {
            start + Duration::from_secs_f64(sent as f64 / rate)
        };
        tokio::select! {
            biased;
            _ = run.cancel.cancelled() => return Ok(()),
            _ = reader_done.cancelled() => return Err(ClientError::Protocol("connection lost while publishing".into())),
            Some(o) = owed_rx.recv() => send_owed(writer, o).await?,
            _ = tokio::time::sleep_until(wake.min(end)) => {}
        }
    }
}
