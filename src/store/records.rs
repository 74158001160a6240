//! Stored record types of the job store: versioned serde enums (`V1`) kept apart from domain
//! types, stored as JSON bytes so the database stays inspectable.

use serde::{Deserialize, Serialize};

/// A job id: `generate_id()` of the database, stored big-endian so a scan is FIFO.
pub type JobId = u64;
/// A manifest id, from the same id generator as job ids.
pub type ManifestId = u64;

/// The stored form of a manifest; the version tag lets a later schema read old databases.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "v")]
pub enum ManifestRecord {
    V1(ManifestV1),
}

/// The stored form of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "v")]
pub enum JobRecord {
    V1(JobV1),
}

/// One registered manifest. Its record is the commit point of a registration: jobs without
/// a manifest record are orphans of a crash and are swept on open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ManifestV1 {
    /// Path relative to the inbox, `/`-separated; the key of `manifest_by_rel`.
    pub rel: String,
    /// Hex SHA-256 of the manifest bytes, so a re-drop of the same file is recognised.
    pub sha256: String,
    /// Wall-clock registration time, for reports and ordering by humans.
    pub registered_at_ms: u64,
    /// Number of jobs registered with it, to tell when every job is terminal.
    pub n_jobs: u32,
    /// Whether the manifest still has work (or has been archived/reported).
    pub state: ManifestState,
}

/// Lifecycle of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManifestState {
    Active,
    Finished { at_ms: u64 },
}

/// One image job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobV1 {
    /// Owning manifest; a job never outlives its manifest record.
    pub manifest: ManifestId,
    /// Position in the manifest, so reports keep the manifest's order.
    pub idx: u32,
    /// Incremental-processing key (SPEC §5.4); indexed in `done_by_key` once done.
    pub key: String,
    /// The input URL, or the inbox-relative path for local files.
    pub input: String,
    /// True when `input` is a local file that must be uploaded.
    pub local: bool,
    /// The request body without `input` (`operations` and `output`); shared with the
    /// manifest's other jobs while registering.
    pub body: std::sync::Arc<serde_json::Value>,
    /// Output path relative to the outbox root.
    pub output_rel: String,
    /// Where the job is in its lifecycle.
    pub state: JobState,
    /// Number of submits started (incremented with `Submitting`, in the same write).
    pub attempts: u32,
    /// Number of times the job was found in doubt (a submit may have reached Claid).
    pub in_doubt: u32,
    /// Number of polls, for statistics and the poll schedule.
    pub polls: u32,
    /// The last few `x-request-id`s seen for this job, for support tickets.
    pub request_ids: Vec<String>,
    /// Time of the last change, for reports and stale-state diagnosis.
    pub updated_at_ms: u64,
}

/// The job lifecycle (SPEC §5.1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Submitting {
        since_ms: u64,
    },
    Submitted {
        task_id: u64,
        result_url: String,
        at_ms: u64,
    },
    Downloading {
        task_id: Option<u64>,
        url: String,
        width: u32,
        height: u32,
    },
    InDoubt {
        since_ms: u64,
    },
    Done {
        path: String,
        bytes: u64,
        sha256: String,
        width: u32,
        height: u32,
        task_id: Option<u64>,
        unchanged: bool,
    },
    Failed {
        code: String,
        message: String,
        attempts: u32,
    },
}

/// The fields of [`JobState::Done`], passed to `Store::mark_done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoneInfo {
    /// Absolute (or outbox-relative) path of the written output.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub task_id: Option<u64>,
    /// True when no API call was made because an identical output already exists.
    pub unchanged: bool,
}

impl JobState {
    /// The stable snake_case name of the state, as used in counts and conflict errors.
    pub fn kind(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Submitting { .. } => "submitting",
            JobState::Submitted { .. } => "submitted",
            JobState::Downloading { .. } => "downloading",
            JobState::InDoubt { .. } => "in_doubt",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
        }
    }

    /// Done, Failed or held in doubt: nothing happens to it until a replay requeues it. A job
    /// under way is never requeued, since its task would be paid for twice.
    pub fn is_replayable(&self) -> bool {
        matches!(
            self,
            JobState::Done { .. } | JobState::Failed { .. } | JobState::InDoubt { .. }
        )
    }

    /// Done or Failed: nothing more happens without a requeue.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Done { .. } | JobState::Failed { .. })
    }
}

impl From<DoneInfo> for JobState {
    fn from(d: DoneInfo) -> JobState {
        JobState::Done {
            path: d.path,
            bytes: d.bytes,
            sha256: d.sha256,
            width: d.width,
            height: d.height,
            task_id: d.task_id,
            unchanged: d.unchanged,
        }
    }
}

/// A job's lifecycle state without its data, as stored in `state.kind`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Queued,
    Submitting,
    Submitted,
    Downloading,
    InDoubt,
    Done,
    Failed,
}

/// The few fields of a job record that resuming and counting need. Decoding it skips the
/// request body and the history, so a scan over 100,000 jobs allocates next to nothing.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSummary {
    pub manifest: ManifestId,
    pub state: KindOnly,
}

/// `state` reduced to its `kind`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindOnly {
    pub kind: StateKind,
    /// Only present on `Done`.
    #[serde(default)]
    pub unchanged: bool,
}
