//! The job store: everything sled. Versioned manifest and job records, lifecycle transitions
//! with their durability points (SPEC §5.1), resume after a crash and incremental job keys.
//! The only module that names sled.
//!
//! Layout: the database lives at `<state>/v1/` (the schema version is part of the path).
//! Trees, named in the `TREE_*` constants:
//! - `manifests`: manifest id → [`records::ManifestRecord`] (JSON).
//! - `manifest_by_rel`: inbox-relative path → latest manifest id.
//! - `jobs`: job id → [`records::JobRecord`] (JSON).
//! - `jobs_by_manifest`: manifest id ‖ job id → empty.
//! - `done_by_key`: job key → job id of the job that made the output.
//! - `unfinished`: job id → empty, for every job not Done or Failed, so a restart does not
//!   read the whole history.
//! - `meta`: schema information.
//!
//! Ids come from `Db::generate_id` and are stored big-endian, so a scan is FIFO.

pub mod records;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Batch, Db, Transactional, Tree};

pub use crate::store::records::{
    DoneInfo, JobId, JobRecord, JobState, JobSummary, JobV1, ManifestId, ManifestRecord,
    ManifestState, ManifestV1, StateKind,
};

/// Directory under the state folder holding this schema version's database.
pub const SCHEMA_DIR: &str = "v1";
pub const TREE_MANIFESTS: &str = "manifests";
pub const TREE_MANIFEST_BY_REL: &str = "manifest_by_rel";
pub const TREE_JOBS: &str = "jobs";
pub const TREE_JOBS_BY_MANIFEST: &str = "jobs_by_manifest";
pub const TREE_DONE_BY_KEY: &str = "done_by_key";
pub const TREE_META: &str = "meta";
pub const TREE_UNFINISHED: &str = "unfinished";
/// How many request ids a job keeps (the most recent ones).
pub const MAX_REQUEST_IDS: usize = 8;
/// sled page-cache budget, in bytes of stored data (sled's own memory is a few times more).
/// The default (1 GiB) let a 100,000-job table sit in memory whole; the daemon reads a job
/// only when it steps it, so a small cache costs little.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Jobs per write batch in `register_manifest`.
const REGISTER_BATCH: usize = 256;

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
    #[error("state database error")]
    Db(#[from] sled::Error),
    #[error("job {job} is {found}, expected {expected}")]
    Conflict {
        job: JobId,
        expected: &'static str,
        found: &'static str,
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
            StoreError::Db(_) | StoreError::Flush(_) => "store-io",
            StoreError::Conflict { .. } => "store-conflict",
            StoreError::JobNotFound(_) | StoreError::ManifestNotFound(_) => "store-not-found",
            StoreError::Corrupt { .. } => "store-corrupt",
        }
    }
}

/// Number of jobs per state kind (see [`JobState::kind`]); `in_doubt` counts jobs held in
/// doubt now, not the historical counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub queued: u64,
    pub submitting: u64,
    pub submitted: u64,
    pub downloading: u64,
    pub in_doubt: u64,
    pub done: u64,
    pub failed: u64,
}

