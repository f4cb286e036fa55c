//! Types shared by every part of the system. No I/O lives here.
//!
//! - [`codes`]: client error codes, unsubscribe codes and disconnect (close) codes of
//!   the Centrifugo client protocol v2.
//! - [`protocol`]: the JSON client protocol: commands the client sends, replies and
//!   pushes the server writes, and the wire shapes they share.
//! - [`channel`]: channel names: namespace, private prefix, user-limited channels.
//! - [`auth`]: connection and subscription JWT claims, verification and minting.
//! - [`envelope`]: the MessagePack envelope nodes exchange through the broker
//!   (publications, join/leave, cluster-wide commands).
//! - [`api`]: the server HTTP API's requests, results and errors.
//! - [`proxy`]: the requests the node sends to the application backend's proxy
//!   endpoints, and their replies.
//! - [`redact`]: the `Debug` marker for secrets; Redis URLs without their passwords.

pub mod api;
pub mod auth;
pub mod channel;
pub mod codes;
pub mod envelope;
pub mod protocol;
pub mod proxy;
pub mod redact;
