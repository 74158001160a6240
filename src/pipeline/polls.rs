//! When to poll a task (ARCHITECTURE.md "pipeline"): polls are scheduled, never spun. While the client's rate
//! limiter has made a call wait lately, every poll costs budget, so the first poll comes at the
//! 0.8 quantile of observed task durations and later ones back off up to `poll.max`; while the
//! limit does not bind, polls come every `poll.min`, so a result lands within `poll.min` of
//! being ready.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::claid::Client;
use crate::config::PollConfig;

/// How long a limiter wait keeps polls rationed.
const PRESSURE_MEMORY: Duration = Duration::from_secs(10);
/// Observed task durations kept for scheduling first polls.
const DURATION_SAMPLES: usize = 256;

/// Shared by every job task.
#[derive(Debug)]
pub struct Polls {
    poll: PollConfig,
    /// Read for the limiter's pressure count.
    client: Client,
    durations: Mutex<VecDeque<Duration>>,
    /// The client's limiter-wait count when last seen, and when it last grew.
    pressure: Mutex<(u64, Option<Instant>)>,
}

impl Polls {
    pub fn new(poll: PollConfig, client: Client) -> Polls {
        Polls {
            poll,
            client,
            durations: Mutex::new(VecDeque::new()),
            pressure: Mutex::new((0, None)),
        }
    }

    /// Records a task's observed duration (submit → DONE seen).
    pub fn record(&self, took: Duration) {
        let mut samples = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if samples.len() == DURATION_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(took);
    }

    /// The wait before the first poll of a task submitted `elapsed` ago.
    pub fn first_delay(&self, elapsed: Duration) -> Duration {
        let poll = &self.poll;
        if !self.budget_is_tight() {
            return poll
                .min
                .saturating_sub(elapsed)
                .max(Duration::from_millis(10));
        }
        let expected = self.quantile(0.8).unwrap_or(poll.min);
        expected
            .max(poll.min)
            .min(poll.max)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// With webhooks on, the wait before polling a task whose webhook has not come: until it
    /// is overdue, i.e. later than the observed spread of task durations (their 0.95
    /// quantile, half again, plus a second), at least `poll.min` and at most `fallback`.
    pub fn overdue_after(&self, elapsed: Duration, fallback: Duration) -> Duration {
        let spread = self
            .quantile(0.95)
            .map_or(fallback, |q| q.mul_f64(1.5) + Duration::from_secs(1));
        spread
            .max(self.poll.min)
            .min(fallback)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// The wait before poll number `n_poll + 1`: backs off from `poll.min` to `poll.max` while
    /// the rate limit binds, stays at `poll.min` while it does not.
    pub fn next_delay(&self, n_poll: u32) -> Duration {
        let poll = &self.poll;
        if !self.budget_is_tight() {
            return poll.min;
        }
        let factor = 1.5f64.powi(n_poll.saturating_sub(1).min(20) as i32);
        poll.min.mul_f64(factor).min(poll.max)
    }

    /// The `q` quantile of recent durations, if any were observed.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let samples = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = samples.iter().copied().collect();
        drop(samples);
        sorted.sort_unstable();
        let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[idx.min(sorted.len() - 1)])
    }

    /// Whether the client's rate limiter made a call wait noticeably within the last
    /// [`PRESSURE_MEMORY`]: then every poll costs a submit, and polls are rationed.
    fn budget_is_tight(&self) -> bool {
        let waits = self.client.limiter_pressure();
        let mut pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        if waits != pressure.0 {
            *pressure = (waits, Some(Instant::now()));
        }
        pressure.1.is_some_and(|at| at.elapsed() < PRESSURE_MEMORY)
    }
}
