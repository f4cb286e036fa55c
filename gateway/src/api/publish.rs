//! `publish` and `broadcast`: publications from the application backend, through
//! the broker like a client's (history, offsets, order), without publisher info.

use futures_util::StreamExt;
use shared::api::{
    payload, ApiError, ApiResult, BroadcastRequest, BroadcastResult, PublishRequest, PublishResult,
};
use shared::protocol::{Publication, Raw, Tags};

use super::channel::{internal, resolve};
use crate::metrics::Source;
use crate::node::Node;

pub(crate) async fn publish(node: &Node, req: PublishRequest) -> ApiResult<PublishResult> {
    let data = payload("data", &req.data, &req.b64data)?
        .ok_or_else(|| ApiError::bad_request("data is required"))?;
    publish_one(node, &req.channel, data, req.tags, req.skip_history).await
}

async fn publish_one(
    node: &Node,
    channel: &str,
    data: Raw,
    tags: Tags,
    skip_history: bool,
) -> ApiResult<PublishResult> {
    let opts = resolve(node, channel)?;
    if data.get().len() > opts.max_publication_bytes {
        return Err(ApiError::bad_request(format!(
            "data over max_publication_bytes ({})",
            opts.max_publication_bytes
        )));
    }
    let history = opts.history().filter(|_| !skip_history);
    let publication = Publication {
        data,
        info: None,
        offset: 0,
        tags,
    };
    let position = node
        .publish(channel, publication, history, Source::Api)
        .await
        .map_err(internal)?;
    Ok(PublishResult {
        offset: position.offset,
        epoch: position.epoch,
    })
}

/// The same publication to many channels, `api.parallelism` at a time; each
/// channel succeeds or fails alone, and the responses keep the request's order.
pub(crate) async fn broadcast(node: &Node, req: BroadcastRequest) -> ApiResult<BroadcastResult> {
    if req.channels.is_empty() {
        return Err(ApiError::bad_request("channels is required"));
    }
    let data = payload("data", &req.data, &req.b64data)?
        .ok_or_else(|| ApiError::bad_request("data is required"))?;
    let skip_history = req.skip_history;
    let responses = futures_util::stream::iter(req.channels)
        .map(|channel| {
            let (data, tags) = (data.clone(), req.tags.clone());
            async move { publish_one(node, &channel, data, tags, skip_history).await }
        })
        .buffered(node.config.api.parallelism)
        .map(Into::into)
        .collect()
        .await;
    Ok(BroadcastResult { responses })
}
