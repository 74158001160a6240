//! The job scheduler: takes manifests in, drives each job submit → poll → download → output →
//! done with bounded concurrency, and finishes each manifest run (report, archive) once its
//! jobs have ended (ARCHITECTURE.md "pipeline"). Its parts, each a task with one job:
//!
//! - [`intake`]: candidates from the watcher → validated → outputs reserved → jobs registered,
//!   or the file rejected, or the running version of the file told to drain;
//! - [`submitter`]: the queue of jobs to submit, the `max_in_flight` permits, and the pause
//!   while the API refuses the daemon's key or credits;
//! - [`job`]: one job's task, which returns a typed [`job::JobOutcome`];
//! - [`finisher`]: the one task that receives every job's outcome, keeps per-run progress, and
//!   alone writes reports and moves manifests, holding no job permit while it does;
//! - [`polls`]: when to poll, learned from observed task durations;
//! - [`health`]: whether the API takes our calls (paused, failing);
//! - [`notices`]: what happened, broadcast to alerts and the dashboard.
//!
//! A run's phases and their transitions are [`crate::lifecycle`]. Concurrency: a job holds an
//! owned permit of `in_flight` (size `api.max_in_flight`) from the moment it is taken for
//! submission until its task returns, so at most that many tasks exist at Claid at once;
//! downloads also hold a permit of `downloads`. Waits (queue, permits, poll intervals, backoff)
//! are interruptible by the cancellation token; units of work ("submit → record the task id",
//! "write output → mark done", "write report → move manifest") are not.

pub mod batch;
pub mod dispatch;
pub mod finisher;
pub mod health;
pub mod intake;
pub mod job;
pub mod notices;
pub mod polls;
pub mod submitter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::claid::Client;
use crate::claid::wire::{TaskRef, TaskUpdate};
use crate::config::{InDoubtPolicy, Limits, OnManifestDone, OnOutputExists, PollConfig, Profile};
use crate::lifecycle::Phase;
use crate::metrics::Metrics;
use crate::pipeline::job::JobOutcome;
use crate::store::{JobId, ManifestId, Store, StoreError, Unfinished};
use crate::watcher::Candidate;

pub use crate::pipeline::health::Health;

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
    /// `api.batch`.
    pub batch: crate::config::BatchConfig,
    /// `webhook.poll_fallback` when webhooks are on.
    pub webhooks: Option<Duration>,
    /// The config's `storages`, opened (storage outputs are checked through them).
    pub storages: crate::storages::Storages,
    /// `api.staging`, when set.
    pub staging: Option<crate::storages::Staging>,
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
    /// Where the processed version of each running manifest is kept until it is archived.
    pub copies: PathBuf,
}

/// The operator's choices from the config.
#[derive(Debug, Clone, Copy)]
pub struct Policies {
    pub on_output_exists: OnOutputExists,
    pub on_manifest_done: OnManifestDone,
    pub in_doubt: InDoubtPolicy,
}

/// What SIGHUP may change: applies to work registered or decided from then on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policies: Policies,
    pub limits: Limits,
    pub profiles: BTreeMap<String, Profile>,
    /// The config's `storages` (not reloaded: they need a restart, which checks them).
    pub storages: Arc<BTreeMap<String, crate::config::StorageEntry>>,
}

/// What resuming from the store found (logged, and shown by `status`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ResumeSummary {
    pub queued: usize,
    pub polling: usize,
    pub downloading: usize,
    pub in_doubt_resubmitted: usize,
    /// Caught mid-submit by this start and held under `in_doubt: hold`.
    pub in_doubt_held: usize,
    /// Held in doubt by an earlier life, still waiting for `replay --in-doubt`.
    pub still_held: usize,
    /// Caught mid-submit with webhooks on: waiting up to `poll_fallback` for a webhook that
    /// names their request before the `in_doubt` policy applies.
    pub awaiting_webhook: usize,
    pub manifests: usize,
    /// Ended runs whose staged objects are deleted now (a crash cut their cleanup short).
    pub staging_cleanups: usize,
    /// Jobs of the resumed runs that ended in an earlier life (their reports count them;
    /// `run --once`'s closing line counts this process's work and names these apart).
    pub ended_before: EndedBefore,
}

/// Jobs of resumed runs that ended before this start, by how.
#[derive(Debug, Default, Clone, Copy)]
pub struct EndedBefore {
    /// Made by a call to Claid (as `done` counts them in the closing line).
    pub done: u64,
    /// Done without one (an identical output already there).
    pub unchanged: u64,
    pub failed: u64,
    pub superseded: u64,
}

/// What a replay did (see [`Handle::replay_checked`]).
#[derive(Debug, Default, Clone)]
pub struct Replayed {
    /// Jobs requeued.
    pub requeued: usize,
    /// Of those, jobs Claid had billed already: each is billed again when it runs.
    pub billed_again: usize,
    /// Of those, jobs whose billed result an earlier run could not write, fetched again from
    /// Claid (which keeps it a day) instead of being billed again.
    pub refetched: usize,
    /// Of those, jobs held in doubt: Claid may have taken their submit.
    pub in_doubt_again: usize,
    /// Of those, the failed ones: when each failed (milliseconds since the epoch). A failure
    /// this process counted is taken back from its totals (`run --once`'s exit code).
    pub failed_at: Vec<u64>,
    /// Runs not replayed because another active manifest writes one of their outputs or
    /// reports now, one sentence each.
    pub refused: Vec<String>,
}

/// The jobs a replay queued again, by run: the run, its manifest's inbox-relative path, its
/// jobs, and of those the ones that download a kept result again ([`Replayed::refetched`]:
/// no submit, so the submit queue is not theirs).
pub type ReplayedRuns = Vec<(ManifestId, String, Vec<JobId>, Vec<JobId>)>;

