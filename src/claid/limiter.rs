//! The one rate limiter shared by every Claid API call (submit, poll, upload, probe): two
//! governor quotas (per second and per minute, both must allow) plus a gate steered by the
//! server's `RateLimit-*` headers. Runs on tokio time so tests can pause it.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// Longest pause a `RateLimit-Reset` header may impose; a bogus huge value must not stall the
/// daemon for hours (the longest documented window is 60 s).
pub const MAX_RESET: Duration = Duration::from_secs(120);

/// Pause used after a 429 or `Remaining <= 0` when the server sent no usable `RateLimit-Reset`.
pub const DEFAULT_RESET: Duration = Duration::from_secs(1);

/// A governor clock reading tokio time, so `tokio::time::pause` drives the quotas too.
#[derive(Debug, Clone)]
struct TokioClock {
    /// Zero point of the nanosecond counter governor works with.
    base: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.base.elapsed())
    }
}

type Quotas = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// How long one `acquire` was made to wait by the quotas and the gate: zero when it went
/// straight through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited(pub Duration);

/// The shared limiter. Cloned behind an `Arc` by [`super::Client`].
pub struct Limiter {
    /// Evenly spaced at `1/rps` with a burst of one, so no 1-second window sees more than
    /// `rps` (+1 at a window edge) calls.
    per_second: Quotas,
    /// `rpm` per minute with a burst of at most `rps`: sustained traffic stays under the minute
    /// quota; the small burst after idling is absorbed by the header gate if Claid objects.
    per_minute: Quotas,
    /// Tokio time until which nobody may call: set from `RateLimit-Reset` after a 429 or
    /// `RateLimit-Remaining <= 0`. A std mutex: held only to read or bump one value.
    blocked_until: Mutex<Option<Instant>>,
    /// Time source for both quotas (kept to compute wait durations).
    clock: TokioClock,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("blocked_until", &self.blocked_until)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub fn new(rps: NonZeroU32, rpm: NonZeroU32) -> Limiter {
        let clock = TokioClock {
            base: Instant::now(),
        };
        let per_second = Quota::per_second(rps).allow_burst(NonZeroU32::MIN);
        let per_minute = Quota::per_minute(rpm).allow_burst(rps.min(rpm));
        Limiter {
            per_second: RateLimiter::direct_with_clock(per_second, clock.clone()),
            per_minute: RateLimiter::direct_with_clock(per_minute, clock.clone()),
            blocked_until: Mutex::new(None),
            clock,
        }
    }

    /// Waits until the header gate is open and both quotas allow one more call, then takes it.
    /// Returns how long the limiter asked to wait: what the quotas and the gate imposed, not
    /// the time it took (a busy machine wakes timers late, and that is no rate limit).
    pub async fn acquire(&self) -> Waited {
        let mut asked = Duration::ZERO;
        loop {
            if let Some(until) = self.gate() {
                let now = Instant::now();
                if until > now {
                    asked += until - now;
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
            if let Err(not_until) = self.per_second.check() {
                let wait = not_until.wait_time_from(self.clock.now());
                asked += wait;
                tokio::time::sleep(wait).await;
                continue;
            }
            if let Err(not_until) = self.per_minute.check() {
                // The per-second cell just taken is forfeited: conservative, never over quota.
                let wait = not_until.wait_time_from(self.clock.now());
                asked += wait;
                tokio::time::sleep(wait).await;
                continue;
            }
            return Waited(asked);
        }
    }

    /// Closes the gate for everyone for `reset` (capped at [`MAX_RESET`]); never shortens an
    /// existing closure.
    pub fn block_for(&self, reset: Duration) {
        let until = Instant::now() + reset.min(MAX_RESET);
        let mut gate = self
            .blocked_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if gate.is_none_or(|current| current < until) {
            *gate = Some(until);
        }
    }

    fn gate(&self) -> Option<Instant> {
        *self
            .blocked_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads `RateLimit-Reset` (whole or fractional seconds); `None` when absent or unusable.
pub fn parse_reset(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    if secs.is_finite() && secs >= 0.0 {
        Some(Duration::from_secs_f64(secs.min(MAX_RESET.as_secs_f64())))
    } else {
        None
    }
}

/// Reads `RateLimit-Remaining` (may be negative: Claid sends `-1` once exceeded).
pub fn parse_remaining(value: Option<&str>) -> Option<i64> {
    value?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_header_parsing() {
        assert_eq!(parse_reset(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_reset(Some(" 2.5 ")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_reset(Some("-3")), None);
        assert_eq!(parse_reset(Some("soon")), None);
        assert_eq!(parse_reset(None), None);
        assert_eq!(parse_reset(Some("99999")), Some(MAX_RESET));
        assert_eq!(parse_remaining(Some("-1")), Some(-1));
        assert_eq!(parse_remaining(Some("x")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn quotas_space_calls_and_gate_blocks_everyone() {
        let limiter = Limiter::new(NonZeroU32::new(4).unwrap(), NonZeroU32::new(600).unwrap());
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // 1 immediately, then one every 250 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        limiter.block_for(Duration::from_secs(3));
        let waited = limiter.acquire().await;
        assert!(waited.0 >= Duration::from_secs(3));
    }

    /// The wait reported is the one the quotas imposed: a call that goes straight through
    /// reports zero however late its task runs, and a spaced call reports its spacing.
    #[tokio::test(start_paused = true)]
    async fn waited_is_what_the_quotas_asked() {
        let limiter = Limiter::new(NonZeroU32::new(4).unwrap(), NonZeroU32::new(600).unwrap());
        assert_eq!(limiter.acquire().await, Waited(Duration::ZERO));
        let second = limiter.acquire().await;
        assert!(
            second.0 > Duration::from_millis(200) && second.0 <= Duration::from_millis(250),
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn minute_quota_binds_too() {
        let limiter = Limiter::new(NonZeroU32::new(10).unwrap(), NonZeroU32::new(6).unwrap());
        let start = Instant::now();
        for _ in 0..7 {
            limiter.acquire().await;
        }
        // Burst of 6 (spaced 100 ms by the second quota), then the 7th waits for 10 s of
        // minute-quota replenishment.
        assert!(
            start.elapsed() >= Duration::from_secs(9),
            "{:?}",
            start.elapsed()
        );
    }
}
