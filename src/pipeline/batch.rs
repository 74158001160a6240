//! Batches (`api.batch`): jobs with URL inputs and identical request bodies go to Claid in one
//! `POST /image/edit/batch` (Claid counts requests, not images), with the crash safety of
//! single tasks: every job of a batch is marked submitting in one durable write before the
//! request, and the batch id is on disk on every job before anything else happens. Results are
//! matched to jobs by output file name; a result that matches no job, or several, switches
//! batching off for the rest of the run and holds the jobs it leaves unexplained in doubt
//! (Claid may have billed them: they are never resubmitted automatically). The first batch
//! after start is a canary of at most two images; later ones hold at most a quarter of
//! `max_in_flight` (an eighth until Claid's pace is known, when results are polled), fewer once
//! Claid's pace inside a batch shows it works on few of a batch's images at once
//! ([`paced_size`]). When the queue runs dry, its last jobs go in batches of about what Claid
//! works on at once ([`tail_batches`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::claid::Client;
use crate::claid::wire::{
    self, BatchEditRequest, BatchInput, BatchTask, TaskRef, TaskStatus, TaskUpdate,
};
use crate::codes::FailureCode;
use crate::config::{BatchConfig, InDoubtPolicy, PollConfig};
use crate::pipeline::Settings;
use crate::pipeline::dispatch::{self, Dispatch, LostBatchJob};
use crate::pipeline::finisher;
use crate::pipeline::health::HealthState;
use crate::pipeline::health::{HELD_FOR, Hold, PollHold, Refusal};
use crate::pipeline::job::{JobOutcome, Runner, failure_of, input_of};
use crate::pipeline::polls::{BatchClock, Polls, Seen};
use crate::pipeline::submitter::Queue;
use crate::retry::{self, Decision, Failure, GiveUp};
use crate::store::{JobId, JobState, JobV1, ManifestId, Store, now_ms};

/// How long a batch found ended by a poll gives its webhook to come, at least, before it
/// counts as one whose webhook did not come (`Dispatch::polled_final`): a poll aimed at a
/// batch's end (or made at its due time just after it ended) beats its webhook by a moment
/// as often as not, and counted at once, every batch of a slow spell kept webhooks "lossy"
/// (polled on the schedule: requests every webhook would have saved), and four in a row told
/// them stopped, while they came.
const WEBHOOK_GRACE: Duration = Duration::from_secs(2);

/// The images of the first batch after a start, at most.
pub const CANARY_IMAGES: usize = 2;

/// A batch holds at most this share of `max_in_flight` (a quarter: 64 images of 256, 8 of the
/// default 32), so the images at Claid are spread over at least this many batches: Claid returns
/// a batch's results only when its last image is done and does not say how many images of one
/// batch it works on at once. A larger share (an eighth) was measured: at 8 images at once per
/// batch it delivers 1.9× the images/s at 1.3× the requests per image (docs/benchmark.md), and at
/// the default `max_in_flight` it would halve every batch, so more of the rate limit goes to
/// batch submits and polls. This is the cap; once Claid's pace inside a batch is known,
/// [`paced_size`] may choose smaller batches.
pub const MAX_IN_FLIGHT_SHARE: usize = 4;
/// Until Claid's pace is known (the first batches after the canary), a batch whose results are
/// polled holds at most this share of `max_in_flight` (an eighth), and at least
/// [`MIN_PACED_IMAGES`] within the cap: before the pace is known its polls cannot be aimed, and
/// a batch half the size ends twice as soon where Claid works on few of a batch's images at
/// once. With webhooks delivered (one has come in this run, e.g. the canary's), the first
/// batches hold the cap: each is announced the moment it ends (no poll to aim), and a batch
/// costs its one submit: measured at 8 images at once per batch, 0.025 requests/image with the
/// cap against 0.032 with an eighth (over the issue's 0.03 for batches with webhooks), for
/// 10.3 against 11.3 images/s (docs/benchmark.md, 2026-12-07). Webhooks configured but not
/// arriving leave batches polled: those keep the eighth.
pub const FIRST_WAVE_SHARE: usize = 8;
/// Batch submits and polls are planned to use at most this share of the sustained request
/// rate (`Client::sustained_rate`), leaving the rest for single tasks, uploads and retries.
pub const BATCH_RATE_SHARE: f64 = 0.5;
/// What one batch is planned to cost in requests: its submit and about two polls (the first
/// at 0.9 of the expected duration, one more a tenth later; `polls`).
pub const REQUESTS_PER_BATCH: f64 = 3.0;
/// Batches shrink to Claid's pace down to this many images (or the cap, if smaller): below it a
/// batch's submit and polls cost more of the rate limit than the earlier results save.
pub const MIN_PACED_IMAGES: usize = 8;
/// Batch sizes remembered for `/status`.
const RECENT_SIZES: usize = 16;

/// Whether batching is on for this run, and what it did (for `/status` and metrics).
#[derive(Debug)]
pub struct Batching {
    pub config: BatchConfig,
    enabled: AtomicBool,
    /// The canary (the first batch) was sent, and has not ended unanswered.
    canary_sent: AtomicBool,
    /// The canary's results are in: larger batches may go.
    canary_settled: AtomicBool,
    /// Bumped when a canary is dispatched: a batch's end settles the canary only when it was
    /// sent in the current round (see [`Batching::dispatched`]).
    canary_round: AtomicU64,
    /// Wakes the submitter when the canary settles.
    pub canary_wake: tokio::sync::Notify,
    /// Why the safety valve switched batching off.
    off_reason: Mutex<Option<String>>,
    recent_sizes: Mutex<VecDeque<usize>>,
    /// The size Claid's pace last gave (0: not known yet), for `/status`.
    paced: AtomicUsize,
    /// The paced size last logged (0: none yet).
    paced_logged: AtomicUsize,
    /// Jobs that go alone: their batch was refused as a whole, each gets its own verdict.
    singles: Mutex<HashSet<JobId>>,
    pub batches: AtomicU64,
    pub images: AtomicU64,
    /// The Claid connector names of the config's `storages`: their `storage://` inputs (and
    /// staged inputs) go in batches; other `storage://` inputs go one by one.
    connectors: HashSet<String>,
}

/// Batch members whose replaced objects are asked at once before a batch is sent.
const REPLACED_OBJECT_CHECKS: usize = 16;

/// Storage inputs of one batch looked at at once before it is sent
/// ([`Runner::check_storage_input`]).
const INPUT_CHECKS: usize = 16;

/// What `/status` shows about batching.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchingView {
    pub enabled: bool,
    pub max_images: usize,
    /// Why batching was switched off in this run, if it was.
    pub off_reason: Option<String>,
    /// Sizes of the most recent batches, newest last.
    pub recent_sizes: Vec<usize>,
    /// The size batches aim for from Claid's pace inside a batch, once it is known.
    #[serde(default)]
    pub paced_size: Option<usize>,
    pub batches: u64,
    pub images: u64,
}

impl Batching {
    pub fn new(config: BatchConfig) -> Batching {
        Batching {
            enabled: AtomicBool::new(config.max_images > 1),
            config,
            canary_sent: AtomicBool::new(false),
            canary_settled: AtomicBool::new(false),
            canary_round: AtomicU64::new(0),
            canary_wake: tokio::sync::Notify::new(),
            off_reason: Mutex::new(None),
            recent_sizes: Mutex::new(VecDeque::new()),
            paced: AtomicUsize::new(0),
            paced_logged: AtomicUsize::new(0),
            singles: Mutex::new(HashSet::new()),
            batches: AtomicU64::new(0),
            images: AtomicU64::new(0),
            connectors: HashSet::new(),
        }
    }

    /// Batches `storage://` inputs of these connectors (the config's storages) too.
    pub fn with_connectors(mut self, connectors: impl IntoIterator<Item = String>) -> Batching {
        self.connectors = connectors.into_iter().collect();
        self
    }

    /// An input a batch may take (see [`batchable_input`]).
    fn batchable_input(&self, input: &str) -> bool {
        batchable_input(input, &self.connectors)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether a job may go in a batch: an `http(s)` input or a `storage://` input of a
    /// configured storage (a staged local input is one), batching on, not sent alone; a
    /// storage output only when its file name is the one Claid gives a batch output (the
    /// input's, with the format's extension).
    pub fn takes(&self, id: JobId, job: &JobV1) -> bool {
        self.enabled()
            && (!job.local || job.staged.is_some())
            && self.batchable_input(input_of(job))
            && named_as_batch_output(job)
            && !self
                .singles
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&id)
    }

    /// Whether a batch may go now: not while the canary is at Claid (a failure to match its
    /// results must not put more images at risk).
    pub fn may_send(&self) -> bool {
        !self.canary_sent.load(Ordering::Relaxed) || self.canary_settled.load(Ordering::Relaxed)
    }

    /// Whether the canary's results are in (batches are sized by [`Batching::target_size`]
    /// from then on).
    pub fn canary_settled(&self) -> bool {
        self.canary_settled.load(Ordering::Relaxed)
    }

    /// Whether a canary is at Claid or answered (no canary goes next).
    pub fn canary_sent(&self) -> bool {
        self.canary_sent.load(Ordering::Relaxed)
    }

    /// A batch task ended, `answered` when its results came and were matched: if it was the
    /// canary, larger batches may go. A canary that ended without its results (refused:
    /// submitting paused on a 401 or 402, the batch refused as a whole, its task lost) tested
    /// nothing, so the next batch is a canary again. (It was counted as settled, and after a
    /// pause at the first batch the whole drop went in full batches untested: 20 of 20 images
    /// held in doubt where Claid named results otherwise, instead of the canary's 2.)
    ///
    /// A batch of an earlier round (a canary whose answer was lost, given up on for the round
    /// by [`Batching::canary_unanswered`]) that ends without its results settles nothing: the
    /// round's own canary does. One whose results came and were matched (adopted from its
    /// webhook) tested Claid's naming as well as the round's own canary would: it settles the
    /// round (its replacement, a canary of two more images, held every full batch until its
    /// own results came).
    fn settled(&self, answered: bool, round: u64) {
        let current = self.canary_round.load(Ordering::Relaxed);
        // Answered late (a round given up on, this one or an earlier): settles the round, its
        // canary out or not sent yet (no other canary then goes).
        let late_answer = answered && round <= current;
        if self.canary_settled.load(Ordering::Relaxed)
            || (!late_answer && (!self.canary_sent.load(Ordering::Relaxed) || round != current))
        {
            return;
        }
        if answered {
            self.canary_sent.store(true, Ordering::Relaxed);
            self.canary_settled.store(true, Ordering::Relaxed);
        } else {
            self.canary_sent.store(false, Ordering::Relaxed);
        }
        self.canary_wake.notify_waiters();
    }

    /// The size the next batch aims for: the canary first; then at most a
    /// [`MAX_IN_FLIGHT_SHARE`]th of `max_in_flight` and at most `max_images` (the cap); once
    /// Claid's `pace` inside a batch is known (time per image of recent batches), the size
    /// [`paced_size`] gives for it and the sustained `request_rate`. Until then, batches whose
    /// results are polled hold an eighth; with `webhooks` (delivered in this run) they hold the
    /// cap (see [`FIRST_WAVE_SHARE`]).
    pub fn target_size(
        &self,
        max_in_flight: usize,
        pace: Option<Duration>,
        request_rate: f64,
        webhooks: bool,
    ) -> usize {
        if !self.canary_sent.load(Ordering::Relaxed) {
            // Never more images than `max_in_flight` slots: a batch waits for one per image.
            return CANARY_IMAGES
                .min(self.config.max_images)
                .min(max_in_flight)
                .max(1);
        }
        let cap = self
            .config
            .max_images
            .min((max_in_flight / MAX_IN_FLIGHT_SHARE).max(1))
            .max(1);
        let Some(pace) = pace else {
            if webhooks {
                return cap;
            }
            // Until Claid's pace is known, polled batches hold at most an eighth: if Claid
            // works on few images of a batch at once, the first round ends twice as soon.
            return cap.min((max_in_flight / FIRST_WAVE_SHARE).max(MIN_PACED_IMAGES));
        };
        let size = paced_size(max_in_flight, pace, request_rate, cap);
        self.paced.store(size, Ordering::Relaxed);
        let logged = self.paced_logged.load(Ordering::Relaxed);
        // Logged when it first applies and when it has moved by an eighth or more since (a
        // drift of one image at a time is logged too, once it adds up).
        if logged != size && (logged == 0 || size.abs_diff(logged) * 8 >= logged) {
            self.paced_logged.store(size, Ordering::Relaxed);
            info!(
                images = size,
                cap,
                pace_ms_per_image = pace.as_millis() as u64,
                "Batches follow Claid's pace: recent batches took {} ms per image",
                pace.as_millis()
            );
        }
        size
    }

