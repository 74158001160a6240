//! The sled layer of the store: named trees, versioned JSON records, compare-and-swap and
//! transactional job transitions, streaming registration with output reservations, and scans.
//! Everything here is synchronous and private to `store`; `store.rs` is its async face.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Batch, Db, Transactional, Tree};

use crate::claid::wire::TaskRef;
use crate::store::records::{
    JobId, JobRecord, JobState, JobSummary, JobV1, ManifestCounts, ManifestId, ManifestRecord,
    ManifestV1,
};
use crate::store::{StoreError, lane};

/// Directory under the state folder holding this schema version's database.
pub const SCHEMA_DIR: &str = "v1";
pub const TREE_MANIFESTS: &str = "manifests";
pub const TREE_MANIFEST_BY_REL: &str = "manifest_by_rel";
pub const TREE_JOBS: &str = "jobs";
/// Run id ‖ job id → empty: the index of stores written before `job_ranges`; read, never
/// written any more.
pub const TREE_JOBS_BY_MANIFEST: &str = "jobs_by_manifest";
/// Run id ‖ first job id → last job id: a run's jobs as ranges of consecutive ids (a
/// registration takes its ids in a row, so a run has one range, or a few), one entry per
/// range where the older index had one per job.
pub const TREE_JOB_RANGES: &str = "job_ranges";
pub const TREE_DONE_BY_KEY: &str = "done_by_key";
/// Meta key prefix of the places a storage's connector was found pointing at during a run,
/// by storage name ([`Trees::note_storage_place`]).
const META_STORAGE_PLACES: &str = "storage-places/";
/// How many such places are kept per storage.
const MAX_STORAGE_PLACES: usize = 8;

/// `meta` key prefix of the storage (its name in the config) each Claid connector name was
/// last seen with ([`Trees::note_connectors`]).
const META_CONNECTOR: &str = "connector/";

/// `meta` key of the connector renames a replay follows ([`Trees::rename_connectors`]'s
/// `follow`).
const META_RENAMED: &str = "connectors-renamed";

/// `meta` key of the connector renames the jobs were last rewritten for
/// ([`Trees::rename_connectors`]).
const META_REWRITTEN: &str = "connectors-rewritten";
pub const TREE_META: &str = "meta";
pub const TREE_UNFINISHED: &str = "unfinished";
pub const TREE_RESERVED: &str = "reserved";
pub const TREE_RESERVED_BY_MANIFEST: &str = "reserved_by_manifest";
pub const TREE_REGISTERING: &str = "registering";
/// Task id → when it came (ms since the epoch, big-endian) ‖ the webhook's verified body: a
/// final announcement nobody waited for when it came (its submit answer was not recorded
/// yet), kept so that a crash before that answer does not lose it.
pub const TREE_ANNOUNCED: &str = "announced";
/// Task id ‖ job id → run id ‖ when it failed (ms since the epoch), both big-endian: a job
/// failed as `task-timeout` on that task (or batch), so that Claid's late announcement of it
/// is still taken after a restart instead of being paid for again by `replay`.
pub const TREE_TIMED_OUT: &str = "timed_out";
/// Task id (`b` after it for a batch, as in `announced`) → the first job that took it: a
/// task recorded on one job is never taken by another (a webhook of an earlier run played
/// again adopting a job in doubt; an answer naming a task another job has), which would hide
/// a second bill and deliver one image twice.
pub const TREE_TASKS: &str = "tasks";
/// sled page-cache budget, in bytes of stored data (sled's own memory is a few times more).
/// The default (1 GiB) let a 100,000-job table sit in memory whole; the daemon reads a job
/// only when it steps it, in about the order the jobs were registered, so a small cache costs
/// little: 16 → 4 MB took the daemon's peak RSS from 61 to 46 MB at 10,000 images and from
/// 107 to 91 MB at 100,000 (docs/benchmark.md).
const CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// Beside the database: the store's id and the number of the run registered last
/// ([`Trees::check_highwater`]).
pub const HIGHWATER_FILE: &str = "claid-highwater";
/// How long an open waits for a lock held by another handle before it answers `Locked`
/// (sled's IO threads let go of a store dropped a moment ago within milliseconds; another
/// daemon on the same state folder holds it for good).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between two tries of the lock.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);
/// `meta` key set once the store has had its whole-history orphan sweep.
const META_SWEEP: &str = "orphan_sweep";
/// Jobs per write batch in `register`; each batch is a slice point of the store's thread.
const REGISTER_BATCH: usize = 256;
/// Jobs a scan reads between two slice points (`lane::let_steps_in`): the waiting steps run
/// there, so a long scan holds none up for more than this many reads.
const SLICE: usize = 256;

/// A task (or batch) id with the jobs (and their runs) that failed as `task-timeout` on it.
pub type TimedOut = (u64, Vec<(ManifestId, JobId)>);

/// A kept announcement: its entry's key (to forget it by) and its verified body.
pub type KeptAnnouncement = (Vec<u8>, Vec<u8>);

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Every tree of the database. Cloning is cheap (sled handles are `Arc`s).
#[derive(Clone, Debug)]
pub struct Trees {
    /// The database; kept for id generation and flushes (a flush covers every tree).
    pub db: Db,
    manifests: Tree,
    manifest_by_rel: Tree,
    jobs: Tree,
    jobs_by_manifest: Tree,
    job_ranges: Tree,
    done_by_key: Tree,
    unfinished: Tree,
    /// Outbox-relative path → id of the run that will write it (while that run is not ended).
    reserved: Tree,
    /// Manifest id ‖ path → empty, so a run's reservations are released by one prefix scan.
    reserved_by_manifest: Tree,
    /// Manifest id → its inbox-relative path while its registration is being written (its
    /// record, the commit point, comes last): a conflict can name it meanwhile.
    registering: Tree,
    announced: Tree,
    timed_out: Tree,
    tasks: Tree,
    /// Where the database lives, for error messages.
    pub path: PathBuf,
    /// Claid connector name → the bucket place it writes to (`s3://bucket/prefix`): a storage
    /// output is reserved under the object it writes, not under the connector's name, so two
    /// connectors (or storages) on one bucket prefix cannot both write one object.
    object_places: Arc<RwLock<BTreeMap<String, String>>>,
    /// Connector names renamed since an earlier start (old → new,
    /// [`Trees::rename_connectors`]): a failed job replayed, or a job made again, names the
    /// connector by its new name.
    renamed: Arc<RwLock<BTreeMap<String, String>>>,
    /// This store's own random id, made once at its creation (`meta` key `store_id`): names
    /// what this daemon stages in a bucket, apart from another daemon's.
    pub id: String,
}

/// `meta` key of the store's id ([`Trees::id`]).
const META_STORE_ID: &str = "store_id";

/// What [`Trees::register`] did.
#[derive(Debug)]
pub enum Registration {
    Registered {
        id: ManifestId,
        /// Jobs to submit, in manifest order.
        queued: Vec<JobId>,
        /// Of those, the ones that fetch a result again instead (not queued: `Downloading`).
        fetching: Vec<JobId>,
        /// Jobs marked done without an API call (identical output already there).
        unchanged: u64,
        counts: ManifestCounts,
    },
    /// A path the run would write (`wanted`) collides with `path`, reserved by another run
    /// that has not ended; nothing was registered.
    Conflict {
        path: String,
        wanted: String,
        owner: ManifestId,
        /// The other run's manifest, when its registration has committed.
        owner_rel: Option<String>,
    },
}

