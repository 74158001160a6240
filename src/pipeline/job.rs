//! One job's task: submit (or upload) → poll → download → write → done, with the durability
//! points of SPEC §5.1 and every failure classified where it happens. The task returns a typed
//! [`JobOutcome`]; it never touches its manifest's progress, report or file (the finisher does).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sha2::Digest;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::claid::wire::TaskStatus;
use crate::claid::{ClaidError, Client, ErrorClass};
use crate::codes::FailureCode;
use crate::config::{InDoubtPolicy, OnOutputExists, PollConfig};
use crate::manifest::{self, Input};
use crate::metrics::Metrics;
use crate::output::{self, ExistsPolicy};
use crate::pipeline::health::HealthState;
use crate::pipeline::polls::Polls;
use crate::pipeline::submitter::Queue;
use crate::pipeline::{Settings, on_file_pool};
use crate::store::{DoneInfo, JobId, JobState, JobV1, Store, StoreError, now_ms};

/// A submit that keeps failing transiently gives up after this many attempts during which the
/// API answered other calls (it stays replayable from the store); attempts while every call
/// fails (an outage) do not count. Polls and downloads of a task that exists never give up.
const MAX_TRANSIENT_SUBMITS: u32 = 12;

/// How a job's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The output is written and recorded.
    Done,
    /// The job failed with this code (recorded).
    Failed(FailureCode),
    /// The submit may have reached Claid and the policy is `hold`: a human decides.
    Held,
    /// Refused systemically (paused): the job is back at the front of the queue.
    Requeued,
    /// The task stopped (shutdown, or a store error); the job resumes at the next start.
    Parked,
    /// The job was not this task's to run (its run was cancelled meanwhile).
    NotRun,
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
    pub polls: Arc<Polls>,
    pub poll: PollConfig,
    pub health: Arc<HealthState>,
    /// Systemically refused jobs go back to its front.
    pub queue: Arc<Queue>,
    pub cancel: CancellationToken,
}

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

    /// Runs a job's steps until it is terminal, held, parked for shutdown, or requeued.
    pub async fn run(&self, id: JobId) -> JobOutcome {
        let span = tracing::Span::current();
        let mut recorded_input = false;
        let mut recorded_task = false;
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
                span.record("input", job.input.as_str());
                span.record("manifest", job.manifest);
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

    /// Durability point 1, the submit, durability point 2 (SPEC §5.1).
    async fn submit(&self, id: JobId, job: &JobV1) -> Step {
        let deps = &*self.deps;
        let mut transient_failures = 0u32;
        let mut attempts = 0u32;
        let local_bytes = if job.local {
            let inbox = deps.inbox.clone();
            let owned = job.clone();
            match on_file_pool(move || read_local_input(&inbox, &owned)).await {
                Ok(bytes) => Some(bytes),
                Err((code, message)) => return self.fail(id, code, &message).await,
            }
        } else {
            None
        };
        loop {
            match deps.store.mark_submitting(id).await {
                Ok(_) => {}
                // Cancelled meanwhile (its run drains): not this task's to submit.
                Err(StoreError::Conflict { .. }) => return Step::End(JobOutcome::NotRun),
                Err(err) => {
                    error!(error = %err, "Cannot record the submit intent; job left queued");
                    return Step::End(JobOutcome::Parked);
                }
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
                    let recorded = deps
                        .store
                        .mark_submitted(id, task_id, &result_url, request_id.as_deref())
                        .await;
                    if let Err(err) = recorded {
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
                Err(err) => {
                    if let Some(rid) = err.request_id() {
                        let _ = deps.store.record_request_id(id, rid).await;
                    }
                    match err.class() {
                        ErrorClass::Job => {
                            // Claid answered and refused this job: the API itself is up.
                            deps.health.ok();
                            return self.fail(id, failure_code(&err), &err.to_string()).await;
                        }
                        ErrorClass::Ambiguous => match self.settings().policies.in_doubt {
                            InDoubtPolicy::Resubmit => {
                                warn!(error = %err, "Submit outcome unknown; resubmitting (in doubt)");
                                if deps.store.requeue(id, true).await.is_err() {
                                    return Step::End(JobOutcome::Parked);
                                }
                                if !self.wait(backoff(1, deps.poll.max)).await {
                                    return Step::End(JobOutcome::Parked);
                                }
                            }
                            InDoubtPolicy::Hold => {
                                warn!(error = %err, "Submit outcome unknown; held for `replay --in-doubt`");
                                if let Err(err) = deps.store.mark_in_doubt(id).await {
                                    error!(error = %err, "Cannot record the job as held in doubt");
                                    return Step::End(JobOutcome::Parked);
                                }
                                return Step::End(JobOutcome::Held);
                            }
                        },
                        ErrorClass::Systemic => {
                            if deps.store.requeue(id, false).await.is_err() {
                                return Step::End(JobOutcome::Parked);
                            }
                            deps.health.pause(&err, systemic_status(&err));
                            deps.queue.push_front((job.manifest, id));
                            return Step::End(JobOutcome::Requeued);
                        }
                        ErrorClass::Transient => {
                            if deps.store.requeue(id, false).await.is_err() {
                                return Step::End(JobOutcome::Parked);
                            }
                            attempts += 1;
                            deps.health.failed(&err);
                            // The failure is this job's only if the API answered other calls
                            // meanwhile; while every call fails (an outage) the job waits for
                            // the API without using up its budget.
                            if deps.health.succeeded_since(sent_at) {
                                transient_failures += 1;
                                if transient_failures >= MAX_TRANSIENT_SUBMITS {
                                    return self
                                        .fail(id, failure_code(&err), &err.to_string())
                                        .await;
                                }
                            }
                            warn!(error = %err, attempt = attempts, "Submit failed; retrying");
                            if !self.wait(backoff(attempts, deps.poll.max)).await {
                                return Step::End(JobOutcome::Parked);
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
        let accepted = self.deps.client.submit(&body).await?;
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
        let uploaded = self
            .deps
            .client
            .upload(&file_name, bytes, &job.body)
            .await?;
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
        let deps = &*self.deps;
        let elapsed = Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
        let mut n_poll = 0u32;
        let mut transient_failures = 0u32;
        let mut delay = deps.polls.first_delay(elapsed);
        loop {
            if !self.wait(delay).await {
                return Step::End(JobOutcome::Parked);
            }
            match deps.client.poll(&result_url).await {
                Ok(polled) => {
                    transient_failures = 0;
                    deps.health.ok();
                    // Not flushed: a lost poll count only skews statistics.
                    let _ = deps
                        .store
                        .record_poll(id, polled.request_id.as_deref())
                        .await;
                    let task = polled.task;
                    match task.status {
                        TaskStatus::Done => {
                            let took =
                                Duration::from_millis(now_ms().saturating_sub(submitted_at_ms));
                            deps.polls.record(took);
                            deps.metrics.task_seconds.observe(took.as_secs_f64());
                            let Some(output) = task.result.output_object else {
                                return self
                                    .fail(
                                        id,
                                        FailureCode::BadResponse,
                                        "task is DONE but has no output_object",
                                    )
                                    .await;
                            };
                            let Some(url) = output.tmp_url.clone() else {
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
                                format!("task ended {:?}", task.status)
                            } else {
                                message
                            };
                            return self.fail(id, FailureCode::ClaidError, &message).await;
                        }
                        TaskStatus::Other(ref status) => {
                            warn!(status = %status, "Unknown task status; polling again");
                        }
                        _ => {}
                    }
                    n_poll += 1;
                    delay = deps.polls.next_delay(n_poll);
                }
                Err(err) => match err.class() {
                    ErrorClass::Job => {
                        // The task id is unknown to Claid: its result cannot be fetched. Failing
                        // keeps the promise not to pay twice; `replay` can resubmit.
                        return self.fail(id, FailureCode::TaskLost, &err.to_string()).await;
                    }
                    ErrorClass::Systemic => {
                        deps.health.pause(&err, systemic_status(&err));
                        delay = deps.poll.max;
                    }
                    ErrorClass::Transient | ErrorClass::Ambiguous => {
                        deps.health.failed(&err);
                        transient_failures += 1;
                        warn!(error = %err, "Poll failed; retrying");
                        delay = backoff(transient_failures, deps.poll.max);
                    }
                },
            }
        }
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
        let deps = &*self.deps;
        let permit = tokio::select! {
            permit = deps.downloads.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Step::End(JobOutcome::Parked),
            },
            _ = deps.cancel.cancelled() => return Step::End(JobOutcome::Parked),
        };
        let mut failures = 0u32;
        let bytes = loop {
            match deps.client.download(&url).await {
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
                            return self.fail(id, FailureCode::ResultMismatch, &message).await;
                        }
                        warn!(message = %message, "Download does not match the result; retrying");
                    }
                },
                Err(err) => match err.class() {
                    ErrorClass::Job => {
                        return self.fail(id, failure_code(&err), &err.to_string()).await;
                    }
                    _ => {
                        failures += 1;
                        if failures >= MAX_TRANSIENT_SUBMITS {
                            return self.fail(id, failure_code(&err), &err.to_string()).await;
                        }
                        warn!(error = %err, "Download failed; retrying");
                    }
                },
            }
            if !self.wait(backoff(failures, deps.poll.max)).await {
                return Step::End(JobOutcome::Parked);
            }
        };
        let outbox = deps.outbox.clone();
        let rel = PathBuf::from(&job.output_rel);
        let policy = match self.settings().policies.on_output_exists {
            OnOutputExists::Replace => ExistsPolicy::Replace,
            OnOutputExists::Skip => ExistsPolicy::Skip,
            OnOutputExists::Fail => ExistsPolicy::Fail,
        };
        // Written (and fsynced) on the blocking pool, then recorded: the job task runs both
        // to the end (it is never aborted), so a shutdown does not come between them.
        let written =
            on_file_pool(move || output::write_atomic(&outbox, &rel, &bytes, policy)).await;
        let written = match written {
            Ok(written) => {
                let n_bytes = written.bytes;
                let info = DoneInfo {
                    path: written.path.to_string_lossy().into_owned(),
                    bytes: n_bytes,
                    sha256: written.sha256,
                    width,
                    height,
                    task_id,
                    unchanged: false,
                };
                deps.store.mark_done(id, info).await.map(|_| Ok(n_bytes))
            }
            Err(err) => Ok(Err(err)),
        };
        drop(permit);
        match written {
            Ok(Ok(n_bytes)) => {
                info!(bytes = n_bytes, width, height, "Output written");
                deps.metrics.bytes_written.inc_by(n_bytes);
                deps.metrics.polls_per_job.observe(f64::from(job.polls));
                Step::End(JobOutcome::Done)
            }
            Ok(Err(err)) => {
                let code = FailureCode::parse(err.code()).unwrap_or(FailureCode::OutputIo);
                // A policy refusal or a path that leads out of the outbox (a planted symlink) is
                // about this job and will not heal by waiting: fail it.
                if matches!(
                    code,
                    FailureCode::OutputExists | FailureCode::OutputUnsafePath
                ) {
                    return self.fail(id, code, &err.to_string()).await;
                }
                // Disk full or an I/O error: the job stays Downloading and is retried; the
                // operator sees the error. Nothing is lost.
                error!(error = %err, code = %code, "Cannot write the output; retrying later");
                if self.wait(deps.poll.max).await {
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

    async fn fail(&self, id: JobId, code: FailureCode, message: &str) -> Step {
        match self.deps.store.mark_failed(id, code, message).await {
            Ok(_) => {
                warn!(code = %code, reason = %message, "Job failed");
                Step::End(JobOutcome::Failed(code))
            }
            Err(err) => {
                error!(error = %err, "Cannot record the job failure");
                Step::End(JobOutcome::Parked)
            }
        }
    }

    /// Sleeps `d` unless the daemon stops first; returns false when it stopped.
    async fn wait(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.deps.cancel.cancelled() => false,
        }
    }
}

/// The failure code of a client error.
fn failure_code(err: &ClaidError) -> FailureCode {
    FailureCode::parse(err.code()).unwrap_or(FailureCode::Unknown)
}

/// The HTTP status of a systemic refusal (401, 402 or 403).
fn systemic_status(err: &ClaidError) -> u16 {
    match err {
        ClaidError::Account { status, .. } => *status,
        _ => 0,
    }
}

/// Reads a local input for upload and checks it is still the file that was validated: inside
/// the inbox once links are resolved, and with the content its job key was computed from (so a
/// file swapped after validation, for a symlink or for other bytes, is never uploaded).
fn read_local_input(inbox: &Path, job: &JobV1) -> Result<Vec<u8>, (FailureCode, String)> {
    let path = inbox.join(&job.input);
    let unreadable = |err: std::io::Error| {
        (
            FailureCode::InputUnreadable,
            format!("cannot read {}: {err}", path.display()),
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
    let bytes = std::fs::read(&resolved).map_err(unreadable)?;
    let input = Input::Local {
        path: resolved,
        rel: PathBuf::from(&job.input),
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
    };
    if manifest::key_for(&input, &job.body, Path::new(&job.output_rel)) != job.key {
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
