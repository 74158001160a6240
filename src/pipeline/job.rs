//! One job's task: submit (or upload) → poll → download → write → done, with the durability
//! points of ARCHITECTURE.md "Crash safety" and every failure classified where it happens. The task returns a typed
//! [`JobOutcome`]; it never touches its manifest's progress, report or file (the finisher does).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sha2::Digest;
use std::os::unix::fs::OpenOptionsExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::claid::wire::TaskStatus;
use crate::claid::wire::{TaskRef, TaskUpdate};
use crate::claid::{ClaidError, Client};
use crate::codes::FailureCode;
use crate::config::{InDoubtPolicy, OnOutputExists, PollConfig};
use crate::manifest::{self, Input, LocalFile};
use crate::metrics::Metrics;
use crate::output::{self, ExistsPolicy};
use crate::pipeline::dispatch::Dispatch;
use crate::pipeline::health::{HELD_FOR, HealthState, Hold, PollHold, Refusal};
use crate::pipeline::polls::{Kind, Polls, Seen};
use crate::pipeline::submitter::Queue;
use crate::pipeline::{Settings, on_file_pool};
use crate::retry::{self, Decision, Failure, GiveUp};
use crate::store::{DoneInfo, JobId, JobState, JobV1, ObjectSeen, Store, StoreError, now_ms};
use crate::text::Escaped;

/// Downloads whose bytes are not the image the result describes, before the job fails.
const MAX_MISMATCHED_DOWNLOADS: u32 = 3;
/// How far a bucket's clock (an object's `Last-Modified`) may be behind the daemon's when an
/// object is told to be written after a submit.
const BUCKET_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Attempts at something that failed with an error that may heal (staging an input, reading
/// an output object), before the job fails.
const MAX_HEALING_WRITES: u32 = 10;
/// Writes of an output that fail with an error that may heal (a full disk, too many open
/// files, an I/O error) before the job fails with that error's code: with the waits of
/// [`healing_write_wait`] (1 s doubling to 60 s), about 10 minutes, time for an operator to
/// free space. The job keeps its result meanwhile (downloaded again for each attempt), and
/// during a full disk or a lack of file descriptors no new image is submitted
/// ([`HealthState::block_writes`]).
const MAX_OUTPUT_WRITES: u32 = 16;

/// Poll answers that cannot be final yet, each asked again a bounded number of times before
/// it is believed (the poll step's budget in `retry` is for failures of the request; these are
/// answers): a task or batch DONE without its result (Claid may not have attached it yet), and
/// a 404 for a task Claid named moments ago (its store may lag its submit answer), and a 404
/// that is not Claid's own answer (a gateway's page). Claid's 404 for an older task (after a
/// restart) is believed at once: asking again costs rate budget and cannot bring it back.
#[derive(Debug, Default)]
pub(crate) struct Unsettled {
    done_without_result: u32,
    /// The waits granted to a DONE without its result so far.
    done_without_result_waited: Duration,
    partial: u32,
    not_found: u32,
    /// When the current run of 404s began (an answered poll ends it).
    not_found_since: Option<Instant>,
    refused: u32,
    unknown_status_told: bool,
}

/// How often an output object Claid reported written and not (yet) in the bucket is looked
/// for again before it counts as missing.
const MISSING_OBJECT_CHECKS: u32 = 4;

/// At most this many tasks a lost submit's webhook wait finds taken by other jobs with the
/// same request (see `Runner::adopt_lost`) before the job is held in doubt (a batch's too).
pub(crate) const MAX_SKIPPED_ADOPTIONS: usize = 16;

/// The waits before those looks (each from three quarters of it to all of it): 11 to 15 s in
/// all, as docs/storage.md says.
const MISSING_OBJECT_GAPS: [Duration; MISSING_OBJECT_CHECKS as usize] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// S3 tells an object's time of writing to the second (`Last-Modified`), so an edit Claid
/// writes within the second of the object it replaces, with the same bytes (a replay's, or a
/// second drop's), would look like that object, still there: after noting it, a job waits
/// until that second is over (on this machine's clock, with a tenth of a second to spare; at
/// most twice this when the bucket's clock runs ahead) before its submit.
const SAME_SECOND_MS: u64 = 1_100;

/// How often a 404 for a new task is asked again: with the backoff (0.5 s doubling, 30 s at
/// most, jittered) about half a minute, a minute at most, inside [`NEW_TASK`]. Three asks
/// (about 2 s) took a store lagging a few seconds behind the answer that named the task for
/// a lost task, and failed an image Claid billed as `task-lost`.
const UNSETTLED_ASKS: u32 = 7;

/// How long a DONE without its result is asked about again (the waits added up), time for
/// Claid to attach a result it was billed for (a poll is free): [`healing_write_wait`]'s
/// waits (1 s doubling, a minute at most), each at most `api.poll.max` (or 1 s, when it is
/// shorter); at most [`DONE_WITHOUT_RESULT_ASKS`] asks, which the window ends first. (Eight asks of waits up to a minute were not capped
/// by `api.poll.max`.)
const DONE_WITHOUT_RESULT_WINDOW: Duration = Duration::from_secs(180);
const DONE_WITHOUT_RESULT_ASKS: u32 = 240;

/// How often a batch DONE with results for only some of its images is asked again (about
/// 15 s with [`healing_write_wait`]'s waits).
const PARTIAL_RESULT_ASKS: u32 = 4;

/// How young a task is for a 404 to be asked again.
const NEW_TASK: Duration = Duration::from_secs(120);

/// How long a run of 404s that is asked again lasts at least before it is believed, whatever
/// `api.poll` says: a deploy or a gateway answering 404 for a few seconds is not Claid
/// forgetting a task it billed.
const NOT_FOUND_WINDOW: Duration = Duration::from_secs(30);

/// The shortest wait between two asks inside [`NOT_FOUND_WINDOW`], and the most asks: the
/// window costs at most about thirty polls.
const NOT_FOUND_GAP: Duration = Duration::from_secs(1);
const NOT_FOUND_MAX_ASKS: u32 = 30;

/// How often a 404 that is not Claid's own answer is asked again (within
/// [`NOT_FOUND_WINDOW`]) for a task older than [`NEW_TASK`].
const BARE_NOT_FOUND_ASKS: u32 = 3;

impl Unsettled {
    /// The wait before asking again about a DONE without its result (at most `cap`,
    /// `api.poll.max`, or 1 s), or `None` when it has been asked long or often enough
    /// ([`DONE_WITHOUT_RESULT_WINDOW`]).
    pub(crate) fn done_without_result(&mut self, cap: Duration) -> Option<Duration> {
        self.done_without_result += 1;
        if self.done_without_result > DONE_WITHOUT_RESULT_ASKS
            || self.done_without_result_waited >= DONE_WITHOUT_RESULT_WINDOW
        {
            return None;
        }
        let wait =
            healing_write_wait(self.done_without_result).min(cap.max(Duration::from_secs(1)));
        self.done_without_result_waited += wait;
        Some(wait)
    }

    /// The wait before asking again about a batch DONE with a result or an error for only
    /// some of its images, or `None` once asked [`PARTIAL_RESULT_ASKS`] times: results Claid
    /// attaches one by one come within seconds, and meanwhile the results that are there wait
    /// (and, for the first batch, the batches after it). Each wait at most `cap`
    /// (`api.poll.max`).
    pub(crate) fn partial_results(&mut self, cap: Duration) -> Option<Duration> {
        self.partial += 1;
        (self.partial <= PARTIAL_RESULT_ASKS).then(|| healing_write_wait(self.partial).min(cap))
    }

    /// Whether the ask just counted (by [`Unsettled::done_without_result`] or
    /// [`Unsettled::partial_results`]) is the first of its run: only that one is told at WARN,
    /// the asks after it at DEBUG (an answer that stays short was logged four times in 7 s).
    pub(crate) fn first_unsettled_ask(&self) -> bool {
        self.done_without_result + self.partial <= 1
    }

    /// The wait before asking again about a task (or batch) `age` old whose poll Claid
    /// refused (`err`, a failure of the job's own), and why, or `None` when the refusal is
    /// believed: a 404 for a young one ([`Unsettled::not_found_yet`]), another 4xx
    /// ([`Unsettled::refused_poll`]).
    pub(crate) fn refused(
        &mut self,
        err: &ClaidError,
        retry: &retry::Policy,
        age: Duration,
    ) -> Option<(Duration, AskAgain)> {
        match err.http_status()? {
            404 if err.bare_not_found() && age >= NEW_TASK => self
                .not_found_yet(retry, BARE_NOT_FOUND_ASKS)
                .map(|after| (after, AskAgain::NotClaids)),
            404 if age < NEW_TASK => self
                .not_found_yet(retry, UNSETTLED_ASKS)
                .map(|after| (after, AskAgain::NotFoundYet)),
            404 => None,
            _ => self
                .refused_poll(retry)
                .map(|after| (after, AskAgain::Refused)),
        }
    }

    /// The wait before asking again about a task answered 404, or `None` once it was asked
    /// `asks` times and the run of 404s has lasted [`NOT_FOUND_WINDOW`] (or
    /// [`NOT_FOUND_MAX_ASKS`] were made).
    fn not_found_yet(&mut self, retry: &retry::Policy, asks: u32) -> Option<Duration> {
        self.not_found += 1;
        let since = *self.not_found_since.get_or_insert_with(Instant::now);
        let believed = self.not_found > asks && since.elapsed() >= NOT_FOUND_WINDOW;
        (!believed && self.not_found <= NOT_FOUND_MAX_ASKS)
            .then(|| jitter(self.not_found, retry.base, retry.cap).max(NOT_FOUND_GAP))
    }

    /// A poll was answered: a later 404 starts a new run.
    pub(crate) fn answered(&mut self) {
        self.not_found = 0;
        self.not_found_since = None;
    }

    /// True the first time an unknown status is seen (it is told once).
    pub(crate) fn first_unknown_status(&mut self) -> bool {
        !std::mem::replace(&mut self.unknown_status_told, true)
    }

    /// The wait before asking again about a task whose poll Claid refused with a 4xx other
    /// than 404 and those of the account (a 400, 409 or 422 to a GET of a task it named):
    /// no reason to give up a task it billed at the first one. `None` once asked
    /// [`REFUSED_POLL_ASKS`] times.
    fn refused_poll(&mut self, retry: &retry::Policy) -> Option<Duration> {
        self.refused += 1;
        (self.refused <= REFUSED_POLL_ASKS).then(|| jitter(self.refused, retry.base, retry.cap))
    }
}

/// How often a poll refused with a 4xx (not 404) is asked again before the task counts as lost.
const REFUSED_POLL_ASKS: u32 = 5;

/// Why a refused poll is asked again (see [`Unsettled::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AskAgain {
    /// A 404 for a task Claid named moments ago.
    NotFoundYet,
    /// A 404 that is not Claid's own answer (a proxy's or gateway's page).
    NotClaids,
    /// Another 4xx to a poll of a task Claid named.
    Refused,
}

impl AskAgain {
    /// The warning, about a `what` ("task", "batch").
    pub(crate) fn warning(self, what: &str) -> String {
        match self {
            AskAgain::NotFoundYet => {
                format!("Claid does not know the {what} it named a moment ago; asking again")
            }
            AskAgain::NotClaids => format!(
                "A poll of a {what} Claid named was answered 404 by something that is not Claid (a proxy or gateway?); asking again"
            ),
            AskAgain::Refused => format!("Claid refused a poll of a {what} it named; asking again"),
        }
    }
}

/// How a job's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The output is written and recorded.
    Done,
    /// The job failed with this code (recorded).
    Failed(FailureCode),
    /// The submit may have reached Claid and the policy is `hold`: a human decides.
    Held,
    /// Back in the submit queue: refused systemically (paused; at its front), or to be made
    /// again (at its back, where a batch may take it).
    Requeued,
    /// The task stopped (shutdown, or a store error); the job resumes at the next start.
    Parked,
    /// The job was not this task's to run (its run was cancelled meanwhile).
    NotRun,
}

/// What [`Runner::copy_from_elsewhere`] did.
enum Former {
    /// Copied (what the write reports).
    Copied(crate::objects::ObjectInfo),
    /// No object there that may be the edit (none, empty, or one the edit replaces).
    NotThere,
    /// There and not copied, or a place that could not be looked at: why, in words.
    Failed(String),
}

/// What [`Runner::find_moved_output`] found of a storage output missing at its key.
enum Moved {
    /// Nothing: the object is missing.
    No,
    /// Copied to its key from where the storage pointed at the submit (once a check): looked
    /// at again.
    Copied,
    /// The job waits (the daemon stops, or the storage's connector moved).
    Parked,
    /// Written elsewhere and not copied: why, in words.
    Elsewhere(String),
}

/// What a job task needs.
pub struct RunnerDeps {
    pub store: Store,
    pub client: Client,
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    /// Read for the output and in-doubt policies at the moment they apply.
    pub settings: Arc<RwLock<Settings>>,
    pub metrics: Arc<Metrics>,
    /// Bounds concurrent downloads + output writes.
    pub downloads: Arc<Semaphore>,
    /// The submitter's `max_in_flight` permits: a job whose result waits for a folder the
    /// daemon may not write lends one back meanwhile ([`LentPermit`]).
    pub in_flight: Arc<Semaphore>,
    pub polls: Arc<Polls>,
    pub poll: PollConfig,
    /// The one retry policy: every HTTP attempt of a job is made here, once.
    pub retry: retry::Policy,
    /// Results announced by webhook.
    pub dispatch: Arc<Dispatch>,
    /// `webhook.poll_fallback` when webhooks are on: polling becomes the fallback.
    pub webhooks: Option<Duration>,
    pub health: Arc<HealthState>,
    /// Systemically refused jobs go back to its front.
    pub queue: Arc<Queue>,
    /// Storage outputs are checked (HEAD) in their bucket instead of downloaded.
    pub storages: crate::storages::Storages,
    /// `api.staging`: local inputs are staged into this storage and submitted from there.
    pub staging: Option<crate::storages::Staging>,
    /// How often each job's staged input was found gone before its submit, in this process
    /// (see [`MAX_RESTAGES`]).
    pub restaged: std::sync::Mutex<std::collections::HashMap<JobId, u32>>,
    /// What listings told of each storage's bucket ([`Runner::confirm_bucket`]).
    pub buckets: std::sync::Mutex<std::collections::HashMap<String, BucketSeen>>,
    /// One listing for [`Runner::confirm_bucket`] at a time per storage: the looks of a batch
    /// that found nothing at once wait for the first one's listing instead of each sending
    /// one. Per storage, as the gate is held through the listing's retry waits: a bucket away
    /// does not hold the confirmations of the others.
    pub bucket_gate:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub cancel: CancellationToken,
}

/// What listings told of one storage's bucket.
#[derive(Debug, Default, Clone, Copy)]
pub struct BucketSeen {
    /// When a listing last found it, after the last one that found it missing.
    exists_at: Option<Instant>,
    /// How many listings found it missing, or answered as no S3 bucket does (a web page's
    /// 404): a look made before one of them may have been answered "not found" by the
    /// missing bucket.
    missing: u64,
}

/// The least wait between two listings of a bucket found missing ([`Runner::confirm_bucket`]):
/// each listing is a billed request, and the retry policy's cap is `poll.max` (a second or two
/// in some configs, which listed twice a second for a whole outage).
const MISSING_BUCKET_RELIST: Duration = Duration::from_secs(5);

/// When a look at a bucket began, and how many listings had found it missing by then
/// ([`Runner::bucket_sightings`]).
#[derive(Debug, Clone, Copy)]
struct Sighting {
    at: Instant,
    missing: u64,
    /// The last listing before the look did not find the bucket: the look's "not found" may
    /// be the missing bucket's, whatever a later listing finds (taken as the object's, `skip`
    /// had an object it should keep overwritten when the bucket came back).
    unconfirmed: bool,
}

/// Times a job's staged input may be found gone before its submit and staged again, in one
/// process: something that keeps deleting `staging/` (a lifecycle rule, a cleanup script) had
/// the daemon upload and warn without end (4,109 uploads in two minutes), and `run --once`
/// never ended.
const MAX_RESTAGES: u32 = 3;

/// Runs job tasks; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    deps: Arc<RunnerDeps>,
}

/// How a job step ended.
enum Step {
    /// The job moved to another state; run the next step.
    Continue,
    /// The task ends with this outcome.
    End(JobOutcome),
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

impl Runner {
    pub fn new(deps: RunnerDeps) -> Runner {
        Runner {
            deps: Arc::new(deps),
        }
    }

    /// Fails the job, unbilled, when the outbox changed since intake so that its result could
    /// not be written (a file now where a folder of its path goes, a link, a folder where the
    /// file goes: see [`local_output_blocked`]). Looked at again just before a batch is sent:
    /// a batch assembled before a folder appeared at an output's place waited for the canary,
    /// was sent, billed, and the image failed `output-is-a-directory` (acceptance run).
    pub async fn refuse_blocked_output(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        let (code, why) = local_output_blocked(&self.deps.outbox, job)?;
        let message = format!(
            "not submitted: {why}; move it away, then `replay --failed` (nothing was billed)"
        );
        Some(self.failed(id, code, &message).await)
    }

    /// `on_output_exists` before anything is spent. With `skip`, an output already there makes
    /// the job done as `skipped` without a submit; with `fail`, it fails the job with
    /// `output-exists`. For a storage output this is the only place the policy applies (Claid
    /// writes the object itself); for a local one the write applies it again, for a file that
    /// appears meanwhile. `None`: submit as usual (`replace`, or nothing there). A bucket that
    /// does not answer (or refuses the daemon's keys) is waited out like an outage (parked
    /// when the daemon stops, or `run --once` gives up); one that answers the look with
    /// another error fails the job, unbilled: without the answer the policy cannot be kept
    /// (a blip of the bucket had the image submitted, billed, and the object the policy kept
    /// replaced).
    pub async fn settle_existing_output(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        let policy = self.settings().policies.on_output_exists;
        if policy == OnOutputExists::Replace {
            return self.take_lost_submits_object(id, job).await;
        }
        let Some(uri) = crate::storages::destination_of(&job.body, &job.output_rel) else {
            return self.settle_existing_file(id, job, policy).await;
        };
        let (storage, key) = self.output_storage(&uri)?;
        // Looked at again when what answered was found not to be the bucket (a proxy's page
        // answering for it: `skip` reported the image kept, never edited, and `fail` failed
        // it), once the endpoint answers as the bucket again
        // ([`Runner::unless_served_by_the_bucket`]).
        loop {
            let found = match self
                .output_objects((id, job), storage, (&uri, key), 1)
                .await
            {
                Ok(found) => found.into_iter().next(),
                Err(outcome) => return Some(outcome),
            };
            // An empty object is no output to keep: `skip` has Claid write it again (`fail`
            // refuses anything there, as it does an empty file).
            if found
                .as_ref()
                .is_some_and(|info| info.size == 0 && policy == OnOutputExists::Skip)
            {
                return None;
            }
            let Some(info) = found else {
                // No object: with `output_local_copy`, a file at the copy's place is an output
                // that exists too, which `fail` refuses and `skip` keeps before the submit (found
                // only at the copy, after Claid had written and billed the object: `skip` then
                // kept the old file and reported the billed image `skipped`).
                if storage.entry.output_local_copy {
                    return self.settle_existing_file(id, job, policy).await;
                }
                return None;
            };
            if let Some(outcome) = self.take_if_lost_submits(id, job, &uri, &info).await {
                return Some(outcome);
            }
            let key = &info.key;
            let object = storage.objects.uri(key);
            if policy == OnOutputExists::Fail {
                match self.unless_served_by_the_bucket(storage).await {
                    None => {}
                    // The endpoint answers as the bucket again: looked at afresh.
                    Some(Step::Continue) => continue,
                    Some(Step::End(outcome)) => return Some(outcome),
                }
                let message =
                    format!("the object {object} already exists (`on_output_exists: fail`)");
                return Some(self.failed(id, FailureCode::OutputExists, &message).await);
            }
            // Its size, as a kept file's is reported, read from its header (a few KiB). An object
            // that does not start as any image format does is no output to keep either (a text file, a page a proxy
            // answered with): made again, as an empty one is (it was kept and reported `skipped`,
            // 0×0). One that cannot be read now is kept.
            let (width, height) = match object_ends(&storage.objects, key, info.size).await {
                Ok((head, _)) => match output::check::dimensions(&head, (0, 0)) {
                    Some(size) => size,
                    // An image whose size lies past the header read (a long EXIF block): kept.
                    // (Read whole, it has no size anywhere: no image.)
                    None if output::check::format_of(&head).is_some()
                        && (head.len() as u64) < info.size =>
                    {
                        (0, 0)
                    }
                    None => {
                        match self.unless_served_by_the_bucket(storage).await {
                            None => {}
                            // The endpoint answers as the bucket again: looked at afresh.
                            Some(Step::Continue) => continue,
                            Some(Step::End(outcome)) => return Some(outcome),
                        }
                        warn!(job_id = id, object = %object, bytes = info.size, "The object at the output's key is no image, so `on_output_exists: skip` does not keep it: Claid writes the edit there");
                        return None;
                    }
                },
                Err(_) => {
                    match self.unless_served_by_the_bucket(storage).await {
                        None => {}
                        // The endpoint answers as the bucket again: looked at afresh.
                        Some(Step::Continue) => continue,
                        Some(Step::End(outcome)) => return Some(outcome),
                    }
                    (0, 0)
                }
            };
            let done = DoneInfo {
                path: object.clone(),
                bytes: info.size,
                sha256: String::new(),
                width,
                height,
                task_id: None,
                unchanged: false,
                skipped: true,
            };
            return self.record_skipped(id, done).await;
        }
    }

