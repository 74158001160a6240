//! Intake: takes each stable file the watcher found through the first phases of its run
//! (Found → Validated → Reserved → Running, see [`crate::lifecycle`]) or refuses it into
//! `rejected/` before anything is spent. Runs beside the supervisor, a few candidates at once,
//! so one long validation never holds the others, the watchdog or the signals.
//!
//! A file is identified by its path and content: the same content again is a no-op (or, once
//! finished, disposed of again); new content while the previous version still runs makes that
//! run drain ([`finisher::Event::Supersede`]), and the new content is taken in once it has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::filename;
use crate::lifecycle::{Event as LifeEvent, Phase};
use crate::manifest::{self, Input, ManifestSpec};
use crate::metrics::Metrics;
use crate::output;
use crate::pipeline::finisher::{self, Event};
use crate::pipeline::notices::{Notice, Notices};
use crate::pipeline::submitter::Queue;
use crate::pipeline::{Board, Folders, Settings, move_again_later, on_file_pool};
use crate::report;
use crate::store::{
    JobState, JobV1, ManifestId, ManifestState, ManifestV1, NewRun, Registered, Store, StoreError,
    now_ms,
};
use crate::watcher::{Candidate, CandidateKind};

/// Candidates validated at once, and one more at most when it is a small file
/// ([`SMALL_FILE_BYTES`]).
const WORKERS: usize = 2;

/// A manifest (or recipe image) this small takes a lane of its own when the others are busy
/// validating large ones (two 85,000-image manifests held a one-image drop for 13 s).
const SMALL_FILE_BYTES: u64 = 256 * 1024;

/// Candidates taken off the watcher's channel and not yet done (each waits for its worker in
/// a task of its own): past this many, intake takes no more until one is done, so the
/// watcher's channel (and the scan behind it) waits instead of a task per file piling up.
/// The price: while 1,024 wait, a small file behind them waits too (its lane is taken only
/// once it is off the channel).
const MAX_WAITING: usize = 1024;

/// Intake's parts.
pub struct Intake {
    pub store: Store,
    pub folders: Folders,
    pub settings: Arc<RwLock<Settings>>,
    /// Where intake's count of pending candidates lives.
    pub board: Arc<Board>,
    /// Registered jobs go here, after the finisher has heard of their run.
    pub queue: Arc<Queue>,
    pub finisher: finisher::Tx,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
    pub notices: Notices,
    /// A validation in progress is abandoned when the daemon stops (nothing was registered).
    pub cancel: CancellationToken,
    /// Told at once when a drop's outbox takes no outputs (its jobs then wait unsubmitted).
    pub health: Arc<super::health::HealthState>,
    /// Starts a registered job that fetches a result again (not submitted).
    pub submitter: super::submitter::Submitter,
    /// The config's storages, opened: a storage input of a row made before is looked at
    /// before the row is taken as `unchanged` ([`Intake::replaced_inputs`]).
    pub storages: crate::storages::Storages,
}

/// Storage inputs looked at at once by [`Intake::replaced_inputs`].
const INPUT_LOOKS: usize = 16;

/// How long one look of [`Intake::replaced_inputs`] waits for the bucket.
const INPUT_LOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the looks of one drop ([`Intake::replaced_inputs`]) take at most: about 10,000
/// rows at 16 at a time. What was not looked at by then is taken as unchanged.
const INPUT_LOOKS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// What one candidate came to.
enum Taken {
    /// Handed on to the finisher (registered, rejected, or the old run told to drain).
    HandedOn,
    /// Nothing to do, or retried at the next scan.
    Done,
    /// The file changed while it was validated: to be taken again as it is now.
    Again,
}

/// Times a candidate saved again while it was validated is taken again at once; a file that
/// keeps changing is left to the watcher, which offers it again once it settles.
const MAX_RETAKES: usize = 5;

