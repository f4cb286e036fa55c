//! A small client of the gateway's JSON protocol (PROTOCOL.md sections 1-5): TCP
//! connect (optionally from a chosen source address), WebSocket handshake, `connect`
//! and `subscribe` sent together in one frame, `publish`, splitting frames on `\n`,
//! and `{}` pongs. A socket is split into a [`Reader`] and a [`Writer`] so a publisher
//! can read and write at once; a subscriber drives both in turn from one task
//! ([`serve`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

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

/// A gateway's WebSocket URL (`ws://host:port/path`), resolved once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given.
    pub url: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
    authority: String,
    path_and_query: String,
}

impl Endpoint {
    /// Parse `url` and resolve its host. Only `ws://` is supported (no TLS).
    pub async fn resolve(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(bad("wss:// (TLS) is not supported")),
            _ => return Err(bad("must start with ws://")),
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

async fn open_inner(
    endpoint: &Endpoint,
    opts: &OpenOptions,
) -> Result<(Reader, Writer), ClientError> {
    let addr = endpoint.addr;
    let mut stream = match opts.source {
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
    handshake(&mut stream, endpoint)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Client);
    ws.set_max_message_size(opts.max_message_bytes);
    let (read, write) = ws.split(TcpStream::into_split);
    Ok((
        Reader {
            ws: FragmentCollectorRead::new(read),
            backlog: None,
            owed: None,
        },
        Writer {
            ws: write,
            buf: Vec::with_capacity(256),
            next_id: 0,
            write_timeout: opts.write_timeout,
        },
    ))
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

/// What one read returned.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame: one or more messages joined by `\n` (see [`messages`]).
    Text(Payload<'static>),
    /// The server's close frame.
    Closed { code: u16, reason: String },
}

/// The receiving half of a connection.
pub struct Reader {
    ws: FragmentCollectorRead<OwnedReadHalf>,
    /// Messages read while the session was set up that were not replies to it;
    /// handed out by the next [`Reader::read`].
    backlog: Option<Vec<u8>>,
    /// A control frame the WebSocket layer owes the server (a pong to a WebSocket
    /// ping, the echo of a close), for the [`Writer`] to send.
    owed: Option<Frame<'static>>,
}

impl Reader {
    /// The next text or close frame. Not cancel-safe (fastwebsockets' `read_frame`
    /// is not): cancel it only when the connection is dropped afterwards.
    ///
    /// A WebSocket-level ping is answered through [`Reader::take_owed`] after the
    /// next data frame; the gateway pings at the protocol level (`{}`), so this
    /// delay does not arise against it.
    pub async fn read(&mut self) -> Result<Inbound, ClientError> {
        if let Some(b) = self.backlog.take() {
            return Ok(Inbound::Text(Payload::Owned(b)));
        }
        loop {
            let owed = &mut self.owed;
            let frame = self
                .ws
                .read_frame(&mut |f: Frame<'static>| {
                    *owed = Some(f);
                    std::future::ready(Ok::<(), Infallible>(()))
                })
                .await?;
            match frame.opcode {
                OpCode::Text => return Ok(Inbound::Text(frame.payload)),
                OpCode::Close => {
                    let p = &frame.payload;
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                    return Ok(Inbound::Closed { code, reason });
                }
                OpCode::Binary => {
                    return Err(ClientError::Protocol(
                        "binary frame on a JSON connection".into(),
                    ))
                }
                OpCode::Ping | OpCode::Pong | OpCode::Continuation => {}
            }
        }
    }

    /// A control frame owed to the server since the last call, if any.
    pub fn take_owed(&mut self) -> Option<Frame<'static>> {
        self.owed.take()
    }
}

/// The sending half of a connection. Every write is bounded by the write timeout.
pub struct Writer {
    ws: WebSocketWrite<OwnedWriteHalf>,
    /// Reused for every command, so sending allocates nothing in the steady state.
    buf: Vec<u8>,
    next_id: u32,
    write_timeout: Duration,
}

impl Writer {
    /// A fresh command id (never 0: id 0 means pong).
    pub fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Send `connect` (with `token` if any) and one `subscribe` per channel in one
    /// frame, as the SDKs do. Returns the ids: the connect's, then one per channel.
    pub async fn send_session(
        &mut self,
        token: Option<&str>,
        channels: &[&str],
    ) -> Result<(u32, Vec<u32>), ClientError> {
        let subs: Vec<Subscription<'_>> = channels.iter().map(|&c| Subscription::to(c)).collect();
        self.send_subscriptions(token, &subs).await
    }

