//! What the cluster knows of rooms and nodes: `presence`, `presence_stats`,
//! `history`, `history_remove`, `channels` and `info`.

use shared::api::{
    ApiError, ApiResult, ChannelInfo, ChannelRequest, ChannelsRequest, ChannelsResult, EmptyResult,
    HistoryRequest, HistoryResult, InfoResult, NodeResult, PresenceResult, PresenceStatsResult,
};
use shared::codes::{ERROR_NOT_AVAILABLE, ERROR_UNRECOVERABLE_POSITION};

use super::channel::{internal, resolve};
use crate::node::{HistoryError, Node};

pub(crate) async fn presence(node: &Node, req: ChannelRequest) -> ApiResult<PresenceResult> {
    if !resolve(node, &req.channel)?.presence {
        return Err(ERROR_NOT_AVAILABLE.into());
    }
    let presence = node.broker.presence(&req.channel).await.map_err(internal)?;
    Ok(PresenceResult { presence })
}

pub(crate) async fn presence_stats(
    node: &Node,
    req: ChannelRequest,
) -> ApiResult<PresenceStatsResult> {
    if !resolve(node, &req.channel)?.presence {
        return Err(ERROR_NOT_AVAILABLE.into());
    }
    let s = node
        .broker
        .presence_stats(&req.channel)
        .await
        .map_err(internal)?;
    Ok(PresenceStatsResult {
        num_clients: s.num_clients,
        num_users: s.num_users,
    })
}

/// `limit` 0 returns only the stream position; a negative one, or one above
/// `client.history_max_publication_limit`, is capped there.
pub(crate) async fn history(node: &Node, req: HistoryRequest) -> ApiResult<HistoryResult> {
    let opts = resolve(node, &req.channel)?;
    if opts.history().is_none() {
        return Err(ERROR_NOT_AVAILABLE.into());
    }
    let page = node
        .read_history(&req.channel, opts, req.since, req.limit, req.reverse)
        .await
        .map_err(|e| match e {
            HistoryError::ReverseFromZero => ApiError::bad_request("reverse with since.offset 0"),
            HistoryError::EpochChanged => ERROR_UNRECOVERABLE_POSITION.into(),
            HistoryError::Broker(e) => internal(e),
        })?;
    Ok(HistoryResult {
        publications: page.publications,
        epoch: page.position.epoch,
        offset: page.position.offset,
    })
}

pub(crate) async fn history_remove(node: &Node, req: ChannelRequest) -> ApiResult<EmptyResult> {
    resolve(node, &req.channel)?;
    node.broker
        .remove_history(&req.channel)
        .await
        .map_err(internal)?;
    Ok(EmptyResult {})
}

pub(crate) async fn channels(node: &Node, req: ChannelsRequest) -> ApiResult<ChannelsResult> {
    let rooms = node.channels(&req.pattern).await.map_err(internal)?;
    Ok(ChannelsResult {
        channels: rooms
            .into_iter()
            .map(|(room, num_clients)| (room, ChannelInfo { num_clients }))
            .collect(),
    })
}

pub(crate) fn info(node: &Node) -> InfoResult {
    InfoResult {
        nodes: node
            .broker
            .nodes()
            .into_iter()
            .map(|n| NodeResult {
                uid: n.id,
                name: n.name,
                version: n.version,
                num_clients: n.num_clients,
                num_users: n.num_users,
                num_channels: n.num_rooms,
                num_subs: n.num_subs,
                uptime: n.uptime_secs,
            })
            .collect(),
    }
}