impl Intake {
    /// Takes candidates until the daemon stops. The same path is never taken twice at once: a
    /// candidate for a path in progress is taken again when that one is done.
    pub async fn run(self, mut candidates: mpsc::Receiver<Candidate>, cancel: CancellationToken) {
        let this = Arc::new(self);
        let workers = Arc::new(Semaphore::new(WORKERS));
        let small_lane = Arc::new(Semaphore::new(1));
        let waiting = Arc::new(Semaphore::new(MAX_WAITING));
        // Paths being taken, with the newest candidate that arrived meanwhile.
        let busy: Arc<Mutex<HashMap<PathBuf, Option<Candidate>>>> = Arc::default();
        loop {
            let candidate = tokio::select! {
                c = candidates.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                _ = cancel.cancelled() => return,
            };
            {
                let mut busy = busy.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(waiting) = busy.get_mut(&candidate.path) {
                    if waiting.replace(candidate).is_some() {
                        // The older waiting candidate is replaced: it is no longer pending.
                        this.done_without_handing_on();
                    }
                    continue;
                }
                busy.insert(candidate.path.clone(), None);
            }
            // A small file (most drops, recipe images) may also take the lane of its own, so
            // it is never held behind large manifests being validated. Each candidate waits
            // for its worker in its own task, so the loop goes on taking candidates; its place
            // in the workers' (first come, first served) line is taken here, in the order the
            // candidates came.
            let small = candidate.fingerprint.size <= SMALL_FILE_BYTES;
            let in_line = tokio::select! {
                permit = waiting.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = cancel.cancelled() => return,
            };
            let mut worker = Box::pin(workers.clone().acquire_owned());
            let ready = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(worker.as_mut(), cx))
            })
            .await;
            let small_lane = small_lane.clone();
            let this = this.clone();
            let busy = busy.clone();
            let cancel = cancel.clone();
            this.tracker.clone().spawn(async move {
                let permit = match ready {
                    std::task::Poll::Ready(permit) => permit,
                    std::task::Poll::Pending => tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        p = &mut worker => p,
                        p = small_lane.acquire_owned(), if small => p,
                    },
                };
                let Ok(permit) = permit else {
                    return;
                };
                let mut next = Some(candidate);
                while let Some(candidate) = next.take() {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let path = candidate.path.clone();
                    match this.take(candidate).await {
                        Taken::HandedOn => {}
                        Taken::Done | Taken::Again => this.done_without_handing_on(),
                    }
                    let mut busy = busy.lock().unwrap_or_else(PoisonError::into_inner);
                    next = busy.get_mut(&path).and_then(Option::take);
                    if next.is_none() {
                        busy.remove(&path);
                    }
                }
                drop(permit);
                drop(in_line);
            });
        }
    }

    /// The file at `rel`, written at `saved`, is a version of a run already taken in
    /// (running, or finished): a broken save put back as it was mends its rejection in this
    /// process.
    fn valid(&self, rel: &str, saved: std::time::SystemTime) {
        let _ = self.finisher.send(Event::Valid {
            rel: rel.to_owned(),
            saved: Some(saved),
        });
    }

    fn done_without_handing_on(&self) {
        let _ = self.finisher.send(Event::IntakeDone);
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One candidate, in a `manifest` span.
    async fn take(&self, candidate: Candidate) -> Taken {
        let rel = match candidate.path.strip_prefix(&self.folders.inbox) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => {
                warn!(path = %candidate.path.display(), "Ignoring a candidate outside the inbox");
                return Taken::Done;
            }
        };
        let span = info_span!("manifest", manifest = %rel.display());
        let mut candidate = candidate;
        for _ in 0..MAX_RETAKES {
            match self
                .take_in(candidate.clone(), rel.clone())
                .instrument(span.clone())
                .await
            {
                // As it is now (its size decides the size limit's fast path).
                Taken::Again => {
                    let path = candidate.path.clone();
                    if let Some(now) =
                        on_file_pool(move || crate::watcher::Fingerprint::at(&path)).await
                    {
                        candidate.fingerprint = now;
                    }
                }
                taken => return taken,
            }
        }
        warn!(parent: &span, "The manifest changed each time it was validated; it is taken in once it stays the same");
        Taken::Done
    }

    async fn take_in(&self, candidate: Candidate, rel: PathBuf) -> Taken {
        let rel_str = rel.to_string_lossy().into_owned();
        let path = candidate.path.clone();
        if candidate.kind == CandidateKind::Link {
            // Never followed: the link itself moves out of the inbox, its target is untouched.
            let text = format!(
                "manifest: {}\n\nRefused without reading it: this manifest is a symbolic link, and the daemon never follows links in the inbox (a link could make it read, and archive, a file outside the inbox).\nPut the manifest file itself into the inbox (copy it, do not link it).\n",
                crate::text::Escaped::path(&rel)
            );
            let why = "the manifest is a symbolic link; links are not followed";
            self.reject(&path, &rel, &text, why).await;
            return Taken::HandedOn;
        }
        let latest = match self.store.latest_run(&rel_str).await {
            Ok(latest) => latest,
            Err(err) => {
                error!(error = %err, "Cannot read the store; will retry this manifest at the next scan");
                return Taken::Done;
            }
        };
        // Fast path: a re-drop of a file already registered is recognised by its hash alone,
        // without validating it again (a 100,000-image manifest costs seconds to validate).
        // Not a new file over its size limit, which validation refuses from its size alone
        // (hashed first, a 20 GB file was read whole before it was refused); one with a run
        // before it is hashed still (a finished one kept in the inbox under a limit lowered
        // since is the same file, not a new one to reject).
        let limits = &self.settings().limits;
        let limit = if candidate.kind == CandidateKind::RecipeImage {
            limits.max_input_bytes
        } else {
            limits.max_manifest_bytes
        };
        let sha256 = if candidate.fingerprint.size > limit && latest.is_none() {
            None
        } else {
            let hash_path = path.clone();
            on_file_pool(move || output::sha256_file(&hash_path))
                .await
                .ok()
        };
        let keep = self.settings().policies.on_manifest_done == crate::config::OnManifestDone::Keep;
        if let (Some(sha256), Some((id, prev))) = (&sha256, &latest)
            && prev.sha256 == *sha256
        {
            match &prev.state {
                // Saved back to the content of a run that a newer version replaced: that run
                // did not process all of it, so it is new content again (below).
                ManifestState::Superseded { .. } => {}
                // Saved back while that run drains (A → B → A): it is the newest version,
                // taken in once the run has ended, instead of the one saved in between.
                ManifestState::Draining { .. } => {
                    return self.after_drain(*id, candidate, sha256).await;
                }
                // Kept in the inbox (`on_manifest_done: keep`): the file never left, so this is
                // the finished run's own file seen again, not a new drop.
                state if state.is_ended() && keep => {
                    debug!("Manifest is unchanged and already finished; nothing to do");
                    self.valid(&rel_str, candidate.fingerprint.mtime);
                    return Taken::Done;
                }
                // Dropped again after its run finished: validated below, which tells whether
                // anything is left to make (failed images, outputs gone, a changed local file
                // or profile) or nothing is.
                state if state.is_ended() => {}
                _ => {
                    debug!(manifest_id = id, "Manifest is already being processed");
                    self.valid(&rel_str, candidate.fingerprint.mtime);
                    return Taken::Done;
                }
            }
        }
        let settings = self.settings();
        let inbox = self.folders.inbox.clone();
        let load_path = path.clone();
        let is_recipe_image = candidate.kind == CandidateKind::RecipeImage;
        info!(
            bytes = candidate.fingerprint.size,
            "Validating the manifest"
        );
        let outbox = self.folders.outbox.clone();
        let validation = on_file_pool(move || {
            let ctx = manifest::LoadContext {
                inbox: &inbox,
                outbox: Some(&outbox),
                profiles: &settings.profiles,
                limits: &settings.limits,
                storages: &settings.storages,
            };
            // The watcher emits images only from folders with a recipe (README "Folder recipes").
            if is_recipe_image {
                manifest::load_recipe_image(&ctx, &load_path)
            } else {
                manifest::load(&ctx, &load_path)
            }
        });
        // A stop does not wait for a validation: the file is found again at the next start.
        let loaded = tokio::select! {
            loaded = validation => loaded,
            () = self.cancel.cancelled() => return Taken::Done,
        };
        // Saved again while it was validated (a fix saved over a broken version, a new version
        // over one not yet taken in): what was validated is not the file any more. Rejected,
        // the new version went to `rejected/` with the old one's problems; registered, a
        // version was billed that no archive keeps. The file is taken again, as it is now.
        let validated = match &loaded {
            // The bytes validated (a recipe image's identity hashes its recipe too: the image's
            // own hash, read first, stands for it).
            Ok(spec) if candidate.kind == CandidateKind::Manifest => Some(spec.sha256.clone()),
            Ok(_)
            | Err(
                manifest::ManifestError::Invalid { .. } | manifest::ManifestError::Recipe { .. },
            ) => sha256.clone(),
            Err(manifest::ManifestError::Read { .. }) => None,
        };
        if let Some(validated) = validated {
            let hash_path = path.clone();
            match on_file_pool(move || output::sha256_file(&hash_path)).await {
                Ok(now) if now == validated => {}
                Ok(_) => {
                    info!(
                        "The manifest was saved again while it was validated; it is taken again as it is now"
                    );
                    return Taken::Again;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    info!("The manifest left the inbox while it was validated; nothing to do");
                    // As for a file gone before it was read: a copy kept of a version that
                    // waited for a drain is not brought back later.
                    remove_pending_copy(&path).await;
                    return Taken::Done;
                }
                // Cannot tell (EMFILE, EIO): taken as validated, as before this check.
                Err(_) => {}
            }
        }
        let phase = Phase::Found;
        let spec = match loaded {
            Ok(spec) => spec,
            // Gone before it was read (deleted, or moved away by the end of its own run,
            // resumed at this start): nothing is left to take in, nor to reject.
            Err(manifest::ManifestError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                info!("The manifest left the inbox before it was read; nothing to do");
                // Deleted or renamed by its user: a copy kept of a version that waited for a
                // drain is not brought back later (by a rejected save of the same name).
                remove_pending_copy(&path).await;
                return Taken::Done;
            }
            // An image of a recipe folder whose run is under way, seen again because its
            // recipe was saved with a mistake: the image is its run's input, which goes on with
            // the recipe it was taken in with. Moving it to rejected/ took that file away (its
            // images not yet sent failed as `input-unreadable`) and said nothing was submitted.
            Err(err)
                if is_recipe_image
                    && latest
                        .as_ref()
                        .is_some_and(|(_, prev)| !prev.state.is_ended()) =>
            {
                warn!(error = %err, "The folder's recipe was saved with a mistake; this image's run goes on with the recipe it was taken in with (images dropped now are rejected until the recipe is fixed)");
                return Taken::Done;
            }
            // A recipe image gone from the inbox (deleted, or moved to rejected/ by the same
            // version's first offer: the start's scan and the watcher's first look each offer
            // what is there) is told as "not found" by its validation: nothing is left to
            // reject. Rejected, it got a second error file and alert with that false reason.
            Err(_) if is_recipe_image && !exists_here(&path).await => {
                info!("The image left the inbox before it was taken in; nothing to do");
                return Taken::Done;
            }
            Err(err) => {
                let _ = phase.next(LifeEvent::Invalid);
                self.reject(&path, &rel, &err.error_txt(), &err.to_string())
                    .await;
                return Taken::HandedOn;
            }
        };
        let Ok(phase) = phase.next(LifeEvent::Valid) else {
            return Taken::Done;
        };
        // The validated content may differ from the hash read first (saved meanwhile), and a
        // recipe image's identity hashes its recipe too.
        let mut replaced = None;
        if let Some((id, prev)) = &latest {
            let superseded = matches!(prev.state, ManifestState::Superseded { .. });
            // An ended run with something left to make is taken in again: a new run, which
            // skips the outputs still there unchanged and makes the others.
            let same = prev.sha256 == spec.sha256 && !superseded;
            // Only a file placed in the inbox after the run was taken in is dropped again: one
            // that stayed (its archiving failed) is the finished run's own, seen at a start,
            // and must not make (and bill) what failed again at every start. (Compared with
            // when the run was registered, not when it finished: the kernel stamps a file's
            // change time from a coarse clock, a few milliseconds behind, so a file dropped
            // again right after a quick run ended could look older than its end.)
            let dropped_again = match prev.state {
                ManifestState::Finished { .. } => {
                    changed_at_ms(&path).is_none_or(|changed| changed > prev.registered_at_ms)
                }
                _ => true,
            };
            let remake = same
                && prev.state.is_ended()
                && dropped_again
                && {
                    let keys = spec.jobs.iter().map(|job| job.key.hex()).collect();
                    let left = match self.left_to_make(*id, keys).await {
                        Some(why) => Some(why),
                        // Not with `on_manifest_done: keep`, as for anything left.
                        None if self.settings().policies.on_manifest_done
                            != crate::config::OnManifestDone::Keep =>
                        {
                            // A stop during the look: not taken in (the file stays).
                            let Some(found) = self.replaced_inputs(&spec.jobs).await else {
                                return Taken::Done;
                            };
                            let any = !found.is_empty();
                            replaced = Some(found);
                            any.then_some(
                                "storage inputs of its run were replaced at their keys since",
                            )
                        }
                        None => None,
                    };
                    match left {
                        Some(why) => {
                            info!(
                                reason = why,
                                "Manifest is unchanged, but its finished run left images to make; taking it in again"
                            );
                            true
                        }
                        None => false,
                    }
                };
            if same && !remake {
                if matches!(prev.state, ManifestState::Draining { .. }) {
                    return self.after_drain(*id, candidate, &spec.sha256).await;
                }
                self.valid(&rel_str, candidate.fingerprint.mtime);
                if prev.state.is_ended() {
                    info!("Unchanged and already finished; nothing to do");
                    self.dispose_again(&rel).await;
                }
                return Taken::Done;
            }
            if !prev.state.is_ended() {
                // A new version that another active manifest's outputs refuse is refused now,
                // and the running version goes on: draining it first would stop it for a
                // version that is then rejected (its images lost to neither).
                if let Some(refused) = self.refused_by_another(*id, &spec, &rel_str).await {
                    let (text, why) = refused;
                    self.reject(&path, &rel, &text, &why).await;
                    return Taken::HandedOn;
                }
                // The file changed while its previous version runs: that run drains first,
                // then this candidate comes back here.
                return self.after_drain(*id, candidate, &spec.sha256).await;
            }
        }
        self.register(spec, rel_str, phase, &path, replaced).await
    }

    /// The keys of rows whose storage input is another object now than the one the row was
    /// made from (replaced at its key since, as its last submit's look noted it,
    /// [`JobV1::input_seen`]): made again, not taken as `unchanged`. (A catalogue kept in a
    /// bucket had a replaced image reported `unchanged`, the edit of the old one left in
    /// place: acceptance run.) One `HEAD` per row done before with its input noted,
    /// [`INPUT_LOOKS`] at a time, in a new order at each drop (so that rows a deadline left
    /// out are looked at by a later drop).
    ///
    /// Only a definite answer makes a row again (nothing is billed on a guess): an input not
    /// found (a bucket away or answering for another) is taken as the same, and so is every
    /// input of a storage whose endpoint, asked once, says a key no one wrote is there (a
    /// proxy's page, whose ETag is no object's). A storage that fails a look is not looked at
    /// again in this drop; each look waits [`INPUT_LOOK_TIMEOUT`] at most, all of them
    /// [`INPUT_LOOKS_DEADLINE`]: what was not looked at is taken as the same, with a WARN.
    /// `None` when the daemon stops meanwhile (the drop is not taken in).
    async fn replaced_inputs(
        &self,
        jobs: &[manifest::JobSpec],
    ) -> Option<std::collections::HashSet<String>> {
        use futures_util::StreamExt as _;
        use rand::seq::SliceRandom as _;
        use std::collections::{HashMap, HashSet};
        let mut looks = Vec::new();
        for job in jobs {
            let Input::Remote(uri) = &job.input else {
                continue;
            };
            let Some((connector, key)) = crate::storages::split_uri(uri) else {
                continue;
            };
            let Some(storage) = self.storages.by_connector(connector) else {
                continue;
            };
            let hex = job.key.hex();
            let Ok(Some((_, prev))) = self.store.done_by_key(&hex).await else {
                continue;
            };
            let Some(seen) = prev.input_seen else {
                continue;
            };
            if seen.key != key {
                continue;
            }
            looks.push((hex, storage.name.clone(), seen));
        }
        if looks.is_empty() {
            return Some(HashSet::new());
        }
        looks.shuffle(&mut rand::rng());
        let n_looks = looks.len();
        let failed: Mutex<HashMap<String, String>> = Mutex::default();
        let looked = std::sync::atomic::AtomicUsize::new(0);
        let fail = |storage: &str, why: String| {
            failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(storage.to_owned())
                .or_insert(why);
        };
        let deadline = tokio::time::Instant::now() + INPUT_LOOKS_DEADLINE;
        let ends = {
            let cancel = self.cancel.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = cancel.cancelled() => {}
                }
            }
        };
        let answers: Vec<(String, String)> = futures_util::stream::iter(looks)
            .map(|(hex, name, seen)| {
                let (failed, looked, fail) = (&failed, &looked, &fail);
                async move {
                    looked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let given_up = failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains_key(&name);
                    let storage = self.storages.get(&name)?;
                    if given_up {
                        return None;
                    }
                    let head = storage.objects.head(&seen.key);
                    let now = match tokio::time::timeout(INPUT_LOOK_TIMEOUT, head).await {
                        Ok(Ok(info)) => {
                            crate::store::ObjectSeen::new(&seen.key, info.e_tag, info.last_modified)
                        }
                        // Gone: no new image to make (its look before a submit says so).
                        Ok(Err(crate::objects::ObjectError::NotFound { .. })) => return None,
                        Ok(Err(err)) => {
                            fail(&name, err.to_string());
                            return None;
                        }
                        Err(_) => {
                            let secs = INPUT_LOOK_TIMEOUT.as_secs();
                            fail(&name, format!("no answer within {secs} s"));
                            return None;
                        }
                    };
                    // Every S3 answer to a `HEAD` has an ETag and a time of writing: one
                    // without what the look before the submit noted is no answer about the
                    // object (a proxy's page; every row was made again, billed).
                    let definite = (seen.e_tag.is_none() || now.e_tag.is_some())
                        && (seen.modified_ms.is_none() || now.modified_ms.is_some());
                    if !definite {
                        let why = format!(
                            "{} was answered without an ETag or a time of writing, as S3 never answers (a proxy's page?)",
                            storage.objects.uri(&seen.key)
                        );
                        fail(&name, why);
                        return None;
                    }
                    if seen.same_bytes(&now) || seen.is_same(&now) {
                        return None;
                    }
                    // And an image is what is there now (a page served for the key, with an
                    // ETag of its own, is not a new photo to edit).
                    let len = crate::manifest::input::HEAD_LEN as u64;
                    let first = storage.objects.get_range(&seen.key, 0..len);
                    match tokio::time::timeout(INPUT_LOOK_TIMEOUT, first).await {
                        Ok(Ok(head))
                            if crate::manifest::input::check_image_signature(&head).is_ok() =>
                        {
                            Some((hex, name))
                        }
                        Ok(Ok(_)) => {
                            let why = format!(
                                "{} is no image now (replaced by something else, or a page answered for it)",
                                storage.objects.uri(&seen.key)
                            );
                            fail(&name, why);
                            None
                        }
                        Ok(Err(err)) => {
                            fail(&name, err.to_string());
                            None
                        }
                        Err(_) => {
                            let secs = INPUT_LOOK_TIMEOUT.as_secs();
                            fail(&name, format!("no answer within {secs} s"));
                            None
                        }
                    }
                }
            })
            .buffer_unordered(INPUT_LOOKS)
            .take_until(ends)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if self.cancel.is_cancelled() {
            return None;
        }
        // A storage whose endpoint is not the bucket's answered for none of its inputs.
        let mut by_storage: HashMap<String, Vec<String>> = HashMap::new();
        for (hex, name) in answers {
            by_storage.entry(name).or_default().push(hex);
        }
        let mut replaced = HashSet::new();
        for (name, keys) in by_storage {
            let Some(storage) = self.storages.get(&name) else {
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let probe = storage.objects.probe_absent();
            tokio::select! {
                answer = tokio::time::timeout(left.min(INPUT_LOOK_TIMEOUT), probe) => match answer {
                    Ok(Ok(())) => replaced.extend(keys),
                    Ok(Err(err)) => fail(&name, err.to_string()),
                    Err(_) => fail(&name, "no answer to a look at a key no one wrote".to_owned()),
                },
                () = self.cancel.cancelled() => return None,
            }
        }
        let failed = std::mem::take(&mut *failed.lock().unwrap_or_else(PoisonError::into_inner));
        for (storage, why) in failed {
            warn!(storage = %crate::text::Escaped::str(&storage), error = %crate::text::Escaped::str(&why), "The storage inputs of rows made before could not all be looked at; they are taken as unchanged (nothing is billed on a guess: a replaced image is made again at the next drop that can look)");
        }
        let looked = looked.load(std::sync::atomic::Ordering::Relaxed);
        if looked < n_looks {
            warn!(
                looked,
                rows = n_looks,
                "Not every storage input of rows made before could be looked at within {} s; the others are taken as unchanged (a later drop looks at them first, in another order)",
                INPUT_LOOKS_DEADLINE.as_secs()
            );
        }
        if !replaced.is_empty() {
            info!(
                images = replaced.len(),
                looked_at = looked,
                "Storage inputs replaced at their key since their rows were made; those rows are made again"
            );
        }
        Some(replaced)
    }

    /// Records the run and its jobs (reserving every output and report path), marking jobs
    /// whose identical output already exists as done-unchanged, then queues the rest.
    async fn register(
        &self,
        spec: ManifestSpec,
        rel: String,
        phase: Phase,
        path: &Path,
        replaced: Option<std::collections::HashSet<String>>,
    ) -> Taken {
        // Looked for once per drop (the look that decided to take an unchanged manifest in
        // again is the one its run goes by).
        let replaced = match replaced {
            Some(replaced) => replaced,
            None => match self.replaced_inputs(&spec.jobs).await {
                Some(replaced) => replaced,
                // A stop during the look: not taken in (the file stays for the next start).
                None => return Taken::Done,
            },
        };
        let outbox = self.folders.outbox.clone();
        let storages = self.settings().storages.clone();
        let rel_path = PathBuf::from(&rel);
        let recipe_image = manifest::is_image_name(&rel_path);
        let extra_paths = report::reserved_paths(&self.folders.outbox, &rel_path);
        let sha256 = spec.sha256.clone();
        let n_jobs = spec.jobs.len() as u64;
        let now = now_ms();
        let record = ManifestV1 {
            rel: rel.clone(),
            sha256: sha256.clone(),
            registered_at_ms: now,
            n_jobs: 0,
            state: ManifestState::Running,
            counts: None,
            staging_cleanup: false,
        };
        let mut parsed = manifest::ParsedBodies::default();
        let jobs = spec.jobs.into_iter().map(move |job| {
            let (input, local) = match job.input {
                Input::Remote(url) => (url, false),
                Input::Local(file) => (file.rel.to_string_lossy().into_owned(), true),
            };
            JobV1 {
                manifest: 0,
                idx: job.idx as u32,
                key: job.key.hex(),
                input,
                local,
                body: parsed.get(&job.body),
                output_rel: job.output_rel.to_string_lossy().into_owned(),
                state: JobState::Queued,
                attempts: 0,
                in_doubt: 0,
                polls: 0,
                request_ids: Vec::new(),
                batch: None,
                batch_images: None,
                staged: None,
                replaces: None,
                submitted_to: None,
                input_seen: None,
                lost_answers: 0,
                accepted_unread: false,
                updated_at_ms: now,
            }
        });
        let registered = self
            .store
            .register_run(
                NewRun {
                    record,
                    extra_paths,
                },
                jobs,
                move |job, prev| {
                    if replaced.contains(&job.key) {
                        return None;
                    }
                    unchanged_state(&outbox, &storages, &job.body, &job.output_rel, prev)
                },
            )
            .await;
        let (id, queued, fetching, unchanged) = match registered {
            Ok(Registered::Run {
                id,
                queued,
                fetching,
                unchanged,
                ..
            }) => (id, queued, fetching, unchanged),
            Ok(Registered::Conflict {
                path: taken,
                wanted,
                owner_rel,
                ..
            }) => {
                let _ = phase.next(LifeEvent::Conflict);
                let (text, why) = conflict_text(&rel, &taken, &wanted, owner_rel);
                self.reject(path, &rel_path, &text, &why).await;
                return Taken::HandedOn;
            }
            Err(err) => {
                error!(error = %err, "Cannot record the manifest in the store; will retry at the next scan");
                return Taken::Done;
            }
        };
        let _ = phase
            .next(LifeEvent::Reserved)
            .and_then(|p| p.next(LifeEvent::Registered));
        self.registered(
            id,
            (queued, fetching),
            unchanged,
            n_jobs,
            rel,
            sha256,
            recipe_image,
            path,
            &rel_path,
        )
        .await
    }
}

