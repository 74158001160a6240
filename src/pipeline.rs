//! The job scheduler: turns accepted manifests into jobs in the store, and drives each job
//! submit → poll → download → output → done with bounded concurrency, interruptible waits and
//! error classification (SPEC §5).
//!
//! Concurrency: a job holds an owned permit of `in_flight` (size `api.max_in_flight`) from the
//! moment it is taken for submission until it is terminal or parked, so at most that many tasks
//! exist at Claid at once; downloads additionally hold a permit of `downloads`. Waits (queue,
//! permits, poll intervals, backoff) are interruptible by the cancellation token; units of work
//! ("submit → record the task id", "write output → mark done") are not.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::claid::wire::TaskStatus;
use crate::claid::{ClaidError, Client, ErrorClass};
use crate::config::{InDoubtPolicy, Limits, OnManifestDone, OnOutputExists, PollConfig, Profile};
use crate::filename;
use crate::manifest::{self, Input, ManifestError, ManifestSpec};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::output::{self, ExistsPolicy};
use crate::report;
use crate::store::records::{DoneInfo, JobState, JobV1, ManifestState, ManifestV1};
use crate::store::{JobId, ManifestId, StateKind, Store, StoreError, now_ms};

/// A submit that keeps failing transiently gives up after this many attempts during which the
/// API answered other calls (it stays replayable from the store); attempts while every call
/// fails (an outage) do not count. Polls and downloads of a task that exists never give up.
const MAX_TRANSIENT_SUBMITS: u32 = 12;
/// How often a paused daemon lets one submit through to see whether the API is back.
const PAUSE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a limiter wait keeps polls rationed.
const PRESSURE_MEMORY: Duration = Duration::from_secs(10);
/// Observed task durations kept for scheduling first polls.
const DURATION_SAMPLES: usize = 256;

/// Everything the pipeline needs, built by `daemon`.
pub struct Deps {
    pub store: Store,
    pub client: Client,
    pub folders: Folders,
    pub policies: Policies,
    pub poll: PollConfig,
    pub limits: Limits,
    pub profiles: BTreeMap<String, Profile>,
    pub max_in_flight: usize,
    pub max_downloads: usize,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

/// The folders the pipeline reads from and writes to (absolute).
#[derive(Debug, Clone)]
pub struct Folders {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    pub rejected: PathBuf,
}

/// The operator's choices from the config.
#[derive(Debug, Clone, Copy)]
pub struct Policies {
    pub on_output_exists: OnOutputExists,
    pub on_manifest_done: OnManifestDone,
    pub in_doubt: InDoubtPolicy,
}

/// Whether the daemon may submit. Systemic API errors (401/402/403) pause submitting until a
/// probe submit succeeds; queued jobs are kept, never failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Paused { reason: String },
}

/// What resuming from the store found (logged, and shown by `status`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ResumeSummary {
    pub queued: usize,
    pub polling: usize,
    pub downloading: usize,
    pub in_doubt_resubmitted: usize,
    pub in_doubt_held: usize,
    pub manifests: usize,
}

/// Totals over the manifests this process has handled, for `run --once`'s exit code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub manifests: usize,
    pub rejected: usize,
    pub jobs: u64,
    pub done: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub held: u64,
    /// Manifests finished in this run whose report counts a failed job (also ones that
    /// failed before a restart).
    pub manifests_with_failures: usize,
}

/// A cheap-to-clone handle on the running pipeline.
#[derive(Clone)]
pub struct Handle {
    ctx: Arc<Ctx>,
}

struct Ctx {
    store: Store,
    client: Client,
    folders: Folders,
    /// Reloadable on SIGHUP, like `limits` and `profiles`.
    policies: std::sync::RwLock<Policies>,
    poll: PollConfig,
    limits: std::sync::RwLock<Limits>,
    metrics: Arc<Metrics>,
    max_in_flight: usize,
    started: Instant,
    profiles: std::sync::RwLock<BTreeMap<String, Profile>>,
    /// One permit per task at Claid (submitted, not yet finished). Owned permits move into the
    /// job task; dropping the permit is what frees the slot.
    in_flight: Arc<Semaphore>,
    /// Bounds concurrent downloads + output writes.
    downloads: Arc<Semaphore>,
    /// Jobs waiting to be submitted, FIFO; systemically refused jobs go back to the front.
    queue: Mutex<VecDeque<JobId>>,
    /// Wakes the submitter when the queue grows.
    queue_wake: Notify,
    health: watch::Sender<Health>,
    /// Per-manifest progress, so completion is O(1) per job instead of a store scan.
    progress: Mutex<Progress>,
    /// Fires whenever a manifest settles (all its jobs terminal or held).
    settled: Notify,
    durations: Mutex<Durations>,
    /// The client's limiter-wait count when last seen, and when it last grew.
    pressure: Mutex<(u64, Option<Instant>)>,
    /// When the API last answered a call successfully: a submit failing transiently counts
    /// against its job only if the API answered someone since (else it is an outage).
    last_api_ok: Mutex<Option<Instant>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Default)]
struct Progress {
    manifests: HashMap<ManifestId, ManifestProgress>,
    totals: Totals,
}

struct ManifestProgress {
    rel: PathBuf,
    total: u64,
    /// Jobs that are neither terminal nor held.
    open: u64,
    held: u64,
    /// Jobs this process finished, for images per minute.
    finished_this_run: u64,
    started: Instant,
}

/// Observed task durations (submit → DONE seen), for scheduling first polls.
#[derive(Default)]
struct Durations {
    samples: VecDeque<Duration>,
}

impl Durations {
    fn record(&mut self, d: Duration) {
        if self.samples.len() == DURATION_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(d);
    }

    /// The `q` quantile of recent durations, if any were observed.
    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[idx.min(sorted.len() - 1)])
    }
}

/// How a job step ended.
enum Step {
    /// The job moved to another state; run the next step.
    Continue,
    /// The job is terminal, held, or the daemon is stopping: the task ends.
    Stop,
}