/// Queues `ids` again for a replay, run by run, in the store: the one place a replay changes
/// state, for the daemon ([`Handle::replay_checked`], which then schedules the jobs) and for
/// `replay` with the daemon down (`admin::replay_offline`; the next start resumes them).
///
/// Only ended or held jobs are taken (one under way, or changed meanwhile by another replay
/// or a late webhook's adoption, stays as it is: requeueing it would lose its task and pay for
/// it twice); a run whose manifest was saved again is never replayed (the newer version owns
/// its images); an ended run is reopened with its outputs and reports reserved again, unless
/// another active manifest writes one of them now (then none of its jobs is, and a sentence
/// says why).
pub async fn requeue_for_replay(
    store: &Store,
    (inbox, outbox): (&std::path::Path, &std::path::Path),
    ids: Vec<JobId>,
) -> Result<(Replayed, ReplayedRuns), StoreError> {
    let mut billed = std::collections::HashSet::new();
    let mut in_doubt = std::collections::HashSet::new();
    let mut failed_at = std::collections::HashMap::new();
    let mut by_run: BTreeMap<ManifestId, (Vec<JobId>, crate::store::Outputs)> = BTreeMap::new();
    let mut refused = Vec::new();
    for id in ids {
        let Some(job) = store.job(id).await? else {
            continue;
        };
        if job.state.is_replayable()
            && let Some(why) = replay_refusal(inbox, id, &job).await
        {
            warn!(job_id = id, "Replay refused: {why}");
            refused.push(why);
            continue;
        }
        if job.state.is_replayable() {
            if job.state.billed() {
                billed.insert(id);
            }
            if matches!(job.state, crate::store::JobState::InDoubt { .. }) {
                in_doubt.insert(id);
            }
            if job.state.name() == crate::codes::StateName::Failed {
                failed_at.insert(id, job.updated_at_ms);
            }
            let run = by_run.entry(job.manifest).or_default();
            run.0.push(id);
            let object = crate::storages::destination_of(&job.body, &job.output_rel);
            run.1.push((job.output_rel.clone(), object));
        }
    }
    let mut replayed = Replayed {
        refused,
        ..Replayed::default()
    };
    let mut runs = Vec::new();
    // Every run, read once when an ended run is replayed (O(runs): a replay is rare).
    let mut all_runs: Option<Vec<(ManifestId, crate::store::ManifestV1)>> = None;
    for (mid, (ids, outputs)) in by_run {
        let Some(m) = store.manifest(mid).await? else {
            continue;
        };
        if matches!(m.state, crate::store::ManifestState::Superseded { .. }) {
            continue;
        }
        // Its file was saved again: the newer version stands for its images (its queued jobs
        // end superseded, and the run ends once its tasks at Claid are recorded).
        if matches!(m.state, crate::store::ManifestState::Draining { .. }) {
            warn!(manifest = %m.rel, "Replay refused: a newer version of the manifest replaces it");
            replayed.refused.push(format!(
                "`{}` is not replayed: a newer version of it was saved and is taken in once this run ends; that version makes its images (one whose result was kept is not billed again)",
                crate::text::escape(&m.rel)
            ));
            continue;
        }
        if m.state.is_ended() {
            let extra = crate::report::reserved_paths(outbox, std::path::Path::new(&m.rel));
            // A later manifest of another name that writes the same report (`s.json` after
            // `s.yaml`) stands for it now: replaying the older one would write its report
            // over the newer one's.
            if !extra.is_empty() {
                if all_runs.is_none() {
                    all_runs = Some(store.manifests().await?);
                }
                let later = all_runs.iter().flatten().find(|(other, run)| {
                    *other > mid
                        && run.rel != m.rel
                        && crate::report::reserved_paths(outbox, std::path::Path::new(&run.rel))
                            .iter()
                            .any(|path| extra.contains(path))
                });
                if let Some((_, later)) = later {
                    warn!(manifest = %m.rel, other = %later.rel, "Replay refused: a later manifest writes its report");
                    replayed.refused.push(format!(
                        "`{}` is not replayed: its report is now `{}`'s, a later manifest that writes the same report; drop `{}` again to run it anew",
                        crate::text::escape(&m.rel),
                        crate::text::escape(&later.rel),
                        crate::text::escape(&m.rel)
                    ));
                    continue;
                }
            }
            // Its outputs and reports were released at its end: reserved again, unless
            // another active manifest writes one of them now (both would write it).
            if let Some(crate::store::Registered::Conflict {
                path, owner_rel, ..
            }) = store.reopen_run_reserving(mid, extra, outputs).await?
            {
                let other = owner_rel.unwrap_or_else(|| "another manifest".to_owned());
                warn!(manifest = %m.rel, path = %path, other = %other, "Replay refused: another active manifest writes one of its outputs");
                replayed.refused.push(format!(
                    "`{}` is not replayed: `{}` is being written by the active manifest `{}`; replay it once that one has finished",
                    crate::text::escape(&m.rel),
                    crate::text::escape(&path),
                    crate::text::escape(&other)
                ));
                continue;
            }
        }
        let mut requeued = Vec::with_capacity(ids.len());
        let mut refetching = Vec::new();
        for id in ids {
            match store.requeue_replayable(id).await {
                Ok(next) => {
                    requeued.push(id);
                    let refetched = matches!(
                        next.state,
                        crate::store::JobState::Downloading {
                            kept_since_ms: Some(_),
                            ..
                        }
                    );
                    if refetched {
                        refetching.push(id);
                    }
                    replayed.refetched += usize::from(refetched);
                    replayed.billed_again += usize::from(billed.contains(&id) && !refetched);
                    replayed.in_doubt_again += usize::from(in_doubt.contains(&id));
                    replayed.failed_at.extend(failed_at.get(&id));
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        replayed.requeued += requeued.len();
        runs.push((mid, m.rel.clone(), requeued, refetching));
    }
    store.flush().await?;
    Ok((replayed, runs))
}

/// Why job `id` (replayable) is not replayed, in a sentence, or `None`: its local input is
/// no longer in the inbox ([`local_input_gone`]), or its failed write kept a result that is
/// not its input's edit any more ([`kept_result_fits`]). The replay and its dry run both ask.
pub async fn replay_refusal(
    inbox: &std::path::Path,
    id: JobId,
    job: &crate::store::JobV1,
) -> Option<String> {
    if let Some(why) = local_input_gone(inbox, id, job) {
        return Some(why);
    }
    if kept_result_fits(inbox, job).await {
        return None;
    }
    Some(format!(
        "job {id} is not replayed: its input `{}` changed after its manifest was validated, and the result Claid made and kept for it is the edit of the file as it was; drop the manifest again to process the new content (or put the earlier file back, and the replay fetches that result without a new bill)",
        crate::text::escape(&job.input)
    ))
}

/// Whether the result `job` kept from a failed write ([`crate::store::JobState::refetchable`])
/// is still the edit of its input: false when its local input's content changed since its
/// manifest was validated (the job key, which hashes that content, differs). A replay that
/// fetched it would write the edit of a file that is no longer there, where a submit would
/// fail `input-changed`. True for every other job, and for an input gone or unreadable (the
/// kept result needs none: [`local_input_gone`] tells the rest).
pub async fn kept_result_fits(inbox: &std::path::Path, job: &crate::store::JobV1) -> bool {
    if !job.local || job.state.refetchable(crate::store::now_ms()).is_none() {
        return true;
    }
    let path = inbox.join(&job.input);
    let read = path.clone();
    // Hashed only as a regular file, opened without blocking (a FIFO put in its place
    // blocked the replay, or its dry run, for ever): anything else there is not the file the
    // result was made from.
    let hashed = tokio::task::spawn_blocking(move || {
        let Some((mut file, _)) = job::open_regular(&read)? else {
            return Ok(None);
        };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok::<_, std::io::Error>(Some(hex::encode(sha2::Digest::finalize(hasher))))
    })
    .await;
    match hashed {
        Ok(Ok(Some(sha256))) => job::is_validated_content(job, path, sha256),
        Ok(Ok(None)) => false,
        _ => true,
    }
}

/// Why job `id` cannot be replayed when its local input is no longer in the inbox (a folder
/// recipe's image is archived once it is made): run, it would fail `input-unreadable`, and a
/// done job would be recorded failed. `None` for any other job.
pub fn local_input_gone(
    inbox: &std::path::Path,
    id: JobId,
    job: &crate::store::JobV1,
) -> Option<String> {
    let path = inbox.join(&job.input);
    if !job.local || path.is_file() {
        return None;
    }
    let recipe_image = crate::manifest::recipe_for(&path).is_file();
    // A manifest row's result kept from a failed write is fetched again, which needs no input.
    if !recipe_image && job.state.refetchable(crate::store::now_ms()).is_some() {
        return None;
    }
    // A failed recipe image (moved to rejected/) put back into its folder is taken in anew
    // and made again by itself; a replay besides would find only the earlier run.
    if recipe_image && job.state.name() == crate::codes::StateName::Failed {
        return Some(format!(
            "job {id} is not replayed: its input `{}` is no longer in the inbox (a folder recipe's image whose edit failed moves to rejected/); move it back into its recipe folder, which takes it in anew by itself (no replay needed; a result Claid made and kept for it is fetched, not billed again)",
            crate::text::escape(&job.input)
        ));
    }
    Some(format!(
        "job {id} is not replayed: its input `{}` is no longer in the inbox{}; put the file back at that path, then replay it",
        crate::text::escape(&job.input),
        if recipe_image {
            " (a folder recipe's image moves to the archive once made)"
        } else {
            ""
        }
    ))
}

/// Totals over the manifests this process has handled, for `run --once`'s exit code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Runs taken in, and runs a start resumed.
    pub manifests: usize,
    pub rejected: usize,
    /// Their jobs: all of a run taken in, the open ones of a resumed run.
    pub jobs: u64,
    pub done: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub held: u64,
    /// Jobs of a run whose manifest was saved again before they were submitted: left to the
    /// newer version (so `jobs` = `done` + `failed` + `held` + `superseded` at the end).
    pub superseded: u64,
    /// Manifests finished in this run whose report counts a failed job (also ones that
    /// failed before a restart).
    pub manifests_with_failures: usize,
    /// Runs reported with jobs held in doubt, counted from the report like
    /// `manifests_with_failures` (the per-job counts above follow the jobs' outcome events,
    /// which may still be on their way when the run is reported from the store).
    pub manifests_held: usize,
    /// Runs whose report could be written neither into the outbox nor into the archive.
    pub reports_unwritten: usize,
}

/// What the finisher publishes for everyone else to read: per-run progress and the totals.
/// Only the finisher writes it (and intake its `pending` count).
#[derive(Debug, Default)]
pub struct Board {
    state: Mutex<BoardState>,
    /// Fires whenever a run or intake changes phase, so waiters re-check.
    changed: Notify,
}

#[derive(Debug, Default)]
struct BoardState {
    runs: HashMap<ManifestId, RunView>,
    totals: Totals,
    /// Events on their way to the finisher that will put a run on the board or take a
    /// candidate off it (a candidate in intake, a resumed or replayed run): while any is on
    /// its way, nothing is settled.
    pending: usize,
    /// Failures this process counted (or will: the outcome may still be on its way to the
    /// finisher) whose jobs a replay requeued: taken from `totals.failed` when it is read.
    failed_taken_back: u64,
}

/// One run as others see it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub rel: String,
    pub phase: Phase,
    /// Jobs this process saw end, for images per minute.
    pub finished_this_run: u64,
    pub started: Instant,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut BoardState)) {
        change(&mut self.lock());
        self.changed.notify_waiters();
    }

    /// Whether the run takes no new submits (its file was saved again).
    pub fn is_draining(&self, id: ManifestId) -> bool {
        self.lock()
            .runs
            .get(&id)
            .is_some_and(|r| r.phase == Phase::Draining)
    }

    fn totals(&self) -> Totals {
        let state = self.lock();
        let mut totals = state.totals;
        totals.failed = totals.failed.saturating_sub(state.failed_taken_back);
        totals
    }

    /// No candidate in intake and no run that still waits for jobs or is finishing.
    fn is_settled(&self) -> bool {
        let state = self.lock();
        state.pending == 0
            && state.runs.values().all(|r| {
                matches!(
                    r.phase,
                    Phase::Held | Phase::Finished | Phase::Superseded | Phase::Rejected
                )
            })
    }
}