    /// [`Writer::send_session`] with the subscribe options of each channel.
    pub async fn send_subscriptions(
        &mut self,
        token: Option<&str>,
        subs: &[Subscription<'_>],
    ) -> Result<(u32, Vec<u32>), ClientError> {
        self.buf.clear();
        let connect_id = self.next_id();
        write!(self.buf, "{{\"id\":{connect_id},\"connect\":{{").expect("bug: Vec write");
        if let Some(t) = token {
            self.buf.extend_from_slice(b"\"token\":");
            serde_json::to_writer(&mut self.buf, t).expect("bug: Vec write");
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(b"\"name\":\"loadtest\"}}");
        let mut ids = Vec::with_capacity(subs.len());
        for sub in subs {
            let id = self.next_id();
            write!(self.buf, "\n{{\"id\":{id},\"subscribe\":{{\"channel\":")
                .expect("bug: Vec write");
            serde_json::to_writer(&mut self.buf, sub.channel).expect("bug: Vec write");
            if sub.recoverable {
                self.buf.extend_from_slice(b",\"recoverable\":true");
            }
            if let Some(p) = &sub.recover_from {
                write!(
                    self.buf,
                    ",\"recover\":true,\"offset\":{},\"epoch\":",
                    p.offset
                )
                .expect("bug: Vec write");
                serde_json::to_writer(&mut self.buf, &p.epoch).expect("bug: Vec write");
            }
            self.buf.extend_from_slice(b"}}");
            ids.push(id);
        }
        self.flush_text().await?;
        Ok((connect_id, ids))
    }

    /// Send `publish` on `channel` with command id `id`; `data` writes the
    /// publication's JSON (one line, no `\n`) into the buffer it is given.
    pub async fn publish(
        &mut self,
        id: u32,
        channel: &str,
        data: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ClientError> {
        self.buf.clear();
        write!(self.buf, "{{\"id\":{id},\"publish\":{{\"channel\":").expect("bug: Vec write");
        serde_json::to_writer(&mut self.buf, channel).expect("bug: Vec write");
        self.buf.extend_from_slice(b",\"data\":");
        data(&mut self.buf);
        self.buf.extend_from_slice(b"}}");
        self.flush_text().await
    }

    /// Answer a server ping: the empty command `{}`.
    pub async fn pong(&mut self) -> Result<(), ClientError> {
        self.buf.clear();
        self.buf.extend_from_slice(b"{}");
        self.flush_text().await
    }

    /// Send a control frame the reader owes the server ([`Reader::take_owed`]).
    pub async fn send_owed(&mut self, frame: Frame<'static>) -> Result<(), ClientError> {
        write_bounded(&mut self.ws, frame, self.write_timeout, "websocket write").await
    }

    /// Send a close frame with `code`, bounded by [`CLOSE_WRITE_TIMEOUT`]; the
    /// connection is dropped afterwards without waiting for the server's answer.
    pub async fn close(&mut self, code: u16) -> Result<(), ClientError> {
        let frame = Frame::close(code, b"");
        write_bounded(&mut self.ws, frame, CLOSE_WRITE_TIMEOUT, "websocket close").await
    }

    async fn flush_text(&mut self) -> Result<(), ClientError> {
        // The client masks in place: the buffer is rebuilt for every command anyway.
        let frame = Frame::text(Payload::BorrowedMut(&mut self.buf[..]));
        write_bounded(&mut self.ws, frame, self.write_timeout, "websocket write").await
    }
}

async fn write_bounded(
    ws: &mut WebSocketWrite<OwnedWriteHalf>,
    frame: Frame<'_>,
    after: Duration,
    what: &'static str,
) -> Result<(), ClientError> {
    tokio::time::timeout(after, ws.write_frame(frame))
        .await
        .map_err(|_| ClientError::Timeout { what, after })??;
    Ok(())
}

/// Bound on sending the close frame at the end of a run: a stuck server must not
/// hold up the end of the run by the whole write timeout.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Read frames until `cancel` fires, then close with 1000 (normal closure). Each
/// text frame goes to `on_frame`, which returns the pings it held; they are answered
/// when `pong` (the connect result asked for pongs), as are WebSocket control frames.
/// `Ok` when cancelled; `Err` when the connection ended first (a close frame from
/// the server is [`ClientError::Closed`]).
pub async fn serve(
    reader: &mut Reader,
    writer: &mut Writer,
    pong: bool,
    cancel: &CancellationToken,
    mut on_frame: impl FnMut(&[u8]) -> usize,
) -> Result<(), ClientError> {
    // Created once: a fresh `cancelled()` per frame registers and unregisters a
    // waiter under the token's lock, which every connection task contends for.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // `read` is not cancel-safe; cancelling it is fine here because the
        // connection is closed and dropped right after.
        let r = tokio::select! {
            biased;
            _ = &mut cancelled => {
                // The run is over either way; a failed close is not the server's fault.
                writer.close(1000).await.ok();
                return Ok(());
            }
            r = reader.read() => r,
        };
        match r? {
            Inbound::Text(frame) => {
                let pings = on_frame(&frame);
                if pong {
                    for _ in 0..pings {
                        writer.pong().await?;
                    }
                }
            }
            Inbound::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
        }
        if let Some(f) = reader.take_owed() {
            writer.send_owed(f).await?;
        }
    }
}

/// The messages of one text frame (joined by `\n`; a trailing `\n` is tolerated).
pub fn messages(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = frame;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (msg, tail) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        if !msg.is_empty() {
            return Some(msg);
        }
    })
}

/// Whether a message is the server's ping, `{}` (the gateway's exact encoding).
pub fn is_ping(msg: &[u8]) -> bool {
    msg == b"{}"
}

/// One server message: a reply (`id` > 0), a push, or a ping (neither). Only the
/// fields the harness reads are decoded; borrowed from the frame, no copies.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    #[serde(default)]
    pub id: u32,
    #[serde(default, borrow)]
    pub error: Option<ReplyError<'a>>,
    #[serde(default, borrow)]
    pub push: Option<Push<'a>>,
    #[serde(default)]
    pub connect: Option<ConnectResult>,
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
}