    /// `on_output_exists: replace` for a job whose submit's answer was lost: the objects at its
    /// key were noted before that submit ([`JobV1::replaces`]), so an object there now that is
    /// none of them is that submit's output, written and billed, and is taken as its result
    /// ([`Runner::take_if_lost_submits`]) instead of a second submit billing the image again.
    /// `None`: submit as usual (nothing new there, nothing noted, or not a storage output).
    async fn take_lost_submits_object(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        if !(job.waits_for_adoption() && job.attempts > 0) || job.replaces.is_none() {
            return None;
        }
        let uri = crate::storages::destination_of(&job.body, &job.output_rel)?;
        let (storage, key) = self.output_storage(&uri)?;
        // The key and its twin with the format's other extension, where Claid may have
        // written: the lost submit's object may be at the twin while a noted one is at the key.
        let found = match self
            .output_objects((id, job), storage, (&uri, key), 2)
            .await
        {
            Ok(found) => found,
            Err(outcome) => return Some(outcome),
        };
        // Where the storage's connector pointed before (its `url` moved with the connector
        // since the lost submit, or the connector moved during a run): Claid wrote there. An
        // object at the key with the bytes of one the edit replaced is then a copy of the
        // earlier edit (a catalogue copied to the new place), not the lost submit's.
        let elsewhere = self.former_places(job, storage).await;
        for info in &found {
            let seen = ObjectSeen::new(&info.key, info.e_tag.clone(), info.last_modified);
            if !elsewhere.is_empty() && job.replaces.iter().flatten().any(|b| b.same_bytes(&seen)) {
                continue;
            }
            if let Some(outcome) = self.take_if_lost_submits(id, job, &uri, info).await {
                return Some(outcome);
            }
        }
        if elsewhere.is_empty() {
            return None;
        }
        for key in crate::objects::output_keys(key) {
            match self
                .copy_from_elsewhere((id, job), storage, &elsewhere, &key)
                .await
            {
                Former::Copied(info) => {
                    let info = crate::objects::ObjectInfo { key, ..info };
                    return self.take_if_lost_submits(id, job, &uri, &info).await;
                }
                // There, maybe billed, and not copied (or the place could not be looked at):
                // failed for a replay to look again, not sent again.
                Former::Failed(why) => {
                    let code = FailureCode::ObjectMissing;
                    return Some(self.failed(id, code, &object_read_failed(code, &why)).await);
                }
                Former::NotThere => {}
            }
        }
        None
    }

    /// Takes the object `info` at a storage output's key (`uri`) as the result of the job's
    /// lost submit, and runs on from there; `None` when it cannot be that submit's.
    async fn take_if_lost_submits(
        &self,
        id: JobId,
        job: &JobV1,
        uri: &str,
        info: &crate::objects::ObjectInfo,
    ) -> Option<JobOutcome> {
        let (storage, _) = self.output_storage(uri)?;
        let key = &info.key;
        let object = storage.objects.uri(key);
        // A job whose submit may have reached Claid (its answer lost: counted in doubt) and
        // that was submitted because nothing was at its key then (else `fail`/`skip` would
        // not have sent it), or, under `replace`, with the objects there then noted: an object
        // there now (not one noted) is most likely that submit's output, written and billed. Taken as the result and checked as any output object (with its local
        // copy); `fail` failed it as `output-exists`, every replay again, and `skip` reported
        // it kept without the copy.
        // (An object noted before a submit, `replace` reloaded to `fail`/`skip` since, is not
        // that submit's.)
        let noted_before = job.replaces.iter().flatten().any(|before| {
            before.is_same(&ObjectSeen::new(
                key,
                info.e_tag.clone(),
                info.last_modified,
            ))
        });
        if job.waits_for_adoption() && job.attempts > 0 && info.size > 0 && !noted_before {
            let (connector, _) = crate::storages::split_uri(uri)?;
            let written = format!("storage://{connector}/{key}");
            info!(job_id = id, object = %object, "The output object is there after a submit whose answer was lost: taken as that submit's result, not submitted again");
            return Some(
                match self.deps.store.take_written_object(id, &written).await {
                    // Run on from the state now recorded: the object's check, or (a webhook
                    // adopted the lost submit's task meanwhile: `Conflict`) that task's poll.
                    Ok(_) | Err(StoreError::Conflict { .. }) => Box::pin(self.run(id)).await,
                    Err(err) => {
                        error!(error = %err, "Cannot record the job's output object");
                        JobOutcome::Parked
                    }
                },
            );
        }
        None
    }

    /// `on_output_exists: replace` with a storage output, before the job's submit: the objects
    /// already at its key and at the key with its format's other extension (an earlier edit)
    /// are noted ([`JobV1::replaces`]; none there is noted too, so they are asked once), so
    /// that the check after Claid's answer tells Claid's new object from them (a connector
    /// pointing elsewhere since the start, or a DONE without the write, left the earlier edit
    /// there, recorded done). Not for a job waiting to adopt the task of a lost submit: the
    /// object there may be that task's. A bucket that does not answer (or refuses the daemon's
    /// keys) is waited out, and one that answers the look with another error fails the job,
    /// unbilled, as in [`Runner::settle_existing_output`]: with nothing noted, the check after
    /// the task took whatever object was there, the earlier edit too, for the new one.
    ///
    /// Returns how long the caller must wait before the submit: S3 tells the time of writing
    /// to the second, so while the second a noted object was written in lasts, Claid's object
    /// written with the same bytes would look the same ([`SAME_SECOND_MS`]; zero otherwise).
    /// `Err`: the job is not submitted (failed, or parked).
    pub async fn note_replaced_objects(
        &self,
        id: JobId,
        job: &JobV1,
    ) -> Result<Duration, JobOutcome> {
        if job.replaces.is_some()
            || job.waits_for_adoption()
            || self.settings().policies.on_output_exists != OnOutputExists::Replace
        {
            return Ok(Duration::ZERO);
        }
        let Some(uri) = crate::storages::destination_of(&job.body, &job.output_rel) else {
            return Ok(Duration::ZERO);
        };
        let Some((storage, key)) = self.output_storage(&uri) else {
            return Ok(Duration::ZERO);
        };
        let seen: Vec<ObjectSeen> = self
            .output_objects((id, job), storage, (&uri, key), 2)
            .await?
            .into_iter()
            .map(|info| ObjectSeen::new(&info.key, info.e_tag, info.last_modified))
            .collect();
        // A time of writing told to the second (S3's `Last-Modified`; a time with milliseconds
        // is told apart anyway): the second it names must be over before Claid writes.
        let newest_second = seen
            .iter()
            .filter_map(|seen| seen.modified_ms)
            .filter(|ms| ms % 1000 == 0)
            .max();
        if let Err(err) = self.deps.store.note_replaced_objects(id, seen).await {
            debug!(error = %err, job_id = id, "The objects an edit replaces were not noted");
            return Ok(Duration::ZERO);
        }
        Ok(newest_second.map_or(Duration::ZERO, |ms| {
            let left = (ms + SAME_SECOND_MS).saturating_sub(crate::store::now_ms());
            Duration::from_millis(left.min(2 * SAME_SECOND_MS))
        }))
    }

    /// The objects at a storage output's key (`uri`, `key` in `storage`) and at its other
    /// extension (up to `wanted`), looked at before the submit. A bucket away or refusing the
    /// daemon's keys is waited out ([`Runner::through_bucket_outage`]; `Err(Parked)` when the
    /// daemon stops or `run --once` gives up: the job stays queued); any other error fails
    /// the job, unbilled, naming the object and the fix.
    async fn output_objects(
        &self,
        (id, job): (JobId, &JobV1),
        storage: &crate::storages::OpenStorage,
        (uri, key): (&str, &str),
        wanted: usize,
    ) -> Result<Vec<crate::objects::ObjectInfo>, JobOutcome> {
        loop {
            let sightings = self.bucket_sightings(storage);
            return match self
                .through_bucket_outage(storage, || objects_at(storage, key, wanted))
                .await
            {
                // Nothing there is an answer only from a bucket that exists.
                Ok(found) if found.is_empty() => {
                    match self.confirm_bucket(storage, sightings).await {
                        Ok(true) => continue,
                        Ok(false) => Ok(found),
                        Err(()) => Err(JobOutcome::Parked),
                    }
                }
                Ok(found) => Ok(found),
                Err(None) => Err(JobOutcome::Parked),
                Err(Some(err)) => {
                    let message = format!(
                        "not submitted: cannot see whether the output object {} is there ({err}), which must be known before Claid writes it; {}: `replay --failed` once the bucket answers",
                        crate::text::Escaped::str(uri),
                        nothing_billed(job)
                    );
                    Err(self.failed(id, object_failure(&err), &message).await)
                }
            };
        }
    }

    /// The configured storage a job's output object (`storage://CONNECTOR/key`) goes to, and
    /// its key there; `None` when no storage of the config has that connector.
    fn output_storage<'a>(
        &'a self,
        uri: &'a str,
    ) -> Option<(&'a crate::storages::OpenStorage, &'a str)> {
        let (connector, key) = crate::storages::split_uri(uri)?;
        Some((self.deps.storages.by_connector(connector)?, key))
    }

    /// The `url` of the storage a job's output object goes into now, recorded with its submit
    /// ([`JobV1::submitted_to`]); `None` for an output downloaded into the outbox.
    pub fn submitted_to(&self, job: &JobV1) -> Option<String> {
        let uri = crate::storages::destination_of(&job.body, &job.output_rel)?;
        let (storage, _) = self.output_storage(&uri)?;
        Some(storage.entry.url())
    }

    /// A job that would read from or write into a storage held until a restart
    /// ([`HealthState::storage_held`]: its connector at Claid found pointing elsewhere during
    /// the run, or taken out of the config) is not submitted: Claid would write its object
    /// where the daemon does not look. It stays queued for the next start, whose check
    /// compares them again. `None`: submit as usual.
    pub fn held_for_storage(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        let deps = &*self.deps;
        let input = (!job.local).then(|| input_of(job).to_owned());
        let output = crate::storages::destination_of(&job.body, &job.output_rel);
        // An output or a staged input in a storage no longer in the config (taken out while
        // the job was queued): Claid would write where the daemon cannot look, so the
        // connector is held as when an output check finds it so (`run --once` ends 64). (Such
        // jobs were sent and billed, while the run ended saying the storage was held.)
        for (uri, what) in [(&output, "output"), (&job.staged, "staged input")] {
            let Some((connector, _)) = uri.as_deref().and_then(crate::storages::split_uri) else {
                continue;
            };
            if deps.storages.by_connector(connector).is_some() {
                continue;
            }
            let why = format!(
                "no storage of the config has the connector \"{}\", which a queued job's {what} is in: put its `storages` entry back and restart the daemon (its images are not sent meanwhile)",
                crate::text::Escaped::str(connector)
            );
            if deps.health.hold_storage(connector, why.clone()) {
                error!(job_id = id, "{why}");
            }
            return Some(JobOutcome::Parked);
        }
        // By storage name, and by connector name (a storage taken out of the config is held
        // under its connector's).
        let mut names: Vec<String> = Vec::new();
        for uri in [input, job.staged.clone(), output].into_iter().flatten() {
            if let Some((connector, _)) = crate::storages::split_uri(&uri) {
                names.push(connector.to_owned());
            }
            if let Some((storage, _)) = self.output_storage(&uri) {
                names.push(storage.name.clone());
            }
        }
        if job.local
            && let Some(staging) = &deps.staging
        {
            names.push(staging.storage.name.clone());
        }
        let why = names
            .iter()
            .find_map(|name| deps.health.storage_held(name))?;
        debug!(job_id = id, why = %why, "Not submitted: a storage it uses is held until a restart; the job waits for it");
        Some(JobOutcome::Parked)
    }

    /// Holds `storage` until a restart: Claid's connector points elsewhere now (`moved`). The
    /// place it points at is noted in the store ([`Store::note_storage_place`]): every job
    /// whose object is not at its key looks there at the next start, whichever of the
    /// storage's `url` and the connector is made to match the other.
    async fn hold_moved_storage(
        &self,
        storage: &crate::storages::OpenStorage,
        moved: crate::storages::ConnectorMoved,
    ) {
        let deps = &*self.deps;
        let crate::storages::ConnectorMoved { why, place } = moved;
        if let Some(place) = place
            && let Err(err) = deps.store.note_storage_place(&storage.name, &place).await
        {
            error!(error = %err, storage = %storage.name, place = %place, "Where the storage's connector points now could not be recorded: objects Claid wrote there are not looked for there after a restart");
        }
        if deps.health.hold_storage(&storage.name, why.clone()) {
            error!(storage = %storage.name, error = %why, "Claid's connector changed during the run: it reads and writes this storage's objects where the daemon does not look. No image reading or writing this storage is submitted until the daemon restarts (its check compares them again); the images whose objects are missing wait for that restart, not billed again (`run --once` ends 64)");
        }
    }

    /// Claid failed a job that reads a storage input (a `storage://` row of a configured
    /// storage, or a staged input) or writes a storage output (its answer came at
    /// `answered_at`): when that storage's connector at Claid points elsewhere now (compared
    /// again; the input's storage first), Claid looked for the input where the daemon did not
    /// put or check it, or could not write there. The storage is held until a restart
    /// ([`Runner::hold_moved_storage`]) and the job goes back to the queue instead of failing
    /// (each image sent into the moved connector failed, and batches kept being sent).
    /// `None`: the failure stands.
    pub async fn held_for_moved_input(
        &self,
        id: JobId,
        job: &JobV1,
        answered_at: std::time::Instant,
    ) -> Option<JobOutcome> {
        let deps = &*self.deps;
        let input = match &job.staged {
            Some(staged) => Some(staged.clone()),
            None if !job.local => Some(input_of(job).to_owned()),
            None => None,
        };
        // Its input's storage, then its output's (Claid could not write there).
        let output = crate::storages::destination_of(&job.body, &job.output_rel);
        let mut held = None;
        for uri in [input, output].into_iter().flatten() {
            let Some(storage) = crate::storages::split_uri(&uri)
                .and_then(|(connector, _)| deps.storages.by_connector(connector))
            else {
                continue;
            };
            if deps.health.storage_held(&storage.name).is_none() {
                let Some(moved) = deps
                    .storages
                    .recheck(storage, &deps.client, answered_at)
                    .await
                else {
                    continue;
                };
                self.hold_moved_storage(storage, moved).await;
            }
            held = Some(storage);
            break;
        }
        let storage = held?;
        match deps.store.requeue(id, false).await {
            Ok(_) => {
                info!(job_id = id, storage = %storage.name, "Claid could not make the image: it reads or writes a storage whose connector moved; the job waits in the queue for the restart");
            }
            Err(err) => {
                error!(error = %err, job_id = id, "Cannot put the job back in the queue; it resumes at the next start");
            }
        }
        Some(JobOutcome::Parked)
    }

    /// The other places Claid may have written a job's output object: where its storage
    /// pointed when it was submitted ([`JobV1::submitted_to`]), and where the storage's
    /// connector was found pointing during a run ([`Store::storage_places`]), when they are
    /// not where the storage points now. Empty for a daemon whose connectors never moved.
    async fn former_places(
        &self,
        job: &JobV1,
        storage: &crate::storages::OpenStorage,
    ) -> Vec<crate::objects::ObjectStorage> {
        let mut urls: Vec<String> = job.submitted_to.iter().cloned().collect();
        match self.deps.store.storage_places(&storage.name).await {
            Ok(places) => urls.extend(places),
            Err(err) => {
                warn!(error = %err, storage = %storage.name, "The places the storage's connector pointed at before could not be read; the object is looked for at its key only");
            }
        }
        let now = storage.entry.url();
        let mut seen = std::collections::HashSet::new();
        urls.into_iter()
            .filter(|url| *url != now && seen.insert(url.clone()))
            .filter_map(|url| storage.former(&url))
            .collect()
    }

    /// Copies the object at `key` found at one of `places` ([`Runner::former_places`]: where
    /// Claid wrote while the storage's connector pointed there) to `key` of the storage, when
    /// one is there that is not an object the edit replaces. One look and one copy each, at
    /// that place's own risk: an outage or a refusal there is not the storage's (it neither
    /// waits nor is told in `/healthz`), and is said in `Failed` when nothing was found.
    async fn copy_from_elsewhere(
        &self,
        (id, job): (JobId, &JobV1),
        storage: &crate::storages::OpenStorage,
        places: &[crate::objects::ObjectStorage],
        key: &str,
    ) -> Former {
        let mut failed = None;
        for place in places {
            let (from, to) = (place.uri(key), storage.objects.uri(key));
            let found = match place.head(key).await {
                Ok(info) => info,
                Err(crate::objects::ObjectError::NotFound { .. }) => continue,
                Err(err) => {
                    failed.get_or_insert(format!(
                        "Claid may have written it at {from}, where the storage `{}`'s connector pointed before, and that place answered: {err}; copy it to {to} if it is there",
                        storage.name
                    ));
                    continue;
                }
            };
            if !may_be_the_edit(job, key, &found) {
                continue;
            }
            let max = self.settings().limits.max_download_bytes;
            return match storage.objects.copy_from(place, key, max).await {
                Ok(info) => {
                    warn!(job_id = id, from = %from, to = %to, storage = %storage.name, "The output object was written where the storage's connector pointed before (its `url` or Claid's connector changed since): copied to where the storage points now, not billed again");
                    Former::Copied(info)
                }
                Err(err) => Former::Failed(format!(
                    "Claid wrote it at {from}, where the storage `{}`'s connector pointed before, and it could not be copied to {to} ({err}): copy it there",
                    storage.name
                )),
            };
        }
        failed.map_or(Former::NotThere, Former::Failed)
    }

    /// A storage output not at its key after Claid's answer (or still the object the edit
    /// replaces) may have been written where the daemon does not look, rather than not at all:
    /// - where its connector pointed before ([`Runner::former_places`]: the storage's `url`
    ///   at the submit, changed since with the connector, or a place the connector was found
    ///   pointing at during a run): the object found there is copied to the key, not billed
    ///   again;
    /// - where Claid's connector points now, moved at Claid during the run: compared again
    ///   ([`crate::storages::Storages::recheck`], by a listing begun after `looked_at`, the
    ///   look that found the object missing); found so, the storage is held (an ERROR,
    ///   `/healthz`; no image of it is submitted; `run --once` ends 64), the place noted in
    ///   the store ([`Store::note_storage_place`]), and the job waits for a restart: with the
    ///   `url` made the connector's, its object is found there; with the connector moved back
    ///   instead, it is copied from there.
    async fn find_moved_output(
        &self,
        (id, job): (JobId, &JobV1),
        (storage, key): (&crate::storages::OpenStorage, &str),
        looked_at: Instant,
        copied: &mut bool,
    ) -> Moved {
        let deps = &*self.deps;
        if !*copied {
            let places = self.former_places(job, storage).await;
            match self
                .copy_from_elsewhere((id, job), storage, &places, key)
                .await
            {
                Former::Copied(_) => {
                    *copied = true;
                    return Moved::Copied;
                }
                Former::Failed(why) => return Moved::Elsewhere(why),
                Former::NotThere => {}
            }
        }
        if deps.health.storage_held(&storage.name).is_none() {
            let Some(moved) = deps
                .storages
                .recheck(storage, &deps.client, looked_at.into_std())
                .await
            else {
                return Moved::No;
            };
            self.hold_moved_storage(storage, moved).await;
        }
        Moved::Parked
    }

    /// Before one more look at a storage output that is not Claid's new object (yet): waits,
    /// up to [`MISSING_OBJECT_CHECKS`] looks ([`MISSING_OBJECT_GAPS`]: 11 to 15 s in all).
    /// `Some(true)` to look again, `Some(false)` when the daemon stops meanwhile, `None` when
    /// the looks are spent.
    async fn look_again(&self, looks: &mut u32) -> Option<bool> {
        if *looks >= MISSING_OBJECT_CHECKS {
            return None;
        }
        let share = rand::Rng::random_range(&mut rand::rng(), 0.75..=1.0);
        let gap = MISSING_OBJECT_GAPS[*looks as usize].mul_f64(share);
        *looks += 1;
        Some(self.wait(gap).await)
    }

