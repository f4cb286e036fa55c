//! From a method and its JSON body to its JSON result: decode the request, run the
//! method's family, encode the result. `batch` and the legacy line-per-command
//! route run commands through the same path.

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::api::{ApiError, BatchRequest, Method};
use shared::codes::ERROR_METHOD_NOT_FOUND;

use super::{publish, rooms, users};
use crate::node::Node;

/// Why a call has no result.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The body is not the method's JSON (HTTP 400 on its own route).
    BadJson(serde_json::Error),
    /// The method failed with an API error (HTTP 200 with `error`).
    Api(ApiError),
}

impl From<ApiError> for CallError {
    fn from(e: ApiError) -> Self {
        CallError::Api(e)
    }
}

impl CallError {
    /// As an API error (for a command inside a batch).
    pub(crate) fn into_api(self) -> ApiError {
        match self {
            CallError::BadJson(e) => ApiError::bad_request(e.to_string()),
            CallError::Api(e) => e,
        }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
    // An empty body is an empty request (`info` is often sent without one).
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(CallError::BadJson)
}

fn encode<T: Serialize>(result: T) -> Box<RawValue> {
    serde_json::value::to_raw_value(&result).expect("bug: API results always serialize")
}

/// Run `method` on `body` and return its result as JSON.
pub(crate) async fn call(
    node: &Node,
    method: Method,
    body: &[u8],
) -> Result<Box<RawValue>, CallError> {
    Ok(match method {
        Method::Publish => encode(publish::publish(node, decode(body)?).await?),
        Method::Broadcast => encode(publish::broadcast(node, decode(body)?).await?),
        Method::Subscribe => encode(users::subscribe(node, decode(body)?).await?),
        Method::Unsubscribe => encode(users::unsubscribe(node, decode(body)?).await?),
        Method::Disconnect => encode(users::disconnect(node, decode(body)?).await?),
        Method::Refresh => encode(users::refresh(node, decode(body)?).await?),
        Method::Presence => encode(rooms::presence(node, decode(body)?).await?),
        Method::PresenceStats => encode(rooms::presence_stats(node, decode(body)?).await?),
        Method::History => encode(rooms::history(node, decode(body)?).await?),
        Method::HistoryRemove => encode(rooms::history_remove(node, decode(body)?).await?),
        Method::Channels => encode(rooms::channels(node, decode(body)?).await?),
        Method::Info => {
            let _: serde::de::IgnoredAny = decode(body)?;
            encode(rooms::info(node))
        }
        Method::Batch => encode(batch(node, decode(body)?).await),
    })
}

/// One reply of a batch: `{"<method>":{…}}` or `{"error":{…}}`.
type BatchReply = std::collections::BTreeMap<&'static str, Box<RawValue>>;

#[derive(Serialize)]
pub(crate) struct BatchResult {
    replies: Vec<BatchReply>,
}

fn error_reply(e: ApiError) -> BatchReply {
    BatchReply::from([("error", encode(e))])
}

/// Run a batch's commands in order, or (with `parallel`) `api.parallelism` at a
/// time; replies keep the commands' order and each command fails alone.
async fn batch(node: &Node, req: BatchRequest) -> BatchResult {
    let one = |cmd: std::collections::HashMap<String, Box<RawValue>>| async move {
        let mut entries = cmd.into_iter();
        let (name, params) = match (entries.next(), entries.next()) {
            (Some(e), None) => e,
            _ => {
                return error_reply(ApiError::bad_request(
                    "a batch command has exactly one method",
                ))
            }
        };
        let method = match Method::from_name(&name) {
            Some(Method::Batch) => return error_reply(ApiError::bad_request("batch inside batch")),
            Some(m) => m,
            None => return error_reply(ERROR_METHOD_NOT_FOUND.into()),
        };
        // Boxed: `call` runs batches, so its future cannot hold itself inline.
        match Box::pin(call(node, method, params.get().as_bytes())).await {
            Ok(result) => BatchReply::from([(method.name(), result)]),
            Err(e) => error_reply(e.into_api()),
        }
    };
    let width = if req.parallel {
        node.config.api.parallelism
    } else {
        1
    };
    let replies = futures_util::stream::iter(req.commands)
        .map(one)
        .buffered(width)
        .collect()
        .await;
    BatchResult { replies }
}

/// One command of the legacy route (`POST /api`, a command per line).
#[derive(Deserialize)]
struct LegacyCommand {
    #[serde(default)]
    id: Option<serde_json::Value>,
    method: serde_json::Value,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct LegacyReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
}

/// The legacy route: newline-separated `{"id","method","params"}` commands, run in
/// order, answered by newline-separated `{"id","result"|"error"}` replies. A line
/// that is not a command makes the whole request a 400.
pub(crate) async fn legacy(node: &Node, body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut commands = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        commands.push(serde_json::from_slice::<LegacyCommand>(line)?);
    }
    let mut out = Vec::new();
    for cmd in commands {
        let method = match &cmd.method {
            serde_json::Value::String(name) => Method::from_name(name),
            _ => None,
        };
        let params = cmd.params.as_ref().map_or("{}", |p| p.get());
        let reply = match method {
            None => LegacyReply {
                id: cmd.id,
                error: Some(ERROR_METHOD_NOT_FOUND.into()),
                result: None,
            },
            Some(m) => match call(node, m, params.as_bytes()).await {
                Ok(result) => LegacyReply {
                    id: cmd.id,
                    error: None,
                    result: Some(result),
                },
                Err(e) => LegacyReply {
                    id: cmd.id,
                    error: Some(e.into_api()),
                    result: None,
                },
            },
        };
        if !out.is_empty() {
            out.push(b'\n');
        }
        serde_json::to_writer(&mut out, &reply).expect("bug: API replies always serialize");
    }
    Ok(out)
}
