//! Test harness: gateways on 127.0.0.1:0 and a small WebSocket client that speaks the
//! JSON protocol frame by frame. Every wait is bounded.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use gateway::{Config, Node};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use shared::auth::{mint_hs256, unix_now, MintClaims};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository's root (the parent of `gateway/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

pub const SECRET: &str = "test-secret";
/// Upper bound for any single network wait in tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A test configuration: quiet pings, the test secret, otherwise defaults.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    c.token.hmac_secret = Some(SECRET.into());
    c.client.ping_interval = Duration::from_secs(60);
    c.client.pong_timeout = Duration::from_secs(10);
    // Shut down at once; the drain's own tests set these.
    c.shutdown.readiness_delay = Duration::ZERO;
    c.shutdown.drain_window = Duration::ZERO;
    c
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> Self {
        let mut c = test_config();
        f(&mut c);
        Self::with_config(c).await
    }

    pub async fn with_config(config: Config) -> Self {
        Self::with_broker(config, fanout::MemoryBroker::new()).await
    }

    /// A node on the Redis at `url` (quick probes, so fault tests run fast).
    pub async fn on_redis(url: &str, f: impl FnOnce(&mut Config)) -> Self {
        Self::on_redis_with_admin(url, None, f).await
    }

    /// As [`TestGateway::on_redis`], with the admin listener (metrics) on `admin`.
    pub async fn on_redis_with_admin(
        url: &str,
        admin: Option<tokio::net::TcpListener>,
        f: impl FnOnce(&mut Config),
    ) -> Self {
        let mut c = test_config();
        c.redis_url = Some(url.to_owned());
        c.redis.probe_interval = Duration::from_millis(300);
        c.redis.command_timeout = Duration::from_secs(1);
        f(&mut c);
        let broker = fanout::RedisBroker::connect(c.redis_config().expect("redis url set"))
            .await
            .expect("redis reachable");
        Self::serve(c, broker, None, admin).await
    }

    pub async fn with_broker(config: Config, broker: Arc<dyn fanout::Broker>) -> Self {
        Self::serve(config, broker, None, None).await
    }

    /// A node (in-memory broker) with the server API on `api`, not the client port.
    pub async fn with_api_listener(
        api: tokio::net::TcpListener,
        f: impl FnOnce(&mut Config),
    ) -> Self {
        let mut c = test_config();
        f(&mut c);
        Self::serve(c, fanout::MemoryBroker::new(), Some(api), None).await
    }

    /// A node (in-memory broker) with its admin listener (metrics) on `admin`.
    pub async fn with_admin_listener(
        admin: tokio::net::TcpListener,
        f: impl FnOnce(&mut Config),
    ) -> Self {
        let mut c = test_config();
        f(&mut c);
        Self::serve(c, fanout::MemoryBroker::new(), None, Some(admin)).await
    }

    async fn serve(
        config: Config,
        broker: Arc<dyn fanout::Broker>,
        api: Option<tokio::net::TcpListener>,
        admin: Option<tokio::net::TcpListener>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Node::new(config, broker).expect("node starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = gateway::Listeners {
            clients: listener,
            api,
            admin,
        };
        let task = tokio::spawn(gateway::run_listeners(
            listeners,
            node.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        TestGateway {
            addr,
            node,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Trigger shutdown without waiting for it (as SIGTERM does).
    pub fn signal_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Trigger shutdown and wait for `run` to return.
    pub async fn shutdown(&mut self) {
        self.signal_shutdown();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT * 3, t)
                .await
                .expect("gateway stops in time")
                .unwrap();
        }
    }

    /// A connected client for `user` (connect reply consumed).
    pub async fn client(&self, user: &str) -> Client {
        let mut c = Client::open(self.addr).await;
        let r = c.connect(&token(user)).await;
        assert!(r.get("connect").is_some(), "connect failed: {r}");
        c
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A connection token for `user`, valid for an hour.
/// Send SIGTERM to the process `pid`.
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

pub fn token(user: &str) -> String {
    mint(MintClaims {
        sub: user.into(),
        exp: Some(unix_now() + 3600),
        ..Default::default()
    })
}

pub fn mint(claims: MintClaims) -> String {
    mint_hs256(SECRET, &claims)
}

#[derive(Clone)]
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// What the server sent: one JSON message, or the close frame.
#[derive(Debug, Clone)]
pub enum Msg {
    Json(Value),
    Close(u16, String),
}

pub struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u32,
    /// Messages read but not yet asked for.
    inbox: VecDeque<Msg>,
    /// Raw text frames as received, for framing assertions.
    pub frames: usize,
}

pub async fn ws_connect(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<FragmentCollector<TokioIo<Upgraded>>, String> {
    ws_connect_with_response(addr, headers)
        .await
        .map(|(ws, _)| ws)
}

/// Like [`ws_connect`], and also returns the headers of the 101 response.
pub async fn ws_connect_with_response(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<(FragmentCollector<TokioIo<Upgraded>>, hyper::HeaderMap), String> {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| "tcp connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    handshake(addr, stream, headers).await
}

/// The WebSocket handshake over an already connected stream.
pub async fn ws_handshake(
    addr: SocketAddr,
    stream: TcpStream,
    headers: &[(&str, &str)],
) -> Result<FragmentCollector<TokioIo<Upgraded>>, String> {
    handshake(addr, stream, headers).await.map(|(ws, _)| ws)
}

async fn handshake(
    addr: SocketAddr,
    stream: TcpStream,
    headers: &[(&str, &str)],
) -> Result<(FragmentCollector<TokioIo<Upgraded>>, hyper::HeaderMap), String> {
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}/connection/websocket"))
        .header("Host", addr.to_string())
        .header("Upgrade", "websocket")
        .header("Connection", "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let (ws, resp) = tokio::time::timeout(
        WAIT,
        fastwebsockets::handshake::client(&SpawnExecutor, req, stream),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok((FragmentCollector::new(ws), resp.headers().clone()))
}

impl Client {
    pub async fn open(addr: SocketAddr) -> Client {
        Client::from_ws(ws_connect(addr, &[]).await.expect("websocket upgrade"))
    }

    pub fn from_ws(ws: FragmentCollector<TokioIo<Upgraded>>) -> Client {
        Client {
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            frames: 0,
        }
    }

    /// Send raw text as one frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await
            .expect("send");
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("send frame");
    }

    /// Send `{"<method>": body, "id": N}` and return N.
    pub async fn send(&mut self, method: &str, body: Value) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let mut cmd = serde_json::Map::new();
        cmd.insert(method.into(), body);
        cmd.insert("id".into(), json!(id));
        self.send_text(&Value::Object(cmd).to_string()).await;
        id
    }

    /// Send a command and wait for its reply.
    pub async fn call(&mut self, method: &str, body: Value) -> Value {
        let id = self.send(method, body).await;
        self.reply(id).await
    }

    pub async fn connect(&mut self, token: &str) -> Value {
        self.call("connect", json!({"token": token, "name": "test"}))
            .await
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self.call("subscribe", json!({"channel": channel})).await;
        assert!(
            r.get("subscribe").is_some(),
            "subscribe {channel} failed: {r}"
        );
        r["subscribe"].clone()
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.call("publish", json!({"channel": channel, "data": data}))
            .await
    }

    async fn read_more(&mut self) -> Result<(), String> {
        let frame = tokio::time::timeout(WAIT, self.ws.read_frame())
            .await
            .map_err(|_| "timed out waiting for the server".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        match frame.opcode {
            OpCode::Text => {
                self.frames += 1;
                let text = std::str::from_utf8(&frame.payload)
                    .expect("utf-8")
                    .to_owned();
                for line in text.split('\n') {
                    let v: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
                    self.inbox.push_back(Msg::Json(v));
                }
            }
            OpCode::Close => {
                let p = &frame.payload;
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                self.inbox.push_back(Msg::Close(code, reason));
            }
            other => return Err(format!("unexpected frame {other:?}")),
        }
        Ok(())
    }

    /// The next message, whatever it is.
    pub async fn next(&mut self) -> Msg {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return m;
            }
            if let Err(e) = self.read_more().await {
                panic!("{e}");
            }
        }
    }

    /// The first message matching `pred`; others read on the way are kept.
    pub async fn find(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.inbox.iter().skip(scanned).position(&pred) {
                return self.inbox.remove(scanned + i).expect("bug: index");
            }
            scanned = self.inbox.len();
            if let Err(e) = self.read_more().await {
                panic!("waiting for {what}: {e}; inbox: {:?}", self.inbox);
            }
        }
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        match self
            .find(
                &format!("reply {id}"),
                |m| matches!(m, Msg::Json(v) if v["id"] == json!(id)),
            )
            .await
        {
            Msg::Json(v) => v,
            Msg::Close(..) => unreachable!(),
        }
    }

    /// The next push (`{"push":…}`) for `channel` ("" for any).
    pub async fn push(&mut self, channel: &str) -> Value {
        let ch = channel.to_owned();
        match self
            .find(&format!("push on {channel:?}"), move |m| {
                matches!(m, Msg::Json(v) if v.get("push").is_some() && (ch.is_empty() || v["push"]["channel"] == json!(ch)))
            })
            .await
        {
            Msg::Json(v) => v["push"].clone(),
            Msg::Close(..) => unreachable!(),
        }
    }

    /// A push already read (without waiting), if any.
    pub fn try_push(&mut self) -> Option<Value> {
        let i = self
            .inbox
            .iter()
            .position(|m| matches!(m, Msg::Json(v) if v.get("push").is_some()))?;
        match self.inbox.remove(i) {
            Some(Msg::Json(v)) => Some(v["push"].clone()),
            _ => None,
        }
    }

    /// Wait for the close frame; returns (code, reason).
    pub async fn closed(&mut self) -> (u16, String) {
        match self
            .find("close frame", |m| matches!(m, Msg::Close(..)))
            .await
        {
            Msg::Close(c, r) => (c, r),
            Msg::Json(_) => unreachable!(),
        }
    }

    /// Assert that nothing arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) {
        if let Some(m) = self.inbox.front() {
            panic!("expected silence, have {m:?}");
        }
        if let Ok(r) = tokio::time::timeout(d, self.ws.read_frame()).await {
            panic!(
                "expected silence, got {:?}",
                r.map(|f| String::from_utf8_lossy(&f.payload).into_owned())
            );
        }
    }
}