/// A cheap-to-clone handle on the running pipeline.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// What the handle's methods need; each task holds only its own part.
struct Shared {
    store: Store,
    client: Client,
    settings: Arc<RwLock<Settings>>,
    board: Arc<Board>,
    queue: Arc<submitter::Queue>,
    health: Arc<health::HealthState>,
    notices: notices::Notices,
    /// Results announced by webhook go here.
    dispatch: Arc<dispatch::Dispatch>,
    /// `webhook.poll_fallback` when webhooks are on.
    webhooks: Option<Duration>,
    /// `api.staging` with `api.staging_delete`: ended runs' staged objects are deleted.
    staging_delete: bool,
    batching: Arc<batch::Batching>,
    /// Candidates for intake; bounded, so a burst of drops waits in the watcher.
    intake: mpsc::Sender<Candidate>,
    /// Events for the finisher; unbounded so a job task never waits to report its outcome.
    finisher: finisher::Tx,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    started: Instant,
    cancel: CancellationToken,
    /// The outbox root (a replayed run's report paths are reserved under it).
    outbox: PathBuf,
    /// The inbox (a replayed job's local input must still be in it).
    inbox: PathBuf,
    /// Queued jobs of runs whose manifest was saved again while the daemon was down, held
    /// from the queue until the first scan's candidates are taken ([`Handle::release_resaved`]).
    resaved: Mutex<Vec<(ManifestId, JobId)>>,
    /// Parts started by [`Handle::start`]; each is taken once.
    parts: Mutex<Option<Parts>>,
    /// The submitter, kept past the start: a replay hands its jobs on through it
    /// ([`submitter::Submitter::hand_on`]).
    submitter: submitter::Submitter,
    /// The finisher's task, awaited by [`Handle::stop_finisher`] at shutdown.
    finisher_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The long-lived tasks, built by [`Handle::new`] and started by [`Handle::start`].
struct Parts {
    intake: intake::Intake,
    intake_rx: mpsc::Receiver<Candidate>,
    submitter: submitter::Submitter,
    finisher: finisher::Finisher,
    finisher_rx: mpsc::UnboundedReceiver<finisher::Event>,
    tracker: TaskTracker,
}

/// How many candidates intake validates at once: a long validation never holds the others.
const INTAKE_QUEUE: usize = 64;

impl Handle {
    /// Builds the pipeline's parts; nothing runs until [`Handle::resume`] and [`Handle::start`].
    pub fn new(deps: Deps) -> Handle {
        let settings = Arc::new(RwLock::new(Settings {
            policies: deps.policies,
            limits: deps.limits,
            profiles: deps.profiles,
            storages: Arc::new(deps.storages.entries()),
        }));
        let board = Arc::new(Board::default());
        let staging_delete = deps.staging.as_ref().is_some_and(|s| s.delete);
        let queue = Arc::new(submitter::Queue::default());
        let notices = notices::Notices::default();
        let health = Arc::new(
            health::HealthState::new(
                notices.clone(),
                deps.client.api_addr(),
                deps.client.unanswered(),
            )
            .watching_outbox(deps.folders.outbox.clone()),
        );
        let in_flight = Arc::new(Semaphore::new(deps.max_in_flight));
        let (intake_tx, intake_rx) = mpsc::channel(INTAKE_QUEUE);
        let (finisher_raw, finisher_rx) = mpsc::unbounded_channel();
        let finisher_tx = finisher::Tx::new(finisher_raw, board.clone());
        let polls = Arc::new(polls::Polls::new(deps.poll, deps.client.clone()));
        let dispatch = Arc::new(dispatch::Dispatch::new());
        let batching = Arc::new(
            batch::Batching::new(deps.batch)
                .with_connectors(deps.storages.iter().map(|s| s.entry.claid_name.clone())),
        );
        // Backoff grows up to `poll.max`, the longest the operator lets a task wait.
        let retry = crate::retry::Policy {
            cap: deps.poll.max,
            base: crate::retry::Policy::default().base.min(deps.poll.max),
            ..crate::retry::Policy::default()
        };
        let outbox_root = deps.folders.outbox.clone();
        let runner = job::Runner::new(job::RunnerDeps {
            store: deps.store.clone(),
            client: deps.client.clone(),
            inbox: deps.folders.inbox.clone(),
            outbox: deps.folders.outbox.clone(),
            settings: settings.clone(),
            metrics: deps.metrics.clone(),
            downloads: Arc::new(Semaphore::new(deps.max_downloads)),
            in_flight: in_flight.clone(),
            polls: polls.clone(),
            poll: deps.poll,
            retry,
            dispatch: dispatch.clone(),
            webhooks: deps.webhooks,
            health: health.clone(),
            queue: queue.clone(),
            storages: deps.storages.clone(),
            staging: deps.staging.clone(),
            restaged: Default::default(),
            buckets: Default::default(),
            bucket_gate: Default::default(),
            cancel: deps.cancel.clone(),
        });
        let batches = batch::BatchRunner::new(batch::BatchDeps {
            store: deps.store.clone(),
            client: deps.client.clone(),
            settings: settings.clone(),
            batching: batching.clone(),
            dispatch: dispatch.clone(),
            webhooks: deps.webhooks,
            polls: polls.clone(),
            poll: deps.poll,
            retry,
            health: health.clone(),
            metrics: deps.metrics.clone(),
            queue: queue.clone(),
            runner: runner.clone(),
            finisher: finisher_tx.clone(),
            tracker: deps.tracker.clone(),
            cancel: deps.cancel.clone(),
        });
        let submitter = submitter::Submitter {
            batches,
            store: deps.store.clone(),
            max_in_flight: deps.max_in_flight,
            queue: queue.clone(),
            in_flight: in_flight.clone(),
            health: health.clone(),
            outbox: deps.folders.outbox.clone(),
            board: board.clone(),
            runner: runner.clone(),
            finisher: finisher_tx.clone(),
            tracker: deps.tracker.clone(),
            cancel: deps.cancel.clone(),
        };
        let finisher = finisher::Finisher::new(finisher::FinisherDeps {
            store: deps.store.clone(),
            folders: deps.folders.clone(),
            settings: settings.clone(),
            metrics: deps.metrics.clone(),
            board: board.clone(),
            queue: queue.clone(),
            intake: intake_tx.clone(),
            notices: notices.clone(),
            staging: deps.staging.clone(),
        });
        let intake = intake::Intake {
            store: deps.store.clone(),
            folders: deps.folders.clone(),
            settings: settings.clone(),
            board: board.clone(),
            queue: queue.clone(),
            finisher: finisher_tx.clone(),
            metrics: deps.metrics.clone(),
            tracker: deps.tracker.clone(),
            notices: notices.clone(),
            cancel: deps.cancel.clone(),
            health: health.clone(),
            submitter: submitter.clone(),
            storages: deps.storages.clone(),
        };
        let shared = Shared {
            store: deps.store,
            client: deps.client,
            settings,
            board,
            queue,
            health,
            notices,
            dispatch,
            webhooks: deps.webhooks,
            staging_delete,
            batching,
            intake: intake_tx,
            finisher: finisher_tx,
            in_flight,
            max_in_flight: deps.max_in_flight,
            started: Instant::now(),
            cancel: deps.cancel,
            outbox: outbox_root,
            inbox: deps.folders.inbox.clone(),
            resaved: Mutex::new(Vec::new()),
            finisher_task: Mutex::new(None),
            submitter: submitter.clone(),
            parts: Mutex::new(Some(Parts {
                intake,
                intake_rx,
                submitter,
                finisher,
                finisher_rx,
                tracker: deps.tracker,
            })),
        };
        Handle {
            shared: Arc::new(shared),
        }
    }