    /// A batch leaves the submitter (the canary counts as sent from here); returns the canary
    /// round it belongs to, which its end passes to [`Batching::settled`].
    pub fn dispatched(&self) -> u64 {
        if self.canary_sent.swap(true, Ordering::Relaxed) {
            self.canary_round.load(Ordering::Relaxed)
        } else {
            self.canary_round.fetch_add(1, Ordering::Relaxed) + 1
        }
    }

    fn sent(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.images.fetch_add(size as u64, Ordering::Relaxed);
        let mut sizes = self
            .recent_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sizes.len() == RECENT_SIZES {
            sizes.pop_front();
        }
        sizes.push_back(size);
    }

    /// The answer to the canary of `round` was lost: it waits (for a webhook naming its batch,
    /// up to `webhook.poll_fallback`) and tests nothing meanwhile, so the next batch is a
    /// canary again, and the drop goes on. (Every other batch waited those two minutes with
    /// it, and no call was made, so `run --once` ended 69 taking the API to be down.)
    pub fn canary_unanswered(&self, round: u64) {
        if !self.canary_settled.load(Ordering::Relaxed)
            && round == self.canary_round.load(Ordering::Relaxed)
        {
            info!("The canary batch's answer was lost: the next batch is a canary in its place");
        }
        self.settled(false, round);
    }

    /// The safety valve: batching is off for the rest of the run.
    pub fn switch_off(&self, why: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            error!(
                reason = why,
                "Batching is switched off for the rest of this run"
            );
        }
        let mut reason = self
            .off_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() {
            *reason = Some(why.to_owned());
        }
    }

    fn send_alone(&self, ids: impl IntoIterator<Item = JobId>) {
        self.singles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(ids);
    }

    pub fn view(&self) -> BatchingView {
        BatchingView {
            enabled: self.enabled(),
            max_images: self.config.max_images,
            off_reason: self
                .off_reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            recent_sizes: self
                .recent_sizes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .copied()
                .collect(),
            paced_size: match self.paced.load(Ordering::Relaxed) {
                0 => None,
                size => Some(size),
            },
            batches: self.batches.load(Ordering::Relaxed),
            images: self.images.load(Ordering::Relaxed),
        }
    }
}

/// One job of a batch.
#[derive(Debug, Clone)]
pub struct Member {
    pub manifest: ManifestId,
    pub id: JobId,
    pub job: JobV1,
}

impl Member {
    /// The file name Claid gives this job's output in a batch.
    pub fn output_name(&self) -> String {
        wire::batch_output_name(input_of(&self.job), extension_of(&self.job.body))
    }
}

/// The batch size for Claid's `pace` (time per image inside a batch): the smallest that keeps
/// batch requests within [`BATCH_RATE_SHARE`] of the sustained `request_rate`, between
/// [`MIN_PACED_IMAGES`] (or `cap`, if smaller) and `cap`.
///
/// With batches of `b` images, `max_in_flight / b` run at once, each for about `b × pace`, so
/// batch requests come at `max_in_flight × REQUESTS_PER_BATCH / (b² × pace)` a second; the
/// smallest `b` within the share is `√(max_in_flight × REQUESTS_PER_BATCH / (pace × share ×
/// rate))`. Smaller batches deliver sooner (a batch's results come when its last image is
/// done), so where Claid works on few images of a batch at once (a slow pace) batches shrink
/// and more run side by side; where it works on many and tasks are short, the cap holds. (With
/// long tasks, batches shrink to the request share even when Claid works on a whole batch at
/// once: results come no sooner, and requests stay within the share.)
pub fn paced_size(max_in_flight: usize, pace: Duration, request_rate: f64, cap: usize) -> usize {
    let per_image = pace.as_secs_f64().max(1e-3);
    let budget = (request_rate * BATCH_RATE_SHARE).max(1e-6);
    let size = (max_in_flight as f64 * REQUESTS_PER_BATCH / (per_image * budget))
        .sqrt()
        .ceil();
    // Finite (both divisors are bounded away from 0), and `as` saturates: at most the cap.
    (size as usize).clamp(MIN_PACED_IMAGES.min(cap), cap)
}

/// How many batches the last `len` jobs of the queue go in, when the queue has run dry: at
/// least as many images each as Claid works on at once in one batch (`at_once`,
/// [`Polls::batch_parallelism`], taken as at least [`MIN_PACED_IMAGES`]), so that a drop's end
/// waits for one round of Claid's work instead of a batch worked through a few images at a
/// time. One while that is unknown.
pub fn tail_batches(len: usize, at_once: Option<f64>) -> usize {
    let Some(at_once) = at_once else {
        return 1;
    };
    let pieces = (len as f64 / at_once.max(MIN_PACED_IMAGES as f64)).floor();
    // Finite (the divisor is at least 8) and `as` saturates.
    (pieces.max(1.0) as usize).min(len.max(1))
}

/// The key jobs are grouped by: their request body without `input`, canonical, and for a
/// storage output its destination folder (a batch writes into one folder).
pub fn group_key(job: &JobV1) -> String {
    let body = crate::manifest::key::canonical_json(&job.body);
    match batch_destination(job) {
        Some(folder) => format!("{body}\n{folder}"),
        None => body,
    }
}

/// The folder a storage output's batch writes into: its outbox path's folder under the
/// destination folder (`storage://c/out/shoes/`); `None` for a local output.
pub fn batch_destination(job: &JobV1) -> Option<String> {
    let object = crate::storages::destination_of(&job.body, &job.output_rel)?;
    let (folder, _) = object.rsplit_once('/')?;
    Some(format!("{folder}/"))
}

/// A storage output's object is named as Claid names a batch output (else it goes alone).
fn named_as_batch_output(job: &JobV1) -> bool {
    output_named_as_in_a_batch(input_of(job), &job.body, &job.output_rel)
}

/// An input a batch may take: `http(s)://`, or `storage://` of one of `connectors` (the
/// config's storages; others are sent alone). `plan` counts with it too.
pub fn batchable_input(input: &str, connectors: &HashSet<String>) -> bool {
    // A file name that starts with a dot (`.x`, `.jpg`): whether Claid takes it all as the
    // stem or as an extension with no stem is not said, so its result could not be matched
    // (one such URL switched batching off for the rest of a run; acceptance run). Sent alone.
    let dotted = wire::decoded(wire::basename(input)).starts_with('.');
    if input.starts_with("https://") || input.starts_with("http://") {
        // A URL without a file name (`…/s/`, `https://host`), or with a query or fragment
        // (`…/x.jpg?v=2`: whether Claid's name for the output keeps the query is not said):
        // its result could not be told from another's. Sent alone.
        return !input.contains(['?', '#'])
            && !dotted
            && !wire::decoded(wire::basename(input)).trim().is_empty();
    }
    !dotted
        && crate::storages::split_uri(input)
            .is_some_and(|(connector, _)| connectors.contains(connector))
}

/// Whether the output of `input` (sent as it is) may come out of a batch: a local output, or
/// a storage one named as Claid names a batch output (the input's name, the format's
/// extension).
pub fn output_named_as_in_a_batch(input: &str, body: &serde_json::Value, output_rel: &str) -> bool {
    match crate::storages::destination_of(body, output_rel) {
        None => true,
        Some(object) => {
            wire::basename(&object) == wire::batch_output_name(input, extension_of(body))
        }
    }
}

/// Batches being filled by the submitter, one or more per body (names must be distinct).
#[derive(Debug, Default)]
pub struct Open {
    batches: Vec<OpenBatch>,
}

#[derive(Debug)]
struct OpenBatch {
    key: String,
    members: Vec<Member>,
    names: HashSet<String>,
    opened: Instant,
}

impl Open {
    /// Adds a job to the first open batch of its body that has room and no output of the same
    /// name (Claid names outputs after inputs: colliding names go to different batches).
    /// Returns a batch that reached `target`, ready to go: the one the job joined, else one of
    /// its body filled to an earlier, larger target (the target follows Claid's pace; the
    /// sender cuts it to size).
    pub fn add(&mut self, member: Member, target: usize) -> Option<Vec<Member>> {
        let key = group_key(&member.job);
        let ready = self.add_to_one(member, key.clone(), target);
        if ready.is_some() {
            return ready;
        }
        let at = self
            .batches
            .iter()
            .position(|b| b.key == key && b.members.len() >= target)?;
        Some(self.batches.remove(at).members)
    }