/// What a refused manifest's error file and log say when another active run holds `taken`,
/// where this one wants `wanted`.
fn conflict_text(
    rel: &str,
    taken: &str,
    wanted: &str,
    owner_rel: Option<String>,
) -> (String, String) {
    // A folder recipe's image is one too, and told as an image (it was called a manifest and
    // told to take another name, which is the image's).
    let is_image = |rel: &str| crate::manifest::is_image_name(Path::new(rel));
    let owner_kind = match owner_rel.as_deref() {
        Some(rel) if is_image(rel) => "image",
        _ => "manifest",
    };
    // Names and paths come from file names: escaped like in the logs.
    let other = owner_rel.map_or_else(
        || "another manifest being taken in".to_owned(),
        |rel| crate::text::escape(&rel),
    );
    let (taken, wanted) = (crate::text::escape(taken), crate::text::escape(wanted));
    // A storage output is reserved as the object it writes (`s3://bucket/key`).
    // (An object is reserved at its key and at its twin with the format's other extension.)
    let place = if wanted.contains("://") {
        if crate::objects::twin_key(&wanted).is_some() {
            "in the bucket (an object at a `.jpg`, `.jpeg`, `.tif` or `.tiff` key is reserved with its twin under the format's other extension, where Claid may write it)"
        } else {
            "in the bucket"
        }
    } else {
        "in the outbox"
    };
    let (clash, why) = if wanted == taken {
        (
            format!(
                "it would write `{taken}` {place}, which the {owner_kind} `{other}` is still writing"
            ),
            format!("`{taken}` is being written by the active {owner_kind} `{other}`"),
        )
    } else if wanted.starts_with(&format!("{taken}/")) {
        (
            format!(
                "it would write `{wanted}` {place}, and the {owner_kind} `{other}` is still writing the file `{taken}`, where this path needs a folder"
            ),
            format!(
                "`{wanted}` needs a folder where the active {owner_kind} `{other}` writes the file `{taken}`"
            ),
        )
    } else {
        (
            format!(
                "it would write the file `{wanted}` {place}, and the {owner_kind} `{other}` is still writing `{taken}` inside a folder of that name"
            ),
            format!(
                "`{wanted}` would be a file where the active {owner_kind} `{other}` writes `{taken}` inside a folder"
            ),
        )
    };
    let shown = crate::text::Escaped::str(rel);
    let text = if is_image(rel) {
        format!(
            "image: {shown}\n\nRefused before anything was submitted: {clash}.\nTwo images of a folder recipe (or an image and a manifest) that are active at the same time may not write the same output (`shoe.png` and `shoe.PNG` both make `shoe.jpg`), nor a file where the other needs a folder.\nWait until `{other}` has finished, or give this image another name, then drop it into the folder again.\n"
        )
    } else {
        format!(
            "manifest: {shown}\n\nRefused before anything was submitted: {clash}.\nTwo manifests that are active at the same time may not write the same output or report (manifests with the same name but another extension, like `s.yaml` and `s.json`, write the same report `s.report.json`), nor a file where the other needs a folder.\nWait until `{other}` has finished, or give this manifest another name or other output names, then drop it again.\n"
        )
    };
    (text, why)
}

