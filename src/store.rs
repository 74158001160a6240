//! The job store: the one owner of the sled database. Versioned manifest-run and job records,
//! the job lifecycle's transitions with their durability points (ARCHITECTURE.md "Crash safety"), output
//! reservations, resume after a crash, incremental job keys, and job counts kept as the states
//! change. The only module that names sled.
//!
//! The API is async and speaks domain terms: callers never see sled, a thread, or a flush. A
//! job step writes on the store's own thread ([`lane`]; a sled write changes memory, the log
//! reaches the disk in flushes) and, at a durability point, waits without blocking the runtime
//! for one group commit it shares with every job that got there at the same time ([`commit`]).
//! Registrations, releases and report scans run on the same thread, letting the waiting steps
//! in as they go; other read-only scans (resume, listings) run on the blocking pool.
//!
//! Layout: the database lives at `<state>/v1/` (the schema version is part of the path).
//! Trees ([`trees`]):
//! - `manifests`: manifest-run id → [`records::ManifestRecord`] (JSON);
//! - `manifest_by_rel`: inbox-relative path → latest run id;
//! - `jobs`: job id → [`records::JobRecord`] (JSON);
//! - `job_ranges`: run id ‖ first job id → last job id, a run's jobs as ranges of consecutive
//!   ids (one entry per run, or a few); `jobs_by_manifest` (run id ‖ job id → empty) is the
//!   index older versions wrote, still read, no longer written;
//! - `done_by_key`: job key → the job that made the output (or whose result for it, made but
//!   not written, is kept: a later run of the row fetches it again);
//! - `unfinished`: job id → empty for every job not Done or Failed, so a restart does not read
//!   the whole history;
//! - `reserved`: outbox-relative path (or `storage://` object) → the run that will write it;
//!   `reserved_by_manifest`: run id ‖ path → empty for a run's reports (its jobs' outputs are
//!   found through the jobs when it is released); `registering`: run id → its path while its
//!   registration is written;
//! - `announced`: task id → when ‖ body of a verified webhook nobody waited for when it came
//!   (its submit answer not recorded yet), flushed before the webhook is answered, so that a
//!   crash before that answer still finds it at the restart;
//! - `meta`: schema information.
//!
//! Ids come from `Db::generate_id` and are stored big-endian, so a scan is FIFO.

mod commit;
mod counts;
mod lane;
pub mod records;
pub mod snapshot;
mod trees;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::claid::wire::TaskRef;

use crate::codes::{FailureCode, StateName};
pub use crate::store::counts::CountsSnapshot;
pub use crate::store::records::{
    DoneInfo, JobId, JobRecord, JobState, JobSummary, JobV1, ManifestCounts, ManifestId,
    ManifestRecord, ManifestState, ManifestV1, ObjectSeen, UNWRITTEN_RESULT_KEPT, UnwrittenResult,
};
pub use crate::store::trees::SCHEMA_DIR;
use crate::store::trees::{Registration, Trees};

/// How many request ids a job keeps (the most recent ones).
pub const MAX_REQUEST_IDS: usize = 8;

/// Errors of the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("cannot open state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The database's own failure, named by its cause (`ENOSPC: no space left on device`).
    #[error("state database error: {}", DbCause(.0))]
    Db(sled::Error),
    #[error("job {job} is {found}, expected {expected}")]
    Conflict {
        job: JobId,
        expected: &'static str,
        found: StateName,
    },
    #[error("flushing the state database failed: {0}")]
    Flush(String),
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("manifest {0} not found")]
    ManifestNotFound(ManifestId),
    #[error("corrupt record in tree {tree}")]
    Corrupt {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
    /// The store holds fewer runs than were registered in it (see `trees::HIGHWATER_FILE`).
    #[error(
        "the state database {} has lost records: {why} (its files were damaged or lost); restore the folder from a backup, or move it away to start with an empty store (every image would then be billed again)",
        crate::text::Escaped::path(path)
    )]
    Damaged { path: PathBuf, why: String },
    /// Claid named a task (or batch) another job took before: never taken by a second job
    /// (it would hide a second bill and deliver one image twice).
    #[error(
        "Claid named task {task}, which job {owner} took before; a task is never taken by two jobs"
    )]
    TaskTaken { task: u64, owner: JobId },
    /// A read-only command could not take its private copy of the store ([`snapshot`]).
    #[error(
        "cannot copy the state database for reading (at {}): {}",
        crate::text::Escaped::path(path),
        crate::os_error::OsCause(cause)
    )]
    Snapshot {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> StoreError {
        StoreError::Db(err)
    }
}

/// A sled error as a message: an OS error by its errno ([`crate::os_error::OsCause`]), the
/// rest by sled's own text. (Not a source of [`StoreError::Db`]: sled's text of an OS error
/// repeats it in std's words after the errno.)
pub struct DbCause<'a>(pub &'a sled::Error);

impl std::fmt::Display for DbCause<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            sled::Error::Io(io) => write!(f, "{}", crate::os_error::OsCause(io)),
            other => write!(f, "{}", crate::text::Escaped::str(&other.to_string())),
        }
    }
}

/// For visitors that write files while reading the store (reports).
impl From<StoreError> for std::io::Error {
    fn from(err: StoreError) -> std::io::Error {
        std::io::Error::other(err)
    }
}

impl StoreError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked { .. } => "store-locked",
            StoreError::Open { .. } => "store-open",
            StoreError::Db(_) | StoreError::Flush(_) | StoreError::Worker(_) => "store-io",
            StoreError::Conflict { .. } => "store-conflict",
            StoreError::JobNotFound(_) | StoreError::ManifestNotFound(_) => "store-not-found",
            StoreError::Corrupt { .. } | StoreError::Damaged { .. } => "store-corrupt",
            StoreError::Snapshot { .. } => "store-snapshot",
            StoreError::TaskTaken { .. } => "store-task-taken",
        }
    }
}

/// A run to register: its record, and the paths it writes besides its jobs' outputs.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub record: ManifestV1,
    /// Outbox-relative paths the run writes besides its outputs (its reports), reserved with them.
    pub extra_paths: Vec<String>,
}

/// What registering a run did.
#[derive(Debug)]
pub enum Registered {
    Run {
        id: ManifestId,
        /// The jobs to submit, in manifest order.
        queued: Vec<JobId>,
        /// Of those, the ones that fetch a result again instead (a kept result, a storage
        /// output's local copy): started as resumed downloads, not through the submit queue.
        fetching: Vec<JobId>,
        /// Jobs done without an API call.
        unchanged: u64,
        counts: ManifestCounts,
    },
    /// `path` is reserved by another run that has not ended (`owner_rel` names its manifest
    /// once that run's registration has committed); nothing was registered. `wanted` is the
    /// path this run would write: `path` itself, or a file below it or a folder of it.
    Conflict {
        path: String,
        wanted: String,
        owner: ManifestId,
        owner_rel: Option<String>,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    Superseded,
}

/// Read-only access for multi-step scans that run on the blocking pool ([`Store::read`]).
pub struct Reader<'a> {
    trees: &'a Trees,
}

