//! A small client of the gateway's JSON protocol (`docs/protocol.md`): TCP connect
//! (optionally from a chosen source address), WebSocket handshake, `connect` and
//! `subscribe` sent together in one frame, `publish`, splitting frames on `\n`, and
//! `{}` pongs. A socket is split into a [`Reader`] and a [`Writer`] so a publisher
//! can read and write at once; a subscriber drives both in turn from one task
//! ([`serve`]).
//!
//! - `error`: [`ClientError`].
//! - `handshake`: [`Endpoint`], [`OpenOptions`], [`open`]; the TCP connect it
//!   shares with the HTTP client.
//! - `frames`: [`Reader`], [`Writer`], [`serve`].
//! - `message`: [`messages`], [`is_ping`], [`Reply`] and the other decoded shapes,
//!   [`Subscription`], [`Position`].
//! - `session`: [`start_session`], [`start_session_with`].

mod error;
mod frames;
mod handshake;
mod message;
mod session;

pub use error::ClientError;
pub use frames::{serve, Inbound, Reader, Writer};
pub(crate) use handshake::connect_tcp;
pub use handshake::{open, Endpoint, OpenOptions};
pub use message::{
    is_ping, messages, ConnectResult, Position, Publication, Push, RecoveredPublication, Reply,
    ReplyError, SubscribeResult, Subscription, Unsubscribed,
};
pub use session::{start_session, start_session_with};
