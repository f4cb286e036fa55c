//! One soak member: a connection at a time, subscribed (recoverable) to its room.
//! It publishes on a schedule, drops the connection once per interval, and comes
//! back with `recover:true` from its position; its checks carry over from one
//! connection to the next.
//!
//! - `check`: what the member does with what it receives (subscribe replies,
//!   publications, publish replies) and how its figures reach the run.

mod check;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, Payload};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reconnects::{ConnectFailures, SHUTDOWN_CLOSE};
use super::schedule::{Rng, Schedule};
use super::state::{Run, GONE, MAX_OFFLINE};
use super::stream::StreamCheck;
use crate::client::{ClientError, Inbound, Position, Reader, Subscription, Writer};
use crate::dial::Session;
use crate::stamp::{unix_micros, write_stamp};

/// Frames a session's reader hands over before it waits for the member.
const EVENT_QUEUE: usize = 64;
/// First pause before a reconnect after a failed attempt; doubled up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Bound on a session's reader task ending once the member lets go of it.
const READER_STOP: Duration = Duration::from_secs(2);

/// What one member saw over the whole run, returned when its task ends.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub member: usize,
    pub room: usize,
    /// The room's stream as the member saw it, across reconnects.
    pub check: StreamCheck,
    /// Publications received, live and recovered (including repeats).
    pub deliveries: u64,
    /// Of those, returned in subscribe replies.
    pub recovered_publications: u64,
    /// Messages that are neither replies nor publications of this run.
    pub unexpected: u64,
    /// Successful reconnects, and attempts that failed.
    pub reconnects: u64,
    pub reconnect_errors: u64,
    /// Those failed attempts by kind.
    pub failures: ConnectFailures,
    /// Sessions the server closed with 3001 (shutdown: reconnect elsewhere).
    pub closed_3001: u64,
    /// Reconnects after such a close answered `recovered:true`.
    pub recovered_after_3001: u64,
    /// Sessions that ended without the member asking (closed by the server, I/O
    /// error, unsubscribe push).
    pub disconnects: u64,
    /// Resubscriptions answered `recovered:true`, and `recovered:false`.
    pub recovered_ok: u64,
    pub recovery_failed: u64,
    /// Own publications acked, refused, and never answered (the connection went first).
    pub acked: u64,
    pub publish_errors: u64,
    /// Refused with a temporary error (Redis away), or crossing the server's
    /// unsubscribe: not taken, the publisher's to retry.
    pub publish_unavailable: u64,
    pub unanswered: u64,
}