impl Reader<'_> {
    pub fn manifest(&self, id: ManifestId) -> Result<Option<ManifestV1>, StoreError> {
        self.trees.manifest(id)
    }

    /// Every manifest run, oldest first.
    pub fn manifests(&self) -> Result<Vec<(ManifestId, ManifestV1)>, StoreError> {
        self.trees.manifests()
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobV1>, StoreError> {
        self.trees.job(id)
    }

    /// Every job of a manifest, in manifest order, one at a time (memory stays flat).
    pub fn for_each_job_of_manifest<E: From<StoreError>>(
        &self,
        id: ManifestId,
        visit: impl FnMut(JobId, JobV1) -> Result<(), E>,
    ) -> Result<(), E> {
        self.trees.for_each_job_of_manifest(id, visit)
    }

    /// The done job that produced the output for `key`, if any.
    pub fn done_by_key(&self, key: &str) -> Result<Option<(JobId, JobV1)>, StoreError> {
        self.trees.done_by_key(key)
    }

    /// The run `path` (outbox-relative) is reserved for, if any.
    pub fn reserved_by(&self, path: &str) -> Result<Option<ManifestId>, StoreError> {
        self.trees.reserved_by(path)
    }
}

/// Outputs a run writes, each with the `storage://` object it writes, if any (a storage
/// output reserves its object too): the object, not the request body, so that a list of
/// 100,000 outputs holds no parsed body.
pub type Outputs = Vec<(String, Option<String>)>;

/// Summaries of the jobs not Done or Failed, in id order: what a restart resumes.
pub type Unfinished = Vec<(JobId, JobSummary)>;

/// A cheap-clone handle on the job store.
#[derive(Clone, Debug)]
pub struct Store {
    trees: Trees,
    /// Group commit for the durability points, shared by every clone.
    commit: Arc<commit::GroupCommit>,
    /// Job counts by manifest and state, kept as transitions happen.
    counters: Arc<counts::Counters>,
    /// The thread every transition, registration and scan runs on, shared by every clone.
    lane: Arc<lane::Lane>,
    /// Since when writes have failed without one succeeding since (a full or read-only disk
    /// under the state folder), and the last error: `run --once` gives up on it, `/healthz`
    /// shows it.
    write_failing: Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

impl Store {
    /// Opens (or creates) the store at `<state_dir>/v1/`, sweeps what a crash cut short, and
    /// loads the counts: ended runs from their records, running ones from one pass over their
    /// jobs. `StoreError::Locked` when another process holds the database.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_for_resume(state_dir).map(|(store, _)| store)
    }

    /// `open`, also returning the summaries of every job not Done or Failed, in id order
    /// (what [`Store::unfinished`] returns), collected by the same pass that counts the runs
    /// not ended: a restart reads each unfinished job once, not twice.
    pub fn open_for_resume(state_dir: &Path) -> Result<(Store, Unfinished), StoreError> {
        let trees = Trees::open(state_dir)?;
        let counters = Arc::new(counts::Counters::default());
        let mut unfinished = Vec::new();
        for (id, m) in trees.manifests()? {
            if m.state.is_ended() {
                let counts = match m.counts {
                    Some(counts) => counts,
                    // Ended before counts were kept (an older version): count once, keep them.
                    None => {
                        let counts = trees.count_manifest(id)?;
                        trees.update_manifest(id, |m| m.counts = Some(counts))?;
                        counts
                    }
                };
                counters.add_ended(&counts);
            } else {
                counters.track(
                    id,
                    trees.count_manifest_collecting(id, Some(&mut unfinished))?,
                );
            }
        }
        unfinished.sort_unstable_by_key(|(id, _)| *id);
        // What the index lists beyond the runs just read: jobs of ended runs that are not
        // Done or Failed (a superseded run ends with jobs held in doubt).
        let mut beyond = Vec::new();
        for id in trees.unfinished_ids()? {
            if unfinished.binary_search_by_key(&id, |(j, _)| *j).is_err()
                && let Some(summary) = trees.summary(id)?
                && !summary.state.kind.is_terminal()
            {
                beyond.push((id, summary));
            }
        }
        if !beyond.is_empty() {
            unfinished.extend(beyond);
            unfinished.sort_unstable_by_key(|(id, _)| *id);
        }
        trees.db.flush()?;
        let store = Store {
            trees,
            commit: Arc::new(commit::GroupCommit::default()),
            counters,
            lane: Arc::new(lane::Lane::new("claid-store")),
            write_failing: Arc::default(),
        };
        Ok((store, unfinished))
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.trees.path
    }

    /// This store's random id, made at its creation and kept for its life.
    pub fn id(&self) -> &str {
        &self.trees.id
    }

    /// Flushes completed so far by this process (durability points share them): a
    /// diagnostic, and how tests see that a write was made durable.
    pub fn flushes(&self) -> u64 {
        self.commit.completed()
    }

