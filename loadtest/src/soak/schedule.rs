//! A soak member's random schedule: when it publishes and when it next drops its
//! connection, drawn from a small seeded generator.

use std::time::Duration;

use tokio::time::Instant;

use super::state::Run;

/// When the member publishes and when it next drops its connection.
pub(super) struct Schedule {
    start: Instant,
    pub(super) end: Instant,
    period: Duration,
    pub(super) next_publish: Instant,
    /// The reconnect interval the next disconnect falls in.
    window: u32,
    pub(super) disconnect_at: Option<Instant>,
}

impl Schedule {
    pub(super) fn new(run: &Run, start: Instant, rng: &mut Rng) -> Schedule {
        let period = Duration::from_secs_f64(1.0 / run.opts.rate);
        let mut s = Schedule {
            start,
            end: start + run.common.duration,
            period,
            // Members start spread over one period, not in step.
            next_publish: start + period.mul_f64(rng.unit()),
            window: 0,
            disconnect_at: None,
        };
        s.plan_disconnect(run.opts.reconnect_every, start, rng);
        s
    }

    /// A random moment in the next interval not over by `now`; none past the end.
    pub(super) fn plan_disconnect(&mut self, every: Duration, now: Instant, rng: &mut Rng) {
        while self.start + every * (self.window + 1) <= now {
            self.window += 1;
        }
        let at = (self.start + every * self.window + every.mul_f64(rng.unit())).max(now);
        self.window += 1;
        self.disconnect_at = (at < self.end).then_some(at);
    }

    /// Move to the next publication due after `now`: those due while the member
    /// was away are skipped, not sent in a burst.
    pub(super) fn published(&mut self, now: Instant) {
        self.next_publish += self.period;
        if self.next_publish < now {
            let behind = now.duration_since(self.next_publish).as_secs_f64();
            let periods = (behind / self.period.as_secs_f64()).ceil();
            self.next_publish += self.period.mul_f64(periods);
        }
    }
}

/// SplitMix64: a member's random schedule, seeded per run and member.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
