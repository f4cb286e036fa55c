//! `loadtest`: the load harness of the gateway. Many WebSocket clients speaking the
//! Centrifugo JSON protocol, latency histograms, loss/duplicate/order checks, and a
//! report (a table or one JSON object).
//!
//! - [`client`]: one protocol connection: open, connect and subscribe, publish,
//!   read frames, answer pings.
//! - [`check`]: per-stream sequence checks and per-room offset checks.
//! - [`latency`]: sharded HDR histograms of latencies in microseconds.
//! - [`fanout`]: the fanout scenario (rooms, subscribers, publishers at a rate) and
//!   its report.
//! - [`options`]: options every scenario shares (URLs, tokens, duration, bounds).
//! - [`progress`]: progress snapshots handed to the caller while a scenario runs.
//! - [`sys`]: CPU time used and the open-file limit.

pub mod check;
pub mod client;
pub mod fanout;
pub mod latency;
pub mod options;
pub mod progress;
pub mod sys;

pub use fanout::{FanoutOptions, FanoutReport};
pub use options::CommonOptions;
pub use progress::Progress;
