//! A gateway node: terminates client WebSockets speaking the Centrifugo client
//! protocol v2 (JSON, see docs/protocol.md) and relays rooms through a
//! [`fanout::Broker`].
//!
//! Modules, in the order they import one another (each uses only those below it):
//! - `server`: the HTTP server, WebSocket upgrade, health endpoints, drain.
//! - `api`: the server HTTP API (`/api/<method>`), a file per method family.
//! - `demo`: the demo chat page, its embedded files and the demo token endpoint.
//! - `origin`: which browser origins the node accepts (upgrade, demo tokens).
//! - `ws`: the one task of a WebSocket: reads, commands, writes, timers.
//! - `frame`: the WebSocket frame reader (no buffer while a connection is idle).
//! - `conn`: one connection's session and its commands, a file per family.
//! - `node`: shared state of one node: broker, hub, verifier, proxy, shutdown;
//!   its background loops (heartbeat, idle rooms, channel surveys).
//! - `proxy`: calls to the application backend (connect, subscribe, publish, ...).
//! - `hub`: rooms to local subscribers; where broker events fan out.
//! - `survey`: channel surveys across nodes (for the `channels` API).
//! - `load`: whether the node is saturated (scheduling lag), for write coalescing.
//! - `outbound`: a connection's mailbox, its bounded outbound queue.
//! - [`config`]: the node's configuration (TOML file, environment overrides).
//! - `metrics`: the node's Prometheus metrics (served on the admin listener).

mod api;
pub mod config;
mod conn;
mod demo;
// Public only for the fuzz targets (fuzz/fuzz_targets/frame_reader.rs); not part of
// the gateway's API.
#[doc(hidden)]
pub mod frame;
mod hub;
mod load;
mod metrics;
mod node;
mod origin;
mod outbound;
mod proxy;
mod server;
mod survey;
mod ws;

pub use config::Config;
pub use hub::Hub;
pub use metrics::{HubCounts, Metrics};
pub use node::{Node, NodeError};
pub use server::{run, run_listeners, run_with, Listeners, WEBSOCKET_PATH};