    fn add_to_one(&mut self, member: Member, key: String, target: usize) -> Option<Vec<Member>> {
        // Every name a result of this job may carry (`match_results` takes the input's stem
        // too): `shoe.jpg` and `shoe.jpg.png` in one batch made the result `shoe.jpg` match
        // both, and two billed images were held in doubt.
        let names = result_names(input_of(&member.job), extension_of(&member.job.body));
        let at = self.batches.iter().position(|b| {
            b.key == key
                && b.members.len() < target
                && names.iter().all(|name| !b.names.contains(name))
        });
        let at = match at {
            Some(at) => at,
            None => {
                self.batches.push(OpenBatch {
                    key,
                    members: Vec::new(),
                    names: HashSet::new(),
                    opened: Instant::now(),
                });
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[at];
        batch.names.extend(names);
        batch.members.push(member);
        if batch.members.len() >= target {
            return Some(self.batches.remove(at).members);
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// When the oldest open batch has lingered long enough.
    pub fn deadline(&self, linger: Duration) -> Option<Instant> {
        self.batches.iter().map(|b| b.opened + linger).min()
    }

    /// Every open batch, oldest first (the queue has nothing more to add now).
    pub fn take_all(&mut self) -> Vec<Vec<Member>> {
        std::mem::take(&mut self.batches)
            .into_iter()
            .map(|b| b.members)
            .collect()
    }
}

/// What a batch task needs.
pub struct BatchDeps {
    pub store: Store,
    pub client: Client,
    pub settings: Arc<RwLock<Settings>>,
    pub batching: Arc<Batching>,
    pub dispatch: Arc<Dispatch>,
    /// Whether results also come by webhook (then polling is the fallback).
    pub webhooks: Option<Duration>,
    pub polls: Arc<Polls>,
    pub poll: PollConfig,
    pub retry: retry::Policy,
    pub health: Arc<HealthState>,
    /// `task_processing_seconds` is observed for each image of a batch seen DONE.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub queue: Arc<Queue>,
    /// Downloads each matched job on its own task.
    pub runner: Runner,
    pub finisher: finisher::Tx,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

/// Runs batch tasks; cheap to clone.
#[derive(Clone)]
pub struct BatchRunner {
    deps: Arc<BatchDeps>,
    /// The canary round of the batch this runner's clone sees through (see
    /// [`Batching::dispatched`]).
    round: u64,
}

/// How the submit part of a batch ended.
enum Sent {
    /// Accepted: the batch id and its result URL are on every job.
    Accepted { batch_id: u64, result_url: String },
    /// The batch's result came with the adoption of a lost submit.
    Adopted { update: Box<BatchTask> },
    /// The jobs went elsewhere (requeued, failed, held); the task ends.
    Ended,
}

impl BatchRunner {
    pub fn new(deps: BatchDeps) -> BatchRunner {
        BatchRunner {
            round: 0,
            deps: Arc::new(deps),
        }
    }

    pub fn batching(&self) -> &Arc<Batching> {
        &self.deps.batching
    }

    /// The size the next batch aims for ([`Batching::target_size`]), from Claid's pace in
    /// recent batches, the client's sustained request rate, and whether webhooks are on and
    /// have been heard in this run (configured but silent, results are polled).
    pub fn target_size(&self, max_in_flight: usize) -> usize {
        self.deps.batching.target_size(
            max_in_flight,
            self.deps.polls.batch_pace(),
            self.deps.client.sustained_rate(),
            self.deps.webhooks.is_some() && self.deps.dispatch.heard_any(),
        )
    }

    /// How many batches the last `len` jobs of the queue go in ([`tail_batches`]).
    pub fn tail_batches(&self, len: usize) -> usize {
        tail_batches(len, self.deps.polls.batch_parallelism())
    }

    /// Submits `members` as one batch and sees it through; `permit` holds one slot of
    /// `max_in_flight` per image.
    pub fn spawn(&self, members: Vec<Member>, permit: OwnedSemaphorePermit, round: u64) {
        let mut this = self.clone();
        this.round = round;
        let span = info_span!(
            "batch",
            images = members.len(),
            batch_id = tracing::field::Empty
        );
        self.deps.tracker.spawn(
            async move {
                let answered = this.run(members, permit).await;
                this.deps.batching.settled(answered, this.round);
            }
            .instrument(span),
        );
    }

    /// Resumes a batch found submitted at start: polls it and sees it through.
    pub fn spawn_resumed(
        &self,
        batch_id: u64,
        result_url: String,
        submitted_at_ms: u64,
        members: Vec<Member>,
        permit: OwnedSemaphorePermit,
        round: u64,
    ) {
        let mut this = self.clone();
        this.round = round;
        let span = info_span!("batch", images = members.len(), batch_id);
        self.deps.tracker.spawn(
            async move {
                // Not timed: its duration since the submit may include time the daemon was down.
                let result = this
                    .wait_result(batch_id, &result_url, submitted_at_ms, &members, false)
                    .await;
                let answered = result.is_some();
                if let Some(result) = result {
                    this.settle(batch_id, *result, members, permit).await;
                }
                this.deps.batching.settled(answered, this.round);
            }
            .instrument(span),
        );
    }

    /// Sends `members` as one batch and sees it through; whether its results came (and were
    /// settled), as the canary's end needs to know.
    async fn run(&self, members: Vec<Member>, permit: OwnedSemaphorePermit) -> bool {
        // Not sent: members reading or writing a storage whose connector moved at Claid.
        let members: Vec<Member> = members
            .into_iter()
            .filter(|m| self.deps.runner.held_for_storage(m.id, &m.job).is_none())
            .collect();
        // The objects each storage output replaces, asked side by side (a HEAD or two each):
        // noted on the jobs in the store before the batch's intent is flushed; then the
        // latest noted second is waited out, once for the batch.
        // A member whose bucket cannot be looked at is not sent (failed, or parked).
        let (members, same_second) = {
            use futures_util::StreamExt;
            let runner = &self.deps.runner;
            let looked: Vec<(Member, Result<Duration, JobOutcome>)> =
                futures_util::stream::iter(members)
                    .map(|m| async move {
                        let left = runner.note_replaced_objects(m.id, &m.job).await;
                        (m, left)
                    })
                    .buffered(REPLACED_OBJECT_CHECKS)
                    .collect()
                    .await;
            let mut longest = Duration::ZERO;
            let mut kept = Vec::with_capacity(looked.len());
            for (member, left) in looked {
                match left {
                    Ok(left) => {
                        longest = longest.max(left);
                        kept.push(member);
                    }
                    Err(outcome) => self.report(member.manifest, outcome),
                }
            }
            (kept, longest)
        };
        // Stopped meanwhile: nothing is sent; the jobs stay queued in the store for the next
        // start, as a single job's are.
        if (!same_second.is_zero() && !self.wait(same_second).await)
            || self.deps.cancel.is_cancelled()
        {
            return false;
        }
        // `on_output_exists` (an output already there), before the batch is sent.
        let runner = &self.deps.runner;
        let mut settled = Vec::with_capacity(members.len());
        for member in members {
            if let Some(outcome) = runner.settle_existing_output(member.id, &member.job).await {
                self.report(member.manifest, outcome);
                continue;
            }
            // The outbox may have changed while the batch waited (for the canary, a slot).
            if let Some(outcome) = runner.refuse_blocked_output(member.id, &member.job).await {
                self.report(member.manifest, outcome);
                continue;
            }
            settled.push(member);
        }
        // Storage inputs that are missing, empty or not images fail unbilled; looked at a few
        // at a time (one HEAD, and a read of the first bytes, each).
        let looks: Vec<_> = settled
            .iter()
            .map(|member| runner.check_storage_input(member.id, &member.job))
            .collect();
        let checks: Vec<Option<JobOutcome>> = futures_util::stream::iter(looks)
            .buffered(INPUT_CHECKS)
            .collect()
            .await;
        let mut to_send = Vec::with_capacity(settled.len());
        for (member, checked) in settled.into_iter().zip(checks) {
            match checked {
                Some(JobOutcome::NotRun | JobOutcome::Parked) => continue,
                Some(outcome) => {
                    self.report(member.manifest, outcome);
                    continue;
                }
                None => {}
            }
            // A staged input gone from the bucket is staged again; the job is queued again.
            match runner.restage_if_gone(member.id, &member.job).await {
                Some(JobOutcome::NotRun | JobOutcome::Parked) => {}
                Some(outcome) => self.report(member.manifest, outcome),
                None => to_send.push(member),
            }
        }
        let members = to_send;
        if members.is_empty() {
            return false;
        }
        let sent = self.send(&members).await;
        let (batch_id, result) = match sent {
            Sent::Accepted {
                batch_id,
                result_url,
            } => {
                tracing::Span::current().record("batch_id", batch_id);
                let result = self
                    .wait_result(batch_id, &result_url, now_ms(), &members, true)
                    .await;
                match result {
                    Some(result) => (batch_id, *result),
                    None => return false,
                }
            }
            // An announcement without the results (Claid does not document a webhook's body
            // fully), not final, or DONE with results for only some of the batch's images, is
            // followed up like any batch: taken as the result, it would fail images Claid made
            // and billed as missing.
            Sent::Adopted { update }
                if update.lacks_result() || update.answers_fewer_than(members.len()) =>
            {
                let result = self
                    .wait_result(update.id, &update.result_url, now_ms(), &members, true)
                    .await;
                match result {
                    Some(result) => (update.id, *result),
                    None => return false,
                }
            }
            Sent::Adopted { update } => (update.id, *update),
            Sent::Ended => return false,
        };
        self.settle(batch_id, result, members, permit).await;
        true
    }

    /// Holds every member in doubt (reported held; parked when that cannot be recorded).
    async fn hold_in_doubt(&self, members: &[Member]) {
        for m in members {
            let held = self.deps.store.mark_in_doubt(m.id).await.is_ok();
            self.report(
                m.manifest,
                if held {
                    JobOutcome::Held
                } else {
                    JobOutcome::Parked
                },
            );
        }
    }

    /// The submit: durability point 1 for every job, the request, durability point 2.
    async fn send(&self, members: &[Member]) -> Sent {
        let deps = &*self.deps;
        let ids: Vec<JobId> = members.iter().map(|m| m.id).collect();
        let request = batch_request(members);
        let mut attempts = deps.retry.start(retry::Step::Submit);
        let mut retry = false;
        // Past `MAX_LOST_ANSWERS` the batch's jobs are held in doubt, whatever `in_doubt` says.
        let mut lost_answers = super::job::LostAnswers::already(
            members
                .iter()
                .map(|m| m.job.lost_answers)
                .max()
                .unwrap_or(0),
        );
        loop {
            // A retry waits, like a first submit, while outputs cannot be written (only a
            // shutdown ends the wait: the jobs are then resumed from the store).
            if !deps.health.writable(&deps.cancel).await {
                return Sent::Ended;
            }
            // A retry looks at the staged inputs again, as the first submit did (`run`): one
            // deleted meanwhile (a lifecycle rule, an operator) is staged again, or the batch
            // would be billed for images Claid cannot read. One that cannot be staged again
            // leaves the batch (the others are batched again below).
            if std::mem::replace(&mut retry, true) {
                for member in members {
                    match deps.runner.restage_if_gone(member.id, &member.job).await {
                        None | Some(JobOutcome::NotRun | JobOutcome::Parked) => {}
                        Some(outcome) => self.report(member.manifest, outcome),
                    }
                }
            }
            // The rate limiter's turn first, as a single submit's: a crash while it waits
            // leaves the batch's jobs queued (no request went out), not in doubt (the turn
            // taken after the intent held every job of a batch waiting for the limiter in
            // doubt at a kill: 30 of 40 at one request a second).
            let turn = tokio::select! {
                turn = deps.client.turn() => turn,
                // As at the wait above: the jobs resume from the store.
                () = deps.cancel.cancelled() => return Sent::Ended,
            };
            let submitted_to = members
                .first()
                .and_then(|m| deps.runner.submitted_to(&m.job));
            match deps
                .store
                .mark_batch_submitting(&ids, submitted_to.as_deref())
                .await
            {
                Ok(marked) if marked.len() == ids.len() => {}
                Ok(marked) => {
                    // Some changed meanwhile: cancelled (their run drains), or adopted by a
                    // late webhook for the task of their lost submit. The others go back to
                    // the queue and are batched again; the changed ones go back to it as they
                    // are, so that an adopted task is polled (a cancelled job ends there).
                    let marked: HashSet<JobId> = marked.into_iter().collect();
                    let (rest, changed): (Vec<Member>, Vec<Member>) = members
                        .iter()
                        .cloned()
                        .partition(|m| marked.contains(&m.id));
                    self.requeue_all(&rest, false).await;
                    deps.queue
                        .push_back(changed.iter().map(|m| (m.manifest, m.id)).collect());
                    return Sent::Ended;
                }
                Err(err) => {
                    error!(error = %err, "Cannot record the batch's submit intent; jobs left queued");
                    return Sent::Ended;
                }
            }
            // Held until the answer is recorded (dropped below when it is a failure).
            let recording = deps.client.until_recorded();
            let sent_at = Instant::now();
            let err = match deps.client.submit_batch_in(turn, &request).await {
                Ok(accepted) => {
                    if let Err(err) = deps
                        .store
                        .mark_batch_submitted(
                            &ids,
                            accepted.batch_id,
                            &accepted.result_url,
                            accepted.request_id.as_deref(),
                        )
                        .await
                    {
                        if let crate::store::StoreError::TaskTaken { .. } = err {
                            // Other jobs with the same request, whose submit answer was lost,
                            // adopted this batch from its webhook first (Claid announced both
                            // batches before answering either): the batch this submit made is
                            // the one those jobs made, announced too, and is adopted in turn
                            // (the same edits of the same inputs). Its images were held in
                            // doubt, and `replay --in-doubt` billed them again.
                            drop(recording);
                            let skip = vec![TaskRef::Batch(accepted.batch_id)];
                            if let Some(sent) = self.adopt_lost(&request, &err, members, skip).await
                            {
                                return sent;
                            }
                            // An answer naming a batch other jobs took (a cache or a proxy
                            // mixing answers up): whatever batch this submit made is unknown.
                            error!(error = %err, batch_id = accepted.batch_id, "Claid's answer names a batch other jobs took; its images are held in doubt (`replay --in-doubt` sends them again)");
                            self.hold_in_doubt(members).await;
                            // Its batch may still be announced, later than the wait.
                            self.recognise_late_announcement(members);
                            return Sent::Ended;
                        }
                        error!(error = %err, batch_id = accepted.batch_id, "Cannot record the batch id; its jobs are in doubt");
                        return Sent::Ended;
                    }
                    deps.health.ok();
                    deps.batching.sent(members.len());
                    info!(
                        batch_id = accepted.batch_id,
                        images = members.len(),
                        "Batch submitted"
                    );
                    return Sent::Accepted {
                        batch_id: accepted.batch_id,
                        result_url: accepted.result_url,
                    };
                }
                Err(err) => err,
            };
            // Held on through the record of an accepted answer that cannot be read.
            let recording = (err.accepted_unread()).then_some(recording);
            let failure = failure_of(&deps.health, &err, sent_at);
            match failure {
                Failure::Job => {
                    // Claid refused the batch as a whole: each job gets its own verdict alone.
                    deps.health.ok();
                    warn!(error = %err, "Claid refused the batch; its images are sent one by one");
                    deps.batching.send_alone(ids.iter().copied());
                    self.requeue_all(members, false).await;
                    return Sent::Ended;
                }
                Failure::Systemic => {
                    self.requeue_all(members, true).await;
                    deps.health.pause(&err, Refusal::of(&err));
                    return Sent::Ended;
                }
                Failure::Ambiguous => {
                    // A 2xx whose answer cannot be read was accepted: held in the store before
                    // any wait for its webhook (a stop or a crash during the wait found its
                    // jobs submitting, and a restart sent them again).
                    let unread = err.accepted_unread();
                    if unread {
                        // Noted before the wait (they stay submitting: their run does not end
                        // while the batch's webhook may still come); a restart holds them.
                        let recorded = deps.store.mark_accepted_unread(&ids).await;
                        drop(recording);
                        if let Err(err) = recorded {
                            error!(error = %err, "Cannot record the batch's jobs as held in doubt");
                            return Sent::Ended;
                        }
                        if deps.webhooks.is_some() {
                            warn!(error = %err, images = members.len(), "Claid accepted the batch but its answer cannot be read: held in doubt, never sent again (a webhook may still name its batch)");
                        } else {
                            warn!(error = %err, images = members.len(), "Claid accepted the batch but its answer cannot be read: held in doubt, never sent again (`replay --in-doubt` sends them again, and may bill them twice)");
                        }
                        // A 303 is said to every submit by a gateway in front of the API:
                        // submitting pauses, or every queued image would be held in turn.
                        if err.http_status() == Some(303) {
                            deps.health.pause(&err, Refusal::Status(303));
                        }
                    }
                    if self.deps.webhooks.is_some() {
                        // Its answer is lost: the next batch goes as a canary in its place.
                        self.deps.batching.canary_unanswered(self.round);
                    }
                    if let Some(sent) = self.adopt_lost(&request, &err, members, Vec::new()).await {
                        return sent;
                    }
                    // A 2xx whose answer cannot be read was accepted: held, never sent again; so
                    // is a batch whose answers were lost too often in a row.
                    let policy = if err.accepted_unread() {
                        InDoubtPolicy::Hold
                    } else {
                        if lost_answers.one_more() {
                            warn!(error = %err, lost_answers = lost_answers.count(), images = members.len(), "The answers to this batch's submits were lost again and again; its images are held in doubt rather than sent (and maybe billed) once more");
                            InDoubtPolicy::Hold
                        } else {
                            self.in_doubt_policy()
                        }
                    };
                    match policy {
                        InDoubtPolicy::Resubmit => {
                            warn!(error = %err, "Batch submit outcome unknown; resubmitting (in doubt)");
                            for m in members {
                                if deps.store.requeue(m.id, true).await.is_err() {
                                    return Sent::Ended;
                                }
                            }
                            // Until they are sent again, a webhook later than the wait is still
                            // adopted (the resend then leaves the adopted ones out).
                            self.recognise_late_announcement(members);
                        }
                        InDoubtPolicy::Hold => {
                            warn!(error = %err, "Batch submit outcome unknown; its images are held for `replay --in-doubt`");
                            self.hold_in_doubt(members).await;
                            // The batch may still be announced, later than the wait.
                            self.recognise_late_announcement(members);
                            return Sent::Ended;
                        }
                    }
                }
                Failure::Transient | Failure::RateLimited { .. } | Failure::Unreachable => {
                    for m in members {
                        if deps.store.requeue(m.id, false).await.is_err() {
                            return Sent::Ended;
                        }
                    }
                }
            }
            let retry_as = super::job::retried_as(&deps.health, failure, &err, sent_at);
            let decision = super::job::submit_decision(&deps.health, &mut attempts, retry_as, &err);
            match decision {
                Decision::Retry { after } => {
                    let after = after.max(lost_answers.least_wait(deps.retry.cap));
                    // An answer lost is told above already ("resubmitting (in doubt)").
                    // In an outage, told once (health says the API is away): each
                    // retry after the first at debug (36 lines in 30 s before).
                    if retry_as == Failure::Unreachable && attempts.failed_attempts() > 1 {
                        debug!(error = %err, "Batch submit failed; the API is still away; retrying");
                    } else if matches!(failure, Failure::RateLimited { .. }) {
                        // Flow control, waited out at the reset; a streak of nothing else is
                        // told by health (one WARN for each 429 before).
                        debug!(error = %err, "Batch submit rate limited; retrying after the reset");
                        deps.client.tell_if_long_closed();
                    } else if !matches!(failure, Failure::Ambiguous) {
                        warn!(error = %err, "Batch submit failed; retrying");
                    }
                    if !self.wait(after).await {
                        return Sent::Ended;
                    }
                    if !super::job::ready_to_resend(
                        &deps.client,
                        &deps.health,
                        &deps.retry,
                        &deps.cancel,
                        (failure, retry_as, sent_at),
                    )
                    .await
                    {
                        return Sent::Ended;
                    }
                }
                Decision::Fail(why) => {
                    warn!(error = %err, why = ?why, "Batch submit failed; retry budget spent");
                    for m in members {
                        self.fail(m, err.code(), &err.to_string()).await;
                    }
                    return Sent::Ended;
                }
                Decision::Pause => return Sent::Ended,
            }
        }
    }

    /// With webhooks on, registers the members of a batch whose answer was lost with the
    /// dispatch, so that a webhook announcing that batch later is adopted by them.
    fn recognise_late_announcement(&self, members: &[Member]) {
        if self.deps.webhooks.is_some() {
            self.deps.dispatch.hold(
                members
                    .iter()
                    .map(|m| crate::pipeline::held_job(m.manifest, m.id, &m.job))
                    .collect(),
            );
        }
    }

    /// With webhooks on, waits for a webhook naming the batch a submit whose answer was lost
    /// (or named a batch other jobs took) may have made, and records it for `members`:
    /// `Some(Adopted)` then. A batch other jobs' submit answer named first (the same request
    /// sent twice) is given back to them, added to `skip`, and the wait goes on for another
    /// (its members stayed submitting, or were held in doubt; acceptance run). `None` when no
    /// webhook came: the caller's `in_doubt` policy applies.
    async fn adopt_lost(
        &self,
        request: &BatchEditRequest,
        err: &(dyn std::fmt::Display + Sync),
        members: &[Member],
        mut skip: Vec<TaskRef>,
    ) -> Option<Sent> {
        let deps = &*self.deps;
        let ids: Vec<JobId> = members.iter().map(|m| m.id).collect();
        loop {
            let update = self.wait_for_lost(request, err, &skip).await?;
            let (batch_id, result_url) = (update.id, update.result_url.clone());
            match deps
                .store
                .mark_batch_submitted(&ids, batch_id, &result_url, None)
                .await
            {
                Ok(()) => {
                    info!(
                        batch_id,
                        "A lost batch answer was recovered from its webhook; nothing is submitted twice"
                    );
                    deps.batching.sent(members.len());
                    return Some(Sent::Adopted { update });
                }
                // Bounded: each batch skipped is one more webhook that came with this request.
                Err(crate::store::StoreError::TaskTaken { .. })
                    if skip.len() < super::job::MAX_SKIPPED_ADOPTIONS =>
                {
                    info!(
                        batch_id,
                        "The batch a webhook named for this lost submit is other jobs' with the same request (their answer named it first); waiting for this one's own"
                    );
                    skip.push(TaskRef::Batch(batch_id));
                    deps.dispatch.give_back(TaskUpdate::Batch(update));
                }
                Err(err) => {
                    error!(error = %err, batch_id, "Cannot record the adopted batch; its images are in doubt");
                    if let crate::store::StoreError::TaskTaken { .. } = err {
                        deps.dispatch.give_back(TaskUpdate::Batch(update));
                        self.hold_in_doubt(members).await;
                        // Their own batch may still be announced, later than the wait.
                        self.recognise_late_announcement(members);
                    }
                    return Some(Sent::Ended);
                }
            }
        }
    }

    /// With webhooks on, a lost batch answer may still be announced: waits up to the poll
    /// fallback for a webhook whose echoed request is this one (not one of the batches in
    /// `skip`, other jobs').
    async fn wait_for_lost(
        &self,
        request: &BatchEditRequest,
        err: &(dyn std::fmt::Display + Sync),
        skip: &[TaskRef],
    ) -> Option<Box<BatchTask>> {
        let fallback = self.deps.webhooks?;
        let value = serde_json::to_value(request).ok()?;
        let jobs = match &request.input {
            crate::claid::wire::BatchInput::Urls(urls) => urls.len(),
            _ => 1,
        };
        let lost = self
            .deps
            .dispatch
            .lost_submit_skipping(&value, jobs, skip)?;
        // Told now: the wait may last `poll_fallback` (2 minutes by default) without a word.
        warn!(error = %err, images = jobs, wait_s = fallback.as_secs(), "The answer to a batch submit was lost; waiting for a webhook naming the batch it may have created (adopted, not billed twice), at most `webhook.poll_fallback`");
        let deps = &*self.deps;
        let update = tokio::select! {
            update = lost.wait(fallback) => update?,
            () = super::job::answered_meanwhile(&deps.client, &deps.health, &deps.retry, &deps.cancel) => return None,
            () = deps.cancel.cancelled() => return None,
        };
        match update {
            TaskUpdate::Batch(batch) => Some(batch),
            TaskUpdate::Async(_) => None,
        }
    }

    /// Waits for the batch's final answer: a webhook, else polls (the fallback when webhooks
    /// are on). `None` when the daemon stops or the jobs were failed meanwhile. A `timed`
    /// batch's duration is recorded for poll times and Claid's pace (not a resumed one's).
    async fn wait_result(
        &self,
        batch_id: u64,
        result_url: &str,
        submitted_at_ms: u64,
        members: &[Member],
        timed: bool,
    ) -> Option<Box<BatchTask>> {
        let deps = &*self.deps;
        // Webhooks that do not arrive are not waited for (see `Dispatch::webhooks_unproven`).
        let mut webhooks = deps.webhooks.filter(|_| !deps.dispatch.webhooks_unproven());
        // Watched whenever webhooks are on, as a single task is, even when its wait follows
        // the poll schedule (webhooks unproven or silent): one that comes is taken without a
        // poll, and shows they come. Its end found by a poll tells whether they come, waited
        // for or not (else the warning that they do not would never be given).
        let mut watch = deps
            .webhooks
            .map(|_| deps.dispatch.watch(TaskRef::Batch(batch_id)));
        // An announcement without the results came: polled from then on, on the schedule
        // (its slot keeps that update, which a watch would hand back at once, every time).
        let mut slim = false;
        let since_submit = || Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
        // Subscribed before the first plan, so no change after it is missed.
        let mut changes = deps.polls.batch_changes();
        let mut clock = deps.polls.batch_clock(batch_id, members.len(), timed);
        // When (since its submit) its webhook is due: a poll that finds it ended earlier says
        // nothing yet of whether the webhook comes.
        let webhook_due = webhooks.map(|fallback| {
            since_submit()
                + deps
                    .polls
                    .batch_webhook_wait(members.len(), submitted_at_ms, fallback)
        });
        // Webhooks lost lately: polled on the schedule, its webhook taken if it comes first
        // (see `Dispatch::batch_webhooks_lossy`).
        if webhooks.is_some() && deps.dispatch.batch_webhooks_lossy() {
            debug!(
                batch_id,
                "Webhooks of recent batches were lost; this one is polled on the schedule"
            );
            webhooks = None;
        }
        let mut delay = match (webhooks, webhook_due) {
            (Some(_), Some(due)) => due.saturating_sub(since_submit()),
            _ => deps.polls.batch_delay(&mut clock, since_submit()),
        };
        // When a poll last found the batch running (since its submit).
        let mut pending_at = None;
        // The wait comes from the poll schedule (a retry's or a pause's wait is never cut
        // short by a new estimate).
        let mut scheduled = true;
        let mut attempts = deps.retry.start(retry::Step::Poll);
        // Answers that cannot be final yet, each asked again a bounded number of times (see
        // [`super::job::Unsettled`]).
        let mut unsettled = super::job::Unsettled::default();
        // Until its first poll, the wait for this batch's webhook follows the estimate of its
        // size: a size seen to end meanwhile (a sibling batch's announcement) shortens it.
        // (Fixed at the submit, a lost announcement of a batch of 64 whose twin had ended in
        // 3 s was waited for two minutes.)
        let mut first_wait = webhooks.is_some();
        // The poll waits for a pause: its last one was refused (a 402 while the batch ran),
        // or it came due while others' were (see `HealthState::poll_hold`).
        let mut hold: Option<Hold> = None;
        // A pause held a poll since a poll last found the batch running: a poll that finds it
        // done then gives no duration sample (the pause's time is not Claid's).
        let mut paused_since_running = false;
        loop {
            // Whether a hold let this poll go (see `held` below).
            let mut released = false;
            let update = if let Some(watch) = watch.as_ref().filter(|_| webhooks.is_some()) {
                tokio::select! {
                    update = watch.wait(delay) => update,
                    // Webhooks found silent meanwhile: polled now, then on the schedule
                    // (still watched).
                    () = deps.dispatch.went_silent() => {
                        webhooks = None;
                        None
                    }
                    // Another batch's webhook counted lost meanwhile: on the schedule from
                    // now (still watched), as a batch sent now would be.
                    () = deps.dispatch.went_lossy() => {
                        webhooks = None;
                        first_wait = false;
                        clock.stopped_waiting_for_webhook();
                        delay = deps.polls.batch_delay(&mut clock, since_submit());
                        continue;
                    }
                    Ok(()) = changes.changed(), if first_wait => {
                        if let Some(fallback) = webhooks {
                            delay = deps
                                .polls
                                .batch_webhook_wait(members.len(), submitted_at_ms, fallback);
                        }
                        continue;
                    }
                    () = deps.health.poll_hold(hold), if hold.is_some() => {
                        released = true;
                        None
                    }
                    _ = deps.cancel.cancelled() => return None,
                }
            } else if scheduled {
                tokio::select! {
                    waited = self.wait_planned(&mut clock, &mut changes, delay, &since_submit) => {
                        if !waited {
                            return None;
                        }
                        None
                    }
                    Some(update) = announced(watch.as_ref()) => Some(update),
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(delay), if hold.is_none() => None,
                    () = deps.health.poll_hold(hold), if hold.is_some() => {
                        released = true;
                        None
                    }
                    Some(update) = announced(watch.as_ref()) => Some(update),
                    _ = deps.cancel.cancelled() => return None,
                }
            };
            match update {
                // A webhook for this batch id echoing other inputs than its images' is
                // no result of it (a replayed or forged delivery): polled instead.
                Some(TaskUpdate::Batch(batch))
                    if super::dispatch::echoes_other_inputs(
                        &batch.request,
                        &members.iter().map(|m| input_of(&m.job)).collect::<Vec<_>>(),
                    ) =>
                {
                    warn!(
                        batch_id,
                        "A webhook for this batch echoes other inputs than its images'; it is not taken, the batch is polled"
                    );
                    slim = true;
                }
                // An announcement that the batch ended without its results: they are
                // polled now (failing its images would lose what Claid made and billed).
                // (So is one that is not final: the batch named while it runs.)
                Some(TaskUpdate::Batch(batch))
                    if batch.lacks_result() || batch.answers_fewer_than(members.len()) =>
                {
                    debug!(
                        batch_id,
                        "The webhook said the batch is done without all its results; polling it"
                    );
                    slim = true;
                }
                Some(TaskUpdate::Batch(batch)) => {
                    let took = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
                    clock.ended(took, Seen::Webhook);
                    return Some(batch);
                }
                // A single task's announcement for a batch id is no result either.
                Some(TaskUpdate::Async(_)) => slim = true,
                None => {}
            }
            // Let go by its hold (the pause ended, or its turn as the probe came), the poll
            // goes now. Woken otherwise while held (webhooks found silent, an update that is
            // no result), it stays held: a poll refused for its own reason goes no sooner
            // than a probe interval after, even once others' successes ended the pause (let
            // go at once, it was refused again and paused again).
            let kept = hold.take().filter(|_| !released);
            let held = released;
            if slim {
                watch = None;
            }
            if let Some(kept) = kept {
                (hold, scheduled) = (Some(kept), false);
                continue;
            }
            first_wait = false;
            scheduled = true;
            // Made because its webhook was due (it has not come): a poll that finds the batch
            // done then bounds its duration only by that wait.
            let for_overdue_webhook = webhooks.is_some();
            let turn = deps.client.turn().await;
            if let Some(held) = deps.health.holds_poll(held) {
                debug!(
                    batch_id,
                    "Polls are refused by the pause; this one waits for its end"
                );
                (hold, delay, scheduled) = (Some(held), HELD_FOR, false);
                paused_since_running = true;
                continue;
            }
            // Sent now, not when it began to wait for the limiter (a success elsewhere
            // meanwhile says nothing of this call's failure).
            let sent_at = Instant::now();
            match deps.client.poll_batch_in(turn, result_url, batch_id).await {
                Ok(polled) => {
                    debug!(
                        status = ?polled.batch.status,
                        since_submit_ms = since_submit().as_millis() as u64,
                        "Polled the batch"
                    );
                    attempts = deps.retry.start(retry::Step::Poll);
                    unsettled.answered();
                    deps.health.poll_ok();
                    for m in members {
                        let _ = deps
                            .store
                            .record_poll(m.id, polled.request_id.as_deref())
                            .await;
                    }
                    // DONE with a result or an error missing for some image (none at all, or
                    // fewer than its images): Claid may attach them a moment later; failing
                    // those images would lose results it billed.
                    let unsettled_wait = if polled.batch.status != TaskStatus::Done {
                        None
                    } else if polled.batch.lacks_result() {
                        unsettled.done_without_result(deps.poll.max)
                    } else if polled.batch.answers_fewer_than(members.len()) {
                        unsettled.partial_results(deps.poll.max)
                    } else {
                        None
                    };
                    if let Some(after) = unsettled_wait {
                        let (results, errors, images) = (
                            polled.batch.results.len(),
                            polled.batch.errors.len(),
                            members.len(),
                        );
                        let repeated = polled.batch.repeated_results();
                        if unsettled.first_unsettled_ask() && repeated > 0 {
                            warn!(
                                batch_id,
                                results,
                                repeated,
                                errors,
                                images,
                                "Claid says the batch is DONE but lists a result twice, so fewer of its images have one; polling it again"
                            );
                        } else if unsettled.first_unsettled_ask() {
                            warn!(
                                batch_id,
                                results,
                                errors,
                                images,
                                "Claid says the batch is DONE but sent a result or an error for fewer than its images; polling it again"
                            );
                        } else {
                            debug!(
                                batch_id,
                                results,
                                errors,
                                images,
                                "The batch's answer is still short; polling it again"
                            );
                        }
                        delay = after;
                        scheduled = false;
                        continue;
                    }
                    if let TaskStatus::Other(status) = &polled.batch.status
                        && unsettled.first_unknown_status()
                    {
                        warn!(batch_id, status = %status, "Claid answered a batch status the daemon does not know; polling on until it ends or `api.poll.give_up_after`");
                    }
                    if polled.batch.status.is_terminal() {
                        if watch.is_some() {
                            // Found ended without its webhook: the webhook is given until
                            // it is due, and at least a moment, to come (a batch that ended
                            // just before its due poll has its webhook on the way).
                            let grace = webhook_due
                                .map(|due| due.saturating_sub(since_submit()).max(WEBHOOK_GRACE));
                            deps.dispatch.polled_final(
                                TaskRef::Batch(batch_id),
                                submitted_at_ms,
                                polled.batch.status == TaskStatus::Done,
                                !(polled.batch.lacks_result()
                                    || polled.batch.answers_fewer_than(members.len())),
                                grace,
                            );
                        }
                        let took = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
                        // Found done by the poll made when its webhook was due, and by no
                        // earlier one running: it took at most the wait for its webhook, a
                        // guess (10 s for the canary), which says nothing of Claid's pace. Kept,
                        // it made the canary's latency 10 s and the first round's batches
                        // "take" 10 s, and a drop whose webhooks never came took 30 s instead
                        // of 8 without a `webhook:` section (acceptance run).
                        let unbounded = for_overdue_webhook && pending_at.is_none();
                        if !paused_since_running && !unbounded {
                            clock.ended(took, Seen::Poll { pending_at });
                        }
                        return Some(Box::new(polled.batch));
                    }
                    if let Some(message) = super::job::overdue(
                        deps.polls.watched_since(submitted_at_ms),
                        deps.poll.give_up_after,
                        &polled.batch.status,
                    ) {
                        self.time_out(batch_id, members, &message).await;
                        return None;
                    }
                    clock.running();
                    pending_at = Some(since_submit());
                    paused_since_running = false;
                    // Running past the time its webhook was due: polled on the schedule from
                    // now on, its webhook still taken if it comes first. (Waiting `poll.max`
                    // for it held a batch whose webhook was then lost 27 s past its end; the
                    // acceptance run.)
                    webhooks = None;
                    delay = deps.polls.batch_delay(&mut clock, since_submit());
                }
                Err(err) => match failure_of(&deps.health, &err, sent_at) {
                    Failure::Job
                        if let Some((after, why)) =
                            unsettled.refused(&err, &deps.retry, since_submit()) =>
                    {
                        warn!(batch_id, error = %err, "{}", why.warning("batch"));
                        delay = after;
                        scheduled = false;
                    }
                    Failure::Job => {
                        // Its results, if Claid announces them later, are still taken.
                        for m in members {
                            self.fail(m, FailureCode::TaskLost, &err.to_string()).await;
                        }
                        self.deps.dispatch.timed_out(
                            TaskRef::Batch(batch_id),
                            members.iter().map(|m| (m.manifest, m.id)).collect(),
                        );
                        return None;
                    }
                    Failure::Systemic => {
                        deps.health.poll_refused(&err, Refusal::of(&err));
                        delay = HELD_FOR;
                        scheduled = false;
                        hold = Some(deps.health.hold(PollHold::Refused));
                        paused_since_running = true;
                    }
                    // The batch is billed: a 429 only delays its poll, until `give_up_after`.
                    Failure::RateLimited { retry_after } => {
                        if let Some(message) = super::job::rate_limited_too_long(
                            deps.polls.watched_since(submitted_at_ms),
                            deps.poll.give_up_after,
                        ) {
                            self.time_out(batch_id, members, &message).await;
                            return None;
                        }
                        delay = retry_after;
                        scheduled = false;
                    }
                    failure => {
                        let decision =
                            attempts.on_failure(failure, Instant::now(), &mut rand::rng());
                        match decision {
                            Decision::Retry { after } => {
                                delay = after;
                                scheduled = false;
                            }
                            // Billed: its polls' failures past the budget only slow them
                            // to the backoff's cap, until `give_up_after` (as a task's).
                            Decision::Fail(GiveUp::Failures) => {
                                if let Some(message) = super::job::polls_failing_too_long(
                                    deps.polls.watched_since(submitted_at_ms),
                                    deps.poll.give_up_after,
                                    &err,
                                ) {
                                    self.time_out(batch_id, members, &message).await;
                                    return None;
                                }
                                warn!(batch_id, error = %err, "Polls of the batch keep failing; it is billed, so it is asked again until `api.poll.give_up_after`");
                                delay = deps.retry.cap;
                                scheduled = false;
                            }
                            Decision::Fail(_) | Decision::Pause => {
                                for m in members {
                                    self.fail(m, err.code(), &err.to_string()).await;
                                }
                                return None;
                            }
                        }
                    }
                },
            }
        }
    }

    /// Matches the results to the jobs and moves each on: matched ones download (each on its
    /// own task, with its own slot of the permit), failed ones fail with Claid's text, and if
    /// any result cannot be matched to exactly one job, batching is switched off and the jobs
    /// left unexplained are held in doubt.
    async fn settle(
        &self,
        batch_id: u64,
        result: BatchTask,
        members: Vec<Member>,
        mut permit: OwnedSemaphorePermit,
    ) {
        let deps = &*self.deps;
        let mut matched = match_results(&result, &members);
        // Whether some results were taken as other jobs' of this batch: a member left without
        // a result is then held in doubt rather than failed (its result may be among them
        // under a name Claid chose otherwise; failing it would have a replay bill it again).
        let mut explained = false;
        if !matched.unmatched.is_empty() {
            // Results of jobs of this batch that are not here (settled before a crash, or no
            // longer waiting when the batch was adopted) are theirs, not a failed match.
            let siblings = self.sibling_inputs(batch_id, &result, &members).await;
            let before = matched.unmatched.len();
            matched.unmatched = unexplained(matched.unmatched, &members, &siblings);
            explained = matched.unmatched.len() < before;
        }
        // (Not when results were taken as other jobs': a member left over may have its result
        // among them, and is held in doubt below.)
        if !explained {
            matched.eliminate(members.len());
        }
        if !matched.unmatched.is_empty() {
            // A result without a name (no `tmp_url` nor storage URI to take it from) is told
            // as such: it was listed as a result named `""`.
            let named: Vec<&str> = matched
                .unmatched
                .iter()
                .filter(|name| !name.is_empty())
                .map(String::as_str)
                .collect();
            let nameless = matched.unmatched.len() - named.len();
            let why = match (named.is_empty(), nameless) {
                (false, 0) => format!("result(s) {named:?} match no job or more than one"),
                (true, n) => format!(
                    "{n} result(s) without a file name (no `tmp_url` nor storage URI) match no job"
                ),
                (false, n) => format!(
                    "result(s) {named:?} match no job or more than one, and {n} without a file name (no `tmp_url` nor storage URI) none"
                ),
            };
            deps.batching
                .switch_off(&format!("batch {batch_id}: {why}"));
        }
        let mut handled: HashSet<JobId> = HashSet::new();
        for (index, object) in &matched.done {
            let member = &members[*index];
            handled.insert(member.id);
            // A storage output is checked in its bucket, not downloaded.
            let storage_output =
                crate::storages::output_object(&member.job.body, &member.job.output_rel, object);
            let Some(url) = storage_output.or_else(|| object.tmp_url.clone()) else {
                self.fail(
                    member,
                    FailureCode::BadResponse,
                    "the batch result has no tmp_url",
                )
                .await;
                continue;
            };
            match deps
                .store
                .mark_downloading(member.id, Some(batch_id), &url, object.width, object.height)
                .await
            {
                // Each download holds one slot of the batch's permit (a batch resumed under a
                // smaller `max_in_flight` may have fewer slots than images).
                Ok(job) => {
                    // From the batch's submit to its DONE, for each of its images (as a single
                    // task's; the histogram stayed empty in batch mode).
                    if let JobState::Downloading {
                        submitted_at_ms: Some(at),
                        ..
                    } = job.state
                    {
                        let took = Duration::from_millis(now_ms().saturating_sub(at));
                        deps.metrics.task_seconds.observe(took.as_secs_f64());
                    }
                    self.download(member.clone(), permit.split(1));
                }
                Err(err) => {
                    error!(error = %err, job_id = member.id, "Cannot record the batch result; it is polled again at the next start");
                }
            }
        }
        let answered_at = std::time::Instant::now();
        for (index, message) in &matched.failed {
            let member = &members[*index];
            if handled.insert(member.id) {
                self.fail_unless_moved(member, message, answered_at).await;
            }
        }
        // An answer with an entry for every image (results, unreadable ones, errors) of which
        // one is listed twice or cannot be read: the image left without a result had its entry
        // taken by it (a short answer is not that: it only lacks one).
        let garbled = !explained
            && (result.unreadable_results > 0 || result.repeated_results() > 0)
            && result.results.len() + result.unreadable_results + result.errors.len()
                >= members.len();
        for member in &members {
            if handled.contains(&member.id) {
                continue;
            }
            if !matched.unmatched.is_empty()
                || explained
                || result.unreadable_results > 0
                || result.repeated_results() > 0
            {
                // A result we could not attribute (or not read, or one listed in the place of
                // another) may be this job's: Claid may have billed it.
                if garbled {
                    // An answer that leaves an image without its result because it lists one
                    // twice, or lists one the daemon cannot read, cannot be matched to its
                    // images one to one either: the safety valve's case.
                    deps.batching.switch_off(&format!(
                        "batch {batch_id}: an image has no result, and the answer lists {} result(s) twice and {} it cannot read",
                        result.repeated_results(),
                        result.unreadable_results
                    ));
                }
                let claid_said = (!matched.loose_errors.is_empty())
                    .then(|| crate::text::tally(&matched.loose_errors));
                match deps.store.hold_unmatched(member.id, claid_said).await {
                    Ok(_) => self.report(member.manifest, JobOutcome::Held),
                    Err(err) => error!(error = %err, "Cannot hold the job in doubt"),
                }
            } else if result.status == TaskStatus::Done {
                // Claid's errors that could not be tied to this image are still shown.
                let loose = if matched.loose_errors.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (Claid's errors for images it did not name: {})",
                        crate::text::tally(&matched.loose_errors)
                    )
                };
                self.fail(
                    member,
                    FailureCode::BatchMissingResult,
                    &format!(
                        "batch {batch_id} is done but has no result and no error for this image{loose}"
                    ),
                )
                .await;
            } else {
                let message = unattributed_failure(&result, &matched.loose_errors);
                self.fail_unless_moved(member, &message, answered_at).await;
            }
        }
    }

    /// The inputs of this batch's other jobs: those its echoed request lists and no member
    /// has, and the jobs of the members' runs recorded in it that are not members.
    async fn sibling_inputs(
        &self,
        batch_id: u64,
        result: &BatchTask,
        members: &[Member],
    ) -> Vec<String> {
        let mine: HashSet<&str> = members.iter().map(|m| input_of(&m.job)).collect();
        let mut siblings: Vec<String> = result
            .request
            .get("input")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .filter(|input| !mine.contains(input))
            .map(str::to_owned)
            .collect();
        let ids: HashSet<JobId> = members.iter().map(|m| m.id).collect();
        let mut runs: Vec<ManifestId> = members.iter().map(|m| m.manifest).collect();
        runs.sort_unstable();
        runs.dedup();
        let recorded = self
            .deps
            .store
            .read(move |reader| {
                let mut inputs = Vec::new();
                for run in runs {
                    reader.for_each_job_of_manifest(run, |id, job| {
                        if job.batch == Some(batch_id) && !ids.contains(&id) {
                            inputs.push(input_of(&job).to_owned());
                        }
                        Ok::<(), crate::store::StoreError>(())
                    })?;
                }
                Ok::<_, crate::store::StoreError>(inputs)
            })
            .await;
        match recorded {
            Ok(inputs) => siblings.extend(inputs),
            Err(err) => warn!(error = %err, batch_id, "Cannot read the batch's other jobs"),
        }
        siblings
    }

    fn download(&self, member: Member, permit: Option<OwnedSemaphorePermit>) {
        let runner = self.deps.runner.clone();
        let finisher = self.deps.finisher.clone();
        // The fields are filled in by the runner (as for a single job): recorded here too,
        // each appeared twice on every line.
        let span = info_span!(
            "job",
            job_id = member.id,
            manifest = tracing::field::Empty,
            input = tracing::field::Empty,
            task_id = tracing::field::Empty
        );
        self.deps.tracker.spawn(
            async move {
                let outcome = runner.run(member.id).await;
                drop(permit);
                if !matches!(outcome, JobOutcome::NotRun | JobOutcome::Parked) {
                    finisher.settled(member.manifest, outcome);
                }
            }
            .instrument(span),
        );
    }

    async fn requeue_all(&self, members: &[Member], front: bool) {
        for m in members {
            if self.deps.store.requeue(m.id, false).await.is_err() {
                continue;
            }
            if front {
                self.deps.queue.push_front((m.manifest, m.id));
            } else {
                self.deps.queue.push_back(vec![(m.manifest, m.id)]);
            }
        }
    }

    /// Fails the batch's `members` as `task-timeout` (`message`); its results, if Claid
    /// announces them later, are still taken (see `Dispatch::timed_out`).
    async fn time_out(&self, batch_id: u64, members: &[Member], message: &str) {
        for m in members {
            self.fail(m, FailureCode::TaskTimeout, message).await;
        }
        self.deps.dispatch.timed_out(
            TaskRef::Batch(batch_id),
            members.iter().map(|m| (m.manifest, m.id)).collect(),
        );
    }

    /// Claid failed the image (`message`): a failure, unless its input or output is in a
    /// storage whose connector moved at Claid ([`crate::pipeline::job::Runner::held_for_moved_input`]: the
    /// job waits in the queue for a restart).
    async fn fail_unless_moved(
        &self,
        member: &Member,
        message: &str,
        answered_at: std::time::Instant,
    ) {
        let runner = &self.deps.runner;
        match runner
            .held_for_moved_input(member.id, &member.job, answered_at)
            .await
        {
            Some(outcome) => self.report(member.manifest, outcome),
            None => self.fail(member, FailureCode::ClaidError, message).await,
        }
    }

    async fn fail(&self, member: &Member, code: FailureCode, message: &str) {
        match self.deps.store.mark_failed(member.id, code, message).await {
            Ok(_) => {
                warn!(job_id = member.id, code = %code, reason = %message, "Job failed");
                self.report(member.manifest, JobOutcome::Failed(code));
            }
            Err(err) => error!(error = %err, "Cannot record the job failure"),
        }
    }

    fn report(&self, manifest: ManifestId, outcome: JobOutcome) {
        if !matches!(outcome, JobOutcome::NotRun | JobOutcome::Parked) {
            self.deps.finisher.settled(manifest, outcome);
        }
    }

    fn in_doubt_policy(&self) -> InDoubtPolicy {
        self.deps
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .policies
            .in_doubt
    }

    /// Waits `delay` before the next poll of the batch `clock` follows, planning again when a
    /// batch estimate changes (another batch ended) or the scout role comes free; false on
    /// shutdown.
    async fn wait_planned(
        &self,
        clock: &mut BatchClock,
        changes: &mut watch::Receiver<u64>,
        delay: Duration,
        since_submit: &impl Fn() -> Duration,
    ) -> bool {
        let mut deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = self.deps.cancel.cancelled() => return false,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The schedule's owner is gone: only the deadline is left.
                        return self.wait(deadline.saturating_duration_since(Instant::now())).await;
                    }
                    let plan = clock.plan();
                    let delay = self.deps.polls.batch_delay(clock, since_submit());
                    if clock.plan() != plan {
                        deadline = Instant::now() + delay;
                    }
                }
            }
        }
    }

