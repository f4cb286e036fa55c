//! Why a connection could not be opened or used ([`ClientError`]), and its short
//! classification for counting failures by kind.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fastwebsockets::WebSocketError;

/// Why a connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("bind source address {addr}: {source}")]
    Bind {
        addr: IpAddr,
        source: std::io::Error,
    },
    #[error("tcp connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: WebSocketError,
    },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: &'static str, after: Duration },
    #[error("websocket: {0}")]
    Ws(#[from] WebSocketError),
    #[error("closed by the server: code {code} {reason:?}")]
    Closed { code: u16, reason: String },
    #[error("{what} refused: error {code} {message:?}")]
    Refused {
        what: String,
        code: u32,
        message: String,
    },
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A short classification for counting failures by kind: `tcp ConnectionRefused`,
    /// `http 503`, `close 3012`, `error 109`, `timeout <what>`.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Url { .. } => "url".into(),
            ClientError::Resolve { .. } => "resolve".into(),
            ClientError::Bind { source, .. } => format!("bind {:?}", source.kind()),
            ClientError::Tcp { source, .. } => format!("tcp {:?}", source.kind()),
            ClientError::Handshake {
                source: WebSocketError::InvalidStatusCode(status),
                ..
            } => format!("http {status}"),
            ClientError::Handshake { source, .. } => format!("handshake {}", ws_kind(source)),
            ClientError::Timeout { what, .. } => format!("timeout {what}"),
            ClientError::Ws(e) => format!("websocket {}", ws_kind(e)),
            ClientError::Closed { code, .. } => format!("close {code}"),
            ClientError::Refused { code, .. } => format!("error {code}"),
            ClientError::Protocol(_) => "protocol".into(),
        }
    }
}

fn ws_kind(e: &WebSocketError) -> String {
    match e {
        WebSocketError::IoError(io) => format!("io {:?}", io.kind()),
        WebSocketError::HTTPError(_) => "http error".into(),
        other => other.to_string(),
    }
}
