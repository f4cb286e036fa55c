//! A gateway node: terminates client WebSockets speaking the Centrifugo client
//! protocol v2 (JSON) and relays rooms through a [`fanout::Broker`].
//!
//! - [`config`]: the node's configuration (TOML file, environment overrides).
//! - [`node`]: shared state of one node: broker, hub, verifier, shutdown.
//! - [`server`]: the HTTP server, WebSocket upgrade, health endpoints, drain.
//! - [`ws`]: the one task of a WebSocket: reads, commands, writes, timers.
//! - [`frame`]: the WebSocket frame reader (no buffer while a connection is idle).
//! - [`conn`]: one connection's session and its commands.
//! - [`hub`]: rooms to local subscribers; where broker events fan out.
//! - [`outbound`]: a connection's bounded outbound queue.
//! - [`metrics`]: node counters.

pub mod config;
pub mod conn;
pub mod frame;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod server;
pub mod ws;

pub use config::Config;
pub use node::Node;
pub use server::run;