/// What a session's reader hands the member.
enum Event {
    Frame(Payload<'static>),
    /// A control frame the WebSocket layer owes the server.
    Owed(Frame<'static>),
    /// The connection ended (a close frame is [`ClientError::Closed`]).
    Ended(ClientError),
}

/// How a session ended.
enum SessionEnd {
    /// The member left at its planned moment.
    Planned,
    /// The connection went without the member asking; the close code when the
    /// server closed it.
    Lost(String, Option<u16>),
    /// The run is over.
    Cancelled,
}

struct Member<'r> {
    run: &'r Run,
    channel: String,
    /// This member's index among its room's members: its publisher id.
    slot: u32,
    tally: Tally,
    rng: Rng,
    /// Own publications sent so far.
    sent: u64,
    /// Command ids of publications sent on this session and not yet answered.
    in_flight: HashSet<u32>,
    /// Latencies of the frame being handled, recorded in one batch.
    latencies: Vec<u64>,
    /// Deliveries already added to the run's counter.
    reported: u64,
}

/// A member: connect and subscribe, report through `ready`, then publish, check,
/// and reconnect until the run is cancelled. Returns `None` when it could not
/// join at the start.
pub(crate) async fn member(
    run: Arc<Run>,
    m: usize,
    ready: mpsc::Sender<Result<(), String>>,
) -> Option<Tally> {
    let room = run.room_of(m);
    let mut me = Member {
        run: &run,
        channel: run.names[room].clone(),
        slot: (m % run.opts.members as usize) as u32,
        tally: Tally {
            member: m,
            room,
            check: StreamCheck::new(run.opts.members as usize),
            ..Tally::default()
        },
        rng: Rng(run.seed ^ (m as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
        sent: 0,
        in_flight: HashSet::new(),
        latencies: Vec::new(),
        reported: 0,
    };
    let first = match me.open(0, None).await {
        Ok(s) if s.subscribed.first().is_some_and(|r| r.recoverable) => Ok(s),
        Ok(_) => Err(format!(
            "room {} is not recoverable: the soak scenario needs rooms with history (history_size > 0)",
            me.channel
        )),
        Err(e) => Err(e.to_string()),
    };
    let first = match first {
        Ok(s) => s,
        Err(e) => {
            run.positions[m].store(GONE, Ordering::Relaxed);
            ready.send(Err(format!("member {m}: {e}"))).await.ok();
            return None;
        }
    };
    me.on_subscribed(&first.subscribed[0], true);
    ready.send(Ok(())).await.ok();
    drop(ready);

    let mut schedule = None;
    let mut go = run.go.clone();
    let mut session = first;
    let mut turn = 0;
    'run: loop {
        let mut after_3001 = false;
        let mut pause = match me.serve(session, &mut schedule, &mut go).await {
            SessionEnd::Cancelled => break,
            SessionEnd::Planned => {
                run.events.record("planned disconnect", Instant::now());
                MAX_OFFLINE.mul_f64(me.rng.unit())
            }
            SessionEnd::Lost(why, code) => {
                let kind = code.map_or("disconnect without close".into(), |c| {
                    format!("disconnect close {c}")
                });
                run.events.record(&kind, Instant::now());
                me.tally.disconnects += 1;
                after_3001 = code == Some(SHUTDOWN_CLOSE);
                me.tally.closed_3001 += u64::from(after_3001);
                run.note("disconnect", format!("member {m}: {why}"));
                // Back at a random moment within the next 500 ms, as the SDKs do,
                // so that a node's clients do not all come back at once.
                MAX_OFFLINE.mul_f64(me.rng.unit())
            }
        };
        // Away, then back to the next URL with recovery; failed attempts back off.
        let mut backoff = MIN_BACKOFF;
        session = loop {
            tokio::select! {
                _ = run.cancel.cancelled() => break 'run,
                _ = tokio::time::sleep(pause) => {}
            }
            turn += 1;
            let position = me.tally.check.position();
            let opened = tokio::select! {
                _ = run.cancel.cancelled() => break 'run,
                r = me.open(turn, Some(position)) => r,
            };
            match opened {
                Ok(s) => {
                    me.tally.reconnects += 1;
                    run.events.record("reconnect", Instant::now());
                    let recovered = s.subscribed[0].recovered;
                    me.tally.recovered_after_3001 += u64::from(after_3001 && recovered);
                    me.on_subscribed(&s.subscribed[0], false);
                    break s;
                }
                Err(e) => {
                    me.tally.reconnect_errors += 1;
                    me.tally.failures.count(&e);
                    let kind = format!("reconnect error {}", e.kind());
                    run.events.record(&kind, Instant::now());
                    run.note("reconnect", format!("member {m}: {e}"));
                    pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
    }
    Some(me.tally)
}

impl Member<'_> {
    /// Open connection attempt `turn` (URLs in turn) and subscribe to the room,
    /// recovering from `position` when given.
    async fn open(&self, turn: usize, position: Option<Position>) -> Result<Session, ClientError> {
        let sub = Subscription {
            channel: &self.channel,
            recoverable: true,
            recover_from: position,
        };
        self.run
            .dialer
            .open_session_at(self.tally.member, turn, &[sub])
            .await
    }

    /// Serve one session until the planned disconnect, a lost connection, or the
    /// end of the run. A task reads the socket (reads are not cancel-safe); this
    /// one decides, publishes and answers pings.
    async fn serve(
        &mut self,
        session: Session,
        schedule: &mut Option<Schedule>,
        go: &mut watch::Receiver<Option<Instant>>,
    ) -> SessionEnd {
        let Session {
            reader,
            mut writer,
            connected,
            ..
        } = session;
        let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
        let stop = CancellationToken::new();
        let reading = self
            .run
            .readers
            .spawn(read_frames(reader, tx, stop.clone()));
        let counters = &self.run.counters;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let end = self
            .drive(&mut writer, &mut events, connected.pong, schedule, go)
            .await;
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        stop.cancel();
        drop(events);
        if tokio::time::timeout(READER_STOP, reading).await.is_err() {
            self.run.note(
                "reader",
                format!(
                    "member {}: a session reader did not stop",
                    self.tally.member
                ),
            );
        }
        let unanswered = self.in_flight.len() as u64;
        self.in_flight.clear();
        self.tally.unanswered += unanswered;
        counters.in_flight.fetch_sub(unanswered, Ordering::Relaxed);
        if let SessionEnd::Planned | SessionEnd::Cancelled = end {
            // Leaving politely; the server's answer is not awaited.
            writer.close(1000).await.ok();
        }
        end
    }

    async fn drive(
        &mut self,
        writer: &mut Writer,
        events: &mut mpsc::Receiver<Event>,
        pong: bool,
        schedule: &mut Option<Schedule>,
        go: &mut watch::Receiver<Option<Instant>>,
    ) -> SessionEnd {
        let run = self.run;
        let every = run.opts.reconnect_every;
        // Set once the planned moment has come: no more publishing, and the session
        // ends when the last ack is in (or at this deadline).
        let mut leaving: Option<Instant> = None;
        let mut go_open = true;
        loop {
            if schedule.is_none() {
                if let Some(start) = *go.borrow_and_update() {
                    *schedule = Some(Schedule::new(run, start, &mut self.rng));
                }
            }
            let wake = match (schedule.as_ref(), leaving) {
                (_, Some(deadline)) => Some(deadline),
                (Some(s), None) => {
                    let publish = (s.next_publish < s.end).then_some(s.next_publish);
                    match (publish, s.disconnect_at) {
                        (Some(p), Some(d)) => Some(p.min(d)),
                        (p, d) => p.or(d),
                    }
                }
                (None, None) => None,
            };
            tokio::select! {
                biased;
                _ = run.cancel.cancelled() => return SessionEnd::Cancelled,
                ev = events.recv() => {
                    let res = match ev {
                        Some(Event::Frame(frame)) => {
                            let (pings, unsubscribed) = self.on_frame(&frame);
                            if let Some(code) = unsubscribed {
                                return SessionEnd::Lost(format!("unsubscribed by the server: code {code}"), None);
                            }
                            let mut res = Ok(());
                            for _ in 0..if pong { pings } else { 0 } {
                                res = writer.pong().await;
                                if res.is_err() {
                                    break;
                                }
                            }
                            res
                        }
                        Some(Event::Owed(f)) => writer.send_owed(f).await,
                        Some(Event::Ended(e)) => Err(e),
                        None => Err(ClientError::Protocol("the session reader ended".into())),
                    };
                    if let Err(e) = res {
                        let code = match &e {
                            ClientError::Closed { code, .. } => Some(*code),
                            _ => None,
                        };
                        return SessionEnd::Lost(e.to_string(), code);
                    }
                    if leaving.is_some() && self.in_flight.is_empty() {
                        return SessionEnd::Planned;
                    }
                }
                changed = go.changed(), if schedule.is_none() && go_open => {
                    go_open = changed.is_ok();
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    let now = Instant::now();
                    let s = schedule.as_mut().expect("bug: timers only run once scheduled");
                    if leaving.is_some() {
                        // The deadline passed with publications unanswered.
                        return SessionEnd::Planned;
                    }
                    if s.disconnect_at.is_some_and(|d| d <= now) {
                        s.plan_disconnect(every, now, &mut self.rng);
                        if self.in_flight.is_empty() {
                            return SessionEnd::Planned;
                        }
                        leaving = Some(now + run.common.drain_timeout);
                    } else if s.next_publish <= now && now < s.end {
                        s.published(now);
                        if let Err(e) = self.publish(writer).await {
                            return SessionEnd::Lost(e.to_string(), None);
                        }
                    }
                }
            }
        }
    }

    async fn publish(&mut self, writer: &mut Writer) -> Result<(), ClientError> {
        let id = writer.next_id();
        self.sent += 1;
        let (slot, q, t, payload) = (self.slot, self.sent, unix_micros(), self.run.opts.payload);
        // Booked before it is sent, so the ack cannot arrive first.
        self.in_flight.insert(id);
        self.run.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        writer
            .publish(id, &self.channel, |buf| {
                write_stamp(buf, slot, q, t, payload)
            })
            .await
    }
}

/// Read frames until `stop` fires or the connection ends, handing them to the
/// member. Dropping the reader mid-read is fine: the connection goes with it.
async fn read_frames(mut reader: Reader, events: mpsc::Sender<Event>, stop: CancellationToken) {
    loop {
        let r = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = reader.read() => r,
        };
        let owed = reader.take_owed().map(Event::Owed);
        let (event, last) = match r {
            Ok(Inbound::Text(frame)) => (Event::Frame(frame), false),
            Ok(Inbound::Closed { code, reason }) => {
                (Event::Ended(ClientError::Closed { code, reason }), true)
            }
            Err(e) => (Event::Ended(e), true),
        };
        for ev in owed.into_iter().chain([event]) {
            if events.send(ev).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}
