//! Opening a connection: resolving the URL ([`Endpoint`]), TCP connect (optionally
//! from a chosen source address), and a hand-written WebSocket upgrade whose
//! `Sec-WebSocket-Accept` is checked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fastwebsockets::WebSocketError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::error::ClientError;
use super::frames::{Reader, Writer};

/// A gateway's WebSocket URL (`ws://host:port/path`), resolved once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given.
    pub url: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
    pub(crate) authority: String,
    pub(crate) path_and_query: String,
}

impl Endpoint {
    /// Parse `url` and resolve its host. Only `ws://` is supported (no TLS).
    pub async fn resolve(url: &str) -> Result<Endpoint, ClientError> {
        Endpoint::resolve_scheme(url, "ws").await
    }

    /// [`Endpoint::resolve`] for an `http://` URL (the server API's).
    pub async fn resolve_http(url: &str) -> Result<Endpoint, ClientError> {
        Endpoint::resolve_scheme(url, "http").await
    }

    async fn resolve_scheme(url: &str, scheme: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some(s) if s == scheme => {}
            Some("wss" | "https") => return Err(bad("TLS is not supported")),
            _ => return Err(bad(&format!("must start with {scheme}://"))),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let resolve_err = |reason: String| ClientError::Resolve {
            host: host.clone(),
            reason,
        };
        let addr = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| resolve_err("timed out after 10s".into()))?
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no address".into()))?;
        Ok(Endpoint {
            url: url.to_owned(),
            addr,
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// How connections are opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Local address to bind before connecting (the kernel picks the port). Several
    /// loopback addresses let one host open more connections to one gateway than one
    /// source address has ephemeral ports (about 28k). Default: none.
    pub source: Option<IpAddr>,
    /// Bound on the TCP connect plus the WebSocket handshake. Default 10 s.
    pub timeout: Duration,
    /// Bound on one write to the socket. Default 10 s.
    pub write_timeout: Duration,
    /// Largest WebSocket message accepted from the server, in bytes. Default 8 MiB.
    pub max_message_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            source: None,
            timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_message_bytes: 8 << 20,
        }
    }
}

/// Open a TCP connection to `endpoint` and upgrade it to a WebSocket; bounded by
/// `opts.timeout`.
pub async fn open(
    endpoint: &Endpoint,
    opts: &OpenOptions,
) -> Result<(Reader, Writer), ClientError> {
    tokio::time::timeout(opts.timeout, open_inner(endpoint, opts))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "tcp connect and websocket handshake",
            after: opts.timeout,
        })?
}

/// A TCP connection to `addr` (from `source`, if given) with Nagle off.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, ClientError> {
    let stream = match source {
        None => TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Tcp { addr, source })?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|source| ClientError::Bind { addr: ip, source })?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|source| ClientError::Bind { addr: ip, source })?;
            socket
                .connect(addr)
                .await
                .map_err(|source| ClientError::Tcp { addr, source })?
        }
    };
    // Publications are small frames; Nagle would add its delay to every latency.
    stream
        .set_nodelay(true)
        .map_err(|source| ClientError::Tcp { addr, source })?;
    Ok(stream)
}

async fn open_inner(
    endpoint: &Endpoint,
    opts: &OpenOptions,
) -> Result<(Reader, Writer), ClientError> {
    let addr = endpoint.addr;
    let mut stream = connect_tcp(addr, opts.source).await?;
    handshake(&mut stream, endpoint)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Client);
    ws.set_max_message_size(opts.max_message_bytes);
    let (read, write) = ws.split(TcpStream::into_split);
    Ok((Reader::new(read), Writer::new(write, opts.write_timeout)))
}

/// The longest handshake response head accepted.
const MAX_RESPONSE_HEAD: usize = 8 << 10;

/// The client half of the WebSocket opening handshake (RFC 6455 section 4): one
/// request written, the response head read and checked, nothing spawned. (hyper's
/// client spawned a task per connection and kept the socket boxed behind a shared
/// split: 9.3 KB of harness memory per idle connection against 8.3 KB now.)
async fn handshake(stream: &mut TcpStream, endpoint: &Endpoint) -> Result<(), WebSocketError> {
    let key = fastwebsockets::handshake::generate_key();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        endpoint.path_and_query, endpoint.authority
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    loop {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(WebSocketError::InvalidValue);
        }
        head.reserve(512);
        if stream.read_buf(&mut head).await? == 0 {
            return Err(WebSocketError::UnexpectedEOF);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(WebSocketError::InvalidValue),
        };
        return check_upgrade(&response, &key, head.len() - len);
    }
}

/// Whether `response` accepts the upgrade asked for with `key`. `trailing` is how
/// many bytes followed its head: the server must not speak before the client.
fn check_upgrade(
    response: &httparse::Response<'_, '_>,
    key: &str,
    trailing: usize,
) -> Result<(), WebSocketError> {
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(WebSocketError::InvalidStatusCode(status));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if !header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        return Err(WebSocketError::InvalidUpgradeHeader);
    }
    let upgrade_token = |v: &str| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    };
    if !header("connection").is_some_and(upgrade_token) {
        return Err(WebSocketError::InvalidConnectionHeader);
    }
    if header("sec-websocket-accept").map(str::trim) != Some(accept_key(key).as_str())
        || trailing != 0
    {
        return Err(WebSocketError::InvalidValue);
    }
    Ok(())
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str, key: &str) -> Result<(), String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(head.as_bytes()) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("incomplete head: {other:?}"),
        };
        check_upgrade(&response, key, head.len() - len).map_err(|e| e.to_string())
    }

    #[test]
    fn handshake_response_is_checked() {
        // The example of RFC 6455 section 1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check(ok, key), Ok(()));
        assert_eq!(
            check(
                &ok.replace("Upgrade\r\nSec", "keep-alive, upgrade\r\nSec"),
                key
            ),
            Ok(())
        );
        let refused = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfull";
        assert_eq!(check(refused, key), Err("Invalid status code: 503".into()));
        let wrong_accept = ok.replace("s3pP", "AAAA");
        assert_eq!(check(&wrong_accept, key), Err("Invalid value".into()));
        let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            check(&no_upgrade, key),
            Err("Invalid upgrade header".into())
        );
        let no_connection = ok.replace("Connection: Upgrade\r\n", "");
        assert_eq!(
            check(&no_connection, key),
            Err("Invalid connection header".into())
        );
        // The server may not send frames before the client's first command.
        assert_eq!(
            check(&format!("{ok}\u{81}\u{2}{{}}"), key),
            Err("Invalid value".into())
        );
    }
}
