//! Dispatch of task results that Claid announces by webhook: each verified update goes to the
//! job or batch task that waits for it (which then needs no poll), is kept a while when it came
//! before its submit response was recorded (so it is not lost), adopts a job whose submit
//! answer was lost (a task created by a request identical to the job's own), also once that
//! job is held in doubt (a webhook later than the wait: the held job takes the task instead of
//! being billed again by `replay --in-doubt`), or is counted as unknown. Duplicates and late
//! arrivals change nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::claid::wire::{TaskRef, TaskUpdate};
use crate::store::{JobId, ManifestId};

/// Updates kept for tasks nobody waits for yet, at most this many.
const MAX_EARLY: usize = 10_000;
/// How long an update is kept in memory for a task nobody waits for.
pub const EARLY_TTL: Duration = Duration::from_secs(15 * 60);
/// How long the store keeps an announcement nobody waited for, for a restart
/// ([`crate::store::Store::kept_announcements`]): Claid announces a task once, and a daemon
/// down longer than a few minutes (a reboot, an upgrade, a night) must still recognise the
/// tasks its crash left in doubt, or pay for them twice. A day: how long Claid keeps a result
/// at its `tmp_url` (docs/claid-api.md), after which the task's result is gone anyway.
pub const KEPT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What became of one delivered update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A task waiting for this id has it.
    Handed,
    /// Kept for a task that will wait for it soon (its submit answer is being recorded), or
    /// for a task the daemon does not know.
    Kept,
    /// Kept for the job the store says took the task: an announcement that came after that
    /// job learnt the task's end by polling, or before it waits for the task again. The
    /// daemon's own task, so never counted as unknown.
    KeptForOwner,
    /// It matched a job whose submit answer was lost: the job adopts the task.
    Adopted,
    /// Not a final status (ACCEPTED, PROCESSING): nothing to do.
    NotFinal,
    /// The task already had its result (a duplicate, or a late arrival after a poll).
    Duplicate,
}

/// Which warning a poll's finding set off, that webhooks are taken as silent (see
/// [`Dispatch::polled_final`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// None has come in this run.
    NoneCame,
    /// They came, then stopped.
    Stopped,
    /// They come, after the polls found their tasks ended.
    Late,
    /// They come for failed tasks only.
    NotForDone,
}

/// The dispatch before webhooks an earlier process kept are delivered again
/// ([`Dispatch::replaying`]).
#[derive(Debug)]
pub struct Replaying {
    stats: DispatchStats,
    early: std::collections::HashSet<TaskRef>,
}

/// Counters for `/metrics` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub handed: u64,
    pub kept: u64,
    pub adopted: u64,
    pub duplicates: u64,
    pub not_final: u64,
    /// Webhooks an earlier process verified and kept in the store, given to this one's jobs
    /// at its start ([`Dispatch::replayed`]): in none of the outcomes above, which count
    /// what this process verified.
    pub replayed: u64,
}

/// Shared by the webhook consumer and every job and batch task.
#[derive(Debug, Default)]
pub struct Dispatch {
    inner: Mutex<Inner>,
    /// Wakes [`Dispatch::next_batch_adoption`].
    adopted: Notify,
    /// Wakes [`Dispatch::next_held_adoption`].
    held_adopted: Notify,
    /// Wakes the tasks waiting for webhooks when they are found silent
    /// ([`Dispatch::went_silent`]).
    silent: Notify,
    /// Wakes the batches waiting for their webhooks when one is counted lost
    /// ([`Dispatch::went_lossy`]).
    lossy: Notify,
    /// Tasks a poll found ended while webhooks are on (their webhook had not come), since
    /// the last webhook handed to (or adopted by) one of this daemon's tasks.
    polled_final: std::sync::atomic::AtomicU64,
    /// Of those, tasks a poll found DONE, since the last webhook that announced one DONE:
    /// webhooks that come for failed tasks only (a subscription to "failed" events alone)
    /// kept `polled_final` at zero while every successful task waited its `poll_fallback`.
    polled_done: std::sync::atomic::AtomicU64,
    /// Whether a webhook announced a task DONE in this run (in time or late).
    heard_done: std::sync::atomic::AtomicBool,
    /// Webhooks that came after a poll had found their task ended (see
    /// [`Inner::polled_ended`]), since the last one that came in time.
    late: std::sync::atomic::AtomicU64,
    /// The silence warning last given, since the last webhook that came in time: the same is
    /// not given twice, and a late webhook corrects another.
    told: Mutex<Option<Silence>>,
    /// When this process started taking webhooks (ms since the epoch; 0: always).
    started_ms: u64,
    /// Whether the start's resume has registered the jobs webhooks may belong to (caught
    /// mid-submit, held in doubt) and delivered the announcements an earlier process kept:
    /// live webhooks are delivered only after ([`Dispatch::wait_resumed`]).
    resumed: tokio::sync::watch::Sender<bool>,
}

/// Tasks found ended by a poll, with no webhook for one of this daemon's tasks heard in this
/// run, after which webhooks are taken as not arriving (a wrong URL or secret in Claid's
/// dashboard) and results are polled as without them, until one comes.
const SILENT_AFTER: u64 = 2;

/// [`SILENT_AFTER`] once webhooks have been heard in this run: deliveries that stopped
/// mid-run. Higher, because with some webhooks lost on the way (a few in ten) two tasks in a
/// row found ended by their fallback polls are common, and each false alarm had every task
/// waiting for its webhook poll at once and then on the schedule: 1.6 to 1.9 requests an
/// image at 10% lost, where webhooks save the polls. Ten in a row is one chance in 10⁴ at 40%
/// lost, and at 100% it costs ten tasks their fallback wait.
const SILENT_AFTER_HEARD: u64 = 10;

/// Batches found ended by polls in a row, without their webhooks, that make webhooks silent
/// once webhooks have been heard in this run (each counts for a share of
/// [`SILENT_AFTER_HEARD`]). Four: with a third of webhooks lost on the way, two in a row
/// are common (the acceptance run: "Webhooks stopped coming" logged while 26 of 39 came),
/// four one chance in a hundred; batches polled on the schedule meanwhile
/// ([`Dispatch::batch_webhooks_lossy`]) wait for nothing, so a real stop costs little.
const SILENT_AFTER_HEARD_BATCHES: u64 = 4;

/// Batches whose webhook outcome [`Dispatch::batch_webhooks_lossy`] looks at.
const BATCH_OUTCOMES: usize = 8;

/// A job held in doubt after its submit answer was lost, as a webhook's echoed request would
/// show it: the request it sent alone, and the batch body and input it would go with.
#[derive(Debug, Clone)]
pub struct HeldJob {
    pub owner: LostOwner,
    /// [`request_key`] of the request it sends alone (none for a local file: uploads are
    /// answered at once, never announced).
    pub alone: Option<String>,
    /// How it is listed in a batch's echoed request.
    pub in_batch: Option<LostBatchJob>,
}

/// A job a crash caught mid-submit that may have gone in a batch (registered with
/// [`Dispatch::lost_batch_jobs`]).
#[derive(Debug, Clone)]
pub struct LostBatchJob {
    pub owner: LostOwner,
    /// [`body_key`] of the batch request it would have gone in.
    pub body: String,
    /// Its input, as the batch request lists it.
    pub input: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Tasks (async task or batch: their ids may coincide) a task waits for.
    waiting: HashMap<TaskRef, Arc<Slot>>,
    /// Final updates that came before anyone waited, with their arrival.
    early: HashMap<TaskRef, (Instant, TaskUpdate)>,
    /// Of those (and of `owned_early`), the ones already counted in an outcome (an adopted
    /// task's update kept for its job's next look, [`Dispatch::keep`]) or in none (one an
    /// earlier process verified, [`Dispatch::replayed`]): taken, they are not counted again.
    counted_early: std::collections::HashSet<TaskRef>,
    /// The same for tasks a job took already ([`Dispatch::deliver_owned`]): only that job's
    /// own wait takes them, never an adoption.
    owned_early: HashMap<TaskRef, (Instant, TaskUpdate)>,
    /// Updates that only named a task (not final) nobody waited for: a submit whose answer is
    /// then lost adopts its task from one (the webhook can come before the answer is given up).
    named: HashMap<TaskRef, (Instant, TaskUpdate)>,
    /// Jobs (or batches) whose submit answer was lost, by the request they sent.
    /// Several jobs may have sent the same request (the same image and edit in two
    /// manifests): each announcement goes to the one that waited longest.
    lost: HashMap<String, Vec<Arc<Slot>>>,
    /// Ids that already got their final update (bounded like `early`), to tell duplicates.
    done: HashMap<TaskRef, Instant>,
    /// Tasks a poll found ended before their webhook came, while it counted as silence
    /// ([`Dispatch::polled_final`]; bounded like `early`): their webhook, if it comes, is
    /// late, not missing.
    polled_ended: HashMap<TaskRef, Instant>,
    /// Batches a poll found ended before their webhook was due (polled on the schedule while
    /// webhooks are lossy, [`Dispatch::batch_webhooks_lossy`]), with when it was due and
    /// whether the batch ended DONE: a webhook that comes by then came in time; past it,
    /// the batch counts as one whose webhook was lost ([`Dispatch::polled_final`]).
    polled_early: HashMap<TaskRef, (Instant, bool)>,
    /// Whether the webhooks of the last [`BATCH_OUTCOMES`] batches came in time (`false`: a
    /// poll found the batch ended once its webhook was due, without it).
    batch_outcomes: std::collections::VecDeque<bool>,
    /// Jobs a crash caught mid-submit that may have gone in a batch: by the batch body they
    /// would have been sent with (without `input`), then by their input.
    lost_batch: HashMap<String, HashMap<String, Vec<LostOwner>>>,
    /// Batches adopted by such jobs, for [`Dispatch::next_batch_adoption`].
    batch_adoptions: Vec<Adoption>,
    /// Jobs held in doubt (see [`HeldJob`]), by the request they send alone...
    held_alone: HashMap<String, Vec<LostOwner>>,
    /// ...and by batch body, then input.
    held_batch: HashMap<String, HashMap<String, Vec<LostOwner>>>,
    /// Tasks held jobs adopted, for [`Dispatch::next_held_adoption`].
    held_adoptions: Vec<Adoption>,
    /// Of those, taken by [`Dispatch::next_held_adoption`] and not yet seen through
    /// ([`Dispatch::held_adoption_done`]).
    adopting: usize,
    /// Jobs failed as `task-timeout`, by the task (or batch) Claid had not finished: a late
    /// final webhook for it gives them its result instead of leaving it to `replay`, which
    /// would pay again (see [`Dispatch::timed_out`]).
    timed_out: HashMap<TaskRef, Vec<LostOwner>>,
    /// Jobs waiting for a webhook to say which task their lost submit became (each counted
    /// once, by its [`Awaiting`]).
    awaiting: usize,
    stats: DispatchStats,
}

/// Jobs counted as waiting for a webhook to adopt their lost submit while this lives.
#[derive(Debug)]
pub struct Awaiting {
    dispatch: Arc<Dispatch>,
    jobs: usize,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        let mut inner = self.dispatch.lock();
        inner.awaiting = inner.awaiting.saturating_sub(self.jobs);
    }
}