    /// [`Runner::settle_existing_output`] for a local output: a file already at the output
    /// path is kept (`skip`: the job is done as `skipped`, with that file's size, hash and
    /// dimensions) or fails the job (`fail`), before the submit.
    async fn settle_existing_file(
        &self,
        id: JobId,
        job: &JobV1,
        policy: OnOutputExists,
    ) -> Option<JobOutcome> {
        let path = self.deps.outbox.join(&job.output_rel);
        // A symlink or anything else at the path is the write's to refuse, with its reason;
        // an empty file is no output to keep (`skip` replaces it, `fail` refuses it).
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return None;
        };
        if !meta.is_file() || (meta.len() == 0 && policy == OnOutputExists::Skip) {
            return None;
        }
        if policy == OnOutputExists::Fail {
            let message = format!(
                "output {} already exists (`on_output_exists: fail`); nothing was submitted",
                Escaped::path(&path)
            );
            return Some(self.failed(id, FailureCode::OutputExists, &message).await);
        }
        let kept = path.clone();
        let Ok(done) = on_file_pool(move || kept_file(&kept)).await else {
            return None;
        };
        self.record_skipped(id, done).await
    }

    /// Records a job `on_output_exists: skip` left done; `None` when that cannot be recorded
    /// (the job then goes on as usual).
    async fn record_skipped(&self, id: JobId, done: DoneInfo) -> Option<JobOutcome> {
        let path = done.path.clone();
        match self.deps.store.mark_done(id, done).await {
            Ok(_) => {
                info!(job_id = id, output = %Escaped::str(&path), "The output exists; kept (`on_output_exists: skip`)");
                Some(JobOutcome::Done)
            }
            Err(err) => {
                warn!(error = %err, job_id = id, "Cannot record the skipped job; it goes on");
                None
            }
        }
    }

    /// A staged input that is gone from the bucket before the submit (a lifecycle rule, a
    /// cleanup of another daemon sharing the staging prefix, a hand): the input is staged
    /// again and the job goes back to the queue (`Some(NotRun)`), instead of Claid failing it
    /// with "object not found". A bucket that does not answer is waited out like any outage
    /// of it (Claid could not read the input either: submitted, every image of the batch
    /// failed); given up (`run --once` at `api.unreachable_timeout`), the job stays queued for
    /// the next run (`Some(Parked)`). `None`: the object is there (or the bucket answered
    /// otherwise: Claid's answer will say).
    pub async fn restage_if_gone(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        let deps = &*self.deps;
        let (Some(uri), Some(staging)) = (&job.staged, &deps.staging) else {
            return None;
        };
        if !job.local {
            return None;
        }
        let key = staging.key_of(uri)?;
        let name = &staging.storage.name;
        let mut attempts = deps.retry.start(retry::Step::Upload);
        loop {
            let sightings = self.bucket_sightings(&staging.storage);
            match staging.storage.objects.head(key).await {
                Err(crate::objects::ObjectError::NotFound { .. }) => {
                    // Not found in a bucket that is gone says nothing of the staged copy:
                    // staged again there, it would be an upload into nothing, counted
                    // against the job's restages.
                    match self.confirm_bucket(&staging.storage, sightings).await {
                        Ok(true) => continue,
                        Ok(false) => {
                            deps.health.storage_ok(name);
                            break;
                        }
                        Err(()) => return Some(JobOutcome::Parked),
                    }
                }
                Err(err) if bucket_away(&err) => {
                    if !self
                        .wait_for_bucket(&mut attempts, (id, name), &err, "the staged input")
                        .await
                    {
                        return Some(JobOutcome::Parked);
                    }
                }
                Ok(_) => {
                    deps.health.storage_ok(name);
                    return None;
                }
                Err(err) => {
                    bucket_answered(&deps.health, name, &err);
                    return None;
                }
            }
        }
        let restaged = {
            let mut counts = deps.restaged.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(id).or_default();
            *count += 1;
            let count = *count;
            // Counted afresh after the failure: a `replay --failed` once the deleting is
            // stopped gets its three again.
            if count > MAX_RESTAGES {
                counts.remove(&id);
            }
            count
        };
        if restaged > MAX_RESTAGES {
            let message = format!(
                "not submitted: its staged copy ({}) was deleted from the bucket {MAX_RESTAGES} times before its submit: something deletes objects under `staging/` of the storage `{}` (a lifecycle rule, a cleanup script); stop it, then `replay --failed` (nothing was billed)",
                crate::text::Escaped::str(uri),
                crate::text::Escaped::str(name)
            );
            return Some(self.failed(id, FailureCode::StagingFailed, &message).await);
        }
        warn!(job_id = id, object = %uri, "The staged input is gone from the bucket; it is staged again");
        let job = match deps.store.unstage(id).await {
            Ok(job) => job,
            Err(StoreError::Conflict { .. }) => return Some(JobOutcome::NotRun),
            Err(err) => {
                error!(error = %err, "Cannot record that the staged input is gone; it is looked at again at the next start");
                return Some(JobOutcome::Parked);
            }
        };
        match self.stage(id, &job, staging).await {
            Step::End(outcome) => Some(outcome),
            Step::Continue => None,
        }
    }

    /// A storage input (`storage://CONNECTOR/key` of a configured storage) is looked at in the
    /// bucket before its submit, as a local file is at intake: one that is not there, is empty,
    /// or does not start like an image Claid accepts fails `input-unreadable` unbilled, instead
    /// of being sent (and, in a batch, maybe billed) for Claid to fail. Only a definite answer
    /// fails the job: a key with `%` (which Claid may read decoded), a refused read (Claid reads
    /// with its own connector's access) or a read cut short leave it to Claid. A bucket that
    /// does not answer is waited out like any outage of it; given up (`run --once` at
    /// `api.unreachable_timeout`), the job stays queued for the next run (`Some(Parked)`).
    pub async fn check_storage_input(&self, id: JobId, job: &JobV1) -> Option<JobOutcome> {
        use crate::manifest::input::{ACCEPTED, HEAD_LEN, check_image_signature};
        let deps = &*self.deps;
        if job.local || job.staged.is_some() {
            return None;
        }
        let uri = input_of(job);
        let (storage, key) = self.output_storage(uri)?;
        if key.contains('%') {
            return None;
        }
        let name = &storage.name;
        let shown = crate::text::Escaped::str(uri);
        // Looked at again when what answered was found not to be the bucket (a proxy's page
        // answering for it failed every storage input `input-unreadable`), once the endpoint
        // answers as the bucket again ([`Runner::unless_served_by_the_bucket`]).
        loop {
            let mut attempts = deps.retry.start(retry::Step::Upload);
            let size = loop {
                let sightings = self.bucket_sightings(storage);
                match storage.objects.head(key).await {
                    Ok(info) => {
                        deps.health.storage_ok(name);
                        // Noted, so that a later run of the row can tell the input replaced
                        // at its key (made again) from the same one (`unchanged`).
                        let seen = ObjectSeen::new(key, info.e_tag.clone(), info.last_modified);
                        if let Err(err) = deps.store.note_input_seen(id, seen).await {
                            debug!(error = %err, "Cannot note how the storage input looked");
                        }
                        break info.size;
                    }
                    Err(crate::objects::ObjectError::NotFound { .. }) => {
                        // Not found in a bucket that is gone is no answer about the object.
                        match self.confirm_bucket(storage, sightings).await {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(()) => return Some(JobOutcome::Parked),
                        }
                        let message = format!(
                            "not submitted: its input {shown} is not in the bucket (no object at {}); {}; put the image there or fix the row, then `replay --failed`",
                            crate::text::Escaped::str(&storage.objects.uri(key)),
                            nothing_billed(job)
                        );
                        return Some(
                            self.failed(id, FailureCode::InputUnreadable, &message)
                                .await,
                        );
                    }
                    Err(err) if bucket_away(&err) => {
                        if !self
                            .wait_for_bucket(&mut attempts, (id, name), &err, "the storage input")
                            .await
                        {
                            return Some(JobOutcome::Parked);
                        }
                    }
                    Err(err) => {
                        bucket_answered(&deps.health, name, &err);
                        return None;
                    }
                }
            };
            let why = if size == 0 {
                "is empty (0 bytes) in the bucket: it was probably not copied completely".to_owned()
            } else {
                let head = storage
                    .objects
                    .get_range(key, 0..size.min(HEAD_LEN as u64))
                    .await
                    .ok()?;
                let what = check_image_signature(&head).err()?;
                format!("is not an image Claid accepts: {what}")
            };
            // Said by the bucket, not by a proxy's page (every input failed on its word).
            match self.unless_served_by_the_bucket(storage).await {
                None => {}
                // The endpoint answers as the bucket again: looked at afresh.
                Some(Step::Continue) => continue,
                Some(Step::End(outcome)) => return Some(outcome),
            }
            let fix = if size == 0 {
                "copy the image again".to_owned()
            } else {
                format!("give a {ACCEPTED} object (convert it, or fix the row)")
            };
            let message = format!(
                "not submitted: its input {shown} {why}; {}; {fix}, then `replay --failed`",
                nothing_billed(job)
            );
            return Some(
                self.failed(id, FailureCode::InputUnreadable, &message)
                    .await,
            );
        }
    }

    /// A bucket away (`err`) at a look before job `id`'s submit at `what` in storage `name`:
    /// waits the retry policy's next delay. `false` when the daemon stops meanwhile or gives
    /// up (`run --once` at `api.unreachable_timeout`): the job stays queued.
    async fn wait_for_bucket(
        &self,
        attempts: &mut retry::Attempts,
        (id, name): (JobId, &str),
        err: &crate::objects::ObjectError,
        what: &str,
    ) -> bool {
        let (_, failure) = bucket_failure(&self.deps.health, name, err, true);
        match decide(attempts, failure) {
            Decision::Retry { after } => {
                debug!(error = %err, job_id = id, "Cannot look at {what} before the submit; waiting for the bucket");
                self.wait(after).await
            }
            _ => false,
        }
    }

    /// Runs a job's steps until it is terminal, held, parked for shutdown, or requeued.
    pub async fn run(&self, id: JobId) -> JobOutcome {
        let span = tracing::Span::current();
        let mut recorded_input = false;
        let mut recorded_task = false;
        // Writes of this job's output that failed with an error that may heal.
        let mut write_failures = Writes::default();
        // Whether the task was polled again for a fresh result URL (once per run).
        let mut asked_fresh_url = false;
        loop {
            let job = match self.deps.store.job(id).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    error!("Job vanished from the store");
                    return JobOutcome::Parked;
                }
                Err(err) => {
                    error!(error = %err, "Cannot read the job from the store; it resumes at the next start");
                    return JobOutcome::Parked;
                }
            };
            if !recorded_input {
                recorded_input = true;
                span.record(
                    "input",
                    crate::text::redact_credentials(&job.input).as_ref(),
                );
                span.record("manifest", job.manifest);
            }
            let step = match &job.state {
                // A job at Claid in a batch is the batch task's to poll.
                JobState::Submitted { .. } if job.batch.is_some() => Step::End(JobOutcome::NotRun),
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
                    self.poll(id, &job, *task_id, result_url.clone(), *at_ms)
                        .await
                }
                JobState::Downloading {
                    url,
                    width,
                    height,
                    task_id,
                    copy_of,
                    kept_since_ms,
                    ..
                } => {
                    let result = (url.clone(), *width, *height, *task_id);
                    if url.starts_with("storage://") {
                        let copy_of = copy_of.as_deref();
                        self.verify_object(id, &job, result, copy_of, &mut write_failures)
                            .await
                    } else {
                        let fresh_url = if asked_fresh_url {
                            None
                        } else {
                            Some(&mut asked_fresh_url)
                        };
                        let kept_since = *kept_since_ms;
                        self.download(id, &job, result, &mut write_failures, fresh_url, kept_since)
                            .await
                    }
                }
                JobState::Submitting { .. }
                | JobState::InDoubt { .. }
                | JobState::Done { .. }
                | JobState::Failed { .. } => Step::End(JobOutcome::NotRun),
            };
            match step {
                Step::Continue => continue,
                Step::End(outcome) => return outcome,
            }
        }
    }

    fn settings(&self) -> Settings {
        self.deps
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Durability point 1, the submit, durability point 2 (ARCHITECTURE.md "Crash safety"). Every attempt is one
    /// HTTP request; the retry policy alone decides whether another follows.
    async fn submit(&self, id: JobId, job: &JobV1) -> Step {
        let deps = &*self.deps;
        if let Some(outcome) = self.held_for_storage(id, job) {
            return Step::End(outcome);
        }
        if let Some(outcome) = self.settle_existing_output(id, job).await {
            return Step::End(outcome);
        }
        let same_second = match self.note_replaced_objects(id, job).await {
            Ok(wait) => wait,
            Err(outcome) => return Step::End(outcome),
        };
        // Stopped during its wait for the noted object's second: not submitted, left queued.
        if (!same_second.is_zero() && !self.wait(same_second).await) || deps.cancel.is_cancelled() {
            return Step::End(JobOutcome::Parked);
        }
        if let Some(outcome) = self.check_storage_input(id, job).await {
            return Step::End(outcome);
        }
        if let Some(outcome) = self.restage_if_gone(id, job).await {
            return Step::End(outcome);
        }
        let output = deps.outbox.join(&job.output_rel);
        // Another image's write into this output's folder failed meanwhile (while this job
        // waited for its permit): back to the queue, where it waits for the folder unbilled.
        if deps.health.folder_blocked(&output) {
            deps.queue.push_front((job.manifest, id));
            return Step::End(JobOutcome::Requeued);
        }
        // Another image gave up writing into this output's folder, which still refuses
        // writes: Claid is not paid for a result that could not be written either.
        if let Some(why) = deps.health.given_up_for(&output) {
            let message =
                format!("not submitted: an output could not be written into its folder ({why})");
            return self
                .fail(id, FailureCode::OutputPermissionDenied, &message)
                .await;
        }
        // The outbox changed since intake (a file now where a folder of the path goes, a link,
        // a folder where the file goes): every write of the result would fail. Claid is not
        // paid for it.
        if let Some(outcome) = self.refuse_blocked_output(id, job).await {
            return Step::End(outcome);
        }
        if job.local
            && job.staged.is_none()
            && let Some(staging) = &deps.staging
        {
            return self.stage(id, job, staging).await;
        }
        let local_bytes = if job.local && job.staged.is_none() {
            let inbox = deps.inbox.clone();
            let owned = job.clone();
            let max_input = self.settings().limits.max_input_bytes;
            match on_file_pool(move || read_local_input(&inbox, &owned, max_input)).await {
                Ok(bytes) => Some(bytes::Bytes::from(bytes)),
                Err((code, message)) => return self.fail(id, code, &message).await,
            }
        } else {
            None
        };
        let step = if local_bytes.is_some() {
            retry::Step::Upload
        } else {
            retry::Step::Submit
        };
        let mut attempts = deps.retry.start(step);
        // Past [`MAX_LOST_ANSWERS`] (this run's and earlier ones') the job is held in doubt,
        // whatever `in_doubt` says.
        let mut lost_answers = LostAnswers::already(job.lost_answers);
        loop {
            // A retry waits, like a first submit, while outputs cannot be written.
            if !deps.health.writable(&deps.cancel).await {
                return Step::End(JobOutcome::Parked);
            }
            // The rate limiter's turn first: a crash while it waits leaves the job queued (no
            // request went out), not in doubt.
            let turn = tokio::select! {
                turn = deps.client.turn() => turn,
                () = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
            };
            match deps
                .store
                .mark_submitting_to(id, self.submitted_to(job))
                .await
            {
                Ok(_) => {}
                // Changed meanwhile: cancelled (its run drains), or a late webhook adopted the
                // task of its lost submit. Looked at again: an adopted task is polled here.
                Err(StoreError::Conflict { .. }) => return Step::Continue,
                Err(err) => {
                    error!(error = %err, "Cannot record the submit intent; job left queued");
                    return Step::End(JobOutcome::Parked);
                }
            }
            // Held until the answer is recorded (dropped below when it is a failure).
            let recording = deps.client.until_recorded();
            let sent_at = Instant::now();
            let res = match &local_bytes {
                Some(bytes) => self.upload(turn, job, bytes.clone()).await,
                None => self.submit_remote(turn, job).await,
            };
            let err = match res {
                Ok(Submitted::Task {
                    task_id,
                    result_url,
                    request_id,
                }) => {
                    let recorded = deps
                        .store
                        .mark_submitted(id, task_id, &result_url, request_id.as_deref())
                        .await;
                    if let Err(err) = recorded {
                        if let StoreError::TaskTaken { .. } = err {
                            // Another job with the same request, whose submit answer was lost,
                            // adopted this task from its webhook first (Claid announced both
                            // tasks before answering either): this job's own task is the one
                            // that job made, announced too, so it is adopted in turn (the two
                            // results are the same edit of the same input). It was held in
                            // doubt, and `replay --in-doubt` billed it again.
                            drop(recording);
                            if local_bytes.is_none()
                                && let Some(step) = self
                                    .adopt_lost(id, job, &err, vec![TaskRef::Async(task_id)])
                                    .await
                            {
                                return step;
                            }
                            // An answer naming another job's task (a cache or a proxy mixing
                            // answers up): whatever task this submit made is unknown.
                            error!(error = %err, task_id, "Claid's answer names a task another job took; this job is held in doubt (`replay --in-doubt` sends it again)");
                            return self.hold_in_doubt(id, job).await;
                        }
                        // The task exists but is not recorded: the job stays Submitting, which the
                        // next start treats as in doubt. Stop here rather than guess.
                        error!(error = %err, task_id, "Cannot record the task id; the job is in doubt");
                        return Step::End(JobOutcome::Parked);
                    }
                    deps.health.ok();
                    debug!(task_id, "Submitted");
                    return Step::Continue;
                }
                Ok(Submitted::Result {
                    url,
                    width,
                    height,
                    request_id,
                }) => {
                    let recorded = deps
                        .store
                        .mark_uploaded(id, &url, width, height, request_id.as_deref())
                        .await;
                    if let Err(err) = recorded {
                        error!(error = %err, "Cannot record the upload result; the job is in doubt");
                        return Step::End(JobOutcome::Parked);
                    }
                    deps.health.ok();
                    return Step::Continue;
                }
                Err(err) => err,
            };
            if let Some(rid) = err.request_id() {
                let _ = deps.store.record_request_id(id, rid).await;
            }
            let failure = failure_of(&deps.health, &err, sent_at);
            // A 2xx whose answer cannot be read was accepted: noted in the store before any
            // wait for its webhook (a stop or a crash during the wait found it submitting,
            // and a restart sent it again); it stays submitting meanwhile, so its run does
            // not end (and `run --once` does not exit) while its webhook may still come.
            if failure == Failure::Ambiguous && err.accepted_unread() {
                let recorded = deps.store.mark_accepted_unread(&[id]).await;
                drop(recording);
                if let Err(err) = recorded {
                    error!(error = %err, "Cannot record the job as held in doubt");
                    return Step::End(JobOutcome::Parked);
                }
                warn!(error = %err, "Claid accepted the submit but its answer cannot be read: held in doubt, never sent again (a webhook may still name its task)");
                // A 303 is said to every submit by a gateway in front of the API (a login
                // page): submitting pauses, or every queued image would be held in turn.
                if err.http_status() == Some(303) {
                    deps.health.pause(&err, Refusal::Status(303));
                }
            } else {
                drop(recording);
            }
            match failure {
                Failure::Job => {
                    // Claid answered and refused this job: the API itself is up.
                    deps.health.ok();
                    return self.fail(id, err.code(), &err.to_string()).await;
                }
                Failure::Systemic => {
                    if deps.store.requeue(id, false).await.is_err() {
                        return Step::End(JobOutcome::Parked);
                    }
                    deps.health.pause(&err, Refusal::of(&err));
                    deps.queue.push_front((job.manifest, id));
                    return Step::End(JobOutcome::Requeued);
                }
                // A 2xx whose answer cannot be read was accepted: held, never sent again. So is
                // a job whose answers were lost too often in a row (a gateway that takes every
                // submit on and fails it): each resend may have been billed.
                Failure::Ambiguous => match if err.accepted_unread() {
                    InDoubtPolicy::Hold
                } else {
                    if lost_answers.one_more() {
                        warn!(error = %err, lost_answers = lost_answers.count(), "The answers to this image's submits were lost again and again; it is held in doubt rather than sent (and maybe billed) once more");
                        InDoubtPolicy::Hold
                    } else {
                        self.settings().policies.in_doubt
                    }
                } {
                    // With webhooks on, a lost answer may still be announced: a task created
                    // by this very request is adopted, so nothing is billed twice.
                    _ if local_bytes.is_none()
                        && let Some(step) = self.adopt_lost(id, job, &err, Vec::new()).await =>
                    {
                        return step;
                    }
                    InDoubtPolicy::Resubmit => {
                        warn!(error = %err, "Submit outcome unknown; resubmitting (in doubt)");
                        if deps.store.requeue(id, true).await.is_err() {
                            return Step::End(JobOutcome::Parked);
                        }
                        if deps.webhooks.is_some() {
                            // Until it is sent again, a webhook later than the wait is still
                            // adopted (the loop then finds the job submitted).
                            deps.dispatch.hold(vec![crate::pipeline::held_job(
                                job.manifest,
                                id,
                                job,
                            )]);
                        }
                    }
                    InDoubtPolicy::Hold => {
                        warn!(error = %err, "Submit outcome unknown; held for `replay --in-doubt`");
                        return self.hold_in_doubt(id, job).await;
                    }
                },
                Failure::Transient | Failure::RateLimited { .. } | Failure::Unreachable => {
                    if deps.store.requeue(id, false).await.is_err() {
                        return Step::End(JobOutcome::Parked);
                    }
                }
            }
            let retry_as = retried_as(&deps.health, failure, &err, sent_at);
            match submit_decision(&deps.health, &mut attempts, retry_as, &err) {
                Decision::Retry { after } => {
                    let after = after.max(lost_answers.least_wait(deps.retry.cap));
                    // In an outage, each retry after the first at debug (health tells it).
                    if retry_as == Failure::Unreachable && attempts.failed_attempts() > 1 {
                        debug!(error = %err, attempt = attempts.failed_attempts(), "Submit failed; the API is still away; retrying");
                    } else if matches!(failure, Failure::RateLimited { .. }) {
                        // Flow control, waited out at the reset; a streak of nothing else is
                        // told by health (one WARN for each 429 before).
                        debug!(error = %err, attempt = attempts.failed_attempts(), "Submit rate limited; retrying after the reset");
                        deps.client.tell_if_long_closed();
                    } else {
                        warn!(error = %err, attempt = attempts.failed_attempts(), "Submit failed; retrying");
                    }
                    if !self.wait(after).await {
                        return Step::End(JobOutcome::Parked);
                    }
                    if !ready_to_resend(
                        &deps.client,
                        &deps.health,
                        &deps.retry,
                        &deps.cancel,
                        (failure, retry_as, sent_at),
                    )
                    .await
                    {
                        return Step::End(JobOutcome::Parked);
                    }
                }
                Decision::Fail(why) => {
                    warn!(error = %err, why = ?why, "Submit failed; retry budget spent");
                    return self.fail(id, err.code(), &err.to_string()).await;
                }
                Decision::Pause => return Step::End(JobOutcome::Requeued),
            }
        }
    }

    /// `api.staging`: uploads the local input to `staging/<store id>/<sha256>.<ext>` of the staging
    /// storage (skipped when the object is there with the same size; no Claid request),
    /// records the staged URI durably, and puts the job back in the queue, where it is
    /// batched like any `storage://` input. A crash before the record stages again (the HEAD
    /// finds the object); after it, the job is submitted from the bucket.
    async fn stage(&self, id: JobId, job: &JobV1, staging: &crate::storages::Staging) -> Step {
        let deps = &*self.deps;
        let inbox = deps.inbox.clone();
        let owned = job.clone();
        let max_input = self.settings().limits.max_input_bytes;
        let bytes = match on_file_pool(move || read_local_input(&inbox, &owned, max_input)).await {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err((code, message)) => return self.fail(id, code, &message).await,
        };
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let named_as = crate::storages::Staging::named_as(&job.body, &job.output_rel);
        let key = staging.key(&sha256, &job.input, named_as);
        let guard = tokio::select! {
            guard = staging.hold(&key) => guard,
            _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
        };
        let mut attempts = deps.retry.start(retry::Step::Upload);
        let mut n_failures = 0u32;
        loop {
            let sightings = self.bucket_sightings(&staging.storage);
            let err = match staging.upload(&key, bytes.clone()).await {
                Ok(uploaded) => {
                    deps.health.storage_ok(&staging.storage.name);
                    debug!(object = %staging.storage.objects.uri(&key), uploaded, "Input staged");
                    break;
                }
                Err(err) => err,
            };
            if err.no_such_bucket() {
                // An upload answered "not found": the bucket is gone (NoSuchBucket), an outage
                // of the storage waited out as before a submit, not a few retries that fail
                // the drop `staging-failed`.
                match self.confirm_bucket(&staging.storage, sightings).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(()) => return Step::End(JobOutcome::Parked),
                }
            }
            bucket_answered(&deps.health, &staging.storage.name, &err);
            let code = match object_failure(&err) {
                FailureCode::StorageDenied => FailureCode::StorageDenied,
                FailureCode::StorageUnreachable => FailureCode::StagingFailed,
                _ => FailureCode::StagingFailed,
            };
            let transient = !matches!(
                err,
                crate::objects::ObjectError::Denied { .. }
                    | crate::objects::ObjectError::UnsafeKey { .. }
            );
            n_failures += 1;
            // The bucket's endpoint does not answer (refused, timed out): an outage, waited
            // out like the API's (until `api.unreachable_timeout` in `run --once`), not a
            // few quick retries that fail a whole drop when S3 restarts.
            let (outage, failure) =
                bucket_failure(&deps.health, &staging.storage.name, &err, transient);
            match decide(&mut attempts, failure) {
                Decision::Retry { after }
                    if outage || (transient && n_failures < MAX_HEALING_WRITES) =>
                {
                    // An outage is told once (see `bucket_failure`), not per job and retry.
                    if outage {
                        debug!(error = %err, "Cannot stage the input; retrying");
                    } else {
                        warn!(error = %err, "Cannot stage the input; retrying");
                    }
                    if !self.wait(after).await {
                        return Step::End(JobOutcome::Parked);
                    }
                }
                _ => return self.fail(id, code, &err.to_string()).await,
            }
        }
        match deps.store.mark_staged(id, &staging.uri(&key)).await {
            Ok(_) => {}
            // Changed meanwhile (cancelled, or adopted): looked at again.
            Err(StoreError::Conflict { .. }) => return Step::Continue,
            Err(err) => {
                error!(error = %err, "Cannot record the staged input; it is staged again at the next start");
                return Step::End(JobOutcome::Parked);
            }
        }
        drop(guard);
        deps.queue.push_back(vec![(job.manifest, id)]);
        Step::End(JobOutcome::NotRun)
    }

    /// With webhooks on, waits up to the poll fallback for a webhook whose echoed request is
    /// the one this job sent (its submit answer was lost).
    /// With webhooks on, waits for a webhook naming the task a submit whose answer was lost
    /// (or named another job's task) may have made, and adopts it: `Some(Continue)` then
    /// (`Some(End)` when the adoption cannot be recorded). A task another job's submit answer
    /// named first (two jobs with the same request) is given back to it, added to `skip`,
    /// and the wait goes on for another: the job stayed submitting for ever (acceptance run).
    /// `None` when no webhook came: the caller's `in_doubt` policy applies.
    async fn adopt_lost(
        &self,
        id: JobId,
        job: &JobV1,
        why: &(dyn std::fmt::Display + Sync),
        mut skip: Vec<TaskRef>,
    ) -> Option<Step> {
        let deps = &*self.deps;
        loop {
            let update = self.wait_for_lost(job, why, &skip).await?;
            let (task_id, result_url) = match &update {
                TaskUpdate::Async(task) => (task.id, task.result_url.clone()),
                TaskUpdate::Batch(batch) => (batch.id, batch.result_url.clone()),
            };
            match deps.store.adopt_task(id, update.task(), &result_url).await {
                Ok(_) => {}
                // Bounded: each task skipped is one more webhook that came with this request.
                Err(StoreError::TaskTaken { .. }) if skip.len() < MAX_SKIPPED_ADOPTIONS => {
                    info!(
                        task_id,
                        "The task a webhook named for this lost submit is another job's with the same request (its answer named it first); waiting for this job's own"
                    );
                    skip.push(update.task());
                    deps.dispatch.give_back(update);
                    continue;
                }
                Err(err) => {
                    error!(error = %err, task_id, "Cannot record the adopted task; the job is in doubt");
                    if let StoreError::TaskTaken { .. } = err {
                        deps.dispatch.give_back(update);
                        // Registered for its own task's later announcement, as held jobs are.
                        return Some(self.hold_in_doubt(id, job).await);
                    }
                    return Some(Step::End(JobOutcome::Parked));
                }
            }
            info!(
                task_id,
                "A lost submit answer was recovered from its webhook; nothing is submitted twice"
            );
            // A final update is the result; one that only named the task (it was still
            // running) is not: its end is awaited like any task's.
            if update.status().is_terminal() {
                deps.dispatch.keep(update);
            }
            return Some(Step::Continue);
        }
    }

    /// Holds the job in doubt for `replay --in-doubt` (its submit may have made a task nobody
    /// knows) and, with webhooks on, keeps it registered: its task may still be announced,
    /// later than the wait.
    async fn hold_in_doubt(&self, id: JobId, job: &JobV1) -> Step {
        let deps = &*self.deps;
        if let Err(err) = deps.store.mark_in_doubt(id).await {
            error!(error = %err, "Cannot record the job as held in doubt");
            return Step::End(JobOutcome::Parked);
        }
        if deps.webhooks.is_some() {
            deps.dispatch
                .hold(vec![crate::pipeline::held_job(job.manifest, id, job)]);
        }
        Step::End(JobOutcome::Held)
    }

    async fn wait_for_lost(
        &self,
        job: &JobV1,
        err: &(dyn std::fmt::Display + Sync),
        skip: &[TaskRef],
    ) -> Option<TaskUpdate> {
        let fallback = self.deps.webhooks?;
        let lost = self
            .deps
            .dispatch
            .lost_submit_skipping(&request_of(job), 1, skip)?;
        // Told now: the wait may last `poll_fallback` (2 minutes by default) without a word.
        warn!(error = %err, wait_s = fallback.as_secs(), "The answer to this image's submit was lost; waiting for a webhook naming the task it may have created (adopted, not billed twice), at most `webhook.poll_fallback`");
        let deps = &*self.deps;
        tokio::select! {
            update = lost.wait(fallback) => update,
            () = answered_meanwhile(&deps.client, &deps.health, &deps.retry, &deps.cancel) => None,
            _ = self.deps.cancel.cancelled() => None,
        }
    }

    async fn submit_remote(
        &self,
        turn: crate::claid::Turn,
        job: &JobV1,
    ) -> Result<Submitted, ClaidError> {
        let accepted = self.deps.client.submit_in(turn, &request_of(job)).await?;
        Ok(Submitted::Task {
            task_id: accepted.task_id,
            result_url: accepted.result_url,
            request_id: accepted.request_id,
        })
    }

    /// Local files go through the synchronous upload endpoint (the API has no async upload).
    async fn upload(
        &self,
        turn: crate::claid::Turn,
        job: &JobV1,
        bytes: bytes::Bytes,
    ) -> Result<Submitted, ClaidError> {
        let path = Path::new(&job.input);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_owned());
        let uploaded = self
            .deps
            .client
            .upload_in(turn, &file_name, bytes, &body_of(job))
            .await?;
        let output = uploaded.response.output;
        // A storage output is in the bucket: the job checks it there instead of downloading.
        let url = crate::storages::output_object(&job.body, &job.output_rel, &output)
            .or_else(|| output.tmp_url.clone())
            .unwrap_or_default();
        Ok(Submitted::Result {
            url,
            width: output.width,
            height: output.height,
            request_id: uploaded.request_id,
        })
    }

    /// Waits and polls until the task ends; DONE moves the job to Downloading.
    async fn poll(
        &self,
        id: JobId,
        job: &JobV1,
        task_id: u64,
        result_url: String,
        submitted_at_ms: u64,
    ) -> Step {
        let deps = &*self.deps;
        let (job_body, job_output_rel) = (job.body.clone(), job.output_rel.clone());
        let elapsed = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
        let mut n_poll = 0u32;
        let mut attempts = deps.retry.start(retry::Step::Poll);
        // With webhooks on, the task's result usually arrives by itself; a poll comes only
        // when it is overdue.
        // Webhooks that do not arrive are not waited for (see `Dispatch::webhooks_unproven`).
        let mut webhooks = deps.webhooks.filter(|_| !deps.dispatch.webhooks_unproven());
        // Watched whenever webhooks are on, even when its wait follows the plain poll schedule
        // (webhooks unproven or silent): one that comes is taken without a poll, and shows
        // they come. (Unwatched, after a drop whose webhooks were late the next drop was
        // polled in full though its own came in time.) Its end found by a poll tells whether
        // they come, waited for or not (else the warning that they do not would never be
        // given).
        let mut watch = deps
            .webhooks
            .map(|_| deps.dispatch.watch(TaskRef::Async(task_id)));
        let mut silence_counted = false;
        let mut delay = match webhooks {
            Some(fallback) => deps
                .polls
                .webhook_wait(Kind::Single, submitted_at_ms, fallback),
            None => deps.polls.first_delay(Kind::Single, elapsed),
        };
        // When a poll last found the task running (since its submit).
        let mut pending_at = None;
        let mut unsettled = Unsettled::default();
        // The poll waits for a pause: its last one was refused (a 402 while the task ran), or
        // it came due while others' were (see `HealthState::poll_hold`).
        let mut hold: Option<Hold> = None;
        // A pause held a poll since a poll last found the task running: a poll that finds it
        // done then gives no duration sample (the pause's time is not Claid's).
        let mut paused_since_running = false;
        loop {
            // Whether a hold let this poll go (see `held` below).
            let mut released = false;
            let mut announced = match &watch {
                Some(watch) => tokio::select! {
                    update = watch.wait(delay) => update,
                    // Webhooks found silent meanwhile: polled now, then on the schedule (a
                    // task already on it is not woken).
                    () = deps.dispatch.went_silent(), if webhooks.is_some() => {
                        webhooks = None;
                        None
                    }
                    () = deps.health.poll_hold(hold), if hold.is_some() => {
                        released = true;
                        None
                    }
                    _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
                },
                None => tokio::select! {
                    _ = tokio::time::sleep(delay), if hold.is_none() => None,
                    () = deps.health.poll_hold(hold), if hold.is_some() => {
                        released = true;
                        None
                    }
                    _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
                },
            };
            // Let go by its hold (the pause ended, or its turn as the probe came), the poll
            // goes now. Woken otherwise while held (webhooks found silent, an update that is
            // no result), it stays held (`kept`, below): a poll refused for its own reason
            // goes no sooner than a probe interval after, even once others' successes ended
            // the pause (let go at once, it was refused again and paused again).
            let kept = hold.take().filter(|_| !released);
            let held = released;
            // An announcement that the task ended without its result: the result is polled
            // (failing the job would lose an image Claid made and billed).
            // (A batch-shaped announcement for this single task is no result either.)
            // Nor is one that is not final (a task named while it runs): handed to a watch, it
            // would come back on every wait.
            if let Some(TaskUpdate::Async(task)) = &announced
                && super::dispatch::echoes_other_inputs(&task.request, &[input_of(job)])
            {
                warn!(
                    task_id,
                    "A webhook for this task echoes another input than the one sent; it is not taken, the task is polled"
                );
                announced = None;
                watch = None;
            }
            if announced.as_ref().is_some_and(|update| match update {
                TaskUpdate::Async(task) => task.lacks_result(),
                TaskUpdate::Batch(_) => true,
            }) {
                debug!(
                    task_id,
                    "The webhook said the task is done without its result; polling it"
                );
                announced = None;
                // Its slot keeps that update: the task is polled from here on, on the
                // schedule (a watch would hand it back at once, every time).
                watch = None;
            }
            if let Some(kept) = kept
                && announced.is_none()
            {
                hold = Some(kept);
                continue;
            }
            let mut sent_at = Instant::now();
            let from_webhook = announced.is_some();
            let polled = match announced {
                Some(TaskUpdate::Async(task)) => Ok(crate::claid::Polled {
                    task: *task,
                    request_id: None,
                }),
                _ => {
                    let turn = deps.client.turn().await;
                    if let Some(held) = deps.health.holds_poll(held) {
                        debug!(
                            task_id,
                            "Polls are refused by the pause; this one waits for its end"
                        );
                        (hold, delay, paused_since_running) = (Some(held), HELD_FOR, true);
                        continue;
                    }
                    // Sent now, not when it began to wait for the limiter (a success
                    // elsewhere meanwhile says nothing of this call's failure).
                    sent_at = Instant::now();
                    deps.client.poll_in(turn, &result_url, task_id).await
                }
            };
            match polled {
                Ok(polled) => {
                    // An answered poll ends its step: the next poll has a fresh budget.
                    attempts = deps.retry.start(retry::Step::Poll);
                    unsettled.answered();
                    // A webhook is no answer of the API to the daemon: it neither ends a
                    // pause (it released every held poll to be refused again) nor an outage.
                    if !from_webhook {
                        deps.health.poll_ok();
                    }
                    // Not flushed: a lost poll count only skews statistics.
                    if !from_webhook {
                        let _ = deps
                            .store
                            .record_poll(id, polled.request_id.as_deref())
                            .await;
                    }
                    let task = polled.task;
                    // Once per task (a DONE without its result is asked again).
                    if !from_webhook && task.status.is_terminal() && !silence_counted {
                        silence_counted = true;
                        if watch.is_some() {
                            deps.dispatch.polled_final(
                                TaskRef::Async(task_id),
                                submitted_at_ms,
                                task.status == TaskStatus::Done,
                                !task.lacks_result(),
                                None,
                            );
                        }
                    }
                    match task.status {
                        TaskStatus::Done => {
                            let took =
                                Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
                            let seen = if from_webhook {
                                Seen::Webhook
                            } else {
                                Seen::Poll { pending_at }
                            };
                            if from_webhook || !paused_since_running {
                                deps.polls.record(Kind::Single, took, seen);
                            }
                            deps.metrics.task_seconds.observe(took.as_secs_f64());
                            let Some(output) = task.result.output_object else {
                                if let Some(after) = unsettled.done_without_result(deps.poll.max) {
                                    if unsettled.first_unsettled_ask() {
                                        warn!(
                                            task_id,
                                            "Claid says the task is DONE but sent no result; polling it again"
                                        );
                                    } else {
                                        debug!(
                                            task_id,
                                            "The task's answer still has no result; polling it again"
                                        );
                                    }
                                    delay = after;
                                    continue;
                                }
                                return self
                                    .fail(
                                        id,
                                        FailureCode::BadResponse,
                                        "task is DONE but has no output_object",
                                    )
                                    .await;
                            };
                            // A storage output is checked in its bucket, not downloaded.
                            let storage_output =
                                crate::storages::output_object(&job_body, &job_output_rel, &output);
                            let Some(url) = storage_output.or_else(|| output.tmp_url.clone())
                            else {
                                return self
                                    .fail(
                                        id,
                                        FailureCode::BadResponse,
                                        "task is DONE but its output has no tmp_url",
                                    )
                                    .await;
                            };
                            // Not flushed: losing it only means polling once more.
                            let (w, h, task_id) = (output.width, output.height, task.id);
                            return match deps
                                .store
                                .mark_downloading(id, Some(task_id), &url, w, h)
                                .await
                            {
                                Ok(_) => Step::Continue,
                                Err(err) => {
                                    error!(error = %err, "Cannot record the result; it is polled again at the next start");
                                    Step::End(JobOutcome::Parked)
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
                                format!("task ended {}", task.status)
                            } else {
                                message
                            };
                            let answered_at = std::time::Instant::now();
                            if let Some(outcome) =
                                self.held_for_moved_input(id, job, answered_at).await
                            {
                                return Step::End(outcome);
                            }
                            return self.fail(id, FailureCode::ClaidError, &message).await;
                        }
                        TaskStatus::Other(ref status) if unsettled.first_unknown_status() => {
                            warn!(status = %status, "Claid answered a task status the daemon does not know; polling on until it ends or `api.poll.give_up_after`");
                        }
                        _ => {}
                    }
                    if let Some(message) = overdue(
                        deps.polls.watched_since(submitted_at_ms),
                        deps.poll.give_up_after,
                        &task.status,
                    ) {
                        return self
                            .fail_watched(id, job, task_id, FailureCode::TaskTimeout, &message)
                            .await;
                    }
                    n_poll += 1;
                    paused_since_running = false;
                    pending_at = Some(Duration::from_millis(
                        now_ms().saturating_sub(submitted_at_ms),
                    ));
                    delay = match webhooks {
                        Some(fallback) => fallback.min(deps.poll.max),
                        None => deps.polls.next_delay(n_poll),
                    };
                }
                Err(err) => match failure_of(&deps.health, &err, sent_at) {
                    Failure::Job
                        if let Some((after, why)) = unsettled.refused(
                            &err,
                            &deps.retry,
                            Duration::from_millis(now_ms().saturating_sub(submitted_at_ms)),
                        ) =>
                    {
                        warn!(task_id, error = %err, "{}", why.warning("task"));
                        delay = after;
                    }
                    Failure::Job => {
                        // The task id is unknown to Claid: its result cannot be fetched. Failing
                        // keeps the promise not to pay twice; `replay` can resubmit. Its
                        // result, if Claid announces it later, is still taken.
                        return self
                            .fail_watched(id, job, task_id, FailureCode::TaskLost, &err.to_string())
                            .await;
                    }
                    Failure::Systemic => {
                        deps.health.poll_refused(&err, Refusal::of(&err));
                        delay = HELD_FOR;
                        hold = Some(deps.health.hold(PollHold::Refused));
                        paused_since_running = true;
                    }
                    // The task is billed: a 429 only delays its poll (the limiter's gate waits
                    // the reset), whatever their number, until `give_up_after`.
                    Failure::RateLimited { retry_after } => {
                        if let Some(message) = rate_limited_too_long(
                            deps.polls.watched_since(submitted_at_ms),
                            deps.poll.give_up_after,
                        ) {
                            return self
                                .fail_watched(id, job, task_id, FailureCode::TaskTimeout, &message)
                                .await;
                        }
                        debug!(error = %err, "Poll rate limited; asking again after the reset");
                        deps.client.tell_if_long_closed();
                        delay = retry_after;
                    }
                    failure => match decide(&mut attempts, failure) {
                        Decision::Retry { after } => {
                            warn!(error = %err, "Poll failed; retrying");
                            delay = after;
                        }
                        // The task is billed: once the poll's budget is spent its failures
                        // (a run of 5xx) only slow its polls to the backoff's cap, until
                        // `give_up_after` (giving up lost the result it paid for).
                        Decision::Fail(GiveUp::Failures) => {
                            if let Some(message) = polls_failing_too_long(
                                deps.polls.watched_since(submitted_at_ms),
                                deps.poll.give_up_after,
                                &err,
                            ) {
                                return self
                                    .fail_watched(
                                        id,
                                        job,
                                        task_id,
                                        FailureCode::TaskTimeout,
                                        &message,
                                    )
                                    .await;
                            }
                            warn!(error = %err, "Polls keep failing; the task is billed, so it is asked again (every {}) until `api.poll.give_up_after`", humantime::format_duration(deps.retry.cap));
                            delay = deps.retry.cap;
                        }
                        Decision::Fail(why) => {
                            warn!(error = %err, why = ?why, "Poll failed; retry budget spent");
                            return self.fail(id, err.code(), &err.to_string()).await;
                        }
                        Decision::Pause => delay = deps.poll.max,
                    },
                },
            }
        }
    }

    /// Downloads the result, checks it is the image the result describes, writes it atomically
    /// and marks the job done: one unit that a shutdown does not interrupt. `kept_since`: the
    /// result is one an earlier run could not write, made then, fetched again by a replay;
    /// found gone, the image is submitted again.
    async fn download(
        &self,
        id: JobId,
        job: &JobV1,
        (url, width, height, task_id): (String, u32, u32, Option<u64>),
        write_failures: &mut Writes,
        fresh_url: Option<&mut bool>,
        kept_since: Option<u64>,
    ) -> Step {
        let deps = &*self.deps;
        let permit = tokio::select! {
            permit = deps.downloads.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Step::End(JobOutcome::Parked),
            },
            _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
        };
        let mut mismatches = 0u32;
        let mut attempts = deps.retry.start(retry::Step::Download);
        // The format the output is named for (its extension follows the output format).
        let wanted = wanted_format(job);
        let mut out_of_descriptors = 0u32;
        // When this download first got an empty body: its patience counts from there (from
        // the result's record, a job resumed after a stop of minutes, or one that waited for a
        // download slot, had none, and ten empty answers failed it).
        let mut first_empty: Option<Instant> = None;
        let mut kept_refusals = 0u32;
        let bytes = loop {
            // Held through the wait when the machine ran out of file descriptors.
            let mut _blocking = None;
            let delay = match deps.client.download_once(&url).await {
                // No file descriptor left for the connection (EMFILE): the machine's, not the
                // result host's (it was told as the host's outage, `run --once` ending 69
                // "the host of Claid's results stayed unreachable"). Waited out as a write
                // failure of the machine: no new image is submitted meanwhile, and `run
                // --once` ends 73 naming the open-files limit.
                Err(err) if err.out_of_descriptors() => {
                    out_of_descriptors += 1;
                    write_failures.failed(&deps.health, err.to_string());
                    _blocking = Some(deps.health.block_writes(err.to_string(), None));
                    warn!(error = %err, "No file descriptor left to download the result; no new image is submitted until one is (raise the daemon's open-files limit, or lower api.max_in_flight and api.max_downloads)");
                    healing_write_wait(out_of_descriptors)
                }
                // (A body cut short is the client's `Truncated`: retried as a transport fault.)
                Ok(bytes) => match result_mismatch(&bytes, (width, height), wanted, "downloaded") {
                    None => break bytes,
                    Some(message) => {
                        mismatches += 1;
                        if mismatches >= MAX_MISMATCHED_DOWNLOADS {
                            return self.fail(id, FailureCode::ResultMismatch, &message).await;
                        }
                        warn!(message = %message, "Download does not match the result; retrying");
                        jitter(mismatches, deps.retry.base, deps.retry.cap)
                    }
                },
                Err(err) => {
                    // Claid keeps a result at its tmp_url for a day, and billed it: a result
                    // host that answers 5xx, 408 or 429, cuts the body short or does not
                    // answer is waited out like an outage of the API (told to health, so
                    // `run --once` ends at `api.unreachable_timeout` and leaves the job to the
                    // next run), not given up on after a few tries, until the day is over.
                    let away = result_host_away_for(&err).is_some_and(|patience| {
                        if is_empty_body(&err) {
                            first_empty.get_or_insert_with(Instant::now).elapsed() < patience
                        } else {
                            // A kept result's day counts from when it was made.
                            now_ms().saturating_sub(kept_since.unwrap_or(job.updated_at_ms))
                                < patience.as_millis() as u64
                        }
                    });
                    let failure = if away {
                        // A host that answers empty bodies answers: not told as unreachable.
                        if !is_empty_body(&err) {
                            deps.health.result_host_failed(&url, &err);
                        }
                        Failure::Unreachable
                    } else {
                        Failure::of(&err)
                    };
                    // A kept result's URL served its bytes once (the earlier run downloaded
                    // them, then could not write them): refused twice in a row, it is no URL
                    // still propagating, and the task is asked at once for another (free).
                    // Each gone result of a replay waited out the download's nine asks, about
                    // a minute of backoff, before it was made again. Not a result without a
                    // task (a local file's upload): nothing can be asked, and the refusals
                    // alone decide whether it is made (and billed) again.
                    if kept_since.is_some()
                        && fresh_url.is_some()
                        && task_id.is_some()
                        && matches!(err, ClaidError::ResultGone { .. })
                    {
                        kept_refusals += 1;
                    } else {
                        kept_refusals = 0;
                    }
                    let decision = if kept_refusals >= KEPT_RESULT_REFUSALS {
                        Decision::Fail(GiveUp::NotRetryable)
                    } else {
                        decide(&mut attempts, failure)
                    };
                    match decision {
                        Decision::Retry { after } => {
                            if away && attempts.failed_attempts() > 1 {
                                debug!(error = %err, "Download failed; the result's host is still away; retrying");
                            } else {
                                warn!(error = %err, "Download failed; retrying");
                            }
                            after
                        }
                        Decision::Fail(_) | Decision::Pause => {
                            // A result URL refused through the download's asks may be one
                            // Claid has replaced (re-signed, moved): the task is polled once
                            // more (no bill) and a different URL is downloaded from the start.
                            // Whether the result is known gone: its URL answered so, and
                            // the task, if asked, gives no other.
                            let mut gone = matches!(err, ClaidError::ResultGone { .. });
                            if matches!(
                                err,
                                ClaidError::ResultGone { .. } | ClaidError::RedirectLoop { .. }
                            ) && let (Some(asked), Some(task_id)) = (fresh_url, task_id)
                            {
                                *asked = true;
                                let fresh = self.fresh_result_url(id, job, task_id, &url).await;
                                gone &= matches!(fresh, Fresh::None);
                                if let Fresh::Url(fresh, w, h) = fresh {
                                    info!(
                                        task_id,
                                        "The result URL was refused; the task gives a new one, which is downloaded"
                                    );
                                    return match deps
                                        .store
                                        .mark_downloading(id, Some(task_id), &fresh, w, h)
                                        .await
                                    {
                                        Ok(_) => Step::Continue,
                                        Err(err) => {
                                            error!(error = %err, "Cannot record the result's new URL; it is downloaded at the next start");
                                            Step::End(JobOutcome::Parked)
                                        }
                                    };
                                }
                            }
                            // A kept result known gone is made again. One not known gone
                            // (the poll for another URL failed, a redirect loop) fails the
                            // job, which keeps it for a later replay (no new bill on a guess).
                            if kept_since.is_some() && gone {
                                return self.submit_again(id, job, &err).await;
                            }
                            return self.fail(id, err.code(), &err.to_string()).await;
                        }
                    }
                }
            };
            if !self.wait(delay).await {
                return Step::End(JobOutcome::Parked);
            }
        };
        self.write_and_finish(
            id,
            job,
            bytes,
            (width, height, task_id),
            write_failures,
            permit,
        )
        .await
    }

    /// A replay's kept result that Claid no longer has: the image goes back to the queue and
    /// is submitted again (billed again), as a replay of it did before results were kept.
    async fn submit_again(&self, id: JobId, job: &JobV1, err: &ClaidError) -> Step {
        match self.deps.store.requeue(id, false).await {
            Ok(_) => {
                warn!(error = %err, "The result kept from the earlier run is gone; the image is submitted again (billed again)");
                self.deps.queue.push_front((job.manifest, id));
                Step::End(JobOutcome::Requeued)
            }
            Err(err) => {
                error!(error = %err, "Cannot queue the image again; it is downloaded (or submitted) at the next start");
                Step::End(JobOutcome::Parked)
            }
        }
    }

    /// The task's (or batch's) result for this job as Claid gives it now, polled once (see
    /// [`Fresh`]).
    async fn fresh_result_url(&self, id: JobId, job: &JobV1, task_id: u64, refused: &str) -> Fresh {
        // A local file's result came from the synchronous upload: it has no task to poll.
        if job.local && job.staged.is_none() {
            return Fresh::Unknown;
        }
        let client = &self.deps.client;
        let output = if job.batch.is_some() {
            let polled = match client.poll_batch_once("", task_id).await {
                Ok(polled) => polled,
                Err(err) => return Fresh::after_failed_poll(&err),
            };
            if polled.batch.status != TaskStatus::Done {
                return Fresh::Unknown;
            }
            let member = super::batch::Member {
                manifest: job.manifest,
                id,
                job: job.clone(),
            };
            let matched = super::batch::match_results(&polled.batch, std::slice::from_ref(&member));
            matched.done.into_iter().next().map(|(_, output)| output)
        } else {
            let polled = match client.poll_once("", task_id).await {
                Ok(polled) => polled,
                Err(err) => return Fresh::after_failed_poll(&err),
            };
            if polled.task.status != TaskStatus::Done {
                return Fresh::Unknown;
            }
            polled.task.result.output_object
        };
        match output.and_then(|output| {
            let url = output
                .tmp_url
                .filter(|url| url != refused && !url.is_empty())?;
            Some((url, output.width, output.height))
        }) {
            Some((url, width, height)) => Fresh::Url(url, width, height),
            None => Fresh::None,
        }
    }

    /// Writes a result's bytes atomically into the outbox and marks the job done: one unit
    /// that a shutdown does not interrupt.
    async fn write_and_finish(
        &self,
        id: JobId,
        job: &JobV1,
        bytes: bytes::Bytes,
        (width, height, task_id): (u32, u32, Option<u64>),
        write_failures: &mut Writes,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Step {
        let deps = &*self.deps;
        let outbox = deps.outbox.clone();
        let rel = PathBuf::from(&job.output_rel);
        let policy = match self.settings().policies.on_output_exists {
            OnOutputExists::Replace => ExistsPolicy::Replace,
            OnOutputExists::Skip => ExistsPolicy::Skip,
            OnOutputExists::Fail => ExistsPolicy::Fail,
        };
        // Written (and fsynced) on the blocking pool, then recorded: the job task runs both
        // to the end (it is never aborted), so a shutdown does not come between them.
        let result = bytes.clone();
        let written =
            on_file_pool(move || output::write_atomic(&outbox, &rel, &bytes, policy)).await;
        let written = match written {
            Ok(mut written) => {
                // The file kept is this very result, written before a crash came between the
                // write and its record: the job's own output, not a skip.
                if written.skipped && written.sha256 == hex::encode(sha2::Sha256::digest(&result)) {
                    written.skipped = false;
                }
                let n_bytes = written.bytes;
                // `skip` kept a file that appeared after the submit: the job is done with that
                // file (its own dimensions), not with the result it paid for.
                let (width, height) = if written.skipped {
                    let kept = written.path.clone();
                    on_file_pool(move || output::check::file_dimensions(&kept)).await
                } else {
                    (width, height)
                };
                let info = DoneInfo {
                    path: written.path.to_string_lossy().into_owned(),
                    bytes: n_bytes,
                    sha256: written.sha256,
                    width,
                    height,
                    task_id,
                    unchanged: false,
                    skipped: written.skipped,
                };
                let kept = written.skipped.then_some((width, height));
                deps.store
                    .mark_done(id, info)
                    .await
                    .map(|_| Ok((n_bytes, kept)))
            }
            Err(err) => Ok(Err(err)),
        };
        // A read-only outbox fails this job at once and takes no other output either: new
        // submits stop before this job's permit lets one more go (Claid would bill it). A
        // read-only filesystem mounted inside the outbox stops those going under it.
        if let Ok(Err(err)) = &written
            && err.code() == FailureCode::OutputReadOnly
        {
            let outbox = deps.outbox.clone();
            let whole = tokio::task::spawn_blocking(move || {
                crate::activity::check_filesystem(&outbox) != crate::activity::Disk::Ok
            })
            .await
            .unwrap_or(true);
            if whole {
                deps.health
                    .set_disk_problem(Some(format!("the outbox cannot be written: {err}")));
            } else {
                deps.health.gave_up_on(
                    refusing_folder(&deps.outbox, &deps.outbox.join(&job.output_rel)),
                    err.to_string(),
                );
            }
        }
        drop(permit);
        match written {
            Ok(Ok((n_bytes, None))) => {
                info!(bytes = n_bytes, width, height, "Output written");
                deps.metrics.bytes_written.inc_by(n_bytes);
                deps.metrics.polls_per_job.observe(f64::from(job.polls));
                Step::End(JobOutcome::Done)
            }
            // `skip` kept a file put there meanwhile: nothing was written.
            Ok(Ok((n_bytes, Some((width, height))))) => {
                info!(
                    bytes = n_bytes,
                    width, height, "The output exists; kept (`on_output_exists: skip`)"
                );
                deps.metrics.polls_per_job.observe(f64::from(job.polls));
                Step::End(JobOutcome::Done)
            }
            Ok(Err(err)) => {
                let code = err.code();
                // A policy refusal, a path out of the outbox, a name too long, a read-only
                // filesystem: about this job, and waiting will not heal it. Fail it at once.
                if !err.heals() {
                    let message = format!("{err}{}", refetch_hint(job, code, &deps.inbox));
                    return self
                        .fail_keeping(id, code, &message, object_sha(job, &result))
                        .await;
                }
                // A full disk, too many open files, an I/O error, a permission: the job stays
                // Downloading and is written again after a wait, a bounded number of times.
                write_failures.failures += 1;
                let n = write_failures.failures;
                // A folder the daemon may not write holds (and, given up on, fails) only the
                // images whose output goes under it: the deepest folder present on the way.
                let folder = (code == FailureCode::OutputPermissionDenied)
                    .then(|| refusing_folder(&deps.outbox, &deps.outbox.join(&job.output_rel)));
                if n >= MAX_OUTPUT_WRITES {
                    let message = format!(
                        "{err} (still failing after {n} attempts){}",
                        refetch_hint(job, code, &deps.inbox)
                    );
                    if let Some(folder) = folder {
                        deps.health.gave_up_on(folder, message.clone());
                    }
                    return self
                        .fail_keeping(id, code, &message, object_sha(job, &result))
                        .await;
                }
                let after = healing_write_wait(n);
                error!(error = %err, code = %code, attempt = n, retry_in_ms = after.as_millis() as u64, "Cannot write the output; retrying later");
                write_failures.failed(&deps.health, err.to_string());
                // A full disk or no file descriptors left is the machine's, not this job's:
                // while the job waits, no new image is submitted (its result could not be
                // written either), and `/healthz` says so. Held for the wait only: a download
                // that fails afterwards is not a reason to hold everything. A folder the
                // daemon may not write holds the images whose output goes there, until this
                // job ends.
                let _blocking = match (code, folder) {
                    (FailureCode::DiskFull | FailureCode::OutputTooManyOpenFiles, _) => {
                        Some(deps.health.block_writes(err.to_string(), None))
                    }
                    (_, Some(folder)) => {
                        if write_failures.folder_hold.is_none() {
                            write_failures.folder_hold = Some((
                                deps.health.block_writes(err.to_string(), Some(folder)),
                                LentPermit::new(&deps.in_flight),
                            ));
                        }
                        None
                    }
                    _ => None,
                };
                if self.wait(after).await {
                    Step::Continue
                } else {
                    Step::End(JobOutcome::Parked)
                }
            }
            Err(err) => {
                error!(error = %err, "Output written but not recorded; it is rewritten at the next start");
                Step::End(JobOutcome::Parked)
            }
        }
    }

    /// A storage output: Claid wrote the object; the daemon checks it is in the bucket (HEAD)
    /// and records its `s3://` URI, or, with the storage's `output_local_copy`, reads it and
    /// writes it into the outbox as a downloaded result. Never written by the daemon. Also the
    /// first step of a job whose earlier run's local copy is gone (`intake::unchanged_state`):
    /// it fetches the object again (`copy_of`: the sha256 of that copy), or, when the object
    /// is gone too or no longer the one copied (replaced in the bucket since), queues the image.
    async fn verify_object(
        &self,
        id: JobId,
        job: &JobV1,
        (uri, width, height, task_id): (String, u32, u32, Option<u64>),
        copy_of: Option<&str>,
        write_failures: &mut Writes,
    ) -> Step {
        let deps = &*self.deps;
        // Checked before, by an earlier run or by this job before its copy's write failed
        // (a local copy fetched again by a later run of the same row, never submitted; or a
        // replay's kept object): an object gone since, or no longer the one copied, is not
        // this image's result, and the image is made again.
        let checked_before = job.attempts == 0
            || matches!(
                job.state,
                JobState::Downloading {
                    kept_since_ms: Some(_),
                    ..
                }
            );
        let Some((connector, key)) = crate::storages::split_uri(&uri) else {
            return self
                .fail(
                    id,
                    FailureCode::BadResponse,
                    &format!("`{uri}` is not a storage object"),
                )
                .await;
        };
        // Where the storage pointed at the submit decides, when the connector's name is
        // another storage's now (names swapped between storages since).
        let Some(storage) = deps
            .storages
            .for_object(connector, job.submitted_to.as_deref())
        else {
            // A storage taken out of the config while Claid wrote its objects: failing the
            // job would have a replay or a second drop bill the written object again. It
            // waits for the entry to be put back and the daemon restarted, the storage held
            // under its connector's name (`/healthz`; `run --once` ends 64 at once).
            let why = format!(
                "no storage of the config has the connector \"{}\", which Claid wrote this job's output to: put its `storages` entry back and restart the daemon (the object is then checked, not made again)",
                crate::text::Escaped::str(connector)
            );
            if deps.health.hold_storage(connector, why.clone()) {
                error!(object = %crate::text::Escaped::str(&uri), "{why}");
            }
            return Step::End(JobOutcome::Parked);
        };
        let mut n_missing = 0u32;
        // Copied once from where the storage pointed at the submit ([`Runner::find_moved_output`]).
        let mut copied = false;
        let mut info = loop {
            let sightings = self.bucket_sightings(storage);
            let err = match self
                .through_bucket_outage(storage, || storage.objects.head(key))
                .await
            {
                Ok(info) => {
                    let now = ObjectSeen::new(key, info.e_tag.clone(), info.last_modified);
                    // The bytes of an object the edit replaced, written again since, while the
                    // storage pointed elsewhere at the submit: a copy of the earlier edit (a
                    // catalogue copied to the new place before the move), not Claid's. Claid's
                    // is looked for where it wrote (and copied over it).
                    // (Such a copy is not taken for the new edit either when nothing is found
                    // elsewhere: it is the earlier edit, whatever its time of writing.)
                    let places = if job.replaces.iter().flatten().any(|b| b.same_bytes(&now)) {
                        self.former_places(job, storage).await
                    } else {
                        Vec::new()
                    };
                    let moved = !places.is_empty();
                    if !copied && moved {
                        match self
                            .copy_from_elsewhere((id, job), storage, &places, key)
                            .await
                        {
                            Former::Copied(_) => {
                                copied = true;
                                continue;
                            }
                            Former::Failed(why) => {
                                let code = FailureCode::ObjectMissing;
                                return self.fail(id, code, &object_read_failed(code, &why)).await;
                            }
                            Former::NotThere => {}
                        }
                    }
                    let Some(before) = job
                        .replaces
                        .iter()
                        .flatten()
                        .find(|b| b.is_same(&now) || (moved && b.same_bytes(&now)))
                    else {
                        break info;
                    };
                    // Still the object that was there before the submit: Claid's may not be
                    // visible yet (looked at again, as for a missing one), or Claid wrote
                    // elsewhere (its connector changed since the start) or not at all.
                    // Looked for again by a replay (the object was kept for it), still that
                    // object: the edit is not there, and the image is made again.
                    if !checked_before {
                        match self.look_again(&mut n_missing).await {
                            Some(true) => {
                                debug!(object = %storage.objects.uri(key), "The output object is still the one the edit replaces; looked again");
                                continue;
                            }
                            Some(false) => return Step::End(JobOutcome::Parked),
                            None => {}
                        }
                    }
                    match self
                        .find_moved_output((id, job), (storage, key), sightings.at, &mut copied)
                        .await
                    {
                        Moved::Copied => {
                            n_missing = 0;
                            continue;
                        }
                        Moved::Parked => return Step::End(JobOutcome::Parked),
                        Moved::Elsewhere(why) => {
                            let code = FailureCode::ObjectMissing;
                            return self.fail(id, code, &object_read_failed(code, &why)).await;
                        }
                        Moved::No => {}
                    }
                    if checked_before {
                        info!(object = %storage.objects.uri(key), "The output object is still the one the edit replaced; the image is made again (billed again)");
                        return self.make_again(id).await;
                    }
                    let message = format!(
                        "{} is still the object that was there before this image was submitted ({}): Claid did not write the new edit there. Check that Claid's connector \"{}\" writes to the bucket and folder of `storages.{}` (they matched when the daemon last compared them), then `replay --failed`",
                        storage.objects.uri(key),
                        before.describe(),
                        crate::text::Escaped::str(connector),
                        storage.name,
                    );
                    let code = FailureCode::ObjectMissing;
                    return self
                        .fail(id, code, &object_read_failed(code, &message))
                        .await;
                }
                Err(None) => return Step::End(JobOutcome::Parked),
                Err(Some(err)) => err,
            };
            let code = object_failure(&err);
            // "Not found" from a bucket that is gone (deleted, a proxy answering for another)
            // is no answer about the object: waited out, then looked at afresh.
            if code == FailureCode::ObjectMissing && n_missing >= MISSING_OBJECT_CHECKS {
                match self.confirm_bucket(storage, sightings).await {
                    Ok(true) => {
                        n_missing = 0;
                        continue;
                    }
                    Ok(false) => {}
                    Err(()) => return Step::End(JobOutcome::Parked),
                }
            }
            // Not there yet: Claid may announce the task before the object is visible in the
            // bucket. Looked at again four times (11 to 15 s in all) before it counts as
            // missing; so is one looked for again (a replay of a job kept for that, a later
            // run of a done row): a "not found" that comes and goes (a proxy in front of the
            // bucket) made the image again, billed, at the first.
            if code == FailureCode::ObjectMissing {
                match self.look_again(&mut n_missing).await {
                    Some(true) => {
                        debug!(error = %err, "The output object was not in the bucket yet; looked again");
                        continue;
                    }
                    Some(false) => return Step::End(JobOutcome::Parked),
                    None => {}
                }
            }
            // Written where the daemon did not look (a storage moved with its connector)?
            if code == FailureCode::ObjectMissing {
                match self
                    .find_moved_output((id, job), (storage, key), sightings.at, &mut copied)
                    .await
                {
                    Moved::Copied => {
                        n_missing = 0;
                        continue;
                    }
                    Moved::Parked => return Step::End(JobOutcome::Parked),
                    Moved::Elsewhere(why) => {
                        return self.fail(id, code, &object_read_failed(code, &why)).await;
                    }
                    Moved::No => {}
                }
            }
            // The object Claid wrote is gone since it was checked: made again.
            if code == FailureCode::ObjectMissing && checked_before {
                info!(object = %storage.objects.uri(key), "The output object of an earlier run is gone from the bucket; the image is made again (billed again)");
                return self.make_again(id).await;
            }
            // Any other answer (a bucket away or busy was waited out above) does not heal.
            return self.fail(id, code, &object_read_failed(code, &err)).await;
        };
        let max_copy = self.settings().limits.max_download_bytes;
        // Its bytes were read whole before (`copy_of`), and passed the image check: an object
        // empty now is another put at its key since (failed `object-missing`, the job kept
        // failing at every replay). (One larger than a copy may be now is not told apart
        // from `limits.max_download_bytes` lowered since: done with the object, as always.)
        // An empty answer may be a proxy's, not the bucket's (nothing made again on its word).
        if info.size == 0
            && let Some(step) = self.unless_served_by_the_bucket(storage).await
        {
            return step;
        }
        if checked_before && copy_of.is_some() && info.size == 0 {
            return self
                .object_replaced(id, &storage.objects.uri(key), "it is empty now")
                .await;
        }
        if info.size == 0 {
            // Looked at again (a replay, a later run of the row): made again, as a broken
            // one is (failed, a replay would look at it again and again).
            if checked_before {
                return self
                    .object_replaced(id, &storage.objects.uri(key), "it is empty")
                    .await;
            }
            let code = FailureCode::ObjectMissing;
            let why = format!("{} is empty", storage.objects.uri(key));
            return self.fail(id, code, &object_read_failed(code, &why)).await;
        }
        if storage.entry.output_local_copy && info.size > max_copy {
            // The object is the output, written and billed; only its copy is over the limit.
            // Failed (`download-too-large`), the job had a later drop bill the image again.
            warn!(object = %storage.objects.uri(key), bytes = info.size, max = max_copy, "The output object is larger than limits.max_download_bytes: no local copy is made; the job is done with the object");
        } else if storage.entry.output_local_copy {
            let permit = tokio::select! {
                permit = deps.downloads.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return Step::End(JobOutcome::Parked),
                },
                _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
            };
            let max = self.settings().limits.max_download_bytes;
            // Read like the check above: an outage of the bucket or refused keys are waited
            // out (the object is written and billed; failing the job would have a second drop
            // or a replay bill it again).
            // Checked like a download: the image Claid described (a store that kept part of
            // the object wrote a broken image into the outbox, reported done). Read again a
            // few times (a bucket still settling), then failed.
            let wanted = wanted_format(job);
            let mut reads = 0u32;
            let bytes = loop {
                let sighting = self.bucket_sightings(storage);
                let bytes = match self
                    .through_bucket_outage(storage, || storage.objects.get(key, max))
                    .await
                {
                    Ok(bytes) => bytes,
                    Err(None) => return Step::End(JobOutcome::Parked),
                    Err(Some(err)) => {
                        let looked = (&mut n_missing, checked_before);
                        match self
                            .read_not_found(id, (storage, key), sighting, &err, looked)
                            .await
                        {
                            NotFoundRead::Other => {}
                            NotFoundRead::Again => continue,
                            NotFoundRead::End(step) => return step,
                        }
                        let code = match err {
                            crate::objects::ObjectError::TooLarge { .. } => {
                                FailureCode::DownloadTooLarge
                            }
                            _ => object_failure(&err),
                        };
                        return self.fail(id, code, &object_read_failed(code, &err)).await;
                    }
                };
                // The copy an earlier run made is gone, and the object is not what it copied
                // any more (replaced in the bucket since, by another tool or a person): not
                // this image's result, so it is made again, as when the object is gone.
                if let Some(copied) = copy_of
                    && checked_before
                    && hex::encode(sha2::Sha256::digest(&bytes)) != copied
                {
                    // Read from the bucket, not from a proxy's page (made again, billed, on
                    // its word).
                    if let Some(step) = self.unless_served_by_the_bucket(storage).await {
                        return step;
                    }
                    let why = format!("its {} bytes are not those copied before", bytes.len());
                    return self
                        .object_replaced(id, &storage.objects.uri(key), &why)
                        .await;
                }
                let Some(message) =
                    result_mismatch(&bytes, (width, height), wanted, "the output object's")
                else {
                    break bytes;
                };
                if let Some(step) = self.unless_served_by_the_bucket(storage).await {
                    return step;
                }
                // Once the reads are spent (a bucket still settling is read again first).
                if !copied && (checked_before || reads + 1 >= MAX_MISMATCHED_DOWNLOADS) {
                    copied = true;
                    if self
                        .copy_over_mismatch((id, job), storage, (key, width, height), &message)
                        .await
                        .is_some()
                    {
                        continue;
                    }
                }
                // It passed this check when it was copied before: another image was put at
                // its key since (read again, it would fail the job at every replay).
                if checked_before {
                    return self
                        .object_replaced(id, &storage.objects.uri(key), &message)
                        .await;
                }
                let object = storage.objects.uri(key);
                if let Some(step) = self
                    .read_again(id, (&mut reads, checked_before), message, &object)
                    .await
                {
                    return step;
                }
            };
            // An object taken without Claid's description of it: its size is the image's own.
            let (width, height) = if width == 0 || height == 0 {
                output::check::dimensions(&bytes, (0, 0)).unwrap_or((width, height))
            } else {
                (width, height)
            };
            let dims = (width, height, task_id);
            return self
                .write_and_finish(id, job, bytes, dims, write_failures, permit)
                .await;
        }
        // Read at its two ends, not downloaded (a few KiB, whatever the image's size): the
        // image Claid described (its format, and its size from the header) and whole (its end
        // marker; a WebP's length against the object's). A store that kept part of the object
        // was recorded done ("not empty" was all a HEAD could tell).
        let wanted = wanted_format(job);
        let mut reads = 0u32;
        let (width, height) = loop {
            let sighting = self.bucket_sightings(storage);
            let ends = self
                .through_bucket_outage(storage, || object_ends(&storage.objects, key, info.size))
                .await;
            let (head, tail) = match ends {
                Ok(ends) => ends,
                Err(None) => return Step::End(JobOutcome::Parked),
                Err(Some(err)) => {
                    let looked = (&mut n_missing, checked_before);
                    match self
                        .read_not_found(id, (storage, key), sighting, &err, looked)
                        .await
                    {
                        NotFoundRead::Other => {}
                        NotFoundRead::Again => continue,
                        NotFoundRead::End(step) => return step,
                    }
                    let code = object_failure(&err);
                    return self.fail(id, code, &object_read_failed(code, &err)).await;
                }
            };
            let Some(message) = object_mismatch(&head, &tail, info.size, (width, height), wanted)
            else {
                // An object taken without Claid's description of it: its size from its header.
                if width == 0 || height == 0 {
                    break output::check::dimensions(&head, (0, 0)).unwrap_or((width, height));
                }
                break (width, height);
            };
            if let Some(step) = self.unless_served_by_the_bucket(storage).await {
                return step;
            }
            if !copied && (checked_before || reads + 1 >= MAX_MISMATCHED_DOWNLOADS) {
                copied = true;
                if let Some(copy) = self
                    .copy_over_mismatch((id, job), storage, (key, width, height), &message)
                    .await
                {
                    info = copy;
                    continue;
                }
            }
            // (`output_local_copy` turned off since its copy was made.) It passed the check
            // when it was copied: another image was put at its key since.
            if checked_before && copy_of.is_some() {
                return self
                    .object_replaced(id, &storage.objects.uri(key), &message)
                    .await;
            }
            let object = storage.objects.uri(key);
            if let Some(step) = self
                .read_again(id, (&mut reads, checked_before), message, &object)
                .await
            {
                return step;
            }
        };
        let done = DoneInfo {
            path: storage.objects.uri(key),
            bytes: info.size,
            sha256: String::new(),
            width,
            height,
            task_id,
            unchanged: false,
            skipped: false,
        };
        match deps.store.mark_done(id, done).await {
            Ok(_) => {
                info!(object = %storage.objects.uri(key), bytes = info.size, "Output object checked in the bucket");
                deps.metrics.polls_per_job.observe(f64::from(job.polls));
                Step::End(JobOutcome::Done)
            }
            Err(err) => {
                error!(error = %err, "Output object checked but not recorded; it is checked again at the next start");
                Step::End(JobOutcome::Parked)
            }
        }
    }

    /// An output object at its key that is not the edit's image (`message` says how), in a
    /// storage that pointed elsewhere when the job was submitted (or whose connector was found
    /// pointing elsewhere since): Claid's object may be at that place, and the one at the key
    /// another (a stale object of an older sync at the new place). An object there that is
    /// the image Claid described (`width`×`height`, the output's format, whole) and was
    /// written after the job's submit (so not an earlier edit left at the old place) is
    /// copied over the one at the key: what the copy reports. None other is copied (the
    /// object at the key is the user's to keep), and nothing under `on_output_exists: fail`.
    /// Called once the reads of the object at the key are spent (a bucket still settling is
    /// read again first). (The object at the key was failed `result-mismatch`, and a replay
    /// made the image again, billed again, while the paid edit lay at the old place:
    /// acceptance run.)
    async fn copy_over_mismatch(
        &self,
        (id, job): (JobId, &JobV1),
        storage: &crate::storages::OpenStorage,
        (key, width, height): (&str, u32, u32),
        message: &str,
    ) -> Option<crate::objects::ObjectInfo> {
        if self.settings().policies.on_output_exists == OnOutputExists::Fail {
            return None;
        }
        let JobState::Downloading {
            submitted_at_ms: Some(submitted_at_ms),
            ..
        } = job.state
        else {
            return None;
        };
        // Written since the submit, give or take the bucket's clock.
        let since_submit = |at: Option<std::time::SystemTime>| {
            at.and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|at| {
                    at.as_millis() as u64 + BUCKET_CLOCK_SKEW.as_millis() as u64 >= submitted_at_ms
                })
        };
        let places = self.former_places(job, storage).await;
        if places.is_empty() {
            return None;
        }
        let wanted = wanted_format(job);
        for place in &places {
            let Ok(found) = place.head(key).await else {
                continue;
            };
            if !since_submit(found.last_modified) {
                continue;
            }
            if !may_be_the_edit(job, key, &found) {
                continue;
            }
            let Ok((head, tail)) = object_ends(place, key, found.size).await else {
                continue;
            };
            if object_mismatch(&head, &tail, found.size, (width, height), wanted).is_some() {
                continue;
            }
            let (from, to) = (place.uri(key), storage.objects.uri(key));
            let max = self.settings().limits.max_download_bytes;
            match storage.objects.copy_from(place, key, max).await {
                Ok(info) => {
                    warn!(job_id = id, from = %from, to = %to, storage = %storage.name, replaced = %Escaped::str(message), "The object at the output's key was not the edit's image; the edit was where the storage's connector pointed before (its `url` or Claid's connector changed since): copied over it, not billed again");
                    return Some(info);
                }
                Err(err) => {
                    warn!(job_id = id, from = %from, to = %to, error = %err, "The edit is where the storage's connector pointed before, and could not be copied to the output's key");
                }
            }
        }
        None
    }

    /// An output object read as not the edit's image: whether the bucket served it at all.
    /// A storage's endpoint that says a key no one wrote is there ([`ObjectStorage::probe_absent`];
    /// a proxy's or captive portal's page answering 200 to everything) serves no object of
    /// the bucket, so what was read says nothing of Claid's: the check waits that out as an
    /// outage of the bucket (told at most once a minute, `/healthz` failing, `run --once`
    /// ends 69 at `api.unreachable_timeout` with the job left for the next run), then starts
    /// again from the object's `HEAD`. (Read three times, the page failed the billed image
    /// `result-mismatch`, and a replay made before the proxy was mended billed it again; one
    /// checked before was made again at once: acceptance run.) `None`: the endpoint answers
    /// as the bucket (the mismatch stands); `Some(step)`: the job's step ends.
    ///
    /// [`ObjectStorage::probe_absent`]: crate::objects::ObjectStorage::probe_absent
    async fn unless_served_by_the_bucket(
        &self,
        storage: &crate::storages::OpenStorage,
    ) -> Option<Step> {
        let deps = &*self.deps;
        let name = &storage.name;
        let mut attempts = deps.retry.start(retry::Step::Download);
        let mut waited = false;
        loop {
            let err = match storage.objects.probe_absent().await {
                Ok(()) if waited => {
                    deps.health.storage_ok(name);
                    info!(storage = %Escaped::str(name), "A storage's endpoint answers as its bucket again; the output object is checked afresh");
                    return Some(Step::Continue);
                }
                Ok(()) => return None,
                Err(err) => err,
            };
            if matches!(err, crate::objects::ObjectError::Setup { .. }) {
                if deps.health.storage_flaky(name, err.to_string()) {
                    warn!(storage = %Escaped::str(name), error = %err, "A storage's endpoint serves something other than its bucket: what it answered for an object is not the bucket's, so the checks wait and are retried with backoff, failing nothing (told at most once a minute; `/healthz` says failing once it has lasted 10 s; in `run --once` until `api.unreachable_timeout`)");
                }
            } else if bucket_away(&err) {
                bucket_failure(&deps.health, name, &err, true);
            } else if waited {
                // Answered otherwise (keys refused now, a listing error): checked afresh,
                // as any read of the object is.
                return Some(Step::Continue);
            } else {
                return None;
            }
            waited = true;
            match decide(&mut attempts, Failure::Unreachable) {
                Decision::Retry { after } if self.wait(after).await => {}
                _ => return Some(Step::End(JobOutcome::Parked)),
            }
        }
    }

    /// One more read of an output `object` found not to be the result (`message` says how):
    /// after [`MAX_MISMATCHED_DOWNLOADS`] reads the job fails `result-mismatch`, naming the
    /// object; before, a warning and a wait. `Some(step)` ends the job's step.
    async fn read_again(
        &self,
        id: JobId,
        (reads, checked_before): (&mut u32, bool),
        message: String,
        object: &str,
    ) -> Option<Step> {
        *reads += 1;
        if *reads >= MAX_MISMATCHED_DOWNLOADS {
            // Looked at again (a replay of a failed check, a later run of the row): it is
            // still no image of the edit, so it is made again. (Failed, it was kept for the
            // next replay to look at again, which would never end.)
            if checked_before {
                warn!(object = %object, reason = %Escaped::str(&message), "The output object is still not the edit's image when looked at again; the image is made again (billed again)");
                return Some(self.make_again(id).await);
            }
            let code = FailureCode::ResultMismatch;
            let message = object_read_failed(code, &format!("{message} ({object})"));
            return Some(self.fail(id, code, &message).await);
        }
        warn!(message = %message, object = %object, "The output object does not match the result; reading it again");
        let retry = &self.deps.retry;
        if !self.wait(jitter(*reads, retry.base, retry.cap)).await {
            return Some(Step::End(JobOutcome::Parked));
        }
        None
    }

    /// Queues a job of a later run whose earlier output object cannot be taken again (gone,
    /// or replaced): the image is made again.
    /// A storage object checked (and copied) before that is another now, put at its key since
    /// (`why`): not this image's result, so the image is made again (billed again).
    async fn object_replaced(&self, id: JobId, object: &str, why: &str) -> Step {
        warn!(object = %object, reason = %Escaped::str(why), "The output object checked before was replaced in the bucket since; the image is made again (billed again)");
        self.make_again(id).await
    }

    /// Queues the job again (its submit is to be made again) at the back of the submit
    /// queue, where a batch may take it with others. (Made again in this task, it went
    /// alone: a `replay --failed` of many storage outputs found gone sent them one by one.)
    async fn make_again(&self, id: JobId) -> Step {
        match self.deps.store.requeue(id, false).await {
            Ok(job) => {
                self.deps.queue.push_back(vec![(job.manifest, id)]);
                Step::End(JobOutcome::Requeued)
            }
            Err(err) => {
                error!(error = %err, "Cannot queue the image again; it resumes at the next start");
                Step::End(JobOutcome::Parked)
            }
        }
    }

    /// One call of the daemon's own to `storage`'s bucket about an object Claid wrote and
    /// billed (the output check, the local copy's read): the bucket's endpoint away or busy
    /// (no answer, or 5xx/429/408 after object_store's own retries), or the daemon's keys refused (rotated keys, a changed bucket policy), is waited out like an
    /// outage, told once (`/healthz` says failing; `run --once` ends at
    /// `api.unreachable_timeout` and leaves the job to the next run), never failing the job,
    /// since a replay or a second drop would bill the object again. `Err(Some(err))`: the
    /// bucket answered otherwise (the caller decides); `Err(None)`: the daemon stops.
    async fn through_bucket_outage<T, F, Fut>(
        &self,
        storage: &crate::storages::OpenStorage,
        mut call: F,
    ) -> Result<T, Option<crate::objects::ObjectError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::objects::ObjectError>>,
    {
        let deps = &*self.deps;
        let mut attempts = deps.retry.start(retry::Step::Download);
        loop {
            let err = match call().await {
                Ok(value) => {
                    deps.health.storage_ok(&storage.name);
                    return Ok(value);
                }
                Err(err) => err,
            };
            if matches!(err, crate::objects::ObjectError::Denied { .. }) {
                // Told at most once a minute: another job's call to the bucket that succeeds
                // meanwhile ends the outage, and the next refusal began another (the same
                // warning three times in a second).
                if deps.health.storage_flaky(&storage.name, err.to_string()) {
                    warn!(storage = %crate::text::Escaped::str(&storage.name), error = %err, "A storage's bucket refuses the daemon's keys for an output object; what needs it waits and is retried (told at most once a minute; fix `credentials_file`, then restart the daemon; in `run --once` until `api.unreachable_timeout`)");
                }
            } else if bucket_away(&err) {
                bucket_failure(&deps.health, &storage.name, &err, true);
                debug!(error = %err, "Cannot reach the bucket of an output object; retrying");
            } else {
                bucket_answered(&deps.health, &storage.name, &err);
                return Err(Some(err));
            }
            match decide(&mut attempts, Failure::Unreachable) {
                Decision::Retry { after } if self.wait(after).await => {}
                _ => return Err(None),
            }
        }
    }

    /// Now, and how many listings have found `storage`'s bucket missing so far: read before a
    /// look, and handed to [`Runner::confirm_bucket`] if the look finds nothing.
    fn bucket_sightings(&self, storage: &crate::storages::OpenStorage) -> Sighting {
        let seen = self
            .deps
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&storage.name)
            .copied()
            .unwrap_or_default();
        Sighting {
            at: Instant::now(),
            missing: seen.missing,
            unconfirmed: seen.missing > 0 && seen.exists_at.is_none(),
        }
    }

    /// Whether a look that found nothing in `storage`'s bucket (begun as `sighting` says) may
    /// stand, waiting while the bucket does not exist. S3 answers a `HEAD` or `GET` in a bucket
    /// that does not exist `404` without a body it can be told by, like a missing object: a
    /// look before the submit took it for "nothing there" (every image submitted and billed
    /// into a bucket that was gone, objects `skip` should keep overwritten), and the check
    /// after Claid's answer failed billed images `object-missing`, which a replay billed again.
    /// A listing made after the look began tells them apart (one listing at a time: the looks
    /// of a batch share one); a bucket gone is an outage of the storage (an ERROR once,
    /// `/healthz`, `run --once` ends 69 at `api.unreachable_timeout`), waited out, listed again
    /// every [`MISSING_BUCKET_RELIST`] at least. `Ok(true)`: look again (the bucket was missing
    /// at or after the look began, and is back); `Ok(false)`: the look stands (the bucket
    /// exists, or a listing was answered otherwise). `Err`: the daemon stops, or gave up.
    async fn confirm_bucket(
        &self,
        storage: &crate::storages::OpenStorage,
        sighting: Sighting,
    ) -> Result<bool, ()> {
        let deps = &*self.deps;
        let name = &storage.name;
        let gate = deps
            .bucket_gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.clone())
            .or_default()
            .clone();
        let _gate = tokio::select! {
            gate = gate.lock() => gate,
            () = deps.cancel.cancelled() => return Err(()),
        };
        let before = deps
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or_default();
        // Missing when this look began, or found missing since by another look's listing.
        let mut look_again = sighting.unconfirmed || before.missing != sighting.missing;
        // A listing made after this look began found it: no need for another.
        if before.exists_at.is_some_and(|at| at > sighting.at) {
            return Ok(look_again);
        }
        let mut attempts = deps.retry.start(retry::Step::Download);
        loop {
            match storage.objects.bucket_exists().await {
                Ok(true) => {
                    deps.buckets
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(name.clone())
                        .or_default()
                        .exists_at = Some(Instant::now());
                    deps.health.bucket_found(name);
                    return Ok(look_again);
                }
                Ok(false) => {
                    look_again = true;
                    not_found_by_listing(&deps.buckets, name);
                    let why = format!(
                        "the bucket {} does not exist (NoSuchBucket): it answers a look at any object \"not found\"; what needs it waits (recreate the bucket, or fix `storages.{}`; in `run --once` until `api.unreachable_timeout`)",
                        crate::text::Escaped::str(storage.objects.bucket()),
                        name
                    );
                    if deps.health.bucket_missing(name, why.clone()) {
                        error!(storage = %crate::text::Escaped::str(name), "{why}");
                    }
                }
                Err(err) if bucket_away(&err) => {
                    bucket_failure(&deps.health, name, &err, true);
                }
                // The daemon's keys may list the bucket (the start checked it): a listing
                // refused now is keys rotated or revoked, waited out as a look refused is. (The
                // look's "not found" stood, and the image was submitted on it.)
                Err(err @ crate::objects::ObjectError::Denied { .. }) => {
                    if deps.health.storage_flaky(name, err.to_string()) {
                        warn!(storage = %crate::text::Escaped::str(name), error = %err, "A storage's bucket refuses the daemon's keys a listing; what needs it waits and is retried (told at most once a minute; fix `credentials_file`, then restart the daemon; in `run --once` until `api.unreachable_timeout`)");
                    }
                }
                // Answered, but not as S3 answers a listing (a web page's 404, a proxy's 400):
                // whether the bucket is there is not known, so the look's "not found" cannot
                // stand (it stood: behind a proxy answering 404 pages, `skip` had every
                // object it should keep overwritten, without a word). Waited out as an
                // outage of the storage, listed again until it answers; the look is made
                // again after. (A refusal told before is replaced by this on `/healthz`.)
                Err(err) => {
                    look_again = true;
                    not_found_by_listing(&deps.buckets, name);
                    if deps.health.storage_flaky(name, err.to_string()) {
                        warn!(storage = %crate::text::Escaped::str(name), error = %err, "A storage's bucket answers a listing as no S3 bucket does; what needs to know whether an object is there waits, and the bucket is listed again (told at most once a minute; is a proxy or another server answering at the storage's `endpoint`? In `run --once` until `api.unreachable_timeout`)");
                    }
                }
            }
            match decide(&mut attempts, Failure::Unreachable) {
                Decision::Retry { after } => {
                    let after = if look_again {
                        after.max(MISSING_BUCKET_RELIST)
                    } else {
                        after
                    };
                    if !self.wait(after).await {
                        return Err(());
                    }
                }
                _ => return Err(()),
            }
        }
    }

    /// A read of an output object answered "not found" (`err`) after its HEAD found it: from
    /// a bucket gone meanwhile (a flapping proxy answering `NoSuchBucket`), it is no answer
    /// about the object, and the object's check starts again once the bucket is back
    /// (`End(Continue)`; `End(End(Parked))` when the daemon stops). In a bucket that is
    /// there, the object is read again as a missing one is looked at again (`Again`, after
    /// the wait; `looks` counts them with the HEAD's): one such answer failed a billed image
    /// `object-missing`, which a replay billed again. Once those looks are spent: `Other`
    /// (failed as missing by the caller), or, for an object `checked_before` (an earlier run's,
    /// or one kept for a replay), made again.
    async fn read_not_found(
        &self,
        id: JobId,
        (storage, key): (&crate::storages::OpenStorage, &str),
        sighting: Sighting,
        err: &crate::objects::ObjectError,
        (looks, checked_before): (&mut u32, bool),
    ) -> NotFoundRead {
        if !matches!(err, crate::objects::ObjectError::NotFound { .. }) {
            return NotFoundRead::Other;
        }
        match self.confirm_bucket(storage, sighting).await {
            Ok(true) => return NotFoundRead::End(Step::Continue),
            Ok(false) => {}
            Err(()) => return NotFoundRead::End(Step::End(JobOutcome::Parked)),
        }
        match self.look_again(looks).await {
            Some(true) => {
                debug!(error = %err, "The output object was not found by its read after its HEAD found it; read again");
                NotFoundRead::Again
            }
            Some(false) => NotFoundRead::End(Step::End(JobOutcome::Parked)),
            None if checked_before => {
                info!(object = %storage.objects.uri(key), "The output object of an earlier run is gone from the bucket; the image is made again (billed again)");
                NotFoundRead::End(self.make_again(id).await)
            }
            None => NotFoundRead::Other,
        }
    }

    /// Fails a job whose task (`task_id`) Claid may still end and bill: its result, if Claid
    /// announces it later, is still taken (see `Dispatch::timed_out`).
    async fn fail_watched(
        &self,
        id: JobId,
        job: &JobV1,
        task_id: u64,
        code: FailureCode,
        message: &str,
    ) -> Step {
        let failed = self.fail(id, code, message).await;
        self.deps
            .dispatch
            .timed_out(TaskRef::Async(task_id), vec![(job.manifest, id)]);
        failed
    }

    async fn fail(&self, id: JobId, code: FailureCode, message: &str) -> Step {
        Step::End(self.failed(id, code, message).await)
    }

    /// [`Runner::fail`] where the caller wants the outcome itself (a look before the submit).
    async fn failed(&self, id: JobId, code: FailureCode, message: &str) -> JobOutcome {
        self.failed_keeping(id, code, message, None).await
    }

    /// [`Runner::fail`] of a job whose storage object's copy could not be written, with the
    /// sha256 of the object's bytes (`object_sha`): a replay copies the object again only
    /// while it still has them.
    async fn fail_keeping(
        &self,
        id: JobId,
        code: FailureCode,
        message: &str,
        object_sha: Option<String>,
    ) -> Step {
        Step::End(self.failed_keeping(id, code, message, object_sha).await)
    }

    /// The job recorded failed (see [`Runner::fail_keeping`]); `Parked` when the store
    /// refused the write.
    async fn failed_keeping(
        &self,
        id: JobId,
        code: FailureCode,
        message: &str,
        object_sha: Option<String>,
    ) -> JobOutcome {
        match self
            .deps
            .store
            .mark_failed_keeping(id, code, message, object_sha)
            .await
        {
            Ok(_) => {
                warn!(code = %code, reason = %message, "Job failed");
                JobOutcome::Failed(code)
            }
            Err(err) => {
                error!(error = %err, "Cannot record the job failure");
                JobOutcome::Parked
            }
        }
    }

    /// Sleeps `d` unless the daemon stops first; returns false when it stopped.
    async fn wait(&self, d: Duration) -> bool {
        super::sleep_unless_cancelled(d, &self.deps.cancel).await
    }
}