impl<'a> Reply<'a> {
    /// Decode one message.
    pub fn parse(msg: &'a [u8]) -> Result<Reply<'a>, serde_json::Error> {
        serde_json::from_slice(msg)
    }
}

#[derive(Debug, Deserialize)]
pub struct ReplyError<'a> {
    #[serde(default)]
    pub code: u32,
    #[serde(default, borrow)]
    pub message: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct Push<'a> {
    #[serde(default, borrow)]
    pub channel: Cow<'a, str>,
    #[serde(rename = "pub", default, borrow)]
    pub publication: Option<Publication<'a>>,
    #[serde(default)]
    pub unsubscribe: Option<Unsubscribed>,
}

/// A server-side unsubscribe push; from code 2500 the SDKs resubscribe.
#[derive(Debug, Deserialize)]
pub struct Unsubscribed {
    #[serde(default)]
    pub code: u32,
}

#[derive(Debug, Deserialize)]
pub struct Publication<'a> {
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// Position in the room's stream; 0 when the room keeps no history.
    #[serde(default)]
    pub offset: u64,
}

/// The parts of the connect result the harness uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectResult {
    /// Connection id given by the server.
    #[serde(default)]
    pub client: String,
    /// Whether the server expects `{}` in answer to its pings.
    #[serde(default)]
    pub pong: bool,
}

/// The parts of a subscribe result the harness uses (PROTOCOL.md section 8).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscribeResult {
    #[serde(default)]
    pub recoverable: bool,
    /// The recovery asked for succeeded: `publications` are exactly the missed ones.
    #[serde(default)]
    pub recovered: bool,
    #[serde(default)]
    pub was_recovering: bool,
    #[serde(default)]
    pub epoch: String,
    /// The room's top offset; after a successful recovery, the offset asked for.
    #[serde(default)]
    pub offset: u64,
    /// Recovered publications, in order.
    #[serde(default)]
    pub publications: Vec<RecoveredPublication>,
}

/// A publication returned in a subscribe reply.
#[derive(Debug, Clone, Deserialize)]
pub struct RecoveredPublication {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub offset: u64,
}

/// A position in a room's stream: the last offset seen, in its epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// One channel of a session and how to subscribe to it.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    pub channel: &'a str,
    /// Ask for a recoverable subscription (`recoverable:true`): the reply carries
    /// the room's position. Default false.
    pub recoverable: bool,
    /// Recover from this position (`recover:true`, `offset`, `epoch`); needs
    /// `recoverable`. Default none.
    pub recover_from: Option<Position>,
}

