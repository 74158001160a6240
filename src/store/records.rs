//! Stored record types of the job store: versioned serde enums (`V1`) kept apart from domain
//! types, stored as JSON bytes so the database stays inspectable.

use serde::{Deserialize, Serialize};

use crate::codes::{FailureCode, StateName};

/// A job id: `generate_id()` of the database, stored big-endian so a scan is FIFO.
pub type JobId = u64;
/// A manifest id, from the same id generator as job ids.
pub type ManifestId = u64;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

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
    /// Where the run is in its lifecycle (the persisted part of [`crate::lifecycle`]).
    pub state: ManifestState,
    /// The counts of its jobs, written when the run ends, so that status and metrics never
    /// read the jobs of an ended run again. `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ManifestCounts>,
    /// Set (with `api.staging_delete`) before the run ends and cleared once its staged objects
    /// are deleted: an ended run that still has it set had that cleanup cut short (a crash,
    /// the bucket unreachable), and the next start does it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staging_cleanup: bool,
}

/// The persisted states of a manifest run. `Found`, `Validated`, `Reserved` and `Finishing` of
/// [`crate::lifecycle::Phase`] live only in memory: a crash there leaves either no record (the
/// registration never committed) or a `Running` one whose jobs have all ended, which the next
/// start finishes again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ManifestState {
    /// Jobs are being processed (also: all ended but some are held in doubt).
    #[serde(alias = "active")]
    Running,
    /// The file was saved again: no new submits; tasks at Claid finish and are recorded.
    Draining { since_ms: u64 },
    /// Every job ended; the report is written and the manifest moved per `on_manifest_done`.
    Finished { at_ms: u64 },
    /// Ended after a newer version of the same file replaced it.
    Superseded { at_ms: u64 },
}

impl ManifestState {
    /// Finished or superseded: its outputs are no longer reserved.
    pub fn is_ended(&self) -> bool {
        matches!(
            self,
            ManifestState::Finished { .. } | ManifestState::Superseded { .. }
        )
    }
}

/// Job counts of one manifest by state, plus what reports and metrics also count.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManifestCounts {
    pub queued: u64,
    pub submitting: u64,
    pub submitted: u64,
    pub downloading: u64,
    pub in_doubt: u64,
    pub done: u64,
    pub failed: u64,
    /// Taken over by a newer version of the manifest before they were submitted (stored as
    /// failed with code `superseded`; not in `failed`).
    #[serde(default)]
    pub superseded: u64,
    /// Of `done`: done without an API call (identical output already there).
    #[serde(default)]
    pub unchanged: u64,
    /// Sum of the jobs' `in_doubt` counters: submits that may have been duplicated.
    #[serde(default)]
    pub in_doubt_events: u64,
}

impl ManifestCounts {
    /// The count of jobs in `state`.
    pub fn of(&self, state: StateName) -> u64 {
        match state {
            StateName::Queued => self.queued,
            StateName::Submitting => self.submitting,
            StateName::Submitted => self.submitted,
            StateName::Downloading => self.downloading,
            StateName::InDoubt => self.in_doubt,
            StateName::Done => self.done,
            StateName::Failed => self.failed,
            StateName::Superseded => self.superseded,
        }
    }

    fn slot(&mut self, state: StateName) -> &mut u64 {
        match state {
            StateName::Queued => &mut self.queued,
            StateName::Submitting => &mut self.submitting,
            StateName::Submitted => &mut self.submitted,
            StateName::Downloading => &mut self.downloading,
            StateName::InDoubt => &mut self.in_doubt,
            StateName::Done => &mut self.done,
            StateName::Failed => &mut self.failed,
            StateName::Superseded => &mut self.superseded,
        }
    }

    /// Counts one more job as it is.
    pub fn add_job(&mut self, job: &JobV1) {
        *self.slot(job.state.name()) += 1;
        self.unchanged += u64::from(job.state.is_unchanged());
        self.in_doubt_events += u64::from(job.in_doubt);
    }