    /// Starts intake, the submitter and the finisher as tracked tasks. Call once, after
    /// [`Handle::resume`].
    pub fn start(&self) {
        let parts = self
            .shared
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(parts) = parts else {
            warn!("The pipeline was started twice; ignoring the second start");
            return;
        };
        let cancel = self.shared.cancel.clone();
        // Not tracked with the jobs: it outlives them at shutdown (see `stop_finisher`).
        let finisher = tokio::spawn(
            parts
                .finisher
                .run(parts.finisher_rx)
                .instrument(info_span!("finisher")),
        );
        *self
            .shared
            .finisher_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(finisher);
        parts.tracker.spawn(
            parts
                .intake
                .run(parts.intake_rx, cancel.clone())
                .instrument(info_span!("intake")),
        );
        parts.tracker.spawn(parts.submitter.run());
    }

    /// Shutdown, after the jobs have drained: lets the finisher handle every outcome reported
    /// so far (finishing runs whose last job ended), within `grace`, then stops it.
    pub async fn stop_finisher(&self, grace: Duration) -> bool {
        let _ = self.shared.finisher.send(finisher::Event::Stop);
        let task = self
            .shared
            .finisher_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match task {
            Some(task) => tokio::time::timeout(grace, task).await.is_ok(),
            None => true,
        }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn health(&self) -> Health {
        self.shared.health.current()
    }

    /// The health state, for `run --once` to give up on a refused key or an unreachable API.
    pub fn health_state(&self) -> Arc<health::HealthState> {
        self.shared.health.clone()
    }

    pub fn totals(&self) -> Totals {
        self.shared.board.totals()
    }

    /// Hands a verified webhook update to the task waiting for it (see [`dispatch`]).
    /// A task the store says a job took is never adopted by another job
    /// ([`dispatch::Dispatch::deliver_owned`]).
    pub async fn deliver(&self, update: crate::claid::wire::TaskUpdate) -> dispatch::Delivery {
        deliver_checked(&self.shared, update).await
    }

    /// Completes once the start's resume is over (see [`dispatch::Dispatch::wait_resumed`]).
    pub async fn wait_resumed(&self) {
        self.shared.dispatch.wait_resumed().await;
    }

    pub fn dispatch_stats(&self) -> dispatch::DispatchStats {
        self.shared.dispatch.stats()
    }

    /// Whether batching is on, and the sizes it chose (for `/status`).
    pub fn batching(&self) -> batch::BatchingView {
        self.shared.batching.view()
    }

    /// Submits and uploads on the wire (see [`crate::claid::Client::billable_on_the_wire`]).
    pub fn billable_on_the_wire(&self) -> usize {
        self.shared.client.billable_on_the_wire()
    }

    /// The API client's counters: requests by endpoint and status, limiter waits (for the
    /// dashboard's share of the rate limit).
    pub fn client_stats(&self) -> crate::claid::ClientStats {
        self.shared.client.stats()
    }

    /// Requests a minute the API client may make now (lower than the config's when Claid
    /// announced a lower quota): the dashboard's rate-limit figure.
    pub fn requests_per_minute_in_force(&self) -> u64 {
        self.shared.client.requests_per_minute_in_force()
    }

    /// Notices of what happens from now on (for alerts and the dashboard).
    pub fn subscribe_notices(&self) -> tokio::sync::broadcast::Receiver<notices::Notice> {
        self.shared.notices.subscribe()
    }

    /// Hands a stable file found by the watcher to intake. Waits only while intake's queue is
    /// full (a burst of drops); never for a validation.
    pub async fn offer(&self, candidate: Candidate) {
        self.shared.board.update(|s| s.pending += 1);
        if self.shared.intake.send(candidate).await.is_err() {
            // Intake has stopped (shutdown): the file is found again at the next start.
            self.shared
                .board
                .update(|s| s.pending = s.pending.saturating_sub(1));
        }
    }

    /// Applies a reloaded config (SIGHUP): profiles, policies and limits apply to what is
    /// registered or decided from now on.
    pub fn reload(&self, profiles: BTreeMap<String, Profile>, policies: Policies, limits: Limits) {
        let mut settings = self
            .shared
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let storages = settings.storages.clone();
        *settings = Settings {
            policies,
            limits,
            profiles,
            storages,
        };
    }

    /// Tasks submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.max_in_flight - self.shared.in_flight.available_permits()
    }

    /// Whether a final webhook for task `id` is one nobody waits for yet (see
    /// [`dispatch::Dispatch::would_keep`]): the receiver makes it durable before answering.
    pub fn announcement_would_be_kept(&self, id: TaskRef) -> bool {
        self.shared.dispatch.would_keep(id)
    }

    /// How long, and why, the API or a bucket has not answered, once that has lasted
    /// [`health::OUTAGE_AFTER`] (the daemon waits it out; nothing is lost).
    pub fn outage(&self) -> Option<(std::time::Duration, String)> {
        self.shared.health.outage()
    }

    /// Why new submits wait for outputs to be writable again (a full disk), while they do.
    pub fn writes_blocked(&self) -> Option<health::WriteBlock> {
        self.shared.health.writes_blocked()
    }

    /// [`Handle::writes_blocked`], with since how long.
    pub fn writes_blocked_for(&self) -> Option<(std::time::Duration, health::WriteBlock)> {
        self.shared.health.writes_blocked_for()
    }

    /// Why no new image is submitted at all (a full disk, no file descriptors left), while so.
    pub fn writes_blocked_everywhere(&self) -> Option<health::WriteBlock> {
        self.shared.health.writes_blocked_everywhere()
    }

    /// A folder of the outbox whose images wait for it to take writes, and why.
    pub fn folder_held(&self) -> Option<(std::path::PathBuf, String)> {
        self.shared.health.folder_held()
    }

    /// The inbox as the daemon last found it: `Some(why)` while it cannot be watched (its
    /// folder gone), `None` once it can.
    pub fn set_inbox_problem(&self, why: Option<String>) {
        self.shared.health.set_inbox_problem(why);
    }

    /// The inbox the daemon watches.
    pub fn inbox(&self) -> &std::path::Path {
        &self.shared.inbox
    }

    /// Since how long, and why, the inbox cannot be watched.
    pub fn inbox_problem(&self) -> Option<(std::time::Duration, String)> {
        self.shared.health.inbox_problem()
    }

    /// Jobs whose submit answer was lost (or that a crash cut short) waiting for a webhook to
    /// adopt the task they became.
    pub fn awaiting_adoption(&self) -> usize {
        self.shared.dispatch.awaiting_adoption()
    }

    /// Jobs waiting to be submitted.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Per run this daemon works on: images finished per minute since it started on it.
    pub fn rates(&self) -> BTreeMap<ManifestId, f64> {
        self.shared
            .board
            .lock()
            .runs
            .iter()
            .map(|(id, r)| {
                let minutes = r.started.elapsed().as_secs_f64() / 60.0;
                let per_min = if minutes > 0.0 {
                    r.finished_this_run as f64 / minutes
                } else {
                    0.0
                };
                (*id, per_min)
            })
            .collect()
    }

    /// The phase of each run this process tracks.
    pub fn phases(&self) -> BTreeMap<ManifestId, Phase> {
        self.shared
            .board
            .lock()
            .runs
            .iter()
            .map(|(id, r)| (*id, r.phase))
            .collect()
    }

    /// Updates the metrics read at scrape time from the store's counters (O(runs active)),
    /// the client's counters and the gauges.
    pub fn refresh_metrics(&self, metrics: &Metrics) {
        let counts = self.shared.store.counts();
        metrics.set_job_counts(&counts.totals);
        metrics.set_in_doubt_events(counts.totals.in_doubt_events);
        metrics.in_flight.set(counts.totals.in_flight() as i64);
        metrics
            .paused
            .set(i64::from(matches!(self.health(), Health::Paused { .. })));
        metrics.fold_client(&self.shared.client.stats());
        metrics.set_webhooks(&self.shared.dispatch.stats());
        metrics.set_batching(&self.batching());
    }