impl<'a> Subscription<'a> {
    /// A plain subscription to `channel`.
    pub fn to(channel: &'a str) -> Self {
        Subscription {
            channel,
            recoverable: false,
            recover_from: None,
        }
    }
}

/// Send `connect` and the `subscribe`s in one frame and wait, bounded by `timeout`,
/// for all their replies. Pushes read meanwhile are kept for the next
/// [`Reader::read`]; pings are answered once the connect result allows it.
pub async fn start_session(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    channels: &[&str],
    timeout: Duration,
) -> Result<ConnectResult, ClientError> {
    let subs: Vec<Subscription<'_>> = channels.iter().map(|&c| Subscription::to(c)).collect();
    Ok(start_session_with(reader, writer, token, &subs, timeout)
        .await?
        .0)
}

/// [`start_session`] with the subscribe options of each channel; also returns the
/// subscribe results, one per subscription.
pub async fn start_session_with(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    subs: &[Subscription<'_>],
    timeout: Duration,
) -> Result<(ConnectResult, Vec<SubscribeResult>), ClientError> {
    tokio::time::timeout(timeout, start_session_inner(reader, writer, token, subs))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "connect and subscribe replies",
            after: timeout,
        })?
}

async fn start_session_inner(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
    subs: &[Subscription<'_>],
) -> Result<(ConnectResult, Vec<SubscribeResult>), ClientError> {
    let (connect_id, sub_ids) = writer.send_subscriptions(token, subs).await?;
    let mut connected: Option<ConnectResult> = None;
    let mut subscribed = vec![SubscribeResult::default(); subs.len()];
    let mut pending = sub_ids.len();
    let mut backlog: Vec<u8> = Vec::new();
    while connected.is_none() || pending > 0 {
        let payload = match reader.read().await? {
            Inbound::Text(p) => p,
            Inbound::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
        };
        if let Some(f) = reader.take_owed() {
            writer.send_owed(f).await?;
        }
        let mut pongs = 0;
        for msg in messages(&payload) {
            if is_ping(msg) {
                pongs += 1;
                continue;
            }
            let reply = Reply::parse(msg).map_err(|e| {
                ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(msg)))
            })?;
            if reply.id == 0 {
                if reply.push.is_some() {
                    if !backlog.is_empty() {
                        backlog.push(b'\n');
                    }
                    backlog.extend_from_slice(msg);
                } else {
                    pongs += 1;
                }
                continue;
            }
            let what = if reply.id == connect_id {
                "connect".to_owned()
            } else if let Some(i) = sub_ids.iter().position(|&id| id == reply.id) {
                format!("subscribe {}", subs[i].channel)
            } else {
                return Err(ClientError::Protocol(format!(
                    "reply to unknown id {}",
                    reply.id
                )));
            };
            if let Some(e) = reply.error {
                return Err(ClientError::Refused {
                    what,
                    code: e.code,
                    message: e.message.into_owned(),
                });
            }
            if reply.id == connect_id {
                connected = Some(reply.connect.unwrap_or_default());
            } else if let Some(i) = sub_ids.iter().position(|&id| id == reply.id) {
                subscribed[i] = reply.subscribe.unwrap_or_default();
                pending -= 1;
            }
        }
        if connected.as_ref().is_some_and(|c| c.pong) {
            for _ in 0..pongs {
                writer.pong().await?;
            }
        }
    }
    if !backlog.is_empty() {
        reader.backlog = Some(backlog);
    }
    Ok((
        connected.expect("bug: loop ends only once connected"),
        subscribed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_decodes_pushes() {
        let frame = b"{\"id\":3,\"publish\":{}}\n{}\n{\"push\":{\"channel\":\"r\",\"pub\":{\"data\":{\"s\":1},\"offset\":7}}}\n";
        let msgs: Vec<&[u8]> = messages(frame).collect();
        assert_eq!(msgs.len(), 3);
        assert!(is_ping(msgs[1]));
        assert_eq!(Reply::parse(msgs[0]).unwrap().id, 3);
        let push = Reply::parse(msgs[2]).unwrap().push.unwrap();
        assert_eq!(push.channel, "r");
        let p = push.publication.unwrap();
        assert_eq!(p.offset, 7);
        assert_eq!(p.data.unwrap().get(), "{\"s\":1}");
        let err =
            Reply::parse(b"{\"id\":4,\"error\":{\"code\":111,\"message\":\"too many requests\"}}")
                .unwrap();
        assert_eq!(err.error.unwrap().code, 111);
    }

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
