//! Rate limits (per second and per minute) counted in sliding or fixed windows, and the
//! `RateLimit-*` headers they produce, following docs/claid-api.md
//!
//! Claid does not say how its windows count, so the emulator offers both: a sliding window
//! admits at most `limit` requests in any span of the window's length; a fixed window counts
//! requests from one boundary to the next (boundaries every window length from the limiter's
//! epoch, the emulator's start) and forgets them at the boundary.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How a rate-limit window counts (`--rate-window`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RateWindow {
    /// At most `limit` requests in any span of the window's length; `RateLimit-Reset` = seconds
    /// until the oldest counted request leaves the window.
    #[default]
    Sliding,
    /// Counts reset at every boundary (each window length from the emulator's start);
    /// `RateLimit-Reset` = seconds to the next boundary.
    Fixed,
}

/// What one window has counted.
#[derive(Debug)]
enum Counter {
    /// Admission times inside the window, oldest first.
    Sliding(VecDeque<Instant>),
    /// Admissions since the start of window number `index` (counted from `epoch`).
    Fixed {
        epoch: Instant,
        index: u64,
        used: u32,
    },
}

/// One limit: at most `limit` admitted requests per `length`.
#[derive(Debug)]
struct Window {
    limit: u32,
    length: Duration,
    counter: Counter,
}

impl Window {
    fn new(limit: u32, length: Duration, mode: RateWindow, epoch: Instant) -> Window {
        let counter = match mode {
            RateWindow::Sliding => Counter::Sliding(VecDeque::new()),
            RateWindow::Fixed => Counter::Fixed {
                epoch,
                index: 0,
                used: 0,
            },
        };
        Window {
            limit,
            length,
            counter,
        }
    }

    /// Forgets what no longer counts at `now`.
    fn refresh(&mut self, now: Instant) {
        let length = self.length;
        match &mut self.counter {
            Counter::Sliding(admitted) => {
                while let Some(&front) = admitted.front() {
                    if now.duration_since(front) >= length {
                        admitted.pop_front();
                    } else {
                        break;
                    }
                }
            }
            Counter::Fixed { epoch, index, used } => {
                let current = window_index(*epoch, length, now);
                if current != *index {
                    *index = current;
                    *used = 0;
                }
            }
        }
    }

    fn used(&self) -> u32 {
        match &self.counter {
            Counter::Sliding(admitted) => u32::try_from(admitted.len()).unwrap_or(u32::MAX),
            Counter::Fixed { used, .. } => *used,
        }
    }

    fn admit(&mut self, now: Instant) {
        match &mut self.counter {
            Counter::Sliding(admitted) => admitted.push_back(now),
            Counter::Fixed { used, .. } => *used = used.saturating_add(1),
        }
    }

    /// Whole seconds (at least 1) until the window frees a request: the oldest admission
    /// leaves (sliding) or the next boundary comes (fixed).
    fn reset_secs(&self, now: Instant) -> u64 {
        let left = match &self.counter {
            Counter::Sliding(admitted) => match admitted.front() {
                Some(&front) => self.length.saturating_sub(now.duration_since(front)),
                None => self.length,
            },
            Counter::Fixed { epoch, .. } => {
                let into = now.saturating_duration_since(*epoch).as_nanos()
                    % self.length.as_nanos().max(1);
                self.length
                    .saturating_sub(Duration::from_nanos(u64::try_from(into).unwrap_or(0)))
            }
        };
        (left.as_secs_f64().ceil() as u64).max(1)
    }
}

/// Which fixed window `now` falls in, counting from `epoch`.
fn window_index(epoch: Instant, length: Duration, now: Instant) -> u64 {
    let since = now.saturating_duration_since(epoch).as_nanos();
    u64::try_from(since / length.as_nanos().max(1)).unwrap_or(u64::MAX)
}

/// The verdict for one request, with the header values to send.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// False = answer 429.
    pub allowed: bool,
    /// `RateLimit-Limit`, e.g. `120, 120;w=60, 4;w=1`.
    pub limit: String,
    /// `RateLimit-Remaining` (-1 when refused).
    pub remaining: i64,
    /// `RateLimit-Reset` in seconds.
    pub reset: u64,
}

/// The per-minute and per-second windows the scenario configures (either may be absent).
#[derive(Debug)]
pub struct RateLimiter {
    windows: Vec<Window>,
}

