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
//! tasks and batch tasks keep separate samples: a batch ends with its slowest image. What such
//! a first poll does say brings a single task's first guess down (to 0.8 of that poll's time,
//! never below `poll.min` nor the longest sample): without it, a drop whose every first poll
//! found its task done kept the 10 s guess to its end (tasks of 2 s each polled 10 s after
//! its submit, a quarter of the speed the limit allows). It does so only while less than a
//! quarter of the minute's quota was used in the last minute: a drop the size of the quota
//! needs every request, and one first poll that finds its task running makes it wait for
//! the next minute.
//!
//! A batch's duration grows with its size (Claid processes a few of its images at a time), so
//! batches also keep their samples with their sizes: once two batches of about the same size
//! (±25 %) have been seen, a batch of that size is first polled at 0.9 of their median
//! duration (at the median itself while the limit binds), and then at a tenth of it,
//! growing by half each time. A catalogue is mostly batches of the largest size, so after the
//! first few each costs about two polls instead of one every `poll.min`. That schedule is
//! anchored to its estimate: when a batch of its size ends and the estimate appears or moves by
//! more than a fifth, waiting pollers wake and plan again from it. Until a size has an
//! estimate, one batch scouts (polls backing off from `poll.min`, its first poll while the
//! limit binds no later than its images would take one after the other at the canary's
//! latency) and the batches sent
//! beside it wait for its end or `poll.max`; each poll that finds the scout's batch running
//! hands the role to another batch of the round, so one slow batch cannot hold the round back
//! (measured: a scout of 34 s among batches of 15 to 20 s kept the others waiting until their
//! 30 s check, and its duration set every later first poll late), and the first found done
//! counts as the middle of the round's latest running poll and its own. A size not seen yet
//! (batches sized to Claid's pace, the drop's last batches) is expected to take its images times
//! the pace: the median time per image of recent batches larger than the canary. Here a first
//! poll that finds the batch done is kept as a sample: it is an upper bound, and without it the
//! estimate could only grow (only batches still running at 0.9 of the median would say
//! anything), so one slow spell would set every later batch's first poll late for good. From
//! the second such batch in a row on, each counts as 0.8 of its poll's time (see
//! `DONE_AT_FIRST_POLL`), so that an estimate set late comes down sooner.
//!
//! The drop's last batches (smaller than every recent batch, sent together) are expected from
//! the pace too, which does not show that even a small batch takes a whole round of Claid's
//! work: once a first poll has found them running, one polls on and the others wait for its
//! end, as in the first round (measured: four batches of 10 took 23 polls, now about 13).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
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

/// The share of the minute's quota used in the last minute under which first polls that
/// find their task done bring the single-task first guess down (see [`Polls::record`]).
const GUESS_FALLS_BELOW_USE: f64 = 0.25;

/// With webhooks on, a first-round batch (a size no batch has ended at yet) whose webhook has
/// not come is polled at the latest after this share of `webhook.poll_fallback` (a third: 40 s
/// of the default two minutes), so webhooks that stop after the canary's delay the first
/// round by that much, not the whole fallback. One poll more per first-round batch only where
/// Claid takes longer than that over such a batch.
pub const FIRST_ROUND_SHARE: f64 = 1.0 / 3.0;

