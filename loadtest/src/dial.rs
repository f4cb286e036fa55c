//! Opening numbered connections for a scenario: URL and source address chosen
//! round-robin, a token each, a bound on the handshakes in progress; and stopping
//! the connection tasks at the end of a run.

use std::time::Duration;

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{
    self, ClientError, ConnectResult, Endpoint, OpenOptions, Reader, SubscribeResult, Subscription,
    Writer,
};
use crate::options::CommonOptions;
use crate::report::Problems;

/// Bound on connection tasks ending once a run is cancelled.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the connections of one run.
pub struct Dialer {
    common: CommonOptions,
    endpoints: Vec<Endpoint>,
    open: OpenOptions,
    /// Bounds the connections being opened at once.
    gate: Semaphore,
}

/// An open connection whose `connect` and `subscribe`s were answered.
pub struct Session {
    pub reader: Reader,
    pub writer: Writer,
    pub connected: ConnectResult,
    /// One subscribe result per channel, in order.
    pub subscribed: Vec<SubscribeResult>,
    /// When the TCP connect started (once through the gate).
    pub started: Instant,
    /// From the TCP connect to the last reply of the session setup.
    pub setup: Duration,
}

impl Dialer {
    /// Resolve `common.url`; at most `concurrency` connections are opened at once.
    pub async fn new(common: &CommonOptions, concurrency: usize) -> anyhow::Result<Dialer> {
        if common.url.is_empty() {
            bail!("no gateway: pass --url ws://host:port/connection/websocket");
        }
        if concurrency == 0 {
            bail!("the connect concurrency must be at least 1");
        }
        let mut endpoints = Vec::new();
        for url in &common.url {
            endpoints.push(Endpoint::resolve(url).await?);
        }
        Ok(Dialer {
            common: common.clone(),
            endpoints,
            open: OpenOptions {
                timeout: common.connect_timeout,
                ..OpenOptions::default()
            },
            gate: Semaphore::new(concurrency),
        })
    }

    /// Open connection `conn` (its URL and source address chosen round-robin),
    /// authenticate and subscribe to `channels`. Bounded by the connect timeout twice
    /// over: once for opening, once for the replies.
    pub async fn open_session(
        &self,
        conn: usize,
        channels: &[&str],
    ) -> Result<Session, ClientError> {
        let subs: Vec<Subscription<'_>> = channels.iter().map(|&c| Subscription::to(c)).collect();
        self.open_session_at(conn, 0, &subs).await
    }

    /// [`Dialer::open_session`] with the subscribe options of each channel, to the
    /// URL `turn` places after connection `conn`'s own (a reconnect moves on).
    pub async fn open_session_at(
        &self,
        conn: usize,
        turn: usize,
        subs: &[Subscription<'_>],
    ) -> Result<Session, ClientError> {
        let _permit = self
            .gate
            .acquire()
            .await
            .expect("bug: the connect gate is never closed");
        let started = Instant::now();
        let endpoint = &self.endpoints[conn.wrapping_add(turn) % self.endpoints.len()];
        let sources = &self.common.source_addr;
        let mut open = self.open.clone();
        if !sources.is_empty() {
            open.source = Some(sources[conn % sources.len()]);
        }
        let (mut reader, mut writer) = client::open(endpoint, &open).await?;
        let token = self.common.token_for(conn);
        let (connected, subscribed) = client::start_session_with(
            &mut reader,
            &mut writer,
            token.as_deref(),
            subs,
            self.common.connect_timeout,
        )
        .await?;
        Ok(Session {
            reader,
            writer,
            connected,
            subscribed,
            started,
            setup: started.elapsed(),
        })
    }
}

/// Collect what every connection task returned, once the run is cancelled; tasks
/// still running after [`STOP_TIMEOUT`] are aborted and reported.
pub async fn join_tasks<T: 'static>(mut tasks: JoinSet<T>, problems: &mut Problems) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(t))) => out.push(t),
            Ok(Some(Err(e))) => problems.push(format!("a connection task failed: {e}")),
            Ok(None) => break,
            Err(_) => {
                problems.push(format!(
                    "{} connection tasks did not stop within {STOP_TIMEOUT:?}",
                    tasks.len()
                ));
                tasks.abort_all();
                break;
            }
        }
    }
    out
}
