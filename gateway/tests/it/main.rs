//! Integration tests: real gateways on 127.0.0.1:0, real WebSocket clients over TCP.

mod auth;
mod cluster;
mod delivery;
mod layout;
mod lifecycle;
mod limits;
mod protocol;
mod python;
mod readme;
mod recovery;
mod sdk;
mod support;
