//! The queue of jobs waiting to be submitted and the submitter loop: takes jobs in order,
//! waits for a `max_in_flight` permit and a healthy API, and starts each job's task, which owns
//! the permit until it returns. While the API refuses the daemon (paused), one probe submit goes
//! out every [`PAUSE_PROBE_INTERVAL`]; queued jobs are kept, never failed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use crate::pipeline::Board;
use crate::pipeline::finisher::Event;
use crate::pipeline::health::{Health, HealthState};
use crate::pipeline::job::{JobOutcome, Runner};
use crate::store::{JobId, ManifestId};

/// How often a paused daemon lets one submit through to see whether the API is back.
pub const PAUSE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Jobs waiting to be submitted, FIFO, with their run (so a draining run's jobs are skipped
/// without a store read); systemically refused jobs go back to the front.
#[derive(Debug, Default)]
pub struct Queue {
    jobs: Mutex<VecDeque<(ManifestId, JobId)>>,
    /// Wakes the submitter when the queue grows.
    wake: Notify,
}

impl Queue {
    pub fn push_back(&self, jobs: Vec<(ManifestId, JobId)>) {
        if jobs.is_empty() {
            return;
        }
        self.lock().extend(jobs);
        self.wake.notify_one();
    }

    pub fn push_front(&self, job: (ManifestId, JobId)) {
        self.lock().push_front(job);
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Drops every queued job of a run (it drains).
    pub fn remove_run(&self, id: ManifestId) {
        self.lock().retain(|(mid, _)| *mid != id);
    }

    fn pop(&self) -> Option<(ManifestId, JobId)> {
        self.lock().pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(ManifestId, JobId)>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The submitter's parts.
#[derive(Clone)]
pub struct Submitter {
    pub queue: Arc<Queue>,
    /// One permit per task at Claid (submitted, not yet finished). Owned permits move into
    /// the job task; dropping the permit is what frees the slot.
    pub in_flight: Arc<Semaphore>,
    pub health: Arc<HealthState>,
    /// Which runs drain (their queued jobs are not submitted).
    pub board: Arc<Board>,
    pub runner: Runner,
    /// Where each job's outcome goes, after its permit is released.
    pub finisher: mpsc::UnboundedSender<Event>,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Submitter {
    /// The loop: ends when the daemon stops.
    pub async fn run(self) {
        let mut health = self.health.subscribe();
        loop {
            // Wait for a job.
            let (mid, id) = loop {
                if let Some(next) = self.queue.pop() {
                    break next;
                }
                tokio::select! {
                    _ = self.queue.wake.notified() => {}
                    _ = self.cancel.cancelled() => return,
                }
            };
            if self.board.is_draining(mid) {
                // Its store record was cancelled with the rest of the run's queued jobs.
                continue;
            }
            // While paused, let one probe submit through every PAUSE_PROBE_INTERVAL.
            let paused = matches!(*health.borrow_and_update(), Health::Paused { .. });
            if paused {
                let wait = tokio::time::sleep(PAUSE_PROBE_INTERVAL);
                tokio::select! {
                    _ = wait => {}
                    _ = health.changed() => {}
                    _ = self.cancel.cancelled() => return,
                }
            }
            if !self.start_job(mid, id).await {
                return;
            }
            if paused {
                // The probe's outcome decides whether the next job goes out at once.
                tokio::select! {
                    _ = health.changed() => {}
                    _ = tokio::time::sleep(PAUSE_PROBE_INTERVAL) => {}
                    _ = self.cancel.cancelled() => return,
                }
            }
        }
    }

    /// Waits for a permit and starts the job's task; false when the daemon stops first.
    pub async fn start_job(&self, mid: ManifestId, id: JobId) -> bool {
        let permit = tokio::select! {
            permit = self.in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            _ = self.cancel.cancelled() => return false,
        };
        let runner = self.runner.clone();
        let finisher = self.finisher.clone();
        let span = info_span!(
            "job",
            job_id = id,
            manifest = tracing::field::Empty,
            input = tracing::field::Empty,
            task_id = tracing::field::Empty
        );
        self.tracker.spawn(
            async move {
                let outcome = runner.run(id).await;
                // The slot at Claid is free before anyone hears of the outcome: manifest work
                // never runs while holding a job permit.
                drop(permit);
                if !matches!(outcome, JobOutcome::NotRun | JobOutcome::Parked) {
                    let _ = finisher.send(Event::Settled { id: mid, outcome });
                }
            }
            .instrument(span),
        );
        true
    }
}
