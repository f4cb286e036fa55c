//! The receiving side of a fanout connection: decode pushes, check sequences and
//! offsets, record latencies. Subscribers are only this; publishers are this too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::state::{open_session, Anomaly, AnomalyKind, Ready, Run};
use crate::check::{OffsetCheck, SeqCheck, SeqEvent};
use crate::client::{self, Reply};
use crate::dial::Session;
use crate::stamp::{fast_publication, unix_micros, Stamp};

/// One room as one connection sees it.
#[derive(Debug)]
pub(crate) struct RoomState {
    pub room: u32,
    /// One check per sequence stream of the room, by its index (see `Plan::stream`).
    pub streams: Vec<SeqCheck>,
    pub offsets: OffsetCheck,
}

/// Everything one connection observed, returned when its task ends.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub conn: usize,
    pub rooms: Vec<RoomState>,
    /// Publications received in its rooms (including duplicates).
    pub deliveries: u64,
    /// Messages that are neither replies nor publications of the run.
    pub unexpected: u64,
    /// Set when the connection ended before the run did.
    pub disconnected: Option<String>,
    /// The close code, when the server closed the connection.
    pub close_code: Option<u16>,
    /// Latencies of the frame being handled, recorded in one batch.
    latencies: Vec<u64>,
}

impl Receiver {
    pub fn new(run: &Run, conn: usize, rooms: &[u32]) -> Self {
        Receiver {
            conn,
            rooms: rooms
                .iter()
                .map(|&room| RoomState {
                    room,
                    streams: vec![SeqCheck::default(); run.plan.streams_in(room)],
                    offsets: OffsetCheck::default(),
                })
                .collect(),
            deliveries: 0,
            unexpected: 0,
            disconnected: None,
            close_code: None,
            latencies: Vec::new(),
        }
    }

    /// Handle one text frame: replies (id > 0) go to `on_reply`; returns the number
    /// of pings in it. Reads the clock once: every message of a frame arrived together.
    pub fn on_frame(
        &mut self,
        run: &Run,
        frame: &[u8],
        on_reply: &mut dyn FnMut(&Reply<'_>),
    ) -> usize {
        let now = unix_micros();
        let mut pings = 0;
        for msg in client::messages(frame) {
            if client::is_ping(msg) {
                pings += 1;
                continue;
            }
            if let Some(p) = fast_publication(msg) {
                self.on_publication(run, p.channel, Some(p.stamp), p.offset, now);
                continue;
            }
            let Ok(reply) = Reply::parse(msg) else {
                self.unexpected += 1;
                continue;
            };
            if reply.id != 0 {
                on_reply(&reply);
                continue;
            }
            let Some(push) = reply.push else {
                // No id and no push: a ping in another spelling.
                pings += 1;
                continue;
            };
            // Joins, leaves and other pushes are not part of the measurement.
            let Some(publication) = push.publication else {
                continue;
            };
            let stamp = publication
                .data
                .and_then(|d| serde_json::from_str::<Stamp>(d.get()).ok());
            self.on_publication(run, push.channel.as_bytes(), stamp, publication.offset, now);
        }
        if !self.latencies.is_empty() {
            run.latency.record(self.conn, &self.latencies);
            run.counters
                .deliveries
                .fetch_add(self.latencies.len() as u64, Ordering::Relaxed);
            self.latencies.clear();
        }
        pings
    }

    fn on_publication(
        &mut self,
        run: &Run,
        channel: &[u8],
        stamp: Option<Stamp>,
        offset: u64,
        now_us: u64,
    ) {
        let Some(ri) = self
            .rooms
            .iter()
            .position(|r| run.plan.names[r.room as usize].as_bytes() == channel)
        else {
            self.unexpected += 1;
            return;
        };
        let state = &mut self.rooms[ri];
        let Some((stamp, stream)) =
            stamp.and_then(|st| Some((st, run.plan.stream(state.room, st.s)?)))
        else {
            self.unexpected += 1;
            return;
        };
        if let Some(prev) = state.offsets.observe(offset) {
            run.note(Anomaly {
                conn: self.conn,
                room: state.room,
                kind: AnomalyKind::Offset { offset, prev },
            });
        }
        let kind = match state.streams[stream].observe(stamp.q) {
            SeqEvent::Next => None,
            SeqEvent::Gap { from, to } => Some(AnomalyKind::Gap {
                publisher: stamp.s,
                from,
                to,
            }),
            SeqEvent::Duplicate => Some(AnomalyKind::Duplicate {
                publisher: stamp.s,
                q: stamp.q,
            }),
            SeqEvent::Reordered { last } => Some(AnomalyKind::Reordered {
                publisher: stamp.s,
                q: stamp.q,
                last,
            }),
        };
        if let Some(kind) = kind {
            run.note(Anomaly {
                conn: self.conn,
                room: state.room,
                kind,
            });
        }
        self.deliveries += 1;
        // Same host, same clock; a send time in the future reads as 0.
        self.latencies.push(now_us.saturating_sub(stamp.t));
    }
}

/// A subscriber: connect, subscribe to `room`, then read and check until the run is
/// cancelled. Returns `None` when it could not connect (reported through `ready`).
pub(crate) async fn subscriber(
    run: Arc<Run>,
    conn: usize,
    room: u32,
    ready: tokio::sync::mpsc::Sender<Ready>,
) -> Option<Receiver> {
    let Session {
        mut reader,
        mut writer,
        connected,
        ..
    } = open_session(&run, conn, &[room], false, ready).await?;
    let mut rx = Receiver::new(&run, conn, &[room]);
    let served = client::serve(
        &mut reader,
        &mut writer,
        connected.pong,
        &run.cancel,
        |frame| rx.on_frame(&run, frame, &mut |_| {}),
    )
    .await;
    if let Err(e) = served {
        run.disconnected(&e);
        if let crate::client::ClientError::Closed { code, .. } = &e {
            rx.close_code = Some(*code);
        }
        rx.disconnected = Some(e.to_string());
    }
    Some(rx)
}
