//! Checking the channel an API request names: the same rules as for clients,
//! answered with the API's codes.

use shared::api::{ApiError, ApiResult};
use shared::codes::ERROR_UNKNOWN_CHANNEL;

use crate::config::{ChannelError, ChannelOptions};
use crate::node::Node;

/// The options of `channel`, or 107 (empty, too long) or 102 (unknown namespace).
pub(crate) fn resolve<'a>(node: &'a Node, channel: &str) -> ApiResult<&'a ChannelOptions> {
    match node.config.resolve_channel(channel) {
        Ok((_, opts)) => Ok(opts),
        Err(ChannelError::Empty) => Err(ApiError::bad_request("channel is required")),
        Err(ChannelError::TooLong) => Err(ApiError::bad_request(format!(
            "channel longer than {} bytes",
            node.config.client.max_channel_length
        ))),
        Err(ChannelError::UnknownNamespace) => Err(ERROR_UNKNOWN_CHANNEL.into()),
        Err(ChannelError::BadCharacter) => Err(ApiError::bad_request(
            "channel holds a control character, { or }",
        )),
    }
}

/// A required user id.
pub(crate) fn require_user(user: &str) -> ApiResult<()> {
    if user.is_empty() {
        return Err(ApiError::bad_request("user is required"));
    }
    Ok(())
}

/// A broker failure: 100, which clients of the API may retry.
pub(crate) fn internal(e: fanout::BrokerError) -> ApiError {
    tracing::warn!(error = %e, "broker call for the server API failed");
    shared::codes::ERROR_INTERNAL.into()
}