    /// Resumes every unfinished job of the store (ARCHITECTURE.md "Crash safety"): `Submitted` → poll,
    /// `Downloading` → download again, `Queued` → submit, `Submitting` → in doubt. Tells the
    /// finisher about every run that has not ended, so runs whose jobs all ended before a
    /// crash are finished now.
    /// `unfinished` is what [`Store::open_for_resume`] collected. Between the open and the
    /// resume only a dashboard action can write (a replay, which requeues jobs that were
    /// Failed or held in doubt at the open: those the resume leaves alone), so the list is
    /// still what the resume must drive.
    pub async fn resume(&self, unfinished: Unfinished) -> Result<ResumeSummary, StoreError> {
        let resumed = self.resume_unfinished(unfinished).await;
        // Live webhooks wait for this (`Dispatch::wait_resumed`), whatever the outcome (the
        // resume marks it itself once every job is registered, before it starts them).
        self.shared.dispatch.mark_resumed();
        resumed
    }

    /// [`Handle::resume`]'s work.
    async fn resume_unfinished(&self, unfinished: Unfinished) -> Result<ResumeSummary, StoreError> {
        let shared = &self.shared;
        let store = &shared.store;
        let policy = self.settings().policies.in_doubt;
        let mut summary = ResumeSummary::default();
        let mut to_drive = Vec::new();
        let mut to_queue = Vec::new();
        // Batches at Claid: batch id → (result URL, submitted at, jobs).
        let mut batches: BTreeMap<u64, (String, u64, Vec<batch::Member>)> = BTreeMap::new();
        // Caught mid-submit, waiting for a webhook to adopt: alone, or in a batch.
        let mut late = Vec::new();
        let mut lost_batch = Vec::new();
        // Jobs held in doubt, for a webhook that comes late.
        let mut held = Vec::new();
        // Per run, jobs this start held in doubt (they count in `run --once`'s closing line).
        let mut held_now: HashMap<ManifestId, u64> = HashMap::new();
        for (id, job) in unfinished {
            use crate::codes::StateName as S;
            match job.state.kind {
                S::Queued => {
                    summary.queued += 1;
                    to_queue.push((job.manifest, id));
                    // Queued again after a lost submit (`replay --in-doubt`, the `resubmit`
                    // policy): until it is sent again, a webhook announcing the task that
                    // submit created is adopted instead of paying for a second one.
                    if job.in_doubt > 0
                        && shared.webhooks.is_some()
                        && let Some(full) = store.job(id).await?
                    {
                        held.push(held_job(job.manifest, id, &full));
                    }
                }
                S::Submitting => {
                    // With webhooks on, the task the lost submit may have created can still be
                    // announced (a restart within seconds of a kill): wait for it first.
                    // It may have gone alone or in a batch (a batch's jobs are all marked
                    // submitting before its request): both are awaited.
                    if shared.webhooks.is_some()
                        && let Some(full) = store.job(id).await?
                        && full.batch.is_none()
                    {
                        let alone = if full.local {
                            None
                        } else {
                            shared.dispatch.lost_submit(&job::request_of(&full), 1)
                        };
                        let in_batch = batch::lost_batch_job(job.manifest, id, &full);
                        if alone.is_some() || in_batch.is_some() {
                            summary.awaiting_webhook += 1;
                            late.push((job.manifest, id, alone));
                            lost_batch.extend(in_batch);
                            continue;
                        }
                    }
                    match in_doubt_after_crash(store, policy, id).await? {
                        InDoubtPolicy::Resubmit => {
                            summary.in_doubt_resubmitted += 1;
                            to_queue.push((job.manifest, id));
                        }
                        InDoubtPolicy::Hold => {
                            summary.in_doubt_held += 1;
                            *held_now.entry(job.manifest).or_default() += 1;
                        }
                    }
                }
                S::Submitted => {
                    summary.polling += 1;
                    match store.job(id).await? {
                        // A batch's jobs are polled together, by one batch task.
                        Some(full) if full.batch.is_some() => {
                            if let crate::store::JobState::Submitted {
                                task_id,
                                result_url,
                                at_ms,
                            } = &full.state
                            {
                                batches
                                    .entry(*task_id)
                                    .or_insert_with(|| (result_url.clone(), *at_ms, Vec::new()))
                                    .2
                                    .push(batch::Member {
                                        manifest: job.manifest,
                                        id,
                                        job: full,
                                    });
                            }
                        }
                        _ => to_drive.push((job.manifest, id)),
                    }
                }
                S::Downloading => {
                    summary.downloading += 1;
                    to_drive.push((job.manifest, id));
                }
                S::InDoubt => {
                    summary.still_held += 1;
                    // Held in an earlier life: a late webhook may still announce its task.
                    if shared.webhooks.is_some()
                        && let Some(full) = store.job(id).await?
                    {
                        held.push(held_job(job.manifest, id, &full));
                    }
                }
                S::Done | S::Failed | S::Superseded => {}
            }
        }
        let mut draining = Vec::new();
        let mut resaved = HashSet::new();
        for (mid, _) in store.counts().active {
            let Some(m) = store.manifest(mid).await? else {
                continue;
            };
            summary.manifests += 1;
            if matches!(m.state, crate::store::ManifestState::Draining { .. }) {
                draining.push(mid);
            } else if saved_again(&shared.inbox, &m).await {
                // Saved again while the daemon was down: its queued images wait for the first
                // scan's verdict on the new version (`Handle::release_resaved`), as a save
                // while it runs is validated before the run drains. They went out before the
                // scan saw the new version: billed for a version no longer in the inbox.
                info!(manifest = %crate::text::Escaped::str(&m.rel), "The manifest was saved again while the daemon was down; its unsubmitted images wait until the new version is validated");
                resaved.insert(mid);
            }
            // Counted here, before any of its jobs runs again: each open job then ends done,
            // failed, held or superseded in this process.
            let counts = store.counts_of_active(mid).unwrap_or_default();
            let open = counts.open();
            summary.ended_before.done += counts.done.saturating_sub(counts.unchanged);
            summary.ended_before.unchanged += counts.unchanged;
            summary.ended_before.failed += counts.failed;
            summary.ended_before.superseded += counts.superseded;
            shared.finisher.send_counted(finisher::Event::Resumed {
                id: mid,
                manifest: m,
                open,
                held: held_now.get(&mid).copied().unwrap_or(0),
            });
        }
        // Ended runs whose staged objects a crash kept from being deleted.
        if shared.staging_delete {
            for mid in store.staging_cleanups().await? {
                summary.staging_cleanups += 1;
                let _ = shared
                    .finisher
                    .send(finisher::Event::CleanStaged { id: mid });
            }
        }
        // A draining run submits nothing more, also after a crash.
        for mid in &draining {
            let cancelled = store.cancel_queued(*mid).await?;
            shared
                .board
                .update(|s| s.totals.superseded += cancelled.len() as u64);
        }
        to_queue.retain(|(mid, _)| !draining.contains(mid));
        let (held_back, to_queue): (Vec<_>, Vec<_>) = to_queue
            .into_iter()
            .partition(|(mid, _)| resaved.contains(mid));
        *shared
            .resaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = held_back;
        // Resumed tasks exist at Claid already: they take their permits first.
        let parts = shared
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| (p.submitter.clone(), p.tracker.clone()));
        if let Some((submitter, tracker)) = parts {
            if shared.webhooks.is_some() {
                // Counted again once the kept announcements are handed over: those adopt some.
                let held_ids: Vec<JobId> = held.iter().map(|job| job.owner.1).collect();
                shared.dispatch.hold(held);
                shared.dispatch.lost_batch_jobs(lost_batch);
                // Jobs failed as task-timeout before this start: their task's late
                // announcement is taken, not paid for again by `replay`.
                for (task_id, owners) in store.timed_out_jobs(dispatch::KEPT_TTL).await? {
                    // A batch's jobs record their batch; the others' task is a single one.
                    let (mut singles, mut batches) = (Vec::new(), Vec::new());
                    for owner in owners {
                        match store.job(owner.1).await? {
                            Some(job) if job.batch == Some(task_id) => batches.push(owner),
                            _ => singles.push(owner),
                        }
                    }
                    for (task, owners) in [
                        (TaskRef::Async(task_id), singles),
                        (TaskRef::Batch(task_id), batches),
                    ] {
                        if !owners.is_empty() {
                            shared.dispatch.timed_out(task, owners);
                        }
                    }
                }
                // Announcements that came before their submit answer was recorded, kept in
                // the store across the crash: the jobs they belong to are registered now.
                self.replay_kept_announcements().await?;
                // Those announced for jobs queued again are adopted before the queue runs:
                // a resubmit first would pay twice.
                for (update, owners) in shared.dispatch.take_held_adoptions() {
                    if !adopt_announced(shared, &submitter, update, owners).await {
                        return Ok(summary);
                    }
                }
                // Jobs held in an earlier life that such an announcement delivered are held no
                // more: the start's summary and `run --once`'s last line said they still were.
                let mut adopted = 0;
                for id in held_ids {
                    if !matches!(
                        store.job(id).await?.map(|job| job.state),
                        Some(crate::store::JobState::InDoubt { .. })
                    ) {
                        adopted += 1;
                    }
                }
                summary.still_held = summary.still_held.saturating_sub(adopted);
                let shared = self.shared.clone();
                let submitter = submitter.clone();
                tracker.spawn(async move {
                    adopt_when_announced(shared, submitter).await;
                });
            }
            if let Some(fallback) = shared.webhooks
                && !late.is_empty()
            {
                let shared = self.shared.clone();
                let submitter = submitter.clone();
                tracker.spawn(async move {
                    adopt_or_give_up(shared, submitter, late, fallback, policy).await;
                });
            }
            // Every job a webhook may belong to is registered: live webhooks may come in now.
            // (Starting the resumed jobs below waits for `max_in_flight` slots, which turn over
            // only as their tasks end: held back that long, a webhook for a job caught
            // mid-submit came after its wait had given up on it, and it was sent again.)
            shared.dispatch.mark_resumed();
            for (batch_id, (result_url, at_ms, members)) in batches {
                if !submitter
                    .resume_batch(batch_id, result_url, at_ms, members)
                    .await
                {
                    return Ok(summary);
                }
            }
            for (mid, id) in to_drive {
                if !submitter.start_job(mid, id).await {
                    return Ok(summary);
                }
            }
        }
        shared.queue.push_back(to_queue);
        Ok(summary)
    }