/// Where one waiter receives its update.
#[derive(Debug, Default)]
struct Slot {
    update: Mutex<Option<TaskUpdate>>,
    notify: Notify,
}

impl Slot {
    fn put(&self, update: TaskUpdate) -> bool {
        let mut slot = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = Some(update);
        drop(slot);
        self.notify.notify_waiters();
        true
    }

    async fn wait(&self, timeout: Duration) -> Option<TaskUpdate> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(update) = self
                .update
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return Some(update);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// A task's registration as waiting for one id; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    dispatch: Arc<Dispatch>,
    id: TaskRef,
    slot: Arc<Slot>,
}

impl Watch {
    /// The final update of the task, if one arrives within `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Option<TaskUpdate> {
        self.slot.wait(timeout).await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.dispatch.lock();
        if inner
            .waiting
            .get(&self.id)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            inner.waiting.remove(&self.id);
        }
    }
}

/// A job (or batch) waiting to learn whether its lost submit created a task.
#[derive(Debug)]
pub struct LostSubmit {
    dispatch: Arc<Dispatch>,
    key: String,
    slot: Arc<Slot>,
    /// Its jobs, counted as waiting until it is dropped.
    _awaiting: Awaiting,
}

impl LostSubmit {
    /// The update of the task the lost submit created, if Claid announces one in `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Option<TaskUpdate> {
        self.slot.wait(timeout).await
    }
}

impl Drop for LostSubmit {
    fn drop(&mut self) {
        let mut inner = self.dispatch.lock();
        if let Some(slots) = inner.lost.get_mut(&self.key) {
            slots.retain(|slot| !Arc::ptr_eq(slot, &self.slot));
            if slots.is_empty() {
                inner.lost.remove(&self.key);
            }
        }
    }
}

/// The job (or batch) a lost submit belongs to, for logs.
pub type LostOwner = (ManifestId, JobId);

/// A task announced by webhook and the jobs that adopt it.
pub type Adoption = (TaskUpdate, Vec<LostOwner>);

impl Dispatch {
    /// A dispatch for a daemon starting now: tasks submitted before (by an earlier life, whose
    /// webhooks came while nobody listened) do not count as webhooks not arriving.
    pub fn new() -> Dispatch {
        Dispatch {
            started_ms: crate::store::now_ms(),
            ..Dispatch::default()
        }
    }

    /// The start's resume is over (whatever its outcome): live webhooks may be delivered.
    pub fn mark_resumed(&self) {
        self.resumed.send_replace(true);
    }

    /// Completes once the start's resume is over ([`Dispatch::mark_resumed`]). The webhook
    /// consumer waits for it: delivered before, an announcement of a job the resume had not
    /// registered yet was counted `unknown_task` and then adopted, and one delivered while
    /// the resume gave the announcements kept before a crash again was counted with them.
    pub async fn wait_resumed(&self) {
        let mut resumed = self.resumed.subscribe();
        // (Err: the sender is gone with the dispatch; nothing is left to wait for.)
        let _ = resumed.wait_for(|resumed| *resumed).await;
    }

    /// Hands a verified update to whoever waits for it (see [`Delivery`]).
    pub fn deliver(&self, update: TaskUpdate) -> Delivery {
        self.sweep_early(false);
        let done = *update.status() == crate::claid::wire::TaskStatus::Done;
        let delivery = self.deliver_to(update, false);
        if matches!(delivery, Delivery::Handed | Delivery::Adopted) {
            self.heard_now(done);
        }
        delivery
    }

    /// `owned`: a task the store says a job took ([`Dispatch::deliver_owned`]): handed to its
    /// waiter or its task-timeout jobs, else kept for its own job only; no adoption.
    fn deliver_to(&self, update: TaskUpdate, owned: bool) -> Delivery {
        let id = update.task();
        let mut inner = self.lock();
        if !update.status().is_terminal() {
            if owned {
                inner.stats.not_final += 1;
                return Delivery::NotFinal;
            }
            // A lost submit's task named before it ends (an ACCEPTED or PROCESSING webhook):
            // adopted now, so the job waits for the task's end instead of resubmitting when
            // its wait runs out. Its id is not marked done: the final update still comes.
            // Never a task a job already watches (its own submit's) or one that ended.
            let free = !inner.waiting.contains_key(&id) && !inner.done.contains_key(&id);
            if free
                && let Some(key) = echoed_key(&inner.lost, update.request())
                && let Some(slot) = inner.take_lost(&key)
            {
                slot.put(update);
                inner.stats.adopted += 1;
                return Delivery::Adopted;
            }
            if free {
                inner.prune_early();
                if inner.named.len() < MAX_EARLY {
                    inner.named.insert(id, (Instant::now(), update));
                }
            }
            // Counted here: a lost submit that adopts its task later moves it to `adopted`.
            inner.stats.not_final += 1;
            return Delivery::NotFinal;
        }
        let update = match inner.hand_over(update) {
            Ok(delivery) => return delivery,
            Err(update) => update,
        };
        if !owned
            && let Some(key) = echoed_key(&inner.lost, update.request())
            && let Some(slot) = inner.take_lost(&key)
        {
            inner.mark_done(id);
            slot.put(update);
            inner.stats.adopted += 1;
            return Delivery::Adopted;
        }
        if !owned && let Some(owners) = inner.take_lost_batch(&update) {
            inner.mark_done(id);
            inner.stats.adopted += 1;
            inner.batch_adoptions.push((update, owners));
            drop(inner);
            self.adopted.notify_waiters();
            return Delivery::Adopted;
        }
        // Jobs that failed as task-timeout on this very task, else held jobs it belongs to.
        let owners = match inner.timed_out.remove(&id) {
            Some(owners) => Some(owners),
            None if owned => None,
            None => inner.take_held(&update),
        };
        if let Some(owners) = owners {
            inner.mark_done(id);
            inner.stats.adopted += 1;
            inner.held_adoptions.push((update, owners));
            drop(inner);
            self.held_adopted.notify_waiters();
            return Delivery::Adopted;
        }
        // A batch a poll found ended before its webhook was due, which came by then: heard
        // in time (`sweep_early` on the way in moved those past due to `polled_ended`).
        if inner.polled_early.remove(&id).is_some() {
            inner.mark_done(id);
            inner.stats.duplicates += 1;
            inner.batch_outcome(true);
            drop(inner);
            self.heard_now(*update.status() == crate::claid::wire::TaskStatus::Done);
            return Delivery::Duplicate;
        }
        // Late: a poll found the task ended already and had its result (see
        // `Dispatch::heard_late`); kept, it lay in the store for a day.
        // Its copies are duplicates too.
        if inner.polled_ended.remove(&id).is_some() {
            inner.mark_done(id);
            inner.stats.duplicates += 1;
            drop(inner);
            self.heard_late(*update.status() == crate::claid::wire::TaskStatus::Done);
            return Delivery::Duplicate;
        }
        inner.prune_early();
        let kept = if owned {
            &mut inner.owned_early
        } else {
            &mut inner.early
        };
        // The first final update kept stands, as a poll's first final answer would: a later
        // one (a stale ERROR replayed after the DONE) took the billed results away.
        if kept.contains_key(&id) {
            inner.stats.duplicates += 1;
            return Delivery::Duplicate;
        }
        if kept.len() < MAX_EARLY {
            kept.insert(id, (Instant::now(), update));
        }
        inner.stats.kept += 1;
        if owned {
            Delivery::KeptForOwner
        } else {
            Delivery::Kept
        }
    }

    /// [`Dispatch::deliver`] for a task the store says a job took: handed to whoever waits
    /// for it (or to jobs that failed as task-timeout on it), else kept for that job's own
    /// wait, but never adopted by a job whose submit answer was lost or that is held in doubt,
    /// even when its echoed request is theirs (a webhook of an earlier run played again
    /// would hide a second bill and deliver one image twice).
    pub fn deliver_owned(&self, update: TaskUpdate) -> Delivery {
        self.sweep_early(false);
        let done = *update.status() == crate::claid::wire::TaskStatus::Done;
        let delivery = self.deliver_to(update, true);
        if delivery == Delivery::Handed {
            self.heard_now(done);
        }
        delivery
    }

    /// The first final webhook for a task whose end (with its result, or its error) a poll
    /// found first, while it counted as silence: late, not missing. One that says DONE
    /// shows webhooks come for successful tasks: without this, webhooks late by more than
    /// the wait for them were told as "not for tasks that end DONE".
    fn heard_late(&self, done: bool) {
        use std::sync::atomic::Ordering;
        self.late.fetch_add(1, Ordering::Relaxed);
        if done {
            self.heard_done.store(true, Ordering::Relaxed);
        }
        // A warning given before the late ones came said they do not come (at all, any more,
        // or for successful tasks): corrected once.
        self.tell(Silence::Late, true);
    }

    /// Gives the silence warning `silence` unless it is the one last given: whether it did.
    /// A `correction` (a late webhook shows the warning given before was wrong) is given only
    /// after another warning.
    fn tell(&self, silence: Silence, correction: bool) -> bool {
        let mut told = self.told.lock().unwrap_or_else(PoisonError::into_inner);
        if *told == Some(silence) || (correction && told.is_none()) {
            return false;
        }
        *told = Some(silence);
        drop(told);
        const LATE: &str = "results are polled as without webhooks until one comes in time (how long Claid takes to deliver shows in its dashboard's webhook log; a proxy in front of `webhook.listen` may hold them, docs/webhooks.md)";
        match silence {
            Silence::NotForDone => tracing::warn!(
                "Webhooks come, but not for tasks that end DONE: polls found successful tasks without theirs; results are polled as without webhooks until one comes (is the webhook subscribed to failed tasks only? Subscribe it to successful ones too in Claid's dashboard, docs/webhooks.md)"
            ),
            Silence::Late if correction => tracing::warn!(
                "Webhooks do come, but late: one came after its task's poll had found the task ended (the warning before was given too soon); {LATE}"
            ),
            Silence::Late => tracing::warn!(
                "Webhooks come late: polls found tasks ended before their webhooks came, which came after; {LATE}"
            ),
            Silence::Stopped => tracing::warn!(
                "Webhooks stopped coming: polls found tasks ended without theirs since the last one; results are polled as without webhooks until one comes (check the webhook's delivery in Claid's dashboard, docs/webhooks.md)"
            ),
            Silence::NoneCame => tracing::warn!(
                "No webhook has come while polls found tasks ended: results are polled as without webhooks until one comes; check the webhook URL and secret in Claid's dashboard (docs/webhooks.md)"
            ),
        }
        true
    }

