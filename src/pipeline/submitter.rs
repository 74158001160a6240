//! The queue of jobs waiting to be submitted and the submitter loop: takes jobs in order,
//! groups those that may go in a batch (see [`crate::pipeline::batch`]), waits for
//! `max_in_flight` permits (one per image) and a healthy API, and starts each job's or batch's
//! task, which owns the permits until it returns. While the API refuses the daemon (paused), one probe submit goes
//! out every [`PAUSE_PROBE_INTERVAL`]; queued jobs are kept, never failed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span};

use crate::pipeline::Board;
use crate::pipeline::batch::{BatchRunner, Member, Open};
use crate::pipeline::finisher;
use crate::pipeline::health::{Health, HealthState};
use crate::pipeline::job::{JobOutcome, Runner};
use crate::store::{JobId, JobState, ManifestId, Store};

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How often a paused daemon lets one submit through to see whether the API is back.
pub const PAUSE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Jobs waiting to be submitted, with their run (so a draining run's jobs are skipped
/// without a store read); systemically refused jobs go back to the front of their run. Each
/// run's jobs go in their order, and the runs take turns: a drop of one image is not queued behind the
/// 5,000 of a drop before it (it waited twenty minutes at Claid's default rate).
///
/// Held as spans of consecutive job ids of one run: a run's jobs get consecutive ids when it
/// is registered, so a 100,000-image drop queues as one span (16 bytes per image before).
/// The store's `unfinished` tree holds the jobs themselves; this is only their order.
#[derive(Debug, Default)]
pub struct Queue {
    jobs: Mutex<Spans>,
    /// Wakes the submitter when the queue grows.
    wake: Notify,
}

/// The queued jobs: each run's spans in its order, the runs' turns, and how many jobs they
/// hold. Every operation but [`Spans::remove_run`] (and a refused job put back in front of
/// a run never served) costs the same whatever the number of runs: a scan of the runs on
/// each pop made 5,000 queued drops of 4 images take 32 s of the submitter's time.
#[derive(Debug, Default)]
struct Spans {
    runs: std::collections::HashMap<ManifestId, VecDeque<Span>>,
    /// Runs never served (since they last had jobs queued), in queue order: served first.
    fresh: VecDeque<ManifestId>,
    /// Runs served, the one served longest ago first.
    turns: VecDeque<ManifestId>,
    len: usize,
}

/// The jobs `first..=last` of one run, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: JobId,
    last: JobId,
}

impl Spans {
    fn push_back(&mut self, (run, id): (ManifestId, JobId)) {
        self.len += 1;
        let spans = self.runs.entry(run).or_insert_with(|| {
            self.fresh.push_back(run);
            VecDeque::new()
        });
        match spans.back_mut() {
            Some(tail) if tail.last.checked_add(1) == Some(id) => tail.last = id,
            _ => spans.push_back(Span {
                first: id,
                last: id,
            }),
        }
    }

    fn push_front(&mut self, (run, id): (ManifestId, JobId)) {
        self.len += 1;
        let spans = match self.runs.entry(run) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                // A run never served, put in front, is the first of the runs never served
                // (as a span at the queue's head is).
                if self.fresh.front() != Some(&run)
                    && let Some(at) = self.fresh.iter().position(|r| *r == run)
                {
                    self.fresh.remove(at);
                    self.fresh.push_front(run);
                }
                entry.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                self.fresh.push_front(run);
                entry.insert(VecDeque::new())
            }
        };
        match spans.front_mut() {
            Some(head) if id.checked_add(1) == Some(head.first) => head.first = id,
            _ => spans.push_front(Span {
                first: id,
                last: id,
            }),
        }
    }

    /// The next job: the first queued job of the run served longest ago (a run never served
    /// first, in queue order). One run alone is served in queue order.
    fn pop_front(&mut self) -> Option<(ManifestId, JobId)> {
        let run = self.fresh.pop_front().or_else(|| self.turns.pop_front())?;
        let Some(spans) = self.runs.get_mut(&run) else {
            // Not reachable: a run is in the turns only while it has jobs queued.
            return self.pop_front();
        };
        let Some(span) = spans.front_mut() else {
            self.runs.remove(&run);
            return self.pop_front();
        };
        let id = span.first;
        if span.first == span.last {
            spans.pop_front();
        } else {
            span.first += 1;
        }
        if spans.is_empty() {
            self.runs.remove(&run);
        } else {
            self.turns.push_back(run);
        }
        self.len -= 1;
        Some((run, id))
    }

    fn remove_run(&mut self, run: ManifestId) {
        let Some(spans) = self.runs.remove(&run) else {
            return;
        };
        self.len -= spans.iter().map(|span| span.len()).sum::<usize>();
        self.fresh.retain(|r| *r != run);
        self.turns.retain(|r| *r != run);
    }

    /// How many spans are queued.
    #[cfg(test)]
    fn span_count(&self) -> usize {
        self.runs.values().map(VecDeque::len).sum()
    }
}