    /// Counts one more job from its summary.
    pub fn add_summary(&mut self, job: &JobSummary) {
        *self.slot(job.state.name()) += 1;
        self.unchanged += u64::from(job.state.unchanged);
        self.in_doubt_events += u64::from(job.in_doubt);
    }

    /// Counts a job as it is now instead of as it was.
    pub fn apply(&mut self, old: &JobV1, new: &JobV1) {
        let slot = self.slot(old.state.name());
        *slot = slot.saturating_sub(1);
        self.unchanged = self
            .unchanged
            .saturating_sub(u64::from(old.state.is_unchanged()));
        self.in_doubt_events = self.in_doubt_events.saturating_sub(u64::from(old.in_doubt));
        self.add_job(new);
    }

    /// Adds another manifest's counts.
    pub fn add(&mut self, other: &ManifestCounts) {
        for state in StateName::ALL {
            *self.slot(state) += other.of(state);
        }
        self.unchanged += other.unchanged;
        self.in_doubt_events += other.in_doubt_events;
    }

    /// Removes another manifest's counts.
    pub fn sub(&mut self, other: &ManifestCounts) {
        for state in StateName::ALL {
            let slot = self.slot(state);
            *slot = slot.saturating_sub(other.of(state));
        }
        self.unchanged = self.unchanged.saturating_sub(other.unchanged);
        self.in_doubt_events = self.in_doubt_events.saturating_sub(other.in_doubt_events);
    }

    pub fn total(&self) -> u64 {
        StateName::ALL.into_iter().map(|s| self.of(s)).sum()
    }

    /// Done, failed or superseded.
    pub fn terminal(&self) -> u64 {
        self.done + self.failed + self.superseded
    }

    /// Jobs at Claid or on their way there: submitting, submitted, downloading.
    pub fn in_flight(&self) -> u64 {
        self.submitting + self.submitted + self.downloading
    }

    /// Jobs the manifest still waits for: neither terminal nor held in doubt.
    pub fn open(&self) -> u64 {
        self.queued + self.in_flight()
    }
}

/// One image job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobV1 {
    /// Owning manifest; a job never outlives its manifest record.
    pub manifest: ManifestId,
    /// Position in the manifest, so reports keep the manifest's order.
    pub idx: u32,
    /// Incremental-processing key (README "Incremental"); indexed in `done_by_key` once done
    /// (or failed with its result kept).
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
    /// Submits of this job in a row whose answer was lost (sent again, or found mid-submit
    /// after a crash) since one was answered or a replay sent it again: past
    /// [`crate::pipeline::job::MAX_LOST_ANSWERS`] it is held in doubt rather than sent once
    /// more, in whatever run (counted per run, a gateway answering every submit too late had
    /// each `run --once` send the image a few more times, without end).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_answers: u32,
    /// Number of polls, for statistics and the poll schedule.
    pub polls: u32,
    /// The last few `x-request-id`s seen for this job, for support tickets.
    pub request_ids: Vec<String>,
    /// The Claid batch this job was last submitted in, if it went in a batch (the report shows
    /// it); `Submitted.task_id` is then the batch's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// How many images the daemon sent in that batch (the report shows it beside the batch id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_images: Option<u32>,
    /// A local input staged into the `api.staging` storage: the `storage://CONNECTOR/staging/<store id>/
    /// <sha256>.<ext>` URI Claid reads it from (recorded, durably, before any submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
    /// Claid accepted this job's submit (a 2xx) but its answer could not be read: the task
    /// exists and may be billed. Recorded (durably) before the wait for its webhook, so a
    /// crash during the wait holds the job in doubt at the next start, whatever `in_doubt`
    /// says, instead of sending it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepted_unread: bool,
    /// The objects already at this job's storage output key (and at its format's other
    /// extension) before it was submitted (`on_output_exists: replace`; empty: none was
    /// there; `None`: not looked at): the output check after Claid's answer does not take such
    /// an older object for the new edit. Recorded before the submit's intent is flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Vec<ObjectSeen>>,
    /// Where the storage of this job's output object pointed when it was last submitted (the
    /// storage's `url`, `s3://bucket/prefix`; `None`: not a storage output, or submitted by an
    /// older version). Claid writes under its connector's path at the time: a `url` changed
    /// since (the connector moved with it while the image was at Claid) is where the object
    /// is looked for when it is not at its key now, and copied from, instead of billing the
    /// image again. Recorded with the submit's intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_to: Option<String>,
    /// A storage input of a configured storage as the look before its last submit saw it
    /// (its key in the storage, ETag, time of writing): a later run of the same row whose
    /// input is another object now (replaced at its key) is made again, not `unchanged`.
    /// `None`: not looked at (a local file, a URL, a key with `%`, an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_seen: Option<ObjectSeen>,
    /// Time of the last change, for reports and stale-state diagnosis.
    pub updated_at_ms: u64,
}

