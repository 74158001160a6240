//! The finisher: the one task that hears how every job ended ([`Event::Settled`]), keeps each
//! run's phase (see [`crate::lifecycle`]), and alone finishes runs: writes the report, moves the
//! manifest per `on_manifest_done` (archiving the version that was processed, never a newer
//! one), ends the run in the store (which releases its output reservations), and hands a newer
//! version of a drained file back to intake. Progress is read from the store's counters, so the
//! finisher keeps nothing per image.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::codes::FailureCode;
use crate::config::OnManifestDone;
use crate::lifecycle::{Event as LifeEvent, Phase};
use crate::manifest;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::output;
use crate::pipeline::job::JobOutcome;
use crate::pipeline::notices::{Notice, Notices};
use crate::pipeline::submitter::Queue;
use crate::pipeline::{Board, Folders, RunView, Settings, move_again_later, on_file_pool};
use crate::report;
use crate::store::{JobState, ManifestId, ManifestState, ManifestV1, RunEnd, Store, StoreError};
use crate::watcher::Candidate;

/// How long staging cleanups are left to later after one failed.
const STAGING_PAUSE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// What the finisher hears.
#[derive(Debug)]
pub enum Event {
    /// Intake registered a run (its jobs are about to be queued).
    Registered {
        id: ManifestId,
        rel: String,
        /// When its file was last written (mtime), if known: a rejection of the same path
        /// before that is mended ([`Finisher::mended`]).
        saved: Option<std::time::SystemTime>,
        sha256: String,
        n_jobs: u64,
        unchanged: u64,
    },
    /// A job's task ended.
    Settled { id: ManifestId, outcome: JobOutcome },
    /// The run's file was saved again with other content: drain the run, then take `then` in.
    Supersede { id: ManifestId, then: Candidate },
    /// Intake refused a file (moved to `rejected/`) `at`; `rel` as in `Registered`.
    Rejected {
        rel: String,
        at: std::time::SystemTime,
    },
    /// Intake found the file at `rel`, written at `saved`, valid and taken care of (its
    /// content is that of a run already taken in): a rejection of it before then was mended.
    Valid {
        rel: String,
        saved: Option<std::time::SystemTime>,
    },
    /// Intake is done with a candidate without handing it on (already known, or retried later).
    IntakeDone,
    /// Jobs of the run were requeued by a replay.
    Replayed { id: ManifestId, rel: String },
    /// Jobs held in doubt in this run adopted a task a late webhook announced: a run that
    /// waited for a human (held) runs again; one that had ended was reopened by the store.
    Adopted { id: ManifestId, rel: String },
    /// At start: a run that had not ended.
    Resumed {
        id: ManifestId,
        manifest: ManifestV1,
        /// Its jobs not yet ended when the start counted them (before any ran again).
        open: u64,
        /// Its jobs this start held in doubt (caught mid-submit by the crash).
        held: u64,
    },
    /// At start: an ended run whose staging cleanup was cut short; do it now.
    CleanStaged { id: ManifestId },
    /// Shutdown: every event sent before this one has been handled; stop.
    Stop,
}

/// The way to the finisher, shared by every task that tells it something.
#[derive(Clone)]
pub struct Tx {
    tx: mpsc::UnboundedSender<Event>,
    board: Arc<Board>,
}

impl Tx {
    pub fn new(tx: mpsc::UnboundedSender<Event>, board: Arc<Board>) -> Tx {
        Tx { tx, board }
    }

    /// Sends `event` as it is; false once the finisher has stopped (shutdown).
    pub fn send(&self, event: Event) -> bool {
        self.tx.send(event).is_ok()
    }

    /// Tells how a job's task ended. The outcome counts on the board as an event on its way
    /// until the finisher has handled it: a run is finished from the store's counts, which
    /// can run ahead of these events, and whoever waits for everything to settle (`run
    /// --once`, its totals and exit code) must not stop while one is still in the channel.
    pub fn settled(&self, id: ManifestId, outcome: JobOutcome) {
        self.send_counted(Event::Settled { id, outcome });
    }

    /// Sends an event whose handling ends with `done_pending` (a job's outcome, a resumed or
    /// replayed run), counted on the board as on its way until then.
    pub fn send_counted(&self, event: Event) {
        self.board.update(|s| s.pending += 1);
        if self.tx.send(event).is_err() {
            self.board
                .update(|s| s.pending = s.pending.saturating_sub(1));
        }
    }
}

/// What the finisher needs.
pub struct FinisherDeps {
    pub store: Store,
    pub folders: Folders,
    pub settings: Arc<RwLock<Settings>>,
    pub metrics: Arc<Metrics>,
    /// Where it publishes phases and totals.
    pub board: Arc<Board>,
    /// A draining run's queued jobs leave it.
    pub queue: Arc<Queue>,
    /// A drained file's newer version goes back here.
    pub intake: mpsc::Sender<Candidate>,
    /// Told when runs end, jobs fail or are held.
    pub notices: Notices,
    /// `api.staging`: with `api.staging_delete`, a run's staged objects no unfinished job needs
    /// are deleted when it ends ([`Finisher::staging_to_delete`]); without it they stay by
    /// choice (a lifecycle rule of the bucket removes them), and a run's end neither marks
    /// nor warns.
    pub staging: Option<crate::storages::Staging>,
}