    /// The silence warning last given since the last webhook that came in time.
    #[cfg(test)]
    fn last_told(&self) -> Option<Silence> {
        *self.told.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps an update for the task that will wait for it (an adopted task's result, which
    /// the adopting job polls for next).
    pub fn keep(&self, update: TaskUpdate) {
        let mut inner = self.lock();
        inner.done.remove(&update.task());
        // Counted as `adopted` already.
        inner.counted_early.insert(update.task());
        inner.early.insert(update.task(), (Instant::now(), update));
    }

    /// Whether a final update for task `id` would be kept for later (nobody waits for it by
    /// its id, and it did not come already): such a one is made durable before it is answered,
    /// so that a crash before its submit answer is recorded does not lose it.
    pub fn would_keep(&self, id: TaskRef) -> bool {
        let inner = self.lock();
        !inner.waiting.contains_key(&id)
            && !inner.done.contains_key(&id)
            && !inner.polled_ended.contains_key(&id)
            && !inner.polled_early.contains_key(&id)
    }

    /// Registers interest in task `id`; an update that came early is handed over at once.
    pub fn watch(self: &Arc<Self>, id: TaskRef) -> Watch {
        let slot = Arc::new(Slot::default());
        let mut inner = self.lock();
        inner.named.remove(&id);
        if let Some((_, update)) = inner
            .early
            .remove(&id)
            .or_else(|| inner.owned_early.remove(&id))
        {
            inner.mark_done(id);
            // It came before its submit's answer was recorded: handed now, and counted so
            // (it was counted `kept` only, in no outcome `/metrics` shows), unless an
            // adoption counted it.
            if !inner.counted_early.remove(&id) {
                inner.stats.handed += 1;
            }
            slot.put(update);
        }
        inner.waiting.insert(id, slot.clone());
        Watch {
            dispatch: self.clone(),
            id,
            slot,
        }
    }

    /// Registers a submit whose answer was lost, by the body it sent (with its `input`): a
    /// webhook whose echoed request is the same adopts it.
    /// An update that came before (kept, nobody waited for its id) is adopted at once: the
    /// webhook of a fast task often arrives before a slow submit answer is given up.
    /// `jobs` is how many jobs went with the request (a batch's images).
    pub fn lost_submit(
        self: &Arc<Self>,
        request: &serde_json::Value,
        jobs: usize,
    ) -> Option<LostSubmit> {
        self.lost_submit_skipping(request, jobs, &[])
    }

    /// [`Dispatch::lost_submit`], not adopting at once the kept updates of the tasks in `skip`
    /// (other jobs' with the same request, which their submit answers named first: see
    /// [`Dispatch::give_back`]).
    pub fn lost_submit_skipping(
        self: &Arc<Self>,
        request: &serde_json::Value,
        jobs: usize,
        skip: &[TaskRef],
    ) -> Option<LostSubmit> {
        let key = request_key(request)?;
        // Normalised once for every kept update it is compared with ([`echoes`]).
        let sent = inputs_sorted(&whole_numbers(request));
        let slot = Arc::new(Slot::default());
        let mut inner = self.lock();
        let came = inner
            .early
            .iter()
            .find(|(id, (_, update))| !skip.contains(id) && echoes(&sent, update.request()))
            .map(|(id, _)| *id);
        // A task only named so far (not final) is adopted without marking it done: its final
        // update still comes to whoever watches it.
        let named = inner
            .named
            .iter()
            .find(|(id, (_, update))| !skip.contains(id) && echoes(&sent, update.request()))
            .map(|(id, _)| *id);
        match came.and_then(|id| inner.early.remove(&id).map(|(_, update)| (id, update))) {
            Some((id, update)) => {
                inner.mark_done(id);
                if !inner.counted_early.remove(&id) {
                    inner.stats.adopted += 1;
                }
                slot.put(update);
            }
            None => match named.and_then(|id| inner.named.remove(&id)) {
                Some((_, update)) => {
                    // Counted `not_final` when it came: one outcome each.
                    inner.stats.not_final = inner.stats.not_final.saturating_sub(1);
                    inner.stats.adopted += 1;
                    slot.put(update);
                }
                None => {
                    inner
                        .lost
                        .entry(key.clone())
                        .or_default()
                        .push(slot.clone());
                }
            },
        }
        inner.awaiting += jobs;
        drop(inner);
        Some(LostSubmit {
            dispatch: self.clone(),
            key,
            slot,
            _awaiting: Awaiting {
                dispatch: self.clone(),
                jobs,
            },
        })
    }

    /// Undoes the adoption of `update` by a lost submit whose job could not take its task:
    /// another job's submit answer named it first. Two jobs sent the same request and Claid
    /// announced both tasks before answering either: the lost submit took the other's. The
    /// update goes to that job if it waits for the task, else is kept for it (and the lost
    /// submit waits on for its own, skipping this one). (The job stayed submitting for ever,
    /// and `run --once` never ended; acceptance run.)
    pub fn give_back(&self, update: TaskUpdate) {
        let id = update.task();
        let mut inner = self.lock();
        inner.stats.adopted = inner.stats.adopted.saturating_sub(1);
        if !update.status().is_terminal() {
            // Only named: its final update still comes to whoever watches it.
            inner.stats.not_final += 1;
            if !inner.waiting.contains_key(&id) && inner.named.len() < MAX_EARLY {
                inner.named.insert(id, (Instant::now(), update));
            }
            return;
        }
        inner.done.remove(&id);
        if let Err(update) = inner.hand_over(update) {
            inner.early.insert(id, (Instant::now(), update));
        }
    }

    /// Counts `jobs` as waiting for a webhook to adopt their lost submit while the returned
    /// guard lives (a job a crash caught mid-submit that may have gone in a batch).
    pub fn awaiting(self: &Arc<Self>, jobs: usize) -> Awaiting {
        self.lock().awaiting += jobs;
        Awaiting {
            dispatch: self.clone(),
            jobs,
        }
    }

    /// Submits whose answer was lost (a job, or a batch of them) and jobs a crash caught
    /// mid-submit, waiting for a webhook to say which task they became.
    pub fn awaiting_adoption(&self) -> usize {
        self.lock().awaiting
    }

    /// Registers jobs a crash caught mid-submit that may have gone in a batch: a batch webhook
    /// whose echoed request has their body and lists only their inputs is adopted by them
    /// (whatever the order of its inputs). Batches that came before are adopted at once.
    pub fn lost_batch_jobs(&self, jobs: Vec<LostBatchJob>) {
        let mut inner = self.lock();
        for job in jobs {
            inner
                .lost_batch
                .entry(job.body)
                .or_default()
                .entry(job.input)
                .or_default()
                .push(job.owner);
        }
        let any = inner.adopt_early(Inner::take_lost_batch, |inner| &mut inner.batch_adoptions);
        drop(inner);
        if any {
            self.adopted.notify_waiters();
        }
    }

    /// The next batch adopted by jobs registered with [`Dispatch::lost_batch_jobs`], with
    /// them, if one comes before `deadline`.
    pub async fn next_batch_adoption(
        &self,
        deadline: Instant,
    ) -> Option<(TaskUpdate, Vec<LostOwner>)> {
        loop {
            let notified = self.adopted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(adoption) = self.lock().batch_adoptions.pop() {
                return Some(adoption);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Takes a job off the batch registrations (it was adopted otherwise, or gave up).
    pub fn forget_lost_batch_job(&self, owner: LostOwner) {
        let mut inner = self.lock();
        inner.lost_batch.retain(|_, inputs| {
            inputs.retain(|_, owners| {
                owners.retain(|o| *o != owner);
                !owners.is_empty()
            });
            !inputs.is_empty()
        });
    }

    /// Registers jobs held in doubt: a webhook that comes later for the task their lost
    /// submit created is adopted by them (see [`Dispatch::next_held_adoption`]). One that
    /// came before and was kept is adopted at once.
    pub fn hold(&self, jobs: Vec<HeldJob>) {
        if jobs.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for job in jobs {
            if let Some(key) = job.alone {
                inner.held_alone.entry(key).or_default().push(job.owner);
            }
            if let Some(lost) = job.in_batch {
                inner
                    .held_batch
                    .entry(lost.body)
                    .or_default()
                    .entry(lost.input)
                    .or_default()
                    .push(lost.owner);
            }
        }
        let any = inner.adopt_early(Inner::take_held, |inner| &mut inner.held_adoptions);
        drop(inner);
        if any {
            self.held_adopted.notify_waiters();
        }
    }

    /// Registers jobs just failed as `task-timeout` on task (or batch) `task_id`: its final
    /// webhook, if it still comes in this daemon's life, is adopted by them like a held job's
    /// (see [`Dispatch::next_held_adoption`]). At most [`MAX_EARLY`] tasks are remembered.
    pub fn timed_out(&self, task_id: TaskRef, owners: Vec<LostOwner>) {
        let mut inner = self.lock();
        if inner.timed_out.len() < MAX_EARLY || inner.timed_out.contains_key(&task_id) {
            inner.timed_out.entry(task_id).or_default().extend(owners);
        }
    }

    /// Every task adopted so far by jobs registered with [`Dispatch::hold`], with them (taken).
    pub fn take_held_adoptions(&self) -> Vec<Adoption> {
        std::mem::take(&mut self.lock().held_adoptions)
    }

    /// An adoption [`Dispatch::next_held_adoption`] gave is seen through (its jobs reopened
    /// and started, or none waited any more).
    pub fn held_adoption_done(&self) {
        let mut inner = self.lock();
        inner.adopting = inner.adopting.saturating_sub(1);
    }

    /// Whether jobs held in doubt have adopted a task that is not yet seen through: their
    /// run is about to open again, so `run --once` is not settled (it ended with the jobs
    /// adopted and nothing delivered, its report saying "in doubt").
    pub fn held_adoption_pending(&self) -> bool {
        let inner = self.lock();
        !inner.held_adoptions.is_empty() || inner.adopting > 0
    }

    /// The next task adopted by jobs registered with [`Dispatch::hold`], with them.
    pub async fn next_held_adoption(&self) -> (TaskUpdate, Vec<LostOwner>) {
        loop {
            let notified = self.held_adopted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let popped = {
                let mut inner = self.lock();
                let popped = inner.held_adoptions.pop();
                inner.adopting += usize::from(popped.is_some());
                popped
            };
            if let Some(adoption) = popped {
                return adoption;
            }
            notified.await;
        }
    }

    pub fn stats(&self) -> DispatchStats {
        self.lock().stats
    }

    /// Before webhooks an earlier process kept are delivered again at the start: what
    /// [`Dispatch::replayed`] needs to leave them out of this process's outcomes.
    pub fn replaying(&self) -> Replaying {
        let inner = self.lock();
        Replaying {
            stats: inner.stats,
            early: inner
                .early
                .keys()
                .chain(inner.owned_early.keys())
                .copied()
                .collect(),
        }
    }

    /// After `n` webhooks an earlier process kept were delivered again (since `before`): the
    /// outcomes they were counted in are taken back (the earlier process verified them; this
    /// one's `/metrics` counts what it verified, each in one outcome), they count as
    /// `replayed`, and those kept for a job that has not taken them yet are not counted when
    /// it does.
    pub fn replayed(&self, before: Replaying, n: u64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.stats = DispatchStats {
            replayed: before.stats.replayed + n,
            ..before.stats
        };
        for id in inner.early.keys().chain(inner.owned_early.keys()) {
            if !before.early.contains(id) {
                inner.counted_early.insert(*id);
            }
        }
    }

    /// A poll found `task` (a batch counts for [`BATCH_SILENCE_WEIGHT`] tasks) submitted at
    /// `submitted_at_ms` ended while webhooks are on. If its webhook came meanwhile and was
    /// kept (nothing watched for it: the task was sent while webhooks were unproven or
    /// silent, see [`Dispatch::webhooks_unproven`]), webhooks do come: it is heard, and the
    /// kept copy is dropped (the poll has the result). (Counted as one without, webhooks that
    /// came for such tasks set off the warning, and kept them unwatched for the daemon's
    /// life.) Else its webhook had not come, unless it was submitted before this process
    /// started: its webhook may have come while the daemon was down, and it is not counted;
    /// if it comes after all, it is late (see [`Dispatch::heard_late`]) when the poll had the
    /// task's whole answer (`complete`: its result, or its error). Returns the warning it set
    /// off, if any.
    pub fn polled_final(
        self: &Arc<Self>,
        task: TaskRef,
        submitted_at_ms: u64,
        done: bool,
        complete: bool,
        early: Option<Duration>,
    ) -> Option<Silence> {
        let swept = self.sweep_early(true);
        let batch = matches!(task, TaskRef::Batch(_));
        let announced = {
            let mut inner = self.lock();
            // Handed to its waiter while the poll was on its way (the wait for the limiter's
            // turn and the answer listens for none): heard, counted there. (Counted as one
            // that did not come too, it kept webhooks lossy while they came.)
            if inner.done.contains_key(&task) {
                return swept;
            }
            let owned = inner.owned_early.remove(&task).is_some();
            let announced = inner.early.remove(&task).is_some() || owned;
            // Kept, and never taken: the poll had the task's end first, so it was a duplicate
            // (unless an adoption counted it).
            if announced && !inner.counted_early.remove(&task) {
                inner.stats.duplicates += 1;
            }
            if announced && batch {
                inner.batch_outcome(true);
            }
            announced
        };
        if announced {
            self.heard_now(done);
            return None;
        }
        if submitted_at_ms < self.started_ms {
            return swept;
        }
        // Found ended before its webhook was due: nothing is known of the webhook yet. It
        // is heard if it comes by then, else counted then as one that did not come.
        if let Some(due) = early.filter(|_| complete && batch) {
            let due = Instant::now() + due;
            insert_bounded(
                &mut self.lock().polled_early,
                task,
                (due, done),
                |(due, _)| *due > Instant::now(),
            );
            // Counted when that time comes, whatever else happens then (see
            // [`Dispatch::sweep_early`]).
            let dispatch = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(due + Duration::from_millis(10)).await;
                dispatch.sweep_early(true);
            });
            return swept;
        }
        // (Not a DONE without its result: its webhook may bring it.)
        {
            let mut inner = self.lock();
            if complete {
                insert_recent(&mut inner.polled_ended, task);
            }
            if batch {
                inner.batch_outcome(false);
            }
        }
        if batch {
            self.lossy.notify_waiters();
        }
        self.count_unheard(batch, done).or(swept)
    }

    /// Counts a task (or batch) whose end a poll found once its webhook was due, without it,
    /// towards webhooks taken as silent; returns the warning it set off, if any.
    fn count_unheard(&self, batch: bool, done: bool) -> Option<Silence> {
        use std::sync::atomic::Ordering;
        // A batch counts for as many tasks as make two in a row reach the threshold while
        // none was heard in this run, and [`SILENT_AFTER_HEARD_BATCHES`] once one was: a run
        // has few batches (a drop of 1,000 images, about 25), and each waits up to
        // `webhook.poll_fallback` for its webhook while its size has no estimate, so ten in a
        // row held a drop whose webhooks stopped after the canary for three rounds of two
        // minutes. A false alarm costs a poll for each batch waiting, a few requests.
        let weight = |threshold: u64| {
            if !batch {
                1
            } else if threshold > SILENT_AFTER {
                threshold.div_ceil(SILENT_AFTER_HEARD_BATCHES)
            } else {
                threshold.div_ceil(SILENT_AFTER)
            }
        };
        let reached = |before: u64, weight: u64, threshold: u64| {
            before < threshold && before + weight >= threshold
        };
        let final_after = self.silent_after();
        let final_weight = weight(final_after);
        let before = self.polled_final.fetch_add(final_weight, Ordering::Relaxed);
        let n = before + final_weight;
        if done {
            let done_after = self.silent_after_done();
            let done_weight = weight(done_after);
            let done_before = self.polled_done.fetch_add(done_weight, Ordering::Relaxed);
            if reached(done_before, done_weight, done_after) && n < final_after && self.heard_any()
            {
                self.silent.notify_waiters();
                return self
                    .tell(Silence::NotForDone, false)
                    .then_some(Silence::NotForDone);
            }
        }
        if !reached(before, final_weight, final_after) {
            return None;
        }
        // Tasks already waiting for their webhook poll now, not at their fallback.
        self.silent.notify_waiters();
        let silence = if self.late.load(Ordering::Relaxed) > 0 {
            Silence::Late
        } else if self.heard_any() {
            Silence::Stopped
        } else {
            Silence::NoneCame
        };
        self.tell(silence, false).then_some(silence)
    }

    /// Batches a poll found ended before their webhook was due whose due time has passed
    /// without it: counted now as batches whose webhook did not come (a webhook after is
    /// late). Returns the warning that set off, if any. Not `count`ed towards silence when a
    /// webhook is being delivered: one that comes shows webhooks come (counted, they set off
    /// "Webhooks stopped coming" just before that webhook was heard, and woke every batch
    /// waiting for its own).
    fn sweep_early(&self, count: bool) -> Option<Silence> {
        let now = Instant::now();
        let expired: Vec<bool> = {
            let mut inner = self.lock();
            if inner.polled_early.is_empty() {
                return None;
            }
            let expired: Vec<(TaskRef, bool)> = inner
                .polled_early
                .iter()
                .filter(|(_, (due, _))| *due <= now)
                .map(|(id, (_, done))| (*id, *done))
                .collect();
            for (id, _) in &expired {
                inner.polled_early.remove(id);
                insert_recent(&mut inner.polled_ended, *id);
                inner.batch_outcome(false);
            }
            expired.into_iter().map(|(_, done)| done).collect()
        };
        if !expired.is_empty() {
            self.lossy.notify_waiters();
        }
        let mut told = None;
        for done in expired.into_iter().filter(|_| count) {
            told = self.count_unheard(true, done).or(told);
        }
        told
    }

    /// Whether the webhook of one of the last [`BATCH_OUTCOMES`] batches was not there when
    /// it was due (lost on the way, or late). A batch sent then is polled on the schedule
    /// of a daemon without webhooks (its webhook still taken if it comes first), not when
    /// its webhook is overdue: each lost webhook held its batch, and the batch's share of
    /// `max_in_flight`, half its duration again plus a second (the acceptance run: 30 % of
    /// webhooks lost made a drop slower than no webhooks at all, 96.6 s against 88.1 s). A
    /// few polls a batch of up to `api.batch.max_images` images cost less than that wait.
    pub fn batch_webhooks_lossy(&self) -> bool {
        self.sweep_early(true);
        self.lock().batch_outcomes.contains(&false)
    }

    /// Completes when a batch's webhook is next counted lost: a batch waiting for its own
    /// then follows the poll schedule (see [`Dispatch::batch_webhooks_lossy`]).
    pub async fn went_lossy(&self) {
        self.lossy.notified().await;
    }

    /// Completes when webhooks are next found silent (see [`Dispatch::webhooks_silent`]): a
    /// task waiting up to `poll_fallback` for its webhook then polls on the schedule instead.
    pub async fn went_silent(&self) {
        self.silent.notified().await;
    }

    /// A webhook reached one of this daemon's tasks: webhooks arrive (again); one that says
    /// DONE: they arrive for successful tasks too.
    fn heard_now(&self, done: bool) {
        *self.told.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.polled_final
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.late.store(0, std::sync::atomic::Ordering::Relaxed);
        if done {
            self.polled_done
                .store(0, std::sync::atomic::Ordering::Relaxed);
            self.heard_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Successful tasks found DONE by polls in a row that make webhooks silent for them:
    /// [`SILENT_AFTER`] while no webhook has announced one DONE in this run (webhooks that
    /// come for failed tasks only), [`SILENT_AFTER_HEARD`] once one has.
    fn silent_after_done(&self) -> u64 {
        if self.heard_done.load(std::sync::atomic::Ordering::Relaxed) {
            SILENT_AFTER_HEARD
        } else {
            SILENT_AFTER
        }
    }

    /// Webhooks are configured but do not arrive: none reached one of this daemon's tasks
    /// since polls found [`SILENT_AFTER`] tasks ended (none in this run, or none since they
    /// stopped). Waits for results then follow the poll schedule of a
    /// daemon without webhooks (waiting until each task's webhook is overdue held every
    /// task that long however fast Claid was).
    pub fn webhooks_silent(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.polled_final.load(Ordering::Relaxed) >= self.silent_after()
            || self.polled_done.load(Ordering::Relaxed) >= self.silent_after_done()
    }

    /// Whether a task or batch sent now waits for its webhook at all: not while webhooks are
    /// silent ([`Dispatch::webhooks_silent`]), nor while none has come in this run and a poll
    /// already found a task ended without one (the canary, usually). Until one comes, new
    /// tasks are polled on the plain schedule, without the warning (that takes two tasks;
    /// their ends found by polls count, see [`Dispatch::polled_final`]):
    /// the first round of batches waited for webhooks that never came, then was polled,
    /// 33 s for 40 images of 2 s against 8 s without a `webhook:` section. Where webhooks do
    /// come, this costs only the first round's polls after a canary whose announcement was
    /// late; the first one heard ends it.
    pub fn webhooks_unproven(&self) -> bool {
        self.webhooks_silent()
            || (!self.heard_any()
                && self.polled_final.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }

    /// Tasks found ended by polls in a row that make webhooks silent: [`SILENT_AFTER`], or
    /// [`SILENT_AFTER_HEARD`] once one was heard in this run.
    fn silent_after(&self) -> u64 {
        if self.heard_any() {
            SILENT_AFTER_HEARD
        } else {
            SILENT_AFTER
        }
    }

    /// Whether any verified webhook about a known task has come in this run: webhooks are
    /// being delivered, not only configured.
    pub fn heard_any(&self) -> bool {
        let s = self.stats();
        s.handed + s.kept + s.adopted + s.duplicates + s.not_final + s.replayed > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// A final update for a task that already had its result (a duplicate) or that a task
    /// waits for (handed to it): `Ok` with what became of it; `Err` gives it back otherwise.
    fn hand_over(&mut self, update: TaskUpdate) -> Result<Delivery, TaskUpdate> {
        let id = update.task();
        self.named.remove(&id);
        if self.done.contains_key(&id) {
            self.stats.duplicates += 1;
            return Ok(Delivery::Duplicate);
        }
        let Some(slot) = self.waiting.get(&id).cloned() else {
            return Err(update);
        };
        self.polled_ended.remove(&id);
        self.mark_done(id);
        Ok(if slot.put(update) {
            if matches!(id, TaskRef::Batch(_)) {
                self.batch_outcome(true);
            }
            self.stats.handed += 1;
            Delivery::Handed
        } else {
            self.stats.duplicates += 1;
            Delivery::Duplicate
        })
    }

    /// The lost submit with request `key` that waited longest, taken out.
    fn take_lost(&mut self, key: &str) -> Option<Arc<Slot>> {
        let slots = self.lost.get_mut(key)?;
        let slot = (!slots.is_empty()).then(|| slots.remove(0));
        if slots.is_empty() {
            self.lost.remove(key);
        }
        slot
    }

    /// Updates kept early (nobody waited for their ids) that `take` gives owners to: taken
    /// out of `early` and queued in `adoptions` with them. Whether any was.
    fn adopt_early(
        &mut self,
        take: fn(&mut Inner, &TaskUpdate) -> Option<Vec<LostOwner>>,
        adoptions: fn(&mut Inner) -> &mut Vec<Adoption>,
    ) -> bool {
        let early: Vec<TaskRef> = self.early.keys().copied().collect();
        let mut any = false;
        for id in early {
            let Some((at, update)) = self.early.remove(&id) else {
                continue;
            };
            match take(self, &update) {
                Some(owners) => {
                    self.mark_done(id);
                    if !self.counted_early.remove(&id) {
                        self.stats.adopted += 1;
                    }
                    adoptions(self).push((update, owners));
                    any = true;
                }
                None => {
                    self.early.insert(id, (at, update));
                }
            }
        }
        any
    }

    /// Records whether a batch's webhook came in time (see [`Inner::batch_outcomes`]).
    fn batch_outcome(&mut self, heard: bool) {
        if self.batch_outcomes.len() == BATCH_OUTCOMES {
            self.batch_outcomes.pop_front();
        }
        self.batch_outcomes.push_back(heard);
    }

    fn mark_done(&mut self, id: TaskRef) {
        insert_recent(&mut self.done, id);
    }

    /// The registered jobs a batch update's echoed request belongs to: its body is theirs
    /// and each of its inputs is one of theirs (taken off the registrations); `None` unless
    /// every input has one.
    fn take_lost_batch(&mut self, update: &TaskUpdate) -> Option<Vec<LostOwner>> {
        take_batch_owners(&mut self.lost_batch, update)
    }

    /// The held jobs an update belongs to: a task whose echoed request is one held job's
    /// own, or a batch listing only held jobs' inputs with their body. They are taken off
    /// both registrations.
    fn take_held(&mut self, update: &TaskUpdate) -> Option<Vec<LostOwner>> {
        let owners = match update {
            TaskUpdate::Async(_) => {
                let key = echoed_key(&self.held_alone, update.request())?;
                let list = self.held_alone.get_mut(&key)?;
                let owner = list.pop()?;
                if list.is_empty() {
                    self.held_alone.remove(&key);
                }
                vec![owner]
            }
            TaskUpdate::Batch(_) => take_batch_owners(&mut self.held_batch, update)?,
        };
        for owner in &owners {
            self.held_alone.retain(|_, list| {
                list.retain(|o| o != owner);
                !list.is_empty()
            });
            self.held_batch.retain(|_, inputs| {
                inputs.retain(|_, list| {
                    list.retain(|o| o != owner);
                    !list.is_empty()
                });
                !inputs.is_empty()
            });
        }
        Some(owners)
    }

    fn prune_early(&mut self) {
        let cutoff = Instant::now() - EARLY_TTL;
        self.early.retain(|_, (at, _)| *at > cutoff);
        self.owned_early.retain(|_, (at, _)| *at > cutoff);
        let (early, owned) = (&self.early, &self.owned_early);
        self.counted_early
            .retain(|id| early.contains_key(id) || owned.contains_key(id));
        self.named.retain(|_, (at, _)| *at > cutoff);
    }
}

/// Notes `id` now in `map`, which holds at most [`MAX_EARLY`] ids.
fn insert_recent(map: &mut HashMap<TaskRef, Instant>, id: TaskRef) {
    let cutoff = Instant::now() - EARLY_TTL;
    insert_bounded(map, id, Instant::now(), |at| *at > cutoff);
}

/// Inserts `value` for `id` in `map`, which holds at most [`MAX_EARLY`] ids: when full, the
/// entries not to `keep` (older than [`EARLY_TTL`], past their due time) go, and all of them
/// if none is.
fn insert_bounded<V>(
    map: &mut HashMap<TaskRef, V>,
    id: TaskRef,
    value: V,
    keep: impl Fn(&V) -> bool,
) {
    if map.len() >= MAX_EARLY {
        map.retain(|_, v| keep(v));
        if map.len() >= MAX_EARLY {
            map.clear();
        }
    }
    map.insert(id, value);
}

/// The jobs registered in `registrations` a batch update's echoed request belongs to: its body is theirs
/// and each of its inputs is one of theirs (taken off the registrations); `None` unless
/// every input has one.
fn take_batch_owners(
    registrations: &mut HashMap<String, HashMap<String, Vec<LostOwner>>>,
    update: &TaskUpdate,
) -> Option<Vec<LostOwner>> {
    let TaskUpdate::Batch(_) = update else {
        return None;
    };
    let request = update.request();
    let mut echoed_body = request.as_object()?.clone();
    echoed_body.remove("input");
    let body = echoed_key(registrations, &serde_json::Value::Object(echoed_body))?;
    let inputs: Vec<&str> = request
        .get("input")?
        .as_array()?
        .iter()
        .map(serde_json::Value::as_str)
        .collect::<Option<_>>()?;
    let registered = registrations.get_mut(&body)?;
    let mut wanted: HashMap<&str, usize> = HashMap::new();
    for input in &inputs {
        *wanted.entry(input).or_default() += 1;
    }
    if inputs.is_empty()
        || wanted.iter().any(|(input, n)| {
            registered
                .get(*input)
                .is_none_or(|owners| owners.len() < *n)
        })
    {
        return None;
    }
    let mut owners = Vec::with_capacity(inputs.len());
    for input in inputs {
        if let Some(list) = registered.get_mut(input) {
            owners.extend(list.pop());
            if list.is_empty() {
                registered.remove(input);
            }
        }
    }
    if registered.is_empty() {
        registrations.remove(&body);
    }
    Some(owners)
}

/// A batch request's body without its `input`, in canonical JSON: what the jobs of one batch
/// share. `None` if it is not an object.
pub fn body_key(request: &serde_json::Value) -> Option<String> {
    let mut body = request.as_object()?.clone();
    body.remove("input");
    Some(crate::manifest::key::canonical_json(&whole_numbers(
        &serde_json::Value::Object(body),
    )))
}

/// The registered key (a [`request_key`] or a [`body_key`]) an echoed request stands for: its
/// own key when that is registered, else the one registered key whose request the echo holds
/// whole ([`echoes`]); `None` when none does, or several do (which one cannot be told).
fn echoed_key<V>(registered: &HashMap<String, V>, echo: &serde_json::Value) -> Option<String> {
    let own = request_key(echo)?;
    if registered.contains_key(&own) {
        return Some(own);
    }
    let echo = inputs_sorted(&whole_numbers(echo));
    let mut holding = registered.keys().filter(|key| {
        serde_json::from_str::<serde_json::Value>(key).is_ok_and(|sent| holds(&sent, &echo))
    });
    match (holding.next(), holding.next()) {
        (Some(key), None) => Some(key.clone()),
        _ => None,
    }
}

/// Whether an announcement's echoed request names other inputs than the ones its task was
/// sent with (`inputs`): a webhook for this task id carrying another request (a replayed or
/// forged delivery, a proxy mixing them up) is no result of this task. An echo without an
/// `input` says nothing and is not held against it.
pub fn echoes_other_inputs(echo: &serde_json::Value, inputs: &[&str]) -> bool {
    match echo.get("input") {
        Some(serde_json::Value::String(input)) => !inputs.contains(&input.as_str()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .any(|item| item.as_str().is_none_or(|input| !inputs.contains(&input))),
        _ => false,
    }
}

/// Whether `echo` is the request `sent` (`sent` with whole numbers as integers and a batch's
/// inputs sorted, as [`request_key`] normalises it; `echo` is normalised here): the same, or
/// one Claid wrote as its model holds it, with the fields not sent as `null` or as their
/// documented defaults ([`crate::claid::request::same_request`]). An echo with any other
/// field more is not taken: it may be another job's request that has the same fields and
/// more, and adopting its task would deliver that job's image.
fn echoes(sent: &serde_json::Value, echo: &serde_json::Value) -> bool {
    holds(sent, &inputs_sorted(&whole_numbers(echo)))
}

/// `request` with a batch's `input` list in sorted order: Claid may echo a batch's inputs in
/// another order than they were sent (its results come in any order too), and the request is
/// the same (a batch never holds one input twice). An echo in another order was not
/// recognised until the jobs had been held in doubt.
fn inputs_sorted(request: &serde_json::Value) -> serde_json::Value {
    let mut request = request.clone();
    if let Some(serde_json::Value::Array(inputs)) = request.get_mut("input") {
        inputs.sort_by_key(serde_json::Value::to_string);
    }
    request
}

/// `echo` is `sent`, up to fields that hold their documented default (or `null`).
fn holds(sent: &serde_json::Value, echo: &serde_json::Value) -> bool {
    crate::claid::request::same_request(sent, echo)
}

/// The identity of a request: its body in canonical JSON (keys sorted, so a server that
/// echoes the fields in another order still matches; numbers with nothing after the point
/// written as integers, so one that echoes `400` as `400.0` does too). `None` for an empty
/// echo. Kept in memory only: no stored key depends on it.
pub fn request_key(request: &serde_json::Value) -> Option<String> {
    if request.is_null() || request.as_object().is_some_and(|o| o.is_empty()) {
        return None;
    }
    Some(crate::manifest::key::canonical_json(&inputs_sorted(
        &whole_numbers(request),
    )))
}

/// `value` with every float that is a whole number (within `i64`) written as an integer.
fn whole_numbers(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), whole_numbers(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u64, status: &str, request: serde_json::Value) -> TaskUpdate {
        let body = serde_json::json!({
            "id": id, "status": status, "result_url": format!("http://x/v1/image/edit/async/{id}"),
            "request": request, "errors": [], "result": {}
        });
        TaskUpdate::parse(body.to_string().as_bytes()).expect("parses")
    }

    fn batch_update(id: u64) -> TaskUpdate {
        let body = serde_json::json!({
            "id": id, "status": "DONE", "result_url": format!("http://x/v1/image/edit/batch/{id}"),
            "request": {"input": [format!("https://x/{id}.jpg")], "operations": {}},
            "results": [], "errors": []
        });
        TaskUpdate::parse(body.to_string().as_bytes()).expect("parses")
    }

    /// A batch whose webhook was not there when due makes the next batches poll on the
    /// schedule (lossy) until eight in a row have had theirs in time. A batch such a poll
    /// found ended before its webhook was due is heard when the webhook comes by then (no
    /// warning, not late), and counts as one whose webhook did not come once the due time
    /// passed without it. Once webhooks were heard, four such batches in a row, not two,
    /// make them silent (with a third lost, two in a row set off "Webhooks stopped coming"
    /// while most came).
    #[tokio::test(start_paused = true)]
    async fn batches_whose_webhooks_are_lost_are_polled_on_the_schedule_and_counted_when_due() {
        let dispatch = Arc::new(Dispatch::default());
        let now = crate::store::now_ms;
        // Heard: one batch's webhook handed to its waiter.
        let first = dispatch.watch(TaskRef::Batch(1));
        assert_eq!(dispatch.deliver(batch_update(1)), Delivery::Handed);
        drop(first);
        assert!(!dispatch.batch_webhooks_lossy(), "no webhook lost yet");
        // One found ended at its due time, without its webhook: lossy, not silent.
        dispatch.polled_final(TaskRef::Batch(2), now(), true, true, None);
        assert!(dispatch.batch_webhooks_lossy());
        assert!(!dispatch.webhooks_silent(), "one lost webhook is no stop");
        // Found ended 5 s before its webhook is due; the webhook comes 3 s later: heard.
        dispatch.polled_final(TaskRef::Batch(3), now(), true, true, Some(secs(5)));
        tokio::time::advance(secs(3)).await;
        assert_eq!(dispatch.deliver(batch_update(3)), Delivery::Duplicate);
        assert_eq!(dispatch.last_told(), None, "no warning");
        assert_eq!(dispatch.stats().duplicates, 1);
        // Three found ended early whose webhooks never come: counted once due, as lost,
        // and with the one before them (heard since) not yet four in a row.
        for id in 4..7 {
            dispatch.polled_final(TaskRef::Batch(id), now(), true, true, Some(secs(5)));
        }
        assert!(!dispatch.webhooks_silent(), "not due yet: nothing known");
        tokio::time::advance(secs(6)).await;
        assert!(dispatch.batch_webhooks_lossy());
        assert!(!dispatch.webhooks_silent(), "three in a row");
        // The fourth in a row makes them silent, told as stopped.
        assert_eq!(
            dispatch.polled_final(TaskRef::Batch(7), now(), true, true, None),
            Some(Silence::Stopped)
        );
        assert!(dispatch.webhooks_silent());
        // A webhook of a swept batch coming now is late, and says webhooks come.
        assert_eq!(dispatch.deliver(batch_update(5)), Delivery::Duplicate);
        assert_eq!(dispatch.last_told(), Some(Silence::Late));
        // Eight batches in a row heard in time end the lossy spell.
        for id in 10..18 {
            let watch = dispatch.watch(TaskRef::Batch(id));
            assert_eq!(dispatch.deliver(batch_update(id)), Delivery::Handed);
            drop(watch);
            assert_eq!(dispatch.batch_webhooks_lossy(), id < 17, "after batch {id}");
        }
        assert!(!dispatch.webhooks_silent());
        // A webhook handed to its waiter while the batch's poll was on its way: the poll's
        // finding counts for nothing (it counted as lost too, and kept webhooks lossy).
        let watch = dispatch.watch(TaskRef::Batch(30));
        assert_eq!(dispatch.deliver(batch_update(30)), Delivery::Handed);
        assert_eq!(
            dispatch.polled_final(TaskRef::Batch(30), now(), true, true, None),
            None
        );
        drop(watch);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(dispatch.polled_final.load(Relaxed), 0);
        assert!(!dispatch.batch_webhooks_lossy());
        // A webhook for a batch waiting to be heard in time is not kept in the store: it is
        // that batch's, whose poll had the result.
        dispatch.polled_final(TaskRef::Batch(31), now(), true, true, Some(secs(5)));
        assert!(!dispatch.would_keep(TaskRef::Batch(31)));
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    /// A batch's webhook counted lost wakes the batches waiting for theirs (they then follow
    /// the poll schedule): at once when a poll at its due time finds it ended without one,
    /// and when the grace of one found ended earlier runs out (a timer `polled_final` sets
    /// counts it then: before, nothing counted it until another batch ended).
    #[tokio::test(start_paused = true)]
    async fn a_batch_webhook_counted_lost_wakes_the_batches_waiting_for_theirs() {
        let dispatch = Arc::new(Dispatch::default());
        let now = crate::store::now_ms;
        let waiter = |dispatch: &Arc<Dispatch>| {
            let dispatch = dispatch.clone();
            tokio::spawn(async move { dispatch.went_lossy().await })
        };
        let woken = waiter(&dispatch);
        tokio::task::yield_now().await;
        dispatch.polled_final(TaskRef::Batch(1), now(), true, true, None);
        tokio::time::timeout(secs(1), woken)
            .await
            .expect("woken at once")
            .expect("joins");
        // Found ended 2 s before its due time: nothing yet, then woken when the time is up.
        let woken = waiter(&dispatch);
        tokio::task::yield_now().await;
        dispatch.polled_final(TaskRef::Batch(2), now(), true, true, Some(secs(2)));
        tokio::time::advance(secs(1)).await;
        assert!(!woken.is_finished(), "not due yet");
        // No other call: the timer `polled_final` set counts it.
        tokio::time::advance(secs(2)).await;
        tokio::time::timeout(secs(1), woken)
            .await
            .expect("woken once due")
            .expect("joins");
        assert!(dispatch.batch_webhooks_lossy());
    }

    /// An announcement echoing another input than its task was sent with is told apart; an
    /// echo without an input, or a folder input, is not held against it.
    #[test]
    fn an_echo_of_other_inputs_is_told_apart() {
        let ours = ["https://x/a.jpg", "https://x/b.jpg"];
        let echo = |input: serde_json::Value| serde_json::json!({"input": input});
        assert!(!echoes_other_inputs(&echo("https://x/a.jpg".into()), &ours));
        assert!(echoes_other_inputs(&echo("https://x/c.jpg".into()), &ours));
        assert!(!echoes_other_inputs(
            &echo(serde_json::json!(["https://x/b.jpg", "https://x/a.jpg"])),
            &ours
        ));
        assert!(echoes_other_inputs(
            &echo(serde_json::json!(["https://x/a.jpg", "https://x/c.jpg"])),
            &ours
        ));
        assert!(!echoes_other_inputs(&serde_json::json!({}), &ours));
        assert!(!echoes_other_inputs(
            &echo(serde_json::json!({"source": "storage://s/in/"})),
            &ours
        ));
    }

    /// Two jobs whose lost submits sent the same request (one image and edit in two manifests)
    /// each adopt one of the two announced tasks; the second waited its whole wait and was
    /// held, since the first one's registration took its place.
    #[tokio::test]
    async fn two_lost_submits_of_one_request_each_adopt_a_task() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        let first = dispatch.lost_submit(&req, 1).expect("a key");
        let second = dispatch.lost_submit(&req, 1).expect("a key");
        assert_eq!(
            dispatch.deliver(update(5, "DONE", req.clone())),
            Delivery::Adopted
        );
        assert_eq!(dispatch.deliver(update(6, "DONE", req)), Delivery::Adopted);
        let wait = Duration::from_millis(1);
        assert_eq!(first.wait(wait).await.map(|u| u.id()), Some(5));
        assert_eq!(second.wait(wait).await.map(|u| u.id()), Some(6));
    }

    /// Webhooks that come for failed tasks only keep the general count at zero; successful
    /// tasks found DONE by polls in a row still make webhooks silent for them (each waited
    /// its whole `poll_fallback`), until a webhook announces one DONE.
    #[tokio::test]
    async fn webhooks_for_failed_tasks_only_are_silence_for_successful_ones() {
        let dispatch = Arc::new(Dispatch::default());
        let req =
            |n: u64| serde_json::json!({"input": format!("https://x/{n}.jpg"), "operations": {}});
        let mut id = 100;
        let mut announce = |status: &str| {
            id += 1;
            let _watch = dispatch.watch(TaskRef::Async(id));
            assert_eq!(
                dispatch.deliver(update(id, status, req(id))),
                Delivery::Handed
            );
        };
        // No webhook has said DONE in this run: two successful tasks found by polls.
        announce("ERROR");
        dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
        assert!(!dispatch.webhooks_silent(), "one is no pattern");
        announce("ERROR");
        dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_silent(), "two successful tasks by polls");
        announce("DONE");
        assert!(!dispatch.webhooks_silent(), "a DONE webhook came");
        // One did: ten in a row, as for webhooks lost on the way.
        for n in 1..SILENT_AFTER_HEARD {
            announce("ERROR");
            dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
            assert!(!dispatch.webhooks_silent(), "{n}");
        }
        announce("ERROR");
        dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_silent(), "ten in a row");
        // Batches: four in a row are enough once webhooks were heard.
        announce("DONE");
        for n in 1..SILENT_AFTER_HEARD_BATCHES {
            dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
            assert!(!dispatch.webhooks_silent(), "{n} batches are no pattern");
        }
        dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_silent(), "four batches in a row");
    }

    /// Before any webhook is heard a batch counts as one task, as after: two batches found
    /// ended by polls make webhooks silent, one does not (a canary polled just before its
    /// webhook came was a false alarm).
    #[test]
    fn one_batch_found_by_a_poll_before_any_webhook_is_no_pattern() {
        let dispatch = Arc::new(Dispatch::default());
        dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(!dispatch.webhooks_silent(), "one batch");
        dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_silent(), "two batches");
    }

    /// Before any webhook is heard, one task found ended by a poll (the canary, usually) is
    /// no pattern for the warning, but tasks sent after it do not wait for their webhooks
    /// (webhooks configured, never delivered: 40 images of 2 s took 33 s, 16 s with this,
    /// 8 s without a `webhook:` section). Once one is heard, one such poll changes nothing.
    #[tokio::test]
    async fn tasks_sent_after_one_ended_unannounced_before_any_webhook_do_not_wait_for_theirs() {
        let dispatch = Arc::new(Dispatch::default());
        assert!(
            !dispatch.webhooks_unproven(),
            "nothing known: wait for webhooks"
        );
        dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(!dispatch.webhooks_silent(), "one batch is no pattern");
        assert!(dispatch.webhooks_unproven(), "but none came for it");
        let heard = Arc::new(Dispatch::default());
        let id = 7;
        let _watch = heard.watch(TaskRef::Async(id));
        let req = serde_json::json!({"input": "https://x/7.jpg", "operations": {}});
        assert_eq!(heard.deliver(update(id, "DONE", req)), Delivery::Handed);
        heard.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(
            !heard.webhooks_unproven(),
            "webhooks were heard in this run"
        );
    }

    /// A task sent without watching for its webhook (webhooks unproven) whose webhook came
    /// anyway (kept for its owner) is heard when its poll finds it ended, not counted as
    /// silence: counted, such webhooks set off "Webhooks stopped coming" and kept webhooks
    /// unwatched for the daemon's life. One whose webhook did not come counts.
    #[test]
    fn a_webhook_kept_for_an_unwatched_task_is_heard_when_its_poll_finds_it_ended() {
        let dispatch = Arc::new(Dispatch::default());
        dispatch.polled_final(TaskRef::Batch(0), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_unproven());
        let id = 11;
        let req = serde_json::json!({"input": "https://x/11.jpg", "operations": {}});
        assert_eq!(
            dispatch.deliver_owned(update(id, "DONE", req)),
            Delivery::KeptForOwner
        );
        dispatch.polled_final(TaskRef::Async(id), crate::store::now_ms(), true, true, None);
        assert!(!dispatch.webhooks_unproven(), "a webhook came: heard");
        assert!(!dispatch.webhooks_silent());
        // Its kept copy is gone: the poll had the result.
        assert!(
            !dispatch
                .lock()
                .owned_early
                .contains_key(&TaskRef::Async(id))
        );
        // Without a webhook, four such ends make webhooks silent again (webhooks were heard
        // in this run: see `SILENT_AFTER_HEARD_BATCHES`).
        for id in [12, 13, 14] {
            dispatch.polled_final(TaskRef::Batch(id), crate::store::now_ms(), true, true, None);
        }
        assert!(!dispatch.webhooks_silent(), "three batches without theirs");
        dispatch.polled_final(TaskRef::Batch(15), crate::store::now_ms(), true, true, None);
        assert!(dispatch.webhooks_silent(), "four batches without theirs");
    }

    /// Webhooks that come after the polls found their tasks ended are late, not missing nor
    /// missing for DONE tasks: the warning says so. (Every webhook of a drop 9 s late was
    /// told as "not for tasks that end DONE", then as "stopped coming".)
    #[test]
    fn webhooks_that_come_after_their_tasks_polls_are_told_late() {
        let dispatch = Arc::new(Dispatch::default());
        let req =
            |id: u64| serde_json::json!({"input": format!("https://x/{id}.jpg"), "operations": {}});
        // One came in time, for a failed task: webhooks do come.
        let heard = dispatch.watch(TaskRef::Async(1));
        assert_eq!(
            dispatch.deliver(update(1, "ERROR", req(1))),
            Delivery::Handed
        );
        drop(heard);
        // The rest come after their task's poll found it DONE.
        let mut told = Vec::new();
        for id in 2..14 {
            told.extend(dispatch.polled_final(
                TaskRef::Async(id),
                crate::store::now_ms(),
                true,
                true,
                None,
            ));
            assert_eq!(
                dispatch.deliver_owned(update(id, "DONE", req(id))),
                Delivery::Duplicate,
                "not kept: the poll had the result"
            );
        }
        assert_eq!(told, vec![Silence::Late], "told once, as late");
        assert!(dispatch.webhooks_silent(), "polled as without webhooks");
        // One in time ends it.
        let heard = dispatch.watch(TaskRef::Async(20));
        assert_eq!(
            dispatch.deliver(update(20, "DONE", req(20))),
            Delivery::Handed
        );
        drop(heard);
        assert!(!dispatch.webhooks_silent());
        // Webhooks that never come after the polls stay "stopped".
        let mut told = Vec::new();
        for id in 30..40 {
            told.extend(dispatch.polled_final(
                TaskRef::Async(id),
                crate::store::now_ms(),
                true,
                true,
                None,
            ));
        }
        assert_eq!(told, vec![Silence::Stopped]);
    }

    /// Webhooks all late by more than a drop's polls: the warning that none came is given
    /// first (true then), and the first late one corrects it, once; the threshold reached
    /// later does not say it again.
    #[test]
    fn a_late_webhook_corrects_the_warning_that_none_came() {
        let dispatch = Arc::new(Dispatch::default());
        let req =
            |id: u64| serde_json::json!({"input": format!("https://x/{id}.jpg"), "operations": {}});
        let mut told = Vec::new();
        for id in 1..=3 {
            told.extend(dispatch.polled_final(
                TaskRef::Async(id),
                crate::store::now_ms(),
                true,
                true,
                None,
            ));
        }
        assert_eq!(told, vec![Silence::NoneCame]);
        assert_eq!(
            dispatch.deliver_owned(update(1, "DONE", req(1))),
            Delivery::Duplicate
        );
        assert_eq!(dispatch.last_told(), Some(Silence::Late), "corrected");
        for id in 4..20 {
            told.extend(dispatch.polled_final(
                TaskRef::Async(id),
                crate::store::now_ms(),
                true,
                true,
                None,
            ));
        }
        assert_eq!(told, vec![Silence::NoneCame], "not said again");
    }

    /// A task a poll found DONE without its result is not taken as ended: its webhook, which
    /// may bring the result, is kept for its job (and made durable first), not dropped as
    /// late. One whose poll had the result: its webhook is not made durable.
    #[test]
    fn a_webhook_after_a_poll_found_done_without_the_result_is_kept() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/1.jpg", "operations": {}});
        let done_bare = TaskRef::Async(1);
        dispatch.polled_final(done_bare, crate::store::now_ms(), true, false, None);
        assert!(
            dispatch.would_keep(done_bare),
            "made durable before it is answered"
        );
        assert_eq!(
            dispatch.deliver_owned(update(1, "DONE", req.clone())),
            Delivery::KeptForOwner
        );
        let done_whole = TaskRef::Async(2);
        dispatch.polled_final(done_whole, crate::store::now_ms(), true, true, None);
        assert!(!dispatch.would_keep(done_whole), "late: not kept");
        assert_eq!(
            dispatch.deliver_owned(update(2, "DONE", req)),
            Delivery::Duplicate
        );
    }

    /// A task held jobs adopted stays pending from its webhook until it is seen through, so
    /// `run --once` does not settle in between (it ended with the jobs adopted and nothing
    /// delivered).
    #[tokio::test]
    async fn a_held_adoption_is_pending_until_seen_through() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        dispatch.hold(vec![HeldJob {
            owner: (1, 2),
            alone: request_key(&req),
            in_batch: None,
        }]);
        assert!(!dispatch.held_adoption_pending());
        assert_eq!(dispatch.deliver(update(7, "DONE", req)), Delivery::Adopted);
        assert!(dispatch.held_adoption_pending(), "queued");
        let (update, owners) = dispatch.next_held_adoption().await;
        assert_eq!((update.id(), owners), (7, vec![(1, 2)]));
        assert!(dispatch.held_adoption_pending(), "being seen through");
        dispatch.held_adoption_done();
        assert!(!dispatch.held_adoption_pending());
    }

    /// A task a job took (an earlier run's webhook played again) is never adopted by a lost
    /// submit or a held job whose request it echoes: kept for its own job's wait only.
    #[tokio::test]
    async fn a_task_a_job_took_is_never_adopted_by_another() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        let lost = dispatch.lost_submit(&req, 1).expect("a key");
        dispatch.hold(vec![HeldJob {
            owner: (1, 2),
            alone: request_key(&req),
            in_batch: None,
        }]);
        assert_eq!(
            dispatch.deliver_owned(update(7, "DONE", req.clone())),
            Delivery::KeptForOwner
        );
        assert!(
            lost.wait(Duration::from_millis(1)).await.is_none(),
            "not adopted"
        );
        assert!(dispatch.take_held_adoptions().is_empty(), "not adopted");
        // Nor by a lost submit registered afterwards.
        drop(lost);
        let later = dispatch.lost_submit(&req, 1).expect("a key");
        assert!(later.wait(Duration::from_millis(1)).await.is_none());
        // Its own job's wait takes it.
        let watch = dispatch.watch(TaskRef::Async(7));
        assert_eq!(
            watch.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(7)
        );
        assert_eq!(dispatch.stats().adopted, 0);
    }