    /// Returns once everything written before the call is on disk (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let flushed = self.commit.durable(&self.trees.db).await;
        self.note_write(&flushed);
        flushed
    }

    /// Since how long writes have failed without one succeeding, and why (`None` while they
    /// succeed).
    pub fn write_failing(&self) -> Option<(std::time::Duration, String)> {
        self.write_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Keeps [`Store::write_failing`] up to date with a write's outcome: a failure of the
    /// database (not a refused transition, which is no write problem) starts or continues it,
    /// a success ends it.
    fn note_write<T>(&self, res: &Result<T, StoreError>) {
        let mut failing = self
            .write_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match res {
            Ok(_) => *failing = None,
            Err(err @ (StoreError::Db(_) | StoreError::Flush(_) | StoreError::Worker(_))) => {
                let why = crate::text::error_chain(err);
                match failing.as_mut() {
                    Some((_, last)) => *last = why,
                    None => *failing = Some((std::time::Instant::now(), why)),
                }
            }
            Err(_) => {}
        }
    }

    /// Job counts: totals by state over every job stored, and per manifest not ended. Costs
    /// O(manifests not ended), whatever the history.
    pub fn counts(&self) -> CountsSnapshot {
        self.counters.snapshot()
    }

    /// The counts of one manifest that has not ended.
    pub fn counts_of_active(&self, id: ManifestId) -> Option<ManifestCounts> {
        self.counters.of(id)
    }

    /// Runs a manifest's report scan on the store's thread, as long work: steps come in every
    /// 256 jobs. The pages it reads and the rows it builds then reuse the memory the writes
    /// freed (on the blocking pool, a 100,000-job report added 13 MB to the daemon's peak
    /// RSS); the price is that a report's own file writes happen on that thread too.
    pub async fn read_for_report<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        scan: impl FnOnce(&Reader<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.on_lane(self.reading(scan)).await.map_err(E::from)?
    }

    /// Runs a read-only scan on the blocking pool (`jobs`, replay selection, listings).
    pub async fn read<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        scan: impl FnOnce(&Reader<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.on_pool(self.reading(scan)).await.map_err(E::from)?
    }

    /// `scan` over a reader of the trees, as work for the thread that runs it.
    fn reading<T, E>(
        &self,
        scan: impl FnOnce(&Reader<'_>) -> Result<T, E> + Send + 'static,
    ) -> impl FnOnce() -> Result<T, E> + Send + 'static {
        let trees = self.trees.clone();
        move || scan(&Reader { trees: &trees })
    }

    // ---- Manifest runs ----

    /// Registers a run and its jobs (see [`Trees::register`]): reserves every output and
    /// `extra_paths`, writes the jobs as they stream in, marks as done-unchanged the jobs whose
    /// identical output `unchanged` confirms is still there, and commits durably. A path
    /// reserved by another run that has not ended registers nothing and answers `Conflict`.
    pub async fn register_run(
        &self,
        run: NewRun,
        jobs: impl Iterator<Item = JobV1> + Send + 'static,
        unchanged: impl Fn(&JobV1, &JobState) -> Option<JobState> + Send + 'static,
    ) -> Result<Registered, StoreError> {
        let trees = self.trees.clone();
        let registration = self
            .write_on(lane::Kind::Long, move || {
                trees.register(run.record, &run.extra_paths, jobs, &unchanged)
            })
            .await?;
        Ok(match registration {
            Registration::Registered {
                id,
                queued,
                fetching,
                unchanged,
                counts,
            } => {
                self.counters.track(id, counts);
                Registered::Run {
                    id,
                    queued,
                    fetching,
                    unchanged,
                    counts,
                }
            }
            Registration::Conflict {
                path,
                wanted,
                owner,
                owner_rel,
            } => Registered::Conflict {
                path,
                wanted,
                owner,
                owner_rel,
            },
        })
    }

    /// The first path a new version of run `old` (its report paths, its outputs with their
    /// request bodies) would collide on with another active run, reserving nothing: a
    /// [`Registered::Conflict`], or `None`.
    pub async fn first_conflict(
        &self,
        old: ManifestId,
        extra_paths: Vec<String>,
        outputs: Outputs,
    ) -> Result<Option<Registered>, StoreError> {
        self.conflict_among(old, Arc::new((extra_paths, outputs)))
            .await
    }

    /// [`Store::first_conflict`] over paths shared with the reservation that may follow.
    async fn conflict_among(
        &self,
        old: ManifestId,
        wanted: Arc<(Vec<String>, Outputs)>,
    ) -> Result<Option<Registered>, StoreError> {
        let trees = self.trees.clone();
        let found = self
            .on_lane(move || trees.first_conflict(old, &wanted.0, &wanted.1))
            .await??;
        Ok(match found {
            Some(Registration::Conflict {
                path,
                wanted,
                owner,
                owner_rel,
            }) => Some(Registered::Conflict {
                path,
                wanted,
                owner,
                owner_rel,
            }),
            _ => None,
        })
    }

    /// Where each Claid connector writes (`claid_name` → `s3://bucket/prefix`), so that a
    /// storage output is reserved under the object it writes: two storages (or connectors)
    /// on one bucket prefix cannot both write one object. Set at start and at each reload.
    pub fn set_object_places(&self, places: std::collections::BTreeMap<String, String>) {
        self.trees.set_object_places(places);
    }

    /// Keeps the verified body of task `task_id`'s final announcement, which nobody waited
    /// for when it came; durable when this returns (the webhook is answered after it).
    pub async fn keep_announcement(&self, task: TaskRef, body: &[u8]) -> Result<(), StoreError> {
        self.trees.keep_announcement(task, now_ms(), body)?;
        self.flush().await
    }

    /// The announcements kept in the last `max_age` (key, body); older ones are removed.
    pub async fn kept_announcements(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Vec<trees::KeptAnnouncement>, StoreError> {
        let since = now_ms().saturating_sub(max_age.as_millis() as u64);
        let trees = self.trees.clone();
        self.on_pool(move || trees.kept_announcements(since))
            .await?
    }

    /// Moves every kept announcement `by` into the past, durably: how a test stands for a
    /// daemon that was down that long. Not used by the daemon.
    #[doc(hidden)]
    pub async fn age_kept_announcements(&self, by: std::time::Duration) -> Result<(), StoreError> {
        self.trees.age_kept_announcements(by.as_millis() as u64)?;
        self.flush().await
    }

    /// Forgets the kept announcement of `task` (counted as no job's): kept, every
    /// announcement of another client on the same Claid account lay in the store for a day,
    /// and was read into memory at each start.
    pub async fn forget_announcement_of(&self, task: TaskRef) -> Result<(), StoreError> {
        self.trees.forget_announcement_of(task)
    }

    /// Forgets the kept announcement under `key` (a job took it).
    pub async fn forget_announcement(&self, key: &[u8]) -> Result<(), StoreError> {
        self.trees.forget_announcement(key)
    }

    /// The most recently registered run for an inbox-relative path.
    pub async fn latest_run(
        &self,
        rel: &str,
    ) -> Result<Option<(ManifestId, ManifestV1)>, StoreError> {
        self.trees.latest_by_rel(rel)
    }

    pub async fn manifest(&self, id: ManifestId) -> Result<Option<ManifestV1>, StoreError> {
        self.trees.manifest(id)
    }

    /// Every run, oldest first. O(runs): for admin views, not for status or metrics.
    pub async fn manifests(&self) -> Result<Vec<(ManifestId, ManifestV1)>, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.manifests()).await?
    }

    /// The newest `n` runs, newest first.
    pub async fn recent_manifests(
        &self,
        n: usize,
    ) -> Result<Vec<(ManifestId, ManifestV1)>, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.recent_manifests(n)).await?
    }

    /// The run's file was saved again: it takes no new submits. Flushed.
    pub async fn mark_draining(&self, id: ManifestId) -> Result<(), StoreError> {
        let since_ms = now_ms();
        self.trees.update_manifest(id, |m| {
            if !m.state.is_ended() {
                m.state = ManifestState::Draining { since_ms };
            }
        })?;
        self.flush().await
    }

    /// The run ended: its reservations are released, its final counts kept in its record,
    /// and its state set; flushed. Returns the final counts.
    /// `staging_cleanup`: the run has staged objects to delete (`api.staging_delete`); the
    /// mark is written with the end, in the same record, and cleared once they are deleted.
    pub async fn end_run(
        &self,
        id: ManifestId,
        end: RunEnd,
        staging_cleanup: bool,
    ) -> Result<ManifestCounts, StoreError> {
        let trees = self.trees.clone();
        self.on_lane(move || trees.release(id)).await??;
        let at_ms = now_ms();
        let counts = self.counters.of(id).unwrap_or_default();
        let m = self.trees.update_manifest(id, |m| {
            m.state = match end {
                RunEnd::Finished => ManifestState::Finished { at_ms },
                RunEnd::Superseded => ManifestState::Superseded { at_ms },
            };
            m.counts = Some(counts);
            m.staging_cleanup = staging_cleanup;
        })?;
        self.flush().await?;
        let counts = m.counts.unwrap_or(counts);
        self.counters.end(id);
        Ok(counts)
    }

    /// Sets or clears the run's `staging_cleanup` mark (see [`ManifestV1::staging_cleanup`]);
    /// a run's mark is set durably with its end ([`Store::end_run`]).
    pub async fn set_staging_cleanup(
        &self,
        id: ManifestId,
        pending: bool,
    ) -> Result<(), StoreError> {
        self.trees
            .update_manifest(id, |m| m.staging_cleanup = pending)?;
        // Durable at once (one flush per run's end): a cleared mark lost to a crash made every
        // later start delete the run's staged objects again, and count them.
        self.flush().await
    }

    /// Ended runs whose staging cleanup was cut short (their mark is still set). O(runs).
    pub async fn staging_cleanups(&self) -> Result<Vec<ManifestId>, StoreError> {
        let trees = self.trees.clone();
        let manifests = self.on_pool(move || trees.manifests()).await??;
        Ok(manifests
            .into_iter()
            .filter(|(_, m)| m.state.is_ended() && m.staging_cleanup)
            .map(|(id, _)| id)
            .collect())
    }

    /// [`Store::reopen_run`] for a replay: unless another active run holds one of the paths
    /// the replayed jobs write (their outputs and objects, and `extra_paths`, the run's
    /// reports), which is returned as a [`Registered::Conflict`] with nothing changed, the run
    /// is reopened and those paths reserved for it again.
    pub async fn reopen_run_reserving(
        &self,
        id: ManifestId,
        extra_paths: Vec<String>,
        outputs: Outputs,
    ) -> Result<Option<Registered>, StoreError> {
        let wanted = Arc::new((extra_paths, outputs));
        if let Some(conflict) = self.conflict_among(id, wanted.clone()).await? {
            return Ok(Some(conflict));
        }
        self.reopen_run(id).await?;
        // Made durable by the requeue that follows (each replay path flushes it).
        let trees = self.trees.clone();
        self.write_on(lane::Kind::Long, move || {
            trees.reserve_again(id, &wanted.0, &wanted.1)
        })
        .await?;
        Ok(None)
    }

    /// An ended run gets work again (a replay): it is running again, its counts live again.
    /// Its outputs are not reserved again here (see [`Store::reopen_run_reserving`]). Flushed.
    pub async fn reopen_run(&self, id: ManifestId) -> Result<(), StoreError> {
        let Some(m) = self.trees.manifest(id)? else {
            return Err(StoreError::ManifestNotFound(id));
        };
        if !m.state.is_ended() {
            return Ok(());
        }
        let trees = self.trees.clone();
        let counts = match m.counts {
            Some(counts) => counts,
            None => self.on_pool(move || trees.count_manifest(id)).await??,
        };
        self.trees.update_manifest(id, |m| {
            m.state = ManifestState::Running;
            m.counts = None;
        })?;
        self.counters.reopen(id, counts);
        self.flush().await
    }

    // ---- Jobs ----

    pub async fn job(&self, id: JobId) -> Result<Option<JobV1>, StoreError> {
        self.trees.job(id)
    }

    /// The done job that produced the output for `key`, if any.
    pub async fn done_by_key(&self, key: &str) -> Result<Option<(JobId, JobV1)>, StoreError> {
        self.trees.done_by_key(key)
    }

    /// Summaries of every job not Done/Failed, FIFO: what resuming needs, without bodies.
    pub async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.unfinished_summaries()).await?
    }

    /// Records where a queued local input was staged (`api.staging`); the job stays queued.
    /// Durable: a restart submits the staged object and never stages the file again.
    pub async fn mark_staged(&self, id: JobId, uri: &str) -> Result<JobV1, StoreError> {
        let uri = uri.to_owned();
        let job = self
            .step(id, "queued", move |job| match job.state {
                JobState::Queued => {
                    let mut next = job.clone();
                    next.staged = Some(uri.clone());
                    Some(next)
                }
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Notes the objects already at a queued job's storage output before its submit
    /// ([`JobV1::replaces`]; empty: none); kept if noted already. Made durable by the submit's
    /// intent (`mark_submitting`), which flushes after it.
    pub async fn note_replaced_objects(
        &self,
        id: JobId,
        seen: Vec<ObjectSeen>,
    ) -> Result<JobV1, StoreError> {
        self.step(id, "queued", move |job| match job.state {
            JobState::Queued if job.replaces.is_none() => Some(JobV1 {
                replaces: Some(seen.clone()),
                ..job.clone()
            }),
            _ => None,
        })
        .await
    }

    /// The other places (`s3://bucket/path`) `storage`'s connector at Claid was found pointing
    /// at during earlier runs or this one, oldest first: objects Claid wrote then are there.
    pub async fn storage_places(&self, storage: &str) -> Result<Vec<String>, StoreError> {
        let (trees, storage) = (self.trees.clone(), storage.to_owned());
        self.on_pool(move || trees.storage_places(&storage)).await?
    }

    /// The storage each Claid connector name was noted with at a start (see
    /// [`Store::note_connectors`]).
    pub async fn noted_connectors(
        &self,
    ) -> Result<std::collections::BTreeMap<String, (String, String)>, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.noted_connectors()).await?
    }

    /// Notes which storage of the config each connector name belongs to now (`claid_name` →
    /// the storage's name and `url`). Durable.
    pub async fn note_connectors(
        &self,
        connectors: std::collections::BTreeMap<String, (String, String)>,
    ) -> Result<(), StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.note_connectors(&connectors))
            .await?
    }

    /// Has the jobs not sent yet, and the failed ones, name each renamed connector (`rewrite`:
    /// OLD → NEW) by its new name, and replays from now on follow `follow` (see
    /// `Trees::rename_connectors`); how many were rewritten. Durable.
    pub async fn rename_connectors(
        &self,
        rewrite: std::collections::BTreeMap<String, String>,
        follow: std::collections::BTreeMap<String, String>,
    ) -> Result<usize, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.rename_connectors(&rewrite, &follow))
            .await?
    }

    /// Notes `place` as where `storage`'s connector at Claid points now, elsewhere than the
    /// storage's `url` (found during a run): every later start looks there for an object not
    /// at its key, whichever of the two is made to match the other. Durable.
    pub async fn note_storage_place(&self, storage: &str, place: &str) -> Result<(), StoreError> {
        let (trees, storage, place) = (self.trees.clone(), storage.to_owned(), place.to_owned());
        self.on_pool(move || trees.note_storage_place(&storage, &place))
            .await?
    }

    /// Notes how a queued job's storage input looked just before its submit
    /// ([`JobV1::input_seen`]). Made durable by the submit's own flush.
    pub async fn note_input_seen(&self, id: JobId, seen: ObjectSeen) -> Result<(), StoreError> {
        self.step(id, "queued", move |job| match job.state {
            JobState::Queued if job.input_seen.as_ref() != Some(&seen) => Some(JobV1 {
                input_seen: Some(seen.clone()),
                ..job.clone()
            }),
            _ => None,
        })
        .await
        .map(|_| ())
        .or_else(|err| match err {
            // Seen as it is already, or no longer queued: nothing to note.
            StoreError::Conflict { .. } => Ok(()),
            err => Err(err),
        })
    }

    /// A queued job's staged input is gone from the bucket (deleted meanwhile): forgotten, so
    /// that the input is staged again. Durable.
    pub async fn unstage(&self, id: JobId) -> Result<JobV1, StoreError> {
        let job = self
            .step(id, "queued", move |job| match job.state {
                JobState::Queued => {
                    let mut next = job.clone();
                    next.staged = None;
                    Some(next)
                }
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// The staged objects (`JobV1::staged`) of every job not done or failed: those must stay.
    pub async fn staged_in_use(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let trees = self.trees.clone();
        self.on_pool(move || trees.unfinished_staged()).await?
    }

    /// The staged objects of a run's jobs.
    pub async fn staged_of_run(
        &self,
        id: ManifestId,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read(move |reader| {
            let mut staged = std::collections::HashSet::new();
            reader.for_each_job_of_manifest::<StoreError>(id, |_, job| {
                if let Some(uri) = job.staged {
                    staged.insert(uri);
                }
                Ok(())
            })?;
            Ok(staged)
        })
        .await
    }

    /// Queued → Submitting, `attempts += 1`. Durability point 1 (ARCHITECTURE.md "Crash safety"): returns once on disk.
    pub async fn mark_submitting(&self, id: JobId) -> Result<JobV1, StoreError> {
        self.mark_submitting_to(id, None).await
    }

    /// [`Store::mark_submitting`] of a job whose output object goes into a storage that points
    /// at `submitted_to` now (its `url`; [`JobV1::submitted_to`]).
    pub async fn mark_submitting_to(
        &self,
        id: JobId,
        submitted_to: Option<String>,
    ) -> Result<JobV1, StoreError> {
        let now = now_ms();
        let job = self
            .step(id, "queued", move |job| match job.state {
                JobState::Queued => Some(JobV1 {
                    state: JobState::Submitting { since_ms: now },
                    attempts: job.attempts.saturating_add(1),
                    submitted_to: submitted_to.clone(),
                    ..job.clone()
                }),
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Notes `job` as the owner of `task` ([`trees::TREE_TASKS`]); `TaskTaken` when another
    /// job took it before.
    fn take_task(&self, task: TaskRef, job: JobId) -> Result<(), StoreError> {
        match self.trees.take_task(task, job)? {
            Some(owner) => Err(StoreError::TaskTaken {
                task: task.id(),
                owner,
            }),
            None => Ok(()),
        }
    }

    /// The job that took `task` first, if one did (a webhook for a task a job took is never
    /// adopted by another).
    pub async fn task_owner(&self, task: TaskRef) -> Result<Option<JobId>, StoreError> {
        self.trees.task_owner(task)
    }

    /// Submitting → Submitted. Durability point 2: returns once on disk.
    pub async fn mark_submitted(
        &self,
        id: JobId,
        task_id: u64,
        result_url: &str,
        request_id: Option<&str>,
    ) -> Result<JobV1, StoreError> {
        self.take_task(TaskRef::Async(task_id), id)?;
        let now = now_ms();
        let result_url = result_url.to_owned();
        let request_id = request_id.map(str::to_owned);
        let job = self
            .step(id, "submitting", move |job| match job.state {
                JobState::Submitting { .. } => {
                    let mut next = job.clone();
                    next.state = JobState::Submitted {
                        task_id,
                        result_url: result_url.clone(),
                        at_ms: now,
                    };
                    push_request_id(&mut next, request_id.as_deref());
                    Some(next)
                }
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Submitting → Downloading for a synchronous upload, whose answer is the result itself.
    /// Durable, like the task id of an async submit.
    pub async fn mark_uploaded(
        &self,
        id: JobId,
        url: &str,
        width: u32,
        height: u32,
        request_id: Option<&str>,
    ) -> Result<JobV1, StoreError> {
        let url = url.to_owned();
        let request_id = request_id.map(str::to_owned);
        let job = self
            .step(id, "submitting", move |job| match job.state {
                JobState::Submitting { .. } => {
                    let mut next = job.clone();
                    next.state = JobState::Downloading {
                        task_id: None,
                        url: url.clone(),
                        width,
                        height,
                        copy_of: None,
                        kept_since_ms: None,
                        submitted_at_ms: None,
                    };
                    push_request_id(&mut next, request_id.as_deref());
                    Some(next)
                }
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Submitted, Submitting (a synchronous upload) or Downloading (a retry) → Downloading.
    /// Not flushed: losing it only means polling once more.
    pub async fn mark_downloading(
        &self,
        id: JobId,
        task_id: Option<u64>,
        url: &str,
        width: u32,
        height: u32,
    ) -> Result<JobV1, StoreError> {
        let url = url.to_owned();
        self.step(
            id,
            "submitting|submitted|downloading",
            move |job| match job.state {
                JobState::Submitting { .. }
                | JobState::Submitted { .. }
                | JobState::Downloading { .. } => Some(JobV1 {
                    state: JobState::Downloading {
                        task_id,
                        url: url.clone(),
                        width,
                        height,
                        copy_of: None,
                        // A kept result's new URL (the task polled again) is still that result.
                        kept_since_ms: match job.state {
                            JobState::Downloading { kept_since_ms, .. } => kept_since_ms,
                            _ => None,
                        },
                        submitted_at_ms: match job.state {
                            JobState::Submitted { at_ms, .. } => Some(at_ms),
                            JobState::Downloading {
                                submitted_at_ms, ..
                            } => submitted_at_ms,
                            _ => None,
                        },
                    },
                    ..job.clone()
                }),
                _ => None,
            },
        )
        .await
    }

    /// Downloading → Done, or Queued → Done when `done.unchanged` or `done.skipped` (no API
    /// call was made). Updates `done_by_key`. Durability point 3: returns once on disk.
    pub async fn mark_done(&self, id: JobId, done: DoneInfo) -> Result<JobV1, StoreError> {
        let unchanged = done.unchanged || done.skipped;
        let state = JobState::from(done);
        let expected = if unchanged {
            "downloading|queued"
        } else {
            "downloading"
        };
        let job = self
            .step(id, expected, move |job| match job.state {
                JobState::Downloading { .. } => Some(with_state(job, state.clone())),
                JobState::Queued if unchanged => Some(with_state(job, state.clone())),
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Any unfinished state → Failed. Durable.
    pub async fn mark_failed(
        &self,
        id: JobId,
        code: FailureCode,
        message: &str,
    ) -> Result<JobV1, StoreError> {
        self.mark_failed_keeping(id, code, message, None).await
    }

    /// [`Store::mark_failed`] of a job whose storage object's copy could not be written:
    /// `object_sha` is the sha256 of the bytes read from the object, kept with it
    /// ([`UnwrittenResult::sha256`]) for a replay to copy only that object again.
    pub async fn mark_failed_keeping(
        &self,
        id: JobId,
        code: FailureCode,
        message: &str,
        object_sha: Option<String>,
    ) -> Result<JobV1, StoreError> {
        // Kept as every reader may show it (reports, the dashboard, alerts): Claid's messages
        // quote the inputs, and an input's URL may carry a signature.
        let message = crate::text::capped(&crate::text::redact_urls_in(message)).into_owned();
        let job = self
            .step(id, "unfinished", move |job| {
                if job.state.is_terminal() {
                    return None;
                }
                Some(with_state(
                    job,
                    JobState::Failed {
                        code,
                        message: message.clone(),
                        attempts: job.attempts,
                        task_id: job.state.task_id(),
                        unwritten: job.unwritten_result(code).map(|mut kept| {
                            kept.sha256 = kept.sha256.or_else(|| object_sha.clone());
                            kept
                        }),
                    },
                ))
            })
            .await?;
        // Claid may still finish the task: its late announcement is taken even after a
        // restart (the registry the dispatch keeps is in memory).
        if let JobState::Failed {
            code,
            task_id: Some(task_id),
            ..
        } = job.state
            && code.result_may_still_come()
        {
            self.trees
                .note_timed_out(task_id, id, job.manifest, now_ms())?;
        }
        self.flush().await?;
        Ok(job)
    }

    /// The jobs failed as `task-timeout` in the last `max_age`, by the task (or batch) they
    /// timed out on, each with its run; older notes are removed.
    pub async fn timed_out_jobs(
        &self,
        max_age: std::time::Duration,
    ) -> Result<Vec<trees::TimedOut>, StoreError> {
        let since = now_ms().saturating_sub(max_age.as_millis() as u64);
        let trees = self.trees.clone();
        self.on_pool(move || trees.timed_out_since(since)).await?
    }

    /// Jobs still submitting whose submit Claid accepted (a 2xx) with an answer that cannot be
    /// read: noted on each (`accepted_unread`), in one durable write, before any wait for the
    /// task's webhook. They stay submitting (their run is not settled while they wait); a
    /// restart holds them in doubt instead of sending them again. Jobs not submitting any more
    /// are left as they are.
    pub async fn mark_accepted_unread(&self, ids: &[JobId]) -> Result<(), StoreError> {
        for id in ids {
            let res = self
                .step(*id, "submitting", |job| match job.state {
                    JobState::Submitting { .. } => Some(JobV1 {
                        accepted_unread: true,
                        ..job.clone()
                    }),
                    _ => None,
                })
                .await;
            match res {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        self.flush().await
    }

    /// Submitting → InDoubt (policy `hold`), `in_doubt += 1`. Durable.
    pub async fn mark_in_doubt(&self, id: JobId) -> Result<JobV1, StoreError> {
        let now = now_ms();
        let job = self
            .step(id, "submitting", move |job| match job.state {
                JobState::Submitting { .. } => Some(JobV1 {
                    state: JobState::InDoubt {
                        since_ms: now,
                        claid_said: None,
                    },
                    in_doubt: job.in_doubt.saturating_add(1),
                    ..job.clone()
                }),
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// A submitted job whose result cannot be told apart from another's (a batch result that
    /// matches no job, or more than one): held in doubt for a human, `in_doubt += 1`, never
    /// resubmitted automatically (Claid may have billed it). `claid_said`: Claid's errors of
    /// the batch that named no image, kept for the report. Durable.
    pub async fn hold_unmatched(
        &self,
        id: JobId,
        claid_said: Option<String>,
    ) -> Result<JobV1, StoreError> {
        let now = now_ms();
        // Kept as `mark_failed` keeps a message.
        let claid_said = claid_said
            .map(|text| crate::text::capped(&crate::text::redact_urls_in(&text)).into_owned());
        let job = self
            .step(id, "submitted", move |job| match job.state {
                JobState::Submitting { .. } | JobState::Submitted { .. } => Some(JobV1 {
                    state: JobState::InDoubt {
                        since_ms: now,
                        claid_said: claid_said.clone(),
                    },
                    in_doubt: job.in_doubt.saturating_add(1),
                    ..job.clone()
                }),
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// A job whose submit answer was lost (Submitting, or held in doubt) adopts the task a
    /// webhook announced for its very request: → Submitted, without a second submit. Durable.
    pub async fn adopt_task(
        &self,
        id: JobId,
        task: TaskRef,
        result_url: &str,
    ) -> Result<JobV1, StoreError> {
        self.take_task(task, id)?;
        let task_id = task.id();
        let now = now_ms();
        let result_url = result_url.to_owned();
        let job = self
            .step(id, "submitting|in-doubt", move |job| match job.state {
                JobState::Submitting { .. } | JobState::InDoubt { .. } => Some(JobV1 {
                    state: JobState::Submitted {
                        task_id,
                        result_url: result_url.clone(),
                        at_ms: now,
                    },
                    in_doubt: job.in_doubt_resolved(),
                    ..job.clone()
                }),
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Any state → Queued (resubmit after a crash, replay, expired result).
    /// `in_doubt += 1` when `count_in_doubt`. A done job (or one with a kept result) leaves
    /// `done_by_key`. Durable.
    pub async fn requeue(&self, id: JobId, count_in_doubt: bool) -> Result<JobV1, StoreError> {
        let trees = self.trees.clone();
        let job = self
            .step(id, "any", move |job| {
                let mut next = with_state(job, JobState::Queued);
                // Made again (not a lost submit's, which a webhook echoing its request may
                // still announce): under its connector's name at Claid now.
                if !count_in_doubt && !job.waits_for_adoption() {
                    trees.follow_renamed(&mut next);
                }
                next.batch = None;
                next.batch_images = None;
                next.accepted_unread = false;
                // A replayed job stages its input again: the object may have been cleaned up.
                if job.state.is_terminal() {
                    next.staged = None;
                }
                if count_in_doubt {
                    next.in_doubt = next.in_doubt.saturating_add(1);
                    next.lost_answers = next.lost_answers.saturating_add(1);
                }
                Some(next)
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Queued → Downloading the storage object `url` (`storage://CONNECTOR/key`) without a
    /// task: a job in doubt whose lost submit's output is at its key takes that object as its
    /// result (checked as any output object). Durable.
    pub async fn take_written_object(&self, id: JobId, url: &str) -> Result<JobV1, StoreError> {
        let url = url.to_owned();
        let job = self
            .step(id, "queued", move |job| match job.state {
                JobState::Queued => {
                    let mut next = with_state(
                        job,
                        JobState::Downloading {
                            task_id: None,
                            url: url.clone(),
                            width: 0,
                            height: 0,
                            copy_of: None,
                            kept_since_ms: None,
                            submitted_at_ms: None,
                        },
                    );
                    // Nothing was sent twice: the doubt the lost submit counted is resolved,
                    // as when a webhook adopts its task.
                    next.in_doubt = job.in_doubt_resolved();
                    Some(next)
                }
                _ => None,
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Done, Failed or held in doubt → Queued, for a replay: a job that changed meanwhile (a
    /// late webhook adopted its task, another replay took it) is left as it is (`Conflict`).
    /// A job whose billed result could not be written, while Claid keeps that result
    /// ([`JobState::refetchable`]), goes to Downloading it again instead: no new bill.
    /// Durable.
    pub async fn requeue_replayable(&self, id: JobId) -> Result<JobV1, StoreError> {
        let trees = self.trees.clone();
        let job = self
            .step(id, "done|failed|in-doubt", move |job| {
                if !job.state.is_replayable() {
                    return None;
                }
                // A billed result whose write failed is fetched again while Claid keeps it:
                // its task (or batch) stays the job's, for a new URL should this one be
                // refused.
                if let Some(fetch) = job.state.refetch(now_ms()) {
                    // (`staged` is kept: a staged input's task is polled for a new URL should
                    // this one be refused, and a resubmit stages again if the object went.
                    // So are the objects noted before the submit (`replaces`): a storage
                    // output whose check failed is looked at again, and the earlier edit
                    // still at its key must not pass for Claid's.)
                    return Some(with_state(job, fetch));
                }
                let mut next = with_state(job, JobState::Queued);
                next.batch = None;
                next.batch_images = None;
                next.accepted_unread = false;
                // A person sends it again: the lost answers before count no more.
                next.lost_answers = 0;
                if job.state.is_terminal() {
                    next.staged = None;
                    // Looked at again before the replay's submit: the object there now may be
                    // this job's own earlier edit.
                    next.replaces = None;
                    // Sent under its connector's name at Claid now (a failed job of before a
                    // rename).
                    trees.follow_renamed(&mut next);
                }
                Some(next)
            })
            .await?;
        self.flush().await?;
        Ok(job)
    }

    /// Every job of a batch: Queued → Submitting, `attempts += 1`, in one durable step
    /// (durability point 1 for all of them, one flush). Jobs not queued any more are left out;
    /// returns the ids it marked.
    pub async fn mark_batch_submitting(
        &self,
        ids: &[JobId],
        submitted_to: Option<&str>,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = now_ms();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let submitted_to = submitted_to.map(str::to_owned);
            let res = self
                .step(*id, "queued", move |job| match job.state {
                    JobState::Queued => Some(JobV1 {
                        state: JobState::Submitting { since_ms: now },
                        attempts: job.attempts.saturating_add(1),
                        submitted_to: submitted_to.clone(),
                        ..job.clone()
                    }),
                    _ => None,
                })
                .await;
            match res {
                Ok(_) => out.push(*id),
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        self.flush().await?;
        Ok(out)
    }

    /// Jobs waiting to learn which task their lost submit became (held in doubt, or queued
    /// again after it and not sent again yet) → Submitted with the announced task (a batch's
    /// id when `batch`), durably. A job that is neither any more (sent again meanwhile, or
    /// adopted otherwise) is left as it is; returns the ids adopted.
    pub async fn adopt_waiting(
        &self,
        ids: &[JobId],
        task_id: u64,
        result_url: &str,
        batch: bool,
    ) -> Result<Vec<JobId>, StoreError> {
        let task = if batch {
            TaskRef::Batch(task_id)
        } else {
            TaskRef::Async(task_id)
        };
        // Jobs that failed as task-timeout on this very task took it already; others take it
        // now, unless a job not among them did.
        if let Some(first) = ids.first()
            && let Some(owner) = self.trees.take_task(task, *first)?
            && !ids.contains(&owner)
        {
            return Err(StoreError::TaskTaken {
                task: task_id,
                owner,
            });
        }
        let now = now_ms();
        // A lost batch's jobs are adopted together: they are the images it was sent with.
        let images = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let mut adopted = Vec::with_capacity(ids.len());
        for id in ids {
            let result_url = result_url.to_owned();
            let step = self
                .step(*id, "in-doubt|queued in doubt|timed out", move |job| {
                    if !job.waits_for_adoption() && !job.timed_out_on(task_id, batch) {
                        return None;
                    }
                    let mut next = job.clone();
                    next.in_doubt = job.in_doubt_resolved();
                    next.state = JobState::Submitted {
                        task_id,
                        result_url: result_url.clone(),
                        at_ms: now,
                    };
                    next.batch = batch.then_some(task_id);
                    next.batch_images = batch.then_some(images);
                    Some(next)
                })
                .await;
            match step {
                Ok(_) => {
                    self.trees.forget_timed_out(task_id, *id)?;
                    adopted.push(*id);
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        self.flush().await?;
        Ok(adopted)
    }

    /// Every job of a batch: Submitting → Submitted with the batch's id and result URL, in
    /// one durable step (durability point 2: the batch id is on disk before anything else).
    pub async fn mark_batch_submitted(
        &self,
        ids: &[JobId],
        batch_id: u64,
        result_url: &str,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(first) = ids.first() {
            self.take_task(TaskRef::Batch(batch_id), *first)?;
        }
        let now = now_ms();
        let images = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        for id in ids {
            let result_url = result_url.to_owned();
            let request_id = request_id.map(str::to_owned);
            self.step(*id, "submitting", move |job| match job.state {
                JobState::Submitting { .. } => {
                    let mut next = job.clone();
                    next.state = JobState::Submitted {
                        task_id: batch_id,
                        result_url: result_url.clone(),
                        at_ms: now,
                    };
                    next.batch = Some(batch_id);
                    next.batch_images = Some(images);
                    push_request_id(&mut next, request_id.as_deref());
                    Some(next)
                }
                _ => None,
            })
            .await?;
        }
        self.flush().await
    }

    /// `polls += 1` and remembers the request id; not flushed (statistics only).
    pub async fn record_poll(&self, id: JobId, request_id: Option<&str>) -> Result<(), StoreError> {
        let request_id = request_id.map(str::to_owned);
        self.step(id, "any", move |job| {
            let mut next = job.clone();
            next.polls = next.polls.saturating_add(1);
            push_request_id(&mut next, request_id.as_deref());
            Some(next)
        })
        .await?;
        Ok(())
    }

    /// Remembers a response's `x-request-id` on the job; not flushed.
    pub async fn record_request_id(&self, id: JobId, request_id: &str) -> Result<(), StoreError> {
        let request_id = request_id.to_owned();
        self.step(id, "any", move |job| {
            let mut next = job.clone();
            push_request_id(&mut next, Some(&request_id));
            Some(next)
        })
        .await?;
        Ok(())
    }

    /// Every queued job of a run → Failed `superseded` (a newer version of its file owns the
    /// work now). Durable. Returns the jobs it changed.
    pub async fn cancel_queued(&self, id: ManifestId) -> Result<Vec<JobId>, StoreError> {
        self.supersede_jobs(
            id,
            "queued",
            |state| matches!(state, JobState::Queued),
            "the manifest was saved again before this image was submitted; it is left to the new version (made there if that version still lists it)",
        )
        .await
    }

    /// One queued job of a draining run → Failed `superseded` (queued again after the run's
    /// queued jobs were cancelled: a retry after an outage, a resubmit after a crash's wait).
    /// True when it changed; flushed.
    pub async fn cancel_queued_job(&self, id: JobId) -> Result<bool, StoreError> {
        let changed = self
            .supersede_job(
                id,
                "queued",
                |state| matches!(state, JobState::Queued),
                "the manifest was saved again before this image was sent again; it is left to the new version (made there if that version still lists it)",
            )
            .await?;
        if changed {
            self.flush().await?;
        }
        Ok(changed)
    }

    /// Ends the jobs of run `id` held in doubt as superseded (a newer version of the file
    /// replaced the run, which is never replayed): they stop waiting for a human, keep their
    /// `in_doubt` count (Claid may have made, and billed, them), and say so. Flushed.
    pub async fn supersede_held(&self, id: ManifestId) -> Result<Vec<JobId>, StoreError> {
        self.supersede_jobs(
            id,
            "in-doubt",
            |state| matches!(state, JobState::InDoubt { .. }),
            "held in doubt (its submit's answer was lost: Claid may have made, and billed, it) when the manifest was saved again; left to the new version, which makes it again if it still lists it",
        )
        .await
    }

    /// The jobs of run `id` in a state `select` takes, ended as `superseded` with `message`.
    async fn supersede_jobs(
        &self,
        id: ManifestId,
        expected: &'static str,
        select: fn(&JobState) -> bool,
        message: &'static str,
    ) -> Result<Vec<JobId>, StoreError> {
        let trees = self.trees.clone();
        let selected = self
            .on_pool(move || {
                let mut selected = Vec::new();
                trees.for_each_job_of_manifest(id, |job_id, job| {
                    if select(&job.state) {
                        selected.push(job_id);
                    }
                    Ok::<_, StoreError>(())
                })?;
                Ok::<_, StoreError>(selected)
            })
            .await??;
        let mut cancelled = Vec::with_capacity(selected.len());
        for job_id in selected {
            if self
                .supersede_job(job_id, expected, select, message)
                .await?
            {
                cancelled.push(job_id);
            }
        }
        self.flush().await?;
        Ok(cancelled)
    }

    /// One job, if `select` takes its state, → Failed `superseded` with `message` (not
    /// flushed). False when it changed meanwhile (taken for submission, or adopted: it
    /// finishes on its own).
    async fn supersede_job(
        &self,
        id: JobId,
        expected: &'static str,
        select: fn(&JobState) -> bool,
        message: &'static str,
    ) -> Result<bool, StoreError> {
        let res = self
            .step(id, expected, move |job| {
                select(&job.state).then(|| {
                    with_state(
                        job,
                        JobState::Failed {
                            code: FailureCode::Superseded,
                            message: message.to_owned(),
                            attempts: job.attempts,
                            task_id: None,
                            unwritten: None,
                        },
                    )
                })
            })
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// One transition, on the store's thread, with the counts kept in step.
    async fn step(
        &self,
        id: JobId,
        expected: &'static str,
        next: impl Fn(&JobV1) -> Option<JobV1> + Send + 'static,
    ) -> Result<JobV1, StoreError> {
        let trees = self.trees.clone();
        // The counts move with the write, on the lane: a caller that goes away (a dropped
        // request) after the write was queued cannot leave them behind the store.
        let counters = Arc::clone(&self.counters);
        // A submit answered (a task, a result): the lost answers before count no more.
        let next = move |job: &JobV1| {
            next(job).map(|mut new| {
                if matches!(
                    new.state,
                    JobState::Submitted { .. }
                        | JobState::Downloading { .. }
                        | JobState::Done { .. }
                ) {
                    new.lost_answers = 0;
                }
                new
            })
        };
        self.write_on(lane::Kind::Step, move || {
            let (old, new) = trees.transition(id, expected, next)?;
            counters.apply(&old, &new);
            Ok(new)
        })
        .await
    }

    /// Runs a write on the store's thread and keeps [`Store::write_failing`] up to date with
    /// its outcome.
    async fn write_on<T: Send + 'static>(
        &self,
        kind: lane::Kind,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let written = self.lane.run(kind, work).await.and_then(|written| written);
        self.note_write(&written);
        written
    }

    /// Runs a bulk write (a registration, a release) on the store's thread, where the job
    /// steps write too; it lets the waiting steps in at its slice points.
    async fn on_lane<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        self.lane.run(lane::Kind::Long, work).await
    }

    /// Runs a read-only scan on the blocking pool: a report's file I/O or a listing of every
    /// run never holds up a step (reads page jobs into a cache of a few MB, not the write
    /// churn the lane keeps in one arena).
    async fn on_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| StoreError::Worker(err.to_string()))
    }
}

fn with_state(job: &JobV1, state: JobState) -> JobV1 {
    JobV1 {
        state,
        ..job.clone()
    }
}

fn push_request_id(job: &mut JobV1, request_id: Option<&str>) {
    if let Some(request_id) = request_id {
        job.request_ids.push(request_id.to_owned());
        let excess = job.request_ids.len().saturating_sub(MAX_REQUEST_IDS);
        job.request_ids.drain(..excess);
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A record's time (ms since the Unix epoch, as [`now_ms`] gives) as people read it: UTC to
/// the second, RFC 3339 (`2026-12-05T11:02:33Z`).
pub fn utc_seconds(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing write (a full disk under the state folder) is remembered from its first
    /// failure until a write succeeds; a refused transition is no write problem.
    #[test]
    fn write_failures_are_remembered_until_a_write_succeeds() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        assert!(store.write_failing().is_none());
        store.note_write::<()>(&Err(StoreError::Flush("No space left on device".into())));
        let (_, why) = store.write_failing().expect("failing");
        assert!(why.contains("No space left"), "{why}");
        store.note_write::<()>(&Err(StoreError::Flush("still full".into())));
        assert!(
            store
                .write_failing()
                .expect("failing")
                .1
                .contains("still full")
        );
        store.note_write::<()>(&Err(StoreError::JobNotFound(7)));
        assert!(store.write_failing().is_some(), "not a write problem: kept");
        store.note_write(&Ok(()));
        assert!(store.write_failing().is_none());
    }

    /// A database error of the OS (a full state disk) is told by its errno, once, in the words
    /// of the daemon's other OS errors; it was "state database error" alone in the log, and
    /// sled's text after it on `/healthz`.
    #[test]
    fn a_database_error_names_its_os_cause_once() {
        let err = StoreError::from(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        let why = crate::text::error_chain(&err);
        assert_eq!(why, "state database error: ENOSPC: no space left on device");
        assert_eq!(err.code(), "store-io");
        let other = StoreError::from(sled::Error::Unsupported("a feature".into()));
        assert!(other.to_string().contains("a feature"), "{other}");
    }
}