impl Trees {
    /// Opens (or creates) the database at `<state_dir>/v1/`; sweeps what a crash during a
    /// registration left behind. `StoreError::Locked` when another process holds it.
    pub fn open(state_dir: &Path) -> Result<Trees, StoreError> {
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
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            // No background flusher thread: every durability point flushes explicitly, and a
            // flusher thread outliving a dropped `Db` keeps the file lock for up to its period.
            .flush_every_ms(None);
        // A store dropped by this process a moment ago may still be let go of by sled's own IO
        // threads: the lock is tried again until `LOCK_WAIT` has passed, then `Locked`.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open().map_err(open_err) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                other => break other?,
            }
        };
        let mut trees = Trees {
            manifests: db.open_tree(TREE_MANIFESTS)?,
            manifest_by_rel: db.open_tree(TREE_MANIFEST_BY_REL)?,
            jobs: db.open_tree(TREE_JOBS)?,
            jobs_by_manifest: db.open_tree(TREE_JOBS_BY_MANIFEST)?,
            job_ranges: db.open_tree(TREE_JOB_RANGES)?,
            done_by_key: db.open_tree(TREE_DONE_BY_KEY)?,
            unfinished: db.open_tree(TREE_UNFINISHED)?,
            reserved: db.open_tree(TREE_RESERVED)?,
            reserved_by_manifest: db.open_tree(TREE_RESERVED_BY_MANIFEST)?,
            registering: db.open_tree(TREE_REGISTERING)?,
            announced: db.open_tree(TREE_ANNOUNCED)?,
            timed_out: db.open_tree(TREE_TIMED_OUT)?,
            tasks: db.open_tree(TREE_TASKS)?,
            path,
            db,
            object_places: Arc::default(),
            renamed: Arc::default(),
            id: String::new(),
        };
        let meta = trees.db.open_tree(TREE_META)?;
        meta.insert("schema", "1")?;
        // The connector renames the last start found (a replay made while the daemon is
        // stopped follows them: `Trees::follow_renamed`).
        if let Some(bytes) = meta.get(META_RENAMED)?
            && let Ok(renamed) = serde_json::from_slice::<BTreeMap<String, String>>(&bytes)
        {
            *trees
                .renamed
                .write()
                .unwrap_or_else(PoisonError::into_inner) = renamed;
        }
        trees.id = match meta.get(META_STORE_ID)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = format!("{:016x}", rand::random::<u64>());
                meta.insert(META_STORE_ID, id.as_bytes())?;
                id
            }
        };
        // A registration marks its run in `registering` before it writes anything else, and
        // runs are never deleted, so what a crash leaves behind belongs to a marked run: only
        // those are swept. A store never swept that way (written by an older version) is swept
        // whole once.
        if meta.get(META_SWEEP)?.is_none() {
            trees.sweep_orphans()?;
            meta.insert(META_SWEEP, "registering")?;
        } else {
            trees.sweep_registrations()?;
        }
        trees.db.flush()?;
        trees.check_highwater()?;
        Ok(trees)
    }

    /// The other places (`s3://bucket/path`) a storage's connector at Claid was found pointing
    /// at during a run ([`Trees::note_storage_place`]), oldest first.
    pub fn storage_places(&self, storage: &str) -> Result<Vec<String>, StoreError> {
        let meta = self.db.open_tree(TREE_META)?;
        Ok(meta
            .get(format!("{META_STORAGE_PLACES}{storage}"))?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default())
    }

    /// The storage (its name in the config, and its `url`) each Claid connector name was
    /// noted with at a start ([`Trees::note_connectors`]).
    pub fn noted_connectors(&self) -> Result<BTreeMap<String, (String, String)>, StoreError> {
        let meta = self.db.open_tree(TREE_META)?;
        let mut noted = BTreeMap::new();
        for item in meta.scan_prefix(META_CONNECTOR) {
            let (key, value) = item?;
            let Ok(storage) = serde_json::from_slice::<(String, String)>(&value) else {
                continue;
            };
            noted.insert(
                String::from_utf8_lossy(&key[META_CONNECTOR.len()..]).into_owned(),
                storage,
            );
        }
        Ok(noted)
    }

    /// Notes which storage each connector name belongs to (`claid_name` → the storage's name
    /// and `url`), so that a later start can tell a connector renamed at Claid (and in the
    /// config) from one taken out, or from a storage name given to another bucket. Flushed.
    pub fn note_connectors(
        &self,
        connectors: &BTreeMap<String, (String, String)>,
    ) -> Result<(), StoreError> {
        let meta = self.db.open_tree(TREE_META)?;
        for (connector, storage) in connectors {
            let value =
                serde_json::to_vec(storage).map_err(|err| StoreError::Worker(err.to_string()))?;
            meta.insert(format!("{META_CONNECTOR}{connector}"), value)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Rewrites `storage://OLD/…` to `storage://NEW/…` (`rewrite`: OLD → NEW) in the input,
    /// the output destination and the staged input of every job not sent yet or failed (what
    /// a submit or a replay sends next), so that it names the connector by its name at Claid
    /// now. A job that may adopt the task of a lost submit keeps its request as it was sent
    /// (the announcement that names that task echoes it). Its key stays. Returns how many
    /// jobs were rewritten. Flushed. Made once for a set of rewrites (noted in `meta`): a
    /// later start with the same ones does not read every job again.
    ///
    /// `follow` (old names no storage or connector has now) is what a replay or an image made
    /// again follows from now on ([`Trees::follow_renamed`]), in this process and in the
    /// commands that open the store while the daemon is stopped. (Not `rewrite`: an old name
    /// that is another storage's now, after names were swapped, names that storage's new
    /// jobs.)
    pub fn rename_connectors(
        &self,
        rewrite: &BTreeMap<String, String>,
        follow: &BTreeMap<String, String>,
    ) -> Result<usize, StoreError> {
        *self.renamed.write().unwrap_or_else(PoisonError::into_inner) = follow.clone();
        let meta = self.db.open_tree(TREE_META)?;
        if follow.is_empty() {
            meta.remove(META_RENAMED)?;
        } else {
            let bytes =
                serde_json::to_vec(follow).map_err(|err| StoreError::Worker(err.to_string()))?;
            meta.insert(META_RENAMED, bytes)?;
        }
        let applied =
            serde_json::to_vec(rewrite).map_err(|err| StoreError::Worker(err.to_string()))?;
        if rewrite.is_empty() || meta.get(META_REWRITTEN)?.as_deref() == Some(&applied[..]) {
            self.db.flush()?;
            return Ok(0);
        }
        let mut count = 0;
        for item in self.jobs.iter() {
            let (key, bytes) = item?;
            let job = decode_job(&bytes)?;
            let open = matches!(job.state, JobState::Queued | JobState::Failed { .. });
            if !open || job.waits_for_adoption() {
                continue;
            }
            let mut new = job.clone();
            if !rename_in(&mut new, rewrite) {
                continue;
            }
            // A step taken meanwhile (none runs before the pipeline starts) wins.
            if self
                .jobs
                .compare_and_swap(&key, Some(bytes), Some(encode_job(&new)))?
                .is_ok()
            {
                count += 1;
            }
        }
        meta.insert(META_REWRITTEN, applied)?;
        self.db.flush()?;
        Ok(count)
    }

    /// Has `job` name each connector renamed since (the `follow` of
    /// [`Trees::rename_connectors`]) by its new name, in its input, output destination and
    /// staged input; whether anything changed.
    pub fn follow_renamed(&self, job: &mut JobV1) -> bool {
        let renamed = self.renamed.read().unwrap_or_else(PoisonError::into_inner);
        rename_in(job, &renamed)
    }

    /// Notes `place` as a place `storage`'s connector pointed at during a run (the objects
    /// Claid wrote then are there); the last [`MAX_STORAGE_PLACES`] are kept. Flushed.
    pub fn note_storage_place(&self, storage: &str, place: &str) -> Result<(), StoreError> {
        let mut places = self.storage_places(storage)?;
        if places.iter().any(|known| known == place) {
            return Ok(());
        }
        places.push(place.to_owned());
        if places.len() > MAX_STORAGE_PLACES {
            places.remove(0);
        }
        let bytes =
            serde_json::to_vec(&places).map_err(|err| StoreError::Worker(err.to_string()))?;
        self.db
            .open_tree(TREE_META)?
            .insert(format!("{META_STORAGE_PLACES}{storage}"), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// A store whose files were damaged (sled reads its log up to the first record that fails
    /// its checksum, and takes the rest for a write a crash cut short) or put back from an
    /// older copy opens with fewer runs than it had, maybe none, and would bill every image
    /// again without a word: [`HIGHWATER_FILE`], written beside the database after each
    /// registration, says which run was registered last, and a store that holds no run that
    /// high (or is another store) is refused as `Damaged`.
    fn check_highwater(&self) -> Result<(), StoreError> {
        let Ok(text) = std::fs::read_to_string(self.path.join(HIGHWATER_FILE)) else {
            return Ok(());
        };
        let mut fields = text.split_whitespace();
        let (Some(id), Some(Ok(expected))) = (fields.next(), fields.next().map(str::parse::<u64>))
        else {
            return Ok(());
        };
        let found = match self.manifests.last()? {
            Some((key, _)) => read_id(&key),
            None => None,
        };
        let why = if id != self.id {
            format!(
                "it is not the store the daemon wrote last (that one's id was {id}, this one's is {})",
                self.id
            )
        } else {
            match found {
                None => format!("it holds no run, and run number {expected} was registered in it"),
                Some(found) if found < expected => format!(
                    "the highest run it holds is number {found}, and run number {expected} was registered in it"
                ),
                Some(_) => return Ok(()),
            }
        };
        Err(StoreError::Damaged {
            path: self.path.clone(),
            why,
        })
    }

    /// Records `manifest_id` as the run registered last ([`Trees::check_highwater`]): written
    /// to a temporary file, synced, renamed. A failure is only logged (the store itself is
    /// consistent; the check then compares with an older run).
    fn note_highwater(&self, manifest_id: ManifestId) {
        let path = self.path.join(HIGHWATER_FILE);
        let tmp = self.path.join(format!("{HIGHWATER_FILE}.tmp"));
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            writeln!(file, "{} {manifest_id}", self.id)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(err) = written {
            tracing::warn!(error = %crate::os_error::OsCause(&err), "Cannot note the run registered last beside the store");
        }
    }

    /// Deletes the jobs and reservations of every run marked `registering` whose record was
    /// never written (a registration a crash cut short), then the marks: O(what those runs
    /// wrote), whatever the history. Only safe before any registration runs (from `open`).
    fn sweep_registrations(&self) -> Result<usize, StoreError> {
        let mut marked = Vec::new();
        for entry in self.registering.iter().keys() {
            if let Some(id) = read_id(&entry?) {
                marked.push(id);
            }
        }
        let mut n_removed = 0;
        for id in marked {
            // A committed run only had its mark's removal cut short.
            if !self.manifests.contains_key(id_key(id))? {
                n_removed += self.unregister(id)?;
            }
        }
        self.registering.clear()?;
        if n_removed > 0 {
            tracing::warn!(
                n_removed,
                "Removed jobs of an unfinished manifest registration"
            );
        }
        Ok(n_removed)
    }

    /// Deletes jobs and reservations whose manifest record does not exist, over the whole
    /// history: the one-time sweep of a store written before `registering` marked every
    /// registration (see `open`). Only safe before any registration runs.
    fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let mut known: BTreeMap<ManifestId, bool> = BTreeMap::new();
        let mut exists = |id: ManifestId| -> Result<bool, StoreError> {
            if let Some(exists) = known.get(&id) {
                return Ok(*exists);
            }
            let exists = self.manifests.contains_key(id_key(id))?;
            known.insert(id, exists);
            Ok(exists)
        };
        // In chunks: a crash halfway leaves orphans that the next open sweeps again.
        let mut batch_index = Chunked::new(&self.jobs_by_manifest);
        let mut batch_jobs = Chunked::new(&self.jobs);
        let mut batch_unfinished = Chunked::new(&self.unfinished);
        let mut n_removed = 0;
        for entry in self.jobs_by_manifest.iter().keys() {
            let key = entry?;
            let Some((manifest_id, job_id)) = split_pair(&key) else {
                batch_index.remove(key)?;
                continue;
            };
            if !exists(manifest_id)? {
                batch_index.remove(key)?;
                batch_jobs.remove(&id_key(job_id))?;
                batch_unfinished.remove(&id_key(job_id))?;
                n_removed += 1;
            }
        }
        for entry in self.job_ranges.iter() {
            let (key, last) = entry?;
            let Some((manifest_id, first, last)) = read_range(&key, &last) else {
                self.job_ranges.remove(key)?;
                continue;
            };
            if !exists(manifest_id)? {
                n_removed +=
                    self.remove_range(&key, first..=last, &mut batch_jobs, &mut batch_unfinished)?;
            }
        }
        batch_jobs.finish()?;
        batch_unfinished.finish()?;
        batch_index.finish()?;
        let mut batch_reserved = Chunked::new(&self.reserved);
        let mut batch_reserved_index = Chunked::new(&self.reserved_by_manifest);
        for entry in self.reserved_by_manifest.iter().keys() {
            let key = entry?;
            let Some(owner) = key.get(..8).and_then(read_id) else {
                batch_reserved_index.remove(key)?;
                continue;
            };
            if !exists(owner)? {
                let path = &key[8..];
                if self.reserved_for(owner, path)? {
                    batch_reserved.remove(path)?;
                }
                batch_reserved_index.remove(key)?;
            }
        }
        batch_reserved.finish()?;
        batch_reserved_index.finish()?;
        // Registrations a crash cut short.
        self.registering.clear()?;
        if n_removed > 0 {
            tracing::warn!(
                n_removed,
                "Removed jobs of an unfinished manifest registration"
            );
        }
        Ok(n_removed)
    }

    /// Registers a run and its jobs. Every job's `output_rel` and every path of `extra_paths`
    /// (the reports) is reserved for the run first; when one is reserved by a run that has not
    /// ended, nothing is registered and the conflict is returned. Jobs are written in small
    /// batches as they stream in (memory stays flat); the manifest record is the commit point,
    /// written and flushed last. `unchanged` turns a job into `Done { unchanged }` when an
    /// identical output is already there, or into the state that fetches it again without a
    /// submit (it receives the new job and the previous done job's state).
    pub fn register(
        &self,
        mut m: ManifestV1,
        extra_paths: &[String],
        jobs: impl IntoIterator<Item = JobV1>,
        unchanged: &dyn Fn(&JobV1, &JobState) -> Option<JobState>,
    ) -> Result<Registration, StoreError> {
        let manifest_id = self.db.generate_id()?;
        self.registering
            .insert(id_key(manifest_id), m.rel.as_bytes())?;
        let mut n_jobs: usize = 0;
        let mut queued: Vec<JobId> = Vec::new();
        let mut fetching: Vec<JobId> = Vec::new();
        let mut counts = ManifestCounts::default();
        let mut n_unchanged = 0;
        let mut repoint: Vec<(String, JobId)> = Vec::new();
        // Small batches keep memory flat: sled keeps every node version a batch replaces
        // until the batch ends (4,096-job batches peaked at 1.1 GB for 100,000 jobs).
        // Atomicity across batches is not needed: the manifest record below is the commit point.
        let mut batch = RegisterBatch::new(self, manifest_id);
        for path in extra_paths {
            if let Some(conflict) = self.reserve(manifest_id, path, Indexed::Yes)? {
                self.unregister(manifest_id)?;
                return Ok(conflict);
            }
        }
        for mut job in jobs {
            // A storage output also reserves its object (`storage://CONNECTOR/key`): two runs
            // writing the same object collide like two writing the same file.
            let objects = self.objects_of(&job.body, &job.output_rel);
            let mut conflict = self.reserve(manifest_id, &job.output_rel, Indexed::No)?;
            for (at, object) in objects.iter().enumerate() {
                if conflict.is_some() {
                    break;
                }
                conflict = self.reserve(manifest_id, object, Indexed::No)?;
                if conflict.is_some() {
                    // The job is not written, so the rollback cannot find its output through
                    // it: released here.
                    self.unreserve(manifest_id, &job.output_rel)?;
                    for reserved in &objects[..at] {
                        self.unreserve(manifest_id, reserved)?;
                    }
                }
            }
            if let Some(conflict) = conflict {
                // Applied first, so the rollback below finds every job written.
                batch.apply()?;
                self.unregister(manifest_id)?;
                return Ok(conflict);
            }
            job.manifest = manifest_id;
            if let Some(done) = self.done_by_key(&job.key)?
                && let Some(state) = unchanged(&job, &done.1.state)
            {
                // A state that is not an end (a local copy fetched again from its object)
                // still has work to do: queued below, not counted as unchanged.
                n_unchanged += u64::from(state.is_terminal());
                // A kept result fetched again belongs to the earlier job's task: a batch's is
                // asked of the batch for a new URL, and a staged input's record goes along, and
                // so do the objects its submit replaced (a storage output's object found to be
                // still the earlier edit is then made again; without them that edit passed for
                // the new one).
                if matches!(
                    state,
                    JobState::Downloading {
                        kept_since_ms: Some(_),
                        ..
                    }
                ) {
                    job.batch = done.1.batch;
                    job.batch_images = done.1.batch_images;
                    job.staged = done.1.staged.clone();
                    job.replaces = done.1.replaces.clone();
                }
                // The input the result was made from: the job answers for the key from now
                // on, and a later run compares the input with it (made again if replaced).
                job.input_seen = done.1.input_seen.clone();
                job.state = state;
            }
            let job_id = self.db.generate_id()?;
            batch.ranges.add(job_id, &self.job_ranges)?;
            if job.state.is_terminal() {
                if matches!(job.state, JobState::Done { .. }) {
                    // The unchanged job will answer for the key (its output is the same file),
                    // once the run is committed: a rollback must leave the key to the job
                    // that made the file.
                    repoint.push((job.key.clone(), job_id));
                }
            } else {
                batch.unfinished.insert(&id_key(job_id), &[]);
                if !matches!(job.state, JobState::Queued) {
                    fetching.push(job_id);
                }
                queued.push(job_id);
            }
            counts.add_job(&job);
            batch.jobs.insert(&id_key(job_id), encode_job(&job));
            batch.counted()?;
            n_jobs += 1;
        }
        m.n_jobs = u32::try_from(n_jobs).unwrap_or(u32::MAX);
        m.counts = None;
        batch.apply()?;
        self.db.flush()?;
        let rel = m.rel.clone();
        let record = encode_manifest(&m);
        (&self.manifests, &self.manifest_by_rel)
            .transaction(|(manifests, by_rel)| {
                manifests.insert(&id_key(manifest_id), record.as_slice())?;
                by_rel.insert(rel.as_bytes(), &id_key(manifest_id))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        // After the commit point; a crash before these land leaves the keys to the earlier
        // jobs, which made the same files.
        let mut batch_keys = Chunked::new(&self.done_by_key);
        for (key, job_id) in repoint {
            batch_keys.insert(key.as_bytes(), &id_key(job_id))?;
        }
        batch_keys.finish()?;
        self.registering.remove(id_key(manifest_id))?;
        self.db.flush()?;
        self.note_highwater(manifest_id);
        Ok(Registration::Registered {
            id: manifest_id,
            queued,
            fetching,
            unchanged: n_unchanged,
            counts,
        })
    }

    /// Sets where each Claid connector writes (see `object_places`); until then a storage
    /// output is reserved under its `storage://CONNECTOR/key`.
    pub fn set_object_places(&self, places: BTreeMap<String, String>) {
        *self
            .object_places
            .write()
            .unwrap_or_else(PoisonError::into_inner) = places;
    }

    /// Where a `storage://CONNECTOR/key` object is (the connector's bucket place), so that
    /// two connectors naming one bucket reserve one object once.
    fn place_of(&self, uri: String) -> String {
        let places = self
            .object_places
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match crate::storages::split_uri(&uri) {
            Some((connector, key)) => match places.get(connector) {
                Some(place) => format!("{}/{key}", place.trim_end_matches('/')),
                None => uri,
            },
            None => uri,
        }
    }

    /// The places a job's storage output reserves (`s3://bucket/prefix/key`): its object's key
    /// and its twin with the format's other extension (`objects::output_keys`: `x.jpg` and
    /// `x.jpeg` are one object to Claid and to the daemon's checks; two active runs writing
    /// them were both taken in). None for a local output.
    fn objects_of(&self, body: &serde_json::Value, output_rel: &str) -> Vec<String> {
        self.places_of(crate::storages::destination_of(body, output_rel))
    }

    /// [`Trees::objects_of`] for a storage output's `storage://` URI, if any.
    fn places_of(&self, object: Option<String>) -> Vec<String> {
        object
            .map(|uri| crate::objects::output_keys(&self.place_of(uri)).collect())
            .unwrap_or_default()
    }

    /// Reserves `path` for `owner`, unless a run that has not ended holds it, or holds a path
    /// that is a folder of it or inside it (a file where the other needs a folder). A path
    /// [`Indexed::Yes`] is also listed under its owner in `reserved_by_manifest`; a job's
    /// output is not (its release finds it through the job), so a run keeps one entry per
    /// image here, not two.
    fn reserve(
        &self,
        owner: ManifestId,
        path: &str,
        indexed: Indexed,
    ) -> Result<Option<Registration>, StoreError> {
        let conflict = |other: ManifestId, taken: &str| self.conflict_with(other, taken, path);
        if let Some(found) = self.conflict_around(owner, path, &conflict)? {
            return Ok(Some(found));
        }
        let key = path.as_bytes();
        loop {
            let current = self.reserved.get(key)?;
            if let Some(other) = current.as_deref().and_then(read_id)
                && other != owner
                && self.holds(other)?
            {
                return conflict(other, path);
            }
            let swapped = self
                .reserved
                .compare_and_swap(key, current, Some(&id_key(owner)))?;
            if swapped.is_ok() {
                break;
            }
        }
        if indexed == Indexed::Yes {
            let mut index_key = id_key(owner).to_vec();
            index_key.extend_from_slice(key);
            self.reserved_by_manifest.insert(index_key, &[])?;
        }
        Ok(None)
    }

    /// The [`Registration::Conflict`] of wanting `wanted` where run `other` holds `taken`.
    fn conflict_with(
        &self,
        other: ManifestId,
        taken: &str,
        wanted: &str,
    ) -> Result<Option<Registration>, StoreError> {
        Ok(Some(Registration::Conflict {
            path: taken.to_owned(),
            wanted: wanted.to_owned(),
            owner: other,
            owner_rel: match self.manifest(other)? {
                Some(m) => Some(m.rel),
                // Its registration has not committed yet: the name it registers under.
                None => self
                    .registering
                    .get(id_key(other))?
                    .map(|v| String::from_utf8_lossy(&v).into_owned()),
            },
        }))
    }

    /// What a run other than `owner` that has not ended holds around `path`: a folder of it
    /// reserved as a file, or a file inside it (this path would be a file where that run needs
    /// a folder). `conflict` makes the answer.
    fn conflict_around(
        &self,
        owner: ManifestId,
        path: &str,
        conflict: &ConflictOf<'_>,
    ) -> Result<Option<Registration>, StoreError> {
        // A folder of this path reserved as a file by a running run.
        for (at, _) in path.match_indices('/') {
            let folder = &path[..at];
            if let Some(other) = self
                .reserved
                .get(folder.as_bytes())?
                .and_then(|v| read_id(&v))
                && other != owner
                && self.holds(other)?
            {
                return conflict(other, folder);
            }
        }
        // Files inside this path reserved by a running run (this path would be a file).
        let mut below = path.as_bytes().to_vec();
        below.push(b'/');
        for entry in self.reserved.scan_prefix(&below) {
            let (key, value) = entry?;
            if let Some(other) = read_id(&value)
                && other != owner
                && self.holds(other)?
            {
                return conflict(other, &String::from_utf8_lossy(&key));
            }
        }
        Ok(None)
    }

    /// Reserves again, for run `owner` that a replay reopens, its report paths and the outputs
    /// (and objects) of the jobs it replays: an ended run's were released, and another drop
    /// must not take them while it runs again. A path another run took meanwhile is left to
    /// it (checked before, with [`Trees::first_conflict`]).
    pub fn reserve_again(
        &self,
        owner: ManifestId,
        extra_paths: &[String],
        outputs: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        for path in extra_paths {
            self.reserve(owner, path, Indexed::Yes)?;
        }
        for (output_rel, object) in outputs {
            self.reserve(owner, output_rel, Indexed::No)?;
            for object in self.places_of(object.clone()) {
                self.reserve(owner, &object, Indexed::No)?;
            }
        }
        Ok(())
    }

    /// The first path a new version of run `old` would collide on with another run that has
    /// not ended (as [`Trees::register`] would find it), reserving nothing: asked before the
    /// old run is told to drain, so that a version another manifest's outputs refuse leaves
    /// the run going instead of stopping it for nothing.
    pub fn first_conflict(
        &self,
        old: ManifestId,
        extra_paths: &[String],
        outputs: &[(String, Option<String>)],
    ) -> Result<Option<Registration>, StoreError> {
        let check = |path: &str| -> Result<Option<Registration>, StoreError> {
            let conflict = |other: ManifestId, taken: &str| self.conflict_with(other, taken, path);
            if let Some(found) = self.conflict_around(old, path, &conflict)? {
                return Ok(Some(found));
            }
            match self
                .reserved
                .get(path.as_bytes())?
                .as_deref()
                .and_then(read_id)
            {
                Some(other) if other != old && self.holds(other)? => conflict(other, path),
                _ => Ok(None),
            }
        };
        for path in extra_paths {
            if let Some(found) = check(path)? {
                return Ok(Some(found));
            }
        }
        for (output_rel, object) in outputs {
            if let Some(found) = check(output_rel)? {
                return Ok(Some(found));
            }
            for object in self.places_of(object.clone()) {
                if let Some(found) = check(&object)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Whether run `id` still holds its reservations: it has not ended, or its registration
    /// has not committed yet (another intake is writing it: its `registering` marker is
    /// there). A reservation whose owner has neither a record nor a marker was left by a
    /// registration a crash cut short (the marker is cleared at open) and holds nothing, even
    /// when the crash came between the reservation and its index entry, so `sweep_orphans`
    /// could not find it.
    fn holds(&self, id: ManifestId) -> Result<bool, StoreError> {
        Ok(match self.manifest(id)? {
            Some(m) => !m.state.is_ended(),
            None => self.registering.contains_key(id_key(id))?,
        })
    }

    /// Removes a run that never committed (no manifest record): its jobs and reservations,
    /// found through their indexes, then its `registering` mark. Used by a registration that
    /// found a conflict and by the sweep at open. In chunks: a crash halfway leaves the rest to
    /// the next open's sweep, which finds the run by its mark, hence the mark goes last.
    /// Returns how many jobs it removed.
    fn unregister(&self, owner: ManifestId) -> Result<usize, StoreError> {
        // First, while the jobs are there to name their outputs.
        self.release(owner)?;
        let mut jobs = Chunked::new(&self.jobs);
        let mut by_manifest = Chunked::new(&self.jobs_by_manifest);
        let mut unfinished = Chunked::new(&self.unfinished);
        let mut n = 0;
        let ranges: Vec<(sled::IVec, JobId, JobId)> = self
            .job_ranges
            .scan_prefix(id_key(owner))
            .filter_map(|entry| match entry {
                Ok((key, last)) => {
                    read_range(&key, &last).map(|(_, first, last)| Ok((key, first, last)))
                }
                Err(err) => Some(Err(StoreError::from(err))),
            })
            .collect::<Result<_, _>>()?;
        for (key, first, last) in ranges {
            n += self.remove_range(&key, first..=last, &mut jobs, &mut unfinished)?;
        }
        for key in self.jobs_by_manifest.scan_prefix(id_key(owner)).keys() {
            let key = key?;
            if let Some((_, id)) = split_pair(&key) {
                jobs.remove(&id_key(id))?;
                unfinished.remove(&id_key(id))?;
                n += 1;
            }
            by_manifest.remove(key)?;
        }
        jobs.finish()?;
        unfinished.finish()?;
        by_manifest.finish()?;
        self.registering.remove(id_key(owner))?;
        Ok(n)
    }

    /// Releases every reservation of run `owner` (it ended): its jobs' outputs (and objects),
    /// found through its jobs, and the paths its index lists (its reports; every path of a run
    /// an older version registered). In chunks: a crash halfway leaves the run not ended, and
    /// its end releases the rest again. (A crash in the middle of a registration can leave the
    /// reservations of up to a write batch of jobs never written ([`REGISTER_BATCH`]); their
    /// owner holds nothing, so they block no one, and the next run writing those paths takes
    /// them over.)
    pub fn release(&self, owner: ManifestId) -> Result<usize, StoreError> {
        let mut batch = Chunked::new(&self.reserved);
        let mut index = Chunked::new(&self.reserved_by_manifest);
        let mut n = 0;
        for job_id in self.job_ids_of(owner) {
            let Some(job) = self.job(job_id?)? else {
                continue;
            };
            let objects = self.objects_of(&job.body, &job.output_rel);
            for path in
                std::iter::once(job.output_rel.as_str()).chain(objects.iter().map(String::as_str))
            {
                if self.reserved_for(owner, path)? {
                    batch.remove(path.as_bytes())?;
                    n += 1;
                }
            }
        }
        for entry in self.reserved_by_manifest.scan_prefix(id_key(owner)).keys() {
            let key = entry?;
            let path = &key[8..];
            if self.reserved_for(owner, path)? {
                batch.remove(path)?;
                n += 1;
            }
            index.remove(key)?;
        }
        batch.finish()?;
        index.finish()?;
        Ok(n)
    }

    /// Removes the jobs of the range at `key` (and their `unfinished` entries), then the range
    /// itself, after them, so that a crash halfway leaves the range to find the rest. Returns
    /// how many ids it covered.
    fn remove_range(
        &self,
        key: &[u8],
        ids: std::ops::RangeInclusive<JobId>,
        jobs: &mut Chunked<'_>,
        unfinished: &mut Chunked<'_>,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in ids {
            jobs.remove(&id_key(id))?;
            unfinished.remove(&id_key(id))?;
            n += 1;
        }
        jobs.flush()?;
        unfinished.flush()?;
        self.job_ranges.remove(key)?;
        Ok(n)
    }

    /// Whether `path` is reserved for `owner` (the run that reserved it, whether ended or not).
    fn reserved_for(&self, owner: ManifestId, path: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(self
            .reserved
            .get(path)?
            .is_some_and(|v| read_id(&v) == Some(owner)))
    }

    /// Removes `owner`'s reservation of `path` (if it still holds it).
    fn unreserve(&self, owner: ManifestId, path: &str) -> Result<(), StoreError> {
        if self.reserved_for(owner, path)? {
            self.reserved.remove(path)?;
        }
        Ok(())
    }

    /// The run `path` is reserved for, if any (whether or not that run has ended).
    pub fn reserved_by(&self, path: &str) -> Result<Option<ManifestId>, StoreError> {
        Ok(self
            .reserved
            .get(path.as_bytes())?
            .and_then(|v| read_id(&v)))
    }

    /// Keeps the verified body of `task`'s announcement, which came at `at_ms` (not flushed
    /// here).
    pub fn keep_announcement(
        &self,
        task: TaskRef,
        at_ms: u64,
        body: &[u8],
    ) -> Result<(), StoreError> {
        self.keep_announcement_at(&announcement_key(task), at_ms, body)
    }

    fn keep_announcement_at(&self, key: &[u8], at_ms: u64, body: &[u8]) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&at_ms.to_be_bytes());
        value.extend_from_slice(body);
        self.announced.insert(key, value)?;
        Ok(())
    }

    /// The announcements kept since `since_ms` (their entry's key, body), in task id order;
    /// older ones are removed.
    pub fn kept_announcements(&self, since_ms: u64) -> Result<Vec<KeptAnnouncement>, StoreError> {
        let mut kept = Vec::new();
        for entry in self.announced.iter() {
            let (key, value) = entry?;
            match read_announcement(&value) {
                Some((body, at_ms)) if at_ms >= since_ms => kept.push((key.to_vec(), body)),
                _ => {
                    self.announced.remove(key)?;
                }
            }
        }
        Ok(kept)
    }

    /// Moves every kept announcement `by_ms` into the past (for tests).
    pub fn age_kept_announcements(&self, by_ms: u64) -> Result<(), StoreError> {
        for entry in self.announced.iter() {
            let (key, value) = entry?;
            if let Some((body, at_ms)) = read_announcement(&value) {
                self.keep_announcement_at(&key, at_ms.saturating_sub(by_ms), &body)?;
            }
        }
        Ok(())
    }

    /// Forgets the kept announcement of `task`, if any (no job of this daemon owns it).
    pub fn forget_announcement_of(&self, task: TaskRef) -> Result<(), StoreError> {
        self.forget_announcement(&announcement_key(task))
    }

    /// Forgets the kept announcement under `key` (it was taken).
    pub fn forget_announcement(&self, key: &[u8]) -> Result<(), StoreError> {
        self.announced.remove(key)?;
        Ok(())
    }

    /// Notes that job `job` of run `run` failed as `task-timeout` on task `task_id` at `at_ms`
    /// (not flushed here).
    pub fn note_timed_out(
        &self,
        task_id: u64,
        job: JobId,
        run: ManifestId,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.timed_out
            .insert(pair_key(task_id, job), &pair_key(run, at_ms))?;
        Ok(())
    }

    /// The jobs noted by [`Trees::note_timed_out`] since `since_ms`, by task id (each with
    /// its run), in task id order; older notes are removed.
    pub fn timed_out_since(&self, since_ms: u64) -> Result<Vec<TimedOut>, StoreError> {
        let mut by_task: Vec<TimedOut> = Vec::new();
        for entry in self.timed_out.iter() {
            let (key, value) = entry?;
            match (split_pair(&key), split_pair(&value)) {
                (Some((task_id, job)), Some((run, at_ms))) if at_ms >= since_ms => {
                    match by_task.last_mut() {
                        Some((last, owners)) if *last == task_id => owners.push((run, job)),
                        _ => by_task.push((task_id, vec![(run, job)])),
                    }
                }
                _ => {
                    self.timed_out.remove(key)?;
                }
            }
        }
        Ok(by_task)
    }

    /// Forgets that job `job` failed as `task-timeout` on task `task_id` (it took the task's
    /// result, or was made again).
    /// The job that took `task` first, if any took it.
    pub fn task_owner(&self, task: TaskRef) -> Result<Option<JobId>, StoreError> {
        Ok(self
            .tasks
            .get(announcement_key(task))?
            .and_then(|v| read_id(&v)))
    }

    /// Notes `job` as the owner of `task` unless one is noted; returns the owner noted before
    /// when it is another job.
    pub fn take_task(&self, task: TaskRef, job: JobId) -> Result<Option<JobId>, StoreError> {
        let key = announcement_key(task);
        match self
            .tasks
            .compare_and_swap(&key, None::<&[u8]>, Some(&id_key(job)))?
        {
            Ok(()) => Ok(None),
            Err(current) => Ok(current
                .current
                .as_deref()
                .and_then(read_id)
                .filter(|owner| *owner != job)),
        }
    }

    pub fn forget_timed_out(&self, task_id: u64, job: JobId) -> Result<(), StoreError> {
        self.timed_out.remove(pair_key(task_id, job))?;
        Ok(())
    }

    /// The most recently registered run for an inbox-relative path.
    pub fn latest_by_rel(&self, rel: &str) -> Result<Option<(ManifestId, ManifestV1)>, StoreError> {
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

    /// The newest `n` manifests, newest first.
    pub fn recent_manifests(&self, n: usize) -> Result<Vec<(ManifestId, ManifestV1)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.manifests.iter().rev().take(n) {
            let (key, bytes) = entry?;
            if let Some(id) = read_id(&key) {
                out.push((id, decode_manifest(&bytes)?));
            }
        }
        Ok(out)
    }

    /// Applies `change` to a manifest record atomically.
    pub fn update_manifest(
        &self,
        id: ManifestId,
        change: impl Fn(&mut ManifestV1),
    ) -> Result<ManifestV1, StoreError> {
        let key = id_key(id);
        self.manifests
            .transaction(|tree| {
                let Some(bytes) = tree.get(key)? else {
                    return abort(StoreError::ManifestNotFound(id));
                };
                let mut m = decode_manifest(&bytes).or_else(abort)?;
                change(&mut m);
                tree.insert(&key, encode_manifest(&m))?;
                Ok(m)
            })
            .map_err(tx_err)
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobV1>, StoreError> {
        match self.jobs.get(id_key(id))? {
            Some(bytes) => Ok(Some(decode_job(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn summary(&self, id: JobId) -> Result<Option<JobSummary>, StoreError> {
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

    /// Hands every job of a manifest to `visit`, in manifest order, one at a time: memory
    /// stays flat however many jobs the manifest has. `visit` may fail with its own error
    /// type (a report writer's `io::Error`).
    pub fn for_each_job_of_manifest<E: From<StoreError>>(
        &self,
        id: ManifestId,
        mut visit: impl FnMut(JobId, JobV1) -> Result<(), E>,
    ) -> Result<(), E> {
        for job_id in self.job_ids_of(id) {
            let job_id = job_id?;
            if let Some(job) = self.job(job_id)? {
                visit(job_id, job)?;
            }
        }
        Ok(())
    }

    /// The ids of a manifest's jobs, from its index, in id order. Every [`SLICE`] entries a
    /// slice point of the store's thread (nothing on any other thread): a long scan running
    /// there lets the waiting steps in.
    fn job_ids_of(&self, id: ManifestId) -> impl Iterator<Item = Result<JobId, StoreError>> {
        let ranges = self.job_ranges.scan_prefix(id_key(id)).flat_map(
            |entry| -> Box<dyn Iterator<Item = Result<JobId, StoreError>>> {
                match entry {
                    Ok((key, last)) => match read_range(&key, &last) {
                        Some((_, first, last)) => Box::new((first..=last).map(Ok)),
                        None => Box::new(std::iter::empty()),
                    },
                    Err(err) => Box::new(std::iter::once(Err(StoreError::from(err)))),
                }
            },
        );
        // Runs a version before `job_ranges` registered.
        let indexed = self
            .jobs_by_manifest
            .scan_prefix(id_key(id))
            .keys()
            .filter_map(|entry| match entry {
                Ok(key) => split_pair(&key).map(|(_, job_id)| Ok(job_id)),
                Err(err) => Some(Err(StoreError::from(err))),
            });
        ranges.chain(indexed).enumerate().map(|(n, id)| {
            if n % SLICE == SLICE - 1 {
                lane::let_steps_in();
            }
            id
        })
    }

    pub fn count_manifest(&self, id: ManifestId) -> Result<ManifestCounts, StoreError> {
        self.count_manifest_collecting(id, None)
    }

    /// `count_manifest`, also pushing onto `unfinished` the summary of every job not Done or
    /// Failed: one read of each job serves both the counts and a restart's resume.
    pub fn count_manifest_collecting(
        &self,
        id: ManifestId,
        mut unfinished: Option<&mut Vec<(JobId, JobSummary)>>,
    ) -> Result<ManifestCounts, StoreError> {
        let mut counts = ManifestCounts::default();
        for job_id in self.job_ids_of(id) {
            let job_id = job_id?;
            if let Some(summary) = self.summary(job_id)? {
                counts.add_summary(&summary);
                if let Some(out) = unfinished.as_deref_mut()
                    && !summary.state.kind.is_terminal()
                {
                    out.push((job_id, summary));
                }
            }
        }
        Ok(counts)
    }

    /// The ids the `unfinished` index lists, in id order (keys only; no record is read).
    pub fn unfinished_ids(&self) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        for entry in self.unfinished.iter().keys() {
            if let Some(id) = read_id(&entry?) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The `staged` objects of the jobs not done or failed.
    pub fn unfinished_staged(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for entry in self.unfinished.iter().keys() {
            let Some(id) = read_id(&entry?) else {
                continue;
            };
            if let Some(job) = self.job(id)?
                && !job.state.is_terminal()
                && let Some(uri) = job.staged
            {
                out.insert(uri);
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
            if let Some(summary) = self.summary(id)?
                && !summary.state.kind.is_terminal()
            {
                out.push((id, summary));
            }
        }
        Ok(out)
    }

    /// The done job that produced the output for `key`, if any, or the failed one whose
    /// result for it is kept (its write failed: see [`answers_for_key`]).
    pub fn done_by_key(&self, key: &str) -> Result<Option<(JobId, JobV1)>, StoreError> {
        let Some(id) = self.done_by_key.get(key.as_bytes())? else {
            return Ok(None);
        };
        let Some(id) = read_id(&id) else {
            return Ok(None);
        };
        match self.job(id)? {
            Some(job) if answers_for_key(&job.state) => Ok(Some((id, job))),
            _ => Ok(None),
        }
    }

    /// Applies `next` to the job's current record atomically: `None` from `next` is a
    /// `Conflict`. Keeps the indexes in step with the state (a serializable transaction over
    /// `jobs`, `done_by_key` and `unfinished` when they change, a compare-and-swap on `jobs`
    /// when they do not) and stamps `updated_at_ms`. Returns the record before and after.
    pub fn transition(
        &self,
        id: JobId,
        expected: &'static str,
        next: impl Fn(&JobV1) -> Option<JobV1>,
    ) -> Result<(JobV1, JobV1), StoreError> {
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
                return Err(conflict(id, expected, &job));
            };
            let touches_indexes = job.state.is_terminal() != new.state.is_terminal()
                || matches!(job.state, JobState::Done { .. })
                || matches!(new.state, JobState::Done { .. });
            if touches_indexes {
                break;
            }
            new.updated_at_ms = crate::store::now_ms();
            let swapped = self
                .jobs
                .compare_and_swap(key, Some(bytes), Some(encode_job(&new)))?;
            if swapped.is_ok() {
                return Ok((job, new));
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
                    return abort(conflict(id, expected, &job));
                };
                new.updated_at_ms = crate::store::now_ms();
                update_done_index((jobs, done_by_key), id, &job, &new)?;
                match (job.state.is_terminal(), new.state.is_terminal()) {
                    (false, true) => drop(unfinished.remove(&key)?),
                    (true, false) => drop(unfinished.insert(&key, &[])?),
                    _ => {}
                }
                jobs.insert(&key, encode_job(&new))?;
                Ok((job, new))
            })
            .map_err(tx_err)
    }
}

/// A sled batch on one tree, applied every [`REGISTER_BATCH`] operations: sled keeps every node
/// version a batch replaces until the batch ends, so one batch of 100,000 removals (a run's
/// reservations at its end) held hundreds of megabytes. Used where atomicity across the whole
/// set is not needed (each caller says why).
struct Chunked<'a> {
    tree: &'a sled::Tree,
    batch: Batch,
    n: usize,
}

impl<'a> Chunked<'a> {
    fn new(tree: &'a sled::Tree) -> Chunked<'a> {
        Chunked {
            tree,
            batch: Batch::default(),
            n: 0,
        }
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) -> Result<(), StoreError> {
        self.batch.remove(key);
        self.counted()
    }

    fn insert(
        &mut self,
        key: impl Into<sled::IVec>,
        value: impl Into<sled::IVec>,
    ) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.counted()
    }

    /// Counts one operation; applies the batch when it holds [`REGISTER_BATCH`].
    fn counted(&mut self) -> Result<(), StoreError> {
        self.n += 1;
        if self.n == REGISTER_BATCH {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.n = 0;
            lane::let_steps_in();
        }
        Ok(())
    }

    /// Applies what is pending now.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.n > 0 {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.n = 0;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// A registration's writes, applied every [`REGISTER_BATCH`] jobs: first the run's job ranges
/// covering them (so a rollback, or the sweep after a crash, finds every job written), then
/// the jobs and their `unfinished` entries.
struct RegisterBatch<'a> {
    trees: &'a Trees,
    ranges: Ranges,
    jobs: Batch,
    unfinished: Batch,
    n: usize,
}

impl<'a> RegisterBatch<'a> {
    fn new(trees: &'a Trees, manifest: ManifestId) -> RegisterBatch<'a> {
        RegisterBatch {
            trees,
            ranges: Ranges {
                manifest,
                current: None,
            },
            jobs: Batch::default(),
            unfinished: Batch::default(),
            n: 0,
        }
    }

    /// Counts one job; applies the batch when it holds [`REGISTER_BATCH`].
    fn counted(&mut self) -> Result<(), StoreError> {
        self.n += 1;
        if self.n == REGISTER_BATCH {
            self.apply()?;
            lane::let_steps_in();
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        if self.n == 0 {
            return Ok(());
        }
        self.ranges.write(&self.trees.job_ranges)?;
        self.trees
            .jobs
            .apply_batch(std::mem::take(&mut self.jobs))?;
        self.trees
            .unfinished
            .apply_batch(std::mem::take(&mut self.unfinished))?;
        self.n = 0;
        Ok(())
    }
}

/// Makes the [`Registration::Conflict`] for a path another run holds (its id, the path).
type ConflictOf<'a> = dyn Fn(ManifestId, &str) -> Result<Option<Registration>, StoreError> + 'a;

/// Whether a reservation is listed under its owner in `reserved_by_manifest`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexed {
    Yes,
    No,
}

/// The range of consecutive job ids a registration is adding to.
struct Ranges {
    manifest: ManifestId,
    /// First and last id of the current range.
    current: Option<(JobId, JobId)>,
}

impl Ranges {
    /// Adds `id`: extends the current range, or writes it and starts another (an id taken
    /// meanwhile by another registration breaks the row).
    fn add(&mut self, id: JobId, tree: &Tree) -> Result<(), StoreError> {
        match &mut self.current {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => {
                self.write(tree)?;
                self.current = Some((id, id));
            }
        }
        Ok(())
    }

    /// Writes the current range as it is now.
    fn write(&self, tree: &Tree) -> Result<(), StoreError> {
        if let Some((first, last)) = self.current {
            tree.insert(pair_key(self.manifest, first), &id_key(last))?;
        }
        Ok(())
    }
}

fn conflict(id: JobId, expected: &'static str, found: &JobV1) -> StoreError {
    StoreError::Conflict {
        job: id,
        expected,
        found: found.state.name(),
    }
}

/// The key of `task`'s kept announcement: its id, and for a batch a `b` after it (Claid
/// numbers single tasks and batches apart, so one id may name one of each). A store from
/// before kinds were told apart has 8-byte keys for both; the body says which it is.
fn announcement_key(task: TaskRef) -> Vec<u8> {
    let mut key = id_key(task.id()).to_vec();
    if let TaskRef::Batch(_) = task {
        key.push(b'b');
    }
    key
}

/// A kept announcement's value (when it came, then its body) as (body, ms); `None` when it
/// does not read as one.
fn read_announcement(value: &[u8]) -> Option<(Vec<u8>, u64)> {
    let at_ms = u64::from_be_bytes(<[u8; 8]>::try_from(value.get(..8)?).ok()?);
    Some((value[8..].to_vec(), at_ms))
}

/// Whether a job in `state` answers for its key in `done_by_key`: done (its output is the
/// key's), or failed with its result kept (a write that failed: a later run of the same row
/// fetches that result again instead of paying for it, `intake::unchanged_state`).
fn answers_for_key(state: &JobState) -> bool {
    matches!(
        state,
        JobState::Done { .. }
            | JobState::Failed {
                unwritten: Some(_),
                ..
            }
    )
}

fn update_done_index(
    (jobs, done_by_key): (&TransactionalTree, &TransactionalTree),
    id: JobId,
    old: &JobV1,
    new: &JobV1,
) -> TxResult<()> {
    // A job `on_output_exists: skip` left done kept a file it did not make: it never answers
    // for its key.
    let was_done = answers_for_key(&old.state);
    let is_done = matches!(new.state, JobState::Done { skipped: false, .. });
    // A kept result answers for its key: the latest edit made for it (a done job's file,
    // if still there, is the same image; fetching it again costs a download, not a bill).
    // Of two kept results, the one Claid keeps longer.
    let kept = match &new.state {
        JobState::Failed {
            unwritten: Some(result),
            ..
        } => match done_by_key
            .get(new.key.as_bytes())?
            .and_then(|v| read_id(&v))
            .filter(|other| *other != id)
        {
            Some(other) => !jobs
                .get(id_key(other))?
                .and_then(|bytes| decode_job(&bytes).ok())
                .is_some_and(|other| match other.state {
                    JobState::Failed {
                        unwritten: Some(theirs),
                        ..
                    } => theirs.at_ms > result.at_ms,
                    _ => false,
                }),
            None => true,
        },
        _ => false,
    };
    if is_done || kept {
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

fn abort<T>(err: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

fn tx_err(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => StoreError::Db(err),
    }
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

/// A `job_ranges` entry: (run, first job id, last job id).
fn read_range(key: &[u8], last: &[u8]) -> Option<(ManifestId, JobId, JobId)> {
    let (manifest, first) = split_pair(key)?;
    Some((manifest, first, read_id(last)?))
}

fn split_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() != 16 {
        return None;
    }
    Some((read_id(&bytes[..8])?, read_id(&bytes[8..])?))
}

/// Has `job` name each connector of `renamed` (old → new) by its new name, in its input,
/// output destination and staged input; whether anything changed.
fn rename_in(job: &mut JobV1, renamed: &BTreeMap<String, String>) -> bool {
    if renamed.is_empty() {
        return false;
    }
    let rename = |uri: &str| -> Option<String> {
        let (connector, rest) = crate::storages::split_uri(uri)?;
        let new = renamed.get(connector)?;
        Some(format!("storage://{new}/{rest}"))
    };
    let mut changed = false;
    if !job.local
        && let Some(input) = rename(&job.input)
    {
        job.input = input;
        changed = true;
    }
    if let Some(staged) = job.staged.as_deref().and_then(rename) {
        job.staged = Some(staged);
        changed = true;
    }
    if let Some(folder) = crate::storages::destination_folder(&job.body).and_then(rename) {
        let mut body = (*job.body).clone();
        body["output"]["destination"] = serde_json::Value::String(folder);
        job.body = std::sync::Arc::new(body);
        changed = true;
    }
    changed
}

fn encode_job(job: &JobV1) -> Vec<u8> {
    // Serializing plain data structs to JSON cannot fail (no non-string map keys).
    serde_json::to_vec(&JobRecordRef::V1(job)).unwrap_or_default()
}

fn encode_manifest(m: &ManifestV1) -> Vec<u8> {
    serde_json::to_vec(&ManifestRecordRef::V1(m)).unwrap_or_default()
}

/// [`JobRecord`] by reference, so encoding does not clone the job.
#[derive(serde::Serialize)]
#[serde(tag = "v")]
enum JobRecordRef<'a> {
    V1(&'a JobV1),
}

#[derive(serde::Serialize)]
#[serde(tag = "v")]
enum ManifestRecordRef<'a> {
    V1(&'a ManifestV1),
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