impl Intake {
    /// Why a new version of run `old` is refused by another active run's reservations (the
    /// error file's text and the log's reason), if it is.
    async fn refused_by_another(
        &self,
        old: ManifestId,
        spec: &ManifestSpec,
        rel: &str,
    ) -> Option<(String, String)> {
        let extra_paths = report::reserved_paths(&self.folders.outbox, Path::new(rel));
        let mut parsed = manifest::ParsedBodies::default();
        let outputs = spec
            .jobs
            .iter()
            .map(|job| {
                let output_rel = job.output_rel.to_string_lossy().into_owned();
                let object = crate::storages::destination_of(&parsed.get(&job.body), &output_rel);
                (output_rel, object)
            })
            .collect();
        match self.store.first_conflict(old, extra_paths, outputs).await {
            Ok(Some(Registered::Conflict {
                path,
                wanted,
                owner_rel,
                ..
            })) => Some(conflict_text(rel, &path, &wanted, owner_rel)),
            Ok(_) => None,
            // Checked again, for real, when the new version registers.
            Err(err) => {
                warn!(error = %err, "Cannot check the new version's outputs against the other manifests now; they are checked when it is taken in");
                None
            }
        }
    }

    /// The end of a registration: logs, keeps a copy, tells the finisher, queues the jobs.
    #[allow(clippy::too_many_arguments)]
    async fn registered(
        &self,
        id: ManifestId,
        (queued, fetching): (Vec<crate::store::JobId>, Vec<crate::store::JobId>),
        unchanged: u64,
        n_jobs: u64,
        rel: String,
        sha256: String,
        recipe_image: bool,
        path: &Path,
        rel_path: &Path,
    ) -> Taken {
        if !recipe_image {
            self.keep_copy(path, rel_path, &sha256).await;
            // A copy kept while an older version drained is not needed once a version runs.
            remove_pending_copy(path).await;
        }
        info!(
            manifest_id = id,
            jobs = n_jobs,
            unchanged,
            // (`queued` holds the jobs that fetch a result again too: no submit for those.)
            to_submit = queued.len().saturating_sub(fetching.len()),
            fetched_again = fetching.len(),
            "Manifest accepted"
        );
        if !queued.is_empty() {
            self.check_outbox().await;
        }
        // When the file was written: a rejection of its path since is not mended by it.
        let saved = tokio::fs::symlink_metadata(path)
            .await
            .and_then(|meta| meta.modified())
            .ok();
        let _ = self.finisher.send(Event::Registered {
            id,
            rel,
            saved,
            sha256,
            n_jobs,
            unchanged,
        });
        self.submitter.hand_on(id, queued, fetching);
        Taken::HandedOn
    }