    async fn wait(&self, d: Duration) -> bool {
        super::sleep_unless_cancelled(d, &self.deps.cancel).await
    }
}

/// The final update `watch` is handed, whenever it comes (never without a watch): what a
/// batch polled on the schedule while webhooks are unproven or silent takes without a poll.
async fn announced(watch: Option<&super::dispatch::Watch>) -> Option<TaskUpdate> {
    match watch {
        // A year: the batch is polled (and given up on) long before.
        Some(watch) => watch.wait(Duration::from_secs(365 * 24 * 3600)).await,
        None => std::future::pending().await,
    }
}

/// The results of a batch attributed to its jobs.
#[derive(Debug, Default)]
pub struct Matched {
    /// Member index → its output.
    pub done: Vec<(usize, wire::ImageObject)>,
    /// Member index → Claid's error text for it.
    pub failed: Vec<(usize, String)>,
    /// Result names that match no member, or more than one.
    pub unmatched: Vec<String>,
    /// Claid's error texts that name no member's input (Claid's errors need not quote it).
    pub loose_errors: Vec<String>,
}

impl Matched {
    /// Settles by elimination the errors names could not: when no result is left unmatched
    /// and as many members have neither a result nor an error as there are errors naming no
    /// input, those members are exactly the images Claid failed (each gets Claid's text, or
    /// all the texts when several). A result is never given by elimination: one that no
    /// name explains means Claid's naming is not what the daemon assumes, which is what the
    /// safety valve is for (batching off, the image left held in doubt).
    pub fn eliminate(&mut self, members: usize) {
        let accounted: HashSet<usize> = self
            .done
            .iter()
            .map(|(index, _)| *index)
            .chain(self.failed.iter().map(|(index, _)| *index))
            .collect();
        let left: Vec<usize> = (0..members).filter(|i| !accounted.contains(i)).collect();
        if !left.is_empty() && self.unmatched.is_empty() && self.loose_errors.len() == left.len() {
            let message = match self.loose_errors.as_slice() {
                [one] => one.clone(),
                all => format!(
                    "one of Claid's errors for this batch: {}",
                    crate::text::tally(all)
                ),
            };
            self.failed
                .extend(left.into_iter().map(|index| (index, message.clone())));
            self.loose_errors.clear();
        }
    }
}

