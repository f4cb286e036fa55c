//! A small hand-written HTTP/1.1 over keep-alive TCP connections, like the
//! WebSocket handshake of [`client`](crate::client): the API publishers' client
//! ([`HttpConn`]: one request at a time, `Content-Length` bodies) and the stand-in
//! backend's server side ([`read_request`], [`write_response`]). Every message is
//! bounded in size; nothing is spawned.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{connect_tcp, ClientError, Endpoint};

/// The longest message head (request or status line and headers) accepted.
const MAX_HEAD: usize = 16 << 10;
/// The largest body accepted (the gateway's API and proxy bodies are far smaller).
pub const MAX_BODY: usize = 1 << 20;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Connect(#[from] ClientError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the peer")]
    Closed,
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl HttpError {
    /// A short classification for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            HttpError::Connect(e) => e.kind(),
            HttpError::Io(e) => format!("io {:?}", e.kind()),
            HttpError::Closed => "closed".into(),
            HttpError::Malformed(_) => "malformed".into(),
            HttpError::Timeout(_) => "timeout".into(),
        }
    }
}

/// A message head: what it says and how long its body is.
#[derive(Debug, Default)]
struct Head {
    /// Responses: the status code.
    status: u16,
    /// Requests: the method and the path.
    method: String,
    path: String,
    content_length: usize,
    /// `Connection: close`.
    close: bool,
}

/// What the headers say about the body and the connection.
fn body_and_connection(head: &mut Head, headers: &[httparse::Header<'_>]) -> Result<(), HttpError> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(HttpError::Malformed("content-length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed("chunked bodies are not supported"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close |= h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if head.content_length > MAX_BODY {
        return Err(HttpError::Malformed("body too large"));
    }
    Ok(())
}

/// Parse a request head (`request`) or a response head from `buf`: its length and
/// what it says, or `None` while incomplete.
fn parse_head(buf: &[u8], request: bool) -> Result<Option<(usize, Head)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = Head::default();
    let parsed = if request {
        let mut r = httparse::Request::new(&mut headers);
        let status = r.parse(buf);
        head.method = r.method.unwrap_or_default().to_owned();
        head.path = r.path.unwrap_or_default().to_owned();
        status.map(|s| (s, r.headers.len()))
    } else {
        let mut r = httparse::Response::new(&mut headers);
        let status = r.parse(buf);
        head.status = r.code.unwrap_or(0);
        status.map(|s| (s, r.headers.len()))
    };
    match parsed {
        Ok((httparse::Status::Complete(len), n)) => {
            body_and_connection(&mut head, &headers[..n])?;
            Ok(Some((len, head)))
        }
        Ok((httparse::Status::Partial, _)) => Ok(None),
        Err(_) => Err(HttpError::Malformed("bad head")),
    }
}

/// Read one message from `stream` into `buf` (which keeps what follows it for the
/// next call): its head and body. `None` when the peer closed before a first byte.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    request: bool,
) -> Result<Option<(Head, Vec<u8>)>, HttpError> {
    let (len, head) = loop {
        if let Some(h) = parse_head(buf, request)? {
            break h;
        }
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::Malformed("head too long"));
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::Closed)
            };
        }
    };
    let end = len + head.content_length;
    while buf.len() < end {
        buf.reserve(end - buf.len());
        if stream.read_buf(buf).await? == 0 {
            return Err(HttpError::Closed);
        }
    }
    let body = buf[len..end].to_vec();
    buf.drain(..end);
    Ok(Some((head, body)))
}

/// A request the backend received.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close the connection after the response.
    pub close: bool,
}

/// The next request on a server connection; `None` when the client closed it.
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, HttpError> {
    Ok(read_message(stream, buf, true)
        .await?
        .map(|(head, body)| Request {
            method: head.method,
            path: head.path,
            body,
            close: head.close,
        }))
}

/// Write a JSON response (a plain-text one for statuses other than 200).
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    body: &[u8],
) -> Result<(), HttpError> {
    let (reason, content_type) = match status {
        200 => ("OK", "application/json"),
        404 => ("Not Found", "text/plain"),
        405 => ("Method Not Allowed", "text/plain"),
        _ => ("Error", "text/plain"),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    Ok(())
}

/// A response the client received.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive client connection to an HTTP endpoint, one request at a time.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server said it closes the connection after the last response.
    closing: bool,
}

impl HttpConn {
    /// Connect to `endpoint` (from `source`, if given), bounded by `timeout`.
    pub async fn open(
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<HttpConn, HttpError> {
        let stream = tokio::time::timeout(timeout, connect_tcp(endpoint.addr, source))
            .await
            .map_err(|_| HttpError::Timeout(timeout))??;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(1024),
            closing: false,
        })
    }

    /// Whether the connection can carry another request.
    pub fn reusable(&self) -> bool {
        !self.closing
    }

    /// POST `body` as JSON to `endpoint`'s path with the extra header lines
    /// `headers` (each ending in `\r\n`) and read the response. Not bounded here:
    /// the caller bounds it and drops the connection on timeout.
    pub async fn post(
        &mut self,
        endpoint: &Endpoint,
        headers: &str,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n",
            endpoint.path_and_query,
            endpoint.authority,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        let (head, body) = read_message(&mut self.stream, &mut self.buf, false)
            .await?
            .ok_or(HttpError::Closed)?;
        self.closing = head.close;
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_are_read_one_after_another_with_their_bodies() {
        let wire = b"POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}\
                     POST /rpc HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let mut stream = &wire[..];
        let mut buf = Vec::new();
        let a = read_request(&mut stream, &mut buf).await.unwrap().unwrap();
        assert_eq!((a.method.as_str(), a.path.as_str()), ("POST", "/connect"));
        assert_eq!((a.body.as_slice(), a.close), (&b"{}"[..], false));
        let b = read_request(&mut stream, &mut buf).await.unwrap().unwrap();
        assert_eq!((b.path.as_str(), b.body.len(), b.close), ("/rpc", 0, true));
        assert!(read_request(&mut stream, &mut buf).await.unwrap().is_none());

        let mut out = Vec::new();
        write_response(&mut out, 200, br#"{"result":{}}"#)
            .await
            .unwrap();
        let mut stream = &out[..];
        let (head, body) = read_message(&mut stream, &mut Vec::new(), false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, body.as_slice()),
            (200, &br#"{"result":{}}"#[..])
        );

        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut stream = &chunked[..];
        assert!(read_message(&mut stream, &mut Vec::new(), false)
            .await
            .is_err());
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        let mut stream = &cut[..];
        assert!(matches!(
            read_message(&mut stream, &mut Vec::new(), false).await,
            Err(HttpError::Closed)
        ));
    }
}
