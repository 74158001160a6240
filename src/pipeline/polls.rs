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
//!
//! A batch's duration grows with its size (Claid processes a few of its images at a time), so
//! batches also keep their samples with their sizes: once two batches of about the same size
//! (±25 %) have been seen, a batch of that size is first polled at 0.9 of their median
//! duration (at the median itself while the limit binds), and then at a tenth of it,
//! growing by half each time. A catalogue is mostly batches of the largest size, so after the
//! first few each costs about two polls instead of one every `poll.min`. A size not seen yet
//! (batches sized to Claid's pace, the short last batch) is expected to take its images times
//! the pace: the median time per image of recent batches larger than the canary. Here a first
//! poll that finds the batch done is kept as a sample: it is an upper bound, and without it the
//! estimate could only grow (only batches still running at 0.9 of the median would say
//! anything), so one slow spell would set every later batch's first poll late for good.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::claid::Client;
use crate::config::PollConfig;
use crate::pipeline::batch::CANARY_IMAGES;

/// How long a limiter wait keeps polls rationed.
const PRESSURE_MEMORY: Duration = Duration::from_secs(10);
/// Observed task durations kept for scheduling first polls.
const DURATION_SAMPLES: usize = 256;
/// Samples needed before their quantile replaces [`FIRST_GUESS`].
const MIN_SAMPLES: usize = 8;
/// The first poll's wait under a binding limit before durations are known: long enough for
/// nearly every single-image edit Claid documents (seconds), short of `poll.max`.
pub const FIRST_GUESS: Duration = Duration::from_secs(10);

/// Batch samples kept with their sizes: few, so that an estimate set late by a slow spell comes
/// back down (by a tenth every half window of batches done at their first poll).
const SIZED_SAMPLES: usize = 16;
/// Same-size batch samples needed before they set a batch's poll times.
const MIN_SIZED_SAMPLES: usize = 2;

/// Durations of ended batches with their image counts.
#[derive(Debug, Default)]
struct SizedSamples(VecDeque<(u32, Duration)>);

impl SizedSamples {
    fn push(&mut self, images: u32, took: Duration) {
        if self.0.len() == SIZED_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back((images, took));
    }

    /// The median duration of recent batches within ±25 % of `images` images, once
    /// [`MIN_SIZED_SAMPLES`] are known.
    fn expected(&self, images: u32) -> Option<Duration> {
        let n = f64::from(images.max(1));
        let mut similar: Vec<Duration> = self
            .0
            .iter()
            .filter(|(size, _)| {
                let size = f64::from(*size);
                size >= n * 0.75 && size <= n * 1.25
            })
            .map(|(_, took)| *took)
            .collect();
        if similar.len() < MIN_SIZED_SAMPLES {
            return None;
        }
        similar.sort_unstable();
        Some(similar[similar.len() / 2])
    }