/// The finisher's own state; only its task touches it.
pub struct Finisher {
    deps: FinisherDeps,
    runs: HashMap<ManifestId, Run>,
    /// Until when staging cleanups are left to later: one failed (the bucket refuses, is
    /// away, or hangs on deletes), so the other runs' cleanups are not each waited for in
    /// turn, holding up every run's end behind the bucket's timeout. Their marks stay; the
    /// next run's end after this time, or the next start, cleans up.
    staging_unwell_until: Option<tokio::time::Instant>,
    /// Runs this process counted in `totals.manifests_with_failures` (ended with a failed
    /// job): a replay of one takes it back.
    counted_with_failures: std::collections::HashSet<ManifestId>,
    /// Files this process rejected (`totals.rejected`), with how many times and when last,
    /// whose rejections stand: a valid version saved at the same path since takes them back
    /// (a broken save fixed in the same `run --once` ended it 2 though every image was made).
    rejected: HashMap<String, (usize, std::time::SystemTime)>,
}

/// One run the finisher tracks (no per-image data: counts come from the store).
struct Run {
    rel: PathBuf,
    sha256: String,
    phase: Phase,
    /// The newer version of the file to take in once this run has drained.
    then: Option<Candidate>,
    started: Instant,
    finished_this_run: u64,
    /// Its jobs this process counted as held (`totals.held`).
    held_counted: u64,
    /// Reported with jobs held in doubt (counted in `totals.manifests_held`, and in
    /// `manifests_with_failures` when `Some(true)`): taken back if it runs again.
    reported_held: Option<bool>,
}

impl Finisher {
    pub fn new(deps: FinisherDeps) -> Finisher {
        Finisher {
            deps,
            runs: HashMap::new(),
            staging_unwell_until: None,
            counted_with_failures: std::collections::HashSet::new(),
            rejected: HashMap::new(),
        }
    }