/// The failure message of a storage output's check that ended in `code`: when the object stays
/// kept for a replay ([`FailureCode::is_object_read`]), that a replay looks at it again; when
/// it was not found ([`FailureCode::is_object_looked_for_again`]), that a replay looks for it
/// first.
fn object_read_failed(code: FailureCode, why: &impl std::fmt::Display) -> String {
    if code.is_object_looked_for_again() {
        format!(
            "{why}; once the cause is mended, `replay --failed` looks for the object in the bucket again first: no new bill if Claid's edit is there then (else the image is made again, billed)"
        )
    } else if code.is_object_read() {
        format!(
            "{why}; the object Claid wrote (and billed) stays in the bucket: once the cause is mended, `replay --failed` looks at it again, no new bill (unless it is found gone or broken then: that image is made again)"
        )
    } else {
        why.to_string()
    }
}

/// What a read of an output object answered "not found" comes to ([`Runner::read_not_found`]).
enum NotFoundRead {
    /// The error is no "not found", or the object is not there after every look: the caller
    /// fails the job with it.
    Other,
    /// Read it again (after the wait).
    Again,
    /// The job's step ends so (the bucket was away and is back: checked afresh; made again;
    /// or parked).
    End(Step),
}

/// What the task says of a result whose URL was refused, polled once
/// ([`Runner::fresh_result_url`]).
enum Fresh {
    /// DONE with another URL (re-signed, moved): downloaded from the start.
    Url(String, u32, u32),
    /// DONE with the same URL or none, or Claid no longer knows the task: the result is gone.
    None,
    /// The poll failed, or the task is not DONE: nothing is known.
    Unknown,
}