impl JobV1 {
    /// Held in doubt, or queued again after a lost submit and not sent again yet: a task
    /// announced for that submit may still be adopted instead of paying for a second one.
    /// Failed as `task-timeout` or `task-lost` on task (or batch) `task_id`: Claid had not
    /// finished it (or its polls were refused), and its late result may still be taken.
    ///
    /// `batch` says which kind of task the announcement is of: Claid numbers single tasks and
    /// batches on endpoints of their own, so the same id may name one of each, and a batch's
    /// results taken by a single task's job (matched by file name) could deliver another
    /// image. A batch's job records its batch ([`JobV1::batch`]).
    pub fn timed_out_on(&self, task_id: u64, batch: bool) -> bool {
        (self.batch == Some(task_id)) == batch
            && matches!(
                self.state,
                JobState::Failed {
                    code,
                    task_id: Some(t),
                    ..
                } if t == task_id && code.result_may_still_come()
            )
    }

    /// The result a job downloading it keeps when it fails `code`: one whose write into the
    /// outbox failed (Claid made and billed it, and keeps it a day; a storage output's object,
    /// whose local copy `output_local_copy` could not write, stays in the bucket), a storage
    /// output's object that could not be read or read broken ([`FailureCode::is_object_read`]:
    /// a replay reads it again) or was not found after Claid reported it written
    /// ([`FailureCode::is_object_looked_for_again`]: a replay looks for it once more), and a
    /// result at a temporary URL a replay fetched again that failed for any reason (found gone,
    /// it is submitted again instead of failing). A first download that failed keeps none, nor
    /// does a storage object found gone when looked for again. A storage object keeps the
    /// sha256 of the bytes copied from it (`copy_of`, or given to `Store::mark_failed_keeping`),
    /// for the replay to tell it from an object put there since.
    pub fn unwritten_result(&self, code: FailureCode) -> Option<UnwrittenResult> {
        match &self.state {
            JobState::Downloading {
                url,
                width,
                height,
                copy_of,
                kept_since_ms,
                submitted_at_ms,
                ..
            } if code.is_local_write()
                || (code.is_object_read() || code.is_object_looked_for_again())
                    && url.starts_with("storage://")
                // A storage object looked at again that is missing (or not Claid's) is made
                // again, not kept for one more look.
                || kept_since_ms.is_some() && !url.starts_with("storage://") =>
            {
                Some(UnwrittenResult {
                    url: url.clone(),
                    width: *width,
                    height: *height,
                    // A storage object copied before: the bytes it must still have.
                    sha256: copy_of.clone(),
                    // Claid's day for it counts from no sooner than its submit.
                    at_ms: kept_since_ms
                        .or(*submitted_at_ms)
                        .unwrap_or(self.updated_at_ms),
                })
            }
            _ => None,
        }
    }