    /// Hands the announcements the store kept (webhooks nobody waited for when they came,
    /// from the last [`dispatch::KEPT_TTL`], however long the daemon was down) to the
    /// dispatch, as if they came now; those a job takes (or that are no task result any
    /// more) are forgotten.
    async fn replay_kept_announcements(&self) -> Result<(), StoreError> {
        let store = &self.shared.store;
        let kept = store.kept_announcements(dispatch::KEPT_TTL).await?;
        let mut taken = 0usize;
        let n = kept.len();
        let before = self.shared.dispatch.replaying();
        let mut delivered = 0u64;
        for (key, body) in kept {
            let delivery = match TaskUpdate::parse(&body) {
                Ok(update) => Some(deliver_checked(&self.shared, update).await),
                Err(_) => None,
            };
            delivered += u64::from(delivery.is_some());
            if !matches!(
                delivery,
                Some(dispatch::Delivery::Kept | dispatch::Delivery::KeptForOwner)
            ) {
                store.forget_announcement(&key).await?;
                taken += usize::from(delivery.is_some());
            }
        }
        self.shared.dispatch.replayed(before, delivered);
        if n > 0 {
            info!(
                kept = n,
                taken,
                "Webhooks kept in the store by an earlier run (they came before their submit's answer was recorded, or for no known task) were given again; those taken went to their jobs"
            );
        }
        Ok(())
    }

    /// Requeues jobs from the store (replay) and schedules them. Only ended or held jobs are
    /// replayed: requeueing a job under way would lose its task id and pay for it twice.
    pub async fn replay(&self, ids: Vec<JobId>) -> Result<usize, StoreError> {
        self.replay_checked(ids)
            .await
            .map(|replayed| replayed.requeued)
    }

    /// [`Handle::replay`], also saying which runs were not replayed because another active
    /// manifest writes one of their outputs or reports now (one sentence each).
    pub async fn replay_checked(&self, ids: Vec<JobId>) -> Result<Replayed, StoreError> {
        let (replayed, runs) = requeue_for_replay(
            &self.shared.store,
            (&self.shared.inbox, &self.shared.outbox),
            ids,
        )
        .await?;
        // Failures this process counted, requeued: no longer failures of this run (a job
        // that fails again is counted again).
        let started =
            crate::store::now_ms().saturating_sub(self.shared.started.elapsed().as_millis() as u64);
        let taken_back = replayed
            .failed_at
            .iter()
            .filter(|at| **at >= started)
            .count() as u64;
        if taken_back > 0 {
            self.shared
                .board
                .update(|s| s.failed_taken_back += taken_back);
        }
        for (mid, rel, requeued, refetching) in runs {
            self.shared
                .finisher
                .send_counted(finisher::Event::Replayed { id: mid, rel });
            self.shared.submitter.hand_on(mid, requeued, refetching);
        }
        Ok(replayed)
    }

    /// Once intake has taken every candidate offered so far (the first scan's: call it after
    /// them), queues the held jobs of runs saved again while the daemon was down that are
    /// still queued in the store: a newer version that superseded their run cancelled them,
    /// one that was refused (invalid, or another run's outputs) left them to their run.
    pub async fn release_resaved(&self) {
        if !self.board_until(|board| board.lock().pending == 0).await {
            return;
        }
        let held = std::mem::take(
            &mut *self
                .shared
                .resaved
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut still = Vec::new();
        for (mid, id) in held {
            if let Ok(Some(job)) = self.shared.store.job(id).await
                && matches!(job.state, crate::store::JobState::Queued)
            {
                still.push((mid, id));
            }
        }
        if !still.is_empty() {
            info!(
                images = still.len(),
                "The newer version of a manifest saved while the daemon was down was not taken: its run's queued images go on"
            );
        }
        self.shared.queue.push_back(still);
    }

    /// Completes when intake is idle and every run this process tracks has ended or is held.
    pub async fn wait_settled(&self) {
        self.board_until(|board| {
            board.is_settled()
                && self.shared.queue.is_empty()
                && !self.shared.dispatch.held_adoption_pending()
        })
        .await;
    }

    /// Waits until `done` holds of the board, re-checked at each of its changes (subscribed
    /// before each check, so no change between the check and the wait is missed); false when
    /// the daemon stops first.
    async fn board_until(&self, done: impl Fn(&Board) -> bool) -> bool {
        let board = &self.shared.board;
        loop {
            let notified = board.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(board) {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shared.cancel.cancelled() => return false,
            }
        }
    }

    fn settings(&self) -> Settings {
        self.shared
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Sleeps `d` unless `cancel` comes first (the daemon stops): false when it did.
pub(crate) async fn sleep_unless_cancelled(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// The first wait before a manifest that could not be moved out of the inbox is moved again
/// ([`move_again_later`]); doubled after each failed try, up to [`MOVE_AGAIN_MAX`].
const MOVE_AGAIN_FIRST: Duration = Duration::from_secs(5);
const MOVE_AGAIN_MAX: Duration = Duration::from_secs(300);

/// A file's size and mtime: whether it is still the same version later.
type FileVersion = (u64, Option<std::time::SystemTime>);

fn file_version(path: &std::path::Path) -> Option<FileVersion> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok()))
}

/// Moves a manifest out of the inbox again later, when its move (into `rejected/` or the
/// archive) failed: a full disk, a file where a folder goes. The watcher offers a file once
/// per version, so it lay in the inbox until a restart although the way was clear again.
/// `attempt` (file work, run on the blocking pool) is tried again every few minutes while
/// the file at `path` is the version it is now; it ends once `attempt` succeeds (`moved`
/// is told), when the file changes or goes (a newer version is the watcher's), or at `cancel`.
fn move_again_later<T, E>(
    path: PathBuf,
    cancel: Option<CancellationToken>,
    attempt: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    moved: impl FnOnce(T) + Send + 'static,
) where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let Some(seen) = file_version(&path) else {
        return;
    };
    let attempt = Arc::new(attempt);
    let cancel = cancel.unwrap_or_default();
    tokio::spawn(async move {
        let mut wait = MOVE_AGAIN_FIRST;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            if file_version(&path) != Some(seen) {
                return;
            }
            let attempt = attempt.clone();
            match on_file_pool(move || attempt()).await {
                Ok(done) => return moved(done),
                Err(err) => {
                    tracing::debug!(error = %err, path = %path.display(), "The manifest still cannot be moved out of the inbox");
                    wait = (wait * 2).min(MOVE_AGAIN_MAX);
                }
            }
        }
    });
}

