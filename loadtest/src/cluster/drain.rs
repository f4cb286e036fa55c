//! Draining one node during the run (`--drain-node`, `--drain-at`): SIGTERM at a
//! set time after the scenario started, then a bounded wait for its exit. The
//! nodes' `[shutdown]` settings (`--readiness-delay`, `--drain-window`) decide how
//! it lets its clients go.

use std::time::Duration;

use tokio::time::Instant;

use super::process::{say, ChildGuard, POLL};

/// What became of the drained node.
#[derive(Debug, Clone)]
pub struct Drained {
    pub node: String,
    /// From the start of the scenario to the SIGTERM.
    pub signalled_after: Duration,
    /// From the SIGTERM to the exit; `None` when it was still running at the bound
    /// (it is then killed with the cluster).
    pub exited_after: Option<Duration>,
    pub status: String,
}

/// Wait until `at` after `start`, SIGTERM `node`, and wait up to `bound` for it to
/// exit.
pub(super) async fn drain(
    node: &mut ChildGuard,
    start: Instant,
    at: Duration,
    bound: Duration,
) -> Drained {
    tokio::time::sleep_until(start + at).await;
    let signalled = Instant::now();
    node.terminate();
    say(format_args!(
        "SIGTERM to {} at +{:.1}s (draining)",
        node.name,
        signalled.duration_since(start).as_secs_f64()
    ));
    let deadline = signalled + bound;
    let (exited_after, status) = loop {
        if let Some(status) = node.exited() {
            break (Some(signalled.elapsed()), status.to_string());
        }
        if Instant::now() >= deadline {
            break (None, "still running".to_owned());
        }
        tokio::time::sleep(POLL).await;
    };
    let d = Drained {
        node: node.name.clone(),
        signalled_after: signalled.duration_since(start),
        exited_after,
        status,
    };
    match d.exited_after {
        Some(t) => say(format_args!(
            "{} exited ({}) {:.1}s after SIGTERM",
            d.node,
            d.status,
            t.as_secs_f64()
        )),
        None => say(format_args!(
            "{} still running {bound:?} after SIGTERM",
            d.node
        )),
    }
    d
}
