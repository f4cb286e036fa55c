//! Breaking Redis during the run (`--redis-fault-every`, `--redis-down`): SIGKILL
//! redis-server at each interval after the scenario starts, keep it down, and start
//! it again on the same port and directory: empty, or with its data when it runs
//! with append-only persistence (`--redis-aof`).

use std::time::Duration;

use tokio::time::Instant;

use super::process::{say, ChildGuard};
use super::start::{start_redis, RedisSpec};

/// Break Redis every `every` after `start`, down for `down` each time, `limit`
/// times or until the future is dropped (with the scenario's end). Stops breaking it if a restart
/// fails (the scenario then sees Redis gone for good, and says so).
pub(super) async fn break_redis(
    redis: &mut ChildGuard,
    spec: &RedisSpec,
    start: Instant,
    every: Duration,
    down: Duration,
    limit: u32,
) {
    let at = |t: Instant| t.duration_since(start).as_secs_f64();
    for n in 1..=limit {
        tokio::time::sleep_until(start + every * n).await;
        redis.kill_now();
        say(format_args!(
            "redis-server killed (SIGKILL) at +{:.1}s, fault {n}",
            at(Instant::now())
        ));
        tokio::time::sleep(down).await;
        match start_redis(spec, &format!("redis-restart-{n}.log")).await {
            Ok((fresh, _)) => {
                *redis = fresh;
                say(format_args!(
                    "redis-server started again at +{:.1}s ({})",
                    at(Instant::now()),
                    if spec.aof {
                        "append-only file: its data is back"
                    } else {
                        "empty: every room starts a new epoch"
                    }
                ));
            }
            Err(e) => {
                say(format_args!("redis-server did not start again: {e:#}"));
                return;
            }
        }
    }
}