/// Batch samples kept with their sizes: few, so that an estimate set late by a slow spell comes
/// back down (by a tenth every half window of batches done at their first poll).
const SIZED_SAMPLES: usize = 16;
/// Same-size batch samples needed before they set a batch's poll times.
const MIN_SIZED_SAMPLES: usize = 2;
/// Batches within this share of a batch's size count as its size.
const SIZE_WINDOW: f64 = 0.25;
/// A batch found done at its first poll ended some time before it. When the batch before it
/// (in the order they end) was too, it counts as this share of that time. When an estimate was
/// set late (a slow scout, a slow spell), every batch is found done at its first poll (at 0.9
/// of the estimate), and counting each at its poll's time brings the estimate down by only a
/// tenth each time half the samples have been replaced: measured at 16 images at once per
/// batch, a slow scout's 23 s for batches of about 10 s held for the whole drop (8.1 instead
/// of 13 images/s). Counted this way, twenty such batches take a 2× estimate most of the way
/// down (40 → 18.7 s for batches of 10 s, against 29 s). A batch done at its first poll after
/// one seen running, the usual case once the estimate is right, counts at its poll's time.
/// (A share compounding with each batch in a row came down faster and overshot: batches that
/// end together make runs of four or five ordinary.)
const DONE_AT_FIRST_POLL: f64 = 0.8;

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

    /// The durations of recent batches of about `images` images (within [`SIZE_WINDOW`] of
    /// it), sorted, once [`MIN_SIZED_SAMPLES`] are known.
    fn similar(&self, images: u32) -> Option<Vec<Duration>> {
        let n = f64::from(images.max(1));
        let mut similar: Vec<Duration> = self
            .0
            .iter()
            .filter(|(size, _)| {
                let size = f64::from(*size);
                size >= n * (1.0 - SIZE_WINDOW) && size <= n * (1.0 + SIZE_WINDOW)
            })
            .map(|(_, took)| *took)
            .collect();
        if similar.len() < MIN_SIZED_SAMPLES {
            return None;
        }
        similar.sort_unstable();
        Some(similar)
    }

    /// The median duration of recent batches of about `images` images (see
    /// [`SizedSamples::similar`]).
    fn expected(&self, images: u32) -> Option<Duration> {
        let similar = self.similar(images)?;
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

/// The scout role of the first round (batches whose size has no estimate), and of the drop's
/// last batches.
#[derive(Debug, Default)]
struct Scout {
    /// The batch that polls for the others.
    holder: Option<u64>,
    /// The first round's batches waiting for it.
    waiting: std::collections::BTreeSet<u64>,
    /// The first round's polls that found their batch running: the role goes round, so one
    /// slow batch cannot hold the others back, and the backoff goes on from where it was.
    probes: u32,
    /// When the next of those polls is due.
    due: Option<Instant>,
    /// When (since its batch's submit) the latest of them found its batch running.
    running_at: Option<Duration>,
    /// The batch that handed the role on last: it does not take it back while others wait.
    last: Option<u64>,
}

/// Where one batch's poll schedule stands ([`Polls::batch_delay`]). Dropping it frees the
/// scout role if the batch held it.
#[derive(Debug)]
pub struct BatchClock {
    polls: Arc<Polls>,
    id: u64,
    images: usize,
    timed: bool,
    /// The estimate the schedule follows.
    expected: Option<Duration>,
    /// That estimate comes from batches of about this one's size (else from the pace alone).
    from_size: bool,
    /// The batch was smaller than every recent batch when it was sent (see
    /// [`Polls::below_all`]).
    small: bool,
    /// It waits for the scout of the drop's last batches.
    waiting: bool,
    /// Polls that found the batch running since `expected` was set.
    late_polls: u32,
    /// Polls that found it running.
    n_poll: u32,
    /// Bumped when the schedule starts again (a new estimate, or the batch became the scout):
    /// a wait planned before is then replaced.
    plan: u32,
    /// It waited for a scout at some point.
    waited: bool,
    /// It took the scout role after waiting for another scout, which ended without a sample.
    inherited: bool,
    /// It waited for its webhook until webhooks were found lost: as the first round's scout,
    /// its first poll is not rationed (see [`Polls::batch_delay`]).
    from_webhook_wait: bool,
}

impl BatchClock {
    /// Its webhook is no longer waited for (webhooks were found lost): polled on the schedule
    /// from now.
    pub fn stopped_waiting_for_webhook(&mut self) {
        self.from_webhook_wait = true;
    }

    /// A poll found the batch running.
    pub fn running(&mut self) {
        self.late_polls += 1;
        self.n_poll += 1;
    }

    /// Records the batch's end, seen as `seen` `took` after its submit (see
    /// [`Polls::record_batch`]).
    pub fn ended(&self, took: Duration, seen: Seen) {
        if self.timed {
            // A first poll that finds it done is a bound worth keeping when this batch took
            // the scout role from one that ended without a sample and polled at once: else,
            // when a whole round ends before the scout's first poll, each batch in turn would
            // end without a sample and the pace would never be learned. A check at `poll.max`
            // is no such bound: the batch may have ended long before (a 30 s bound for a 15 s
            // batch doubled the pace and delayed every later first poll), and the scout, still
            // polled, gives the sample.
            let bound = self.inherited && self.n_poll == 0;
            // A batch of the first round that took the role in turn and found its batch done
            // ended after the round's latest poll that found one running (the batches of the
            // round went out within a second or two): the middle of that interval.
            let seen = match (seen, bound.then(|| self.polls.round_running_at()).flatten()) {
                (Seen::Poll { pending_at: None }, Some(at)) if at < took => Seen::Poll {
                    pending_at: Some(at),
                },
                (seen, _) => seen,
            };
            self.polls.record_batch(self.images, took, seen, bound);
        }
    }

    /// Changes each time the schedule starts again.
    pub fn plan(&self) -> u32 {
        self.plan
    }
}

impl Drop for BatchClock {
    fn drop(&mut self) {
        self.polls.leave_scout(self.id);
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
    /// Read for when its rate limiter last made a call wait.
    client: Client,
    single: Mutex<VecDeque<Duration>>,
    batch: Mutex<VecDeque<Duration>>,
    batch_sized: Mutex<SizedSamples>,
    /// How long the latest batch of at most [`CANARY_IMAGES`] took: about one image's
    /// latency, since so few run side by side.
    small_batch: Mutex<Option<Duration>>,
    /// Bumped when a batch sample is kept or the scout leaves: batch pollers re-plan on it.
    changes: watch::Sender<u64>,
    /// The batch polling for the others while their size has no estimate (see
    /// [`Polls::batch_delay`]).
    scout: Mutex<Scout>,
    /// Batches found done at their first poll in a row, as samples (see
    /// [`DONE_AT_FIRST_POLL`]).
    done_at_first: Mutex<u32>,
    /// A single task's first guess while too few samples are known (see
    /// [`Polls::first_guess`]).
    single_guess: Mutex<Duration>,
    /// When this process made its polls (ms since the epoch): tasks submitted before are
    /// resumed ones.
    started_ms: u64,
    /// A batch was seen to take longer than `poll.max` (told once: see
    /// [`Polls::record_batch`]).
    told_max: std::sync::atomic::AtomicBool,
}

impl Polls {
    /// Since when `api.poll.give_up_after` counts for a task submitted at `submitted_at_ms`:
    /// its submit, or this daemon's start when it was submitted before (time the daemon was
    /// down, an account being topped up, say, is not Claid taking long).
    pub fn watched_since(&self, submitted_at_ms: u64) -> u64 {
        submitted_at_ms.max(self.started_ms)
    }

    pub fn new(poll: PollConfig, client: Client) -> Polls {
        Polls {
            poll,
            client,
            single: Mutex::new(VecDeque::new()),
            batch: Mutex::new(VecDeque::new()),
            batch_sized: Mutex::new(SizedSamples::default()),
            small_batch: Mutex::new(None),
            changes: watch::channel(0).0,
            scout: Mutex::new(Scout::default()),
            done_at_first: Mutex::new(0),
            single_guess: Mutex::new(FIRST_GUESS),
            started_ms: crate::store::now_ms(),
            told_max: std::sync::atomic::AtomicBool::new(false),
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
            // Found done at its first poll: it took at most `took`. The guess comes down
            // only while the minute's quota has room to spare: a first poll that then finds
            // its task running wastes a request, and a drop the size of the quota needs every
            // one (60 images under 120 a minute: one such poll made the drop wait for the
            // next minute, 61 s against 35).
            if kind == Kind::Single && self.client.minute_quota_used() < GUESS_FALLS_BELOW_USE {
                let mut guess = self
                    .single_guess
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *guess = (*guess)
                    .min(took.mul_f64(DONE_AT_FIRST_POLL))
                    .max(self.poll.min);
            }
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
    /// down) once that size has an estimate, i.e. once that first poll was timed by it, or
    /// when `bound` (see [`BatchClock::ended`]).
    pub fn record_batch(&self, images: usize, took: Duration, seen: Seen, bound: bool) {
        let size = u32::try_from(images).unwrap_or(u32::MAX);
        if images <= CANARY_IMAGES {
            let latency = sample_of(took, seen).unwrap_or(took);
            *self
                .small_batch
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(latency);
        }
        let sample = match sample_of(took, seen) {
            Some(sample) => {
                *self.done_at_first() = 0;
                Some(sample)
            }
            None if bound || self.batch_expected(images).is_some() => {
                let mut in_a_row = self.done_at_first();
                *in_a_row = in_a_row.saturating_add(1);
                let share = if *in_a_row > 1 {
                    DONE_AT_FIRST_POLL
                } else {
                    1.0
                };
                Some(took.mul_f64(share))
            }
            None => None,
        };
        if let Some(sample) = sample {
            tracing::debug!(
                images,
                took_ms = took.as_millis() as u64,
                sample_ms = sample.as_millis() as u64,
                "Batch duration sample kept"
            );
            self.sized().push(size, sample);
            if sample > self.poll.max.mul_f64(1.5)
                && !self
                    .told_max
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                // The first poll of a batch comes within `poll.max` of its submit, so each
                // such batch costs a poll every `poll.max` until it ends.
                tracing::info!(
                    images,
                    took_ms = sample.as_millis() as u64,
                    poll_max_ms = self.poll.max.as_millis() as u64,
                    "A batch took half again api.poll.max or longer: each such batch is \
                     polled every poll.max until it ends (raise api.poll.max above batches' \
                     duration, or use webhooks, to spend fewer requests)"
                );
            }
            // The first round is over once a batch's duration is known.
            let mut scout = self.scout();
            (scout.probes, scout.due, scout.running_at, scout.last) = (0, None, None, None);
            drop(scout);
            self.changed();
        }
        self.record(Kind::Batch, took, seen);
    }

    fn done_at_first(&self) -> std::sync::MutexGuard<'_, u32> {
        self.done_at_first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        self.batch_estimate(images).map(|(expected, _)| expected)
    }

    /// [`Polls::batch_expected`], and whether it comes from batches of about this size (else
    /// from the pace alone).
    fn batch_estimate(&self, images: usize) -> Option<(Duration, bool)> {
        let size = u32::try_from(images).unwrap_or(u32::MAX);
        let sized = self.sized();
        match sized.expected(size) {
            Some(expected) => Some((expected, true)),
            None => sized.pace().map(|pace| (pace.saturating_mul(size), false)),
        }
    }

    /// Whether a batch of `images` images is smaller than every recent batch larger than the
    /// canary, by more than [`SIZE_WINDOW`].
    fn below_all(&self, images: usize) -> bool {
        let smallest = self
            .sized()
            .0
            .iter()
            .map(|(size, _)| *size as usize)
            .filter(|size| *size > CANARY_IMAGES)
            .min();
        smallest.is_some_and(|smallest| (images as f64) < smallest as f64 * (1.0 - SIZE_WINDOW))
    }

    /// Claid's time per image inside a batch, from recent batches larger than the canary
    /// (what [`crate::pipeline::batch::Batching::target_size`] sizes batches by).
    pub fn batch_pace(&self) -> Option<Duration> {
        self.sized().pace()
    }

    /// How long the latest batch of at most [`CANARY_IMAGES`] took (about one image's latency).
    fn small_batch_latency(&self) -> Option<Duration> {
        *self
            .small_batch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// About how many images of one batch Claid works on at once: one image's latency (a
    /// batch of at most [`CANARY_IMAGES`], e.g. the canary) over the pace; `None` until both
    /// are known.
    pub fn batch_parallelism(&self) -> Option<f64> {
        let latency = self.small_batch_latency()?;
        let pace = self.batch_pace()?;
        Some(latency.as_secs_f64() / pace.as_secs_f64().max(1e-3))
    }

    /// A poll schedule for batch `id` of `images` images (`timed`: submitted by this run, so
    /// its duration is a sample; a resumed batch is not and never scouts).
    pub fn batch_clock(self: &Arc<Self>, id: u64, images: usize, timed: bool) -> BatchClock {
        BatchClock {
            polls: Arc::clone(self),
            id,
            images,
            timed,
            expected: None,
            from_size: false,
            small: self.below_all(images),
            waiting: false,
            late_polls: 0,
            n_poll: 0,
            plan: 0,
            waited: false,
            inherited: false,
            from_webhook_wait: false,
        }
    }

    /// Wakes when a batch estimate may have changed or the scout left (see
    /// [`Polls::batch_delay`]).
    pub fn batch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The wait before the next poll of the batch `clock` follows, submitted `elapsed` ago.
    ///
    /// With an estimate `E` for its size: the first poll at 0.9 E (E itself while the limit
    /// binds), then a tenth of E later, half again at each poll that finds it running. The
    /// schedule is anchored to the estimate it was made with: when that estimate appears or
    /// moves by more than a fifth (a batch of its size just ended), it starts again from the
    /// new one, so a batch submitted beside the first of its size is polled when that one
    /// has shown how long they take, not after a backoff grown while nothing was known.
    ///
    /// Without an estimate (the first batches after the canary), one batch at a time scouts:
    /// it polls from [`Polls::first_delay`], backing off by half from `poll.min`, and the
    /// others wait for its end (which gives them an estimate) or `poll.max`, whichever comes
    /// first. Batches of one size go out together, so polling them all would spend the same
    /// requests several times over to learn one duration.
    pub fn batch_delay(&self, clock: &mut BatchClock, elapsed: Duration) -> Duration {
        let delay = self.plan_batch_poll(clock, elapsed);
        tracing::debug!(
            batch_id = clock.id,
            images = clock.images,
            expected_ms = clock.expected.map(|e| e.as_millis() as u64),
            from_size = clock.from_size,
            late_polls = clock.late_polls,
            since_submit_ms = elapsed.as_millis() as u64,
            delay_ms = delay.as_millis() as u64,
            "Batch poll planned"
        );
        delay
    }

    fn plan_batch_poll(&self, clock: &mut BatchClock, elapsed: Duration) -> Duration {
        let estimate = self.batch_estimate(clock.images);
        let expected = estimate.map(|(expected, _)| expected);
        let moved = match (clock.expected, expected) {
            (None, Some(_)) => true,
            (Some(old), Some(new)) => new < old.mul_f64(0.8) || new > old.mul_f64(1.25),
            (_, None) => false,
        };
        if moved {
            clock.expected = expected;
            clock.late_polls = 0;
            clock.plan += 1;
        }
        clock.from_size = estimate.is_some_and(|(_, from_size)| from_size);
        let Some(expected) = clock.expected else {
            if !clock.timed {
                return self.backoff(clock.n_poll, elapsed);
            }
            if self.hand_on(clock, elapsed) || !self.scout_is(clock) {
                clock.waited = true;
                self.scout().waiting.insert(clock.id);
                return self.poll.max;
            }
            // Backs off even while the limit does not bind: the whole first wave waits on
            // the scout, but it alone polls, and a batch of unknown size may take minutes.
            let scout = self.scout();
            let probes = scout.probes;
            return match (clock.n_poll, scout.due) {
                (0, Some(due)) => due
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
                // One that waited for its webhook until webhooks were found lost polls as it
                // would have from its submit without webhooks: its first poll is due, not
                // rationed. (The burst of submits that followed the canary's end had the
                // limiter wait, so a plan made then was rationed to the 10 s guess: the first
                // round of a drop whose webhooks never came waited 10 s for batches of 2 s.)
                (0, None) if clock.from_webhook_wait => {
                    drop(scout);
                    self.due_at_poll_min(elapsed)
                }
                (0, None) => {
                    drop(scout);
                    self.scout_first_delay(clock.images, elapsed)
                }
                (n_poll, _) => {
                    drop(scout);
                    self.backoff(n_poll.saturating_add(probes), elapsed)
                }
            };
        };
        if !clock.from_size && clock.timed && clock.late_polls > 0 && clock.small {
            // The pace alone was the estimate for a batch smaller than any that has ended (the
            // drop's last batches, which go out together), and it has proved short: a batch
            // works through at least one round of Claid's, which the pace of larger ones does
            // not show. One such batch polls on; the others wait for its end.
            if !self.scout_is(clock) {
                clock.waited = true;
                clock.waiting = true;
                return self.poll.max;
            }
            clock.waiting = false;
            if clock.n_poll == 0 && clock.waited {
                // It just took the role from a batch that ended: this one is likely done too.
                return Duration::from_millis(10);
            }
        } else {
            self.leave_scout(clock.id);
            if clock.waiting {
                // Its size has an estimate now: the wait for the scout is replaced.
                clock.waiting = false;
                clock.plan += 1;
            }
        }
        if clock.late_polls == 0 {
            expected
                .mul_f64(if self.budget_is_tight() { 1.0 } else { 0.9 })
                .max(self.poll.min)
                .min(self.poll.max)
                .saturating_sub(elapsed)
                .max(Duration::from_millis(10))
        } else {
            let factor = 1.5f64.powi(clock.late_polls.saturating_sub(1).min(20) as i32);
            expected
                .mul_f64(0.1 * factor)
                .max(self.poll.min)
                .min(self.poll.max)
        }
    }

    /// The first-round scout's first poll: [`Polls::first_delay`], but no later than a batch
    /// of its size would take if Claid did its images one after the other, each as long as
    /// the latest small batch (the canary) took. Claid works on several at once, so the
    /// scout rarely finds its batch still running; without this, while the limit bound the
    /// first round waited the 10 s guess after a canary of 1 s (60 URL images of 1 s, sent
    /// in batches of 4: the round took 10 s where 4 were enough).
    fn scout_first_delay(&self, images: usize, elapsed: Duration) -> Duration {
        let first = self.first_delay(Kind::Batch, elapsed);
        let Some(small) = self.small_batch_latency() else {
            return first;
        };
        let serial = small
            .mul_f64(images.max(1) as f64)
            .max(self.poll.min)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10));
        first.min(serial)
    }

    fn scout(&self) -> std::sync::MutexGuard<'_, Scout> {
        self.scout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The scout's wait before its poll number `n_poll + 1` (counting the first round's polls
    /// made in turn): [`Polls::first_delay`], then backing off by half from `poll.min`.
    fn backoff(&self, n_poll: u32, elapsed: Duration) -> Duration {
        if n_poll == 0 {
            return self.first_delay(Kind::Batch, elapsed);
        }
        let factor = 1.5f64.powi(n_poll.saturating_sub(1).min(20) as i32);
        self.poll.min.mul_f64(factor).min(self.poll.max)
    }

    /// When `clock`'s batch is the first round's scout, its last poll found it running and
    /// others wait: hands the role on (the next poll, at the backoff's next step, is another
    /// batch's) and wakes them. True if it did.
    fn hand_on(&self, clock: &BatchClock, elapsed: Duration) -> bool {
        let mut scout = self.scout();
        if scout.holder != Some(clock.id)
            || clock.n_poll == 0
            || !scout.waiting.iter().any(|id| *id != clock.id)
        {
            return false;
        }
        scout.probes = scout.probes.saturating_add(clock.n_poll);
        let step = self.backoff(scout.probes, elapsed);
        scout.due = Some(Instant::now() + step);
        scout.running_at = Some(elapsed);
        scout.holder = None;
        scout.last = Some(clock.id);
        drop(scout);
        self.changed();
        true
    }

    /// Since its batch's submit, when the first round's latest poll made in turn found its
    /// batch running.
    fn round_running_at(&self) -> Option<Duration> {
        self.scout().running_at
    }

    /// Whether `clock`'s batch is the scout, taking the free role (not back from the batch
    /// that just handed it on, while others wait).
    fn scout_is(&self, clock: &mut BatchClock) -> bool {
        let mut scout = self.scout();
        match scout.holder {
            Some(id) => id == clock.id,
            None => {
                if scout.last == Some(clock.id) && scout.waiting.iter().any(|id| *id != clock.id) {
                    return false;
                }
                scout.holder = Some(clock.id);
                scout.waiting.remove(&clock.id);
                clock.plan += 1;
                // Its backoff starts now, not from the checks made while it waited.
                clock.n_poll = 0;
                clock.inherited = clock.waited;
                true
            }
        }
    }

    /// Frees the scout role if batch `id` holds it (waking the batches waiting for it), and
    /// takes `id` off the first round's waiting list.
    fn leave_scout(&self, id: u64) {
        let mut scout = self.scout();
        scout.waiting.remove(&id);
        if scout.holder == Some(id) {
            scout.holder = None;
            // It ended (or has an estimate now): the next to take the role polls at once.
            scout.due = None;
            drop(scout);
            self.changed();
        }
    }

    /// The first poll's wait under a binding limit while too few durations are known:
    /// [`FIRST_GUESS`] for a batch; for a single task, a guess that first polls finding the
    /// task done bring down (each to 0.8 of its time, never below `poll.min`), and never
    /// below the longest duration seen.
    fn first_guess(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Batch => FIRST_GUESS,
            Kind::Single => {
                let guess = *self
                    .single_guess
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let longest = self.samples(kind).iter().max().copied();
                guess.max(longest.unwrap_or_default())
            }
        }
    }

    /// The wait until `poll.min` after a submit `elapsed` ago: a first poll not rationed.
    fn due_at_poll_min(&self, elapsed: Duration) -> Duration {
        self.poll
            .min
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// The wait before the first poll of a task submitted `elapsed` ago.
    pub fn first_delay(&self, kind: Kind, elapsed: Duration) -> Duration {
        let poll = &self.poll;
        if !self.budget_is_tight() {
            return self.due_at_poll_min(elapsed);
        }
        let expected = self
            .quantile(kind, 0.95)
            .unwrap_or_else(|| self.first_guess(kind));
        expected
            .max(poll.min)
            .min(poll.max)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// With webhooks on, the wait before first polling a task submitted at `submitted_at_ms`
    /// whose webhook has not come: at once for a task submitted before this start (its
    /// announcement may have gone out while the daemon was down: every task waiting for one is
    /// polled once at every start), else [`Polls::overdue_after`].
    pub fn webhook_wait(&self, kind: Kind, submitted_at_ms: u64, fallback: Duration) -> Duration {
        if submitted_at_ms < self.started_ms {
            return Duration::from_millis(10);
        }
        let elapsed = Duration::from_millis(crate::store::now_ms().saturating_sub(submitted_at_ms));
        self.overdue_after(kind, elapsed, fallback)
    }

    /// [`Polls::webhook_wait`] for a batch of `images` images. A batch's duration follows its
    /// size, so durations of other sizes say little: overdue at its size's estimate, half again,
    /// plus a second; with no estimate, [`FIRST_GUESS`] while no batch has ended yet (the
    /// canary: a lost announcement of it holds the whole drop that long), else
    /// (the first round's batches) twice the longest batch seen as if its images had been done
    /// one after the other at its pace, plus a second: generous, so a webhook that comes in
    /// time costs no poll, but a first round whose webhooks are lost is not held for the whole
    /// `fallback` (20 images of 1 s waited 2 minutes); and at most [`FIRST_ROUND_SHARE`] of
    /// `fallback`, since nothing predicts a size not seen yet (webhooks that stopped after the
    /// canary's held every first-round batch of 64 for the whole two minutes).
    pub fn batch_webhook_wait(
        &self,
        images: usize,
        submitted_at_ms: u64,
        fallback: Duration,
    ) -> Duration {
        if submitted_at_ms < self.started_ms {
            return Duration::from_millis(10);
        }
        let elapsed = Duration::from_millis(crate::store::now_ms().saturating_sub(submitted_at_ms));
        let overdue = match self.batch_expected(images) {
            Some(expected) => expected.mul_f64(1.5) + Duration::from_secs(1),
            None => match self.samples(Kind::Batch).iter().max() {
                // The canary, before anything is known: every other batch waits for it, so a
                // lost announcement of it held the whole drop for `poll.max` (30 s).
                None => FIRST_GUESS,
                Some(longest) => {
                    let scale = images.max(1) as f64 / super::batch::CANARY_IMAGES as f64;
                    (longest.mul_f64(2.0 * scale.max(1.0)) + Duration::from_secs(1))
                        .min(fallback.mul_f64(FIRST_ROUND_SHARE))
                }
            },
        };
        overdue
            .max(self.poll.min)
            .min(fallback)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// With webhooks on, the wait before polling a task whose webhook has not come: until it
    /// is overdue, i.e. later than the observed spread of task durations (their 0.95
    /// quantile, half again, plus a second; twice the longest while fewer than
    /// [`MIN_SAMPLES`] are known; [`FIRST_GUESS`] while none is), at least `poll.min` and at
    /// most `fallback`. (Waiting for `fallback` while nothing was known held a whole drop for
    /// two minutes when the canary's webhook was lost; waiting `poll.max` held the first
    /// tasks of a run whose webhooks never come 30 s before a poll found it out. Only the
    /// tasks sent before any duration is known wait this guess: a few seconds' worth.)
    pub fn overdue_after(&self, kind: Kind, elapsed: Duration, fallback: Duration) -> Duration {
        let spread = match self.quantile(kind, 0.95) {
            Some(q) => q.mul_f64(1.5) + Duration::from_secs(1),
            None => self
                .samples(kind)
                .iter()
                .max()
                .map_or(FIRST_GUESS, |longest| {
                    longest.mul_f64(2.0) + Duration::from_secs(1)
                }),
        };
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
    /// [`PRESSURE_MEMORY`]: then every poll costs a submit, and polls are rationed. Timed
    /// from the wait itself: timed from when it was first noticed here, a wait 40 s old
    /// rationed the first poll of an image dropped alone on an idle daemon (10 s for a task
    /// of 1 s).
    fn budget_is_tight(&self) -> bool {
        self.client
            .last_limiter_pressure()
            .is_some_and(|at| at.elapsed() < PRESSURE_MEMORY)
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

    /// Polls are rationed for [`PRESSURE_MEMORY`] after the limiter made a call wait, timed
    /// from the wait: a wait long past does not ration the first poll of an image dropped
    /// later on an idle daemon (timed from when it was first noticed, it did: 10 s for a
    /// task of 1 s).
    #[tokio::test(start_paused = true)]
    async fn polls_are_rationed_for_a_while_after_a_limiter_wait_timed_from_the_wait() {
        let polls = new_polls();
        assert_eq!(polls.first_delay(Kind::Single, Duration::ZERO), secs(1));
        polls.client.note_pressure_at(Instant::now());
        assert_eq!(
            polls.first_delay(Kind::Single, Duration::ZERO),
            FIRST_GUESS,
            "the limit binds: the first poll waits for the task's likely end"
        );
        tokio::time::advance(PRESSURE_MEMORY + secs(1)).await;
        assert_eq!(polls.first_delay(Kind::Single, Duration::ZERO), secs(1));

        // A wait 40 s ago, never looked at until now: no rationing.
        let fresh = new_polls();
        fresh.client.note_pressure_at(Instant::now());
        tokio::time::advance(secs(40)).await;
        assert_eq!(fresh.first_delay(Kind::Single, Duration::ZERO), secs(1));
    }

    /// Under a binding limit, single tasks found done at their first poll bring the first
    /// guess down (0.8 of that poll's time each), to `poll.min` at the least and never below
    /// the longest duration seen, while less than a quarter of the minute's quota is used; a
    /// batch keeps its guess.
    #[tokio::test(start_paused = true)]
    async fn first_polls_that_find_tasks_done_bring_the_first_guess_down() {
        let polls = new_polls();
        polls.client.note_pressure_at(Instant::now());
        let first = |polls: &Polls| polls.first_delay(Kind::Single, Duration::ZERO);
        assert_eq!(first(&polls), FIRST_GUESS);
        let done_at_first = Seen::Poll { pending_at: None };
        polls.record(Kind::Single, first(&polls), done_at_first);
        assert_eq!(first(&polls), secs(8));
        polls.record(Kind::Single, first(&polls), done_at_first);
        assert_eq!(first(&polls), ms(6400));
        // A first poll that came late (30 s) says nothing new.
        polls.record(Kind::Single, secs(30), done_at_first);
        assert_eq!(first(&polls), ms(6400));
        for _ in 0..20 {
            polls.record(Kind::Single, first(&polls), done_at_first);
        }
        assert_eq!(first(&polls), secs(1), "down to poll.min");
        // A task seen running before it ended: never below that duration.
        polls.record(
            Kind::Single,
            secs(4),
            Seen::Poll {
                pending_at: Some(secs(2)),
            },
        );
        assert_eq!(first(&polls), secs(3));
        assert_eq!(polls.first_delay(Kind::Batch, Duration::ZERO), FIRST_GUESS);

        // Once a quarter of the minute's quota is spent, the guess stays: a first poll that
        // finds its task running would cost a request a drop the size of the quota needs.
        let busy = new_polls();
        busy.client.take_slots(30).await;
        busy.client.note_pressure_at(Instant::now());
        busy.record(Kind::Single, FIRST_GUESS, done_at_first);
        assert_eq!(first(&busy), FIRST_GUESS, "30 of 120 used in the minute");
        tokio::time::advance(secs(61)).await;
        busy.client.note_pressure_at(Instant::now());
        busy.record(Kind::Single, FIRST_GUESS, done_at_first);
        assert_eq!(
            first(&busy),
            secs(8),
            "a minute later, the quota has room again"
        );
    }

    /// While the limit binds, the first round's scout polls no later than its batch would
    /// take at the canary's latency per image, one after the other (else the 10 s guess:
    /// nothing known, or a canary slower than that).
    #[tokio::test(start_paused = true)]
    async fn the_first_rounds_scout_polls_by_the_canarys_latency_per_image_at_the_latest() {
        let polls = new_polls();
        polls.client.note_pressure_at(Instant::now());
        let mut before = polls.batch_clock(1, 4, true);
        assert_eq!(
            polls.batch_delay(&mut before, Duration::ZERO),
            FIRST_GUESS,
            "no batch ended yet"
        );
        drop(before);
        // The canary (2 images) ended 1.2 s after its submit, seen running at 1 s.
        polls.record_batch(
            2,
            ms(1200),
            Seen::Poll {
                pending_at: Some(secs(1)),
            },
            false,
        );
        let mut scout = polls.batch_clock(2, 4, true);
        assert_eq!(polls.batch_delay(&mut scout, Duration::ZERO), ms(4400));
        drop(scout);
        let mut large = polls.batch_clock(3, 16, true);
        assert_eq!(
            polls.batch_delay(&mut large, Duration::ZERO),
            FIRST_GUESS,
            "16 images at 1.1 s each: the guess comes first"
        );
    }

    #[test]
    fn a_batch_longer_than_poll_max_is_told_once() {
        let polls = new_polls();
        // poll.max is 30 s: a batch of 40 s seen (running at 38 s, done at 42 s) is within
        // half again of it, one of 50 s is not.
        polls.record_batch(
            64,
            secs(42),
            Seen::Poll {
                pending_at: Some(secs(38)),
            },
            false,
        );
        assert!(!polls.told_max.load(std::sync::atomic::Ordering::Relaxed));
        polls.record_batch(
            64,
            secs(52),
            Seen::Poll {
                pending_at: Some(secs(48)),
            },
            false,
        );
        assert!(polls.told_max.load(std::sync::atomic::Ordering::Relaxed));
    }

    fn new_polls() -> Arc<Polls> {
        let client = Client::new(crate::claid::ClientConfig {
            base_url: "http://127.0.0.1:9/v1".to_owned(),
            api_key: "test".to_owned(),
            requests_per_second: std::num::NonZeroU32::new(4).expect("4"),
            requests_per_minute: std::num::NonZeroU32::new(120).expect("120"),
            request_timeout: secs(5),
            upload_timeout: secs(5),
            max_download_bytes: 1 << 20,
        })
        .expect("client");
        Arc::new(Polls::new(
            PollConfig {
                min: secs(1),
                max: secs(30),
                give_up_after: secs(7200),
            },
            client,
        ))
    }

    /// `give_up_after` counts from a task's submit, or from this daemon's start for a task
    /// submitted before it (the hours the daemon was down are not Claid's).
    #[test]
    fn a_task_submitted_before_the_start_is_watched_from_the_start() {
        let polls = new_polls();
        let start = polls.started_ms;
        assert_eq!(polls.watched_since(start - 3 * 3_600_000), start);
        assert_eq!(polls.watched_since(start + 5), start + 5);
        let resumed = polls.watched_since(crate::store::now_ms() - 3 * 3_600_000);
        assert!(
            crate::pipeline::job::overdue(
                resumed,
                secs(7200),
                &crate::claid::wire::TaskStatus::Processing
            )
            .is_none(),
            "submitted 3 h ago, before this start: not overdue"
        );
        assert!(
            crate::pipeline::job::overdue(
                start - 3 * 3_600_000,
                secs(7200),
                &crate::claid::wire::TaskStatus::Processing
            )
            .is_some(),
            "counted from its submit it would be"
        );
    }

    #[test]
    fn one_batch_scouts_a_size_without_an_estimate_and_the_others_wait_for_it() {
        let polls = new_polls();
        let mut scout = polls.batch_clock(1, 64, true);
        let mut other = polls.batch_clock(2, 64, true);
        assert_eq!(polls.batch_delay(&mut scout, Duration::ZERO), secs(1));
        assert_eq!(
            polls.batch_delay(&mut other, Duration::ZERO),
            secs(30),
            "waits for the scout, checking at poll.max"
        );
        // The scout's poll finds its batch running: the role goes round to the other batch,
        // whose poll comes at the backoff's next step (poll.min); the first waits, and does
        // not take the role back while the other waits.
        scout.running();
        let plan = other.plan();
        assert_eq!(polls.batch_delay(&mut scout, secs(1)), secs(30));
        let next = polls.batch_delay(&mut other, secs(1));
        assert!(next > ms(900) && next <= secs(1), "{next:?}");
        assert_ne!(other.plan(), plan, "its wait at poll.max is replaced");
        assert_eq!(polls.batch_delay(&mut scout, secs(1)), secs(30));
        // Running too: the role goes back, the backoff grown by half.
        other.running();
        assert_eq!(polls.batch_delay(&mut other, secs(2)), secs(30));
        let next = polls.batch_delay(&mut scout, secs(2));
        assert!(next > ms(1400) && next <= ms(1500), "{next:?}");
        // A resumed batch is not timed and never waits for the scout.
        let mut resumed = polls.batch_clock(3, 64, false);
        assert_eq!(polls.batch_delay(&mut resumed, secs(100)), ms(10));
        // The scout goes (its batch ended without a sample): the role comes free, and the
        // next batch to plan takes it and polls at once.
        let plan = other.plan();
        drop(scout);
        assert_eq!(polls.batch_delay(&mut other, secs(5)), ms(10));
        assert_ne!(other.plan(), plan, "a wait planned before is replaced");
        // Alone, it goes on backing off from the round's polls (four so far: 1.5³ s).
        other.running();
        other.running();
        assert_eq!(polls.batch_delay(&mut other, secs(8)), ms(3375));
    }

    #[test]
    fn a_slow_scout_does_not_hold_the_first_round_back() {
        // Three batches of the first round: 1 is slow, 2 and 3 end at about 14 s.
        let polls = new_polls();
        let mut clocks: Vec<BatchClock> =
            (1..=3).map(|id| polls.batch_clock(id, 32, true)).collect();
        for clock in &mut clocks {
            let _ = polls.batch_delay(clock, Duration::ZERO);
        }
        // Polls at 1, 2, 3.5, 5.75, 9.1 and 14.2 s find a batch running: each time the role
        // goes round to the next batch. (The batch that polled plans first: it hands the role
        // on and wakes the others, which plan again.)
        let mut at = Duration::ZERO;
        let mut last = 0;
        let mut polled = Vec::new();
        let next_poll = |clocks: &mut Vec<BatchClock>, at: Duration, last: usize| {
            let n = clocks.len();
            (0..n)
                .map(|k| (last + k) % n)
                .map(|i| (i, polls.batch_delay(&mut clocks[i], at)))
                .min_by_key(|(_, delay)| *delay)
                .expect("batches")
        };
        for _ in 0..6 {
            let (i, delay) = next_poll(&mut clocks, at, last);
            at += delay;
            polled.push(i);
            clocks[i].running();
            last = i;
        }
        assert!(
            polled.windows(2).all(|w| w[0] != w[1]),
            "never the same batch twice in a row: {polled:?}"
        );
        // At about 21.8 s the next in turn is found done: it ended after 14.2 s (the round's
        // latest poll that found one running), so it counts as the middle of the two.
        let (i, delay) = next_poll(&mut clocks, at, last);
        at += delay;
        assert!(at > secs(21) && at < secs(22), "{at:?}");
        assert_ne!(i, last);
        let running_at = polls.round_running_at().expect("a poll found one running");
        clocks.remove(i).ended(at, Seen::Poll { pending_at: None });
        let pace = polls.batch_pace().expect("a sample");
        let expected = (running_at + (at - running_at) / 2) / 32;
        assert!(pace.abs_diff(expected) < ms(2), "{pace:?} vs {expected:?}");
        // The others now have an estimate for their size and are polled at once.
        for clock in &mut clocks {
            assert_eq!(polls.batch_delay(clock, at), ms(10));
        }
    }

    #[test]
    fn a_schedule_starts_again_from_an_estimate_that_appears_while_it_backs_off() {
        let polls = new_polls();
        let mut scout = polls.batch_clock(1, 64, true);
        let mut other = polls.batch_clock(2, 64, true);
        assert_eq!(polls.batch_delay(&mut scout, Duration::ZERO), secs(1));
        for _ in 0..7 {
            scout.running();
        }
        // 1.5^6 × poll.min: the backoff grown while nothing was known.
        let backed_off = polls.batch_delay(&mut scout, secs(27));
        assert!(backed_off > secs(11), "{backed_off:?}");
        let mut changes = polls.batch_changes();
        let plan = scout.plan();
        // Another batch of 64 ended at about 26.5 s.
        polls.record_batch(
            64,
            secs(27),
            Seen::Poll {
                pending_at: Some(secs(26)),
            },
            false,
        );
        assert!(changes.has_changed().expect("open"), "pollers are woken");
        changes.mark_unchanged();
        // Past 0.9 of the estimate: poll now, then a tenth of it later.
        assert_eq!(polls.batch_delay(&mut scout, secs(28)), ms(10));
        assert_ne!(scout.plan(), plan);
        scout.running();
        let step = polls.batch_delay(&mut scout, secs(28));
        assert!(
            step > ms(2600) && step < ms(2700),
            "a tenth of 26.5 s, not the grown backoff: {step:?}"
        );
        // The batch that waited for the scout is polled at 0.9 of the estimate.
        let due = polls.batch_delay(&mut other, secs(10));
        assert!(due > secs(13) && due < secs(14), "{due:?}");
        // A small move of the estimate does not start the schedule again.
        let plan = scout.plan();
        polls.record_batch(
            64,
            secs(28),
            Seen::Poll {
                pending_at: Some(secs(27)),
            },
            false,
        );
        let _ = polls.batch_delay(&mut scout, secs(29));
        assert_eq!(scout.plan(), plan);
    }

    #[test]
    fn a_batch_that_inherits_the_scout_role_and_finds_its_batch_done_gives_the_pace() {
        // A check at poll.max that finds a batch done while the scout runs is no sample: the
        // batch may have ended long before, and the scout gives the sample.
        let polls = new_polls();
        let mut scout = polls.batch_clock(1, 64, true);
        let mut other = polls.batch_clock(2, 64, true);
        let _ = polls.batch_delay(&mut scout, Duration::ZERO);
        assert_eq!(polls.batch_delay(&mut other, Duration::ZERO), secs(30));
        other.ended(secs(32), Seen::Poll { pending_at: None });
        assert_eq!(
            polls.batch_pace(),
            None,
            "a 32 s bound for a batch of unknown length"
        );
        // A batch that waited for the scout, then took the role when it went and found its
        // batch done at its first poll, is a sample too (else a round that ends before the
        // scout's first poll would never give the pace).
        let chain = new_polls();
        let mut first = chain.batch_clock(1, 40, true);
        let mut second = chain.batch_clock(2, 40, true);
        assert_eq!(chain.batch_delay(&mut first, Duration::ZERO), secs(1));
        assert_eq!(chain.batch_delay(&mut second, Duration::ZERO), secs(30));
        drop(first);
        assert_eq!(
            chain.batch_delay(&mut second, secs(12)),
            ms(10),
            "now the scout"
        );
        second.ended(secs(12), Seen::Poll { pending_at: None });
        assert_eq!(chain.batch_pace(), Some(ms(300)), "12 s / 40 images");
        // The scout itself, found done at its first poll with nothing known, says nothing.
        let fresh = new_polls();
        let mut scout = fresh.batch_clock(1, 64, true);
        let _ = fresh.batch_delay(&mut scout, Duration::ZERO);
        scout.ended(secs(2), Seen::Poll { pending_at: None });
        assert_eq!(fresh.batch_pace(), None);
    }

    #[test]
    fn claids_parallelism_is_one_images_latency_over_the_pace() {
        let polls = new_polls();
        assert_eq!(polls.batch_parallelism(), None);
        // The canary: 2 images side by side, seen running at 2 s and done at 3 s.
        polls.record_batch(
            2,
            secs(3),
            Seen::Poll {
                pending_at: Some(secs(2)),
            },
            false,
        );
        assert_eq!(polls.batch_parallelism(), None, "no pace yet");
        polls.record_batch(
            64,
            secs(32),
            Seen::Poll {
                pending_at: Some(secs(32)),
            },
            false,
        );
        // 2.5 s per image, 0.5 s per image inside a batch: about 5 at once.
        let at_once = polls.batch_parallelism().expect("known");
        assert!((at_once - 5.0).abs() < 1e-9, "{at_once}");
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Records batches of `images` images that ended after `durations` seconds, as webhooks
    /// would announce them (exact durations).
    fn ended(polls: &Polls, images: usize, durations: &[f64]) {
        for &d in durations {
            polls.record_batch(images, Duration::from_secs_f64(d), Seen::Webhook, false);
        }
    }

    #[test]
    fn an_estimate_set_late_comes_down_with_batches_done_at_first_poll_in_a_row() {
        // A slow scout set 40 s for batches that take 10 s: each later one is found done at
        // its first poll (0.9 of the estimate); from the second in a row on, each counts as
        // 0.8 of its poll's time.
        let polls = new_polls();
        ended(&polls, 32, &[40.0, 40.0]);
        for _ in 0..20 {
            let mut clock = polls.batch_clock(2, 32, true);
            let first = polls.batch_delay(&mut clock, Duration::ZERO);
            assert!(first >= secs(10), "a batch of 10 s is done at {first:?}");
            clock.ended(first, Seen::Poll { pending_at: None });
        }
        // Counted at their polls' times, twenty would leave it at 29.2 s.
        let estimate = polls.batch_expected(32).expect("estimate");
        assert!(estimate < secs(20), "{estimate:?}");

        // Once a batch is seen running, the next one done at its first poll counts at its
        // poll's time.
        let polls = new_polls();
        ended(&polls, 32, &[10.0, 10.0, 10.0]);
        let clock = polls.batch_clock(3, 32, true);
        clock.ended(secs(9), Seen::Poll { pending_at: None });
        let clock = polls.batch_clock(4, 32, true);
        clock.ended(secs(9), Seen::Poll { pending_at: None });
        assert_eq!(
            polls
                .sized()
                .0
                .iter()
                .map(|(_, took)| *took)
                .collect::<Vec<_>>(),
            [secs(10), secs(10), secs(10), secs(9), ms(7200)],
            "the first at 9 s, the second in a row at 0.8 of it"
        );
        polls.record_batch(
            32,
            secs(12),
            Seen::Poll {
                pending_at: Some(secs(10)),
            },
            false,
        );
        let clock = polls.batch_clock(5, 32, true);
        clock.ended(secs(9), Seen::Poll { pending_at: None });
        assert_eq!(polls.sized().0.back().map(|(_, took)| *took), Some(secs(9)));
    }

    #[test]
    fn the_drops_last_batches_poll_one_at_a_time_once_the_pace_proved_short() {
        let polls = new_polls();
        // Batches of 40 took 20 s: 0.5 s per image.
        ended(&polls, 40, &[20.0, 20.0, 20.0]);
        let (mut a, mut b, mut c) = (
            polls.batch_clock(1, 10, true),
            polls.batch_clock(2, 10, true),
            polls.batch_clock(3, 10, true),
        );
        // Three batches of 10 are expected at 5 s from the pace: each first polled at 4.5 s.
        for clock in [&mut a, &mut b, &mut c] {
            assert_eq!(polls.batch_delay(clock, Duration::ZERO), ms(4500));
            clock.running();
        }
        // All three still running: the first to plan polls on (a tenth of 5 s, at least
        // poll.min), the others wait for its end (checking at poll.max).
        assert_eq!(polls.batch_delay(&mut a, ms(4500)), secs(1));
        assert_eq!(polls.batch_delay(&mut b, ms(4500)), secs(30));
        assert_eq!(polls.batch_delay(&mut c, ms(4500)), secs(30));
        // It ends at about 8.5 s; the next takes its place and polls at once.
        a.ended(
            secs(9),
            Seen::Poll {
                pending_at: Some(secs(8)),
            },
        );
        drop(a);
        assert_eq!(polls.batch_delay(&mut b, secs(9)), ms(10));
        assert_eq!(polls.batch_delay(&mut c, secs(9)), secs(30));
        // Found done: two batches of 10 have ended, so the last one follows their estimate
        // (9 s, first poll at 0.9 of it: now).
        b.ended(secs(9), Seen::Poll { pending_at: None });
        drop(b);
        let plan = c.plan();
        assert_eq!(polls.batch_delay(&mut c, ms(9100)), ms(10));
        assert_ne!(c.plan(), plan, "its wait at poll.max is replaced");

        // A batch larger than those seen, with the pace alone as its estimate (64 × 0.5 s),
        // polls on its own, a tenth of it apart.
        let mut large = polls.batch_clock(5, 64, true);
        assert_eq!(polls.batch_delay(&mut large, Duration::ZERO), ms(28_800));
        large.running();
        assert_eq!(polls.batch_delay(&mut large, ms(28_800)), ms(3200));
    }

    #[test]
    fn a_webhook_is_overdue_soon_after_the_durations_seen_and_at_once_for_a_resumed_task() {
        let polls = new_polls();
        let fallback = secs(120);
        // Nothing seen yet: the first guess, neither `poll.max` nor the whole fallback.
        assert_eq!(
            polls.overdue_after(Kind::Single, Duration::ZERO, fallback),
            FIRST_GUESS
        );
        // A few seen: twice the longest, plus a second.
        for took in [2, 4, 3] {
            polls.record(Kind::Single, secs(took), Seen::Webhook);
        }
        assert_eq!(
            polls.overdue_after(Kind::Single, secs(1), fallback),
            secs(8)
        );
        // Enough: the 0.95 quantile, half again, plus a second.
        for _ in 0..MIN_SAMPLES {
            polls.record(Kind::Single, secs(2), Seen::Webhook);
        }
        assert_eq!(
            polls.overdue_after(Kind::Single, Duration::ZERO, fallback),
            secs(7)
        );
        // A task submitted before this start is polled at once; one submitted now waits.
        let now = crate::store::now_ms();
        assert_eq!(
            polls.webhook_wait(Kind::Single, polls.started_ms - 1, fallback),
            ms(10)
        );
        assert!(polls.webhook_wait(Kind::Single, now, fallback) > secs(6));

        // A batch: `FIRST_GUESS` while no batch has ended (the canary, which every other batch
        // waits for: `poll.max` held a drop 30 s when its announcement was lost); then, for a
        // size with no estimate (the first round), at most a third of the fallback; then its size's estimate,
        // half again, + 1 s.
        let batches = new_polls();
        let at = |polls: &Polls, images| {
            polls.batch_webhook_wait(images, crate::store::now_ms(), fallback)
        };
        assert!(at(&batches, 2) > secs(9) && at(&batches, 2) <= FIRST_GUESS);
        ended(&batches, 2, &[3.0]);
        let due = at(&batches, 64);
        assert!(
            due > secs(39) && due <= secs(40),
            "a large first-round batch waits for its webhook a third of the fallback: {due:?}"
        );
        // A small one is overdue at twice the canary's pace for its images, plus a second.
        let due = at(&batches, 4);
        assert!(due > secs(12) && due <= secs(13), "{due:?}");
        ended(&batches, 64, &[20.0, 20.0]);
        let due = at(&batches, 64);
        assert!(due > secs(30) && due <= secs(31), "{due:?}");
    }
}