impl StateCounts {
    fn add(&mut self, state: &JobState) {
        let slot = match state {
            JobState::Queued => &mut self.queued,
            JobState::Submitting { .. } => &mut self.submitting,
            JobState::Submitted { .. } => &mut self.submitted,
            JobState::Downloading { .. } => &mut self.downloading,
            JobState::InDoubt { .. } => &mut self.in_doubt,
            JobState::Done { .. } => &mut self.done,
            JobState::Failed { .. } => &mut self.failed,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.queued
            + self.submitting
            + self.submitted
            + self.downloading
            + self.in_doubt
            + self.done
            + self.failed
    }

    /// Done plus failed.
    pub fn terminal(&self) -> u64 {
        self.done + self.failed
    }
}

/// A cheap-clone handle on the job store.
#[derive(Clone, Debug)]
pub struct Store {
    /// The database; kept for id generation and flushes (a flush covers every tree).
    db: Db,
    manifests: Tree,
    manifest_by_rel: Tree,
    jobs: Tree,
    jobs_by_manifest: Tree,
    done_by_key: Tree,
    unfinished: Tree,
    /// Where the database lives, for error messages.
    path: PathBuf,
    /// Group commit for the durability points: concurrent callers share one flush.
    gate: Arc<FlushGate>,
    /// Set on the handle [`Store::durably`] passes to its writes: their durability points
    /// do not flush, `durably` does once they are all applied.
    deferred: bool,
}

/// Group commit: a write is durable once a flush that *started after it* has completed, so
/// jobs reaching a durability point together wait for one flush instead of one each.
#[derive(Debug, Default)]
struct FlushGate {
    state: Mutex<GateState>,
    /// Wakes threads waiting in [`Store::durable`].
    changed: Condvar,
    /// Wakes tasks waiting in [`Store::durable_async`].
    flushed: tokio::sync::Notify,
}

impl FlushGate {
    /// Records the end of flush `this` and wakes every waiter, sync and async.
    fn finish(&self, this: u64, err: Option<&sled::Error>) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .end_flush(this, err);
        self.changed.notify_all();
        self.flushed.notify_waiters();
    }
}

impl GateState {
    /// Marks a flush as running; returns its number.
    fn start_flush(&mut self) -> u64 {
        self.running = true;
        self.started += 1;
        self.started
    }

    fn end_flush(&mut self, this: u64, err: Option<&sled::Error>) {
        self.running = false;
        match err {
            None => self.completed = this,
            Some(err) => self.failed = Some((this, err.to_string())),
        }
    }
}

