//! The demo chat page (README "Try it in the browser"), on the client listener
//! when demo mode is on (`config/demo.rs` has the rules): the page at `/`, its
//! files under `/demo/` (embedded from `gateway/assets/demo/`, no build step), and,
//! where the node mints, `POST /demo/token`: a short-lived connection token for a
//! nickname. Everything else the page does goes through the public client protocol.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY};
use hyper::{Method, Request, Response, StatusCode};
use shared::auth::{mint_hs256, unix_now, MintClaims};

use crate::config::DEMO_NAMESPACE;
use crate::node::Node;

type Body = Full<Bytes>;

/// Where the token endpoint lives.
const TOKEN_PATH: &str = "/demo/token";
/// A token request body is one short form field.
const MAX_TOKEN_BODY_BYTES: usize = 1024;
/// Longest nickname, in characters (all ASCII).
pub(crate) const MAX_NICKNAME_CHARS: usize = 24;

/// The page forbids inline scripts and styles: what it shows from users is text.
/// It may connect to any WebSocket endpoint it is given (`?ws=`, `demo.endpoints`)
/// and ask those nodes for tokens.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss: http: https:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded files: path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../assets/demo/index.html"),
    ),
    (
        "/demo/demo.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/demo/demo.js"),
    ),
    (
        "/demo/demo.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/demo/demo.css"),
    ),
    // npm `centrifuge` 5.8.0, dist/centrifuge.js as published (the browser build).
    (
        "/demo/centrifuge.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/demo/centrifuge.js"),
    ),
    (
        "/demo/centrifuge-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/demo/centrifuge-LICENSE.txt"),
    ),
];

/// Whether `path` is the demo's to answer on this node (the page is on).
pub(crate) fn serves(node: &Node, path: &str) -> bool {
    (path == "/" || path.starts_with("/demo/")) && node.config.demo_page()
}

/// Answer a request for a path [`serves`] accepted.
pub(crate) async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == TOKEN_PATH {
        return match node.config.demo_mint_secret() {
            None => not_found(),
            Some(_) if req.method() != Method::POST => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                r
            }
            Some(_) => mint(&node, req).await,
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_found();
    }
    if path == "/demo/config.json" {
        return page_config(&node);
    }
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((p, content_type, bytes)) => {
            let mut r = respond(StatusCode::OK, content_type, Bytes::from_static(bytes));
            let h = r.headers_mut();
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            if *p == "/" {
                h.insert(
                    "content-security-policy",
                    HeaderValue::from_static(PAGE_CSP),
                );
                h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
            }
            r
        }
        None => not_found(),
    }
}

/// What the page needs to know about this node: whether it mints tokens, the
/// namespace of its rooms, the endpoints to fall back through.
fn page_config(node: &Node) -> Response<Body> {
    let c = &node.config;
    let body = serde_json::json!({
        "mint": c.demo_mint_secret().is_some(),
        "namespace": DEMO_NAMESPACE,
        "endpoints": c.demo.endpoints,
        "max_nickname_chars": MAX_NICKNAME_CHARS,
    });
    let mut r = json(StatusCode::OK, &body);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /demo/token` with the form body `user=<nickname>`: a connection token for
/// that user, valid `demo.token_ttl`. A form body needs no CORS preflight, so a
/// page moved to another node's endpoint can still ask that node. A browser
/// request from an origin the node would refuse a WebSocket from is refused
/// (403): another website open in the developer's browser gets no token.
async fn mint(node: &Node, req: Request<Incoming>) -> Response<Body> {
    let Some(secret) = node.config.demo_mint_secret() else {
        return not_found();
    };
    if !crate::origin::origin_allowed(node, &req) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let origin = req.headers().get(ORIGIN).cloned();
    let body = match Limited::new(req.into_body(), MAX_TOKEN_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            let r = token_error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 KiB");
            return allow_origin(r, origin);
        }
        Err(_) => {
            return allow_origin(
                token_error(StatusCode::BAD_REQUEST, "unreadable body"),
                origin,
            )
        }
    };
    let user = match nickname_from_form(&body) {
        Ok(u) => u,
        Err(why) => return allow_origin(token_error(StatusCode::BAD_REQUEST, why), origin),
    };
    let ttl = node.config.demo.token_ttl.as_secs();
    let token = mint_hs256(
        secret,
        &MintClaims {
            sub: user.clone(),
            exp: Some(unix_now() + ttl),
            ..Default::default()
        },
    );
    tracing::debug!(%user, ttl, "demo token minted");
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({"token": token, "user": user, "expires_in": ttl}),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    allow_origin(r, origin)
}

/// Let the page that asked (an allowed origin) read the answer.
fn allow_origin(mut r: Response<Body>, origin: Option<HeaderValue>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(VARY, HeaderValue::from_static("origin"));
    if let Some(o) = origin {
        h.insert("access-control-allow-origin", o);
    }
    r
}

/// The `user` field of a form body, checked with [`check_nickname`].
fn nickname_from_form(body: &[u8]) -> Result<String, &'static str> {
    let user = form_urlencoded::parse(body)
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned())
        .ok_or("missing the form field user=<nickname>")?;
    check_nickname(&user)?;
    Ok(user)
}

/// A nickname is 1 to [`MAX_NICKNAME_CHARS`] ASCII letters, digits, `-` or `_`:
/// it becomes the user id others see, so nothing that could pass for markup, a
/// path or another user's id with spaces around it.
pub(crate) fn check_nickname(nick: &str) -> Result<(), &'static str> {
    const RULE: &str = "a nickname is 1 to 24 letters, digits, '-' or '_'";
    let ok = !nick.is_empty()
        && nick.len() <= MAX_NICKNAME_CHARS
        && nick
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RULE)
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("bug: a JSON value serializes");
    respond(status, "application/json", Bytes::from(body))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// A token request refused: `{"error": why}`.
fn token_error(status: StatusCode, why: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": why }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames() {
        for ok in [
            "a",
            "alice",
            "Bob_2",
            "x-y",
            &"n".repeat(MAX_NICKNAME_CHARS),
        ] {
            assert_eq!(check_nickname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            " alice",
            "al ice",
            "<b>",
            "a/b",
            "a:b",
            "élise",
            "a\u{0}",
            &"n".repeat(MAX_NICKNAME_CHARS + 1),
        ] {
            assert!(check_nickname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_form_field_is_decoded_then_checked() {
        assert_eq!(nickname_from_form(b"user=alice").unwrap(), "alice");
        assert_eq!(nickname_from_form(b"x=1&user=b%6Fb").unwrap(), "bob");
        assert!(nickname_from_form(b"user=a+b").is_err(), "a space");
        assert!(nickname_from_form(b"user=%3Cscript%3E").is_err());
        assert!(nickname_from_form(b"name=alice").is_err());
        assert!(nickname_from_form(b"").is_err());
        assert!(nickname_from_form(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn every_asset_is_embedded_and_the_page_names_only_embedded_files() {
        let page = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (path, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{path}");
        }
        for src in page.split(['"', '\'']).filter(|s| s.starts_with("/demo/")) {
            assert!(
                ASSETS.iter().any(|(p, _, _)| p == &src),
                "the page refers to {src}, which is not embedded"
            );
        }
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no CDN"
        );
    }
}