impl Fresh {
    /// A poll for another URL that failed with `err`: a task Claid no longer knows (404, 410)
    /// has no result left; anything else says nothing.
    fn after_failed_poll(err: &ClaidError) -> Fresh {
        match err {
            ClaidError::Rejected {
                status: 404 | 410, ..
            } => Fresh::None,
            _ => Fresh::Unknown,
        }
    }
}

/// The sha256 of `bytes` when `job` copies a storage output's object (the copy a failed
/// write keeps for a replay, [`Runner::fail_keeping`]); `None` for a downloaded result.
fn object_sha(job: &JobV1, bytes: &[u8]) -> Option<String> {
    job.state
        .downloads_object()
        .then(|| hex::encode(sha2::Sha256::digest(bytes)))
}

/// What a failed write (`code`) of `job`'s result adds to its failure: that a replay fetches
/// the result (or copies the storage output's object) again, when the store keeps it
/// ([`JobV1::unwritten_result`]). For a folder recipe's image,
/// which moves to `rejected/` where a replay refuses it: that moving it back fetches it.
fn refetch_hint(job: &JobV1, code: FailureCode, inbox: &Path) -> &'static str {
    if job.unwritten_result(code).is_none() {
        return "";
    }
    // A recipe's image moves to rejected/, where a replay refuses it; moved back, it is taken
    // in anew, and its key finds the result kept (`done_by_key`).
    if job.local && crate::manifest::recipe_for(&inbox.join(&job.input)).is_file() {
        return "; once the cause is mended, moving the image back into its recipe folder within 23 hours fetches the result Claid made (it keeps it a day): no new bill (later, the image is sent again)";
    }
    if job.state.downloads_object() {
        return "; once the cause is mended, `replay --failed` copies the object Claid wrote from the bucket again: no new bill";
    }
    "; once the cause is mended, `replay --failed` within 23 hours fetches the result Claid made again (it keeps it a day): no new bill (later, the image is sent again)"
}