#[derive(Debug, Default)]
struct GateState {
    /// Flushes started so far; the running one, if any, is number `started`.
    started: u64,
    /// The last flush that completed successfully.
    completed: u64,
    running: bool,
    /// The last flush that failed, and why: it fails the waiters whose writes it had to cover.
    failed: Option<(u64, String)>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Store {
    /// Opens (or creates) the store at `<state_dir>/v1/` and sweeps jobs orphaned by a crash
    /// during registration. `StoreError::Locked` when another process holds the database.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(SCHEMA_DIR);
        let open_err = |source: sled::Error| match &source {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::Locked { path: path.clone() }
            }
            _ => StoreError::Open {
                path: path.clone(),
                source,
            },
        };
        if let Err(err) = std::fs::create_dir_all(&path) {
            return Err(open_err(sled::Error::Io(err)));
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            // No background flusher thread: every durability point flushes explicitly, and a
            // flusher thread outliving a dropped `Db` keeps the file lock for up to its period.
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let store = Store {
            manifests: db.open_tree(TREE_MANIFESTS)?,
            manifest_by_rel: db.open_tree(TREE_MANIFEST_BY_REL)?,
            jobs: db.open_tree(TREE_JOBS)?,
            jobs_by_manifest: db.open_tree(TREE_JOBS_BY_MANIFEST)?,
            done_by_key: db.open_tree(TREE_DONE_BY_KEY)?,
            unfinished: db.open_tree(TREE_UNFINISHED)?,
            path,
            db,
            gate: Arc::new(FlushGate::default()),
            deferred: false,
        };
        let meta = store.db.open_tree(TREE_META)?;
        meta.insert("schema", "1")?;
        store.sweep_orphans()?;
        store.db.flush()?;
        Ok(store)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes jobs whose manifest record does not exist (a registration cut short by a
    /// crash). Returns how many jobs were removed. Only safe before any registration runs,
    /// hence private and called from `open`.
    fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let mut known: BTreeMap<ManifestId, bool> = BTreeMap::new();
        let mut batch_index = Batch::default();
        let mut batch_jobs = Batch::default();
        let mut batch_unfinished = Batch::default();
        let mut n_removed = 0;
        for entry in self.jobs_by_manifest.iter().keys() {
            let key = entry?;
            let Some((manifest_id, job_id)) = split_pair(&key) else {
                batch_index.remove(key);
                continue;
            };
            let exists = match known.get(&manifest_id) {
                Some(exists) => *exists,
                None => {
                    let exists = self.manifests.contains_key(id_key(manifest_id))?;
                    known.insert(manifest_id, exists);
                    exists
                }
            };
            if !exists {
                batch_index.remove(key);
                batch_jobs.remove(&id_key(job_id));
                batch_unfinished.remove(&id_key(job_id));
                n_removed += 1;
            }
        }
        if n_removed > 0 {
            self.jobs.apply_batch(batch_jobs)?;
            self.unfinished.apply_batch(batch_unfinished)?;
            self.jobs_by_manifest.apply_batch(batch_index)?;
            tracing::warn!(
                n_removed,
                "Removed jobs of an unfinished manifest registration"
            );
        }
        Ok(n_removed)
    }

    /// Registers a manifest and its jobs, durably. The jobs (and their index) are written and
    /// flushed first; the manifest record is the commit point, written and flushed last.
    /// `job.manifest` is overwritten with the new manifest id and `m.n_jobs` with the count.
    pub fn register_manifest(
        &self,
        m: ManifestV1,
        jobs: Vec<JobV1>,
    ) -> Result<(ManifestId, Vec<JobId>), StoreError> {
        self.register_manifest_from(m, jobs.into_iter().map(Ok))
    }

    /// [`Store::register_manifest`] from a stream of jobs, written in small batches as they
    /// come, so a 100,000-job manifest never exists as records in memory all at once. The
    /// first error stops the registration before its commit point (the written jobs are
    /// orphans, swept at the next open).
    pub fn register_manifest_from(
        &self,
        mut m: ManifestV1,
        jobs: impl IntoIterator<Item = Result<JobV1, StoreError>>,
    ) -> Result<(ManifestId, Vec<JobId>), StoreError> {
        let manifest_id = self.db.generate_id()?;
        let mut job_ids = Vec::new();
        // Small batches keep memory flat: sled keeps every node version a batch replaces
        // until the batch ends (4,096-job batches peaked at 1.1 GB for 100,000 jobs).
        // Atomicity across batches is not needed: the manifest record below is the commit point.
        let mut batch_index = Batch::default();
        let mut batch_jobs = Batch::default();
        let mut batch_unfinished = Batch::default();
        for (n, job) in jobs.into_iter().enumerate() {
            let mut job = job?;
            job.manifest = manifest_id;
            let job_id = self.db.generate_id()?;
            batch_index.insert(&pair_key(manifest_id, job_id), &[]);
            if !job.state.is_terminal() {
                batch_unfinished.insert(&id_key(job_id), &[]);
            }
            batch_jobs.insert(&id_key(job_id), encode_job(job));
            job_ids.push(job_id);
            if (n + 1) % REGISTER_BATCH == 0 {
                self.jobs_by_manifest
                    .apply_batch(std::mem::take(&mut batch_index))?;
                self.unfinished
                    .apply_batch(std::mem::take(&mut batch_unfinished))?;
                self.jobs.apply_batch(std::mem::take(&mut batch_jobs))?;
            }
        }
        m.n_jobs = u32::try_from(job_ids.len()).unwrap_or(u32::MAX);
        self.jobs_by_manifest.apply_batch(batch_index)?;
        self.unfinished.apply_batch(batch_unfinished)?;
        self.jobs.apply_batch(batch_jobs)?;
        self.durable()?;
        let rel = m.rel.clone();
        let record = encode_manifest(m);
        (&self.manifests, &self.manifest_by_rel)
            .transaction(|(manifests, by_rel)| {
                manifests.insert(&id_key(manifest_id), record.as_slice())?;
                by_rel.insert(rel.as_bytes(), &id_key(manifest_id))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        self.durable()?;
        Ok((manifest_id, job_ids))
    }

    /// The most recently registered manifest for an inbox-relative path.
    pub fn latest_manifest_by_rel(
        &self,
        rel: &str,
    ) -> Result<Option<(ManifestId, ManifestV1)>, StoreError> {
        let Some(id) = self.manifest_by_rel.get(rel.as_bytes())? else {
            return Ok(None);
        };
        let Some(id) = read_id(&id) else {
            return Ok(None);
        };
        Ok(self.manifest(id)?.map(|m| (id, m)))
    }

    pub fn manifest(&self, id: ManifestId) -> Result<Option<ManifestV1>, StoreError> {
        match self.manifests.get(id_key(id))? {
            Some(bytes) => Ok(Some(decode_manifest(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every manifest, oldest first.
    pub fn manifests(&self) -> Result<Vec<(ManifestId, ManifestV1)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.manifests.iter() {
            let (key, bytes) = entry?;
            if let Some(id) = read_id(&key) {
                out.push((id, decode_manifest(&bytes)?));
            }
        }
        Ok(out)
    }

    /// Changes a manifest's state; flushed.
    pub fn set_manifest_state(
        &self,
        id: ManifestId,
        state: ManifestState,
    ) -> Result<(), StoreError> {
        let key = id_key(id);
        self.manifests
            .transaction(|tree| {
                let Some(bytes) = tree.get(key)? else {
                    return abort(StoreError::ManifestNotFound(id));
                };
                let mut m = decode_manifest(&bytes).or_else(abort)?;
                m.state = state.clone();
                tree.insert(&key, encode_manifest(m))?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.durable()?;
        Ok(())
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobV1>, StoreError> {
        match self.jobs.get(id_key(id))? {
            Some(bytes) => Ok(Some(decode_job(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The jobs of a manifest in registration (= manifest) order.
    pub fn jobs_of_manifest(&self, id: ManifestId) -> Result<Vec<(JobId, JobV1)>, StoreError> {
        self.each_job_of_manifest(id, |job_id| self.job(job_id))
    }

    /// Reads every job of a manifest with `read`, in manifest order, skipping missing ones.
    fn each_job_of_manifest<T>(
        &self,
        id: ManifestId,
        read: impl Fn(JobId) -> Result<Option<T>, StoreError>,
    ) -> Result<Vec<(JobId, T)>, StoreError> {
        let mut out = Vec::new();
        self.visit_manifest(id, read, |job_id, value| {
            out.push((job_id, value));
            Ok::<_, StoreError>(())
        })?;
        Ok(out)
    }

    /// Hands every job of a manifest to `visit`, in manifest order, one at a time: memory
    /// stays flat however many jobs the manifest has (reports of 100,000-image manifests).
    /// `visit` may fail with its own error type (a report writer's `io::Error`).
    pub fn for_each_job_of_manifest<E: From<StoreError>>(
        &self,
        id: ManifestId,
        visit: impl FnMut(JobId, JobV1) -> Result<(), E>,
    ) -> Result<(), E> {
        self.visit_manifest(id, |job_id| self.job(job_id), visit)
    }

    fn visit_manifest<T, E: From<StoreError>>(
        &self,
        id: ManifestId,
        read: impl Fn(JobId) -> Result<Option<T>, StoreError>,
        mut visit: impl FnMut(JobId, T) -> Result<(), E>,
    ) -> Result<(), E> {
        for entry in self.jobs_by_manifest.scan_prefix(id_key(id)).keys() {
            let key = entry.map_err(StoreError::from)?;
            let Some((_, job_id)) = split_pair(&key) else {
                continue;
            };
            if let Some(value) = read(job_id)? {
                visit(job_id, value)?;
            }
        }
        Ok(())
    }

    /// Counts of a manifest's jobs by state.
    pub fn counts_of_manifest(&self, id: ManifestId) -> Result<StateCounts, StoreError> {
        let mut counts = StateCounts::default();
        self.for_each_job_of_manifest(id, |_, job| {
            counts.add(&job.state);
            Ok::<_, StoreError>(())
        })?;
        Ok(counts)
    }

    /// Counts of every manifest's jobs by state.
    pub fn counts(&self) -> Result<BTreeMap<ManifestId, StateCounts>, StoreError> {
        let mut out: BTreeMap<ManifestId, StateCounts> = BTreeMap::new();
        for entry in self.jobs.iter().values() {
            let job = decode_job(&entry?)?;
            out.entry(job.manifest).or_default().add(&job.state);
        }
        Ok(out)
    }

    /// Sum of the `in_doubt` counters of every job: how often a submit may have been
    /// duplicated by a crash. (Jobs *currently* held in doubt are `counts().in_doubt`.)
    pub fn in_doubt_total(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in self.jobs.iter().values() {
            total += u64::from(decode_job(&entry?)?.in_doubt);
        }
        Ok(total)
    }

    /// Queued → Submitting, `attempts += 1`. Flushed: durability point 1 (SPEC §5.1).
    pub fn mark_submitting(&self, id: JobId) -> Result<JobV1, StoreError> {
        let now = now_ms();
        let job = self.transition(id, "queued", |job| match job.state {
            JobState::Queued => Some(JobV1 {
                state: JobState::Submitting { since_ms: now },
                attempts: job.attempts.saturating_add(1),
                ..job.clone()
            }),
            _ => None,
        })?;
        self.durable()?;
        Ok(job)
    }

    /// Submitting → Submitted. Flushed: durability point 2.
    pub fn mark_submitted(
        &self,
        id: JobId,
        task_id: u64,
        result_url: &str,
        request_id: Option<&str>,
    ) -> Result<JobV1, StoreError> {
        let now = now_ms();
        let job = self.transition(id, "submitting", |job| match job.state {
            JobState::Submitting { .. } => {
                let mut next = job.clone();
                next.state = JobState::Submitted {
                    task_id,
                    result_url: result_url.to_owned(),
                    at_ms: now,
                };
                push_request_id(&mut next, request_id);
                Some(next)
            }
            _ => None,
        })?;
        self.durable()?;
        Ok(job)
    }

    /// Submitted, Submitting (a synchronous upload) or Downloading (a retry) → Downloading.
    /// Not flushed: losing it only means polling once more.
    pub fn mark_downloading(
        &self,
        id: JobId,
        task_id: Option<u64>,
        url: &str,
        width: u32,
        height: u32,
    ) -> Result<JobV1, StoreError> {
        self.transition(id, "submitting|submitted|downloading", |job| {
            match job.state {
                JobState::Submitting { .. }
                | JobState::Submitted { .. }
                | JobState::Downloading { .. } => Some(JobV1 {
                    state: JobState::Downloading {
                        task_id,
                        url: url.to_owned(),
                        width,
                        height,
                    },
                    ..job.clone()
                }),
                _ => None,
            }
        })
    }

    /// Downloading → Done, or Queued → Done when `done.unchanged` (no API call was made).
    /// Updates `done_by_key`. Flushed: durability point 3.
    pub fn mark_done(&self, id: JobId, done: DoneInfo) -> Result<JobV1, StoreError> {
        let unchanged = done.unchanged;
        let state = JobState::from(done);
        let expected = if unchanged {
            "downloading|queued"
        } else {
            "downloading"
        };
        let job = self.transition(id, expected, |job| match job.state {
            JobState::Downloading { .. } => Some(with_state(job, state.clone())),
            JobState::Queued if unchanged => Some(with_state(job, state.clone())),
            _ => None,
        })?;
        self.durable()?;
        Ok(job)
    }

    /// Any unfinished state → Failed. Flushed.
    pub fn mark_failed(&self, id: JobId, code: &str, message: &str) -> Result<JobV1, StoreError> {
        let job = self.transition(id, "unfinished", |job| {
            if job.state.is_terminal() {
                return None;
            }
            Some(with_state(
                job,
                JobState::Failed {
                    code: code.to_owned(),
                    message: message.to_owned(),
                    attempts: job.attempts,
                },
            ))
        })?;
        self.durable()?;
        Ok(job)
    }

    /// Submitting → InDoubt (policy `hold`), `in_doubt += 1`. Flushed.
    pub fn mark_in_doubt(&self, id: JobId) -> Result<JobV1, StoreError> {
        let now = now_ms();
        let job = self.transition(id, "submitting", |job| match job.state {
            JobState::Submitting { .. } => Some(JobV1 {
                state: JobState::InDoubt { since_ms: now },
                in_doubt: job.in_doubt.saturating_add(1),
                ..job.clone()
            }),
            _ => None,
        })?;
        self.durable()?;
        Ok(job)
    }

    /// Any state → Queued (resubmit after a crash, replay, expired result).
    /// `in_doubt += 1` when `count_in_doubt`. A done job leaves `done_by_key`. Flushed.
    pub fn requeue(&self, id: JobId, count_in_doubt: bool) -> Result<JobV1, StoreError> {
        let job = self.transition(id, "any", |job| {
            let mut next = with_state(job, JobState::Queued);
            if count_in_doubt {
                next.in_doubt = next.in_doubt.saturating_add(1);
            }
            Some(next)
        })?;
        self.durable()?;
        Ok(job)
    }

    /// `polls += 1` and remembers the request id; not flushed (statistics only).
    pub fn record_poll(&self, id: JobId, request_id: Option<&str>) -> Result<(), StoreError> {
        self.transition(id, "any", |job| {
            let mut next = job.clone();
            next.polls = next.polls.saturating_add(1);
            push_request_id(&mut next, request_id);
            Some(next)
        })?;
        Ok(())
    }

    /// Remembers a response's `x-request-id` on the job; not flushed.
    pub fn record_request_id(&self, id: JobId, request_id: &str) -> Result<(), StoreError> {
        self.transition(id, "any", |job| {
            let mut next = job.clone();
            push_request_id(&mut next, Some(request_id));
            Some(next)
        })?;
        Ok(())
    }

    /// The done job that produced the output for `key`, if any.
    pub fn done_by_key(&self, key: &str) -> Result<Option<(JobId, JobV1)>, StoreError> {
        let Some(id) = self.done_by_key.get(key.as_bytes())? else {
            return Ok(None);
        };
        let Some(id) = read_id(&id) else {
            return Ok(None);
        };
        match self.job(id)? {
            Some(job) if matches!(job.state, JobState::Done { .. }) => Ok(Some((id, job))),
            _ => Ok(None),
        }
    }

    /// Every job that is not Done or Failed, FIFO by id.
    pub fn unfinished(&self) -> Result<Vec<(JobId, JobV1)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.unfinished.iter().keys() {
            let Some(id) = read_id(&entry?) else {
                continue;
            };
            match self.job(id)? {
                Some(job) if !job.state.is_terminal() => out.push((id, job)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Summaries of every job not Done/Failed, FIFO: what resuming needs, without bodies.
    pub fn unfinished_summaries(&self) -> Result<Vec<(JobId, JobSummary)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.unfinished.iter().keys() {
            let Some(id) = read_id(&entry?) else {
                continue;
            };
            if let Some(summary) = self.summary(id)? {
                if !matches!(summary.state.kind, StateKind::Done | StateKind::Failed) {
                    out.push((id, summary));
                }
            }
        }
        Ok(out)
    }

    /// Summaries of a manifest's jobs, in manifest order.
    pub fn summaries_of_manifest(
        &self,
        id: ManifestId,
    ) -> Result<Vec<(JobId, JobSummary)>, StoreError> {
        self.each_job_of_manifest(id, |job_id| self.summary(job_id))
    }

    fn summary(&self, id: JobId) -> Result<Option<JobSummary>, StoreError> {
        match self.jobs.get(id_key(id))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice::<JobSummary>(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    tree: TREE_JOBS,
                    source,
                }),
        }
    }

    /// Returns once everything written before the call is on disk, sharing a flush with
    /// concurrent callers (group commit). A failed flush is retried by the next caller.
    /// A no-op on the handle of [`Store::durably`], which flushes once its writes are done.
    fn durable(&self) -> Result<(), StoreError> {
        if self.deferred {
            return Ok(());
        }
        let gate = &*self.gate;
        let mut state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A flush already running may have started before our write: we need the next one.
        let needed = state.started + 1;
        loop {
            if state.completed >= needed {
                return Ok(());
            }
            if state.running {
                state = gate
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let this = state.start_flush();
            drop(state);
            let res = self.db.flush();
            gate.finish(this, res.as_ref().err());
            res?;
            state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs `write` on the calling task, with its durability points deferred, then waits,
    /// without blocking the runtime, for one flush that covers them all; it shares that
    /// flush with every other caller (group commit). The job steps use this: a sled write
    /// is an in-memory change (the log reaches the disk in flushes), so it needs no thread
    /// of its own, and hundreds of jobs reaching a durability point together cost one
    /// `fsync` and no thread hand-off each. Returns only once the writes are on disk.
    pub async fn durably<T>(
        &self,
        write: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deferred = Store {
            deferred: true,
            ..self.clone()
        };
        let out = write(&deferred)?;
        self.durable_async().await?;
        Ok(out)
    }

    /// [`Store::durable`] for async callers. The flush runs on a thread of its own, started by
    /// the first waiter that finds none running; a waiter that goes away never strands it.
    async fn durable_async(&self) -> Result<(), StoreError> {
        let gate = &*self.gate;
        let needed = gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .started
            + 1;
        loop {
            let flushed = gate.flushed.notified();
            tokio::pin!(flushed);
            // Registered before the state is read, so a flush ending in between still wakes us.
            flushed.as_mut().enable();
            {
                let mut state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.completed >= needed {
                    return Ok(());
                }
                if let Some((n, why)) = &state.failed
                    && *n >= needed
                {
                    return Err(StoreError::Flush(why.clone()));
                }
                if !state.running {
                    let this = state.start_flush();
                    drop(state);
                    // Its own thread, not the blocking pool: a `durable` caller on the pool
                    // may be waiting for this flush, so it must never queue behind them.
                    let (db, gate) = (self.db.clone(), Arc::clone(&self.gate));
                    let flusher = std::thread::Builder::new()
                        .name("claid-store-flush".to_owned())
                        .spawn(move || {
                            let res = db.flush();
                            // Let go of the database before any waiter can return: a caller
                            // that drops its store after `durably` can reopen it at once.
                            drop(db);
                            gate.finish(this, res.as_ref().err());
                        });
                    if let Err(err) = flusher {
                        let err = sled::Error::Io(err);
                        self.gate.finish(this, Some(&err));
                    }
                }
            }
            flushed.await;
        }
    }

    /// Flushes every tree to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.durable()?;
        Ok(())
    }

    /// Flushes completed so far by this process (durability points share them): a
    /// diagnostic, and how tests see that a write was made durable.
    pub fn flushes(&self) -> u64 {
        self.gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .completed
    }

    /// Applies `next` to the job's current record atomically: `None` from `next` is a
    /// `Conflict`. Keeps the indexes in step with the state (a serializable transaction over
    /// `jobs`, `done_by_key` and `unfinished` when they change, a compare-and-swap on `jobs`
    /// when they do not) and stamps `updated_at_ms`.
    fn transition(
        &self,
        id: JobId,
        expected: &'static str,
        next: impl Fn(&JobV1) -> Option<JobV1>,
    ) -> Result<JobV1, StoreError> {
        let key = id_key(id);
        // A change that leaves both indexes alone (every step short of done, failed or a
        // replay) is a compare-and-swap on `jobs`: a sled transaction writes its log buffer
        // out and syncs it twice (before and after), and the job steps are the hot path.
        loop {
            let Some(bytes) = self.jobs.get(key)? else {
                return Err(StoreError::JobNotFound(id));
            };
            let job = decode_job(&bytes)?;
            let Some(mut new) = next(&job) else {
                return Err(StoreError::Conflict {
                    job: id,
                    expected,
                    found: job.state.kind(),
                });
            };
            let touches_indexes = job.state.is_terminal() != new.state.is_terminal()
                || matches!(job.state, JobState::Done { .. })
                || matches!(new.state, JobState::Done { .. });
            if touches_indexes {
                break;
            }
            new.updated_at_ms = now_ms();
            let swapped =
                self.jobs
                    .compare_and_swap(key, Some(bytes), Some(encode_job(new.clone())))?;
            if swapped.is_ok() {
                return Ok(new);
            }
            // Another step changed the record in between: look again.
        }
        (&self.jobs, &self.done_by_key, &self.unfinished)
            .transaction(|(jobs, done_by_key, unfinished)| {
                let Some(bytes) = jobs.get(key)? else {
                    return abort(StoreError::JobNotFound(id));
                };
                let job = decode_job(&bytes).or_else(abort)?;
                let Some(mut new) = next(&job) else {
                    return abort(StoreError::Conflict {
                        job: id,
                        expected,
                        found: job.state.kind(),
                    });
                };
                new.updated_at_ms = now_ms();
                update_done_index(done_by_key, id, &job, &new)?;
                match (job.state.is_terminal(), new.state.is_terminal()) {
                    (false, true) => drop(unfinished.remove(&key)?),
                    (true, false) => drop(unfinished.insert(&key, &[])?),
                    _ => {}
                }
                jobs.insert(&key, encode_job(new.clone()))?;
                Ok(new)
            })
            .map_err(tx_err)
    }
}

fn update_done_index(
    done_by_key: &TransactionalTree,
    id: JobId,
    old: &JobV1,
    new: &JobV1,
) -> TxResult<()> {
    let was_done = matches!(old.state, JobState::Done { .. });
    let is_done = matches!(new.state, JobState::Done { .. });
    if is_done {
        done_by_key.insert(new.key.as_bytes(), &id_key(id))?;
    } else if was_done {
        let points_here = done_by_key
            .get(old.key.as_bytes())?
            .is_some_and(|v| read_id(&v) == Some(id));
        if points_here {
            done_by_key.remove(old.key.as_bytes())?;
        }
    }
    Ok(())
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

fn abort<T>(err: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

fn tx_err(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => StoreError::Db(err),
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

fn read_id(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn split_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() != 16 {
        return None;
    }
    Some((read_id(&bytes[..8])?, read_id(&bytes[8..])?))
}

fn encode_job(job: JobV1) -> Vec<u8> {
    // Serializing plain data structs to JSON cannot fail (no non-string map keys).
    serde_json::to_vec(&JobRecord::V1(job)).unwrap_or_default()
}

fn encode_manifest(m: ManifestV1) -> Vec<u8> {
    serde_json::to_vec(&ManifestRecord::V1(m)).unwrap_or_default()
}

fn decode_job(bytes: &[u8]) -> Result<JobV1, StoreError> {
    match serde_json::from_slice(bytes) {
        Ok(JobRecord::V1(job)) => Ok(job),
        Err(source) => Err(StoreError::Corrupt {
            tree: TREE_JOBS,
            source,
        }),
    }
}

fn decode_manifest(bytes: &[u8]) -> Result<ManifestV1, StoreError> {
    match serde_json::from_slice(bytes) {
        Ok(ManifestRecord::V1(m)) => Ok(m),
        Err(source) => Err(StoreError::Corrupt {
            tree: TREE_MANIFESTS,
            source,
        }),
    }
}