impl Span {
    fn len(self) -> usize {
        usize::try_from(self.last - self.first).map_or(usize::MAX, |n| n.saturating_add(1))
    }
}

impl Queue {
    pub fn push_back(&self, jobs: Vec<(ManifestId, JobId)>) {
        if jobs.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for job in jobs {
            queue.push_back(job);
        }
        drop(queue);
        self.wake.notify_one();
    }

    pub fn push_front(&self, job: (ManifestId, JobId)) {
        self.lock().push_front(job);
        self.wake.notify_one();
    }

    /// Puts `jobs` at the front, in their order, under one lock.
    pub fn push_front_all(&self, jobs: Vec<(ManifestId, JobId)>) {
        if jobs.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for job in jobs.into_iter().rev() {
            queue.push_front(job);
        }
        drop(queue);
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.lock().len == 0
    }

    /// Drops every queued job of a run (it drains).
    pub fn remove_run(&self, id: ManifestId) {
        self.lock().remove_run(id);
    }

    fn pop(&self) -> Option<(ManifestId, JobId)> {
        self.lock().pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spans> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The submitter's parts.
#[derive(Clone)]
pub struct Submitter {
    /// Batch tasks, and whether batching is on.
    pub batches: BatchRunner,
    /// Reads jobs to group them into batches.
    pub store: Store,
    /// `api.max_in_flight`, which batch sizes are derived from.
    pub max_in_flight: usize,
    pub queue: Arc<Queue>,
    /// One permit per task at Claid (submitted, not yet finished). Owned permits move into
    /// the job task; dropping the permit is what frees the slot.
    pub in_flight: Arc<Semaphore>,
    pub health: Arc<HealthState>,
    /// The outbox, where a job's `output_rel` is.
    pub outbox: PathBuf,
    /// Which runs drain (their queued jobs are not submitted).
    pub board: Arc<Board>,
    pub runner: Runner,
    /// Where each job's outcome goes, after its permit is released.
    pub finisher: finisher::Tx,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Submitter {
    /// The loop: ends when the daemon stops.
    pub async fn run(self) {
        let mut health = self.health.subscribe();
        let batching = self.batches.batching().clone();
        let linger = batching.config.linger;
        // Batches being filled, one or more per request body.
        let mut open = Open::default();
        // A full batch waiting for the canary's results.
        let mut full: Vec<Vec<Member>> = Vec::new();
        // Jobs for batches met while a full batch waits for the canary: kept as ids, and put
        // back at the front of the queue once the canary settles, so that later batches are
        // filled when Claid's pace can size them (single jobs keep going meanwhile).
        let mut deferred: Vec<(ManifestId, JobId)> = Vec::new();
        // Jobs whose output goes under a folder the daemon may not write for now (another
        // image's write there is being retried), with their output: back to the queue's front
        // once the folder is no longer held.
        let mut held: Vec<(ManifestId, JobId, PathBuf)> = Vec::new();
        loop {
            if !held.is_empty() {
                let (free, still): (Vec<_>, Vec<_>) = std::mem::take(&mut held)
                    .into_iter()
                    .partition(|(_, _, output)| !self.health.folder_blocked(output));
                held = still;
                self.queue
                    .push_front_all(free.into_iter().map(|(mid, id, _)| (mid, id)).collect());
            }
            if batching.may_send() || !batching.enabled() {
                let mut left = Vec::new();
                if !self
                    .send_groups(std::mem::take(&mut full), &mut health, &mut left, false)
                    .await
                {
                    return;
                }
                self.put_back(left, std::mem::take(&mut deferred));
            }
            // Switched off (the safety valve): what was being filled goes one by one.
            if !batching.enabled() && !self.send_all(&mut open, &mut health).await {
                return;
            }
            let next = loop {
                // Registered before `may_send` is read, so the canary settling in between
                // still wakes this loop.
                let canary = batching.canary_wake.notified();
                tokio::pin!(canary);
                canary.as_mut().enable();
                if let Some(next) = self.queue.pop() {
                    break Some(next);
                }
                let due = if batching.may_send() {
                    open.deadline(linger)
                } else {
                    None
                };
                tokio::select! {
                    _ = self.queue.wake.notified() => {}
                    _ = self.health.folders_changed.notified(), if !held.is_empty() => break None,
                    () = &mut canary => break None,
                    () = sleep_until(due) => break None,
                    _ = self.cancel.cancelled() => return,
                }
            };
            let Some((mid, id)) = next else {
                // Nothing more to add now: open batches go once they may.
                if (batching.may_send() || !batching.enabled())
                    && !self.send_all(&mut open, &mut health).await
                {
                    return;
                }
                continue;
            };
            if self.board.is_draining(mid) {
                // Its store record was cancelled with the rest of the run's queued jobs, unless
                // it was queued again since (a retry after an outage, a resubmit after a
                // crash's wait): cancelled now, or the run would never end.
                match self.store.cancel_queued_job(id).await {
                    Ok(true) => {
                        self.board.update(|s| s.totals.superseded += 1);
                        self.finisher.settled(mid, JobOutcome::NotRun);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        error!(error = %err, job_id = id, "Cannot cancel a queued image of a draining run; the next start does");
                    }
                }
                continue;
            }
            let job = match self.store.job(id).await {
                Ok(Some(job)) if matches!(job.state, JobState::Queued) => Some(job),
                _ => None,
            };
            let mut alone = false;
            if let Some(job) = &job {
                let output = self.outbox.join(&job.output_rel);
                if self.health.folder_blocked(&output) {
                    held.push((mid, id, output));
                    continue;
                }
                // Into a folder given up on: the job's own task fails it without a submit.
                alone = self.health.given_up_for(&output).is_some();
            }
            // A path the outbox would refuse now goes alone too, for the same end (looked at
            // only for a job a batch would take: the job's own task looks at it anyway).
            if batching.enabled()
                && !alone
                && let Some(job) = job
                && batching.takes(id, &job)
                && super::job::local_output_blocked(&self.outbox, &job).is_none()
            {
                if !full.is_empty() && !batching.may_send() {
                    deferred.push((mid, id));
                    continue;
                }
                let target = self.batches.target_size(self.max_in_flight);
                let member = Member {
                    manifest: mid,
                    id,
                    job,
                };
                if let Some(members) = open.add(member, target) {
                    if batching.may_send() {
                        let mut left = Vec::new();
                        if !self.send(members, &mut health, &mut left, false).await {
                            return;
                        }
                        self.put_back(left, Vec::new());
                    } else {
                        full.push(members);
                    }
                }
                continue;
            }
            if !self.start_single(mid, id, &mut health).await {
                return;
            }
        }
    }

    /// Sends every open batch; the jobs a batch leaves out go back to the queue's front
    /// together, in their order. False when the daemon stops.
    async fn send_all(
        &self,
        open: &mut Open,
        health: &mut tokio::sync::watch::Receiver<Health>,
    ) -> bool {
        let mut left = Vec::new();
        // The queue is dry: these are a drop's last jobs (or all of a small one).
        if !self
            .send_groups(open.take_all(), health, &mut left, true)
            .await
        {
            return false;
        }
        self.put_back(left, Vec::new());
        true
    }

    /// Sends groups of jobs one after the other ([`Submitter::send`]), until one of them goes
    /// as the canary: the groups after it are added to `left` (back to the queue's front, to
    /// be grouped again once the canary settles). They went with the canary in one pass, each
    /// whole and untested: a drop of several request bodies sent every batch before the
    /// canary's results said whether Claid names them as the daemon expects. False when the
    /// daemon stops.
    async fn send_groups(
        &self,
        groups: Vec<Vec<Member>>,
        health: &mut tokio::sync::watch::Receiver<Health>,
        left: &mut Vec<Member>,
        last: bool,
    ) -> bool {
        let batching = self.batches.batching();
        for members in groups {
            if batching.enabled() && !batching.may_send() {
                left.extend(members);
                continue;
            }
            if !self.send(members, health, left, last).await {
                return false;
            }
        }
        true
    }

    /// Sends jobs grouped for a batch: as a batch while batching is on (the jobs it leaves out
    /// are added to `left`), else one by one.
    async fn send(
        &self,
        members: Vec<Member>,
        health: &mut tokio::sync::watch::Receiver<Health>,
        left: &mut Vec<Member>,
        last: bool,
    ) -> bool {
        if self.batches.batching().enabled() {
            return self.start_batch(members, health, left, last).await;
        }
        for m in members {
            if !self.start_single(m.manifest, m.id, health).await {
                return false;
            }
        }
        true
    }

    /// Starts one job on its own, after the pause probe when the API refuses the daemon.
    async fn start_single(
        &self,
        mid: ManifestId,
        id: JobId,
        health: &mut tokio::sync::watch::Receiver<Health>,
    ) -> bool {
        let paused = self.wait_if_paused(health).await;
        let Some(paused) = paused else { return false };
        if !self.start_new_job(mid, id).await {
            return false;
        }
        if paused {
            // The probe's outcome decides whether the next job goes out at once.
            tokio::select! {
                _ = health.changed() => {}
                _ = tokio::time::sleep(PAUSE_PROBE_INTERVAL) => {}
                _ = self.cancel.cancelled() => return false,
            }
        }
        true
    }

    /// Sends jobs grouped for a batch once its permits (one per image) are free, as many of
    /// them as the size Claid's pace gives when they go: the pace may have become known since
    /// the jobs were grouped, or while the permits were awaited (freeing them can take a
    /// batch's duration). The others are added to `left`, to go back to the front of the
    /// queue and be grouped again with the jobs behind them. The `last` jobs of a queue that ran
    /// dry go in as many batches as [`BatchRunner::tail_batches`] gives once their permits are
    /// held (Claid's pace is often learned while they are awaited). False when the daemon
    /// stops.
    async fn start_batch(
        &self,
        mut members: Vec<Member>,
        health: &mut tokio::sync::watch::Receiver<Health>,
        left: &mut Vec<Member>,
        last: bool,
    ) -> bool {
        let size = self.batch_size(members.len());
        left.append(&mut members.split_off(size));
        if members.is_empty() {
            return true;
        }
        if self.wait_if_paused(health).await.is_none() {
            return false;
        }
        let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
        let mut permit = tokio::select! {
            permit = self.in_flight.clone().acquire_many_owned(n) => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            _ = self.cancel.cancelled() => return false,
        };
        // Outputs may have become unwritable while the permits were awaited.
        if !self.health.writable(&self.cancel).await {
            return false;
        }
        // Or a folder some of them go into: those go back to the queue, to wait for it.
        let (blocked, going): (Vec<Member>, Vec<Member>) = members.into_iter().partition(|m| {
            self.health
                .folder_blocked(&self.outbox.join(&m.job.output_rel))
        });
        members = going;
        if !blocked.is_empty() {
            left.extend(blocked);
            if members.is_empty() {
                return true;
            }
            // The permits of the jobs left out are released with the rest of `permit`.
            if let Some(fewer) = permit.split(members.len()) {
                permit = fewer;
            }
        }
        let size = self.batch_size(members.len());
        if size < members.len()
            && let Some(fewer) = permit.split(size)
        {
            // The permits of the jobs left out are released with the rest of `permit`.
            permit = fewer;
            left.append(&mut members.split_off(size));
        }
        let pieces = if last && self.batches.batching().canary_settled() {
            self.batches.tail_batches(members.len())
        } else {
            1
        };
        if pieces > 1 {
            info!(
                images = members.len(),
                batches = pieces,
                "The queue ran dry: its last {} jobs go in {pieces} batches, about what Claid works on at once in one",
                members.len()
            );
        }
        let round = self.batches.batching().dispatched();
        // Even pieces, in queue order: the first ones one image larger when they do not divide.
        for k in (2..=pieces).rev() {
            let take = members.len().div_ceil(k);
            let Some(piece_permit) = permit.split(take) else {
                break;
            };
            let rest = members.split_off(take);
            self.batches
                .spawn(std::mem::replace(&mut members, rest), piece_permit, round);
        }
        self.batches.spawn(members, permit, round);
        true
    }

    /// Returns jobs taken from the queue and not sent (`members`, then `ids`) to its front, in
    /// that order; their store records are still queued.
    fn put_back(&self, members: Vec<Member>, ids: Vec<(ManifestId, JobId)>) {
        let members = members.into_iter().map(|m| (m.manifest, m.id));
        self.queue.push_front_all(members.chain(ids).collect());
    }

    /// How many of `len` grouped jobs go in the next batch: at most the size
    /// [`BatchRunner::target_size`] gives now, which is the canary's while no canary is out
    /// (at the start, or again after a canary that ended unanswered: jobs grouped for a full
    /// batch meanwhile must not go untested); all of them while a canary is out (nothing
    /// else goes then but batches resumed at the start).
    fn batch_size(&self, len: usize) -> usize {
        let batching = self.batches.batching();
        if batching.canary_settled() || !batching.canary_sent() {
            self.batches.target_size(self.max_in_flight).max(1).min(len)
        } else {
            len
        }
    }

    /// A batch found at Claid at start: its permits first, then a task that polls it.
    pub async fn resume_batch(
        &self,
        batch_id: u64,
        result_url: String,
        submitted_at_ms: u64,
        members: Vec<Member>,
    ) -> bool {
        // At most every slot there is (the config may have lowered `max_in_flight`).
        let n = u32::try_from(members.len().min(self.max_in_flight)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            permit = self.in_flight.clone().acquire_many_owned(n) => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            _ = self.cancel.cancelled() => return false,
        };
        let round = self.batches.batching().dispatched();
        self.batches.spawn_resumed(
            batch_id,
            result_url,
            submitted_at_ms,
            members,
            permit,
            round,
        );
        true
    }

    /// While paused, waits for one probe interval (or a change of health); `Some(paused)`, or
    /// `None` when the daemon stops.
    async fn wait_if_paused(
        &self,
        health: &mut tokio::sync::watch::Receiver<Health>,
    ) -> Option<bool> {
        // Outputs that cannot be written (a full disk): nothing new goes out, not even a
        // probe, until they can, or until the jobs that wait for them give up.
        if !self.health.writable(&self.cancel).await {
            return None;
        }
        let paused = matches!(*health.borrow_and_update(), Health::Paused { .. });
        if paused {
            let wait = tokio::time::sleep(PAUSE_PROBE_INTERVAL);
            tokio::select! {
                _ = wait => {}
                _ = health.changed() => {}
                _ = self.cancel.cancelled() => return None,
            }
        }
        Some(paused)
    }

    /// Waits for a permit and starts the job's task; false when the daemon stops first.
    /// Starts a job that will submit, once it has a `max_in_flight` slot and outputs can be
    /// written (they may have become unwritable while the slot was awaited: Claid would bill
    /// a result that cannot be written).
    async fn start_new_job(&self, mid: ManifestId, id: JobId) -> bool {
        let Some(permit) = self.in_flight_slot().await else {
            return false;
        };
        if !self.health.writable(&self.cancel).await {
            return false;
        }
        self.spawn_job(mid, id, permit);
        true
    }

    /// Hands run `mid`'s registered (or requeued) `jobs` on: those that fetch a result again
    /// (`fetching`, some of `jobs`: a kept result, a storage output's local copy) start as
    /// resumed downloads, in a task of their own; the others go to the submit queue, which
    /// takes queued jobs (one not queued there was dropped when its run drained, and the run
    /// never ended).
    pub fn hand_on(&self, mid: ManifestId, jobs: Vec<JobId>, fetching: Vec<JobId>) {
        let fetching: std::collections::HashSet<JobId> = fetching.into_iter().collect();
        let (fetch, submit): (Vec<JobId>, Vec<JobId>) =
            jobs.into_iter().partition(|id| fetching.contains(id));
        self.queue
            .push_back(submit.into_iter().map(|id| (mid, id)).collect());
        if !fetch.is_empty() {
            let submitter = self.clone();
            self.tracker.spawn(async move {
                for id in fetch {
                    if !submitter.start_job(mid, id).await {
                        return;
                    }
                }
            });
        }
    }

    /// Starts a job whose task is already at Claid (resumed after a restart, or adopted from
    /// a webhook) once it has a `max_in_flight` slot. It never waits for outputs to be
    /// writable: its task is billed whatever the disk, its polls cost nothing, and its write
    /// waits for the disk by itself. (Waiting here held a restart on a full outbox before
    /// it was ready: no admin socket, no `run --once` end.)
    pub async fn start_job(&self, mid: ManifestId, id: JobId) -> bool {
        let Some(permit) = self.in_flight_slot().await else {
            return false;
        };
        self.spawn_job(mid, id, permit);
        true
    }

    /// One `max_in_flight` slot; `None` when the daemon stops.
    async fn in_flight_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            permit = self.in_flight.clone().acquire_owned() => permit.ok(),
            _ = self.cancel.cancelled() => None,
        }
    }

    fn spawn_job(&self, mid: ManifestId, id: JobId, permit: tokio::sync::OwnedSemaphorePermit) {
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
                    finisher.settled(mid, outcome);
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &Queue) -> Vec<(ManifestId, JobId)> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn a_run_of_consecutive_jobs_queues_as_one_span_and_pops_in_order() {
        let queue = Queue::default();
        queue.push_back((10..100_010).map(|id| (1, id)).collect());
        assert_eq!(queue.len(), 100_000);
        assert_eq!(queue.lock().span_count(), 1, "one span for the whole run");
        let popped = drain(&queue);
        assert_eq!(popped, (10..100_010).map(|id| (1, id)).collect::<Vec<_>>());
        assert!(queue.is_empty());
    }

    #[test]
    fn gaps_runs_and_fronts_keep_the_order_they_were_queued_in() {
        let queue = Queue::default();
        queue.push_back(vec![(1, 5), (1, 6), (1, 8)]);
        queue.push_front((1, 4));
        queue.push_front_all(vec![(1, 1), (1, 2), (1, 3)]);
        assert_eq!(queue.len(), 7);
        // (1, 3) joins (1, 4..=6) only because it went in front of it, in order.
        assert_eq!(
            drain(&queue),
            vec![(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 8)]
        );
    }

    /// Runs take turns, each in its own order, the one served longest ago first: a small
    /// drop behind a large one goes at once (it waited for the whole of the large one).
    #[test]
    fn runs_take_turns_each_in_its_own_order() {
        let queue = Queue::default();
        queue.push_back((1..=1000).map(|id| (1, id)).collect());
        assert_eq!(queue.pop(), Some((1, 1)));
        queue.push_back(vec![(2, 2001), (2, 2002)]);
        queue.push_back(vec![(3, 3001)]);
        // Jobs taken and not sent go back to the front; they stay first of their run.
        queue.push_front_all(vec![(1, 1)]);
        let popped = drain(&queue);
        assert_eq!(
            popped[..6],
            [(2, 2001), (3, 3001), (1, 1), (2, 2002), (1, 2), (1, 3)]
        );
        assert_eq!(popped.len(), 1003);
        for run in [1, 2, 3] {
            let ids: Vec<JobId> = popped
                .iter()
                .filter(|(r, _)| *r == run)
                .map(|(_, id)| *id)
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "run {run}: {ids:?}");
        }
        assert!(queue.lock().runs.is_empty(), "no turn kept for a run gone");
    }