impl RateLimiter {
    /// Builds the limiter from the scenario's limits (minute window listed first, as Claid
    /// does). Fixed windows start at `epoch`.
    pub fn new(
        rpm: Option<u32>,
        rps: Option<u32>,
        mode: RateWindow,
        epoch: Instant,
    ) -> RateLimiter {
        let mut windows = Vec::new();
        if let Some(limit) = rpm {
            windows.push(Window::new(limit, Duration::from_secs(60), mode, epoch));
        }
        if let Some(limit) = rps {
            windows.push(Window::new(limit, Duration::from_secs(1), mode, epoch));
        }
        RateLimiter { windows }
    }

    /// Admits (and counts) the request at `now` or refuses it; `None` when no limit is
    /// configured. Refused requests are not counted.
    pub fn check(&mut self, now: Instant) -> Option<Verdict> {
        if self.windows.is_empty() {
            return None;
        }
        for w in &mut self.windows {
            w.refresh(now);
        }
        let full = self.windows.iter().position(|w| w.used() >= w.limit);
        let policies: Vec<String> = self
            .windows
            .iter()
            .map(|w| format!("{};w={}", w.limit, w.length.as_secs()))
            .collect();
        if let Some(i) = full {
            let w = &self.windows[i];
            return Some(Verdict {
                allowed: false,
                limit: format!("{}, {}", w.limit, policies.join(", ")),
                remaining: -1,
                reset: w.reset_secs(now),
            });
        }
        for w in &mut self.windows {
            w.admit(now);
        }
        // The binding policy is the one with the fewest requests left.
        let (w, left) = self
            .windows
            .iter()
            .map(|w| (w, i64::from(w.limit) - i64::from(w.used())))
            .min_by_key(|(_, left)| *left)?;
        Some(Verdict {
            allowed: true,
            limit: format!("{}, {}", w.limit, policies.join(", ")),
            remaining: left,
            reset: w.reset_secs(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, millis: u64) -> Instant {
        t0 + Duration::from_millis(millis)
    }

    #[test]
    fn per_second_window_refuses_the_fifth_request_then_recovers() {
        for mode in [RateWindow::Sliding, RateWindow::Fixed] {
            let t0 = Instant::now();
            let mut rl = RateLimiter::new(Some(120), Some(4), mode, t0);
            for i in 0..4 {
                let v = rl.check(t0).expect("limited");
                assert!(v.allowed, "{mode:?} request {i}");
            }
            let v = rl.check(t0).expect("limited");
            assert!(!v.allowed);
            assert_eq!(v.remaining, -1);
            assert_eq!(v.limit, "4, 120;w=60, 4;w=1");
            assert_eq!(v.reset, 1);
            let v = rl.check(at(t0, 1001)).expect("limited");
            assert!(v.allowed, "{mode:?}");
        }
    }

    #[test]
    fn no_limits_means_no_headers() {
        let now = Instant::now();
        for mode in [RateWindow::Sliding, RateWindow::Fixed] {
            assert!(RateLimiter::new(None, None, mode, now).check(now).is_none());
        }
    }

    #[test]
    fn fixed_minute_reset_counts_to_the_boundary() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Some(3), None, RateWindow::Fixed, t0);
        let v = rl.check(at(t0, 10_000)).expect("limited");
        assert_eq!((v.remaining, v.reset), (2, 50));
        rl.check(at(t0, 20_000));
        rl.check(at(t0, 30_000));
        let refused = rl.check(at(t0, 44_500)).expect("limited");
        assert!(!refused.allowed);
        assert_eq!((refused.limit.as_str(), refused.reset), ("3, 3;w=60", 16));
        // At the boundary the whole quota is back at once.
        for _ in 0..3 {
            assert!(rl.check(at(t0, 60_000)).expect("limited").allowed);
        }
        let v = rl.check(at(t0, 60_001)).expect("limited");
        assert!(!v.allowed);
        assert_eq!(v.reset, 60);
    }

    #[test]
    fn sliding_minute_reset_counts_to_the_oldest_request_leaving() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Some(3), None, RateWindow::Sliding, t0);
        assert_eq!(rl.check(at(t0, 10_000)).expect("limited").reset, 60);
        rl.check(at(t0, 20_000));
        rl.check(at(t0, 30_000));
        let refused = rl.check(at(t0, 44_500)).expect("limited");
        assert!(!refused.allowed);
        assert_eq!(refused.reset, 26);
        // Only the oldest request has left at 70 s: one is admitted, not three.
        assert!(rl.check(at(t0, 70_000)).expect("limited").allowed);
        assert!(!rl.check(at(t0, 70_001)).expect("limited").allowed);
    }
}
