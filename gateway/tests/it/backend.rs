//! A small application backend for the proxy tests: a real HTTP server on a free
//! loopback port answering the gateway's proxy calls the way a chat app would, and
//! recording every call. It can be made slow or failing to test timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// How the backend behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answer HTTP 503.
    Failing,
    /// Answer after this long.
    Slow(Duration),
}

/// One proxy call as the backend saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    mode: Mutex<Option<Mode>>,
    calls: Mutex<Vec<Call>>,
    /// What the refresh and sub_refresh endpoints answer (a `result` object).
    refresh_result: Mutex<Option<Value>>,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock() = Some(mode);
    }

    /// What refresh and sub_refresh answer from now on (their `result`).
    pub fn set_refresh_result(&self, result: Value) {
        *self.state.refresh_result.lock() = Some(result);
    }

    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let cookie = req
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes());
    let body: Value = bytes
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    state.calls.lock().push(Call {
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    let mode = state.mode.lock().unwrap_or(Mode::Normal);
    match mode {
        Mode::Normal => {}
        Mode::Failing => return reply(503, json!({})),
        Mode::Slow(d) => tokio::time::sleep(d).await,
    }
    match path.as_str() {
        "connect" => match cookie.strip_prefix("session=") {
            Some(user) if !user.is_empty() => {
                let mut result = json!({
                    "user": user,
                    "info": {"name": user.to_uppercase()},
                    "data": {"welcome": user},
                });
                if user == "staff" {
                    result["channels"] = json!(["#staff"]);
                }
                if let Some(exp) = body["data"]["expire_in"].as_i64() {
                    result["expire_at"] = json!(unix_now() + exp);
                }
                reply(200, json!({ "result": result }))
            }
            _ => reply(
                200,
                json!({"disconnect": {"code": 4401, "reason": "no session"}}),
            ),
        },
        "subscribe" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            if channel.starts_with("vip:") {
                reply(
                    200,
                    json!({"error": {"code": 4403, "message": "members only"}}),
                )
            } else {
                let mut result = json!({
                    "info": {"seat": channel.len()},
                    "data": {"topic": format!("welcome to {channel}")},
                });
                if let Some(exp) = body["data"]["expire_in"].as_i64() {
                    result["expire_at"] = json!(unix_now() + exp);
                }
                reply(200, json!({ "result": result }))
            }
        }
        "publish" => {
            let text = body["data"]["text"].as_str().unwrap_or_default();
            if text.contains("spam") {
                reply(200, json!({"error": {"code": 4000, "message": "no spam"}}))
            } else {
                reply(
                    200,
                    json!({"result": {"data": {"text": text.to_uppercase(), "by": body["user"]}}}),
                )
            }
        }
        "rpc" => reply(
            200,
            json!({"result": {"data": {"method": body["method"], "echo": body["data"]}}}),
        ),
        "refresh" | "sub_refresh" => {
            let result = state
                .refresh_result
                .lock()
                .clone()
                .unwrap_or_else(|| json!({"expire_at": unix_now() + 3600}));
            reply(200, json!({ "result": result }))
        }
        _ => reply(404, json!({})),
    }
}

pub fn unix_now() -> i64 {
    shared::auth::unix_now() as i64
}