    pub fn waits_for_adoption(&self) -> bool {
        match self.state {
            JobState::InDoubt { .. } => true,
            JobState::Queued => self.in_doubt > 0,
            _ => false,
        }
    }

    /// `in_doubt` once the task of the lost submit this job waits for is adopted: that
    /// submit was the one Claid billed, and no second one was sent for it, so the doubt it
    /// counted is resolved (a job adopting its task while still submitting counted none).
    pub fn in_doubt_resolved(&self) -> u32 {
        if self.waits_for_adoption() {
            self.in_doubt.saturating_sub(1)
        } else {
            self.in_doubt
        }
    }
}

/// An object as a HEAD saw it: its key in the storage, its ETag and when it was last written
/// (milliseconds since the epoch, by the bucket's clock).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectSeen {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ms: Option<u64>,
}

impl ObjectSeen {
    /// `key` as a HEAD answered it now (`e_tag`, `modified_ms`).
    pub fn new(key: &str, e_tag: Option<String>, modified: Option<std::time::SystemTime>) -> Self {
        ObjectSeen {
            key: key.to_owned(),
            e_tag,
            modified_ms: modified.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
        }
    }

    /// How an error message names it: its time of writing and ETag, as known.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ms) = self.modified_ms {
            parts.push(format!("last written {}", crate::store::utc_seconds(ms)));
        }
        if let Some(tag) = &self.e_tag {
            parts.push(format!("ETag {}", crate::text::Escaped::str(tag)));
        }
        parts.join(", ")
    }

    /// Whether `later` holds this object's bytes: the same key and ETag (a copy of it, made
    /// since, has another time of writing).
    pub fn same_bytes(&self, later: &ObjectSeen) -> bool {
        self.key == later.key && self.e_tag.is_some() && self.e_tag == later.e_tag
    }

    /// Whether `later` is still this object: the same key, ETag and time of writing. A write
    /// changes the time even with the same bytes (and their ETag), so an object with neither
    /// known is never taken for the same.
    pub fn is_same(&self, later: &ObjectSeen) -> bool {
        self.key == later.key
            && (self.e_tag.is_some() || self.modified_ms.is_some())
            && self.e_tag == later.e_tag
            && self.modified_ms == later.modified_ms
    }
}

/// The job lifecycle (ARCHITECTURE.md "Crash safety"). The tag is the state's [`StateName`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
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
        /// A storage output's local copy fetched again by a later run (`output_local_copy`):
        /// the sha256 of the copy the earlier run wrote. An object that no longer has it was
        /// replaced in the bucket since, and is not taken for this image's result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy_of: Option<String>,
        /// A result an earlier run downloaded and could not write, fetched again by a replay
        /// ([`UnwrittenResult`]): when Claid made it (its day counts from there). Such a
        /// download that finds the result gone submits the image again instead of failing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_since_ms: Option<u64>,
        /// When its task (or batch) was submitted: Claid made the result after that, so the
        /// day it keeps it ends no sooner than a day after this. `None`: a synchronous
        /// upload's result (made as it was recorded), or a record from before this field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        submitted_at_ms: Option<u64>,
    },
    #[serde(alias = "in_doubt")]
    InDoubt {
        since_ms: u64,
        /// What Claid said that the daemon could not tie to one image when the safety valve
        /// held this one (errors of its batch that name no input): kept for its report row.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claid_said: Option<String>,
    },
    Done {
        path: String,
        bytes: u64,
        sha256: String,
        width: u32,
        height: u32,
        task_id: Option<u64>,
        unchanged: bool,
        /// `on_output_exists: skip` kept a file (or object) that was already there: the output
        /// is not this job's result, so it never answers for the job's key (README
        /// "Incremental").
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skipped: bool,
    },
    Failed {
        code: FailureCode,
        message: String,
        attempts: u32,
        /// The Claid task the job had when it failed (a task that ended in error or never
        /// finished), for the report and for Claid's support.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<u64>,
        /// The result Claid made (and billed) that could not be written into the outbox (a
        /// read-only filesystem, a full disk, a name too long): a replay fetches it again
        /// while Claid keeps it, instead of paying for the edit again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unwritten: Option<UnwrittenResult>,
    },
}