/// Attributes results by output file name (the input's basename; the extension may follow
/// the output format) and errors by the input URL they name.
pub fn match_results(result: &BatchTask, members: &[Member]) -> Matched {
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, member) in members.iter().enumerate() {
        let names = result_names(input_of(&member.job), extension_of(&member.job.body));
        let mut seen = HashSet::new();
        for name in names {
            if seen.insert(name.clone()) {
                by_name.entry(name).or_default().push(index);
            }
        }
    }
    let mut out = Matched::default();
    // Each result's one candidate, if it has exactly one. A member named by two results is
    // matched by neither: which of the two images is its own cannot be told.
    let mut claims: HashMap<usize, Vec<(String, &wire::ImageObject)>> = HashMap::new();
    for item in &result.results {
        // The first of the output's names that names any member (an opaque `tmp_url` gives a
        // hash; its `object_key` the name).
        let names = item.output_object.file_names();
        let lookup = |name: &String| {
            by_name
                .get(name)
                .or_else(|| by_name.get(stem(name)))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let (name, candidates) = names
            .iter()
            .map(|name| (name.clone(), lookup(name)))
            .find(|(_, candidates)| !candidates.is_empty())
            .unwrap_or_else(|| (names.first().cloned().unwrap_or_default(), &[][..]));
        match candidates {
            [index] => claims
                .entry(*index)
                .or_default()
                .push((name, &item.output_object)),
            _ => out.unmatched.push(name),
        }
    }
    let mut taken: HashSet<usize> = HashSet::new();
    let mut claims: Vec<_> = claims.into_iter().collect();
    claims.sort_by_key(|(index, _)| *index);
    for (index, mut results) in claims {
        // The same object listed twice (a retried write on Claid's side) is one result.
        let mut unique: Vec<(String, &wire::ImageObject)> = Vec::with_capacity(results.len());
        for claim in results.drain(..) {
            if !unique.iter().any(|(_, object)| *object == claim.1) {
                unique.push(claim);
            }
        }
        let mut results = unique;
        match results.as_slice() {
            [(_, object)] => {
                taken.insert(index);
                out.done.push((index, (*object).clone()));
            }
            _ => {
                // Held with the unmatched: no error below may claim it either.
                taken.insert(index);
                out.unmatched
                    .extend(results.drain(..).map(|(name, _)| name));
            }
        }
    }
    for err in &result.errors {
        let owners_by = |names: &dyn Fn(&str, &str) -> bool| {
            members
                .iter()
                .enumerate()
                .filter(|(index, m)| !taken.contains(index) && names(&err.error, input_of(&m.job)))
                .map(|(index, _)| index)
                .collect::<Vec<_>>()
        };
        // An error quoting the input whole, else one naming its file (`sku-1.jpg: …`; a
        // batch's inputs have distinct file names): the error of that image alone.
        let mut owner = owners_by(&|text, input| text.contains(input));
        if owner.is_empty() {
            owner = owners_by(&names_file_of);
        }
        if let [index] = owner.as_slice() {
            taken.insert(*index);
            out.failed.push((*index, err.error.clone()));
        } else {
            out.loose_errors.push(err.error.clone());
        }
    }
    out
}