/// The objects now at a storage output's key and at the key with its format's other extension
/// (`.jpeg`, `.tif`: Claid may write either), in that order, looked at until `wanted` are
/// found. An error other than "not there" ends the looks.
async fn objects_at(
    storage: &crate::storages::OpenStorage,
    key: &str,
    wanted: usize,
) -> Result<Vec<crate::objects::ObjectInfo>, crate::objects::ObjectError> {
    // Both keys asked at once (one after the other, a slow bucket made the wait twice as long).
    let keys: Vec<String> = crate::objects::output_keys(key).collect();
    let answers =
        futures_util::future::join_all(keys.iter().map(|key| storage.objects.head(key))).await;
    let mut found = Vec::new();
    for answer in answers {
        if found.len() >= wanted {
            break;
        }
        match answer {
            Ok(info) => found.push(info),
            Err(crate::objects::ObjectError::NotFound { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(found)
}

/// What a job failed before its submit cost: nothing, unless an earlier submit of it, whose
/// answer was lost, may have been billed.
fn nothing_billed(job: &JobV1) -> &'static str {
    if job.waits_for_adoption() {
        "nothing was billed now (its earlier submit, whose answer was lost, may have been)"
    } else {
        "nothing was billed"
    }
}

/// What in the outbox would refuse the result of `job` (see [`crate::output::blocked_way`]);
/// `None` for an output Claid writes into a storage.
pub(super) fn local_output_blocked(outbox: &Path, job: &JobV1) -> Option<(FailureCode, String)> {
    if crate::storages::destination_of(&job.body, &job.output_rel).is_some() {
        return None;
    }
    crate::output::blocked_way(outbox, &job.output_rel)
}

/// The folder that refused an output's write at `output`: the deepest one present on its way
/// (the writer creates the missing ones below it), at most the outbox itself.
fn refusing_folder(outbox: &Path, output: &Path) -> PathBuf {
    output
        .ancestors()
        .skip(1)
        .take_while(|folder| folder.starts_with(outbox))
        .find(|folder| folder.is_dir())
        .unwrap_or(outbox)
        .to_path_buf()
}

/// The failure code of an object storage error: a missing object, refused keys, or (anything
/// else) a bucket that may come back.
fn object_failure(err: &crate::objects::ObjectError) -> FailureCode {
    use crate::objects::ObjectError;
    match err {
        ObjectError::NotFound { .. } => FailureCode::ObjectMissing,
        ObjectError::Denied { .. } => FailureCode::StorageDenied,
        ObjectError::UnsafeKey { .. } | ObjectError::TooLarge { .. } => FailureCode::ObjectMissing,
        _ => FailureCode::StorageUnreachable,
    }
}

/// A failed call of the daemon's own to a bucket that may heal (`transient`): whether its
/// endpoint is away (refused, timed out: an outage, told to health so that `run --once`
/// ends at `api.unreachable_timeout`), and the failure the retry policy gets for it.
fn bucket_failure(
    health: &HealthState,
    storage: &str,
    err: &crate::objects::ObjectError,
    transient: bool,
) -> (bool, Failure) {
    let outage = transient && bucket_away(err);
    if outage {
        if health.storage_flaky(storage, err.to_string()) {
            warn!(storage = %crate::text::Escaped::str(storage), error = %err, "A storage's bucket does not answer, or answers that it is busy (5xx); what needs it waits and is retried with backoff (told at most once a minute; `/healthz` says failing once it has lasted 10 s; in `run --once` until `api.unreachable_timeout`)");
        }
        (true, Failure::Unreachable)
    } else {
        (false, Failure::Transient)
    }
}

/// Notes that a listing did not find `storage`'s bucket (see [`BucketSeen::missing`]).
fn not_found_by_listing(
    buckets: &std::sync::Mutex<std::collections::HashMap<String, BucketSeen>>,
    storage: &str,
) {
    let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = buckets.entry(storage.to_owned()).or_default();
    seen.missing += 1;
    seen.exists_at = None;
}

/// A call to a bucket failed with an answer (a missing object or bucket): its endpoint is
/// there, so an outage told to health is over (`/healthz` said `failing` until the next
/// success, long after the bucket was back). Not a refusal of the daemon's keys (403): that
/// failure goes on (a staging upload's 403 logged "the bucket answers again" between two
/// warnings of the same refusal).
fn bucket_answered(health: &HealthState, storage: &str, err: &crate::objects::ObjectError) {
    if !bucket_away(err) && !matches!(err, crate::objects::ObjectError::Denied { .. }) {
        health.storage_ok(storage);
    }
}

/// Whether a bucket's endpoint is away: a request failed before any answer came (refused,
/// reset, timed out, a name that does not resolve), as object_store describes it, or every
/// try was answered that the server cannot serve now (5xx, such as S3's 503 SlowDown or 500
/// InternalError; 429; 408), or answered without S3's headers (a proxy's page). Each heals
/// by itself, so what needs the bucket waits.
fn bucket_away(err: &crate::objects::ObjectError) -> bool {
    let crate::objects::ObjectError::Request { cause, .. } = err else {
        return false;
    };
    // object_store names its retry settings (`retry_timeout: 20s`) in any error it retried,
    // answered or not: not a timeout of the request.
    let cause = cause.to_ascii_lowercase().replace("retry_timeout", "");
    let unanswered = [
        "error sending request",
        "no answer from",
        "connection refused",
        "connection reset",
        "connect",
        "timed out",
        "timeout",
        "dns error",
        // An answer cut short (the connection closed before its Content-Length was sent):
        // the bucket's server or a proxy on the way failing, not the object.
        "body error",
        "end of file before message length",
        "error decoding response body",
        "incomplete message",
        "connection closed before message completed",
        // Answered without the `Content-Length` every S3 answer to a `HEAD` has: a page
        // served chunked by a proxy in front of the bucket, not S3. (It failed the billed
        // images `storage-unreachable`.) Not a missing ETag, which a server may never send.
        "content-length header missing from response",
    ]
    .iter()
    .any(|needle| cause.contains(needle));
    // object_store's words for an answer it gave up on: `status code: 503 Service Unavailable`.
    let busy = cause.match_indices("status code: ").any(|(at, found)| {
        let status = &cause[at + found.len()..];
        status.starts_with('5') || status.starts_with("429") || status.starts_with("408")
    });
    unanswered || busy
}

/// The format a job's output is named for (its extension follows the output format), which
/// its result must have.
fn wanted_format(job: &JobV1) -> Option<&'static str> {
    job.output_rel
        .rsplit_once('.')
        .and_then(|(_, extension)| output::check::format_of_extension(extension))
}

/// Whether `found`, the object at `key` of a place the job's storage pointed at before, may be
/// Claid's edit: not empty, and not an object the edit replaces ([`JobV1::replaces`]).
fn may_be_the_edit(job: &JobV1, key: &str, found: &crate::objects::ObjectInfo) -> bool {
    let seen = ObjectSeen::new(key, found.e_tag.clone(), found.last_modified);
    found.size != 0
        && !job
            .replaces
            .iter()
            .flatten()
            .any(|before| before.is_same(&seen))
}

/// Why `bytes` are not the result Claid described (`width`×`height`, in the format `wanted`
/// the output is named for), or `None` when they are. `what` names where the bytes came from.
fn result_mismatch(
    bytes: &[u8],
    (width, height): (u32, u32),
    wanted: Option<&str>,
    what: &str,
) -> Option<String> {
    if let Some(why) = output::check::cut_short(bytes) {
        return Some(format!("{what} image is cut short: {why}"));
    }
    // 0x0: no size was given (an object taken as a lost submit's result): not compared.
    let unsized_result = width == 0 || height == 0;
    match (
        output::check::dimensions(bytes, (width, height)),
        output::check::format_of(bytes),
    ) {
        (Some((w, h)), found)
            if ((w, h) == (width, height) || unsized_result)
                && !matches!((wanted, found), (Some(want), Some(got)) if want != got) =>
        {
            None
        }
        (Some((w, h)), _) if (w, h) != (width, height) && !unsized_result => Some(format!(
            "{what} image is {w}x{h}, the result says {width}x{height}"
        )),
        (Some(_), Some(got)) => Some(format!(
            "{what} image is {got}, the output is {}",
            wanted.unwrap_or("another format")
        )),
        _ => Some(format!("{what} bytes are not a decodable image")),
    }
}

/// How many first bytes of an output object are read to check it ([`object_mismatch`]).
const OBJECT_HEAD_BYTES: u64 = 16 * 1024;

/// An output object's first [`OBJECT_HEAD_BYTES`] and last [`output::check::TAIL_BYTES`]
/// (the whole object, once, when it is no larger than the two).
async fn object_ends(
    objects: &crate::objects::ObjectStorage,
    key: &str,
    size: u64,
) -> Result<(bytes::Bytes, bytes::Bytes), crate::objects::ObjectError> {
    if size <= OBJECT_HEAD_BYTES + output::check::TAIL_BYTES {
        let whole = objects.get_range(key, 0..size).await?;
        return Ok((whole.clone(), whole));
    }
    let head = objects.get_range(key, 0..OBJECT_HEAD_BYTES).await?;
    let tail = objects
        .get_range(key, size - output::check::TAIL_BYTES..size)
        .await?;
    Ok((head, tail))
}

/// [`result_mismatch`] for an object read at its ends ([`object_ends`]): its format, its
/// dimensions when its header is within `head` (and Claid gave them), and whether it ends
/// as its format does. A whole object is checked as a download is.
fn object_mismatch(
    head: &[u8],
    tail: &[u8],
    size: u64,
    (width, height): (u32, u32),
    wanted: Option<&str>,
) -> Option<String> {
    let what = "the output object's";
    if head.len() as u64 == size && width > 0 && height > 0 {
        return result_mismatch(head, (width, height), wanted, what);
    }
    if let Some(why) = output::check::ends_cut_short(head, tail, size) {
        return Some(format!("{what} image is cut short: {why}"));
    }
    let found = output::check::format_of(head);
    if let (Some(want), Some(got)) = (wanted, found)
        && want != got
    {
        return Some(format!("{what} image is {got}, the output is {want}"));
    }
    if found.is_none() {
        return Some(format!("{what} bytes are not an image"));
    }
    match output::check::dimensions(head, (width, height)) {
        Some((w, h)) if width > 0 && height > 0 && (w, h) != (width, height) => Some(format!(
            "{what} image is {w}x{h}, the result says {width}x{height}"
        )),
        _ => None,
    }
}

/// How long after its first empty answer a job's download that gets empty bodies is waited
/// out as the host's fault (a CDN that answers before it has the file), before it spends the
/// download's budget: ten empty answers in a few seconds failed a billed image.
const EMPTY_BODY_PATIENCE: Duration = Duration::from_secs(300);

/// Whether `err` is a download whose body ended cleanly with no byte.
fn is_empty_body(err: &ClaidError) -> bool {
    matches!(
        err,
        ClaidError::Truncated {
            image_end: Some(crate::claid::EMPTY_BODY),
            ..
        }
    )
}

/// How long a download failing with `err` is waited out as the host's fault: a day after the
/// result was recorded (Claid keeps it that long) for a host away, a few minutes after the
/// first empty answer for an empty body; `None` when the failure is not the host's.
fn result_host_away_for(err: &ClaidError) -> Option<Duration> {
    match err {
        _ if !result_host_away(err) => None,
        _ if is_empty_body(err) => Some(EMPTY_BODY_PATIENCE),
        _ => Some(crate::pipeline::dispatch::KEPT_TTL),
    }
}

/// A download failed because the result's host is away (it answered 5xx, 408 or 429, broke
/// the body off, or did not answer at all), not because of the result: waited out while the
/// result may still be there.
fn result_host_away(err: &ClaidError) -> bool {
    match err {
        // 429: the host limits its rate; the result waits there as it does through an outage.
        ClaidError::DownloadStatus { status, .. } => {
            *status >= 500 || *status == 408 || *status == 429
        }
        // A body broken off again and again (a host or a proxy closing mid-transfer) is the
        // host's fault, not the result's: it failed the billed image after ten tries in a few
        // seconds, and a replay paid for it again. So is a body without an announced length
        // (delimited by the connection's close) that ends before its image does: on the wire
        // that is a cut too. Not one that had all of its announced length without a whole
        // image: that is the result's own (a cache keeping half a file), asked again on the
        // download's budget (waiting a day for it told a healthy host as away).
        // An empty body (ended cleanly), though, is a host (a CDN or a cache between) that
        // answered before it had the file: waited out too, for [`EMPTY_BODY_PATIENCE`] only
        // (`result_host_away_for`).
        _ if is_empty_body(err) => true,
        ClaidError::Truncated {
            image_end: None,
            received,
            ..
        }
        | ClaidError::Truncated {
            expected: None,
            received,
            ..
        } => *received > 0,
        ClaidError::Connect { .. }
        | ClaidError::Tls { .. }
        | ClaidError::Timeout { .. }
        | ClaidError::Network { .. } => true,
        _ => false,
    }
}

/// The retry policy's decision on a failure that happened now.
fn decide(attempts: &mut retry::Attempts, failure: Failure) -> Decision {
    attempts.on_failure(failure, Instant::now(), &mut rand::rng())
}

/// A job's output writes (or output object reads) that failed with an error that may heal.
#[derive(Default)]
struct Writes {
    failures: u32,
    /// Held from the first failed write until the job ends (written or given up).
    retrying: Option<crate::pipeline::health::WriteRetrying>,
    /// A folder the daemon may not write refused the output: its images wait (unbilled) and
    /// this job's in-flight permit is lent back, until the job ends; its task is no longer
    /// at Claid, and it must not hold images into other folders back for its ten minutes.
    folder_hold: Option<(crate::pipeline::health::WritesBlocked, LentPermit)>,
}

impl Writes {
    /// One more failed write (or a download the machine had no descriptor for), `why`: told
    /// to health, which counts the job as retrying writes until it ends.
    fn failed(&mut self, health: &Arc<HealthState>, why: String) {
        self.retrying = Some(health.write_failed(self.retrying.take(), why));
    }
}

/// One more `max_in_flight` permit while this lives (a job waiting to write its result is no
/// task at Claid); dropped, the permit is taken back as soon as one is free.
struct LentPermit {
    in_flight: Arc<Semaphore>,
}

impl LentPermit {
    fn new(in_flight: &Arc<Semaphore>) -> LentPermit {
        in_flight.add_permits(1);
        LentPermit {
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for LentPermit {
    fn drop(&mut self) {
        let in_flight = self.in_flight.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(permit) = in_flight.acquire_owned().await {
                    permit.forget();
                }
            });
        }
    }
}

/// The wait after the `n`-th failed write of an output (from 1): 1 s doubling to 60 s, less
/// up to a fifth at random so jobs blocked together do not retry together.
fn healing_write_wait(n: u32) -> Duration {
    let ceiling =
        Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    ceiling.mul_f64(1.0 - rand::random::<f64>() / 5.0)
}

/// A full-jitter backoff for the `n`-th failure (the policy's shape).
fn jitter(n: u32, base: Duration, cap: Duration) -> Duration {
    retry::backoff(n, base, cap, &mut rand::rng())
}

/// The request body of a job without `input`: its body, and for a storage output the object
/// it writes (its outbox path under the destination folder) as `output.destination`.
pub fn body_of(job: &JobV1) -> serde_json::Value {
    let mut body = (*job.body).clone();
    if let Some(object) = crate::storages::destination_of(&job.body, &job.output_rel)
        && let Some(output) = body.get_mut("output").and_then(|o| o.as_object_mut())
    {
        output.insert("destination".to_owned(), serde_json::Value::String(object));
    }
    body
}

/// The body a job's async submit sends: [`body_of`] with its `input` ([`input_of`]).
pub fn request_of(job: &JobV1) -> serde_json::Value {
    let mut body = body_of(job);
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "input".to_owned(),
            serde_json::Value::String(input_of(job).to_owned()),
        );
    }
    body
}