    /// The turns as first written (a scan of the queue on each pop, which made each pop cost
    /// the number of runs): the reference the queue must agree with.
    #[derive(Default)]
    struct Model {
        jobs: VecDeque<(ManifestId, JobId)>,
        served: std::collections::HashMap<ManifestId, u64>,
        pops: u64,
    }

    impl Model {
        fn pop(&mut self) -> Option<(ManifestId, JobId)> {
            let mut best: Option<(usize, u64)> = None;
            let mut seen = std::collections::HashSet::new();
            for (at, (run, _)) in self.jobs.iter().enumerate() {
                if !seen.insert(*run) {
                    continue;
                }
                let served = self.served.get(run).copied().unwrap_or(0);
                if best.is_none_or(|(_, least)| served < least) {
                    best = Some((at, served));
                }
                if served == 0 {
                    break;
                }
            }
            let (run, id) = self.jobs.remove(best?.0)?;
            self.pops += 1;
            if self.jobs.iter().any(|(r, _)| *r == run) {
                self.served.insert(run, self.pops);
            } else {
                self.served.remove(&run);
            }
            Some((run, id))
        }
    }

    #[test]
    fn runs_take_turns_as_the_scan_of_the_whole_queue_did() {
        use proptest::prelude::*;
        // (0: push back, 1: push front, 2: pop, 3: remove a run), a run, a length.
        let ops = proptest::collection::vec((0u8..4, 0u64..5, 1u64..4), 1..80);
        proptest!(ProptestConfig::with_cases(400), |(ops in ops)| {
            let queue = Queue::default();
            let mut model = Model::default();
            let mut next_id: JobId = 1;
            for (op, run, n) in ops {
                match op {
                    0 => {
                        let jobs: Vec<_> = (0..n).map(|k| (run, next_id + k)).collect();
                        next_id += n + (n % 2);
                        model.jobs.extend(jobs.iter().copied());
                        queue.push_back(jobs);
                    }
                    1 => {
                        let jobs: Vec<_> = (0..n).map(|k| (run, next_id + k)).collect();
                        next_id += n;
                        for job in jobs.iter().rev() {
                            model.jobs.push_front(*job);
                        }
                        queue.push_front_all(jobs);
                    }
                    2 => prop_assert_eq!(queue.pop(), model.pop()),
                    _ => {
                        model.jobs.retain(|(r, _)| *r != run);
                        model.served.remove(&run);
                        queue.remove_run(run);
                    }
                }
                prop_assert_eq!(queue.len(), model.jobs.len());
            }
            loop {
                let popped = queue.pop();
                prop_assert_eq!(popped, model.pop());
                if popped.is_none() {
                    break;
                }
            }
        });
    }

    #[test]
    fn removing_a_run_drops_its_spans_and_its_count() {
        let queue = Queue::default();
        queue.push_back(vec![(1, 1), (1, 2), (2, 3), (2, 4), (1, 5)]);
        queue.remove_run(1);
        assert_eq!(queue.len(), 2);
        assert_eq!(drain(&queue), vec![(2, 3), (2, 4)]);
        assert_eq!(queue.len(), 0);
    }
}