/// Whether the file of the run `m` in `inbox` now holds other content than the run's (a file
/// gone, or unreadable, is not taken for a new version; nor is a recipe folder's image, whose
/// run is keyed by its recipe too).
async fn saved_again(inbox: &std::path::Path, m: &crate::store::ManifestV1) -> bool {
    if crate::manifest::is_image_name(std::path::Path::new(&m.rel)) {
        return false;
    }
    let path = inbox.join(&m.rel);
    let sha256 = m.sha256.clone();
    on_file_pool(move || {
        path.is_file() && crate::output::sha256_file(&path).is_ok_and(|now| now != sha256)
    })
    .await
}

/// Runs file work (reading inputs, writing outputs and reports, moving manifests) on the
/// blocking pool, so it never stalls the async workers.
async fn on_file_pool<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// A job caught mid-submit by a crash, under the `in_doubt` policy: requeued (counted in
/// doubt) or held; always held when Claid had accepted its submit (`accepted_unread`).
/// Returns the policy applied.
async fn in_doubt_after_crash(
    store: &Store,
    policy: InDoubtPolicy,
    id: JobId,
) -> Result<InDoubtPolicy, StoreError> {
    // Claid accepted its submit (an answer that could not be read): held, never sent again.
    let accepted = store.job(id).await?.is_some_and(|job| job.accepted_unread);
    let policy = if accepted {
        InDoubtPolicy::Hold
    } else {
        policy
    };
    match policy {
        InDoubtPolicy::Resubmit => {
            store.requeue(id, true).await?;
            warn!(
                job_id = id,
                "Job was left mid-submit by the last run (a crash, or a submit whose answer could not be recorded before it stopped); resubmitting (in doubt)"
            );
        }
        InDoubtPolicy::Hold => {
            store.mark_in_doubt(id).await?;
            warn!(
                job_id = id,
                "Job was left mid-submit by the last run (a crash, or a submit whose answer could not be recorded before it stopped); held for `replay --in-doubt`"
            );
        }
    }
    Ok(policy)
}

