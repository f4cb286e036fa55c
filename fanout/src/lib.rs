//! The broker seam between gateway nodes and whatever carries publications between
//! them. Knows nothing of WebSockets.
//!
//! - [`broker`]: the [`Broker`] trait (publish with optional history, per-room
//!   subscribe/unsubscribe, history reads, presence, join/leave) and the
//!   [`BrokerHandler`] through which inbound events reach the node's hub.
//! - `memory`: the in-memory engine, [`MemoryBroker`], a complete implementation
//!   for ONE node.
//! - `redis`: the Redis engine, [`RedisBroker`] configured by [`RedisConfig`]
//!   (standalone or Redis Cluster): many nodes as one.
//! - `testing` (feature `test-util`): real `redis-server` processes for tests.

pub mod broker;
mod memory;
mod redis;
#[cfg(feature = "test-util")]
pub mod testing;

pub use broker::{
    Broker, BrokerError, BrokerHandler, BrokerStats, HistoryOptions, HistoryPage, HistoryQuery,
    PresenceStats,
};
pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisConfig};
