//! The options of the `soak` scenario (its subcommand's flags).

use std::time::Duration;

/// Options of the `soak` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// Rooms. Default 50.
    #[arg(long, hide_default_value = true, default_value_t = 50)]
    pub rooms: u32,
    /// Members per room; each is one connection that subscribes (recoverable),
    /// publishes in its room and reconnects. Default 20.
    #[arg(long, hide_default_value = true, default_value_t = 20)]
    pub members: u32,
    /// Publications per second of each member. Default 0.5.
    #[arg(long, hide_default_value = true, default_value_t = 0.5)]
    pub rate: f64,
    /// Each member disconnects once in every such interval, at a random moment
    /// within it, stays away up to 500 ms, and reconnects to the next URL with
    /// recovery (humantime: 20s, 1m). Default 20s.
    #[arg(long, hide_default_value = true, default_value = "20s", value_parser = humantime::parse_duration)]
    pub reconnect_every: Duration,
    /// Bytes of each publication's data (as for fanout). Default 64.
    #[arg(long, hide_default_value = true, default_value_t = 64)]
    pub payload: usize,
    /// Room names are `<prefix>-<run id>-<n>`; the rooms need history (the
    /// gateway's default for top-level channels). Default `soak`.
    #[arg(long, hide_default_value = true, default_value = "soak")]
    pub room_prefix: String,
    /// Also fail on recovery failures (`recovered:false`), unplanned disconnects,
    /// failed reconnects and unanswered publications; without it they are only
    /// reported.
    #[arg(long)]
    pub strict: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            rooms: 50,
            members: 20,
            rate: 0.5,
            reconnect_every: Duration::from_secs(20),
            payload: 64,
            room_prefix: "soak".into(),
            strict: false,
        }
    }
}
