//! When to poll a task (ARCHITECTURE.md "pipeline"): polls are scheduled, never spun. While the
//! limit does not bind, polls come every `poll.min`, so a result lands within `poll.min` of
//! being ready. While the client's rate limiter has made a call wait lately, every poll costs
//! budget and a poll that finds the task still running wastes a request (with a drop the size
//! of the minute quota, one wasted request costs the rest of the minute), so the first poll
//! comes once the task is very likely done (the 0.95 quantile of observed durations, or a
//! first guess of [`FIRST_GUESS`] until enough are known) and later ones back off up to
//! `poll.max`.
//!
//! Observed durations are honest samples, not the delays the scheduler chose: a poll that
//! finds a task DONE at its first try only says "at most this long", and recording it would
//! let a long first delay confirm itself. Samples come from webhooks (the time they arrive) and
//! from tasks seen running before they were seen DONE (the middle of that interval). Single
//! tasks and batch tasks keep separate samples: a batch ends with its slowest image.

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
/// Samples needed before their quantile replaces [`FIRST_GUESS`].
const MIN_SAMPLES: usize = 8;
/// The first poll's wait under a binding limit before durations are known: long enough for
/// nearly every single-image edit Claid documents (seconds), short of `poll.max`.
pub const FIRST_GUESS: Duration = Duration::from_secs(10);

/// Which kind of task a duration or a delay is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Single,
    Batch,
}

/// How a task's end was seen.
#[derive(Debug, Clone, Copy)]
pub enum Seen {
    /// Announced by a webhook: the arrival time is the duration.
    Webhook,
    /// A poll found it DONE; `pending_at` is when an earlier poll last found it running
    /// (None: the first poll already found it done, which bounds the duration only above).
    Poll { pending_at: Option<Duration> },
}

/// Shared by every job task.
#[derive(Debug)]
pub struct Polls {
    poll: PollConfig,
    /// Read for the limiter's pressure count.
    client: Client,
    single: Mutex<VecDeque<Duration>>,
    batch: Mutex<VecDeque<Duration>>,
    /// The client's limiter-wait count when last seen, and when it last grew.
    pressure: Mutex<(u64, Option<Instant>)>,
}

impl Polls {
    pub fn new(poll: PollConfig, client: Client) -> Polls {
        Polls {
            poll,
            client,
            single: Mutex::new(VecDeque::new()),
            batch: Mutex::new(VecDeque::new()),
            pressure: Mutex::new((0, None)),
        }
    }

    fn samples(&self, kind: Kind) -> std::sync::MutexGuard<'_, VecDeque<Duration>> {
        match kind {
            Kind::Single => &self.single,
            Kind::Batch => &self.batch,
        }
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a task that ended `took` after its submit, seen as `seen`.
    pub fn record(&self, kind: Kind, took: Duration, seen: Seen) {
        let sample = match seen {
            Seen::Webhook => took,
            Seen::Poll {
                pending_at: Some(low),
            } => low + took.saturating_sub(low) / 2,
            Seen::Poll { pending_at: None } => return,
        };
        let mut samples = self.samples(kind);
        if samples.len() == DURATION_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The wait before the first poll of a task submitted `elapsed` ago.
    pub fn first_delay(&self, kind: Kind, elapsed: Duration) -> Duration {
        let poll = &self.poll;
        if !self.budget_is_tight() {
            return poll
                .min
                .saturating_sub(elapsed)
                .max(Duration::from_millis(10));
        }
        let expected = self.quantile(kind, 0.95).unwrap_or(FIRST_GUESS);
        expected
            .max(poll.min)
            .min(poll.max)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// With webhooks on, the wait before polling a task whose webhook has not come: until it
    /// is overdue, i.e. later than the observed spread of task durations (their 0.95
    /// quantile, half again, plus a second), at least `poll.min` and at most `fallback`.
    pub fn overdue_after(&self, kind: Kind, elapsed: Duration, fallback: Duration) -> Duration {
        let spread = self
            .quantile(kind, 0.95)
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

    /// The `q` quantile of recent durations of `kind`, once enough were observed.
    fn quantile(&self, kind: Kind, q: f64) -> Option<Duration> {
        let samples = self.samples(kind);
        if samples.len() < MIN_SAMPLES {
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