/// Poll `cond` until true or panic after WAIT.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// Added for the protocol, auth and limits modules.
// ---------------------------------------------------------------------------------

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("tcp connect in time")
        .expect("tcp connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

impl Client {
    /// Open a socket and connect with `token`; returns the client and its connect
    /// result (`connect` must succeed).
    pub async fn connected(addr: SocketAddr, token: &str) -> (Client, Value) {
        let mut c = Client::open(addr).await;
        let r = c.connect(token).await;
        assert!(r.get("connect").is_some(), "connect failed: {r}");
        (c, r["connect"].clone())
    }

    /// Send a command that must fail with an error reply; returns the `error` object.
    pub async fn call_err(&mut self, method: &str, body: Value) -> Value {
        let r = self.call(method, body).await;
        assert!(r.get("error").is_some(), "{method} should fail: {r}");
        r["error"].clone()
    }

    /// Send a command (with an id) and wait for the close frame it causes.
    pub async fn send_and_close(&mut self, method: &str, body: Value) -> (u16, String) {
        self.send(method, body).await;
        self.closed().await
    }
}

/// The client id in a connect result.
pub fn client_id(connect_result: &Value) -> String {
    connect_result["client"]
        .as_str()
        .expect("connect result has a client id")
        .to_owned()
}

/// An embedded JSON value for token claims (`info`, `data`).
pub fn raw(json: &str) -> shared::protocol::Raw {
    shared::protocol::raw_from_slice(json.as_bytes()).expect("valid JSON")
}

// ---------------------------------------------------------------------------------
// Added for the server API and proxy modules.
// ---------------------------------------------------------------------------------

/// A plain HTTP/1.1 POST with `headers`; returns the status code, the response
/// headers (lower-case names) and the body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    http_request(addr, "POST", path, headers, body).await
}

/// A plain HTTP/1.1 request; returns the status code, the response headers
/// (lower-case names) and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("tcp connect in time")
        .expect("tcp connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer (413) before reading a large body, and close.
    let _ = stream.write_all(&bytes).await;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .ok();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Run an interoperability script (`command` is ready to spawn) for at most
/// `timeout`; assert that it exits 0 and that its last line is `{"ok":true,...}`.
/// Shows its output with `--nocapture`, and all of it on failure. Returns that
/// last line.
pub async fn run_checked_script(
    mut command: tokio::process::Command,
    script: &str,
    timeout: Duration,
) -> Value {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("wait for {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "exit status: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        )
    };
    assert!(out.status.success(), "{script} failed\n{}", report());
    let last: Value = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{script} printed no final JSON line\n{}", report()));
    assert_eq!(
        last["ok"],
        Value::Bool(true),
        "{script} did not report ok\n{}",
        report()
    );
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        eprintln!("{stderr}");
    }
    last
}
