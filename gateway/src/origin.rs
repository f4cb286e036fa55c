//! Which browser origins a node accepts: those in `client.allowed_origins`, or
//! the host the request went to. Asked by the WebSocket upgrade (`server`) and
//! the demo token endpoint (`demo`).

use hyper::body::Incoming;
use hyper::header::{HOST, ORIGIN};
use hyper::Request;

use crate::node::Node;

/// Whether the request's Origin (if any) is allowed: listed in
/// `client.allowed_origins`, or the host the request went to.
pub(crate) fn origin_allowed(node: &Node, req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let allowed = &node.config.client.allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the page was served from the host the socket goes to.
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
}