/// Why an image of a batch that did not end DONE failed, when no error of Claid's names it:
/// Claid's errors that name no image (`loose`), never those that name another image's input
/// (those are that image's: shown here, they sent the user to fix the wrong image).
pub fn unattributed_failure(result: &BatchTask, loose: &[String]) -> String {
    if !loose.is_empty() {
        return loose.join("; ");
    }
    let others = if result.errors.is_empty() {
        ""
    } else {
        " (its errors name other images)"
    };
    format!(
        "batch {} ended {} with no error for this image{others}",
        result.id, result.status
    )
}

/// The `unmatched` result names that are not the results of `siblings` (inputs of the same
/// batch whose jobs are not `members`). A name that could be a member's stays unexplained.
pub fn unexplained(unmatched: Vec<String>, members: &[Member], siblings: &[String]) -> Vec<String> {
    let extension = members
        .first()
        .map_or("jpeg", |m| extension_of(&m.job.body));
    let members_names: HashSet<String> = members
        .iter()
        .flat_map(|m| result_names(input_of(&m.job), extension_of(&m.job.body)))
        .collect();
    let siblings_names: HashSet<String> = siblings
        .iter()
        .flat_map(|input| result_names(input, extension))
        .filter(|name| !members_names.contains(name))
        .collect();
    let is_member = |name: &str| members_names.contains(name) || members_names.contains(stem(name));
    let is_sibling =
        |name: &str| siblings_names.contains(name) || siblings_names.contains(stem(name));
    unmatched
        .into_iter()
        .filter(|name| is_member(name) || !is_sibling(name))
        .collect()
}

