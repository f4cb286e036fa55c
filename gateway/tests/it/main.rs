//! Integration tests: real gateways on 127.0.0.1:0, real WebSocket clients over TCP.

mod api;
mod auth;
mod backend;
mod cluster;
mod delivery;
mod demo;
mod deploy;
mod django;
mod drain;
mod k8s;
mod layout;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod overload;
mod protocol;
mod proxy;
mod python;
mod readme;
mod recovery;
mod redis_faults;
mod redis_memory;
mod rolling;
mod sdk;
mod support;
