//! The lanes of API publishers (`--publish-via api`): each publisher keeps its
//! WebSocket session (it receives and checks its rooms like any publisher) and
//! publishes with `POST /api/publish` over `--api-in-flight` keep-alive HTTP
//! connections, its lanes. A lane sends one request at a time and numbers its
//! publications itself, so every lane is a sequence stream of its own and the order
//! checks stay exact; lanes are spread over the nodes round-robin.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::ApiRun;
use super::receiver::Receiver;
use super::state::{PublisherDone, Run};
use crate::client::{self, Endpoint};
use crate::dial::Session;
use crate::http::{HttpConn, HttpError, Response};
use crate::stamp::{unix_micros, write_stamp};

/// Refused publications remembered per lane, to tell their gaps from loss.
const REFUSED_SAMPLES: usize = 1000;
/// Wait before a lane reconnects after its connection failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// A keep-alive connection idle longer than this is reopened before use: servers
/// close idle ones (the gateway after `http.header_read_timeout`, 10 s by default),
/// and a request on a connection the server is closing would count as an error.
const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(5);

/// An API publisher: its connection answers pings and checks its rooms while its
/// lanes publish; it reports its publishing like a WebSocket publisher.
pub(super) async fn publisher(
    run: Arc<Run>,
    p: u32,
    rooms: Vec<u32>,
    session: Session,
    mut rx: Receiver,
    done: mpsc::Sender<PublisherDone>,
) -> Receiver {
    let Session {
        mut reader,
        mut writer,
        connected,
        ..
    } = session;
    let mut lanes = JoinSet::new();
    for lane in 0..run.plan.lanes {
        lanes.spawn(publish_lane(run.clone(), p, lane, rooms.clone()));
    }
    let publish = async {
        let mut account = PublisherDone::new(p, &rooms);
        while let Some(lane) = lanes.join_next().await {
            match lane {
                Ok(book) => book.add_to(&mut account, &rooms),
                Err(e) => account.stopped = Some(format!("a lane failed: {e}")),
            }
        }
        done.send(account).await.ok();
    };
    let serve = client::serve(
        &mut reader,
        &mut writer,
        connected.pong,
        &run.cancel,
        |frame| rx.on_frame(&run, frame, &mut |_| {}),
    );
    let (served, ()) = tokio::join!(serve, publish);
    if let Err(e) = served {
        run.disconnected(&e);
        rx.disconnected = Some(e.to_string());
    }
    rx
}

/// What one lane published.
struct LaneBook {
    stamp: u32,
    /// Acked publications, by index into the publisher's rooms.
    acked: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// (room index, q) of publications not acked.
    refused: Vec<(usize, u64)>,
    unanswered: u64,
}

impl LaneBook {
    /// Add this lane's account to its publisher's.
    fn add_to(self, d: &mut PublisherDone, rooms: &[u32]) {
        for (&r, &n) in rooms.iter().zip(&self.acked) {
            d.acked.push((r, self.stamp, n));
        }
        d.errors += self.errors;
        d.unanswered += self.unanswered;
        if d.first_error.is_none() {
            d.first_error = self.first_error;
        }
        d.refused.extend(
            self.refused
                .iter()
                .map(|&(ri, q)| (rooms[ri], self.stamp, q)),
        );
    }

    /// A publication that was not acked.
    fn not_acked(&mut self, run: &Run, ri: usize, q: u64, why: String) {
        run.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
        if self.refused.len() < REFUSED_SAMPLES {
            self.refused.push((ri, q));
        }
    }
}

/// A lane: one keep-alive connection to one node, one request at a time, at its
/// share of the publisher's rate from its phase until the duration is over.
async fn publish_lane(run: Arc<Run>, p: u32, lane: u32, rooms: Vec<u32>) -> LaneBook {
    let api = run
        .api
        .as_ref()
        .expect("bug: an API lane in a run without the API");
    let stamp = run.plan.stamp_id(p, lane);
    let mut l = Lane {
        run: &run,
        api,
        endpoint: &api.targets[stamp as usize % api.targets.len()],
        source: (!run.common.source_addr.is_empty())
            .then(|| run.common.source_addr[stamp as usize % run.common.source_addr.len()]),
        conn: None,
        last_used: Instant::now(),
        body: Vec::with_capacity(run.payload + 128),
        book: LaneBook {
            stamp,
            acked: vec![0; rooms.len()],
            errors: 0,
            first_error: None,
            refused: Vec::new(),
            unanswered: 0,
        },
    };
    // Connected before the start, so no publication pays for it.
    l.connect().await;
    let Some(go) = started(&run).await else {
        return l.book;
    };
    let lanes = run.plan.lanes;
    let rate = run.rate_per_publisher / f64::from(lanes);
    let streams = f64::from(run.plan.publishers) * f64::from(lanes);
    let end = go + run.common.duration;
    let last_answer = end + run.common.drain_timeout;
    let start =
        go + Duration::from_secs_f64(f64::from(stamp) / streams / rate).min(run.common.duration);
    let mut sent: u64 = 0;
    let mut q = vec![0u64; rooms.len()];
    loop {
        let now = Instant::now();
        if now >= end || run.cancel.is_cancelled() {
            break;
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate);
        if l.conn.is_some() && now.duration_since(l.last_used) > IDLE_REUSE_LIMIT {
            l.conn = None;
        }
        let wait = if now < next {
            next
        } else if l.conn.is_none() && !l.connect().await {
            now + RECONNECT_BACKOFF
        } else {
            let ri = (sent % rooms.len() as u64) as usize;
            q[ri] += 1;
            l.publish(rooms[ri], ri, q[ri], last_answer).await;
            sent += 1;
            continue;
        };
        tokio::select! {
            _ = run.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(wait.min(end)) => {}
        }
    }
    l.book
}