/// The names a result of `input` may carry (matched by [`match_results`]): the batch output's
/// name (the input's with the format's `extension`), the input's own name, and its stem.
fn result_names(input: &str, extension: &str) -> Vec<String> {
    let raw = wire::basename(input);
    let base = wire::decoded(raw);
    let mut names = vec![
        wire::batch_output_name(input, extension),
        stem(&base).to_owned(),
        base.clone(),
    ];
    // An input URL that encodes its name (`caf%C3%A9-1.png`), which Claid may keep as it is
    // (its result URL then encodes the `%` again): the name as written matches too.
    if raw != base {
        names.push(wire::output_name_of(raw, extension));
        names.push(stem(raw).to_owned());
        names.push(raw.to_owned());
    }
    names
}

/// Whether Claid's error `text` names the file of `input` (its file name as written or
/// percent-decoded, standing as a word of its own: `bad1.jpg` is not named by `xbad1.jpg`).
fn names_file_of(text: &str, input: &str) -> bool {
    let raw = wire::basename(input);
    let decoded = wire::decoded(raw);
    let part_of_name = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '%');
    // The name goes on after the match: a name's character, or a `.` before one
    // (`bad1.jpg.png`); a sentence's full stop does not.
    let goes_on = |rest: &str| {
        let mut chars = rest.chars();
        match chars.next() {
            Some('.') => chars.next().is_some_and(part_of_name),
            Some(c) => part_of_name(c),
            None => false,
        }
    };
    [raw, decoded.as_str()]
        .into_iter()
        .filter(|name| !name.is_empty())
        .any(|name| {
            text.match_indices(name).any(|(at, _)| {
                !text[..at].chars().next_back().is_some_and(part_of_name)
                    && !goes_on(&text[at + name.len()..])
            })
        })
}

fn stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    }
}

/// The request of one batch of `members` (which share their body and destination).
fn batch_request(members: &[Member]) -> BatchEditRequest {
    BatchEditRequest {
        input: BatchInput::Urls(
            members
                .iter()
                .map(|m| input_of(&m.job).to_owned())
                .collect(),
        ),
        operations: members
            .first()
            .and_then(|m| m.job.body.get("operations").cloned())
            .unwrap_or_else(|| serde_json::json!({})),
        output: members.first().and_then(|m| batch_output(&m.job)),
    }
}

/// How a job caught mid-submit by a crash would be recognised in a batch webhook's echoed
/// request: the batch body it would have gone with ([`dispatch::body_key`]) and its input.
/// `None` for a job that never goes in a batch (a local file not staged).
pub fn lost_batch_job(manifest: ManifestId, id: JobId, job: &JobV1) -> Option<LostBatchJob> {
    if job.local && job.staged.is_none() {
        return None;
    }
    let member = Member {
        manifest,
        id,
        job: job.clone(),
    };
    let request = serde_json::to_value(batch_request(std::slice::from_ref(&member))).ok()?;
    Some(LostBatchJob {
        owner: (manifest, id),
        body: dispatch::body_key(&request)?,
        input: input_of(job).to_owned(),
    })
}

/// A batch's `output`: the body's, with a storage output's destination folder.
fn batch_output(job: &JobV1) -> Option<serde_json::Value> {
    let mut output = job.body.get("output").cloned()?;
    if let Some(folder) = batch_destination(job)
        && let Some(fields) = output.as_object_mut()
    {
        fields.insert("destination".to_owned(), serde_json::Value::String(folder));
    }
    Some(output)
}

/// The file extension of the output format a request body asks for (jpeg by default).
pub fn extension_of(body: &serde_json::Value) -> &'static str {
    let format = body.get("output").and_then(|o| o.get("format"));
    let name = match format {
        Some(serde_json::Value::String(name)) => name.as_str(),
        Some(serde_json::Value::Object(map)) => {
            map.get("type").and_then(|t| t.as_str()).unwrap_or("jpeg")
        }
        _ => "jpeg",
    };
    match name {
        "png" => "png",
        "webp" => "webp",
        "avif" => "avif",
        "tiff" => "tiff",
        _ => "jpg",
    }
}