/// How long after it was made a result whose write failed is fetched again by a replay
/// rather than submitted again: Claid keeps a result at its temporary URL for a day, counted
/// from a moment a little before the daemon saw it (the last hour is left to that gap and to
/// clocks). A result found gone all the same is submitted again.
pub const UNWRITTEN_RESULT_KEPT: std::time::Duration = std::time::Duration::from_secs(23 * 3600);

/// A result Claid made and billed whose write into the outbox failed ([`JobState::Failed`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UnwrittenResult {
    /// Its temporary URL, or the storage output's object (`storage://CONNECTOR/key`) whose
    /// local copy could not be written.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// When the daemon first had it (milliseconds since the epoch): Claid keeps it a day.
    pub at_ms: u64,
    /// A storage object's: the sha256 of the bytes its copy was made of. A replay copies only
    /// an object that still has them (another put at its key since is not this result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl UnwrittenResult {
    /// A storage output's object, in the bucket for as long as nobody deletes it (not a
    /// temporary URL that Claid keeps a day).
    pub fn is_object(&self) -> bool {
        self.url.starts_with("storage://")
    }
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
    /// True when `on_output_exists: skip` kept what was already there.
    pub skipped: bool,
}

impl JobState {
    /// The state's stable name.
    pub fn name(&self) -> StateName {
        match self {
            JobState::Queued => StateName::Queued,
            JobState::Submitting { .. } => StateName::Submitting,
            JobState::Submitted { .. } => StateName::Submitted,
            JobState::Downloading { .. } => StateName::Downloading,
            JobState::InDoubt { .. } => StateName::InDoubt,
            JobState::Done { .. } => StateName::Done,
            JobState::Failed {
                code: FailureCode::Superseded,
                ..
            } => StateName::Superseded,
            JobState::Failed { .. } => StateName::Failed,
        }
    }

    /// The Claid task the state names, if any.
    pub fn task_id(&self) -> Option<u64> {
        match self {
            JobState::Submitted { task_id, .. } => Some(*task_id),
            JobState::Downloading { task_id, .. }
            | JobState::Done { task_id, .. }
            | JobState::Failed { task_id, .. } => *task_id,
            _ => None,
        }
    }

