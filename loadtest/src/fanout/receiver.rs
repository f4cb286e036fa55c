//! The receiving side of a fanout connection: decode pushes, check sequences and
//! offsets, record latencies. Subscribers are only this; publishers are this too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;

use super::{open_session, Anomaly, AnomalyKind, Ready, Run};
use crate::check::{OffsetCheck, SeqCheck, SeqEvent};
use crate::client::{self, Reply};
use crate::dial::Session;

/// What every publication's data carries (`p`, the padding, is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub(crate) struct Stamp {
    /// Publisher id.
    pub s: u32,
    /// Sequence number of this publisher in this room, from 1.
    pub q: u64,
    /// Send time, unix microseconds.
    pub t: u64,
}

/// One room as one connection sees it.
#[derive(Debug)]
pub(crate) struct RoomState {
    pub room: u32,
    /// One check per publisher of the room, by the publisher's slot (see `Plan::slot`).
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
                    streams: vec![SeqCheck::default(); run.plan.publishers_in(room)],
                    offsets: OffsetCheck::default(),
                })
                .collect(),
            deliveries: 0,
            unexpected: 0,
            disconnected: None,
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
        let now = super::unix_micros();
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
        let Some((stamp, slot)) = stamp.and_then(|st| Some((st, run.plan.slot(state.room, st.s)?)))
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
        let kind = match state.streams[slot].observe(stamp.q) {
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

/// A publication of this harness, decoded without a JSON parser.
#[derive(Debug, PartialEq)]
pub(crate) struct FastPublication<'a> {
    pub channel: &'a [u8],
    pub stamp: Stamp,
    pub offset: u64,
}

/// Decode a push in exactly the shape the gateway writes for a publication of this
/// harness: `{"push":{"channel":"C","pub":{"data":{"s":S,"q":Q,"t":T,"p":"P"}` then
/// optionally `,"info":{"user":"U","client":"I"}`, optionally `,"offset":N`, then
/// `}}}`, with no escapes in the strings. Anything else returns `None` and goes
/// through serde_json. Parsing every delivery with serde_json cost about 1 µs of
/// harness CPU each, the bulk of the harness's time at 1M deliveries/s.
pub(crate) fn fast_publication(msg: &[u8]) -> Option<FastPublication<'_>> {
    let rest = msg.strip_prefix(b"{\"push\":{\"channel\":\"")?;
    let (channel, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"pub\":{\"data\":{\"s\":")?;
    let (s, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"q\":")?;
    let (q, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"p\":\"")?;
    let (_, rest) = plain_string(rest)?;
    let mut rest = rest.strip_prefix(b"}")?;
    if let Some(r) = rest.strip_prefix(b",\"info\":{\"user\":\"") {
        let (_, r) = plain_string(r)?;
        let r = r.strip_prefix(b",\"client\":\"")?;
        let (_, r) = plain_string(r)?;
        rest = r.strip_prefix(b"}")?;
    }
    let mut offset = 0;
    if let Some(r) = rest.strip_prefix(b",\"offset\":") {
        let (o, r) = number(r)?;
        offset = o;
        rest = r;
    }
    (rest == b"}}}").then_some(FastPublication {
        channel,
        stamp: Stamp {
            s: u32::try_from(s).ok()?,
            q,
            t,
        },
        offset,
    })
}

/// The body of a JSON string up to its closing quote (consumed), if it has no escapes.
fn plain_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr2(b'"', b'\\', b)?;
    (b[end] == b'"').then(|| (&b[..end], &b[end + 1..]))
}

/// A JSON unsigned integer without sign, fraction or exponent, and what follows it.
fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && b[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    match b.get(digits) {
        Some(b'.' | b'e' | b'E') => None,
        _ => Some((v, &b[digits..])),
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
        rx.disconnected = Some(e.to_string());
    }
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::{encode_publication_push, raw_from_slice, ClientInfo, Publication};

    fn push(data: &str, info: Option<ClientInfo>, offset: u64) -> Vec<u8> {
        encode_publication_push(
            "loadtest-abc-0",
            &Publication {
                data: raw_from_slice(data.as_bytes()).unwrap(),
                info,
                offset,
                tags: Default::default(),
            },
        )
    }

    fn info(user: &str, conn_info: Option<&str>) -> Option<ClientInfo> {
        Some(ClientInfo {
            user: user.into(),
            client: "7f8e2c1a-0000-4000-8000-000000000001".into(),
            conn_info: conn_info.map(|c| raw_from_slice(c.as_bytes()).unwrap()),
            chan_info: None,
        })
    }

    /// What the serde_json path makes of a message, for comparison.
    fn slow(msg: &[u8]) -> Option<FastPublication<'_>> {
        let push = Reply::parse(msg).ok()?.push?;
        let p = push.publication?;
        let stamp = serde_json::from_str::<Stamp>(p.data?.get()).ok()?;
        let channel = match push.channel {
            std::borrow::Cow::Borrowed(c) => c.as_bytes(),
            std::borrow::Cow::Owned(_) => return None,
        };
        Some(FastPublication {
            channel,
            stamp,
            offset: p.offset,
        })
    }

    #[test]
    fn fast_path_agrees_with_serde_on_the_gateway_encoding() {
        let data = r#"{"s":3,"q":17,"t":1700000000000001,"p":"xxxx"}"#;
        let cases = [
            push(data, info("loadtest-5", None), 42),
            push(data, info("loadtest-5", None), 0),
            push(data, None, 9),
            push(data, None, 0),
        ];
        for msg in &cases {
            let fast = fast_publication(msg);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(msg));
            assert_eq!(fast, slow(msg), "{}", String::from_utf8_lossy(msg));
        }
        assert_eq!(fast_publication(&cases[0]).unwrap().offset, 42);
    }

    #[test]
    fn fast_path_declines_other_shapes() {
        let data = r#"{"s":3,"q":17,"t":1,"p":"xx"}"#;
        for msg in [
            // conn_info in the publisher's info
            push(data, info("u", Some(r#"{"name":"a"}"#)), 1),
            // an escape in a string
            push(data, info(r#"u"q"#, None), 1),
            // other data
            push(r#"{"text":"hi"}"#, None, 1),
            push(r#"{"s":3,"q":1.5,"t":1,"p":""}"#, None, 1),
            push(r#"{"s":3,"q":-1,"t":1,"p":""}"#, None, 1),
            push(r#"{"s":99999999999,"q":1,"t":1,"p":""}"#, None, 1),
        ] {
            assert_eq!(
                fast_publication(&msg),
                None,
                "{}",
                String::from_utf8_lossy(&msg)
            );
        }
        assert_eq!(fast_publication(b"{}"), None);
        assert_eq!(fast_publication(br#"{"id":1,"publish":{}}"#), None);
    }
}