/// Jobs caught mid-submit by a crash, with webhooks on: each waits up to `fallback` for a
/// webhook whose echoed request is its own, or for a batch webhook whose echoed request lists
/// its input (with its body) among those of other such jobs. One that comes adopts the task
/// or the batch (nothing is submitted twice); otherwise the `in_doubt` policy applies.
/// Cancelled (shutdown), the jobs stay Submitting for the next start.
async fn adopt_or_give_up(
    shared: Arc<Shared>,
    submitter: submitter::Submitter,
    late: Vec<(ManifestId, JobId, Option<dispatch::LostSubmit>)>,
    fallback: Duration,
    policy: InDoubtPolicy,
) {
    let deadline = Instant::now() + fallback;
    let mut waits = tokio::task::JoinSet::new();
    let mut pending: HashMap<JobId, tokio::task::AbortHandle> = HashMap::new();
    for (mid, id, lost) in late {
        let cancel = shared.cancel.clone();
        // A job that may have gone alone is counted by its `LostSubmit`; one that may only
        // have gone in a batch, here.
        let awaiting = lost.is_none().then(|| shared.dispatch.awaiting(1));
        let handle = waits.spawn(async move {
            let _awaiting = awaiting;
            let update = match lost {
                Some(lost) => tokio::select! {
                    update = lost.wait(fallback) => update,
                    _ = cancel.cancelled() => return None,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => None,
                    _ = cancel.cancelled() => return None,
                },
            };
            Some((mid, id, update))
        });
        pending.insert(id, handle);
    }
    let mut batches_open = true;
    loop {
        let done = tokio::select! {
            done = waits.join_next() => done,
            adoption = shared.dispatch.next_batch_adoption(deadline), if batches_open => {
                match adoption {
                    Some((update, owners)) => {
                        for (_, id) in &owners {
                            if let Some(handle) = pending.remove(id) {
                                handle.abort();
                            }
                        }
                        if !adopt_batch(&shared, &submitter, update, owners).await {
                            return;
                        }
                    }
                    None => batches_open = false,
                }
                continue;
            }
            _ = shared.cancel.cancelled() => return,
        };
        let Some(done) = done else {
            break;
        };
        let Ok(Some((mid, id, update))) = done else {
            continue;
        };
        if pending.remove(&id).is_none() {
            // Adopted with its batch meanwhile.
            continue;
        }
        shared.dispatch.forget_lost_batch_job((mid, id));
        let store = &shared.store;
        let ended = match update {
            Some(update) => {
                let (task_id, result_url) = match &update {
                    TaskUpdate::Async(task) => (task.id, task.result_url.clone()),
                    TaskUpdate::Batch(batch) => (batch.id, batch.result_url.clone()),
                };
                match store.adopt_task(id, update.task(), &result_url).await {
                    Ok(_) => {
                        info!(
                            job_id = id,
                            task_id,
                            "A submit cut short by a crash was recovered from its webhook; nothing is submitted twice"
                        );
                        // A final update is the result; one that only named the task (still
                        // running) is not: kept, it would be taken for the result, and the
                        // task's final update then dropped as a duplicate.
                        if update.status().is_terminal() {
                            shared.dispatch.keep(update);
                        }
                        if !submitter.start_job(mid, id).await {
                            return;
                        }
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            }
            None => match in_doubt_after_crash(store, policy, id).await {
                Ok(InDoubtPolicy::Resubmit) => {
                    // Until it is sent again, a webhook later than the wait is still adopted.
                    if let Ok(Some(full)) = store.job(id).await {
                        shared.dispatch.hold(vec![held_job(mid, id, &full)]);
                    }
                    shared.queue.push_back(vec![(mid, id)]);
                    Ok(())
                }
                Ok(InDoubtPolicy::Hold) => {
                    if let Ok(Some(full)) = store.job(id).await {
                        shared.dispatch.hold(vec![held_job(mid, id, &full)]);
                    }
                    shared.finisher.settled(mid, JobOutcome::Held);
                    Ok(())
                }
                Err(err) => Err(err),
            },
        };
        if let Err(err) = ended {
            error!(error = %err, job_id = id, "Cannot record the end of a wait for a webhook; the job is looked at again at the next start");
        }
    }
}

/// How a job held in doubt is recognised in a webhook's echoed request (see
/// [`dispatch::HeldJob`]).
pub(crate) fn held_job(
    manifest: ManifestId,
    id: JobId,
    job: &crate::store::JobV1,
) -> dispatch::HeldJob {
    dispatch::HeldJob {
        owner: (manifest, id),
        alone: if job.local && job.staged.is_none() {
            None
        } else {
            dispatch::request_key(&job::request_of(job))
        },
        in_batch: batch::lost_batch_job(manifest, id, job),
    }
}

/// With webhooks on, for the daemon's life: a task announced late for jobs held in doubt
/// (their lost submit's wait had ended), or queued again after it and not sent again yet, is
/// adopted by those still waiting, durably, and seen through like any other; so neither
/// `replay --in-doubt` nor the `resubmit` policy pays twice for a task Claid announced. A run
/// that had ended is reopened, as a replay would. A queued job adopted alone is left to whoever
/// holds it (its queue entry, or its own retry wait), which finds it submitted and polls it.
async fn adopt_when_announced(shared: Arc<Shared>, submitter: submitter::Submitter) {
    loop {
        let (update, owners) = tokio::select! {
            adoption = shared.dispatch.next_held_adoption() => adoption,
            () = shared.cancel.cancelled() => return,
        };
        // Seen through when dropped, even by a panic (the count stayed up, and `run --once`
        // waited for ever).
        let _seen = AdoptionSeenThrough(shared.clone());
        if !adopt_announced(&shared, &submitter, update, owners).await {
            return;
        }
    }
}

/// Tells the dispatch that an adoption [`Dispatch::next_held_adoption`] gave is seen through,
/// when dropped, and whoever waits for the pipeline to settle to look again (an adoption
/// that found no job waiting changed nothing else).
///
/// [`Dispatch::next_held_adoption`]: dispatch::Dispatch::next_held_adoption
struct AdoptionSeenThrough(Arc<Shared>);

impl Drop for AdoptionSeenThrough {
    fn drop(&mut self) {
        self.0.dispatch.held_adoption_done();
        self.0.board.changed.notify_waiters();
    }
}

/// One task announced for jobs waiting in doubt (see [`adopt_when_announced`]), adopted by
/// those still waiting. False when the daemon stops.
async fn adopt_announced(
    shared: &Arc<Shared>,
    submitter: &submitter::Submitter,
    update: TaskUpdate,
    owners: Vec<dispatch::LostOwner>,
) -> bool {
    let store = &shared.store;
    // (run, job, held in doubt or failed as task-timeout rather than queued again: its run is
    // reopened and the job started here)
    let mut waiting = Vec::with_capacity(owners.len());
    // Of those, failed as task-timeout (they leave the failed count).
    let mut timed_out = Vec::new();
    for (mid, id) in owners {
        if let Ok(Some(job)) = store.job(id).await {
            if job.timed_out_on(update.id(), matches!(update, TaskUpdate::Batch(_))) {
                timed_out.push(id);
                waiting.push((mid, id, true));
            } else if job.waits_for_adoption() {
                let held = matches!(job.state, crate::store::JobState::InDoubt { .. });
                waiting.push((mid, id, held));
            }
        }
    }
    if waiting.is_empty() {
        // None waits any more (sent again meanwhile): the update may be the new submit's
        // own (the same request), whose job will ask for it by its id or, if that answer
        // is lost too, by its request. Kept for them, as if nobody had claimed it.
        shared.dispatch.keep(update);
        return true;
    }
    let ids: Vec<JobId> = waiting.iter().map(|(_, id, _)| *id).collect();
    let (task_id, result_url, batch) = match &update {
        // An async task is one job's.
        TaskUpdate::Async(task) => (task.id, task.result_url.clone(), false),
        TaskUpdate::Batch(b) => (b.id, b.result_url.clone(), true),
    };
    let ids = if batch { &ids[..] } else { &ids[..1] };
    // A run whose images failed as task-timeout has ended: reopened before they take the
    // task, so its live counts see them leave `failed` (reopened after, it would count them
    // failed still, and end again at once).
    let mut late_runs: Vec<ManifestId> = waiting
        .iter()
        .filter(|(_, id, _)| timed_out.contains(id))
        .map(|(mid, _, _)| *mid)
        .collect();
    late_runs.dedup();
    for mid in &late_runs {
        if let Ok(Some(m)) = store.manifest(*mid).await
            && m.state.is_ended()
            && let Err(err) = store.reopen_run(*mid).await
        {
            error!(error = %err, manifest = %m.rel, "Cannot reopen the run of a task announced after its images timed out");
            return true;
        }
    }
    let adopted = match store.adopt_waiting(ids, task_id, &result_url, batch).await {
        Ok(adopted) => adopted,
        Err(err) => {
            error!(error = %err, task_id, "Cannot record a task announced late for jobs waiting in doubt; they stay as they were");
            return true;
        }
    };
    waiting.retain(|(_, id, _)| adopted.contains(id));
    if waiting.is_empty() {
        shared.dispatch.keep(update);
        return true;
    }
    info!(
        task_id,
        images = waiting.len(),
        "A task announced late by webhook was adopted by the jobs held in doubt (or queued again) for it; nothing is submitted twice"
    );
    let late = waiting
        .iter()
        .filter(|(_, id, _)| timed_out.contains(id))
        .count() as u64;
    let held = waiting.iter().filter(|(_, _, held)| *held).count() as u64 - late;
    if late > 0 {
        info!(
            task_id,
            images = late,
            "Claid announced the result of a task given up as task-timeout: its images take it (replay would have paid again)"
        );
    }
    shared.board.update(|s| {
        s.totals.held = s.totals.held.saturating_sub(held);
        s.totals.failed = s.totals.failed.saturating_sub(late);
    });
    let mut runs: Vec<ManifestId> = waiting
        .iter()
        .filter(|(_, _, held)| *held)
        .map(|(mid, _, _)| *mid)
        .collect();
    runs.sort_unstable();
    runs.dedup();
    for mid in runs {
        let Ok(Some(m)) = store.manifest(mid).await else {
            return true;
        };
        if m.state.is_ended()
            && let Err(err) = store.reopen_run(mid).await
        {
            error!(error = %err, manifest = %m.rel, "Cannot reopen the run of an adopted task");
            return true;
        }
        // A run whose images had failed as task-timeout had ended: it runs again, as after a
        // replay; one whose images were held is taken out of its hold.
        let reopened_for_late = waiting
            .iter()
            .any(|(run, id, _)| *run == mid && timed_out.contains(id));
        if reopened_for_late {
            shared.finisher.send_counted(finisher::Event::Replayed {
                id: mid,
                rel: m.rel.clone(),
            });
        } else {
            shared.finisher.send_counted(finisher::Event::Adopted {
                id: mid,
                rel: m.rel.clone(),
            });
        }
    }
    match update {
        TaskUpdate::Async(_) => {
            shared.dispatch.keep(update);
            let (mid, id, held) = waiting[0];
            !held || submitter.start_job(mid, id).await
        }
        TaskUpdate::Batch(_) => {
            let owners = waiting.iter().map(|(mid, id, _)| (*mid, *id)).collect();
            see_batch_through(shared, submitter, update, owners).await
        }
    }
}

/// Jobs caught mid-submit by a crash whose batch was announced by webhook (see
/// [`adopt_or_give_up`]): they take the batch's id, durably, and a batch task sees it through
/// with the announced result. Those no longer submitting (a race with the end of the wait)
/// are left out. False when the daemon stops.
async fn adopt_batch(
    shared: &Arc<Shared>,
    submitter: &submitter::Submitter,
    update: TaskUpdate,
    owners: Vec<dispatch::LostOwner>,
) -> bool {
    let TaskUpdate::Batch(batch) = &update else {
        return true;
    };
    let (batch_id, result_url) = (batch.id, batch.result_url.clone());
    let store = &shared.store;
    let mut ids = Vec::with_capacity(owners.len());
    for (_, id) in &owners {
        if let Ok(Some(job)) = store.job(*id).await
            && matches!(job.state, crate::store::JobState::Submitting { .. })
        {
            ids.push(*id);
        }
    }
    if ids.is_empty() {
        return true;
    }
    if let Err(err) = store
        .mark_batch_submitted(&ids, batch_id, &result_url, None)
        .await
    {
        error!(error = %err, batch_id, "Cannot record a batch recovered from its webhook; its jobs are looked at again at the next start");
        return true;
    }
    let owners: Vec<dispatch::LostOwner> = owners
        .into_iter()
        .filter(|(_, id)| ids.contains(id))
        .collect();
    info!(
        batch_id,
        images = owners.len(),
        "A batch submit cut short by a crash was recovered from its webhook; nothing is submitted twice"
    );
    see_batch_through(shared, submitter, update, owners).await
}

/// The batch task of a batch its jobs adopted (their records now name it): it takes the
/// announced result (kept for its id) and sees every job through. False when the daemon
/// stops.
async fn see_batch_through(
    shared: &Arc<Shared>,
    submitter: &submitter::Submitter,
    update: TaskUpdate,
    owners: Vec<dispatch::LostOwner>,
) -> bool {
    let TaskUpdate::Batch(batch) = &update else {
        return true;
    };
    let (batch_id, result_url) = (batch.id, batch.result_url.clone());
    let mut members = Vec::with_capacity(owners.len());
    for (mid, id) in owners {
        if let Ok(Some(job)) = shared.store.job(id).await {
            members.push(batch::Member {
                manifest: mid,
                id,
                job,
            });
        }
    }
    shared.dispatch.keep(update);
    submitter
        .resume_batch(batch_id, result_url, crate::store::now_ms(), members)
        .await
}

/// Hands a verified webhook update to the dispatch: as one any job may adopt, or, when the
/// store says a job took its task already, as that job's only ([`dispatch::Dispatch::deliver_owned`]).
/// A store that cannot be read is taken as saying so (an adoption missed is polled for; one
/// made wrongly hides a second bill).
async fn deliver_checked(shared: &Shared, update: TaskUpdate) -> dispatch::Delivery {
    match shared.store.task_owner(update.task()).await {
        Ok(None) => shared.dispatch.deliver(update),
        Ok(Some(_)) | Err(_) => shared.dispatch.deliver_owned(update),
    }
}