    /// Claid's pace inside a batch: the median time per image (duration / size) of recent
    /// batches larger than the canary, from the first one that ended (the first batches after
    /// the canary are all of the largest size and end close together: waiting for a second
    /// would size the next ones blind). A canary's images run side by side, so its duration
    /// says nothing about how many of a larger batch Claid works on at once.
    fn pace(&self) -> Option<Duration> {
        let per_image: Vec<Duration> = self
            .0
            .iter()
            .filter(|(size, _)| *size as usize > CANARY_IMAGES)
            .map(|(size, took)| *took / (*size).max(1))
            .collect();
        median(per_image)
    }
}

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
    batch_sized: Mutex<SizedSamples>,
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
            batch_sized: Mutex::new(SizedSamples::default()),
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
        let Some(sample) = sample_of(took, seen) else {
            return;
        };
        let mut samples = self.samples(kind);
        if samples.len() == DURATION_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Records a batch of `images` images that ended `took` after its submit. A first poll
    /// that finds it done counts for its size (an upper bound that lets the estimate come
    /// down) once that size has an estimate, i.e. once that first poll was timed by it.
    pub fn record_batch(&self, images: usize, took: Duration, seen: Seen) {
        let size = u32::try_from(images).unwrap_or(u32::MAX);
        let sample = match sample_of(took, seen) {
            Some(sample) => Some(sample),
            None if self.batch_expected(images).is_some() => Some(took),
            None => None,
        };
        if let Some(sample) = sample {
            self.sized().push(size, sample);
        }
        self.record(Kind::Batch, took, seen);
    }

    fn sized(&self) -> std::sync::MutexGuard<'_, SizedSamples> {
        self.batch_sized
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What a batch of `images` images is expected to take: the median of batches of about
    /// its size, else (a size not seen yet, e.g. after the batch size followed Claid's pace)
    /// its images times the pace of recent batches.
    fn batch_expected(&self, images: usize) -> Option<Duration> {
        let size = u32::try_from(images).unwrap_or(u32::MAX);
        let sized = self.sized();
        sized
            .expected(size)
            .or_else(|| sized.pace().map(|pace| pace.saturating_mul(size)))
    }

    /// Claid's time per image inside a batch, from recent batches larger than the canary
    /// (what [`crate::pipeline::batch::Batching::target_size`] sizes batches by).
    pub fn batch_pace(&self) -> Option<Duration> {
        self.sized().pace()
    }

    /// The wait before the first poll of a batch of `images` images submitted `elapsed` ago:
    /// 0.9 of what batches of its size took, else as [`Polls::first_delay`].
    pub fn first_batch_delay(&self, images: usize, elapsed: Duration) -> Duration {
        match self.batch_expected(images) {
            Some(expected) => expected
                .mul_f64(if self.budget_is_tight() { 1.0 } else { 0.9 })
                .max(self.poll.min)
                .min(self.poll.max)
                .saturating_sub(elapsed)
                .max(Duration::from_millis(10)),
            None => self.first_delay(Kind::Batch, elapsed),
        }
    }

    /// The wait before poll number `n_poll + 1` of a batch of `images` images: a tenth of
    /// what batches of its size took, half again at each poll that finds it running, else as
    /// [`Polls::next_delay`].
    pub fn next_batch_delay(&self, images: usize, n_poll: u32) -> Duration {
        match self.batch_expected(images) {
            Some(expected) => {
                let factor = 1.5f64.powi(n_poll.saturating_sub(1).min(20) as i32);
                expected
                    .mul_f64(0.1 * factor)
                    .max(self.poll.min)
                    .min(self.poll.max)
            }
            None => self.next_delay(n_poll),
        }
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

/// The middle of `values` (the upper middle of an even count), if any.
fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// The duration a task's end stands for (see the module doc), if it says one.
fn sample_of(took: Duration, seen: Seen) -> Option<Duration> {
    match seen {
        Seen::Webhook => Some(took),
        Seen::Poll {
            pending_at: Some(low),
        } => Some(low + took.saturating_sub(low) / 2),
        Seen::Poll { pending_at: None } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_batch_size_is_expected_only_from_batches_of_about_its_size() {
        let mut samples = SizedSamples::default();
        samples.push(2, secs(3));
        samples.push(64, secs(15));
        assert_eq!(
            samples.expected(64),
            None,
            "one batch of the size is not enough"
        );
        samples.push(60, secs(13));
        samples.push(70, secs(17));
        // 60, 64 and 70 are within a quarter of 64; the canary of 2 is not.
        assert_eq!(samples.expected(64), Some(secs(15)));
        assert_eq!(samples.expected(2), None);
        assert_eq!(samples.expected(8), None);
    }

    /// Batches take 15 s; each is done at its first poll (0.9 of the estimate) and that poll's
    /// time is kept as a sample, so an estimate set late comes down; returns it after `n`.
    fn settle(samples: &mut SizedSamples, n: usize) -> Duration {
        let mut estimate = samples.expected(64).expect("estimate");
        for _ in 0..n {
            let first_poll = estimate.mul_f64(0.9).max(secs(15));
            samples.push(64, first_poll);
            estimate = samples.expected(64).expect("estimate");
        }
        estimate
    }

    #[test]
    fn upper_bounds_bring_an_estimate_set_by_a_slow_spell_back_down() {
        let mut samples = SizedSamples::default();
        for _ in 0..SIZED_SAMPLES {
            samples.push(64, secs(80));
        }
        let estimate = settle(&mut samples, 200);
        assert!(estimate <= secs(17), "{estimate:?}");
    }

    #[test]
    fn one_slow_batch_among_the_first_two_sets_the_estimate_only_for_a_while() {
        let mut samples = SizedSamples::default();
        samples.push(64, secs(15));
        samples.push(64, secs(120));
        assert_eq!(samples.expected(64), Some(secs(120)));
        let estimate = settle(&mut samples, 200);
        assert!(estimate <= secs(17), "{estimate:?}");
    }

    #[test]
    fn the_pace_is_the_median_time_per_image_of_batches_larger_than_the_canary() {
        let mut samples = SizedSamples::default();
        samples.push(2, secs(3));
        assert_eq!(samples.pace(), None, "a canary says nothing about the pace");
        samples.push(64, secs(32));
        assert_eq!(samples.pace(), Some(Duration::from_millis(500)));
        samples.push(40, secs(30));
        samples.push(2, secs(60));
        // 0.5 s and 0.75 s per image; the canaries (1.5 s and 30 s per image) do not count.
        assert_eq!(samples.pace(), Some(Duration::from_millis(750)));
        samples.push(32, secs(16));
        assert_eq!(samples.pace(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn sized_samples_keep_the_most_recent() {
        let mut samples = SizedSamples::default();
        for _ in 0..SIZED_SAMPLES {
            samples.push(10, secs(100));
        }
        for _ in 0..SIZED_SAMPLES / 2 + 1 {
            samples.push(10, secs(5));
        }
        assert_eq!(samples.0.len(), SIZED_SAMPLES);
        assert_eq!(
            samples.expected(10),
            Some(secs(5)),
            "the median follows recent batches"
        );
    }

    #[test]
    fn a_first_poll_that_finds_the_task_done_is_no_sample() {
        assert_eq!(sample_of(secs(9), Seen::Poll { pending_at: None }), None);
        assert_eq!(
            sample_of(
                secs(10),
                Seen::Poll {
                    pending_at: Some(secs(6))
                }
            ),
            Some(secs(8))
        );
        assert_eq!(sample_of(secs(7), Seen::Webhook), Some(secs(7)));
    }
}