/// Whether a job state belongs to a batch still at Claid (resumed by a batch task).
pub fn is_submitted_batch(job: &JobV1) -> bool {
    job.batch.is_some() && matches!(job.state, JobState::Submitted { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Default limits: 4 a second, 120 a minute → 2 requests a second over a minute.
    const DEFAULT_RATE: f64 = 2.0;

    #[test]
    fn a_slow_pace_shrinks_batches_and_a_fast_one_keeps_the_cap() {
        // 256 in flight, cap 64. Claid working on 8 images of a batch at once at 3.4 s an
        // image: 0.425 s per image → √(256 × 3 / (0.425 × 1)) ≈ 42.5.
        assert_eq!(paced_size(256, ms(425), DEFAULT_RATE, 64), 43);
        // One image at a time (3.4 s per image): smaller still, more batches side by side.
        assert_eq!(paced_size(256, ms(3_400), DEFAULT_RATE, 64), 16);
        // 32 at once: ≈ 0.106 s per image asks for more than the cap; the cap holds.
        assert_eq!(paced_size(256, ms(106), DEFAULT_RATE, 64), 64);
    }

    #[test]
    fn paced_batches_stay_between_the_floor_and_the_cap() {
        // A very slow pace, or a generous rate, never goes below MIN_PACED_IMAGES...
        assert_eq!(
            paced_size(256, ms(600_000), DEFAULT_RATE, 64),
            MIN_PACED_IMAGES
        );
        assert_eq!(paced_size(256, ms(425), 1_000.0, 64), MIN_PACED_IMAGES);
        // ...unless the cap is smaller (max_in_flight 16: batches of at most 4).
        assert_eq!(paced_size(16, ms(600_000), DEFAULT_RATE, 4), 4);
        // A pace of zero or a rate of zero is bounded, not a division by zero.
        assert_eq!(paced_size(256, Duration::ZERO, DEFAULT_RATE, 64), 64);
        assert_eq!(paced_size(256, ms(425), 0.0, 64), 64);
    }

    fn member(id: JobId) -> Member {
        Member {
            manifest: 1,
            id,
            job: JobV1 {
                manifest: 1,
                idx: id as u32,
                key: String::new(),
                input: format!("https://example.com/{id}.png"),
                local: false,
                body: Arc::new(serde_json::json!({"operations": {}})),
                output_rel: format!("m/{id}.jpg"),
                state: JobState::Queued,
                attempts: 0,
                in_doubt: 0,
                polls: 0,
                request_ids: Vec::new(),
                batch: None,
                batch_images: None,
                staged: None,
                replaces: None,
                submitted_to: None,
                input_seen: None,
                lost_answers: 0,
                accepted_unread: false,
                updated_at_ms: 0,
            },
        }
    }

    fn result_named(url: &str) -> wire::BatchResultItem {
        let object = |tmp_url: &str| {
            serde_json::from_value::<wire::ImageObject>(serde_json::json!({
                "ext": "jpg", "mps": 0.01, "mime": "image/jpeg", "format": "jpeg",
                "width": 10, "height": 10, "tmp_url": tmp_url,
            }))
            .expect("an image object")
        };
        wire::BatchResultItem {
            input_object: object(url),
            output_object: object(url),
        }
    }

    fn done_batch(results: Vec<wire::BatchResultItem>) -> BatchTask {
        serde_json::from_value::<BatchTask>(serde_json::json!({"id": 1, "status": "DONE"}))
            .map(|mut task| {
                task.results = results;
                task
            })
            .expect("a batch task")
    }

    /// A result whose `tmp_url` is an opaque signed URL (its last segment a hash) is matched
    /// by the name in its `object_key` (it matched no job: both images held in doubt and
    /// batching switched off).
    #[test]
    fn a_result_with_an_opaque_tmp_url_is_matched_by_its_object_key() {
        let members = [member(1), member(2)];
        let item = |n: u32, hash: &str| {
            let object = serde_json::from_value::<wire::ImageObject>(serde_json::json!({
                "ext": "jpg", "mps": 0.01, "mime": "image/jpeg", "format": "jpeg",
                "width": 10, "height": 10,
                "tmp_url": format!("https://r.test/tmp/{hash}?X-Amz-Signature=abc"),
                "object_key": format!("tmp/2026-12-05/{n}.jpg"),
            }))
            .expect("an image object");
            wire::BatchResultItem {
                input_object: object.clone(),
                output_object: object,
            }
        };
        let result = done_batch(vec![item(2, "3bc5b4fe"), item(1, "f28bebc4")]);
        let matched = match_results(&result, &members);
        assert!(matched.unmatched.is_empty(), "{:?}", matched.unmatched);
        let mut done: Vec<_> = matched
            .done
            .iter()
            .map(|(index, object)| (*index, object.object_key.clone().unwrap_or_default()))
            .collect();
        done.sort();
        assert_eq!(
            done,
            [
                (0, "tmp/2026-12-05/1.jpg".to_owned()),
                (1, "tmp/2026-12-05/2.jpg".to_owned())
            ]
        );
    }

    /// An ERROR batch whose one error names another member's input: that error is the other
    /// image's, never shown as this one's cause; a batch error naming no image still is.
    #[test]
    fn an_error_naming_another_image_is_not_this_images_cause() {
        let members = [member(1), member(2)];
        let mut result = serde_json::from_value::<BatchTask>(serde_json::json!({
            "id": 9, "status": "ERROR",
            "errors": [{"error": "Could not fetch https://example.com/1.png"}]
        }))
        .expect("a batch task");
        let matched = match_results(&result, &members);
        assert_eq!(matched.failed.len(), 1, "the error is image 1's");
        let why = unattributed_failure(&result, &matched.loose_errors);
        assert!(!why.contains("1.png"), "{why}");
        assert!(why.contains("no error for this image"), "{why}");
        result.errors =
            serde_json::from_value(serde_json::json!([{"error": "Batch failed"}])).expect("errors");
        let matched = match_results(&result, &members);
        assert_eq!(
            unattributed_failure(&result, &matched.loose_errors),
            "Batch failed"
        );
    }

    /// An error naming an image by its file name, not its whole URL, is that image's (it went
    /// to nobody: the image failed "with no error for this image" and another image was shown
    /// it); a file name inside a longer one names nobody.
    #[test]
    fn an_error_naming_an_images_file_is_that_images() {
        let mut members = [member(1), member(2), member(3)];
        members[0].job.input = "http://cdn.test/o/bad1.jpg".to_owned();
        members[1].job.input = "http://cdn.test/o/ghost1.jpg?v=2".to_owned();
        members[2].job.input = "http://cdn.test/o/caf%C3%A9.jpg".to_owned();
        let mut result = done_batch(Vec::new());
        result.errors = vec![
            error("bad1.jpg: simulated failure"),
            error("Could not decode 'café.jpg'."),
            error("xghost1.jpg and ghost1.jpg.png are other files"),
        ];
        let matched = match_results(&result, &members);
        assert_eq!(
            matched.failed,
            vec![
                (0, "bad1.jpg: simulated failure".to_owned()),
                (2, "Could not decode 'café.jpg'.".to_owned())
            ]
        );
        assert_eq!(
            matched.loose_errors,
            vec!["xghost1.jpg and ghost1.jpg.png are other files"]
        );
    }

    #[test]
    fn a_job_named_by_two_results_is_matched_by_neither() {
        let members = [member(1), member(2), member(3)];
        let result = done_batch(vec![
            result_named("https://claid.example/out/a/1.jpg"),
            result_named("https://claid.example/out/b/1.jpg"),
            result_named("https://claid.example/out/2.jpg"),
        ]);
        let matched = match_results(&result, &members);
        let done: Vec<usize> = matched.done.iter().map(|(index, _)| *index).collect();
        assert_eq!(done, vec![1], "only job 2 has one result of its own");
        assert_eq!(
            matched.unmatched,
            vec!["1.jpg".to_owned(), "1.jpg".to_owned()]
        );
        assert!(matched.failed.is_empty());
    }

    /// A result URL percent-encodes a non-ASCII name (`café-1.png` → `caf%C3%A9-1.jpg`); an
    /// input may give it either way. Both match their own job; the same object listed twice
    /// is one result, not an ambiguity.
    #[test]
    fn encoded_names_and_identical_duplicates_match_their_job() {
        let mut members = [member(1), member(2), member(3)];
        members[0].job.input = "https://example.com/café-1.png".to_owned();
        members[1].job.input = "https://example.com/caf%C3%A9-2.png".to_owned();
        members[2].job.input = "https://example.com/cr%C3%A8me-3.png".to_owned();
        let result = done_batch(vec![
            result_named("https://claid.example/out/caf%C3%A9-1.jpg"),
            result_named("https://claid.example/out/café-2.jpg"),
            // Claid kept the encoded name, and its URL encodes the `%` again.
            result_named("https://claid.example/out/cr%25C3%25A8me-3.jpg"),
        ]);
        let matched = match_results(&result, &members);
        let mut done: Vec<usize> = matched.done.iter().map(|(index, _)| *index).collect();
        done.sort_unstable();
        assert_eq!(done, vec![0, 1, 2], "{:?}", matched.unmatched);
        assert!(matched.unmatched.is_empty());
        // The same object listed twice.
        let members = [member(3)];
        let result = done_batch(vec![
            result_named("https://claid.example/out/3.jpg"),
            result_named("https://claid.example/out/3.jpg"),
        ]);
        let matched = match_results(&result, &members);
        assert_eq!(matched.done.len(), 1, "{:?}", matched.unmatched);
        assert!(matched.unmatched.is_empty());
    }

    #[test]
    fn results_of_the_batchs_other_jobs_are_theirs_not_a_failed_match() {
        // Jobs 1 and 2 wait for the batch; job 3 of the same batch settled before a crash.
        let members = [member(1), member(2)];
        let result = done_batch(vec![
            result_named("https://claid.example/out/3.jpg"),
            result_named("https://claid.example/out/1.jpg"),
            result_named("https://claid.example/out/2.jpg"),
            result_named("https://claid.example/out/9.jpg"),
            result_named("https://claid.example/out/x/2.jpg"),
        ]);
        let matched = match_results(&result, &members);
        assert_eq!(matched.unmatched, vec!["3.jpg", "9.jpg", "2.jpg", "2.jpg"]);
        let siblings = ["https://example.com/3.png".to_owned()];
        assert_eq!(
            unexplained(matched.unmatched, &members, &siblings),
            vec!["9.jpg", "2.jpg", "2.jpg"],
            "3 is the sibling's; 9 is nobody's and 2 twice is still ambiguous"
        );
        // A sibling input named like a member cannot explain that member's results.
        let same_name = ["https://example.com/other/2.png".to_owned()];
        assert_eq!(
            unexplained(vec!["2.jpg".to_owned()], &members, &same_name),
            vec!["2.jpg"]
        );
    }

    fn error(text: &str) -> wire::TaskError {
        serde_json::from_value(serde_json::json!({"error": text})).expect("an error")
    }

    /// Claid's errors need not quote the input: an error left over goes to the one image
    /// left without a result or an error (several to as many, each with all the texts).
    #[test]
    fn errors_that_name_no_input_go_to_the_images_left_by_elimination() {
        let members = [member(1), member(2), member(3)];
        let mut result = done_batch(vec![
            result_named("https://claid.example/out/1.jpg"),
            result_named("https://claid.example/out/3.jpg"),
        ]);
        result.errors = vec![error("Image could not be processed.")];
        let mut matched = match_results(&result, &members);
        assert_eq!(matched.loose_errors, vec!["Image could not be processed."]);
        matched.eliminate(members.len());
        assert_eq!(
            matched.failed,
            vec![(1, "Image could not be processed.".to_owned())]
        );

        let one = [member(7)];
        let mut alone = done_batch(Vec::new());
        alone.errors = vec![error("Unsupported image.")];
        let mut matched = match_results(&alone, &one);
        matched.eliminate(one.len());
        assert_eq!(matched.failed, vec![(0, "Unsupported image.".to_owned())]);

        // Two errors for two images: both fail, each with both texts.
        let two = [member(1), member(2)];
        let mut both = done_batch(Vec::new());
        both.errors = vec![error("a"), error("b")];
        let mut matched = match_results(&both, &two);
        matched.eliminate(two.len());
        let failed: Vec<usize> = matched.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, vec![0, 1]);
        assert!(matched.failed[0].1.contains("a; b"));
    }

    /// A result Claid named otherwise is never given to the one image left: a name the
    /// daemon cannot explain means its naming assumption failed, so the image is held in
    /// doubt (batching off) even when elimination would point at it.
    #[test]
    fn one_result_named_otherwise_is_not_given_to_the_one_image_left() {
        let members = [member(1), member(2), member(3)];
        let result = done_batch(vec![
            result_named("https://claid.example/out/2.jpg"),
            result_named("https://claid.example/out/9f3ac.jpg"),
            result_named("https://claid.example/out/1.jpg"),
        ]);
        let mut matched = match_results(&result, &members);
        matched.eliminate(members.len());
        assert_eq!(matched.unmatched, vec!["9f3ac.jpg"]);
        let mut done: Vec<usize> = matched.done.iter().map(|(index, _)| *index).collect();
        done.sort_unstable();
        assert_eq!(done, vec![0, 1], "only the named results are matched");
        assert!(matched.failed.is_empty());
    }

    #[test]
    fn results_in_any_order_each_find_their_one_job() {
        let members = [member(1), member(2), member(3)];
        let result = done_batch(vec![
            result_named("https://claid.example/out/3.jpg"),
            result_named("https://claid.example/out/1.jpg"),
            result_named("https://claid.example/out/2.jpg"),
        ]);
        let matched = match_results(&result, &members);
        let done: Vec<(usize, String)> = matched
            .done
            .iter()
            .map(|(index, object)| (*index, object.file_name().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(
            done,
            vec![
                (0, "1.jpg".to_owned()),
                (1, "2.jpg".to_owned()),
                (2, "3.jpg".to_owned())
            ]
        );
        assert!(matched.unmatched.is_empty());
    }

    /// Inputs whose results could carry one name go to different batches, even when their
    /// outputs are named apart: `shoe.jpg`'s result and `shoe.jpg.png`'s input stem are both
    /// `shoe.jpg` (two pairs in one batch were unmatchable: two billed images held in doubt).
    /// Each batch then matches every result by name.
    #[test]
    fn inputs_whose_result_names_could_meet_go_to_different_batches() {
        let with_input = |id: JobId, name: &str| {
            let mut member = member(id);
            member.job.input = format!("https://example.com/p/{name}");
            member
        };
        let mut open = Open::default();
        for (id, name) in [
            (1, "shoe.jpg"),
            (2, "shoe.jpg.png"),
            (3, "boot.jpg"),
            (4, "boot.jpg.png"),
        ] {
            assert!(open.add(with_input(id, name), 100).is_none());
        }
        let batches = open.take_all();
        assert_eq!(batches.len(), 2, "{batches:?}");
        for members in &batches {
            let result = done_batch(
                members
                    .iter()
                    .map(|m| result_named(&format!("https://claid.example/r/{}", m.output_name())))
                    .collect(),
            );
            let matched = match_results(&result, members);
            assert!(matched.unmatched.is_empty(), "{:?}", matched.unmatched);
            assert_eq!(matched.done.len(), members.len());
        }
        // A URL with no file name goes alone (what Claid names its output is not known).
        let connectors = HashSet::new();
        assert!(!batchable_input("https://example.com/s/", &connectors));
        assert!(!batchable_input("https://example.com", &connectors));
        assert!(batchable_input("https://example.com/s/a.jpg", &connectors));
        assert!(!batchable_input(
            "https://example.com/s/a.jpg?v=2",
            &connectors
        ));
        assert!(!batchable_input(
            "https://example.com/s/a.jpg#x",
            &connectors
        ));
        // Nor does a name that starts with a dot (Claid's name for its output is not said).
        assert!(!batchable_input("https://example.com/o/.x", &connectors));
        assert!(!batchable_input(
            "https://example.com/o/%2Ex.png",
            &connectors
        ));
        let connectors = HashSet::from(["cat".to_owned()]);
        assert!(batchable_input("storage://cat/in/a.png", &connectors));
        assert!(!batchable_input("storage://cat/in/.a.png", &connectors));
    }

    #[test]
    fn an_open_batch_filled_to_an_earlier_larger_target_goes_when_the_target_shrinks() {
        let mut open = Open::default();
        for id in 1..=10 {
            assert!(open.add(member(id), 16).is_none(), "10 of 16");
        }
        // Claid's pace now asks for 8: the next job starts a batch of its own, and the batch
        // of 10 goes now instead of waiting for the queue to run dry.
        let ready = open.add(member(11), 8).expect("the batch of 10 is ready");
        let ids: Vec<JobId> = ready.iter().map(|m| m.id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        let rest: Vec<Vec<JobId>> = open
            .take_all()
            .into_iter()
            .map(|b| b.into_iter().map(|m| m.id).collect())
            .collect();
        assert_eq!(rest, vec![vec![11]]);
    }

    /// Canary rounds: a canary whose answer was lost gives up its round (the next batch is a
    /// canary again); when it is answered later (adopted from its webhook) and its results
    /// match, it settles the round then; ended unanswered, it settles nothing.
    #[test]
    fn an_earlier_rounds_canary_settles_the_round_only_when_answered() {
        let batching = Batching::new(BatchConfig {
            max_images: 100,
            linger: ms(200),
        });
        assert!(batching.may_send(), "nothing sent yet");
        let first = batching.dispatched();
        assert!(!batching.may_send(), "the canary is out");
        batching.canary_unanswered(first);
        assert!(batching.may_send(), "a canary goes in its place");
        let second = batching.dispatched();
        assert!(second > first);
        assert!(!batching.may_send(), "the second canary is out");
        batching.settled(false, first);
        assert!(
            !batching.may_send() && batching.canary_sent(),
            "the first ending unanswered changes nothing"
        );
        batching.settled(true, first);
        assert!(
            batching.canary_settled() && batching.may_send(),
            "the first, answered and matched, settles the round"
        );
        batching.settled(false, second);
        assert!(batching.canary_settled(), "settled stays settled");
        // Answered while no canary is out (the next not sent yet): settled as well.
        let idle = Batching::new(BatchConfig {
            max_images: 100,
            linger: ms(200),
        });
        let lost = idle.dispatched();
        idle.canary_unanswered(lost);
        assert!(!idle.canary_sent(), "no canary out");
        idle.settled(true, lost);
        assert!(idle.canary_settled() && idle.may_send(), "settled");
    }

    #[test]
    fn the_target_is_the_canary_then_the_cap_then_the_paced_size() {
        let batching = Batching::new(BatchConfig {
            max_images: 100,
            linger: ms(200),
        });
        assert_eq!(
            batching.target_size(256, Some(ms(425)), DEFAULT_RATE, false),
            CANARY_IMAGES
        );
        assert_eq!(batching.view().paced_size, None);
        batching.dispatched();
        assert_eq!(
            batching.target_size(256, None, DEFAULT_RATE, false),
            32,
            "until the pace is known, an eighth of max_in_flight"
        );
        assert_eq!(
            batching.target_size(32, None, DEFAULT_RATE, false),
            8,
            "an eighth is at least 8 images (the cap of the default max_in_flight)"
        );
        assert_eq!(batching.view().paced_size, None, "no pace known yet");
        assert_eq!(
            batching.target_size(256, None, DEFAULT_RATE, true),
            64,
            "with webhooks, the cap (a quarter) until the pace is known"
        );
        assert_eq!(
            batching.target_size(256, Some(ms(425)), DEFAULT_RATE, true),
            43,
            "once the pace is known, webhooks or not, the paced size"
        );
        assert_eq!(
            batching.target_size(256, Some(ms(425)), DEFAULT_RATE, false),
            43
        );
        assert_eq!(batching.view().paced_size, Some(43), "shown in /status");
        // `max_in_flight: 1`: a canary of one (it waits for a slot per image).
        let one = Batching::new(BatchConfig {
            max_images: 100,
            linger: ms(200),
        });
        assert_eq!(one.target_size(1, None, DEFAULT_RATE, false), 1);
        one.dispatched();
        assert_eq!(one.target_size(1, Some(ms(425)), DEFAULT_RATE, false), 1);
        // `max_images` still bounds it.
        let small = Batching::new(BatchConfig {
            max_images: 10,
            linger: ms(200),
        });
        small.dispatched();
        assert_eq!(
            small.target_size(256, Some(ms(425)), DEFAULT_RATE, false),
            10
        );
    }

    #[test]
    fn a_drops_last_jobs_go_in_batches_of_about_what_claid_works_on_at_once() {
        assert_eq!(tail_batches(26, None), 1, "unknown: one batch");
        // About 7 at once (8 at least): 26 images in 3 batches (9, 9 and 8).
        assert_eq!(tail_batches(26, Some(7.1)), 3);
        // 23 at once: 26 images are one round already.
        assert_eq!(tail_batches(26, Some(23.0)), 1);
        assert_eq!(tail_batches(26, Some(13.0)), 2);
        // A tiny or absurd parallelism is bounded: batches of 8 at least, never more batches
        // than images, never zero.
        assert_eq!(tail_batches(26, Some(0.0)), 3);
        assert_eq!(tail_batches(3, Some(f64::INFINITY)), 1);
        assert_eq!(tail_batches(0, Some(1.0)), 1);
        assert_eq!(tail_batches(100, Some(f64::NAN)), 12);
    }
}