    /// Looks at the outbox's filesystem before a drop's jobs are queued: a read-only or full
    /// one holds every new submit at once (a folder the daemon may not write is told by the
    /// first write there, and holds only the images going there),
    /// before Claid bills an image whose result could not be written (the activity monitor
    /// looks only every few seconds, and clears the hold once the disk takes outputs again).
    /// A check that hangs (a stuck share) is left to the monitor.
    async fn check_outbox(&self) {
        let outbox = self.folders.outbox.clone();
        let checked = tokio::time::timeout(
            crate::activity::DISK_EVERY,
            on_file_pool(move || crate::activity::check_filesystem(&outbox)),
        )
        .await;
        if let Ok(disk) = checked
            && disk != crate::activity::Disk::Ok
        {
            error!(
                problem = disk.code(),
                "{}; the drop's images wait",
                disk.describe()
            );
            self.health.set_disk_problem(Some(disk.describe()));
        }
    }

    /// Hands `candidate` (holding `sha256`) to the finisher, to be taken in once run `id`, an
    /// older version of its file, has drained. A copy of it is kept beside it (a manifest's,
    /// not a recipe image's), in case the file is replaced meanwhile by one that is rejected.
    async fn after_drain(&self, id: ManifestId, candidate: Candidate, sha256: &str) -> Taken {
        if candidate.kind != CandidateKind::RecipeImage {
            self.keep_pending(&candidate.path, sha256).await;
        }
        let _ = self.finisher.send(Event::Supersede {
            id,
            then: candidate,
        });
        Taken::HandedOn
    }