    /// Handles events in order until [`Event::Stop`]: at shutdown every outcome reported
    /// before the stop (the jobs that ended while draining) is still handled, so a run whose
    /// last job ended is finished, not left for the next start.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = events.recv().await {
            if matches!(event, Event::Stop) {
                return;
            }
            self.handle(event).await;
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Registered {
                id,
                rel,
                saved,
                sha256,
                n_jobs,
                unchanged,
            } => {
                self.mended(&rel, saved);
                // The run is on the board before intake's count drops: a waiter never sees
                // the candidate neither pending nor running.
                self.track(id, PathBuf::from(rel), sha256, Phase::Running);
                self.deps.board.update(|s| {
                    s.pending = s.pending.saturating_sub(1);
                    s.totals.manifests += 1;
                    s.totals.jobs += n_jobs;
                    s.totals.done += unchanged;
                    s.totals.unchanged += unchanged;
                });
                self.settle_if_done(id).await;
            }
            Event::Settled { id, outcome } => {
                self.deps.board.update(|s| match outcome {
                    JobOutcome::Done => s.totals.done += 1,
                    JobOutcome::Failed(_) => s.totals.failed += 1,
                    JobOutcome::Held => s.totals.held += 1,
                    JobOutcome::Requeued | JobOutcome::Parked | JobOutcome::NotRun => {}
                });
                if let JobOutcome::Failed(code) = outcome {
                    self.deps.metrics.job_failed(code);
                }
                if matches!(
                    outcome,
                    JobOutcome::Done | JobOutcome::Failed(_) | JobOutcome::Held
                ) && let Some(run) = self.runs.get_mut(&id)
                {
                    run.finished_this_run += 1;
                    if outcome == JobOutcome::Held {
                        run.held_counted += 1;
                    }
                    if let JobOutcome::Failed(code) = outcome {
                        self.deps.notices.send(Notice::JobFailed {
                            id,
                            rel: run.rel.to_string_lossy().into_owned(),
                            code,
                        });
                    }
                    self.publish(id);
                }
                self.settle_if_done(id).await;
                self.done_pending();
            }
            // The candidate stays counted as on its way until the old run is draining (or the
            // candidate went back to intake): taken off first, `run --once` could see nothing
            // pending and a held run, during the look at the store, and stop without the new
            // version (it exited 0 with the re-saved manifest left in the inbox).
            Event::Supersede { id, then } => {
                self.supersede(id, then).await;
                self.deps
                    .board
                    .update(|s| s.pending = s.pending.saturating_sub(1));
            }
            Event::Rejected { rel, at } => {
                let rejected = self.rejected.entry(rel).or_insert((0, at));
                *rejected = (rejected.0 + 1, rejected.1.max(at));
                self.deps.board.update(|s| {
                    s.pending = s.pending.saturating_sub(1);
                    s.totals.rejected += 1;
                });
                self.count_manifest("rejected");
            }
            Event::Valid { rel, saved } => self.mended(&rel, saved),
            Event::IntakeDone => {
                self.deps
                    .board
                    .update(|s| s.pending = s.pending.saturating_sub(1));
            }
            // A replay moves a held or ended run back to running; so does an adoption (jobs
            // held in doubt took a task a late webhook announced), which leaves a run in any
            // other phase as it is.
            event @ (Event::Adopted { .. } | Event::Replayed { .. }) => {
                let (Event::Adopted { id, rel } | Event::Replayed { id, rel }) = &event else {
                    return;
                };
                let (id, replay) = (*id, matches!(event, Event::Replayed { .. }));
                // Counted as ended with failures in this process, it runs again: its next
                // end counts it anew (`run --once` exited 2 for a run a replay mended).
                if replay && self.counted_with_failures.remove(&id) {
                    self.deps.board.update(|s| {
                        s.totals.manifests_with_failures =
                            s.totals.manifests_with_failures.saturating_sub(1);
                    });
                }
                match self.runs.get_mut(&id) {
                    Some(run) => match run.phase.next(LifeEvent::Replayed) {
                        Ok(next) if replay || run.phase == Phase::Held => {
                            run.phase = next;
                            // Reported held, it runs again: its next end counts it anew
                            // (`run --once` exited 2 for a run whose held jobs were all
                            // delivered by a late webhook).
                            if let Some(failed) = run.reported_held.take() {
                                self.deps.board.update(|s| {
                                    s.totals.manifests_held =
                                        s.totals.manifests_held.saturating_sub(1);
                                    if failed {
                                        s.totals.manifests_with_failures =
                                            s.totals.manifests_with_failures.saturating_sub(1);
                                    }
                                });
                            }
                        }
                        Ok(_) => {}
                        Err(err) if replay => {
                            warn!(error = %err, "Replay of a run in this phase is ignored")
                        }
                        Err(_) => {}
                    },
                    None => {
                        let sha256 = match self.deps.store.manifest(id).await {
                            Ok(Some(m)) => m.sha256,
                            _ => String::new(),
                        };
                        self.track(id, PathBuf::from(rel), sha256, Phase::Running);
                    }
                }
                self.publish(id);
                self.done_pending();
                self.settle_if_done(id).await;
            }
            Event::Stop => {}
            Event::CleanStaged { id } => {
                // One failed cleanup at start (the bucket refuses or is away) leaves the
                // others marked for the next start instead of holding up every run now.
                if !self.staging_unwell() {
                    match self.deps.store.staged_of_run(id).await {
                        Ok(staged) => {
                            let staged: Vec<String> = staged.into_iter().collect();
                            self.clean_staged(id, staged).await;
                        }
                        Err(err) => {
                            warn!(error = %err, "Cannot list the run's staged objects; they stay until the next start")
                        }
                    }
                }
            }
            Event::Resumed {
                id,
                manifest,
                open,
                held,
            } => {
                let phase = match manifest.state {
                    ManifestState::Draining { .. } => Phase::Draining,
                    _ => Phase::Running,
                };
                self.track(id, PathBuf::from(&manifest.rel), manifest.sha256, phase);
                if let Some(run) = self.runs.get_mut(&id) {
                    run.held_counted = held;
                }
                // Its open jobs are this process's work: each ends done, failed, held or
                // superseded here, so `run --once`'s closing counts add up.
                self.deps.board.update(|s| {
                    s.totals.manifests += 1;
                    s.totals.jobs += open + held;
                    s.totals.held += held;
                });
                self.done_pending();
                self.settle_if_done(id).await;
            }
        }
    }

    /// One event that was counted as on its way has arrived (after its run is on the board).
    fn done_pending(&self) {
        self.deps
            .board
            .update(|s| s.pending = s.pending.saturating_sub(1));
    }

    /// A valid version of the file at `rel`, written at `saved`, was taken care of: its
    /// rejections in this process no longer count (`run --once` ends 0 if nothing else
    /// failed) when it was written after the last of them, so by its user since. (A version
    /// that waited for a drain and was put back when a later save was rejected is older than
    /// that rejection: it mends nothing.) The rejected copies and their error files stay in
    /// `rejected/`, for the record.
    fn mended(&mut self, rel: &str, saved: Option<std::time::SystemTime>) {
        let Some(&(times, at)) = self.rejected.get(rel) else {
            return;
        };
        if saved.is_none_or(|saved| saved <= at) {
            return;
        }
        self.rejected.remove(rel);
        info!(
            manifest = %crate::text::Escaped::str(rel),
            "A valid version of a file rejected earlier in this run was taken in; that rejection no longer counts (its copy stays in the rejected folder)"
        );
        self.deps
            .board
            .update(|s| s.totals.rejected = s.totals.rejected.saturating_sub(times));
    }

    fn track(&mut self, id: ManifestId, rel: PathBuf, sha256: String, phase: Phase) {
        self.runs.insert(
            id,
            Run {
                rel,
                sha256,
                phase,
                then: None,
                started: Instant::now(),
                finished_this_run: 0,
                held_counted: 0,
                reported_held: None,
            },
        );
        self.publish(id);
    }

    /// Publishes one run's view (or its removal) to the board.
    fn publish(&self, id: ManifestId) {
        let view = self.runs.get(&id).map(|run| RunView {
            rel: run.rel.to_string_lossy().into_owned(),
            phase: run.phase,
            finished_this_run: run.finished_this_run,
            started: run.started,
        });
        self.deps.board.update(|s| match view {
            Some(view) => drop(s.runs.insert(id, view)),
            None => drop(s.runs.remove(&id)),
        });
    }

    /// A newer version of the run's file arrived: the run drains (its queued jobs are
    /// cancelled, tasks at Claid finish), and the newer version is taken in afterwards.
    async fn supersede(&mut self, id: ManifestId, then: Candidate) {
        if !self.runs.contains_key(&id) {
            match self.deps.store.manifest(id).await {
                // Not ended in the store, but not tracked here (its resume has not reached
                // the finisher yet): tracked now, so that it drains and ends as superseded
                // instead of being left running beside the newer version.
                Ok(Some(m)) if !m.state.is_ended() => {
                    let phase = match m.state {
                        ManifestState::Draining { .. } => Phase::Draining,
                        _ => Phase::Running,
                    };
                    self.track(id, PathBuf::from(&m.rel), m.sha256, phase);
                }
                // Ended meanwhile: the new version is taken in now.
                _ => {
                    self.hand_to_intake(then).await;
                    return;
                }
            }
        }
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        match run.phase.next(LifeEvent::Changed) {
            Ok(next) => run.phase = next,
            Err(err) => {
                // Finishing already: the newer version follows once it has ended.
                debug!(error = %err, "The run is ending; the newer version follows");
            }
        }
        run.then = Some(then);
        let rel = run.rel.clone();
        self.publish(id);
        info!(manifest = %rel.display(), "The manifest was saved again while it ran; its unsubmitted images are left to the new version");
        if let Err(err) = self.deps.store.mark_draining(id).await {
            error!(error = %err, "Cannot record the run as draining");
        }
        self.deps.queue.remove_run(id);
        match self.deps.store.cancel_queued(id).await {
            Ok(cancelled) => {
                info!(
                    cancelled = cancelled.len(),
                    "Queued images of the old version cancelled"
                );
                self.deps
                    .board
                    .update(|s| s.totals.superseded += cancelled.len() as u64);
            }
            Err(err) => error!(error = %err, "Cannot cancel the old version's queued images"),
        }
        self.settle_if_done(id).await;
    }

    /// A superseded run's end: jobs it holds in doubt (also those held while it drained)
    /// wait for a `replay` that a replaced run never gets, so they end as superseded, their
    /// possible bill counted (`in_doubt`) in its report. Those this process counted as held
    /// move over to superseded in the totals.
    async fn supersede_held(&mut self, id: ManifestId) {
        // Reported held (in this process, or found so at its start), it ends superseded: its
        // hold counts no more (`run --once` exited 2 for a run whose newer version delivered
        // everything).
        if let Some(failed) = self
            .runs
            .get_mut(&id)
            .and_then(|run| run.reported_held.take())
        {
            self.deps.board.update(|s| {
                s.totals.manifests_held = s.totals.manifests_held.saturating_sub(1);
                if failed {
                    s.totals.manifests_with_failures =
                        s.totals.manifests_with_failures.saturating_sub(1);
                }
            });
        }
        let ended = match self.deps.store.supersede_held(id).await {
            Ok(ended) => ended.len() as u64,
            Err(err) => {
                error!(error = %err, "Cannot end the old version's images held in doubt");
                return;
            }
        };
        if ended == 0 {
            return;
        }
        warn!(
            images = ended,
            "Images of the old version held in doubt end as superseded: Claid may have made (and billed) them; its report counts them, the new version makes them again if it still lists them"
        );
        let counted = self
            .runs
            .get_mut(&id)
            .map(|run| {
                let moved = run.held_counted.min(ended);
                run.held_counted -= moved;
                moved
            })
            .unwrap_or(0);
        self.deps.board.update(|s| {
            s.totals.held = s.totals.held.saturating_sub(counted);
            s.totals.superseded += counted;
        });
    }

    /// Finishes the run when none of its jobs is open any more.
    async fn settle_if_done(&mut self, id: ManifestId) {
        let Some(run) = self.runs.get(&id) else {
            return;
        };
        if !matches!(run.phase, Phase::Running | Phase::Draining) {
            return;
        }
        let Some(counts) = self.deps.store.counts_of_active(id) else {
            return;
        };
        if counts.open() > 0 {
            return;
        }
        self.finish(id, counts.in_doubt > 0).await;
    }

    /// Writes the report; when no job is held, moves the manifest per `on_manifest_done`, ends
    /// the run in the store, and takes in a newer version of the file if one waits.
    async fn finish(&mut self, id: ManifestId, held: bool) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        run.phase = match run.phase.next(LifeEvent::AllSettled { held }) {
            Ok(next) => next,
            Err(err) => {
                error!(error = %err, "Finishing a run in this phase is a bug; left as it is");
                return;
            }
        };
        let superseded = matches!(run.phase, Phase::Finishing { superseded: true });
        let rel = run.rel.clone();
        let sha256 = run.sha256.clone();
        self.publish(id);
        if superseded {
            self.supersede_held(id).await;
        }
        let recipe_image = manifest::is_image_name(&rel);
        let (tally, failures) = match self.write_report(id, recipe_image, superseded).await {
            Ok((tally, failures, written)) => {
                if !written {
                    self.deps.board.update(|s| s.totals.reports_unwritten += 1);
                }
                (tally, failures)
            }
            Err(err) => {
                error!(error = %err, manifest = %rel.display(), "Cannot read the run's jobs for its report; it is finished again at the next start");
                return;
            }
        };
        let failed = tally.counts.get("failed").copied().unwrap_or(0) > 0;
        if held && !superseded {
            if let Some(run) = self.runs.get_mut(&id)
                && let Ok(next) = run.phase.held()
            {
                run.phase = next;
                run.reported_held = Some(failed);
            }
            self.publish(id);
            self.deps.board.update(|s| {
                s.totals.manifests_held += 1;
                if failed {
                    s.totals.manifests_with_failures += 1;
                }
            });
            info!(manifest = %rel.display(), "Run reported; jobs held in doubt wait for `replay --in-doubt`");
            // The staged copies of its finished jobs are deleted now (those the held jobs
            // need stay): held, the run does not end until a replay, and the user's files
            // stayed in the bucket meanwhile.
            if self.staging_to_delete().is_some() && !self.staging_unwell() {
                match self.deps.store.staged_of_run(id).await {
                    Ok(staged) if !staged.is_empty() => {
                        self.clean_staged(id, staged.into_iter().collect()).await;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        warn!(error = %err, "Cannot list the run's staged objects; they stay until it ends")
                    }
                }
            }
            self.deps.notices.send(Notice::InDoubtHeld {
                id,
                rel: rel.to_string_lossy().into_owned(),
                held: tally.in_doubt_held,
            });
            return;
        }
        // Counted before the file moves: whoever sees the archived manifest sees its outcome.
        let outcome = if superseded {
            "superseded"
        } else if failed {
            "with-failures"
        } else {
            "done"
        };
        self.count_manifest(outcome);
        if failed && !superseded {
            self.counted_with_failures.insert(id);
            self.deps
                .board
                .update(|s| s.totals.manifests_with_failures += 1);
        }
        match (recipe_image, tally.first_failure.clone()) {
            (true, Some(reason)) => self.reject_failed_image(&rel, &reason).await,
            _ => self.dispose(&rel, &sha256, recipe_image, superseded).await,
        }
        let end = if superseded {
            RunEnd::Superseded
        } else {
            RunEnd::Finished
        };
        // A run with staged objects to delete ends marked: a crash between the end and the
        // cleanup leaves the mark, and the next start cleans up.
        // (Looked up with `api.staging` unset too: a run that staged objects before the
        // setting was removed keeps its mark, so that they are deleted once it is set again;
        // they were forgotten in the bucket without a word.)
        let staged: Vec<String> = if self.deps.staging.as_ref().is_some_and(|s| !s.delete) {
            // Kept by choice: not even looked up.
            Vec::new()
        } else {
            match self.deps.store.staged_of_run(id).await {
                Ok(staged) => staged.into_iter().collect(),
                Err(err) => {
                    warn!(error = %err, "Cannot list the run's staged objects; they stay");
                    Vec::new()
                }
            }
        };
        if !staged.is_empty() && self.staging_to_delete().is_none() {
            warn!(
                objects = staged.len(),
                "This run staged local files in a bucket, but `api.staging` is no longer set: they stay there, marked, and are deleted once it is set again (or delete them by hand)"
            );
        }
        match self.deps.store.end_run(id, end, !staged.is_empty()).await {
            Ok(counts) => {
                if !staged.is_empty() && !self.staging_unwell() {
                    self.clean_staged(id, staged).await;
                }
                self.deps.notices.send(Notice::ManifestFinished {
                    id,
                    rel: rel.to_string_lossy().into_owned(),
                    counts,
                    failures,
                    superseded,
                })
            }
            Err(err) => {
                error!(error = %err, "Cannot record the run as ended; it is finished again at the next start")
            }
        }
        let then = self.runs.remove(&id).and_then(|run| {
            debug!(manifest = %rel.display(), took = ?run.started.elapsed(), "Run ended");
            run.then
        });
        // The newer version is counted as on its way before the run leaves the board, so
        // that `run --once` never sees neither of them.
        if then.is_some() {
            self.deps.board.update(|s| s.pending += 1);
        }
        self.publish(id);
        if let Some(then) = then {
            self.send_counted_to_intake(then).await;
        }
    }

    /// Deletes the run's staged objects (`candidates`) that no unfinished job needs
    /// (`api.staging_delete`), then clears the run's cleanup mark; when some could not be
    /// deleted the mark stays and the next start tries again. Returns whether it was complete.
    fn staging_unwell(&self) -> bool {
        self.staging_unwell_until
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// The staging storage whose objects a run's end deletes (`api.staging` with
    /// `api.staging_delete`).
    fn staging_to_delete(&self) -> Option<&crate::storages::Staging> {
        self.deps.staging.as_ref().filter(|s| s.delete)
    }

    async fn clean_staged(&mut self, id: ManifestId, candidates: Vec<String>) -> bool {
        let Some(staging) = self.staging_to_delete() else {
            return true;
        };
        let cleaned = if candidates.is_empty() {
            crate::storages::Cleaned {
                complete: true,
                ..Default::default()
            }
        } else {
            let store = self.deps.store.clone();
            let cleaned = staging
                .clean(
                    candidates,
                    || async move { store.staged_in_use().await.ok() },
                )
                .await;
            debug!(
                deleted = cleaned.deleted,
                complete = cleaned.complete,
                "Staged objects deleted"
            );
            cleaned
        };
        let complete = cleaned.complete;
        if cleaned.elsewhere > 0 {
            warn!(
                objects = cleaned.elsewhere,
                "Staged objects of this run lie in another storage than `api.staging` names now (was it changed?); they are left, and deleted once `api.staging` names their storage again"
            );
        }
        // Only a delete that failed is a reason to wait: an object another run is staging
        // right now is left to the run that stages it (it was told as a failure, and every
        // cleanup waited 10 minutes; acceptance run).
        if cleaned.failed {
            warn!(
                "Some staged objects could not be deleted; this run's and other runs' staging cleanups are left for {} min (their marks stay: a later run's end or the next start deletes them)",
                STAGING_PAUSE.as_secs() / 60
            );
            self.staging_unwell_until = Some(tokio::time::Instant::now() + STAGING_PAUSE);
        }
        if complete && let Err(err) = self.deps.store.set_staging_cleanup(id, false).await {
            warn!(error = %err, "Cannot clear the run's staging cleanup mark; the next start looks again");
        }
        complete
    }

    /// Writes the JSON and CSV report, streamed from the store (a folder-recipe image gets
    /// none: its output sits beside where the report would be). Returns the tally, and whether
    /// the report was written (into the outbox, else the archive).
    async fn write_report(
        &self,
        id: ManifestId,
        recipe_image: bool,
        superseded: bool,
    ) -> Result<(report::Tally, BTreeMap<FailureCode, u64>, bool), StoreError> {
        let outbox = self.deps.folders.outbox.clone();
        let archive = self.deps.folders.archive.clone();
        self.deps
            .store
            .read_for_report(move |reader| {
                let Some(m) = reader.manifest(id)? else {
                    return Err(StoreError::ManifestNotFound(id));
                };
                let mut tally = report::Tally::default();
                let mut failures: BTreeMap<FailureCode, u64> = BTreeMap::new();
                reader.for_each_job_of_manifest(id, |_, job| {
                    tally.add(&report::row(&job));
                    // A superseded job did not fail: the newer version took it over.
                    if let JobState::Failed { code, .. } = job.state
                        && code != FailureCode::Superseded
                    {
                        *failures.entry(code).or_default() += 1;
                    }
                    Ok::<_, StoreError>(())
                })?;
                if recipe_image {
                    return Ok((tally, failures, true));
                }
                let generated_at = report::now_rfc3339();
                let header = report::Header {
                    manifest: &m.rel,
                    sha256: &m.sha256,
                    generated_at: &generated_at,
                    counts: &tally.counts,
                    in_doubt: tally.in_doubt,
                };
                // A run a newer version of its file replaced keeps reports of its own
                // (`<stem>.superseded-<registered>.report.json`): the newer run's, written
                // later under the plain names, does not overwrite them.
                let paths = report::rel_paths_of_run(&outbox, &m, superseded);
                let write = |root: &Path, paths| {
                    report::write_streamed_to(root, paths, &header, |emit| {
                        reader.for_each_job_of_manifest(id, |_, job| emit(report::row(&job)))
                    })
                };
                match write(&outbox, paths.clone()) {
                    Ok((json, _csv)) => {
                        info!(manifest = %m.rel, report = %json.display(), counts = ?tally.counts, "Manifest report written");
                        if let Some(old) = report::remove_archived_fallback(
                            &archive,
                            (&paths.0, &paths.1),
                            &m.sha256,
                        ) {
                            info!(report = %old.display(), "Removed the report an earlier end of this content left in the archive (the outbox could not take it then); the outbox's replaces it");
                        }
                    }
                    // An outbox that takes no report (read-only, not the daemon's to write, a
                    // full disk): a report an earlier run left at these names describes
                    // another content, so it is removed (never left to be taken for this
                    // run's), and the report goes beside the archived manifest, so the run
                    // still has its outcome file.
                    Err(err) => {
                        for rel in [&paths.0, &paths.1] {
                            if let Ok(stale) = crate::output::safe_join(&outbox, rel)
                                && std::fs::remove_file(&stale).is_ok()
                            {
                                warn!(report = %stale.display(), "Removed an earlier run's report, which this run's could not replace");
                            }
                        }
                        match write(&archive, paths) {
                            Ok((json, _csv)) => {
                                error!(error = %err, manifest = %m.rel, report = %json.display(), "Cannot write the manifest report into the outbox; written into the archive instead")
                            }
                            Err(again) => {
                                error!(error = %err, archive_error = %again, manifest = %m.rel, "Cannot write the manifest report, into the outbox nor into the archive");
                                return Ok((tally, failures, false));
                            }
                        }
                    }
                }
                Ok((tally, failures, true))
            })
            .await
    }

    /// Applies `on_manifest_done` to the version that was processed: the file in the inbox
    /// when it is still that version, else the copy intake kept (the newer file stays for its
    /// own run). A recipe image is moved as it is.
    async fn dispose(&self, rel: &Path, sha256: &str, recipe_image: bool, superseded: bool) {
        let folders = self.deps.folders.clone();
        let policy = self
            .deps
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .policies
            .on_manifest_done;
        let job = Dispose {
            rel: rel.to_path_buf(),
            sha256: sha256.to_owned(),
            recipe_image,
            superseded,
            policy,
        };
        let (f, j) = (folders.clone(), job.clone());
        match on_file_pool(move || j.run(&f)).await {
            Ok(Some(dest)) => info!(to = %dest.display(), "Manifest archived"),
            Ok(None) => {}
            Err(err) => {
                error!(error = %err, "Cannot move the finished manifest; tried again every few minutes while it stays in the inbox unchanged");
                let rel = job.rel.clone();
                move_again_later(
                    folders.inbox.join(rel),
                    None,
                    move || job.run(&folders),
                    |dest| info!(to = ?dest, "The finished manifest is moved out of the inbox at last"),
                );
            }
        }
    }

    /// Moves a folder-recipe image whose job failed to `rejected/` (mirrored) with
    /// `<name>.error.txt` giving the reason, so the failure is visible where images are dropped.
    async fn reject_failed_image(&self, rel: &Path, reason: &str) {
        let folders = self.deps.folders.clone();
        let src = folders.inbox.join(rel);
        let text = format!(
            "image: {}\nrecipe: {}\nfailed: {reason}\n\nThe edit of this image failed, and the image was moved here from the inbox. To try again, move it back into its recipe folder (the dashboard's page of rejected files does that), after fixing the image or the recipe if the reason calls for it: it is taken in anew (a replay refuses it while it is here).\n",
            crate::text::Escaped::path(&src),
            crate::text::Escaped::path(&manifest::recipe_for(&src))
        );
        let text = crate::text::redact_urls_in(&text).into_owned();
        type Moved = Option<(PathBuf, Result<(), output::OutputError>)>;
        let res = on_file_pool(move || -> Result<Moved, output::OutputError> {
            if !src.is_file() {
                return Ok(None);
            }
            output::move_rejected(&folders.inbox, &src, &folders.rejected, &text).map(Some)
        })
        .await;
        match res {
            Ok(Some((dest, Ok(())))) => {
                warn!(to = %dest.display(), reason, "Recipe image failed; moved to rejected")
            }
            Ok(Some((dest, Err(err)))) => {
                error!(to = %dest.display(), reason, error = %err, "Recipe image failed; moved to rejected, but its error file cannot be written (the reason is only here)")
            }
            Ok(None) => {}
            Err(err) => error!(error = %err, "Cannot move the failed recipe image"),
        }
    }

    async fn hand_to_intake(&self, candidate: Candidate) {
        self.deps.board.update(|s| s.pending += 1);
        self.send_counted_to_intake(candidate).await;
    }

    /// Sends a candidate already counted as on its way to intake; uncounted if intake is gone.
    async fn send_counted_to_intake(&self, candidate: Candidate) {
        if self.deps.intake.send(candidate).await.is_err() {
            self.deps
                .board
                .update(|s| s.pending = s.pending.saturating_sub(1));
        }
    }

    fn count_manifest(&self, outcome: &str) {
        debug_assert!(crate::metrics::MANIFEST_OUTCOMES.contains(&outcome));
        self.deps
            .metrics
            .manifests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// The name a finished manifest is taken under before it is deleted, so that the file
/// deleted is the one hashed: hidden (the watcher skips it), and fitting NAME_MAX whatever
/// the manifest's name (a long one with a suffix passed it, and it was never deleted).
fn deleting_name(src: &std::path::Path) -> PathBuf {
    crate::filename::hidden_beside(src, ".claid-deleting", 0)
}

/// Puts a version of a manifest taken from the inbox by mistake (saved over the processed one
/// a moment before it was archived or deleted; it never ran) back to `inbox/rel`, where it
/// runs. When a newer file took that place meanwhile, it goes beside it under the next free
/// name (`s.1.yaml`), never over it.
fn put_back(
    taken: &std::path::Path,
    inbox: &std::path::Path,
    rel: &std::path::Path,
) -> Result<(), String> {
    let back = output::move_into(taken, inbox, rel).map_err(|e| e.to_string())?;
    warn!(
        manifest = %crate::text::Escaped::path(rel),
        to = %crate::text::Escaped::path(&back),
        "A version of the manifest saved just as its run ended was not processed; it was put back into the inbox, where it runs"
    );
    Ok(())
}

/// What [`Finisher::dispose`] does with a finished run's manifest file, as a value
/// [`move_again_later`] can do again.
#[derive(Clone)]
struct Dispose {
    rel: PathBuf,
    sha256: String,
    recipe_image: bool,
    superseded: bool,
    policy: OnManifestDone,
}

/// Why a manifest could not be archived, with what to do when a file stands where its
/// mirrored folder must be (`archive/dir.yaml`, a manifest archived earlier, and now a folder
/// `dir.yaml/` of manifests in the inbox): the move is tried again every few minutes and
/// succeeds once that file is moved away.
fn archive_error(err: &output::OutputError, archive: &Path) -> String {
    match err {
        output::OutputError::Io { path, cause } if cause.raw_os_error() == Some(libc::ENOTDIR) => {
            // From above the archive folder: the archive itself replaced by a file is named too.
            match output::in_the_way(path, archive.parent().unwrap_or(archive)) {
                Some((file, _)) => format!(
                    "{err}; the file {} stands where the archive needs a folder: move it away (or rename it), and the manifest is archived at the next try",
                    crate::text::Escaped::path(file)
                ),
                None => err.to_string(),
            }
        }
        _ => err.to_string(),
    }
}

impl Dispose {
    /// Archives (or deletes, or keeps) the processed version of the manifest; the archived
    /// path, if one.
    fn run(&self, folders: &Folders) -> Result<Option<PathBuf>, String> {
        let (rel, sha256, recipe_image, superseded, policy) = (
            self.rel.as_path(),
            self.sha256.as_str(),
            self.recipe_image,
            self.superseded,
            self.policy,
        );
        let src = folders.inbox.join(rel);
        let copy = folders.copies.join(rel);
        // The file of a superseded run belongs to the newer version that waits for it,
        // even when it holds the same bytes again (saved A → B → A): only the copy kept at
        // intake is archived.
        let is_processed = !superseded
            && (recipe_image || output::sha256_file(&src).is_ok_and(|found| found == sha256));
        // A version saved over the file between the hash above and the move (or the
        // delete) is not the one processed: the file moved is hashed again, and one that
        // is not the processed version goes back to its place in the inbox (it was
        // archived, or deleted, without ever running).
        // (A file that cannot be hashed, out of descriptors say, is taken for the processed
        // one, as it was a moment ago: putting a processed manifest back would run it
        // again.)
        let still_processed =
            |path: &Path| recipe_image || output::sha256_file(path).map_or(true, |f| f == sha256);
        let moved = match policy {
            OnManifestDone::Keep => None,
            OnManifestDone::Delete => {
                if is_processed && src.is_file() {
                    let taken = deleting_name(&src);
                    std::fs::rename(&src, &taken)
                        .map_err(|e| format!("cannot delete {}: {e}", src.display()))?;
                    if still_processed(&taken) {
                        std::fs::remove_file(&taken)
                            .map_err(|e| format!("cannot delete {}: {e}", taken.display()))?;
                    } else {
                        put_back(&taken, &folders.inbox, rel)?;
                    }
                }
                None
            }
            OnManifestDone::Archive => {
                let archived = if is_processed && src.is_file() {
                    let dest = output::move_mirrored(&folders.inbox, &src, &folders.archive)
                        .map_err(|e| archive_error(&e, &folders.archive))?;
                    if still_processed(&dest) {
                        Some(dest)
                    } else {
                        put_back(&dest, &folders.inbox, rel)?;
                        None
                    }
                } else {
                    None
                };
                if archived.is_some() {
                    archived
                } else if copy.is_file() {
                    // The file changed (or was removed) since it was processed: archive
                    // the processed version kept at intake.
                    Some(
                        output::move_mirrored(&folders.copies, &copy, &folders.archive)
                            .map_err(|e| archive_error(&e, &folders.archive))?,
                    )
                } else {
                    None
                }
            }
        };
        match std::fs::remove_file(&copy) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(copy = %copy.display(), error = %err, "Cannot remove the kept copy of a manifest")
            }
        }
        Ok(moved)
    }
}