impl Handle {
    pub fn new(deps: Deps) -> Handle {
        let (health, _) = watch::channel(Health::Healthy);
        let ctx = Ctx {
            store: deps.store,
            client: deps.client,
            folders: deps.folders,
            policies: std::sync::RwLock::new(deps.policies),
            poll: deps.poll,
            limits: std::sync::RwLock::new(deps.limits),
            metrics: deps.metrics,
            max_in_flight: deps.max_in_flight,
            started: Instant::now(),
            profiles: std::sync::RwLock::new(deps.profiles),
            in_flight: Arc::new(Semaphore::new(deps.max_in_flight)),
            downloads: Arc::new(Semaphore::new(deps.max_downloads)),
            queue: Mutex::new(VecDeque::new()),
            queue_wake: Notify::new(),
            health,
            progress: Mutex::new(Progress::default()),
            settled: Notify::new(),
            durations: Mutex::new(Durations::default()),
            pressure: Mutex::new((0, None)),
            last_api_ok: Mutex::new(None),
            cancel: deps.cancel,
            tracker: deps.tracker,
        };
        Handle { ctx: Arc::new(ctx) }
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    pub fn health(&self) -> Health {
        self.ctx.health.borrow().clone()
    }

    pub fn totals(&self) -> Totals {
        lock(&self.ctx.progress).totals
    }

    /// Applies a reloaded config (SIGHUP): profiles, policies and limits apply to what is
    /// registered or decided from now on.
    pub fn reload(&self, profiles: BTreeMap<String, Profile>, policies: Policies, limits: Limits) {
        *self.ctx.profiles.write().unwrap_or_else(|e| e.into_inner()) = profiles;
        *self.ctx.policies.write().unwrap_or_else(|e| e.into_inner()) = policies;
        *self.ctx.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn policies(&self) -> Policies {
        *self.ctx.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Tasks submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.ctx.max_in_flight - self.ctx.in_flight.available_permits()
    }

    /// Jobs waiting to be submitted.
    pub fn queued(&self) -> usize {
        lock(&self.ctx.queue).len()
    }

    pub fn uptime(&self) -> Duration {
        self.ctx.started.elapsed()
    }

    /// Per manifest this daemon works on: images finished per minute since it started on it,
    /// and the jobs still open.
    pub fn rates(&self) -> BTreeMap<ManifestId, (f64, u64)> {
        lock(&self.ctx.progress)
            .manifests
            .iter()
            .map(|(id, p)| {
                let minutes = p.started.elapsed().as_secs_f64() / 60.0;
                let per_min = if minutes > 0.0 {
                    p.finished_this_run as f64 / minutes
                } else {
                    0.0
                };
                (*id, (per_min, p.open))
            })
            .collect()
    }

    /// Updates the metrics read at scrape time (store counts, client counters, gauges).
    /// Blocking: reads the whole store.
    pub fn refresh_metrics(&self, metrics: &Metrics) -> Result<(), StoreError> {
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for counts in self.ctx.store.counts()?.values() {
            for (state, n) in [
                ("queued", counts.queued),
                ("submitting", counts.submitting),
                ("submitted", counts.submitted),
                ("downloading", counts.downloading),
                ("in_doubt", counts.in_doubt),
                ("done", counts.done),
                ("failed", counts.failed),
            ] {
                *by_state.entry(state.to_owned()).or_default() += n;
            }
        }
        metrics.set_job_counts(&by_state);
        metrics
            .in_doubt
            .set(self.ctx.store.in_doubt_total()? as i64);
        let in_flight: u64 = ["submitting", "submitted", "downloading"]
            .iter()
            .map(|state| by_state.get(*state).copied().unwrap_or(0))
            .sum();
        metrics.in_flight.set(in_flight as i64);
        metrics
            .paused
            .set(i64::from(matches!(self.health(), Health::Paused { .. })));
        metrics.fold_client(&self.ctx.client.stats());
        Ok(())
    }

    /// Resumes every unfinished job of the store (SPEC §5.3): `Submitted` → poll,
    /// `Downloading` → download again, `Queued` → submit, `Submitting` → in doubt.
    pub async fn resume(&self) -> Result<ResumeSummary, StoreError> {
        let ctx = &self.ctx;
        let store = ctx.store.clone();
        let unfinished = blocking(move || store.unfinished_summaries()).await?;
        let mut summary = ResumeSummary::default();
        let mut to_drive = Vec::new();
        let mut to_queue = Vec::new();
        // Per manifest: (open, held) after the in-doubt policy, from this one pass.
        let mut tallies: HashMap<ManifestId, (u64, u64)> = HashMap::new();
        for (id, job) in unfinished {
            let tally = tallies.entry(job.manifest).or_default();
            match job.state.kind {
                StateKind::Queued => {
                    summary.queued += 1;
                    tally.0 += 1;
                    to_queue.push(id);
                }
                StateKind::Submitting => match self.policies().in_doubt {
                    InDoubtPolicy::Resubmit => {
                        let store = ctx.store.clone();
                        blocking(move || store.requeue(id, true)).await?;
                        warn!(
                            job_id = id,
                            "Job was caught mid-submit by a crash; resubmitting (in doubt)"
                        );
                        summary.in_doubt_resubmitted += 1;
                        tally.0 += 1;
                        to_queue.push(id);
                    }
                    InDoubtPolicy::Hold => {
                        let store = ctx.store.clone();
                        blocking(move || store.mark_in_doubt(id)).await?;
                        warn!(
                            job_id = id,
                            "Job was caught mid-submit by a crash; held for `replay --in-doubt`"
                        );
                        summary.in_doubt_held += 1;
                        tally.1 += 1;
                    }
                },
                StateKind::Submitted => {
                    summary.polling += 1;
                    tally.0 += 1;
                    to_drive.push(id);
                }
                StateKind::Downloading => {
                    summary.downloading += 1;
                    tally.0 += 1;
                    to_drive.push(id);
                }
                StateKind::InDoubt => tally.1 += 1,
                StateKind::Done | StateKind::Failed => {}
            }
        }
        // Progress for every manifest that is not finished yet.
        let store = ctx.store.clone();
        let manifests = blocking(move || store.manifests()).await?;
        for (mid, m) in manifests {
            if matches!(m.state, ManifestState::Finished { .. }) {
                continue;
            }
            summary.manifests += 1;
            // Jobs not in the unfinished pass ended before the restart (done or failed): the
            // report written when the manifest finishes counts them exactly.
            let (open, held) = tallies.get(&mid).copied().unwrap_or_default();
            let ended = u64::from(m.n_jobs).saturating_sub(open + held);
            self.track_counts(
                mid,
                &m.rel,
                Tally {
                    open,
                    held,
                    done: ended,
                    ..Tally::default()
                },
            );
        }
        for id in to_drive {
            // Resumed tasks exist at Claid already: they take their permits first.
            let permit = tokio::select! {
                permit = ctx.in_flight.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = ctx.cancel.cancelled() => return Ok(summary),
            };
            self.spawn_job(id, permit);
        }
        self.enqueue(to_queue, false);
        // Manifests whose jobs all ended before the crash still need their report and move.
        let settled: Vec<ManifestId> = lock(&ctx.progress)
            .manifests
            .iter()
            .filter(|(_, p)| p.open == 0)
            .map(|(id, _)| *id)
            .collect();
        for mid in settled {
            self.finish_manifest(mid).await;
        }
        Ok(summary)
    }

    /// Starts tracking a manifest's progress from the states of its jobs (kind, unchanged).
    fn track_manifest(
        &self,
        mid: ManifestId,
        rel: &str,
        jobs: impl Iterator<Item = (StateKind, bool)>,
    ) {
        let mut tally = Tally::default();
        for (kind, unchanged) in jobs {
            match kind {
                StateKind::Done => {
                    tally.done += 1;
                    tally.unchanged += u64::from(unchanged);
                }
                StateKind::Failed => tally.failed += 1,
                StateKind::InDoubt => tally.held += 1,
                _ => tally.open += 1,
            }
        }
        self.track_counts(mid, rel, tally);
    }

    fn track_counts(&self, mid: ManifestId, rel: &str, tally: Tally) {
        let mut progress = lock(&self.ctx.progress);
        let entry = ManifestProgress {
            rel: PathBuf::from(rel),
            total: tally.open + tally.held + tally.done + tally.failed,
            open: tally.open,
            held: tally.held,
            finished_this_run: 0,
            started: Instant::now(),
        };
        progress.totals.done += tally.done;
        progress.totals.unchanged += tally.unchanged;
        progress.totals.failed += tally.failed;
        progress.totals.held += tally.held;
        progress.totals.jobs += entry.total;
        progress.totals.manifests += 1;
        progress.manifests.insert(mid, entry);
    }

    /// Takes one stable manifest found by the watcher: validates it, rejects it, or registers
    /// its jobs and queues them. Never fails the daemon: every problem is about this file only.
    pub async fn intake(&self, path: PathBuf) {
        let ctx = &self.ctx;
        let rel = match path.strip_prefix(&ctx.folders.inbox) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => {
                warn!(path = %path.display(), "Ignoring a candidate outside the inbox");
                return;
            }
        };
        let span = info_span!("manifest", manifest = %rel.display());
        self.intake_inner(path, rel).instrument(span).await;
    }

    async fn intake_inner(&self, path: PathBuf, rel: PathBuf) {
        let ctx = &self.ctx;
        let rel_str = rel.to_string_lossy().into_owned();
        // Fast path: a re-drop of a file already registered is recognised by its hash alone,
        // without validating it again (a 100,000-image manifest costs seconds to validate).
        let hash_path = path.clone();
        if let Ok(sha256) = blocking(move || output::sha256_file(&hash_path)).await {
            match self.seen_before(&rel, &rel_str, &sha256).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(err) => {
                    error!(error = %err, "Cannot read the store; will retry this manifest at the next scan");
                    return;
                }
            }
        }
        let inbox = ctx.folders.inbox.clone();
        let profiles = ctx
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let limits = *ctx.limits.read().unwrap_or_else(|e| e.into_inner());
        let outbox = ctx.folders.outbox.clone();
        let load_path = path.clone();
        let is_image = manifest::is_image_name(&path);
        let loaded = blocking(move || {
            let load_ctx = manifest::LoadContext {
                inbox: &inbox,
                outbox: Some(&outbox),
                profiles: &profiles,
                limits: &limits,
            };
            // The watcher emits images only from folders with a recipe (SPEC §4.3).
            if is_image {
                manifest::load_recipe_image(&load_ctx, &load_path)
            } else {
                manifest::load(&load_ctx, &load_path)
            }
        })
        .await;
        let spec = match loaded {
            Ok(spec) => spec,
            Err(err) => {
                self.reject(&path, &rel, &err).await;
                return;
            }
        };
        match self.seen_before(&rel, &rel_str, &spec.sha256).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => {
                error!(error = %err, "Cannot read the store; will retry this manifest at the next scan");
                return;
            }
        }
        if let Err(err) = self.register(spec, rel_str).await {
            error!(error = %err, "Cannot record the manifest in the store; will retry at the next scan");
        }
    }

    /// Whether this exact drop (path and content) is already registered; a finished one is
    /// disposed of again per `on_manifest_done`, without any API call.
    async fn seen_before(
        &self,
        rel: &Path,
        rel_str: &str,
        sha256: &str,
    ) -> Result<bool, StoreError> {
        let store = self.ctx.store.clone();
        let lookup = rel_str.to_owned();
        match blocking(move || store.latest_manifest_by_rel(&lookup)).await? {
            Some((mid, prev)) if prev.sha256 == sha256 => {
                if matches!(prev.state, ManifestState::Finished { .. }) {
                    info!("Manifest is unchanged and already finished; nothing to do");
                    self.dispose_manifest(rel).await;
                } else {
                    debug!(manifest_id = mid, "Manifest is already being processed");
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Records the manifest and its jobs (one durable step), marking jobs whose identical
    /// output already exists as done-unchanged, then queues the rest.
    async fn register(&self, spec: ManifestSpec, rel: String) -> Result<(), StoreError> {
        let ctx = &self.ctx;
        let store = ctx.store.clone();
        let outbox = ctx.folders.outbox.clone();
        let sha256 = spec.sha256.clone();
        let n_jobs = spec.jobs.len();
        let rel_for_track = rel.clone();
        let (mid, ids, jobs) = blocking(move || -> Result<_, StoreError> {
            let now = now_ms();
            let record = ManifestV1 {
                rel,
                sha256,
                registered_at_ms: now,
                n_jobs: 0,
                state: ManifestState::Active,
            };
            // Only whether each job is queued is kept: the records stream into the store.
            let mut queued: Vec<bool> = Vec::with_capacity(spec.jobs.len());
            let records = spec.jobs.into_iter().map(|job| {
                let state = unchanged_state(&store, &outbox, &job.key)?.unwrap_or(JobState::Queued);
                queued.push(matches!(state, JobState::Queued));
                let (input, local) = match job.input {
                    Input::Remote(url) => (url, false),
                    Input::Local { rel, .. } => (rel.to_string_lossy().into_owned(), true),
                };
                Ok(JobV1 {
                    manifest: 0,
                    idx: job.idx as u32,
                    key: job.key,
                    input,
                    local,
                    body: job.body,
                    output_rel: job.output_rel.to_string_lossy().into_owned(),
                    state,
                    attempts: 0,
                    in_doubt: 0,
                    polls: 0,
                    request_ids: Vec::new(),
                    updated_at_ms: now,
                })
            });
            let (mid, ids) = store.register_manifest_from(record, records)?;
            Ok((mid, ids, queued))
        })
        .await?;
        let queued: Vec<JobId> = ids
            .iter()
            .zip(&jobs)
            .filter(|(_, queued)| **queued)
            .map(|(id, _)| *id)
            .collect();
        let unchanged = n_jobs - queued.len();
        let kinds = jobs.iter().map(|queued| {
            if *queued {
                (StateKind::Queued, false)
            } else {
                (StateKind::Done, true)
            }
        });
        self.track_manifest(mid, &rel_for_track, kinds);
        info!(
            manifest_id = mid,
            jobs = n_jobs,
            unchanged,
            to_submit = queued.len(),
            "Manifest accepted"
        );
        self.enqueue(queued, false);
        if lock(&ctx.progress)
            .manifests
            .get(&mid)
            .is_some_and(|p| p.open == 0)
        {
            self.finish_manifest(mid).await;
        }
        Ok(())
    }

    /// Moves an invalid manifest to `rejected/` (mirrored) with `<name>.error.txt` beside it.
    async fn reject(&self, path: &Path, rel: &Path, err: &ManifestError) {
        let ctx = &self.ctx;
        error!(error = %err, "Manifest rejected; nothing was submitted");
        let text = err.error_txt();
        let src = path.to_path_buf();
        let inbox = ctx.folders.inbox.clone();
        let rejected = ctx.folders.rejected.clone();
        let rel = rel.to_path_buf();
        let moved = blocking(move || -> Result<PathBuf, output::OutputError> {
            let dest = output::move_mirrored(&inbox, &src, &rejected)?;
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Shortened with a hash when the name is too long for the suffix (see `filename`).
            let error_name = filename::error_file_name(
                std::ffi::OsStr::new(&name),
                &filename::FsLimits::of(&dest),
            );
            let error_path = dest.with_file_name(error_name);
            output::write_text_atomic(&error_path, &text)?;
            Ok(dest)
        })
        .await;
        match moved {
            Ok(dest) => info!(to = %dest.display(), "Moved the rejected manifest"),
            Err(err) => {
                error!(error = %err, manifest = %rel.display(), "Cannot move the rejected manifest out of the inbox")
            }
        }
        lock(&ctx.progress).totals.rejected += 1;
        ctx.metrics
            .manifests
            .get_or_create(&OutcomeLabel {
                outcome: "rejected".to_owned(),
            })
            .inc();
        ctx.settled.notify_waiters();
    }

    fn enqueue(&self, ids: Vec<JobId>, front: bool) {
        if ids.is_empty() {
            return;
        }
        let mut queue = lock(&self.ctx.queue);
        if front {
            for id in ids.into_iter().rev() {
                queue.push_front(id);
            }
        } else {
            queue.extend(ids);
        }
        drop(queue);
        self.ctx.queue_wake.notify_one();
    }

    /// Requeues jobs from the store (replay) and schedules them.
    pub async fn replay(&self, ids: Vec<JobId>) -> Result<usize, StoreError> {
        let mut requeued = Vec::new();
        let mut untracked = std::collections::BTreeSet::new();
        for id in ids {
            let store = self.ctx.store.clone();
            let before = blocking(move || store.job(id)).await?;
            // Only finished or held jobs are replayed: requeueing a job under way would lose
            // its task id and pay for it twice.
            let Some(before) = before.filter(|job| job.state.is_replayable()) else {
                continue;
            };
            let store = self.ctx.store.clone();
            let job = blocking(move || store.requeue(id, false)).await?;
            let mut progress = lock(&self.ctx.progress);
            match progress.manifests.get_mut(&job.manifest) {
                Some(p) => {
                    p.open += 1;
                    if matches!(before.state, JobState::InDoubt { .. }) {
                        p.held = p.held.saturating_sub(1);
                    }
                }
                None => {
                    untracked.insert(job.manifest);
                }
            }
            requeued.push(id);
        }
        // A finished manifest becomes active again, so its report is rewritten at the end.
        for mid in untracked {
            let store = self.ctx.store.clone();
            let (m, jobs) = blocking(move || -> Result<_, StoreError> {
                store.set_manifest_state(mid, ManifestState::Active)?;
                Ok((store.manifest(mid)?, store.summaries_of_manifest(mid)?))
            })
            .await?;
            if let Some(m) = m {
                self.track_manifest(
                    mid,
                    &m.rel,
                    jobs.iter().map(|(_, j)| (j.state.kind, j.state.unchanged)),
                );
            }
        }
        let n = requeued.len();
        self.enqueue(requeued, false);
        Ok(n)
    }

    /// The submitter loop: takes queued jobs in order, waits for an in-flight permit and a
    /// healthy API, and spawns the job's task. Ends when the daemon stops.
    pub async fn run_submitter(self) {
        let ctx = &self.ctx;
        let mut health = ctx.health.subscribe();
        loop {
            // Wait for a job.
            let id = loop {
                let next = lock(&ctx.queue).pop_front();
                if let Some(id) = next {
                    break id;
                }
                tokio::select! {
                    _ = ctx.queue_wake.notified() => {}
                    _ = ctx.cancel.cancelled() => return,
                }
            };
            // Wait for a slot at Claid.
            let permit = tokio::select! {
                permit = ctx.in_flight.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = ctx.cancel.cancelled() => return,
            };
            // While paused, let one probe submit through every PAUSE_PROBE_INTERVAL.
            let paused = matches!(*health.borrow_and_update(), Health::Paused { .. });
            if paused {
                let wait = tokio::time::sleep(PAUSE_PROBE_INTERVAL);
                tokio::select! {
                    _ = wait => {}
                    _ = health.changed() => {}
                    _ = ctx.cancel.cancelled() => return,
                }
            }
            self.spawn_job(id, permit);
            if paused {
                // The probe's outcome decides whether the next job goes out at once.
                tokio::select! {
                    _ = health.changed() => {}
                    _ = tokio::time::sleep(PAUSE_PROBE_INTERVAL) => {}
                    _ = ctx.cancel.cancelled() => return,
                }
            }
        }
    }

    fn spawn_job(&self, id: JobId, permit: OwnedSemaphorePermit) {
        let this = self.clone();
        let span = info_span!(
            "job",
            job_id = id,
            manifest = tracing::field::Empty,
            input = tracing::field::Empty,
            task_id = tracing::field::Empty
        );
        self.ctx.tracker.spawn(
            async move {
                this.drive(id).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Runs a job's steps until it is terminal, held, parked for shutdown, or requeued.
    async fn drive(&self, id: JobId) {
        let span = tracing::Span::current();
        let mut recorded_input = false;
        let mut recorded_task = false;
        loop {
            // A store read is in memory (sled's cache) or one page read: no thread hand-off.
            let job = match self.ctx.store.job(id) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    error!("Job vanished from the store");
                    return;
                }
                Err(err) => {
                    error!(error = %err, "Cannot read the job from the store; it resumes at the next start");
                    return;
                }
            };
            if !recorded_input {
                recorded_input = true;
                span.record("input", job.input.as_str());
                if let Some(p) = lock(&self.ctx.progress).manifests.get(&job.manifest) {
                    span.record("manifest", p.rel.to_string_lossy().as_ref());
                }
            }
            let step = match &job.state {
                JobState::Queued => self.submit(id, &job).await,
                JobState::Submitted {
                    task_id,
                    result_url,
                    at_ms,
                } => {
                    if !recorded_task {
                        recorded_task = true;
                        span.record("task_id", task_id);
                    }
                    self.poll(id, result_url.clone(), *at_ms).await
                }
                JobState::Downloading {
                    url,
                    width,
                    height,
                    task_id,
                } => {
                    self.download(id, &job, url.clone(), *width, *height, *task_id)
                        .await
                }
                JobState::Submitting { .. }
                | JobState::InDoubt { .. }
                | JobState::Done { .. }
                | JobState::Failed { .. } => Step::Stop,
            };
            match step {
                Step::Continue => continue,
                Step::Stop => return,
            }
        }
    }

    /// Durability point 1, the submit, durability point 2 (SPEC §5.1).
    async fn submit(&self, id: JobId, job: &JobV1) -> Step {
        let ctx = &self.ctx;
        let mut transient_failures = 0u32;
        let mut attempts = 0u32;
        let local_bytes = if job.local {
            let inbox = ctx.folders.inbox.clone();
            let owned = job.clone();
            match blocking(move || read_local_input(&inbox, &owned)).await {
                Ok(bytes) => Some(bytes),
                Err((code, message)) => return self.fail(id, code, &message).await,
            }
        } else {
            None
        };
        loop {
            if let Err(err) = ctx.store.durably(|s| s.mark_submitting(id)).await {
                error!(error = %err, "Cannot record the submit intent; job left queued");
                return Step::Stop;
            }
            let sent_at = Instant::now();
            let res = match &local_bytes {
                Some(bytes) => self.upload(job, bytes.clone()).await,
                None => self.submit_remote(job).await,
            };
            match res {
                Ok(Submitted::Task {
                    task_id,
                    result_url,
                    request_id,
                }) => {
                    let recorded = ctx
                        .store
                        .durably(|s| {
                            s.mark_submitted(id, task_id, &result_url, request_id.as_deref())
                        })
                        .await;
                    if let Err(err) = recorded {
                        // The task exists but is not recorded: the job stays Submitting, which the
                        // next start treats as in doubt. Stop here rather than guess.
                        error!(error = %err, task_id, "Cannot record the task id; the job is in doubt");
                        return Step::Stop;
                    }
                    self.set_healthy();
                    debug!(task_id, "Submitted");
                    return Step::Continue;
                }
                Ok(Submitted::Result {
                    url,
                    width,
                    height,
                    request_id,
                }) => {
                    let recorded = ctx
                        .store
                        .durably(|s| {
                            if let Some(rid) = request_id.as_deref() {
                                s.record_request_id(id, rid)?;
                            }
                            s.mark_downloading(id, None, &url, width, height)
                        })
                        .await;
                    if let Err(err) = recorded {
                        error!(error = %err, "Cannot record the upload result; the job is in doubt");
                        return Step::Stop;
                    }
                    self.set_healthy();
                    return Step::Continue;
                }
                Err(err) => {
                    if let Some(rid) = err.request_id() {
                        let _ = ctx.store.durably(|s| s.record_request_id(id, rid)).await;
                    }
                    match err.class() {
                        ErrorClass::Job => {
                            self.set_healthy();
                            return self.fail(id, err.code(), &err.to_string()).await;
                        }
                        ErrorClass::Ambiguous => match self.policies().in_doubt {
                            InDoubtPolicy::Resubmit => {
                                warn!(error = %err, "Submit outcome unknown; resubmitting (in doubt)");
                                if ctx.store.durably(|s| s.requeue(id, true)).await.is_err() {
                                    return Step::Stop;
                                }
                                if !self.wait(backoff(1, ctx.poll.max)).await {
                                    return Step::Stop;
                                }
                            }
                            InDoubtPolicy::Hold => {
                                warn!(error = %err, "Submit outcome unknown; held for `replay --in-doubt`");
                                let _ = ctx.store.durably(|s| s.mark_in_doubt(id)).await;
                                self.job_settled(job.manifest, Settle::Held).await;
                                return Step::Stop;
                            }
                        },
                        ErrorClass::Systemic => {
                            let _ = ctx.store.durably(|s| s.requeue(id, false)).await;
                            self.pause(&err);
                            self.enqueue(vec![id], true);
                            return Step::Stop;
                        }
                        ErrorClass::Transient => {
                            if ctx.store.durably(|s| s.requeue(id, false)).await.is_err() {
                                return Step::Stop;
                            }
                            attempts += 1;
                            // The failure is this job's only if the API answered other calls
                            // meanwhile; while every call fails (an outage) the job waits for
                            // the API without using up its budget.
                            if self.api_answered_since(sent_at) {
                                transient_failures += 1;
                                if transient_failures >= MAX_TRANSIENT_SUBMITS {
                                    return self.fail(id, err.code(), &err.to_string()).await;
                                }
                            }
                            warn!(error = %err, attempt = attempts, "Submit failed; retrying");
                            if !self.wait(backoff(attempts, ctx.poll.max)).await {
                                return Step::Stop;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn submit_remote(&self, job: &JobV1) -> Result<Submitted, ClaidError> {
        let mut body = (*job.body).clone();
        if let Some(obj) = body.as_object_mut() {
            obj.insert(
                "input".to_owned(),
                serde_json::Value::String(job.input.clone()),
            );
        }
        let accepted = self.ctx.client.submit(&body).await?;
        Ok(Submitted::Task {
            task_id: accepted.task_id,
            result_url: accepted.result_url,
            request_id: accepted.request_id,
        })
    }

    /// Local files go through the synchronous upload endpoint (the API has no async upload).
    async fn upload(&self, job: &JobV1, bytes: Vec<u8>) -> Result<Submitted, ClaidError> {
        let path = Path::new(&job.input);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_owned());
        let uploaded = self.ctx.client.upload(&file_name, bytes, &job.body).await?;
        let output = uploaded.response.output;
        let url = output.tmp_url.clone().unwrap_or_default();
        Ok(Submitted::Result {
            url,
            width: output.width,
            height: output.height,
            request_id: uploaded.request_id,
        })
    }

    /// Waits and polls until the task ends; DONE moves the job to Downloading.
    async fn poll(&self, id: JobId, result_url: String, submitted_at_ms: u64) -> Step {
        let ctx = &self.ctx;
        let elapsed = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
        let mut n_poll = 0u32;
        let mut transient_failures = 0u32;
        let mut delay = self.first_poll_delay(elapsed);
        loop {
            if !self.wait(delay).await {
                return Step::Stop;
            }
            match ctx.client.poll(&result_url).await {
                Ok(polled) => {
                    transient_failures = 0;
                    self.set_healthy();
                    // Not flushed: a lost poll count only skews statistics.
                    let _ = ctx.store.record_poll(id, polled.request_id.as_deref());
                    let task = polled.task;
                    match task.status {
                        TaskStatus::Done => {
                            let took =
                                Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
                            lock(&ctx.durations).record(took);
                            ctx.metrics.task_seconds.observe(took.as_secs_f64());
                            let Some(output) = task.result.output_object else {
                                return self
                                    .fail(
                                        id,
                                        "bad-response",
                                        "task is DONE but has no output_object",
                                    )
                                    .await;
                            };
                            let Some(url) = output.tmp_url.clone() else {
                                return self
                                    .fail(
                                        id,
                                        "bad-response",
                                        "task is DONE but its output has no tmp_url",
                                    )
                                    .await;
                            };
                            // Not flushed: losing it only means polling once more.
                            let (w, h, task_id) = (output.width, output.height, task.id);
                            return match ctx.store.mark_downloading(id, Some(task_id), &url, w, h) {
                                Ok(_) => Step::Continue,
                                Err(err) => {
                                    error!(error = %err, "Cannot record the result; it is polled again at the next start");
                                    Step::Stop
                                }
                            };
                        }
                        TaskStatus::Error | TaskStatus::Cancelled => {
                            let message = task
                                .errors
                                .iter()
                                .map(|e| e.error.as_str())
                                .collect::<Vec<_>>()
                                .join("; ");
                            let message = if message.is_empty() {
                                format!("task ended {:?}", task.status)
                            } else {
                                message
                            };
                            return self.fail(id, "claid-error", &message).await;
                        }
                        TaskStatus::Other(ref status) => {
                            warn!(status = %status, "Unknown task status; polling again");
                        }
                        _ => {}
                    }
                    n_poll += 1;
                    delay = self.next_poll_delay(n_poll);
                }
                Err(err) => match err.class() {
                    ErrorClass::Job => {
                        // The task id is unknown to Claid: its result cannot be fetched. Failing
                        // keeps the promise not to pay twice; `replay` can resubmit.
                        return self.fail(id, "task-lost", &err.to_string()).await;
                    }
                    ErrorClass::Systemic => {
                        self.pause(&err);
                        delay = ctx.poll.max;
                    }
                    ErrorClass::Transient | ErrorClass::Ambiguous => {
                        transient_failures += 1;
                        warn!(error = %err, "Poll failed; retrying");
                        delay = backoff(transient_failures, ctx.poll.max);
                    }
                },
            }
        }
    }

    /// The first poll comes when similar tasks have usually finished (SPEC §5.2), so that
    /// polls do not spend a rate limit that binds. While the limiter has not made any call wait
    /// lately, polls are free: the first comes after `poll.min`, so results land sooner.
    fn first_poll_delay(&self, elapsed: Duration) -> Duration {
        let poll = &self.ctx.poll;
        if !self.budget_is_tight() {
            return poll
                .min
                .saturating_sub(elapsed)
                .max(Duration::from_millis(10));
        }
        let expected = lock(&self.ctx.durations).quantile(0.8).unwrap_or(poll.min);
        expected
            .max(poll.min)
            .min(poll.max)
            .saturating_sub(elapsed)
            .max(Duration::from_millis(10))
    }

    /// Later polls back off from `poll.min` to `poll.max` while the rate limit binds, and
    /// stay at `poll.min` while it does not.
    fn next_poll_delay(&self, n_poll: u32) -> Duration {
        let poll = &self.ctx.poll;
        if !self.budget_is_tight() {
            return poll.min;
        }
        let factor = 1.5f64.powi(n_poll.saturating_sub(1).min(20) as i32);
        poll.min.mul_f64(factor).min(poll.max)
    }

    /// Whether the client's rate limiter made a call wait noticeably within the last
    /// [`PRESSURE_MEMORY`]: then every poll costs a submit, and polls are rationed.
    fn budget_is_tight(&self) -> bool {
        let waits = self.ctx.client.limiter_pressure();
        let mut pressure = lock(&self.ctx.pressure);
        if waits != pressure.0 {
            *pressure = (waits, Some(Instant::now()));
        }
        pressure.1.is_some_and(|at| at.elapsed() < PRESSURE_MEMORY)
    }

    /// Downloads the result, checks it is the image the result describes, writes it atomically
    /// and marks the job done: one unit that a shutdown does not interrupt.
    async fn download(
        &self,
        id: JobId,
        job: &JobV1,
        url: String,
        width: u32,
        height: u32,
        task_id: Option<u64>,
    ) -> Step {
        let ctx = &self.ctx;
        let permit = tokio::select! {
            permit = ctx.downloads.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = ctx.cancel.cancelled() => return Step::Stop,
        };
        let mut failures = 0u32;
        let bytes = loop {
            match ctx.client.download(&url).await {
                Ok(bytes) => match image_dimensions(&bytes) {
                    Some((w, h)) if (w, h) == (width, height) => break bytes,
                    found => {
                        failures += 1;
                        let message = match found {
                            Some((w, h)) => format!(
                                "downloaded image is {w}x{h}, the result says {width}x{height}"
                            ),
                            None => "downloaded bytes are not a decodable image".to_owned(),
                        };
                        if failures >= 3 {
                            return self.fail(id, "result-mismatch", &message).await;
                        }
                        warn!(message = %message, "Download does not match the result; retrying");
                    }
                },
                Err(err) => match err.class() {
                    ErrorClass::Job => return self.fail(id, err.code(), &err.to_string()).await,
                    _ => {
                        failures += 1;
                        if failures >= MAX_TRANSIENT_SUBMITS {
                            return self.fail(id, err.code(), &err.to_string()).await;
                        }
                        warn!(error = %err, "Download failed; retrying");
                    }
                },
            }
            if !self.wait(backoff(failures, ctx.poll.max)).await {
                return Step::Stop;
            }
        };
        let outbox = ctx.folders.outbox.clone();
        let rel = PathBuf::from(&job.output_rel);
        let policy = match self.policies().on_output_exists {
            OnOutputExists::Replace => ExistsPolicy::Replace,
            OnOutputExists::Skip => ExistsPolicy::Skip,
            OnOutputExists::Fail => ExistsPolicy::Fail,
        };
        // Written (and fsynced) on the blocking pool, then recorded: the job task runs both
        // to the end (it is never aborted), so a shutdown does not come between them.
        let written =
            match blocking(move || output::write_atomic(&outbox, &rel, &bytes, policy)).await {
                Ok(written) => {
                    let bytes = written.bytes;
                    let info = DoneInfo {
                        path: written.path.to_string_lossy().into_owned(),
                        bytes,
                        sha256: written.sha256,
                        width,
                        height,
                        task_id,
                        unchanged: false,
                    };
                    ctx.store
                        .durably(|s| s.mark_done(id, info))
                        .await
                        .map(|_| Ok(bytes))
                }
                Err(err) => Ok(Err(err)),
            };
        drop(permit);
        match written {
            Ok(Ok(bytes)) => {
                info!(bytes, width, height, "Output written");
                ctx.metrics.bytes_written.inc_by(bytes);
                ctx.metrics.polls_per_job.observe(f64::from(job.polls));
                self.job_settled(job.manifest, Settle::Done).await;
                Step::Stop
            }
            Ok(Err(err)) => {
                let code = err.code();
                // A policy refusal or a path that leads out of the outbox (a planted symlink) is
                // about this job and will not heal by waiting: fail it.
                if matches!(code, "output-exists" | "output-unsafe-path") {
                    return self.fail(id, code, &err.to_string()).await;
                }
                // Disk full or an I/O error: the job stays Downloading and is retried; the
                // operator sees the error. Nothing is lost.
                error!(error = %err, code, "Cannot write the output; retrying later");
                if self.wait(ctx.poll.max).await {
                    Step::Continue
                } else {
                    Step::Stop
                }
            }
            Err(err) => {
                error!(error = %err, "Output written but not recorded; it is rewritten at the next start");
                Step::Stop
            }
        }
    }

    async fn fail(&self, id: JobId, code: &str, message: &str) -> Step {
        match self
            .ctx
            .store
            .durably(|s| s.mark_failed(id, code, message))
            .await
        {
            Ok(job) => {
                warn!(code, reason = %message, "Job failed");
                self.job_settled(job.manifest, Settle::Failed).await;
            }
            Err(err) => error!(error = %err, "Cannot record the job failure"),
        }
        Step::Stop
    }

    async fn job_settled(&self, mid: ManifestId, how: Settle) {
        let finished = {
            let mut progress = lock(&self.ctx.progress);
            match how {
                Settle::Done => progress.totals.done += 1,
                Settle::Failed => progress.totals.failed += 1,
                Settle::Held => progress.totals.held += 1,
            }
            match progress.manifests.get_mut(&mid) {
                Some(p) => {
                    p.open = p.open.saturating_sub(1);
                    p.finished_this_run += 1;
                    if matches!(how, Settle::Held) {
                        p.held += 1;
                    }
                    p.open == 0
                }
                None => false,
            }
        };
        if finished {
            self.finish_manifest(mid).await;
        }
    }

    /// Writes the report; when no job is held, moves the manifest per `on_manifest_done` and
    /// records the manifest as finished.
    async fn finish_manifest(&self, mid: ManifestId) {
        let ctx = &self.ctx;
        let store = ctx.store.clone();
        let outbox = ctx.folders.outbox.clone();
        // The report is streamed from the store: one pass for the totals, one per file.
        let made = blocking(
            move || -> Result<Option<(ManifestV1, report::Tally)>, StoreError> {
                let Some(m) = store.manifest(mid)? else {
                    return Ok(None);
                };
                let mut tally = report::Tally::default();
                store.for_each_job_of_manifest(mid, |_, job| {
                    tally.add(&report::row(&job));
                    Ok::<_, StoreError>(())
                })?;
                Ok(Some((m, tally)))
            },
        )
        .await;
        let (m, tally) = match made {
            Ok(Some(made)) => made,
            Ok(None) => return,
            Err(err) => {
                error!(error = %err, manifest_id = mid, "Cannot read the manifest's jobs for its report");
                return;
            }
        };
        let rel = PathBuf::from(&m.rel);
        let held = lock(&ctx.progress)
            .manifests
            .get(&mid)
            .map_or(0, |p| p.held);
        let counts = tally.counts.clone();
        let outcome = if counts.get("failed").copied().unwrap_or(0) > 0 {
            "with_failures"
        } else {
            "done"
        };
        // A folder-recipe image (SPEC §4.3) gets no report: its output sits beside where the
        // report would be, and a failure moves the image to rejected/ with the reason.
        let recipe_failure = manifest::is_image_name(&rel).then(|| tally.first_failure.clone());
        if recipe_failure.is_none() {
            let rel_for_report = rel.clone();
            let store = ctx.store.clone();
            let m_for_report = m.clone();
            let written = blocking(move || {
                let generated_at = report::now_rfc3339();
                let header = report::Header {
                    manifest: &m_for_report.rel,
                    sha256: &m_for_report.sha256,
                    generated_at: &generated_at,
                    counts: &tally.counts,
                    in_doubt: tally.in_doubt,
                };
                report::write_streamed(&outbox, &rel_for_report, &header, |emit| {
                    store.for_each_job_of_manifest(mid, |_, job| emit(report::row(&job)))
                })
            })
            .await;
            match written {
                Ok((json, _csv)) => {
                    info!(manifest = %m.rel, report = %json.display(), ?counts, "Manifest report written")
                }
                Err(err) => {
                    error!(error = %err, manifest = %m.rel, "Cannot write the manifest report")
                }
            }
        }
        if outcome == "with_failures" {
            lock(&ctx.progress).totals.manifests_with_failures += 1;
        }
        if held == 0 {
            ctx.metrics
                .manifests
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.to_owned(),
                })
                .inc();
            match recipe_failure {
                Some(Some(reason)) => self.reject_failed_image(&rel, &reason).await,
                _ => self.dispose_manifest(&rel).await,
            }
            let store = ctx.store.clone();
            let state = ManifestState::Finished { at_ms: now_ms() };
            if let Err(err) = blocking(move || store.set_manifest_state(mid, state)).await {
                error!(error = %err, "Cannot record the manifest as finished");
            }
        }
        if let Some(p) = lock(&ctx.progress).manifests.get(&mid) {
            debug!(manifest = %p.rel.display(), total = p.total, took = ?p.started.elapsed(), "Manifest settled");
        }
        ctx.settled.notify_waiters();
    }

    /// Moves a folder-recipe image whose job failed to `rejected/` (mirrored) with
    /// `<name>.error.txt` giving the reason, so the failure is visible where images are dropped.
    async fn reject_failed_image(&self, rel: &Path, reason: &str) {
        let ctx = &self.ctx;
        let src = ctx.folders.inbox.join(rel);
        let inbox = ctx.folders.inbox.clone();
        let rejected = ctx.folders.rejected.clone();
        let text = format!(
            "image: {}\nrecipe: {}\nfailed: {reason}\n\nThe edit of this image failed. Retry it with `claid-hotfolder replay --failed`, or fix the image or the recipe and drop the image into the folder again.\n",
            src.display(),
            manifest::recipe_for(&src).display()
        );
        let res = blocking(move || -> Result<Option<PathBuf>, output::OutputError> {
            if !src.is_file() {
                return Ok(None);
            }
            let dest = output::move_mirrored(&inbox, &src, &rejected)?;
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let error_name = filename::error_file_name(
                std::ffi::OsStr::new(&name),
                &filename::FsLimits::of(&dest),
            );
            output::write_text_atomic(&dest.with_file_name(error_name), &text)?;
            Ok(Some(dest))
        })
        .await;
        match res {
            Ok(Some(dest)) => {
                warn!(to = %dest.display(), reason, "Recipe image failed; moved to rejected")
            }
            Ok(None) => {}
            Err(err) => error!(error = %err, "Cannot move the failed recipe image"),
        }
    }

    /// Applies `on_manifest_done` to the manifest file still in the inbox (if it is).
    async fn dispose_manifest(&self, rel: &Path) {
        let ctx = &self.ctx;
        let src = ctx.folders.inbox.join(rel);
        let inbox = ctx.folders.inbox.clone();
        let archive = ctx.folders.archive.clone();
        let policy = self.policies().on_manifest_done;
        let res = blocking(move || -> Result<Option<PathBuf>, String> {
            if !src.is_file() {
                return Ok(None);
            }
            match policy {
                OnManifestDone::Keep => Ok(None),
                OnManifestDone::Archive => output::move_mirrored(&inbox, &src, &archive)
                    .map(Some)
                    .map_err(|e| e.to_string()),
                OnManifestDone::Delete => std::fs::remove_file(&src)
                    .map(|()| None)
                    .map_err(|e| format!("cannot delete {}: {e}", src.display())),
            }
        })
        .await;
        match res {
            Ok(Some(dest)) => info!(to = %dest.display(), "Manifest archived"),
            Ok(None) => {}
            Err(err) => error!(error = %err, "Cannot move the finished manifest"),
        }
    }

    /// Completes when every tracked manifest has settled and no job is queued or running.
    pub async fn wait_settled(&self) {
        loop {
            let notified = self.ctx.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = {
                let progress = lock(&self.ctx.progress);
                progress.manifests.values().any(|p| p.open > 0)
            } || !lock(&self.ctx.queue).is_empty();
            if !busy {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.ctx.cancel.cancelled() => return,
            }
        }
    }

    fn pause(&self, err: &ClaidError) {
        let reason = err.to_string();
        let changed = self.ctx.health.send_if_modified(|h| {
            if matches!(h, Health::Paused { .. }) {
                return false;
            }
            *h = Health::Paused {
                reason: reason.clone(),
            };
            true
        });
        if changed {
            error!(error = %err, "The API refused the daemon's credentials or credits; submitting is paused, queued jobs are kept");
        }
    }

    /// Whether some API call succeeded after `t`.
    fn api_answered_since(&self, t: Instant) -> bool {
        lock(&self.ctx.last_api_ok).is_some_and(|ok| ok > t)
    }

    fn set_healthy(&self) {
        *lock(&self.ctx.last_api_ok) = Some(Instant::now());
        let changed = self.ctx.health.send_if_modified(|h| {
            if *h == Health::Healthy {
                return false;
            }
            *h = Health::Healthy;
            true
        });
        if changed {
            info!("The API accepts requests again; submitting resumed");
        }
    }

    /// Sleeps `d` unless the daemon stops first; returns false when it stopped.
    async fn wait(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.ctx.cancel.cancelled() => false,
        }
    }
}

/// Job counts of one manifest, by what they mean for its progress.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Neither terminal nor held: the manifest waits for them.
    open: u64,
    held: u64,
    done: u64,
    unchanged: u64,
    failed: u64,
}

enum Settle {
    Done,
    Failed,
    Held,
}

enum Submitted {
    /// An async task exists at Claid.
    Task {
        task_id: u64,
        result_url: String,
        request_id: Option<String>,
    },
    /// A sync upload already produced the result.
    Result {
        url: String,
        width: u32,
        height: u32,
        request_id: Option<String>,
    },
}

/// A `Done { unchanged }` state when a job with the same key is done and its output file is
/// still there with the recorded content (SPEC §5.4).
fn unchanged_state(
    store: &Store,
    outbox: &Path,
    key: &str,
) -> Result<Option<JobState>, StoreError> {
    let Some((_, prev)) = store.done_by_key(key)? else {
        return Ok(None);
    };
    let JobState::Done {
        path,
        bytes,
        sha256,
        width,
        height,
        task_id,
        ..
    } = prev.state
    else {
        return Ok(None);
    };
    let path_buf = PathBuf::from(&path);
    if !path_buf.starts_with(outbox) {
        return Ok(None);
    }
    match std::fs::metadata(&path_buf) {
        Ok(meta) if meta.len() == bytes => {}
        _ => return Ok(None),
    }
    match output::sha256_file(&path_buf) {
        Ok(found) if found == sha256 => Ok(Some(JobState::Done {
            path,
            bytes,
            sha256,
            width,
            height,
            task_id,
            unchanged: true,
        })),
        _ => Ok(None),
    }
}

/// Reads a local input for upload and checks it is still the file that was validated: inside
/// the inbox once links are resolved, and with the content its job key was computed from (so a
/// file swapped after validation, for a symlink or for other bytes, is never uploaded).
fn read_local_input(inbox: &Path, job: &JobV1) -> Result<Vec<u8>, (&'static str, String)> {
    let path = inbox.join(&job.input);
    let unreadable = |err: std::io::Error| {
        (
            "input-unreadable",
            format!("cannot read {}: {err}", path.display()),
        )
    };
    let inbox = inbox.canonicalize().map_err(unreadable)?;
    let resolved = path.canonicalize().map_err(unreadable)?;
    if !resolved.starts_with(&inbox) {
        return Err((
            "input-outside-inbox",
            format!(
                "{} now leads outside the inbox; it is not uploaded",
                path.display()
            ),
        ));
    }
    let bytes = std::fs::read(&resolved).map_err(unreadable)?;
    let input = Input::Local {
        path: resolved,
        rel: PathBuf::from(&job.input),
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
    };
    if manifest::key_for(&input, &job.body, Path::new(&job.output_rel)) != job.key {
        return Err((
            "input-changed",
            format!(
                "{} changed after the manifest was validated; drop the manifest again to process the new content",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// Reads the dimensions from an encoded image's header without decoding it.
fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Exponential backoff with full jitter, capped.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << attempt.min(10));
    let capped = base.min(cap).max(Duration::from_millis(50));
    capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Runs blocking store and file work off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
