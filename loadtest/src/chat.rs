//! The `chat` scenario: rooms whose every member publishes at a per-member rate and
//! receives the room. It is the fanout scenario with no pure subscribers and one
//! publisher per member (fanout publishers receive and check their rooms too), so
//! its checks and report are fanout's, named `chat`.

use anyhow::{anyhow, bail};

use crate::fanout::{self, FanoutOptions, FanoutReport, PublishOptions};
use crate::options::CommonOptions;
use crate::progress::ProgressFn;

/// Options of the `chat` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatOptions {
    /// Rooms. Default 100.
    #[arg(long, hide_default_value = true, default_value_t = 100)]
    pub rooms: u32,
    /// Members per room; each is one connection that publishes in its room and
    /// receives it. Default 10.
    #[arg(long, hide_default_value = true, default_value_t = 10)]
    pub members: u32,
    /// Publications per second of each member. Default 1.
    #[arg(long, hide_default_value = true, default_value_t = 1.0)]
    pub rate: f64,
    /// Bytes of each publication's data (as for fanout). Default 64.
    #[arg(long, hide_default_value = true, default_value_t = 64)]
    pub payload: usize,
    /// Room names are `<prefix>-<run id>-<n>`. Default `loadtest`.
    #[arg(long, hide_default_value = true, default_value = "loadtest")]
    pub room_prefix: String,
    /// How members publish (as for fanout; --publish-via api opens --api-in-flight
    /// HTTP connections per member).
    #[command(flatten)]
    pub publish: PublishOptions,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            rooms: 100,
            members: 10,
            rate: 1.0,
            payload: 64,
            room_prefix: "loadtest".into(),
            publish: PublishOptions::default(),
        }
    }
}

/// Run the scenario against the gateways in `common.url`; see [`fanout::run`].
pub async fn run(
    common: &CommonOptions,
    opts: &ChatOptions,
    progress: Option<ProgressFn<'_>>,
) -> anyhow::Result<FanoutReport> {
    if opts.rooms == 0 || opts.members == 0 {
        bail!("--rooms and --members must be at least 1");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of publications per second per member");
    }
    let members = opts
        .rooms
        .checked_mul(opts.members)
        .ok_or_else(|| anyhow!("--rooms x --members is too large"))?;
    // Publisher p publishes in room p % rooms: `members` publishers a room.
    let plan = FanoutOptions {
        rooms: opts.rooms,
        subscribers: 0,
        publishers: members,
        rate: opts.rate * f64::from(members),
        payload: opts.payload,
        room_prefix: opts.room_prefix.clone(),
        publish: opts.publish.clone(),
    };
    let mut report = fanout::run(common, &plan, progress).await?;
    report.scenario = "chat".into();
    report.parameters.members_per_room = Some(opts.members);
    Ok(report)
}