    /// The state's stable kebab-case name, as stored, counted and shown.
    pub fn kind(&self) -> &'static str {
        self.name().as_str()
    }

    /// Done without an API call: an identical output was already there.
    pub fn is_unchanged(&self) -> bool {
        matches!(
            self,
            JobState::Done {
                unchanged: true,
                ..
            }
        )
    }

    /// Done, Failed or held in doubt: nothing happens to it until a replay requeues it. A job
    /// under way is never requeued, since its task would be paid for twice.
    pub fn is_replayable(&self) -> bool {
        matches!(
            self,
            JobState::Done { .. } | JobState::Failed { .. } | JobState::InDoubt { .. }
        )
    }

    /// Whether Claid has billed (or may yet bill) the task this records: done (not skipped),
    /// or failed after Claid took its task (a `task-timeout`, a download or a write that
    /// failed). A task Claid ended in error made nothing. Sending it again is billed again,
    /// unless a replay fetches its result again ([`JobState::refetchable`]).
    pub fn billed(&self) -> bool {
        match self {
            JobState::Done { skipped, .. } => !skipped,
            // A synchronous upload's result names no task: written or fetched, it was made.
            JobState::Failed {
                unwritten: Some(_), ..
            } => true,
            JobState::Failed {
                task_id: None,
                code,
                ..
            } if code.is_result_download() => true,
            JobState::Failed {
                task_id: Some(_),
                code,
                ..
            } => *code != FailureCode::ClaidError,
            _ => false,
        }
    }

    /// Downloading a storage output's object (`storage://…`: checked in its bucket, and
    /// copied with `output_local_copy`), not a result at a temporary URL.
    pub fn downloads_object(&self) -> bool {
        matches!(self, JobState::Downloading { url, .. } if url.starts_with("storage://"))
    }

    /// A failed write's result a replay at `now_ms` fetches again instead of submitting the
    /// image again: Claid still keeps it ([`UNWRITTEN_RESULT_KEPT`]), or it is a storage
    /// output's object, which stays in the bucket (found gone, the image is made again).
    pub fn refetchable(&self, now_ms: u64) -> Option<&UnwrittenResult> {
        match self {
            JobState::Failed {
                unwritten: Some(result),
                ..
            } if result.is_object()
                || now_ms.saturating_sub(result.at_ms)
                    < UNWRITTEN_RESULT_KEPT.as_millis() as u64 =>
            {
                Some(result)
            }
            _ => None,
        }
    }

    /// The state that downloads again, at `now_ms`, the result this failed write kept
    /// ([`JobState::refetchable`]): its task (or batch) stays named, for a new URL should
    /// this one be refused.
    pub fn refetch(&self, now_ms: u64) -> Option<JobState> {
        let result = self.refetchable(now_ms)?;
        Some(JobState::Downloading {
            task_id: self.task_id(),
            url: result.url.clone(),
            width: result.width,
            height: result.height,
            copy_of: result.sha256.clone(),
            kept_since_ms: Some(result.at_ms),
            submitted_at_ms: None,
        })
    }

    /// Whether a replay at `now_ms` sends this image to Claid again, which bills it again:
    /// [`JobState::billed`], and not fetched again ([`JobState::refetchable`]).
    pub fn billed_again_by_replay(&self, now_ms: u64) -> bool {
        self.billed() && self.refetchable(now_ms).is_none()
    }

    /// Done because `on_output_exists: skip` kept what was already there.
    pub fn is_skipped(&self) -> bool {
        matches!(self, JobState::Done { skipped: true, .. })
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
            skipped: d.skipped,
        }
    }
}

/// The few fields of a job record that resuming and counting need. Decoding it skips the
/// request body and the history, so a scan over 100,000 jobs allocates next to nothing.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSummary {
    pub manifest: ManifestId,
    pub state: KindOnly,
    #[serde(default)]
    pub in_doubt: u32,
}

/// `state` reduced to its `kind`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindOnly {
    pub kind: StateName,
    /// Only present on `Done`.
    #[serde(default)]
    pub unchanged: bool,
    /// Only present on `Failed`.
    #[serde(default)]
    pub code: Option<FailureCode>,
}

impl KindOnly {
    /// The state's name, as [`JobState::name`] gives it.
    pub fn name(&self) -> StateName {
        match (self.kind, self.code) {
            (StateName::Failed, Some(FailureCode::Superseded)) => StateName::Superseded,
            (kind, _) => kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: FailureCode, task_id: Option<u64>) -> JobState {
        JobState::Failed {
            code,
            message: String::new(),
            attempts: 1,
            task_id,
            unwritten: None,
        }
    }

    /// A synchronous upload names no task: its result that could not be fetched was made and
    /// billed all the same (a replay's dry run did not count it), while an upload Claid
    /// refused, or whose edit ended in error, made nothing.
    #[test]
    fn an_uploads_result_that_could_not_be_fetched_counts_as_billed() {
        assert!(failed(FailureCode::ResultExpired, None).billed());
        assert!(failed(FailureCode::DownloadFailed, None).billed());
        assert!(failed(FailureCode::ResultExpired, Some(7)).billed());
        assert!(!failed(FailureCode::ClaidError, None).billed());
        assert!(!failed(FailureCode::ClaidBadRequest, None).billed());
        assert!(!failed(FailureCode::InputUnreadable, None).billed());
    }
}