/// What Claid reads: the staged object of a staged local input, else the input itself.
pub fn input_of(job: &JobV1) -> &str {
    job.staged.as_deref().unwrap_or(&job.input)
}

/// The retry policy's view of a failure, and the health bookkeeping it implies: a transient
/// failure while no call has succeeded since the attempt was sent is an outage, not this
/// job's failure (it waits for the API without spending its budget).
pub fn failure_of(health: &HealthState, err: &ClaidError, sent_at: Instant) -> Failure {
    let failure = Failure::of(err);
    match failure {
        // The API answered (2xx) with a body that cannot be read: it is there, so this is no
        // outage (it was counted as one: `run --once` ended "unreachable", a daemon polled the
        // task for ever past `give_up_after`). Tried again within the step's budget.
        Failure::Transient if matches!(err, ClaidError::BadResponse { status, .. } if (200..300).contains(status)) => {
            failure
        }
        Failure::Transient | Failure::Unreachable => {
            if health.failed(err, sent_at) {
                failure
            } else {
                Failure::Unreachable
            }
        }
        // A 2xx whose answer cannot be read: the API is there.
        Failure::Ambiguous => {
            if !err.accepted_unread() {
                health.failed(err, sent_at);
            }
            failure
        }
        // Waited out (the limiter's gate holds every call until the reset); a long streak of
        // nothing else is the API failing ([`HealthState::rate_limited`]).
        Failure::RateLimited { .. } => {
            health.rate_limited(err);
            failure
        }
        Failure::Job | Failure::Systemic => failure,
    }
}