/// The start of publishing, once given; `None` when the run ended first.
async fn started(run: &Run) -> Option<Instant> {
    let mut go = run.go.clone();
    loop {
        if let Some(s) = *go.borrow_and_update() {
            return Some(s);
        }
        tokio::select! {
            _ = run.cancel.cancelled() => return None,
            changed = go.changed() => changed.ok()?,
        }
    }
}

/// The body of an API reply with status 200.
#[derive(Deserialize)]
struct ApiReply {
    result: Option<serde::de::IgnoredAny>,
    error: Option<ApiReplyError>,
}

#[derive(Deserialize)]
struct ApiReplyError {
    code: u32,
    #[serde(default)]
    message: String,
}

/// One lane's connection and account.
struct Lane<'a> {
    run: &'a Run,
    api: &'a ApiRun,
    endpoint: &'a Endpoint,
    source: Option<std::net::IpAddr>,
    conn: Option<HttpConn>,
    /// When `conn` was opened or last answered.
    last_used: Instant,
    /// Reused for every request body.
    body: Vec<u8>,
    book: LaneBook,
}

impl Lane<'_> {
    /// (Re)open the connection; whether it is open.
    async fn connect(&mut self) -> bool {
        let timeout = self.run.common.connect_timeout;
        match HttpConn::open(self.endpoint, self.source, timeout).await {
            Ok(c) => {
                self.conn = Some(c);
                self.last_used = Instant::now();
            }
            Err(e) => {
                self.api.count_error(format!("connect {}", e.kind()));
                self.book.errors += 1;
                if self.book.first_error.is_none() {
                    self.book.first_error = Some(format!("connect {}: {e}", self.endpoint.url));
                }
            }
        }
        self.conn.is_some()
    }

    /// POST one publication (sequence `q` in `room`, at index `ri`) and book the
    /// answer; bounded by the connect timeout and by `last_answer`.
    async fn publish(&mut self, room: u32, ri: usize, q: u64, last_answer: Instant) {
        let run = self.run;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.body.clear();
        self.body.extend_from_slice(b"{\"channel\":");
        serde_json::to_writer(&mut self.body, &run.plan.names[room as usize])
            .expect("bug: Vec write");
        self.body.extend_from_slice(b",\"data\":");
        write_stamp(
            &mut self.body,
            self.book.stamp,
            q,
            unix_micros(),
            run.payload,
        );
        self.body.push(b'}');
        let sent = Instant::now();
        let deadline = (sent + run.common.connect_timeout).min(last_answer.max(sent));
        let answer = tokio::time::timeout_at(
            deadline,
            conn.post(self.endpoint, &self.api.headers, &self.body),
        )
        .await;
        self.api.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = match answer {
            Ok(Ok(resp)) => {
                let us = sent.elapsed().as_micros() as u64;
                self.api.latency.record(self.book.stamp as usize, &[us]);
                self.last_used = Instant::now();
                if !conn.reusable() {
                    self.conn = None;
                }
                verdict(&resp)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err((e.kind(), e.to_string()))
            }
            Err(_) => {
                self.conn = None;
                let e = HttpError::Timeout(deadline - sent);
                Err((e.kind(), e.to_string()))
            }
        };
        match outcome {
            Ok(()) => {
                self.book.acked[ri] += 1;
                run.counters.publications.fetch_add(1, Ordering::Relaxed);
            }
            Err((kind, why)) => {
                // Unanswered: published or not, nobody can tell.
                if kind == "timeout" {
                    self.book.unanswered += 1;
                } else {
                    self.book.errors += 1;
                }
                self.api.count_error(kind);
                self.book.not_acked(run, ri, q, why);
            }
        }
    }
}

/// Whether an API response acked the publication; else its error kind
/// (`http <status>`, `error <code>`, `reply`) and a description.
fn verdict(resp: &Response) -> Result<(), (String, String)> {
    let text = || String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
    if resp.status != 200 {
        return Err((
            format!("http {}", resp.status),
            format!("HTTP {} {:?}", resp.status, text()),
        ));
    }
    match serde_json::from_slice::<ApiReply>(&resp.body) {
        Ok(ApiReply { error: Some(e), .. }) => Err((
            format!("error {}", e.code),
            format!("error {} {:?}", e.code, e.message),
        )),
        Ok(ApiReply {
            result: Some(_), ..
        }) => Ok(()),
        _ => Err(("reply".into(), format!("unexpected reply {:?}", text()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_replies_are_told_apart() {
        let resp = |status, body: &str| Response {
            status,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            verdict(&resp(200, r#"{"result":{"offset":3,"epoch":"e"}}"#)),
            Ok(())
        );
        assert_eq!(verdict(&resp(200, r#"{"result":{}}"#)), Ok(()));
        assert_eq!(
            verdict(&resp(
                200,
                r#"{"error":{"code":102,"message":"unknown channel"}}"#
            ))
            .unwrap_err()
            .0,
            "error 102"
        );
        assert_eq!(verdict(&resp(401, "")).unwrap_err().0, "http 401");
        assert_eq!(verdict(&resp(200, "{}")).unwrap_err().0, "reply");
    }
}
