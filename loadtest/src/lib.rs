//! `loadtest`: the load harness of the gateway. Many WebSocket clients speaking the
//! Centrifugo JSON protocol, latency histograms, loss/duplicate/order checks, and a
//! report (a table or one JSON object).
//!
//! - [`client`]: one protocol connection: open (handshake), frame I/O (reader,
//!   writer, serve), messages (split, decode), connect and subscribe.
//! - [`stamp`]: the stamp every publication carries (publisher, sequence, send
//!   time): writing it, its fast parse from a push, and the `--payload` bound.
//! - [`check`]: per-stream sequence checks and per-room offset checks.
//! - [`latency`]: sharded HDR histograms of latencies in microseconds.
//! - [`timeline`]: the run over time: samples once a second (deliveries, latency
//!   percentiles) and connection events per second, bounded by the run's length.
//! - [`fanout`]: the fanout scenario (rooms, subscribers, publishers at a rate,
//!   publishing on their connection or through the server HTTP API) and its report.
//! - [`chat`]: the chat scenario (every member of a room publishes and receives),
//!   fanout's machinery with one publisher per member.
//! - [`connect`]: the connection storm (setup latency, accept rate, failures by
//!   kind), with tokens or without (through the gateways' connect proxy).
//! - [`idle`]: connections held subscribed; gateway memory per connection.
//! - [`soak`]: the soak scenario (members publish, drop their connection and
//!   recover, for long runs): exactly-once in-order delivery across reconnects.
//! - [`cluster`]: a throwaway local cluster (redis-server and gateway processes,
//!   a generated secret and API key, optionally the backend as connect proxy,
//!   optionally HAProxy in front, optionally one node drained mid-run) to run a
//!   scenario against.
//! - [`backend`]: a stand-in application backend for the gateways' proxies (admits
//!   every connect, counts the calls).
//! - [`http`]: a small keep-alive HTTP/1.1 client and server side, for the API
//!   publishers and the backend.
//! - [`crowd`]: many connections held open answering pings, for connect and idle.
//! - [`dial`]: opening numbered connections (URL, source address, token, bounded
//!   concurrency) and stopping connection tasks.
//! - [`report`]: what every report offers (verdict, problems, table, series) and
//!   shared pieces.
//! - [`chart`]: `--report FILE`: the run's charts in a self-contained HTML page or
//!   one SVG.
//! - [`options`]: options every scenario shares (URLs, tokens, duration, bounds).
//! - [`progress`]: progress snapshots handed to the caller while a scenario runs.
//! - [`sys`]: CPU time used, the open-file limit, resident memory, Ctrl-C.

pub mod backend;
pub mod chart;
pub mod chat;
pub mod check;
pub mod client;
pub mod cluster;
pub mod connect;
pub mod crowd;
pub mod dial;
pub mod fanout;
pub mod http;
pub mod idle;
pub mod latency;
pub mod options;
pub mod progress;
pub mod report;
pub mod soak;
pub mod stamp;
pub mod sys;
pub mod timeline;

pub use chat::ChatOptions;
pub use connect::{ConnectOptions, ConnectReport};
pub use fanout::{FanoutOptions, FanoutReport};
pub use idle::{IdleOptions, IdleReport};
pub use options::CommonOptions;
pub use progress::Progress;
pub use report::Report;
pub use soak::{SoakOptions, SoakReport};