/// Refusals in a row (403/404/410) of a kept result's URL, which served it once, after which
/// the task is asked for another URL, and the result, given none, is known gone.
const KEPT_RESULT_REFUSALS: u32 = 2;

/// Lost submit answers in a row after which a job is held in doubt instead of sent again.
pub(crate) const MAX_LOST_ANSWERS: u32 = 5;

/// The answers lost of a job's or a batch's submits (each send may have been billed): how
/// long a resend waits, and when the job is held in doubt instead.
#[derive(Debug, Default)]
pub(crate) struct LostAnswers(u32);

impl LostAnswers {
    /// Counting from the lost answers a job's record already counts ([`JobV1::lost_answers`]:
    /// of earlier runs and of this one, since a submit of it was answered or a replay sent it
    /// again). Counted per call, a batch whose answers came too late for
    /// `api.request_timeout` was sent four times in each `run --once` (which then ended at
    /// `api.unreachable_timeout`) and again in the next, billed without end (acceptance run).
    pub(crate) fn already(in_doubt: u32) -> LostAnswers {
        LostAnswers(in_doubt)
    }

    /// One more lost answer; true when it is the [`MAX_LOST_ANSWERS`]th, and the job (or
    /// batch) is held in doubt rather than sent (and maybe billed) once more.
    pub(crate) fn one_more(&mut self) -> bool {
        self.0 += 1;
        self.0 >= MAX_LOST_ANSWERS
    }

    pub(crate) fn count(&self) -> u32 {
        self.0
    }

    /// The least wait before the next send: 1 s after the first lost answer, then doubling
    /// (up to `cap`), so that five sends span about 15 s and a gateway's blip shorter than
    /// that costs no image (the retry's own backoff, jittered from zero, sent all five within
    /// a couple of seconds).
    pub(crate) fn least_wait(&self, cap: Duration) -> Duration {
        match self.0 {
            0 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 1).min(16)).min(cap),
        }
    }
}

/// Before a failed submit is sent again (`failure` as classified, `retry_as` as retried, sent
/// at `sent_at`): a lost answer in an outage waits for the API to answer again
/// ([`api_answers_again`]); anything else is ready. False when the daemon stops.
pub(crate) async fn ready_to_resend(
    client: &Client,
    health: &HealthState,
    retry: &retry::Policy,
    cancel: &CancellationToken,
    (failure, retry_as, sent_at): (Failure, Failure, Instant),
) -> bool {
    if failure != Failure::Ambiguous || retry_as != Failure::Unreachable {
        return true;
    }
    api_answers_again(client, health, retry, cancel, sent_at).await
}

/// After a submit whose answer was lost while nothing answered (an outage), waits with the
/// outage's backoff until the API answers again before the submit is sent again: some call
/// succeeded since `lost_at`, or a free probe (a poll of task 0, which Claid answers 404) got
/// an answer of the API's own (a 4xx other than 408 and 429). Sent into the outage, each
/// resend may have been billed (a gateway that takes requests on and fails them): a blip of
/// a few seconds billed each image up to five times. False when the daemon stops.
pub(crate) async fn api_answers_again(
    client: &Client,
    health: &HealthState,
    retry: &retry::Policy,
    cancel: &CancellationToken,
    lost_at: Instant,
) -> bool {
    let mut n = 0u32;
    loop {
        if health.succeeded_since(lost_at) {
            return true;
        }
        // Counted as a probe (`endpoint="probe"`), not as a poll answered 404.
        match client.probe().await {
            Ok(_) => return true,
            Err(err)
                if err
                    .http_status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                return true;
            }
            Err(_) => {}
        }
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(jitter(n, retry.base, retry.cap)) => {}
            _ = cancel.cancelled() => return false,
        }
    }
}

/// While a lost submit waits for its webhook (nothing else may be sent meanwhile: a drop of
/// one batch), tells health whether the API answers, with [`api_answers_again`]'s free probes:
/// a lost answer alone is no outage, and without a call made the wait counted as one, so
/// `run --once` ended 69 ("unreachable") when the wait did, and `/healthz` failed for an API
/// nobody was asking. Never completes (a `select!` arm beside the wait).
pub(crate) async fn answered_meanwhile(
    client: &Client,
    health: &HealthState,
    retry: &retry::Policy,
    cancel: &CancellationToken,
) {
    if api_answers_again(client, health, retry, cancel, Instant::now()).await {
        health.answered();
    }
    std::future::pending::<()>().await;
}

/// How a failed submit is retried once the in-doubt policy has dealt with it: a submit whose
/// answer was lost (a gateway's 502 or 504, a timeout) while no call has succeeded since it
/// was sent is an outage of the API, waited out like a 503's (backoff up to the retry cap, no
/// failure budget; `run --once` ends at `api.unreachable_timeout` and leaves the image to the
/// next run). On the failure budget it was sent again five times in about 2 s and then failed:
/// a gateway's blip of a few seconds failed every image of a drop, each paid up to five times.
pub(crate) fn retried_as(
    health: &HealthState,
    failure: Failure,
    err: &ClaidError,
    sent_at: Instant,
) -> Failure {
    if failure == Failure::Ambiguous && !err.accepted_unread() && !health.succeeded_since(sent_at) {
        Failure::Unreachable
    } else {
        failure
    }
}

/// The retry policy's decision on a failed submit (`failure` as [`retried_as`] gives it): a
/// run of 429s past the step's budget (Claid answering nothing else, e.g. `RateLimit-Reset: 0`
/// again and again) is no failure of the image (nothing was made or billed): it is told to
/// health as an outage and waited out like one (`run --once` ends at
/// `api.unreachable_timeout`, the image left to the next run). It failed the image as
/// `rate-limited` after 120 of them.
pub(crate) fn submit_decision(
    health: &HealthState,
    attempts: &mut retry::Attempts,
    failure: Failure,
    err: &ClaidError,
) -> Decision {
    match decide(attempts, failure) {
        Decision::Fail(GiveUp::RateLimited) => {
            health.rate_limited(err);
            decide(attempts, Failure::Unreachable)
        }
        decision => decision,
    }
}

/// Reads a local input for upload and checks it is still the file that was validated: inside
/// the inbox once links are resolved, and with the content its job key was computed from (so a
/// file swapped after validation, for a symlink or for other bytes, is never uploaded).
fn read_local_input(
    inbox: &Path,
    job: &JobV1,
    max_input: u64,
) -> Result<Vec<u8>, (FailureCode, String)> {
    let path = inbox.join(&job.input);
    let unreadable = |err: std::io::Error| {
        (
            FailureCode::InputUnreadable,
            format!(
                "cannot read {}: {}",
                crate::text::Escaped::path(&path),
                crate::os_error::OsCause(&err)
            ),
        )
    };
    let inbox = inbox.canonicalize().map_err(unreadable)?;
    let resolved = path.canonicalize().map_err(unreadable)?;
    if !resolved.starts_with(&inbox) {
        return Err((
            FailureCode::InputOutsideInbox,
            format!(
                "{} now leads outside the inbox; it is not uploaded",
                path.display()
            ),
        ));
    }
    // Opened without blocking and checked to be a regular file before it is read: a FIFO
    // swapped in after validation blocked the open (and its job, and `run --once`) for ever.
    let Some((file, meta)) = open_regular(&resolved).map_err(unreadable)? else {
        return Err((
            FailureCode::InputChanged,
            format!(
                "{} is no longer a regular file (it was replaced after the manifest was validated); put the image back, then drop the manifest again",
                path.display()
            ),
        ));
    };
    if meta.len() > max_input {
        return Err((
            FailureCode::InputChanged,
            format!(
                "{} changed after the manifest was validated: it is now {} bytes, over the limit of {max_input} bytes (limits.max_input_bytes)",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(unreadable)?;
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    if !is_validated_content(job, resolved, sha256) {
        return Err((
            FailureCode::InputChanged,
            format!(
                "{} changed after the manifest was validated; drop the manifest again to process the new content",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// `path` opened without blocking (a FIFO put there would block the open until something
/// wrote into it), with its metadata, when it is a regular file; `None` for anything else.
pub(crate) fn open_regular(
    path: &Path,
) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Whether `sha256`, the content now at `path` (`job`'s local input), is what its manifest
/// was validated with: the job key hashes a local input's content (README "Incremental").
pub(crate) fn is_validated_content(job: &JobV1, path: PathBuf, sha256: String) -> bool {
    let input = Input::Local(Box::new(LocalFile {
        path,
        rel: PathBuf::from(&job.input),
        sha256,
    }));
    manifest::key_for(&input, &job.body, Path::new(&job.output_rel)) == job.key
}

/// Why a task (or batch) watched since `submitted_at_ms` (see `Polls::watched_since`) and
/// still `status` is given up:
/// unfinished for `give_up_after` (`api.poll.give_up_after`); `None` while it may still end.
pub(crate) fn overdue(
    submitted_at_ms: u64,
    give_up_after: Duration,
    status: &TaskStatus,
) -> Option<String> {
    given_up(submitted_at_ms, give_up_after, |age| {
        let status = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        format!(
            "Claid has not finished the task after {age} (status {status}; `api.poll.give_up_after`); it may still finish and be billed, and `replay` submits it again"
        )
    })
}

/// Why a task (or batch) watched since `submitted_at_ms` whose polls Claid answers with 429
/// is given up: `give_up_after` has passed (429s never spend a poll's budget: the task is
/// billed, and giving up loses its result); `None` while it may still be asked.
pub(crate) fn rate_limited_too_long(
    submitted_at_ms: u64,
    give_up_after: Duration,
) -> Option<String> {
    given_up(submitted_at_ms, give_up_after, |age| {
        format!(
            "Claid answered the task's polls with 429 (rate limited) for {age} (`api.poll.give_up_after` is {}); it may have finished and been billed: its webhook is still taken, and `replay` submits it again",
            humantime::format_duration(give_up_after)
        )
    })
}

/// Why a task (or batch) watched since `submitted_at_ms` whose polls keep failing (`err`,
/// the last failure, past the poll's failure budget) is given up: `give_up_after` has passed;
/// `None` while it may still be asked.
pub(crate) fn polls_failing_too_long(
    submitted_at_ms: u64,
    give_up_after: Duration,
    err: &ClaidError,
) -> Option<String> {
    given_up(submitted_at_ms, give_up_after, |age| {
        format!(
            "Claid's answers to the task's polls kept failing for {age} (`api.poll.give_up_after` is {}; last: {err}); it may have finished and been billed: its webhook is still taken, and `replay` submits it again",
            humantime::format_duration(give_up_after)
        )
    })
}

/// `why` of the task's age (whole seconds, as words) once `give_up_after` has passed since
/// `submitted_at_ms`; `None` before.
fn given_up(
    submitted_at_ms: u64,
    give_up_after: Duration,
    why: impl FnOnce(humantime::FormattedDuration) -> String,
) -> Option<String> {
    let age = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
    (age >= give_up_after).then(|| {
        why(humantime::format_duration(Duration::from_secs(
            age.as_secs(),
        )))
    })
}

/// The [`DoneInfo`] of a file `on_output_exists: skip` keeps: its size, hash and dimensions
/// (0 × 0 when they cannot be read from its header).
fn kept_file(path: &Path) -> std::io::Result<DoneInfo> {
    let bytes = std::fs::metadata(path)?.len();
    let sha256 = output::sha256_file(path)?;
    let (width, height) = output::check::file_dimensions(path);
    Ok(DoneInfo {
        path: path.to_string_lossy().into_owned(),
        bytes,
        sha256,
        width,
        height,
        task_id: None,
        unchanged: false,
        skipped: true,
    })
}

#[cfg(test)]
mod tests {
    /// A result's body cut on the wire (broken off, or ended by the connection's close before
    /// its image did, without an announced length) is the host's fault, waited out like an
    /// outage, and so is an empty body for a few minutes; one that had all its announced length
    /// without a whole image is the result's own (asked again on the download's budget).
    #[test]
    fn a_body_cut_on_the_wire_is_the_hosts_fault() {
        let cut = |expected: Option<u64>, received: u64, image_end: Option<&'static str>| {
            super::result_host_away(&ClaidError::Truncated {
                expected,
                received,
                request_id: None,
                image_end,
            })
        };
        let no_end = Some("the PNG has no whole IEND chunk");
        assert!(cut(Some(100), 37, None), "broken off under its length");
        assert!(cut(None, 37, None), "chunked, broken off");
        assert!(
            cut(None, 37, no_end),
            "close-delimited, ended before its image"
        );
        assert!(
            !cut(Some(37), 37, no_end),
            "its whole length, no whole image"
        );
        // An empty body that ended cleanly is the host's too, for a few minutes only; one
        // broken off before its first byte is a cut like any other.
        let empty_end = Some(crate::claid::EMPTY_BODY);
        assert!(cut(None, 0, empty_end), "empty");
        assert!(cut(Some(0), 0, empty_end), "empty, Content-Length: 0");
        assert!(!cut(None, 0, None), "broken off before a byte, no length");
        assert!(!cut(Some(100), 0, None), "broken off before a byte");
        let empty = ClaidError::Truncated {
            expected: Some(0),
            received: 0,
            request_id: None,
            image_end: empty_end,
        };
        assert_eq!(
            super::result_host_away_for(&empty),
            Some(super::EMPTY_BODY_PATIENCE)
        );
        assert!(empty.to_string().contains("the body was empty"), "{empty}");
        assert_eq!(
            super::result_host_away_for(&ClaidError::Truncated {
                expected: Some(100),
                received: 37,
                request_id: None,
                image_end: None,
            }),
            Some(crate::pipeline::dispatch::KEPT_TTL)
        );
        assert_eq!(
            super::result_host_away_for(&ClaidError::Truncated {
                expected: Some(37),
                received: 37,
                request_id: None,
                image_end: no_end,
            }),
            None
        );
    }

    /// A poll answered 200 with a body that cannot be read is no outage (the API answered):
    /// it is tried again on the step's budget, so it ends; a refused connection still counts
    /// as one.
    #[test]
    fn an_unreadable_answer_is_not_an_outage() {
        use crate::pipeline::notices::Notices;
        let health = HealthState::new(
            Notices::default(),
            "127.0.0.1:1".to_owned(),
            Arc::new(crate::claid::Unanswered::default()),
        );
        let sent_at = Instant::now();
        let unreadable = ClaidError::BadResponse {
            endpoint: crate::claid::Endpoint::Poll,
            status: 200,
            request_id: None,
            about: "body is not the expected json",
        };
        assert_eq!(
            failure_of(&health, &unreadable, sent_at),
            Failure::Transient
        );
        assert!(health.outage().is_none());
        assert!(health.failing().is_none());
    }

    fn not_found(documented: bool) -> ClaidError {
        ClaidError::Rejected {
            endpoint: crate::claid::Endpoint::Poll,
            status: 404,
            request_id: None,
            error_code: String::new(),
            error_type: String::new(),
            error_message: "Not Found".to_owned(),
            error_details: Default::default(),
            documented,
        }
    }

    /// Claid's own 404 for an old task is believed at once (it cannot come back); a 404 page
    /// from something in front of Claid is asked again (one such answer failed a billed task
    /// as `task-lost`), for at least half a minute, at most [`NOT_FOUND_MAX_ASKS`] times; an
    /// answered poll starts the count again.
    #[tokio::test(start_paused = true)]
    async fn a_404_that_is_not_claids_is_asked_again_for_half_a_minute() {
        let retry = retry::Policy::default();
        let old = NEW_TASK + Duration::from_secs(1);
        assert!(
            Unsettled::default()
                .refused(&not_found(true), &retry, old)
                .is_none()
        );
        let mut unsettled = Unsettled::default();
        let mut asked = 0;
        while let Some((after, why)) = unsettled.refused(&not_found(false), &retry, old) {
            assert_eq!(why, AskAgain::NotClaids);
            assert!(after >= NOT_FOUND_GAP);
            asked += 1;
            tokio::time::advance(after).await;
        }
        assert!(
            asked > BARE_NOT_FOUND_ASKS && asked <= NOT_FOUND_MAX_ASKS,
            "{asked}"
        );
        unsettled.answered();
        assert!(unsettled.refused(&not_found(false), &retry, old).is_some());
        // A young task's run of Claid's own 404s lasts the window too.
        let mut young = Unsettled::default();
        let started = Instant::now();
        while let Some((after, _)) = young.refused(&not_found(true), &retry, Duration::ZERO) {
            tokio::time::advance(after).await;
        }
        assert!(
            started.elapsed() >= NOT_FOUND_WINDOW,
            "{:?}",
            started.elapsed()
        );
    }

    /// An answer that stays short (DONE without a result, a batch with fewer results than
    /// images) is told once at WARN, on its first ask; the asks after it are not (a tester saw
    /// the same WARN four times in 7 s), however the answer changes between them.
    #[test]
    fn a_short_answer_is_warned_about_on_its_first_ask_only() {
        let mut unsettled = Unsettled::default();
        assert!(unsettled.partial_results(Duration::from_secs(30)).is_some());
        assert!(unsettled.first_unsettled_ask());
        let mut asks = 1;
        while unsettled.partial_results(Duration::from_secs(30)).is_some() {
            assert!(!unsettled.first_unsettled_ask(), "ask {asks}");
            asks += 1;
        }
        assert_eq!(asks, PARTIAL_RESULT_ASKS);
        let cap = Duration::from_secs(30);
        assert!(unsettled.done_without_result(cap).is_some());
        assert!(!unsettled.first_unsettled_ask());
        let mut single = Unsettled::default();
        assert!(single.done_without_result(cap).is_some());
        assert!(single.first_unsettled_ask());
        assert!(single.done_without_result(cap).is_some());
        assert!(!single.first_unsettled_ask());
    }

    /// A DONE without its result is asked about again for about three minutes, each wait at
    /// most `api.poll.max` (the waits grew to a minute whatever it said), and not for ever
    /// when `api.poll.max` is short.
    #[test]
    fn a_done_without_its_result_is_asked_again_within_poll_max_for_a_bounded_time() {
        // A short `api.poll.max` asks more often, for as long (it asked 40 times at most:
        // 35 s at `max: 1s`, and the billed image failed); below 1 s, once a second.
        for max in [30_000u64, 60_000, 2_000, 1_000, 200] {
            let cap = Duration::from_millis(max);
            let mut unsettled = Unsettled::default();
            let (mut asks, mut waited) = (0u32, Duration::ZERO);
            while let Some(wait) = unsettled.done_without_result(cap) {
                assert!(
                    wait <= cap.max(Duration::from_secs(1)),
                    "max {max}: {wait:?}"
                );
                asks += 1;
                waited += wait;
            }
            assert!(asks <= DONE_WITHOUT_RESULT_ASKS, "max {max}: {asks} asks");
            assert!(
                waited >= DONE_WITHOUT_RESULT_WINDOW
                    && waited <= DONE_WITHOUT_RESULT_WINDOW + cap.max(Duration::from_secs(1)),
                "max {max}: {waited:?} in {asks} asks"
            );
        }
    }

    use super::*;
    use crate::objects::ObjectError;

    /// A refusal of the daemon's keys (403) does not end a storage's failing state (it said
    /// "the bucket answers again" between two warnings of one refusal); a missing object, an
    /// answer of the bucket, does.
    #[test]
    fn a_refusal_of_the_keys_does_not_end_a_storage_failure() {
        use crate::pipeline::notices::Notices;
        let health = HealthState::new(
            Notices::default(),
            "127.0.0.1:1".to_owned(),
            Arc::new(crate::claid::Unanswered::default()),
        );
        let denied = ObjectError::Denied {
            op: "put",
            uri: "s3://b/staging/k".to_owned(),
            cause: "403 AccessDenied".into(),
        };
        assert!(health.storage_failed("catalog", denied.to_string()));
        bucket_answered(&health, "catalog", &denied);
        assert!(health.only_storage_failing(), "still refused");
        assert!(
            !health.storage_failed("catalog", denied.to_string()),
            "told once"
        );
        let missing = ObjectError::NotFound {
            op: "head",
            uri: "s3://b/k".to_owned(),
        };
        bucket_answered(&health, "catalog", &missing);
        assert!(!health.only_storage_failing(), "the bucket answered");
    }

    #[test]
    fn object_errors_map_to_storage_failure_codes() {
        let uri = || "s3://b/k".to_owned();
        let cases = [
            (
                ObjectError::NotFound {
                    op: "head",
                    uri: uri(),
                },
                FailureCode::ObjectMissing,
            ),
            (
                ObjectError::Denied {
                    op: "head",
                    uri: uri(),
                    cause: "403".into(),
                },
                FailureCode::StorageDenied,
            ),
            (
                ObjectError::Request {
                    op: "head",
                    uri: uri(),
                    cause: "ECONNREFUSED".into(),
                },
                FailureCode::StorageUnreachable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(object_failure(&err), code, "{err}");
        }
    }
}
