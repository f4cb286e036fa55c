//! `subscribe`, `unsubscribe`, `disconnect` and `refresh`: commands for a user's
//! connections wherever they are. Each is one control message that every node
//! (this one included) applies to its own connections of that user.

use shared::api::{
    payload, ApiError, ApiResult, DisconnectRequest, EmptyResult, RefreshRequest, SubscribeRequest,
    UnsubscribeRequest,
};
use shared::codes::DISCONNECT_FORCE;
use shared::envelope::{raw_to_bytes, Control, RefreshCommand, SubscribeCommand};

use super::channel::{internal, require_user, resolve};
use crate::node::Node;

/// Close codes the API may ask for: the application range and Centrifugo's
/// disconnect codes (3000-4999).
const CLOSE_CODES: std::ops::RangeInclusive<u32> = 3000..=4999;

/// Longest close reason (a close frame holds 123 bytes of it).
const MAX_REASON_BYTES: usize = 123;

async fn send(node: &Node, control: Control) -> ApiResult<EmptyResult> {
    node.broker
        .publish_control(&control)
        .await
        .map_err(internal)?;
    Ok(EmptyResult {})
}

pub(crate) async fn subscribe(node: &Node, req: SubscribeRequest) -> ApiResult<EmptyResult> {
    require_user(&req.user)?;
    resolve(node, &req.channel)?;
    let info = payload("info", &req.info, &req.b64info)?;
    let data = payload("data", &req.data, &req.b64data)?;
    let o = req.override_.unwrap_or_default();
    let cmd = SubscribeCommand {
        user: req.user,
        client: req.client,
        channel: req.channel,
        expire_at: u64::try_from(req.expire_at).unwrap_or(0),
        info: raw_to_bytes(&info),
        data: raw_to_bytes(&data),
        recover_since: req.recover_since,
        presence: o.presence.map(|v| v.value),
        join_leave: o.join_leave.map(|v| v.value),
        force_recovery: o.force_recovery.map(|v| v.value),
        force_positioning: o.force_positioning.map(|v| v.value),
    };
    send(node, Control::Subscribe(Box::new(cmd))).await
}

pub(crate) async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> ApiResult<EmptyResult> {
    require_user(&req.user)?;
    resolve(node, &req.channel)?;
    let control = Control::Unsubscribe {
        user: req.user,
        channel: req.channel,
        client: req.client,
    };
    send(node, control).await
}

pub(crate) async fn disconnect(node: &Node, req: DisconnectRequest) -> ApiResult<EmptyResult> {
    require_user(&req.user)?;
    let (code, reason) = match req.disconnect {
        None => (DISCONNECT_FORCE.code, DISCONNECT_FORCE.reason.to_owned()),
        Some(d) => {
            if !CLOSE_CODES.contains(&d.code) {
                return Err(ApiError::bad_request("disconnect.code must be 3000-4999"));
            }
            if d.reason.len() > MAX_REASON_BYTES {
                return Err(ApiError::bad_request(format!(
                    "disconnect.reason longer than {MAX_REASON_BYTES} bytes"
                )));
            }
            (d.code as u16, d.reason)
        }
    };
    let control = Control::Disconnect {
        user: req.user,
        code,
        reason,
        client: req.client,
        whitelist: req.whitelist,
    };
    send(node, control).await
}

pub(crate) async fn refresh(node: &Node, req: RefreshRequest) -> ApiResult<EmptyResult> {
    require_user(&req.user)?;
    let info = payload("info", &req.info, &req.b64info)?;
    let cmd = RefreshCommand {
        user: req.user,
        client: req.client,
        expired: req.expired,
        expire_at: u64::try_from(req.expire_at).unwrap_or(0),
        info: raw_to_bytes(&info),
    };
    send(node, Control::Refresh(cmd)).await
}
