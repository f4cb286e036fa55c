//! Error, unsubscribe and disconnect codes (docs/protocol.md §7).

/// An error sent to the client in `Reply.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub message: &'static str,
    /// The SDK retries temporary errors instead of failing the call for good.
    pub temporary: bool,
}

const fn err(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
    ErrorCode {
        code,
        message,
        temporary,
    }
}

pub const ERROR_INTERNAL: ErrorCode = err(100, "internal server error", true);
pub const ERROR_UNAUTHORIZED: ErrorCode = err(101, "unauthorized", false);
pub const ERROR_UNKNOWN_CHANNEL: ErrorCode = err(102, "unknown channel", false);
pub const ERROR_PERMISSION_DENIED: ErrorCode = err(103, "permission denied", false);
pub const ERROR_METHOD_NOT_FOUND: ErrorCode = err(104, "method not found", false);
pub const ERROR_ALREADY_SUBSCRIBED: ErrorCode = err(105, "already subscribed", false);
pub const ERROR_LIMIT_EXCEEDED: ErrorCode = err(106, "limit exceeded", false);
pub const ERROR_BAD_REQUEST: ErrorCode = err(107, "bad request", false);
pub const ERROR_NOT_AVAILABLE: ErrorCode = err(108, "not available", false);
pub const ERROR_TOKEN_EXPIRED: ErrorCode = err(109, "token expired", false);
pub const ERROR_EXPIRED: ErrorCode = err(110, "expired", false);
pub const ERROR_TOO_MANY_REQUESTS: ErrorCode = err(111, "too many requests", true);
pub const ERROR_UNRECOVERABLE_POSITION: ErrorCode = err(112, "unrecoverable position", false);

/// A server-initiated unsubscribe (push `unsubscribe.code`). Codes below 2500 end the
/// subscription; codes from 2500 make the SDK resubscribe (and recover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeCode {
    pub code: u32,
    pub reason: &'static str,
}

pub const UNSUBSCRIBE_SERVER: UnsubscribeCode = UnsubscribeCode {
    code: 2000,
    reason: "server unsubscribe",
};
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: UnsubscribeCode = UnsubscribeCode {
    code: 2500,
    reason: "insufficient state",
};
pub const UNSUBSCRIBE_EXPIRED: UnsubscribeCode = UnsubscribeCode {
    code: 2501,
    reason: "subscription expired",
};

/// A disconnect, sent over WebSocket as a close frame with this code and reason.
/// 3000-3499 reconnect, 3500-3999 are terminal for the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectCode {
    pub code: u16,
    pub reason: &'static str,
}

const fn dis(code: u16, reason: &'static str) -> DisconnectCode {
    DisconnectCode { code, reason }
}

pub const DISCONNECT_SHUTDOWN: DisconnectCode = dis(3001, "shutdown");
pub const DISCONNECT_INTERNAL: DisconnectCode = dis(3004, "internal server error");
pub const DISCONNECT_EXPIRED: DisconnectCode = dis(3005, "connection expired");
pub const DISCONNECT_SUB_EXPIRED: DisconnectCode = dis(3006, "subscription expired");
pub const DISCONNECT_SLOW: DisconnectCode = dis(3008, "slow");
pub const DISCONNECT_WRITE_ERROR: DisconnectCode = dis(3009, "write error");
pub const DISCONNECT_INSUFFICIENT_STATE: DisconnectCode = dis(3010, "insufficient state");
pub const DISCONNECT_FORCE_RECONNECT: DisconnectCode = dis(3011, "force reconnect");
pub const DISCONNECT_NO_PONG: DisconnectCode = dis(3012, "no pong");
pub const DISCONNECT_TOO_MANY_REQUESTS: DisconnectCode = dis(3013, "too many requests");
pub const DISCONNECT_INVALID_TOKEN: DisconnectCode = dis(3500, "invalid token");
pub const DISCONNECT_BAD_REQUEST: DisconnectCode = dis(3501, "bad request");
pub const DISCONNECT_STALE: DisconnectCode = dis(3502, "stale");
pub const DISCONNECT_FORCE: DisconnectCode = dis(3503, "force disconnect");
pub const DISCONNECT_CONNECTION_LIMIT: DisconnectCode = dis(3504, "connection limit");
pub const DISCONNECT_CHANNEL_LIMIT: DisconnectCode = dis(3505, "channel limit");
pub const DISCONNECT_INAPPROPRIATE_PROTOCOL: DisconnectCode = dis(3506, "inappropriate protocol");
pub const DISCONNECT_PERMISSION_DENIED: DisconnectCode = dis(3507, "permission denied");
pub const DISCONNECT_NOT_AVAILABLE: DisconnectCode = dis(3508, "not available");
pub const DISCONNECT_TOO_MANY_ERRORS: DisconnectCode = dis(3509, "too many errors");
/// Standard WebSocket close code for a framing violation (RFC 6455 7.4.1).
pub const DISCONNECT_WS_PROTOCOL_ERROR: DisconnectCode = dis(1002, "protocol error");
/// Standard WebSocket close code for a text message that is not UTF-8.
pub const DISCONNECT_WS_INVALID_PAYLOAD: DisconnectCode = dis(1007, "invalid payload data");
/// Standard WebSocket close code for a message over the read limit. The SDK treats it
/// as terminal ("message size limit").
pub const DISCONNECT_MESSAGE_TOO_BIG: DisconnectCode = dis(1009, "message too big");

impl DisconnectCode {
    /// Whether the SDK reconnects after this close code.
    pub fn reconnects(&self) -> bool {
        !matches!(self.code, 1009 | 3500..=3999 | 4500..=4999)
    }
}