    #[tokio::test]
    async fn waiting_early_duplicate_and_adopted_updates() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        assert!(!dispatch.heard_any(), "nothing heard yet");
        // A waiter gets its update; a duplicate changes nothing.
        let watch = dispatch.watch(TaskRef::Async(1));
        assert_eq!(
            dispatch.deliver(update(1, "DONE", req.clone())),
            Delivery::Handed
        );
        assert!(dispatch.heard_any(), "a webhook came in");
        assert_eq!(
            watch.wait(Duration::from_secs(1)).await.map(|u| u.id()),
            Some(1)
        );
        assert_eq!(
            dispatch.deliver(update(1, "DONE", req.clone())),
            Delivery::Duplicate
        );
        // Before anyone waits: kept, then handed at once.
        assert_eq!(
            dispatch.deliver(update(2, "ERROR", req.clone())),
            Delivery::Kept
        );
        let watch = dispatch.watch(TaskRef::Async(2));
        assert_eq!(
            watch.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(2)
        );
        // Not final: nothing (another request's task).
        let third = serde_json::json!({"input": "https://x/3.jpg", "operations": {}});
        assert_eq!(
            dispatch.deliver(update(3, "PROCESSING", third)),
            Delivery::NotFinal
        );
        // A lost submit with the same request (fields in another order) adopts the task.
        let other_order: serde_json::Value =
            serde_json::from_str(r#"{"operations": {}, "input": "https://x/a.jpg"}"#).unwrap();
        let lost = dispatch.lost_submit(&other_order, 1).expect("a key");
        assert_eq!(dispatch.deliver(update(4, "DONE", req)), Delivery::Adopted);
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(4)
        );
        let stats = dispatch.stats();
        assert_eq!(
            (
                stats.handed,
                stats.kept,
                stats.adopted,
                stats.duplicates,
                stats.not_final
            ),
            (2, 1, 1, 1, 1),
            "the early update is handed once its task is watched"
        );
    }

    /// Each webhook ends in one outcome of `/metrics`: an adopted task's update kept for its
    /// job's next look and then watched is not counted `handed` besides `adopted`, and a
    /// not-final update later adopted by a lost submit moves from `not_final` to `adopted`.
    #[tokio::test]
    async fn every_webhook_is_counted_in_one_outcome() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        let lost = dispatch.lost_submit(&req, 1).expect("a key");
        assert_eq!(
            dispatch.deliver(update(1, "DONE", req.clone())),
            Delivery::Adopted
        );
        let adopted = lost.wait(Duration::from_millis(1)).await.expect("adopted");
        dispatch.keep(adopted);
        let watch = dispatch.watch(TaskRef::Async(1));
        assert!(watch.wait(Duration::from_millis(1)).await.is_some());
        let other = serde_json::json!({"input": "https://x/b.jpg", "operations": {}});
        assert_eq!(
            dispatch.deliver(update(2, "PROCESSING", other.clone())),
            Delivery::NotFinal
        );
        assert_eq!(dispatch.stats().not_final, 1);
        let lost = dispatch.lost_submit(&other, 1).expect("a key");
        assert!(lost.wait(Duration::from_millis(1)).await.is_some());
        let s = dispatch.stats();
        assert_eq!(
            (s.handed, s.adopted, s.duplicates, s.not_final),
            (0, 2, 0, 0)
        );
    }

    /// Webhooks an earlier process verified and kept, delivered again at the start, count in
    /// none of this process's outcomes, whether a job then takes one by its id or a lost
    /// submit adopts it (one such counted `handed` and `adopted` after a restart), and still
    /// show that webhooks come.
    #[tokio::test]
    async fn webhooks_kept_before_a_restart_count_in_no_outcome_of_this_process() {
        let dispatch = Arc::new(Dispatch::default());
        let own = serde_json::json!({"input": "https://x/own.jpg", "operations": {}});
        let lost = serde_json::json!({"input": "https://x/lost.jpg", "operations": {}});
        let before = dispatch.replaying();
        assert_eq!(dispatch.deliver(update(5, "DONE", own)), Delivery::Kept);
        assert_eq!(
            dispatch.deliver(update(6, "DONE", lost.clone())),
            Delivery::Kept
        );
        dispatch.replayed(before, 2);
        let watch = dispatch.watch(TaskRef::Async(5));
        assert!(watch.wait(Duration::from_millis(1)).await.is_some());
        let adopting = dispatch.lost_submit(&lost, 1).expect("a key");
        assert!(adopting.wait(Duration::from_millis(1)).await.is_some());
        let s = dispatch.stats();
        assert_eq!(
            (
                s.handed,
                s.kept,
                s.adopted,
                s.duplicates,
                s.not_final,
                s.replayed
            ),
            (0, 0, 0, 0, 0, 2)
        );
        assert!(dispatch.heard_any(), "webhooks came, before the restart");
    }

    /// An echo with `null` for the fields the job did not send (as a model-backed server
    /// writes it) still stands for the job's request; one with another field more may be
    /// another job's request (the same edit and more) and adopts nothing.
    #[tokio::test]
    async fn an_echo_with_nulls_for_fields_not_sent_adopts_and_one_with_more_fields_does_not() {
        let dispatch = Arc::new(Dispatch::default());
        let ours = serde_json::json!({"input": "https://x/e.jpg", "operations": {"resizing": {"width": 400}}});
        let with_nulls = serde_json::json!({"input": "https://x/e.jpg", "output": null,
            "operations": {"resizing": {"width": 400.0, "height": null}, "background": null}});
        let another = serde_json::json!({"input": "https://x/e.jpg", "output": {"format": "png"},
            "operations": {"resizing": {"width": 400}}});
        let lost = dispatch.lost_submit(&ours, 1).expect("a key");
        assert_eq!(
            dispatch.deliver(update(11, "DONE", another)),
            Delivery::Kept,
            "another job's request is not ours"
        );
        assert!(lost.wait(Duration::from_millis(1)).await.is_none());
        assert_eq!(
            dispatch.deliver(update(12, "DONE", with_nulls)),
            Delivery::Adopted
        );
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(12)
        );
    }

    #[tokio::test]
    async fn a_webhook_before_the_submit_is_given_up_is_adopted() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/b.jpg", "operations": {"a": 1}});
        let other = serde_json::json!({"input": "https://x/c.jpg", "operations": {"a": 1}});
        // The task's webhook comes while its submit answer is still awaited: kept.
        assert_eq!(
            dispatch.deliver(update(7, "DONE", req.clone())),
            Delivery::Kept
        );
        // Another lost submit does not take it.
        let unrelated = dispatch.lost_submit(&other, 1).expect("a key");
        assert!(unrelated.wait(Duration::from_millis(1)).await.is_none());
        // The submit is then given up: the kept update is adopted at once.
        let lost = dispatch.lost_submit(&req, 1).expect("a key");
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(7)
        );
        assert_eq!(dispatch.stats().adopted, 1);
        // It is not handed twice.
        assert_eq!(
            dispatch.deliver(update(7, "DONE", req)),
            Delivery::Duplicate
        );
    }

    /// Two final updates for a task nobody waits for yet (its submit answer not recorded):
    /// the first stands (a stale ERROR after the DONE took the billed results away).
    #[tokio::test]
    async fn the_first_final_update_kept_for_a_task_stands() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        assert_eq!(
            dispatch.deliver(update(9, "DONE", req.clone())),
            Delivery::Kept
        );
        assert_eq!(
            dispatch.deliver(update(9, "ERROR", req)),
            Delivery::Duplicate
        );
        let watch = dispatch.watch(TaskRef::Async(9));
        let kept = watch.wait(Duration::from_millis(1)).await.expect("kept");
        assert_eq!(*kept.status(), crate::claid::wire::TaskStatus::Done);
    }

    /// A lost submit's task named by a webhook before it ends (ACCEPTED) is adopted then, and
    /// its final update still reaches whoever watches the id afterwards; an echo that writes
    /// a whole number as `400.0` still matches.
    #[tokio::test]
    async fn a_not_final_webhook_adopts_a_lost_submit_and_the_final_one_still_comes() {
        let dispatch = Arc::new(Dispatch::default());
        let ours = serde_json::json!({"input": "https://x/d.jpg", "operations": {"resizing": {"width": 400}}});
        let echoed = serde_json::json!({"input": "https://x/d.jpg", "operations": {"resizing": {"width": 400.0}}});
        let lost = dispatch.lost_submit(&ours, 1).expect("a key");
        assert_eq!(
            dispatch.deliver(update(9, "ACCEPTED", echoed.clone())),
            Delivery::Adopted
        );
        let adopted = lost.wait(Duration::from_millis(1)).await.expect("adopted");
        assert_eq!((adopted.id(), adopted.status().is_terminal()), (9, false));
        let watch = dispatch.watch(TaskRef::Async(9));
        assert_eq!(
            dispatch.deliver(update(9, "DONE", echoed)),
            Delivery::Handed
        );
        assert_eq!(
            watch.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(9)
        );
        // Not final and nobody lost it yet: kept, and adopted by the submit given up next.
        let other = serde_json::json!({"input": "https://x/e.jpg", "operations": {}});
        assert_eq!(
            dispatch.deliver(update(10, "ACCEPTED", other.clone())),
            Delivery::NotFinal
        );
        let lost = dispatch.lost_submit(&other, 1).expect("a key");
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(10)
        );
        let watch = dispatch.watch(TaskRef::Async(10));
        assert_eq!(
            dispatch.deliver(update(10, "DONE", other)),
            Delivery::Handed
        );
        assert!(watch.wait(Duration::from_millis(1)).await.is_some());
        // A task a job already watches (its own submit's) is never adopted by another job's
        // lost submit of the same request, even when only named.
        let same = serde_json::json!({"input": "https://x/f.jpg", "operations": {}});
        let _mine = dispatch.watch(TaskRef::Async(11));
        let lost = dispatch.lost_submit(&same, 1).expect("a key");
        assert_eq!(
            dispatch.deliver(update(11, "PROCESSING", same)),
            Delivery::NotFinal
        );
        assert!(lost.wait(Duration::from_millis(1)).await.is_none());
    }

    /// A single task and a batch with the same id (Claid numbers them apart) each get their
    /// own announcement: one waiter's registration does not replace the other's, and one's
    /// update is neither handed to the other nor taken as the other's duplicate.
    #[tokio::test]
    async fn a_single_task_and_a_batch_with_the_same_id_each_get_their_own_update() {
        let dispatch = Arc::new(Dispatch::default());
        let single = dispatch.watch(TaskRef::Async(7));
        let batch = dispatch.watch(TaskRef::Batch(7));
        let batch_update = TaskUpdate::parse(
            serde_json::json!({
                "id": 7, "status": "DONE",
                "result_url": "http://x/v1/image/edit/batch/7",
                "request": {"input": ["https://x/a.jpg"], "operations": {}},
                "results": [], "errors": []
            })
            .to_string()
            .as_bytes(),
        )
        .expect("parses");
        assert_eq!(batch_update.task(), TaskRef::Batch(7));
        assert_eq!(dispatch.deliver(batch_update), Delivery::Handed);
        assert!(matches!(
            batch.wait(Duration::from_millis(1)).await,
            Some(TaskUpdate::Batch(_))
        ));
        assert!(
            single.wait(Duration::from_millis(1)).await.is_none(),
            "the batch's update is not the single task's"
        );
        let req = serde_json::json!({"input": "https://x/b.jpg", "operations": {}});
        assert_eq!(dispatch.deliver(update(7, "DONE", req)), Delivery::Handed);
        assert!(matches!(
            single.wait(Duration::from_millis(1)).await,
            Some(TaskUpdate::Async(_))
        ));
        assert!(
            !dispatch.would_keep(TaskRef::Batch(7)) && dispatch.would_keep(TaskRef::Async(8)),
            "an ended task is not kept again; an unknown one would be"
        );
    }

    /// A lost batch submit is adopted by a webhook that echoes its inputs in another order,
    /// whether the webhook comes before the submit is given up or after (it waited for the
    /// jobs to be held in doubt, and `run --once` ended before the late adoption delivered).
    #[tokio::test]
    async fn a_lost_batch_submit_is_adopted_whatever_the_order_of_the_echoed_inputs() {
        let batch = |id: u64, inputs: [&str; 2]| {
            TaskUpdate::parse(
                serde_json::json!({
                    "id": id, "status": "DONE",
                    "result_url": format!("http://x/v1/image/edit/batch/{id}"),
                    "request": {"input": inputs, "operations": {"resizing": {"width": 400.0}}},
                    "results": [], "errors": []
                })
                .to_string()
                .as_bytes(),
            )
            .expect("parses")
        };
        let sent = serde_json::json!({"input": ["https://x/a.jpg", "https://x/b.jpg"],
            "operations": {"resizing": {"width": 400}}});
        let dispatch = Arc::new(Dispatch::default());
        let lost = dispatch.lost_submit(&sent, 2).expect("a key");
        assert_eq!(
            dispatch.deliver(batch(5, ["https://x/b.jpg", "https://x/a.jpg"])),
            Delivery::Adopted
        );
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(5)
        );
        // The webhook first, kept; the lost submit after it takes it at once.
        assert_eq!(
            dispatch.deliver(batch(6, ["https://x/b.jpg", "https://x/a.jpg"])),
            Delivery::Kept
        );
        let lost = dispatch.lost_submit(&sent, 2).expect("a key");
        assert_eq!(
            lost.wait(Duration::from_millis(1)).await.map(|u| u.id()),
            Some(6)
        );
    }

    /// Webhooks that stop coming mid-run (one was heard) are noticed like webhooks that never
    /// came: after polls found tasks ended without theirs, results are polled on the schedule
    /// (every later batch waited the whole `poll_fallback`), until a webhook comes again.
    #[tokio::test]
    async fn webhooks_that_stop_mid_run_are_noticed_and_one_that_comes_again_ends_it() {
        let dispatch = Arc::new(Dispatch::default());
        let req = serde_json::json!({"input": "https://x/a.jpg", "operations": {}});
        let _first = dispatch.watch(TaskRef::Async(1));
        assert_eq!(
            dispatch.deliver(update(1, "DONE", req.clone())),
            Delivery::Handed
        );
        assert!(dispatch.heard_any());
        // A task already waiting for its webhook is woken when they are found silent (the
        // test's runtime has one thread: the waiter registers before this goes on).
        let waiter = {
            let dispatch = dispatch.clone();
            tokio::spawn(async move { dispatch.went_silent().await })
        };
        tokio::task::yield_now().await;
        // Webhooks were heard: some lost on the way are no silence.
        for n in 1..SILENT_AFTER_HEARD {
            dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
            assert!(
                !dispatch.webhooks_silent(),
                "{n} polls in a row are no pattern"
            );
        }
        dispatch.polled_final(TaskRef::Async(0), crate::store::now_ms(), true, true, None);
        assert!(
            dispatch.webhooks_silent(),
            "ten tasks in a row ended without theirs"
        );
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task is woken")
            .expect("joined");
        let _again = dispatch.watch(TaskRef::Async(2));
        assert_eq!(dispatch.deliver(update(2, "DONE", req)), Delivery::Handed);
        assert!(!dispatch.webhooks_silent(), "a webhook came again");
    }
}