    /// Keeps a copy of a valid version that waits for its predecessor's drain, hidden beside
    /// the manifest (`.NAME.claid-pending`: not a manifest name, and its relative inputs
    /// resolve as the manifest's own), if it still holds `sha256`.
    async fn keep_pending(&self, path: &Path, sha256: &str) {
        let src = path.to_path_buf();
        let dst = pending_path(path);
        let sha256 = sha256.to_owned();
        let kept = on_file_pool(move || -> std::io::Result<()> {
            use sha2::Digest;
            let bytes = std::fs::read(&src)?;
            if hex::encode(sha2::Sha256::digest(&bytes)) != sha256 {
                return Ok(()); // saved again meanwhile: that version comes by itself
            }
            // Written to a name that is created here (`create_new` follows no link planted in
            // the inbox), then renamed over the copy (a rename replaces a link, never follows
            // it).
            let tmp = dst.with_extension(format!("claid-pending-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            drop(file);
            std::fs::rename(&tmp, &dst)
        })
        .await;
        if let Err(err) = kept {
            warn!(error = %crate::os_error::OsCause(&err), "Cannot keep a copy of the version that waits for its predecessor's drain; if the file is replaced meanwhile, that version is not taken in");
        }
    }

    /// Keeps a copy of the processed version of the manifest (under the state folder) so that
    /// it is what gets archived even if the file is saved again meanwhile.
    async fn keep_copy(&self, path: &Path, rel: &Path, sha256: &str) {
        let src = path.to_path_buf();
        let dst = self.folders.copies.join(rel);
        let sha256 = sha256.to_owned();
        let kept = on_file_pool(move || -> std::io::Result<bool> {
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(&src, &dst)?;
            // Saved again since it was validated: this copy is not the processed version.
            if output::sha256_file(&dst)? != sha256 {
                std::fs::remove_file(&dst)?;
                return Ok(false);
            }
            Ok(true)
        })
        .await;
        match kept {
            Ok(true) => {}
            Ok(false) => debug!("The manifest changed right after validation; no copy kept"),
            Err(err) => {
                warn!(error = %err, "Cannot keep a copy of the manifest; if it changes while it runs, the newer version is not archived in its place")
            }
        }
    }

    /// What the finished run `id` of an unchanged manifest, validated again into jobs with
    /// `keys`, left to make, if anything: an image that did not end done (failed, held in
    /// doubt), an output it wrote into the outbox that is missing or has another size now
    /// (storage outputs are not looked at), or a job whose key is not the run's (a local input
    /// file or a profile of the config changed since). One `stat` per done job, on the blocking
    /// pool; a store that cannot be read counts as nothing left.
    /// Never with `on_manifest_done: keep`: there the file never left the inbox, and images it
    /// failed, or outputs a downstream step moved away, must not be made (and billed) again at
    /// every start.
    async fn left_to_make(
        &self,
        id: ManifestId,
        keys: std::collections::HashSet<String>,
    ) -> Option<&'static str> {
        if self.settings().policies.on_manifest_done == crate::config::OnManifestDone::Keep {
            return None;
        }
        let outbox = self.folders.outbox.clone();
        let left = self
            .store
            .read(move |reader| {
                let mut left = None;
                let mut seen = 0usize;
                reader.for_each_job_of_manifest(id, |_, job| {
                    seen += 1;
                    if left.is_some() {
                        return Ok::<_, StoreError>(());
                    }
                    if !keys.contains(&job.key) {
                        left = Some("an input file, a profile of the config or a storage's connector (`claid_name`) changed");
                    } else {
                        match &job.state {
                            JobState::Done {
                                path,
                                bytes,
                                skipped,
                                ..
                            } => {
                                let local = Path::new(path).starts_with(&outbox);
                                if local
                                    && !std::fs::metadata(path)
                                        .is_ok_and(|meta| meta.len() == *bytes)
                                {
                                    left = Some("outputs of its finished run are gone or changed");
                                } else if !local && *skipped {
                                    // An object `skip` kept is looked at again (it may be gone
                                    // since); not looked up here, in the store's read. (Dropped
                                    // again, the run did nothing while the object was deleted;
                                    // `plan` said it would be made.)
                                    left = Some("objects it kept under `on_output_exists: skip` are looked at again");
                                }
                            }
                            _ => left = Some("images of the run failed or were not made"),
                        }
                    }
                    Ok(())
                })?;
                if left.is_none() && seen != keys.len() {
                    left = Some("an input file, a profile of the config or a storage's connector (`claid_name`) changed");
                }
                Ok::<_, StoreError>(left)
            })
            .await;
        left.unwrap_or(None)
    }

    /// A re-drop of a finished manifest: applies `on_manifest_done` again (no API call).
    async fn dispose_again(&self, rel: &Path) {
        let folders = self.folders.clone();
        let policy = self.settings().policies.on_manifest_done;
        let rel = rel.to_path_buf();
        let res = on_file_pool(move || -> Result<Option<PathBuf>, String> {
            let src = folders.inbox.join(&rel);
            if !src.is_file() {
                return Ok(None);
            }
            match policy {
                crate::config::OnManifestDone::Keep => Ok(None),
                crate::config::OnManifestDone::Archive => {
                    output::move_mirrored(&folders.inbox, &src, &folders.archive)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
                crate::config::OnManifestDone::Delete => std::fs::remove_file(&src)
                    .map(|()| None)
                    .map_err(|e| format!("cannot delete {}: {e}", src.display())),
            }
        })
        .await;
        match res {
            Ok(Some(dest)) => info!(to = %dest.display(), "Manifest archived"),
            Ok(None) => {}
            Err(err) => error!(error = %err, "Cannot move the finished manifest"),
        }
    }

    /// Moves a refused file to `rejected/` (mirrored) with `<name>.error.txt` beside it.
    async fn reject(&self, path: &Path, rel: &Path, text: &str, why: &str) {
        // Before anything of the rejection shows (the error file): a version its user saves
        // after seeing it is written later than this.
        let at = std::time::SystemTime::now();
        error!(error = %why, "Manifest rejected; nothing was submitted");
        // Problems may quote an input URL: its password or signature is not repeated in the
        // error file, on the dashboard or in an alert that leaves the machine (the manifest
        // itself, moved beside it, still has it).
        let text = &*crate::text::redact_urls_in(text);
        // A valid version saved before this one, waiting for its predecessor's drain, is
        // marked to be put back before this one leaves the inbox: a stop between the two puts
        // it back at the next start, while a copy whose manifest its user deleted is not.
        let src = path.to_path_buf();
        let inbox = self.folders.inbox.clone();
        let rejected = self.folders.rejected.clone();
        let error_text = text.to_owned();
        let (moved, marked) =
            on_file_pool(move || move_rejected_marking(&inbox, &src, &rejected, &error_text)).await;
        match moved {
            Ok((dest, written)) => {
                match written {
                    Ok(()) => info!(to = %dest.display(), "Moved the rejected manifest"),
                    // A full disk: the problems are said here, one line each, or nobody
                    // would know them.
                    Err(err) => {
                        error!(to = %dest.display(), error = %err, "Moved the rejected manifest, but its error file cannot be written; its problems follow");
                        log_problems(rel, text);
                    }
                }
                // An earlier rejection of this file that could not move it wrote its error file
                // flat at the top of `rejected/`: no longer true.
                let (rejected, rel_owned, moved_to) = (
                    self.folders.rejected.clone(),
                    rel.to_path_buf(),
                    dest.clone(),
                );
                on_file_pool(move || remove_stale_flat_error(&rejected, &rel_owned, &moved_to))
                    .await;
                // A valid version saved before this one waits for its predecessor's drain: it
                // is put back, so the rejection does not lose it.
                if marked {
                    put_back_waiting_version(&self.store, &self.finisher, path, rel).await;
                }
            }
            // Gone meanwhile (moved by an earlier rejection, or deleted): nothing stays in the
            // inbox, and no error file is written for it.
            Err(_) if std::fs::symlink_metadata(path).is_err() => {}
            Err(err) => {
                error!(error = %err, manifest = %rel.display(), "Cannot move the rejected manifest out of the inbox; tried again every few minutes while it stays there");
                self.move_rejected_later(path, rel, text);
                // Its outcome file still goes somewhere: the top of `rejected/`, named after
                // its whole path.
                let rejected = self.folders.rejected.clone();
                let text = format!(
                    "{text}\n{STAYS_IN_THE_INBOX}: it could not be moved into the rejected folder ({err}). Clear that (free space there, or make it writable): the daemon moves it there as soon as it can, trying again every few minutes.\n"
                );
                let flat = flattened_name(rel);
                let file_text = text.clone();
                let written = on_file_pool(move || -> Result<PathBuf, output::OutputError> {
                    let name = filename::error_file_name(&flat, &filename::FsLimits::of(&rejected));
                    let path = rejected.join(name);
                    output::write_text_atomic(&path, &file_text)?;
                    Ok(path)
                })
                .await;
                match written {
                    Ok(path) => {
                        info!(error_file = %path.display(), "Wrote the rejected manifest's error file at the top of the rejected folder")
                    }
                    Err(err) => {
                        error!(error = %err, "Cannot write the rejected manifest's error file either; its problems follow");
                        log_problems(rel, &text);
                    }
                }
            }
        }
        let _ = self.finisher.send(Event::Rejected {
            rel: rel.to_string_lossy().into_owned(),
            at,
        });
        self.notices.send(Notice::ManifestRejected {
            rel: rel.to_string_lossy().into_owned(),
            // The problems themselves: not the error file's header (the file's path, the
            // count, what to do), which the alert says in its own words.
            problems: text
                .lines()
                .filter(|line| {
                    !line.starts_with("manifest: ")
                        && !line.starts_with("rejected: ")
                        && !line.starts_with("Fix every problem below")
                        && !line.trim().is_empty()
                })
                .take(12)
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
}

impl Intake {
    /// Moves a rejected manifest out of the inbox again later ([`move_again_later`]), with
    /// its error file beside it; the flat one written meanwhile, which said it stays in the
    /// inbox, is removed then, and a valid version that waited beside it is put back, as
    /// the first try does.
    fn move_rejected_later(&self, path: &Path, rel: &Path, text: &str) {
        let (src, inbox, rejected) = (
            path.to_path_buf(),
            self.folders.inbox.clone(),
            self.folders.rejected.clone(),
        );
        let (text, rel) = (text.to_owned(), rel.to_path_buf());
        let to = rejected.clone();
        let (store, finisher, tracker, cancel, manifest) = (
            self.store.clone(),
            self.finisher.clone(),
            self.tracker.clone(),
            self.cancel.clone(),
            path.to_path_buf(),
        );
        move_again_later(
            path.to_path_buf(),
            Some(self.cancel.clone()),
            move || {
                let (moved, marked) = move_rejected_marking(&inbox, &src, &to, &text);
                moved.map(|moved| (moved, marked))
            },
            move |((dest, _), marked)| {
                info!(to = %dest.display(), "Moved the rejected manifest out of the inbox at last");
                remove_stale_flat_error(&rejected, &rel, &dest);
                // Stopping: the marked copy stays, and the next start puts it back.
                if marked && !cancel.is_cancelled() {
                    tracker.spawn(async move {
                        put_back_waiting_version(&store, &finisher, &manifest, &rel).await;
                    });
                }
            },
        );
    }
}

/// What the error file of a rejected manifest that could not be moved says of it.
const STAYS_IN_THE_INBOX: &str = "The manifest itself stays in the inbox for now";

/// Removes the error file a rejection of `rel` that could not move it wrote flat at the top
/// of `rejected/` (it said the manifest stays in the inbox), now that the manifest was moved to
/// `dest`; not when that file is `dest`'s own (a manifest at the inbox's top, or a path too deep
/// for `rejected/`, goes flat itself), nor when it says no such thing: the flat name of a
/// manifest at the inbox's top is its own, so `rejected/r.yaml.error.txt` is the error file of
/// an earlier `r.yaml` moved there (it was removed when `r.yaml` was rejected again, into
/// `r.1.yaml`).
fn remove_stale_flat_error(rejected: &Path, rel: &Path, dest: &Path) {
    let stale = rejected.join(filename::error_file_name(
        &flattened_name(rel),
        &filename::FsLimits::of(rejected),
    ));
    if !std::fs::read_to_string(&stale).is_ok_and(|text| text.contains(STAYS_IN_THE_INBOX)) {
        return;
    }
    let name = dest.file_name().unwrap_or_default().to_owned();
    let own = dest.with_file_name(filename::error_file_name(
        &name,
        &filename::FsLimits::of(dest),
    ));
    if stale != own {
        let _ = std::fs::remove_file(stale);
    }
}

/// After a broken save at `path` was moved to `rejected/` with the copy of a waiting version
/// marked ([`move_rejected_marking`]): that version is put back ([`restore_pending`]) and taken
/// in once its predecessor's drain ends ([`follow_drain`]).
async fn put_back_waiting_version(store: &Store, finisher: &finisher::Tx, path: &Path, rel: &Path) {
    if restore_pending(store, path, rel).await {
        info!(
            "Put back the valid version saved before the rejected one; it runs once the version before it has drained"
        );
        follow_drain(store, finisher, path, rel).await;
    }
}

/// The version put back at `path` is taken in once its predecessor's drain ends, as if it had
/// been found there: after a restart the drain's end knows of no waiting version, and
/// `run --once` has no watcher to see the file come back.
async fn follow_drain(store: &Store, finisher: &finisher::Tx, path: &Path, rel: &Path) {
    let Ok(Some((id, _))) = store.latest_run(&rel.to_string_lossy()).await else {
        return;
    };
    let manifest = path.to_path_buf();
    let Some(fingerprint) = on_file_pool(move || crate::watcher::Fingerprint::at(&manifest)).await
    else {
        return;
    };
    finisher.send_counted(Event::Supersede {
        id,
        then: Candidate {
            path: path.to_path_buf(),
            fingerprint,
            kind: CandidateKind::Manifest,
        },
    });
}

/// Where [`Intake::keep_pending`] keeps a waiting version of the manifest at `path`:
/// `.NAME.claid-pending`, or, when that (with the `-PID` of its temporary name) would pass
/// the filesystem's `NAME_MAX`, `NAME` shortened with a hash as `filename` says (a version of
/// a manifest with a long name was lost: its copy could not be made).
/// Whether `path` is still there (not followed if a link; an error other than "not found"
/// counts as there).
async fn exists_here(path: &Path) -> bool {
    let path = path.to_path_buf();
    on_file_pool(move || {
        !matches!(std::fs::symlink_metadata(&path), Err(err) if err.kind() == std::io::ErrorKind::NotFound)
    })
    .await
}

fn pending_path(path: &Path) -> PathBuf {
    KeptCopy::Pending.path_beside(path)
}

/// The manifest a waiting version's copy `copy` at `kept` belongs to, among the runs in
/// `runs` (inbox-relative paths): the copy of a long name is named with a hash, not the name.
fn owner_of_copy(inbox: &Path, copy: KeptCopy, kept: &Path, runs: &[String]) -> Option<PathBuf> {
    runs.iter()
        .map(|rel| inbox.join(rel))
        .find(|manifest| copy.path_beside(manifest) == kept)
}

/// Removes the copy kept of a version waiting beside the manifest at `path` (none there: no
/// error): the manifest was taken in, or left the inbox.
async fn remove_pending_copy(path: &Path) {
    let pending = pending_path(path);
    let _ = on_file_pool(move || std::fs::remove_file(pending)).await;
}

/// Marks the copy of a version waiting beside the manifest at `path` to be put back: renamed
/// from `.NAME.claid-pending` to `.NAME.claid-restore` (one atomic step, before a broken save
/// of the manifest leaves the inbox). True when there was such a copy. File work.
fn mark_for_restore(path: &Path) -> bool {
    let pending = pending_path(path);
    std::fs::symlink_metadata(&pending).is_ok_and(|m| m.file_type().is_file())
        && std::fs::rename(&pending, KeptCopy::Restore.path_beside(path)).is_ok()
}

/// Undoes [`mark_for_restore`]: the broken save stayed in the inbox (or its user removed it),
/// so the copy waits again as it did. File work.
fn unmark_for_restore(path: &Path) {
    let _ = std::fs::rename(KeptCopy::Restore.path_beside(path), pending_path(path));
}

/// What [`output::move_rejected`] did: where the file went and whether its error file was
/// written beside it.
type RejectedMove = Result<(PathBuf, Result<(), output::OutputError>), output::OutputError>;

/// Moves the broken save at `path` to `rejected/` ([`output::move_rejected`]), the copy of a
/// valid version waiting beside it marked to be put back first (and unmarked when the move
/// fails). Returns the move's outcome and whether a copy was marked. File work.
fn move_rejected_marking(
    inbox: &Path,
    path: &Path,
    rejected: &Path,
    text: &str,
) -> (RejectedMove, bool) {
    let marked = mark_for_restore(path);
    let moved = output::move_rejected(inbox, path, rejected, text);
    if marked && moved.is_err() {
        unmark_for_restore(path);
    }
    (moved, marked)
}

/// Puts back the copy of a valid version that waits for its predecessor's drain, marked by
/// [`mark_for_restore`], where the manifest at `path` (inbox-relative `rel`) was moved away
/// (rejected) or is missing (a crash came between the rejection and the putting back), so
/// that version is what the drain's end takes in. Only a regular file, and only where nothing
/// is (a hard link fails if the user saved again meanwhile: the copy waits again then, as
/// before the rejection), and only while the version before it drains or has drained without
/// this one taken in: a copy left from an earlier wait (its run finished since) is stale, and
/// removed instead of being taken in (and billed). True when it put the version back.
async fn restore_pending(store: &Store, path: &Path, rel: &Path) -> bool {
    let draining = match store.latest_run(&rel.to_string_lossy()).await {
        // Running: the copy is made before the drain is recorded (`after_drain`), so a stop
        // between the two leaves a copy beside a run still running; it is no stale one.
        Ok(Some((_, m))) => matches!(
            m.state,
            ManifestState::Running
                | ManifestState::Draining { .. }
                | ManifestState::Superseded { .. }
        ),
        Ok(None) => false,
        // Cannot tell: the marked copy stays, for the next start to decide.
        Err(_) => return false,
    };
    let manifest = path.to_path_buf();
    on_file_pool(move || {
        let kept = KeptCopy::Restore.path_beside(&manifest);
        if !draining {
            let _ = std::fs::remove_file(kept);
            return false;
        }
        let put_back = std::fs::symlink_metadata(&kept).is_ok_and(|m| m.file_type().is_file())
            && std::fs::hard_link(&kept, &manifest).is_ok();
        if put_back {
            let _ = std::fs::remove_file(&kept);
        } else {
            unmark_for_restore(&manifest);
        }
        put_back
    })
    .await
}

/// A hidden copy of a waiting version found in the inbox at a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptCopy {
    /// `.NAME.claid-pending`: waits for its predecessor's drain.
    Pending,
    /// `.NAME.claid-restore`: marked to be put back while a broken save was rejected.
    Restore,
}

impl KeptCopy {
    fn of(name: &str) -> Option<(KeptCopy, &str)> {
        let name = name.strip_prefix('.')?;
        [KeptCopy::Pending, KeptCopy::Restore]
            .into_iter()
            .find_map(|copy| Some((copy, name.strip_suffix(copy.suffix())?)))
            .filter(|(_, manifest)| !manifest.is_empty())
    }

    fn suffix(self) -> &'static str {
        match self {
            KeptCopy::Pending => ".claid-pending",
            KeptCopy::Restore => ".claid-restore",
        }
    }

    /// The copy's name beside the manifest at `path`, shortened with a hash when it would
    /// pass `NAME_MAX` (with room for the `-PID` of the pending copy's temporary name; both
    /// are shortened alike).
    fn path_beside(self, path: &Path) -> PathBuf {
        filename::hidden_beside(path, self.suffix(), 1 + 10)
    }
}

/// At a start, before the first scan, the hidden copies of waiting versions a stop left:
/// one marked to be put back (`.NAME.claid-restore`: the manifest itself moved to
/// `rejected/` as a broken save, the stop before the copy was put back) is put back, so the
/// first scan takes it in (after its predecessor's drain) instead of leaving it hidden for
/// good; with the broken save still in the inbox it waits again. A waiting copy
/// (`.NAME.claid-pending`) whose manifest is gone is removed: its user deleted or renamed the
/// file, and a restart must not bring that version back (and bill it). Returns how many were
/// put back.
pub async fn restore_waiting_versions(store: &Store, inbox: &Path) -> usize {
    let root = inbox.to_path_buf();
    let copies = on_file_pool(move || {
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Some((copy, manifest)) = KeptCopy::of(&name) else {
                    continue;
                };
                if kind.is_file() {
                    found.push((copy, path.with_file_name(manifest), path.clone()));
                }
            }
        }
        found
    })
    .await;
    // A copy named with a hash (a long manifest name) belongs to the run whose copy has that
    // name; the store knows the runs (read only when there is such a copy).
    let runs = if copies
        .iter()
        .any(|(copy, manifest, kept)| copy.path_beside(manifest) != *kept)
    {
        match store.manifests().await {
            Ok(runs) => runs.into_iter().map(|(_, m)| m.rel).collect(),
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let root = inbox.to_path_buf();
    let mut restored = 0;
    for (copy, manifest, kept) in copies {
        let manifest = if copy.path_beside(&manifest) == kept {
            manifest
        } else {
            match owner_of_copy(&root, copy, &kept, &runs) {
                Some(manifest) => manifest,
                None => continue,
            }
        };
        let Ok(rel) = manifest.strip_prefix(&root).map(Path::to_path_buf) else {
            continue;
        };
        let present = std::fs::symlink_metadata(&manifest).is_ok();
        match (copy, present) {
            (KeptCopy::Pending, true) => {}
            (KeptCopy::Pending, false) => {
                let _ = on_file_pool(move || std::fs::remove_file(kept)).await;
                info!(manifest = %rel.display(), "Removed the copy kept of a version of a manifest that waited for its predecessor's drain: the manifest was deleted from the inbox since");
            }
            (KeptCopy::Restore, true) => {
                let _ = on_file_pool(move || unmark_for_restore(&manifest)).await;
            }
            (KeptCopy::Restore, false) => {
                if restore_pending(store, &manifest, &rel).await {
                    warn!(manifest = %rel.display(), "Put back a valid version of a manifest that waited for its predecessor's drain (a stop came while a broken save of it was rejected)");
                    restored += 1;
                }
            }
        }
    }
    restored
}

/// `team/bad.yaml` → `team__bad.yaml`: an inbox-relative path as one file name.
fn flattened_name(rel: &Path) -> std::ffi::OsString {
    let mut flat = std::ffi::OsString::new();
    for (i, part) in rel.iter().enumerate() {
        if i > 0 {
            flat.push("__");
        }
        flat.push(part);
    }
    flat
}

/// When the file's inode last changed (ctime, ms since the epoch): a copy, a move or a save
/// into the inbox sets it; `None` when it cannot be read.
fn changed_at_ms(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    let since = crate::watcher::changed_at(&meta)
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// A `Done { unchanged }` state when the previous done job's output file is still there with
/// the recorded content (README "Incremental"), or when it wrote an object into a storage
/// (`s3://…`): that one is taken from the record, not looked up in the bucket, so an image
/// delivered into a bucket is not billed again by a later run of the same row.
///
/// A storage output kept with a local copy (`output_local_copy`) whose copy is gone or
/// changed is fetched again from its object, without a submit: the job starts as
/// `Downloading` the object Claid wrote (if the object is gone too, the job submits as usual:
/// `Runner::verify_object`).
///
/// `plan` asks the same question of the same record (`body` and `output_rel` are the new
/// job's).
pub fn unchanged_state(
    outbox: &Path,
    storages: &std::collections::BTreeMap<String, crate::config::StorageEntry>,
    body: &serde_json::Value,
    output_rel: &str,
    prev: &JobState,
) -> Option<JobState> {
    // A result made and billed whose write failed, still kept by Claid: fetched again, not
    // made again (a manifest dropped again once the outbox takes writes).
    if let Some(fetch) = prev.refetch(crate::store::now_ms()) {
        return Some(fetch);
    }
    let JobState::Done {
        path,
        bytes,
        sha256,
        width,
        height,
        task_id,
        skipped: false,
        ..
    } = prev
    else {
        return None;
    };
    let path_buf = PathBuf::from(path);
    // An object in a storage is taken from the record, while the storage its destination
    // names is still where it was written: a storage moved to another bucket or prefix keeps
    // its connector's name, and so the job's key, and its rows were all taken as made while
    // the new bucket had none of them.
    // (Compared by folder: Claid may name the file under the format's other extension.)
    let folder = |place: &str| {
        place
            .rsplit_once('/')
            .map_or("", |(folder, _)| folder)
            .to_owned()
    };
    if path.contains("://")
        && let Some(uri) = crate::storages::destination_of(body, output_rel)
        && let Some(place) = manifest::object_place(storages, &uri)
        && folder(path) != folder(&place)
    {
        return None;
    }
    // A file in the outbox must still be there with the recorded content.
    let still_there = path.contains("://")
        || (path_buf.starts_with(outbox)
            && std::fs::metadata(&path_buf).is_ok_and(|meta| meta.len() == *bytes)
            && output::sha256_file(&path_buf).is_ok_and(|found| found == *sha256));
    if !still_there {
        let object = crate::storages::destination_of(body, output_rel)?;
        return Some(JobState::Downloading {
            task_id: *task_id,
            url: object,
            width: *width,
            height: *height,
            copy_of: Some(sha256.clone()),
            kept_since_ms: None,
            submitted_at_ms: None,
        });
    }
    Some(JobState::Done {
        path: path.clone(),
        bytes: *bytes,
        sha256: sha256.clone(),
        width: *width,
        height: *height,
        task_id: *task_id,
        unchanged: true,
        skipped: false,
    })
}

/// The text of a rejected manifest's error file, logged one line each: said where its file
/// could not be written (a full disk), or nobody would know its problems.
fn log_problems(rel: &Path, text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        error!(manifest = %rel.display(), "Rejected manifest: {}", crate::text::Escaped::str(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage output recorded done is taken as made while its storage still names the
    /// bucket and prefix it was written under; moved elsewhere (same connector name, so the
    /// same job key), the row is made again there.
    #[test]
    fn a_recorded_object_is_unchanged_only_where_its_storage_still_is() {
        let storages = |url_bucket: &str| {
            let mut map = std::collections::BTreeMap::new();
            map.insert(
                "catalog".to_owned(),
                crate::config::StorageEntry {
                    claid_name: "catalog-s3".to_owned(),
                    provider: crate::objects::Provider::S3,
                    bucket: url_bucket.to_owned(),
                    prefix: "images".to_owned(),
                    endpoint: None,
                    region: "us-east-1".to_owned(),
                    credentials_file: None,
                    output_local_copy: false,
                    staging: false,
                },
            );
            map
        };
        let body = serde_json::json!({"operations": {}, "output": {"destination": "storage://catalog-s3/out/"}});
        let prev = JobState::Done {
            path: "s3://cat/images/out/m/a.png".to_owned(),
            bytes: 108,
            sha256: String::new(),
            width: 40,
            height: 30,
            task_id: Some(7),
            unchanged: false,
            skipped: false,
        };
        let outbox = Path::new("/nonexistent-outbox");
        let same = unchanged_state(outbox, &storages("cat"), &body, "m/a.png", &prev);
        assert!(
            matches!(
                same,
                Some(JobState::Done {
                    unchanged: true,
                    ..
                })
            ),
            "{same:?}"
        );
        let moved = unchanged_state(outbox, &storages("cat2"), &body, "m/a.png", &prev);
        assert!(moved.is_none(), "{moved:?}");
        // Moved to the bucket's root: the record's path still starts with the new URL.
        let mut root = storages("cat");
        root.get_mut("catalog").expect("entry").prefix = String::new();
        let moved = unchanged_state(outbox, &root, &body, "m/a.png", &prev);
        assert!(moved.is_none(), "{moved:?}");
    }

    /// The copy of a long name's waiting version fits NAME_MAX with its temporary name, and
    /// is traced back to its manifest through the runs (a start puts it back).
    #[test]
    fn a_long_names_pending_copy_fits_and_finds_its_manifest() {
        let inbox = Path::new("/nonexistent-inbox");
        let long = format!("team/{}.yaml", "l".repeat(245));
        let pending = pending_path(&inbox.join(&long));
        let name = pending.file_name().expect("name").len();
        assert!(name + "-4294967295".len() <= 255, "{name}");
        let runs = vec!["team/other.yaml".to_owned(), long.clone()];
        assert_eq!(
            owner_of_copy(inbox, KeptCopy::Pending, &pending, &runs),
            Some(inbox.join(&long))
        );
        let marked = KeptCopy::Restore.path_beside(&inbox.join(&long));
        assert_eq!(marked.file_name().expect("name").len(), name);
        assert_eq!(
            owner_of_copy(inbox, KeptCopy::Restore, &marked, &runs),
            Some(inbox.join(&long))
        );
        assert_eq!(
            pending_path(&inbox.join("m.yaml")),
            inbox.join(".m.yaml.claid-pending")
        );
    }

    #[test]
    fn kept_copies_are_told_by_their_suffix() {
        assert_eq!(
            KeptCopy::of(".m.yaml.claid-pending"),
            Some((KeptCopy::Pending, "m.yaml"))
        );
        assert_eq!(
            KeptCopy::of(".m.yaml.claid-restore"),
            Some((KeptCopy::Restore, "m.yaml"))
        );
        assert_eq!(KeptCopy::of("m.yaml.claid-pending"), None);
        assert_eq!(KeptCopy::of("..claid-restore"), None);
        assert_eq!(KeptCopy::of(".m.yaml"), None);
    }
}
