//! Sliding-window rate limits (per second and per minute) and the `RateLimit-*` headers they
//! produce, following CONTRACT.md §9.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// One limit: at most `limit` admitted requests in any window of `window`.
#[derive(Debug)]
struct Window {
    limit: u32,
    window: Duration,
    /// Admission times inside the current window, oldest first.
    admitted: VecDeque<Instant>,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some(&front) = self.admitted.front() {
            if now.duration_since(front) >= self.window {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }

    fn used(&self) -> u32 {
        u32::try_from(self.admitted.len()).unwrap_or(u32::MAX)
    }

    /// Whole seconds until the oldest admission leaves the window (at least 1 when full).
    fn reset_secs(&self, now: Instant) -> u64 {
        match self.admitted.front() {
            Some(&front) => {
                let left = self.window.saturating_sub(now.duration_since(front));
                left.as_secs_f64().ceil().max(1.0) as u64
            }
            None => self.window.as_secs().max(1),
        }
    }
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

/// Both windows; `None` when the scenario sets no limit at all.
#[derive(Debug)]
pub struct RateLimiter {
    windows: Vec<Window>,
}

impl RateLimiter {
    /// Builds the limiter from the scenario's limits (minute window listed first, as Claid does).
    pub fn new(rpm: Option<u32>, rps: Option<u32>) -> RateLimiter {
        let mut windows = Vec::new();
        if let Some(limit) = rpm {
            windows.push(Window {
                limit,
                window: Duration::from_secs(60),
                admitted: VecDeque::new(),
            });
        }
        if let Some(limit) = rps {
            windows.push(Window {
                limit,
                window: Duration::from_secs(1),
                admitted: VecDeque::new(),
            });
        }
        RateLimiter { windows }
    }

    /// Admits (and records) the request or refuses it; `None` when no limit is configured.
    pub fn check(&mut self, now: Instant) -> Option<Verdict> {
        if self.windows.is_empty() {
            return None;
        }
        for w in &mut self.windows {
            w.prune(now);
        }
        let full = self.windows.iter().position(|w| w.used() >= w.limit);
        let policies: Vec<String> = self
            .windows
            .iter()
            .map(|w| format!("{};w={}", w.limit, w.window.as_secs()))
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
            w.admitted.push_back(now);
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

    #[test]
    fn per_second_window_refuses_the_fifth_request_then_recovers() {
        let mut rl = RateLimiter::new(Some(120), Some(4));
        let t0 = Instant::now();
        for i in 0..4 {
            let v = rl.check(t0).expect("limited");
            assert!(v.allowed, "request {i}");
        }
        let v = rl.check(t0).expect("limited");
        assert!(!v.allowed);
        assert_eq!(v.remaining, -1);
        assert_eq!(v.limit, "4, 120;w=60, 4;w=1");
        assert_eq!(v.reset, 1);
        let v = rl.check(t0 + Duration::from_millis(1001)).expect("limited");
        assert!(v.allowed);
    }

    #[test]
    fn no_limits_means_no_headers() {
        assert!(RateLimiter::new(None, None).check(Instant::now()).is_none());
    }
}
