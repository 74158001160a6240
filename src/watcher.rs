//! Inbox discovery: notify events wake a scan, the periodic full scan is the truth, and a file
//! becomes a candidate only once it has been stable for `watch.settle`.
//!
//! Candidates are manifests anywhere in the inbox, and image files lying directly in a folder
//! that holds a `.claid.yaml` recipe (README "Folder recipes"); images elsewhere are ignored.
//!
//! Symlinks are never followed: not into a folder, not to a manifest, a recipe or an image,
//! wherever they point. Each is named once in a WARN (once per path, not every rescan). A
//! symlink with a manifest's name is still handed over, as [`CandidateKind::Link`], so that the
//! pipeline can move the link itself (never its target) to `rejected/` with the reason. The
//! links already named are remembered per process, so the daemon's first scan
//! and the watcher that follows it do not name a link twice.
//!
//! Stability rule: a file is stable when its mtime is already older than `settle` when we
//! look at it (so `run --once` on an old inbox is instant), or when its size and mtime were
//! unchanged across two looks at least `settle` apart. For a recipe image the recipe's size and
//! mtime count too, so an image is never read against a recipe still being written, and a
//! changed recipe makes the images still in its folder new versions. Each (path, version) is
//! emitted once; a file that changes is emitted again once stable again.
//!
//! Watch robustness: the notify callback only `try_send`s a wake-up into a bounded channel (when
//! that is full the event is dropped, because the scan it would trigger is already pending). An
//! event-queue overflow rebuilds the watch and rescans at once. A deleted or replaced inbox
//! folder is watched again as soon as it exists (looked for every second while missing).
//! When inotify watches cannot be added (`fs.inotify.max_user_watches`), one error is logged and
//! the watcher falls back to polling every `watch.rescan` until restarted.
//!
//! One daemon per inbox ([`claim_inbox`]): a daemon holds a lock on `.claid-hotfolder.lock` in
//! its inbox, and one on the inbox folder itself (which no deleted file lifts), for its life, and
//! refuses to start where another daemon watches the same folder,
//! one that holds it, or one inside it (each would take in, and bill, the same manifests).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::WatchConfig;
use crate::manifest::{RECIPE_NAME, is_image_name, is_manifest_name};
use crate::os_error::OsCause;
use crate::text::Escaped;

/// What identifies one version of a file: a changed file has a new fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime: SystemTime,
}

/// What a candidate file is, which decides how the pipeline reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// A manifest (`*.yaml`, `*.yml`, `*.json`) anywhere in the inbox.
    Manifest,
    /// An image directly inside a folder with a `.claid.yaml` recipe: one job.
    RecipeImage,
    /// A symlink with a manifest's name. It was not followed (its target is unknown, unread and
    /// may lie outside the inbox): the link itself is to be rejected. Its fingerprint is the
    /// link's own (`lstat`).
    Link,
}

/// A file that has been stable for the settle window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute path inside the inbox.
    pub path: PathBuf,
    /// The file's own size and mtime (for a recipe image: the image's, not the recipe's; for a
    /// link: the link's, not its target's).
    pub fingerprint: Fingerprint,
    pub kind: CandidateKind,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read inbox {}: {}", Escaped::path(path), OsCause(cause))]
    Inbox {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("inbox scan task failed")]
    ScanTask(#[source] tokio::task::JoinError),
}

impl WatchError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            WatchError::Inbox { .. } => "inbox-unreadable",
            WatchError::ScanTask(_) => "scan-task-failed",
        }
    }
}

/// Capacity of the wake-up channel: one pending wake-up is enough, a few absorb bursts.
const WAKE_CAPACITY: usize = 16;

/// While the inbox is missing (deleted, or a share not mounted yet), how often it is looked
/// for so it can be watched again (never later than `watch.rescan`).
const REARM_RETRY: Duration = Duration::from_secs(1);

/// Shortest delay of the follow-up scan after a folder was created.
const FOLLOW_UP_MIN: Duration = Duration::from_millis(50);

/// Test hook: set to `1` in the daemon's environment to make adding inotify watches fail as
/// when `fs.inotify.max_user_watches` is reached, without changing the machine's sysctl.
#[doc(hidden)]
pub const SIMULATE_WATCH_LIMIT_ENV: &str = "CLAID_HOTFOLDER_SIMULATE_WATCH_LIMIT";

/// Where change notifications come from. Only `Notify` is used in production; the others let
/// tests reach the failure paths without root or a flood of events.
#[doc(hidden)]
pub enum EventSource {
    /// notify's recommended watcher (inotify on Linux), recursive on the inbox.
    Notify,
    /// Every watch fails the way notify reports an exhausted inotify watch limit.
    SimulatedWatchLimit,
    /// No OS watch: the test sends what notify would send (an overflow, an error).
    Injected(mpsc::UnboundedReceiver<notify::Result<notify::Event>>),
}

/// Watches `inbox` until `shutdown`, sending each stable manifest or recipe image version once
/// on `tx`.
///
/// Returns when `shutdown` fires or the receiver is gone. An unreadable folder is logged and
/// skipped; a watch that cannot be set up falls back to polling.
pub async fn run(
    inbox: PathBuf,
    watch: WatchConfig,
    tx: mpsc::Sender<Candidate>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let source = if std::env::var_os(SIMULATE_WATCH_LIMIT_ENV).is_some_and(|v| v == "1") {
        EventSource::SimulatedWatchLimit
    } else {
        EventSource::Notify
    };
    run_with(inbox, watch, tx, shutdown, source).await
}

/// [`run`] with the event source chosen by the caller (tests).
#[doc(hidden)]
pub async fn run_with(
    inbox: PathBuf,
    watch: WatchConfig,
    tx: mpsc::Sender<Candidate>,
    shutdown: CancellationToken,
    source: EventSource,
) -> Result<(), WatchError> {
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(WAKE_CAPACITY);
    let shared = Arc::new(Shared {
        wake: wake_tx,
        rearm: AtomicBool::new(false),
        limit_logged: AtomicBool::new(false),
        folder_created: AtomicBool::new(false),
        inbox: inbox.clone(),
        root_gone: AtomicBool::new(false),
    });
    let (source, injected) = match source {
        EventSource::Injected(rx) => (Source::Injected, Some(rx)),
        EventSource::Notify => (Source::Notify, None),
        EventSource::SimulatedWatchLimit => (Source::SimulatedWatchLimit, None),
    };
    // Injected events go through the same handler as notify's.
    let forwarder = injected.map(|mut rx| {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                handle_event(&shared, event);
            }
        })
    });
    let _forwarder = forwarder.map(tokio_util::task::AbortOnDropHandle::new);
    // Holds the live watcher for the whole loop: dropping it stops the events.
    let mut watching = if watch.poll_only {
        info!(inbox = %Escaped::path(&inbox), "Watching the inbox by polling only");
        Watching::PollOnly
    } else {
        Watching::Lost { announced: false }
    };
    let mut tracker = Tracker::default();
    let mut next_rescan = Instant::now();
    let mut inbox_failing = false;
    loop {
        let now = Instant::now();
        if now >= next_rescan {
            next_rescan = now + watch.rescan;
        }
        // Watches first, then the walk: whatever is created after the walk starts has a watch.
        // Off the async workers: arming walks the whole tree.
        watching = {
            let (inbox, shared) = (inbox.clone(), shared.clone());
            tokio::task::spawn_blocking(move || rearm_if_needed(watching, &inbox, source, &shared))
                .await
                .map_err(WatchError::ScanTask)?
        };
        // Every scan is a full scan: events only decide when it runs.
        let stable = match scan(&inbox, &watch, watch.settle, &mut tracker).await {
            Ok(stable) => {
                if inbox_failing {
                    info!(inbox = %Escaped::path(&inbox), "The inbox is readable again");
                    inbox_failing = false;
                }
                stable
            }
            Err(err) => {
                if !inbox_failing {
                    error!(inbox = %Escaped::path(&inbox), error = %err, "Cannot scan the inbox; retrying every watch.rescan");
                    inbox_failing = true;
                }
                Vec::new()
            }
        };
        for candidate in stable {
            debug!(path = %Escaped::path(&candidate.path), kind = ?candidate.kind, "File is stable");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                res = tx.send(candidate) => if res.is_err() { return Ok(()) },
            }
        }
        let mut deadline = tracker
            .next_check(watch.settle)
            .map_or(next_rescan, |at| at.min(next_rescan));
        if matches!(watching, Watching::Lost { .. }) {
            deadline = deadline.min(Instant::now() + REARM_RETRY);
        }
        if shared.folder_created.swap(false, Ordering::Relaxed) {
            deadline = deadline.min(Instant::now() + watch.settle.max(FOLLOW_UP_MIN));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline) => {}
            woke = wake_rx.recv() => {
                if woke.is_some() {
                    // Coalesce a burst of events into one scan.
                    while wake_rx.try_recv().is_ok() {}
                }
            }
        }
    }
}

/// State shared with the notify callback (which runs on notify's thread).
struct Shared {
    /// Wakes the scan loop; `try_send` only, never blocks notify's thread.
    wake: mpsc::Sender<()>,
    /// Set when events were lost (queue overflow): watches of folders created meanwhile may be
    /// missing, so the watch is rebuilt before the next scan.
    rearm: AtomicBool,
    /// The watch-limit error is logged once, not once per folder that could not be watched.
    limit_logged: AtomicBool,
    /// The watched inbox path: an event that removes or renames it means the watch is dead.
    inbox: PathBuf,
    /// Set when the inbox folder itself was deleted or moved away: its watch is gone (even if a
    /// new folder at the same path happens to reuse the inode number).
    root_gone: AtomicBool,
    /// A folder was created: notify adds its watch only after the event, so a file written
    /// into it meanwhile sends no event; one follow-up scan a settle window later finds it.
    folder_created: AtomicBool,
}

/// The event source without the injected receiver (which moved into the forwarder).
#[derive(Clone, Copy)]
enum Source {
    Notify,
    SimulatedWatchLimit,
    Injected,
}

/// How the inbox is being watched.
enum Watching {
    /// `watch.poll_only`: the periodic rescan alone.
    PollOnly,
    /// Watches could not be added (inotify limit or another error): polling until a restart.
    FallenBack,
    /// A live watch on the inbox folder identified by `id`; a different folder at the same
    /// path (deleted and re-created) needs a new watch.
    Armed {
        /// Kept only to stay alive: dropping it removes the watches.
        _watcher: Box<dyn std::any::Any + Send>,
        id: FolderId,
    },
    /// The inbox is missing or was replaced: it is watched again as soon as it is back.
    Lost {
        /// Whether a watch was ever set up (to log "again").
        announced: bool,
    },
}

/// (device, inode) of a folder: changes when the folder is deleted and re-created.
type FolderId = (u64, u64);

fn folder_id(path: &Path) -> Option<FolderId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Sets up the watch when the inbox is (back) there, was replaced, or lost events.
fn rearm_if_needed(
    watching: Watching,
    inbox: &Path,
    source: Source,
    shared: &Arc<Shared>,
) -> Watching {
    let announced = match watching {
        Watching::PollOnly | Watching::FallenBack => return watching,
        Watching::Armed { id, .. } => {
            let overflowed = shared.rearm.swap(false, Ordering::Relaxed);
            let root_gone = shared.root_gone.swap(false, Ordering::Relaxed);
            let current = folder_id(inbox);
            if current == Some(id) && !overflowed && !root_gone {
                return watching;
            }
            if overflowed && !root_gone && current == Some(id) {
                info!(inbox = %Escaped::path(inbox), "Watch events were lost (queue overflow); rebuilding the watch and rescanning the inbox");
            } else {
                warn!(inbox = %Escaped::path(inbox), "The inbox folder was deleted or replaced; watching it again once it exists");
            }
            // The old watch goes before the new one is added (the limit counts both).
            drop(watching);
            true
        }
        Watching::Lost { announced } => announced,
    };
    shared.rearm.store(false, Ordering::Relaxed);
    shared.root_gone.store(false, Ordering::Relaxed);
    let Some(id) = folder_id(inbox) else {
        return Watching::Lost { announced };
    };
    match arm(inbox, source, shared) {
        Ok(watcher) => {
            if announced {
                info!(inbox = %Escaped::path(inbox), "Watching the inbox for changes again");
            } else {
                info!(inbox = %Escaped::path(inbox), "Watching the inbox for changes");
            }
            Watching::Armed {
                _watcher: watcher,
                id,
            }
        }
        Err(err) if matches!(err.kind, notify::ErrorKind::PathNotFound) => {
            Watching::Lost { announced }
        }
        Err(err) => {
            if is_watch_limit(&err) {
                shared.limit_logged.store(true, Ordering::Relaxed);
            }
            log_watch_failure(inbox, &err);
            Watching::FallenBack
        }
    }
}

/// Adds a recursive watch on the inbox with the chosen source.
fn arm(
    inbox: &Path,
    source: Source,
    shared: &Arc<Shared>,
) -> notify::Result<Box<dyn std::any::Any + Send>> {
    use notify::Watcher;
    match source {
        Source::Notify => {
            let handler_shared = shared.clone();
            let mut watcher =
                notify::recommended_watcher(move |res| handle_event(&handler_shared, res))?;
            watcher.watch(inbox, notify::RecursiveMode::Recursive)?;
            Ok(Box::new(watcher))
        }
        // What notify returns when inotify_add_watch fails with ENOSPC.
        Source::SimulatedWatchLimit => {
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(inbox.to_owned()))
        }
        Source::Injected => Ok(Box::new(())),
    }
}

/// The notify callback: every relevant event wakes a scan; an overflow also asks for a new
/// watch; errors are logged (the watch limit once) and wake a scan too.
fn handle_event(shared: &Shared, res: notify::Result<notify::Event>) {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match res {
        Ok(event) => {
            if event.need_rescan() {
                shared.rearm.store(true, Ordering::Relaxed);
            } else if matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
            ) && event.paths.iter().any(|p| p == &shared.inbox)
            {
                shared.root_gone.store(true, Ordering::Relaxed);
            } else if matches!(
                event.kind,
                EventKind::Create(notify::event::CreateKind::Folder)
            ) {
                shared.folder_created.store(true, Ordering::Relaxed);
            } else if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
            {
                // Opens and reads (including our own scans) change nothing.
                return;
            }
            if shared.wake.try_send(()).is_err() {
                debug!("Dropped a watch event: a scan is already pending");
            }
        }
        Err(err) => {
            if is_watch_limit(&err) {
                if !shared.limit_logged.swap(true, Ordering::Relaxed) {
                    error!(error = %err, "Inotify watch limit reached: raise fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288); folders that could not be watched are found by the periodic rescan (watch.rescan)");
                }
            } else {
                warn!(error = %err, "Watch error; the periodic rescan still finds files");
            }
            let _ = shared.wake.try_send(());
        }
    }
}

/// Waits until every manifest present in `inbox` now is stable, and returns them (sorted).
///
/// For `run --once`: files that appear while waiting are left for the next run; files that
/// disappear are dropped.
pub async fn scan_stable(inbox: &Path, watch: &WatchConfig) -> Result<Vec<Candidate>, WatchError> {
    scan_stable_telling(inbox, watch)
        .await
        .map(|(candidates, _)| candidates)
}

/// How long the first scan waits at least for files still being written before it goes on
/// without them (ten `watch.settle` when that is longer).
const FIRST_SCAN_PATIENCE: Duration = Duration::from_secs(10);
/// After how long the first scan says it waits for files still changing.
const WAITING_TOLD_AFTER: Duration = Duration::from_secs(5);

/// [`scan_stable`], with the inbox's subfolders that could not be read (sorted): `run --once`
/// cannot call a run whole that left them unseen.
pub async fn scan_stable_telling(
    inbox: &Path,
    watch: &WatchConfig,
) -> Result<(Vec<Candidate>, Vec<PathBuf>), WatchError> {
    let mut tracker = Tracker::default();
    let started = Instant::now();
    // A file that never stops changing (a log, a copy that stalled) is not waited for ever.
    let patience = watch.settle.saturating_mul(10).max(FIRST_SCAN_PATIENCE);
    // A hidden manifest is named at once here: `run --once` looks only now (a later scan
    // would name it once it has lain for `watch.settle`, but there is none).
    let mut out: Vec<Candidate> = scan(inbox, watch, Duration::ZERO, &mut tracker).await?;
    let wanted: HashSet<PathBuf> = tracker.files.keys().cloned().collect();
    let mut told = false;
    loop {
        tracker.files.retain(|path, _| wanted.contains(path));
        let Some(deadline) = tracker.next_check(watch.settle) else {
            break;
        };
        let taken: HashSet<&PathBuf> = out.iter().map(|c| &c.path).collect();
        let changing: Vec<PathBuf> = wanted
            .iter()
            .filter(|path| !taken.contains(path) && tracker.files.contains_key(*path))
            .cloned()
            .collect();
        if started.elapsed() >= patience {
            for path in &changing {
                warn!(
                    path = %Escaped::path(path),
                    waited = %humantime::format_duration(Duration::from_secs(patience.as_secs())),
                    "A file in the inbox is still being written; it is taken in once it stops changing (run --once leaves it for its next run)"
                );
            }
            break;
        }
        if !told && started.elapsed() >= WAITING_TOLD_AFTER && !changing.is_empty() {
            told = true;
            info!(
                files = changing.len(),
                first = %Escaped::path(&changing[0]),
                "Waiting for files in the inbox to stop changing"
            );
        }
        tokio::time::sleep_until(deadline.min(started + patience)).await;
        let stable = scan(inbox, watch, Duration::ZERO, &mut tracker).await?;
        out.extend(stable.into_iter().filter(|c| wanted.contains(&c.path)));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    // `lost+found` at the top of an inbox that is a filesystem of its own is root's, never
    // readable, and never holds drops: still warned about, not an unscanned part of the inbox.
    let mut unreadable: Vec<PathBuf> = tracker
        .reported
        .unreadable
        .iter()
        .filter(|dir| *dir != &inbox.join("lost+found"))
        .cloned()
        .collect();
    unreadable.sort();
    Ok((out, unreadable))
}

/// One version of a candidate: the file's fingerprint and, for a recipe image, its recipe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    file: Fingerprint,
    recipe: Option<Fingerprint>,
}

/// What the watcher knows about one file.
struct Tracked {
    /// The version last seen.
    seen: Version,
    /// When `seen` was first observed (tokio time, so tests can pause it).
    since: Instant,
    /// The version last emitted; equal to `seen` means nothing to do.
    emitted: Option<Version>,
}

#[derive(Default)]
struct Tracker {
    files: HashMap<PathBuf, Tracked>,
    /// What was already logged, so each is logged once, not every rescan.
    reported: Reported,
}

/// Paths already named in a WARN. A path that is gone (or fine again) is forgotten, so it is
/// named again if it comes back.
#[derive(Default)]
struct Reported {
    /// Folders that could not be read.
    unreadable: HashSet<PathBuf>,
}

/// Symlinks (and hidden manifests and folders) already named in a WARN, for the whole process: the daemon's first scan
/// ([`scan_stable`]) and [`run`] scan the same inbox one after the other with trackers of
/// their own, and a link is named once, not once by each. Each scan forgets the links under
/// its root that are gone. A std mutex: held to look up or update a few paths.
static NAMED_LINKS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

impl Tracker {
    /// When the earliest not-yet-stable file should be looked at again.
    fn next_check(&self, settle: Duration) -> Option<Instant> {
        self.files
            .values()
            .filter(|t| t.emitted != Some(t.seen))
            .map(|t| t.since + settle)
            .min()
    }
}

/// One full scan: updates the tracker and returns the files that just became stable. A
/// hidden manifest is named once it has lain unchanged for `hidden_after` (see [`walk`]).
async fn scan(
    inbox: &Path,
    watch: &WatchConfig,
    hidden_after: Duration,
    tracker: &mut Tracker,
) -> Result<Vec<Candidate>, WatchError> {
    let root = inbox.to_owned();
    let reported = std::mem::take(&mut tracker.reported);
    let (listing, reported) = tokio::task::spawn_blocking(move || {
        let mut reported = reported;
        let listing = walk(&root, &mut reported, hidden_after);
        (listing, reported)
    })
    .await
    .map_err(WatchError::ScanTask)?;
    tracker.reported = reported;
    let listing = match listing {
        Ok(listing) => listing,
        Err(source) => {
            return Err(WatchError::Inbox {
                path: inbox.to_owned(),
                cause: source,
            });
        }
    };
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let mut present = HashSet::with_capacity(listing.len());
    let mut stable = Vec::new();
    for found in listing {
        let Found {
            path,
            fingerprint,
            kind,
            recipe,
        } = found;
        let version = Version {
            file: fingerprint,
            recipe,
        };
        present.insert(path.clone());
        let tracked = tracker.files.entry(path.clone()).or_insert(Tracked {
            seen: version,
            since: now,
            emitted: None,
        });
        if tracked.seen != version {
            tracked.seen = version;
            tracked.since = now;
        }
        if tracked.emitted == Some(version) {
            continue;
        }
        let is_old = |fp: &Fingerprint| {
            wall_now
                .duration_since(fp.mtime)
                .is_ok_and(|age| age >= watch.settle)
        };
        let old_enough = is_old(&fingerprint) && recipe.as_ref().is_none_or(is_old);
        let unchanged_long_enough = now.duration_since(tracked.since) >= watch.settle;
        if old_enough || unchanged_long_enough {
            tracked.emitted = Some(version);
            stable.push(Candidate {
                path,
                fingerprint,
                kind,
            });
        }
    }
    tracker.files.retain(|path, _| present.contains(path));
    stable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stable)
}

/// One file a scan found.
struct Found {
    path: PathBuf,
    fingerprint: Fingerprint,
    kind: CandidateKind,
    /// The folder recipe's fingerprint, for a recipe image.
    recipe: Option<Fingerprint>,
}

/// Lists manifests, and images in recipe folders, under `root` with their fingerprints. Only an
/// unreadable `root` is an error; unreadable subfolders are logged (once) and skipped. Hidden
/// folders are not entered; symlinks are not followed (see the module doc). A hidden manifest
/// is named once it has lain unchanged for `hidden_after` ([`lain_for`]).
fn walk(
    root: &Path,
    reported: &mut Reported,
    hidden_after: Duration,
) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    let mut links = LinkWarnings {
        root,
        seen: HashSet::new(),
    };
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if first => return Err(err),
            Err(err) => {
                if reported.unreadable.insert(dir.clone()) {
                    warn!(dir = %Escaped::path(&dir), error = %OsCause(&err), "Skipping an unreadable inbox folder");
                }
                continue;
            }
        };
        first = false;
        reported.unreadable.remove(&dir);
        // Images count only once we know the folder has a recipe (any order in the listing).
        let mut images = Vec::new();
        let mut recipe = None;
        let mut linked_images = Vec::new();
        let mut odd_images = Vec::new();
        // Files that are neither a manifest nor an image a recipe takes (by extension), named
        // when the folder has a recipe: dropped there, `photo.jfif` or `logo.svg` lay in the
        // inbox with no word while the images beside them were edited.
        let mut not_images = Vec::new();
        let mut linked_recipe = None;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name();
            // By bytes: a name that is not UTF-8 is not hidden; the manifest loader rejects it
            // with a message rather than leaving it unseen in the inbox forever.
            let hidden = name.as_encoded_bytes().first() == Some(&b'.');
            // The entry's own type (`lstat`): a symlink is a symlink, whatever it points to.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let is_recipe = name == RECIPE_NAME;
            if file_type.is_symlink() {
                if is_recipe {
                    linked_recipe = Some(path);
                } else if hidden {
                    if looks_like_a_manifest(&name) && lain_for(&entry, hidden_after) {
                        links.warn_once(&path, LinkKind::HiddenManifest);
                    }
                    continue;
                } else if is_manifest_name(&path) {
                    let Some(fingerprint) = own_fingerprint(&entry) else {
                        continue;
                    };
                    links.warn_once(&path, LinkKind::Manifest);
                    out.push(Found {
                        path,
                        fingerprint,
                        kind: CandidateKind::Link,
                        recipe: None,
                    });
                } else if is_image_name(&path) {
                    linked_images.push(path);
                } else if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                    // Only the target's type is looked at, to name the link as a folder.
                    links.warn_once(&path, LinkKind::Folder);
                }
                continue;
            }
            // A recipe's name on a folder, a pipe or a device: never read, its images never
            // taken in; named (it was silent, where a linked recipe is named).
            if is_recipe && !file_type.is_file() {
                links.warn_once(&path, LinkKind::RecipeNotAFile);
                continue;
            }
            if file_type.is_dir() {
                if hidden {
                    // Named only when it holds something that looks like a manifest: `.git`,
                    // `.snapshot` or a trash folder are nobody's drop.
                    if holds_a_manifest(&path) {
                        links.warn_once(&path, LinkKind::HiddenFolder);
                    }
                } else {
                    stack.push(path);
                }
                continue;
            }
            if !file_type.is_file() {
                if !hidden && is_manifest_name(&path) {
                    links.warn_once(&path, LinkKind::NotAFile);
                } else if !hidden && is_image_name(&path) {
                    odd_images.push(path);
                }
                continue;
            }
            let kind = if is_recipe {
                None
            } else if hidden {
                if looks_like_a_manifest(&name) && lain_for(&entry, hidden_after) {
                    links.warn_once(&path, LinkKind::HiddenManifest);
                }
                continue;
            } else if is_manifest_name(&path) {
                Some(CandidateKind::Manifest)
            } else if is_image_name(&path) {
                Some(CandidateKind::RecipeImage)
            } else {
                if in_another_format(&name) {
                    links.warn_once(&path, LinkKind::OtherFormat);
                } else if with_an_extra_extension(&name) {
                    links.warn_once(&path, LinkKind::ExtraExtension);
                } else if left_under_a_temporary_name(&name, &entry) {
                    links.warn_once(&path, LinkKind::LeftTemporary);
                } else if !is_nobodys_drop(&name) {
                    not_images.push(path);
                }
                continue;
            };
            let Some(fingerprint) = own_fingerprint(&entry) else {
                continue;
            };
            match kind {
                None => recipe = Some(fingerprint),
                Some(CandidateKind::RecipeImage) => images.push((path, fingerprint)),
                Some(kind) => out.push(Found {
                    path,
                    fingerprint,
                    kind,
                    recipe: None,
                }),
            }
        }
        if let Some(recipe) = recipe {
            out.extend(images.into_iter().map(|(path, fingerprint)| Found {
                path,
                fingerprint,
                kind: CandidateKind::RecipeImage,
                recipe: Some(recipe),
            }));
            for path in linked_images {
                links.warn_once(&path, LinkKind::Image);
            }
            for path in odd_images {
                links.warn_once(&path, LinkKind::ImageNotAFile);
            }
            for path in not_images {
                links.warn_once(&path, LinkKind::NotARecipeImage);
            }
        }
        if let Some(recipe_link) = linked_recipe {
            links.warn_once(&recipe_link, LinkKind::Recipe);
        }
    }
    links.forget_the_rest();
    Ok(out)
}

/// Size and mtime of the entry itself (`lstat`: a symlink's own, never its target's).
fn own_fingerprint(entry: &std::fs::DirEntry) -> Option<Fingerprint> {
    Fingerprint::of(&entry.metadata().ok()?)
}

impl Fingerprint {
    /// The size and mtime `meta` gives (`None` when the filesystem keeps no mtime).
    pub fn of(meta: &std::fs::Metadata) -> Option<Fingerprint> {
        Some(Fingerprint {
            size: meta.len(),
            mtime: meta.modified().ok()?,
        })
    }

    /// The size and mtime of the file at `path` itself (`lstat`), if it is there.
    pub fn at(path: &Path) -> Option<Fingerprint> {
        Fingerprint::of(&std::fs::symlink_metadata(path).ok()?)
    }
}

/// What a symlink that was not followed stood for, to name it in the WARN.
#[derive(Clone, Copy)]
enum LinkKind {
    Manifest,
    Folder,
    Recipe,
    Image,
    /// Not a link: a manifest whose name starts with a dot, which is never taken in.
    HiddenManifest,
    /// Not a link: a folder whose name starts with a dot, which is never entered.
    HiddenFolder,
    /// Not a link: a list in a format manifests do not come in (a spreadsheet's CSV).
    OtherFormat,
    /// Not a link: a manifest saved with an extra extension (`shoes.yaml.txt`, as Notepad
    /// saves it).
    ExtraExtension,
    /// A manifest left under an upload's temporary name ([`left_under_a_temporary_name`]).
    LeftTemporary,
    /// Not a link: a manifest's name on something that is no regular file (a pipe, a socket,
    /// a device).
    NotAFile,
    /// Not a link: an image's name in a recipe folder on something that is no regular file.
    ImageNotAFile,
    /// Not a link: a recipe's name (`.claid.yaml`) on a folder, a pipe or a device.
    RecipeNotAFile,
    /// Not a link: a file in a recipe folder that is no image the recipe takes by its name
    /// (`photo.jfif`, `logo.svg`, a name without an extension).
    NotARecipeImage,
}

/// Whether a file in a recipe folder is nobody's drop, or not one yet: still being written by
/// a copy or a download (`.part`, `.tmp`, `.crdownload`: it may become an image), an editor's
/// or an office program's own file (`~$…`, `…~`, `.swp`), or a file the desktop keeps
/// (`Thumbs.db`, `desktop.ini`). Not named.
fn is_nobodys_drop(name: &std::ffi::OsStr) -> bool {
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    crate::manifest::is_tool_file(&lower) || matches!(lower.as_str(), "thumbs.db" | "desktop.ini")
}

/// Whether a file's name says it is a list in a format manifests do not come in: a team that
/// drops its catalogue as a spreadsheet is told, instead of the file lying unseen.
fn in_another_format(name: &std::ffi::OsStr) -> bool {
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    [".csv", ".tsv", ".xlsx", ".xls", ".ods", ".toml", ".xml"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// Whether a path names a folder recipe under another extension (`.claid.yml`, `.claid.json`).
fn is_misnamed_recipe(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name != RECIPE_NAME
        && matches!(
            name.to_ascii_lowercase().as_str(),
            ".claid.yml" | ".claid.json" | ".claid.yaml"
        )
}

/// Whether a directory entry has lain unchanged for `settle`, by its inode's change time
/// (which a write, a rename or a copy sets, and no copy keeps from its source, unlike the
/// modification time `cp -p` carries over): a hidden manifest is named only then. Written
/// under a dot name and renamed into place (as the README advises), one was named as hidden
/// by the scan its creation set off, already renamed and taken in. A change time ahead of
/// this machine's clock says nothing: named.
fn lain_for(entry: &std::fs::DirEntry, settle: Duration) -> bool {
    let Ok(meta) = entry.metadata() else {
        return false;
    };
    changed_at(&meta)
        .elapsed()
        .map_or(true, |age| age >= settle)
}

/// When a file last changed, its content or its name (its ctime: a rename into place sets
/// it, which its mtime, kept by `mv` and `rsync`, does not). A time before the epoch reads
/// as the epoch.
pub(crate) fn changed_at(meta: &std::fs::Metadata) -> std::time::SystemTime {
    use std::os::unix::fs::MetadataExt;
    std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        )
}

/// How long a manifest may lie under an upload's temporary name before it is named in a WARN:
/// far longer than any copy takes, so a file being written is never named.
const LEFT_TEMPORARY_AFTER: Duration = Duration::from_secs(10 * 60);

/// Whether a file is a manifest under an upload's or a download's temporary name
/// (`shoes.yaml.part`, `.tmp`, `.crdownload`) unchanged for [`LEFT_TEMPORARY_AFTER`]: a copy
/// that never renamed it into place, so it is never read. Not editors' swap and backup files
/// (`.swp`, `…~`), which lie beside the manifests they belong to as long as they like.
fn left_under_a_temporary_name(name: &std::ffi::OsStr, entry: &std::fs::DirEntry) -> bool {
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    let Some(base) = crate::manifest::COPY_IN_PROGRESS
        .iter()
        .find_map(|ext| lower.strip_suffix(ext))
    else {
        return false;
    };
    is_manifest_name(Path::new(base))
        && entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= LEFT_TEMPORARY_AFTER))
}

/// Whether a file's name is a manifest's with `.txt` added (`shoes.yaml.txt`): what an editor
/// saves when it appends its own extension. Temporary names (`.part`, `.tmp`, `.swp`) are not
/// meant: those are files still being written.
fn with_an_extra_extension(name: &std::ffi::OsStr) -> bool {
    let lower = String::from_utf8_lossy(name.as_encoded_bytes()).to_ascii_lowercase();
    [".yaml.txt", ".yml.txt", ".json.txt"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// Whether a hidden file's name, without its leading dots, would be a manifest's: such a file
/// is named once in a WARN. Not macOS's metadata files (`._name`) nor editors' lock links
/// (`.#name`): those are nobody's manifest (and temporary files end otherwise).
fn looks_like_a_manifest(name: &std::ffi::OsStr) -> bool {
    let text = String::from_utf8_lossy(name.as_encoded_bytes());
    if text.starts_with("._") || text.starts_with(".#") {
        return false;
    }
    is_manifest_name(Path::new(text.trim_start_matches('.')))
}

/// Whether the hidden folder `dir` directly holds a file that looks like a manifest.
fn holds_a_manifest(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry.file_type().is_ok_and(|t| t.is_file()) && is_manifest_name(&entry.path())
        })
    })
}

/// Names each symlink (or hidden manifest or folder) found once in a WARN ([`NAMED_LINKS`]), and forgets those that are gone.
struct LinkWarnings<'a> {
    /// The scanned root: only links under it are forgotten when not seen.
    root: &'a Path,
    /// The links met in this scan.
    seen: HashSet<PathBuf>,
}

impl LinkWarnings<'_> {
    fn warn_once(&mut self, path: &Path, kind: LinkKind) {
        self.seen.insert(path.to_owned());
        let new = NAMED_LINKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_owned());
        if !new {
            return;
        }
        let path = Escaped::path(path);
        match kind {
            LinkKind::Manifest => warn!(
                path = %path,
                "A manifest in the inbox is a symlink; it is not followed and is rejected (put the file itself in the inbox)"
            ),
            LinkKind::Folder => warn!(
                dir = %path,
                "A folder in the inbox is a symlink; it is not entered (put the folder itself in the inbox)"
            ),
            LinkKind::Recipe => warn!(
                path = %path,
                "A folder recipe is a symlink; it is not followed, so the images in its folder are not processed (put the file itself there)"
            ),
            LinkKind::RecipeNotAFile => warn!(
                path = %path,
                "A folder recipe is no regular file (a folder, a pipe or a device); it is not read, so the images in its folder are not processed (put the recipe file itself there)"
            ),
            LinkKind::Image => warn!(
                path = %path,
                "An image in a recipe folder is a symlink; it is not followed (put the file itself there)"
            ),
            LinkKind::HiddenManifest if is_misnamed_recipe(path.to_string().as_str()) => warn!(
                path = %path,
                "A folder recipe must be named `.claid.yaml`; this one is not read, so the images beside it are not processed: rename it"
            ),
            LinkKind::HiddenManifest => warn!(
                path = %path,
                "A manifest's name starts with a dot: hidden files are never taken in (editors and copy tools write their temporary files so); rename it without the dot"
            ),
            LinkKind::OtherFormat => warn!(
                path = %path,
                "A file in the inbox looks like a list of images in a format the daemon does not read; it is left alone. Manifests are YAML (*.yaml, *.yml) or JSON (*.json): write the list as one (README \"Manifests\")"
            ),
            LinkKind::ExtraExtension => warn!(
                path = %path,
                "A file in the inbox looks like a manifest saved with an extra `.txt` (an editor added it); it is left alone. Manifests end in .yaml, .yml or .json: rename it"
            ),
            LinkKind::LeftTemporary => warn!(
                path = %path,
                "A manifest has lain under a temporary name (`.part`, `.tmp`, `.crdownload`) unchanged for 10 minutes; files under such names are never read (they are still being written): if the copy is complete, rename it without that ending"
            ),
            LinkKind::NotARecipeImage => warn!(
                path = %path,
                extensions = %crate::manifest::IMAGE_EXTENSIONS.join(", "),
                "A file in a recipe folder is not an image the recipe takes (by the end of its name); it is left where it is. A JPEG saved as `.jfif` or `.jpe`: rename it to `.jpg`; another format: convert it, or list it in a manifest"
            ),
            LinkKind::ImageNotAFile => warn!(
                path = %path,
                "An image's name in a recipe folder is on something that is no regular file (a pipe, a socket or a device); it is not processed: put the image file there"
            ),
            LinkKind::NotAFile => warn!(
                path = %path,
                "A manifest's name in the inbox is on something that is no regular file (a pipe, a socket or a device); it is left alone: put a file there"
            ),
            LinkKind::HiddenFolder => warn!(
                dir = %path,
                "A folder of the inbox has a name starting with a dot: hidden folders are never entered, so nothing in it is processed; rename it without the dot"
            ),
        }
    }

    fn forget_the_rest(self) {
        let (root, seen) = (self.root, self.seen);
        NAMED_LINKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|path| !path.starts_with(root) || seen.contains(path));
    }
}

fn is_watch_limit(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => io.raw_os_error() == Some(28), // ENOSPC from inotify_add_watch
        _ => false,
    }
}

fn log_watch_failure(inbox: &Path, err: &notify::Error) {
    if is_watch_limit(err) {
        error!(
            inbox = %Escaped::path(inbox),
            error = %err,
            "Cannot watch the inbox: the inotify watch limit is reached; raise fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288); falling back to polling every watch.rescan until the daemon is restarted"
        );
    } else {
        error!(
            inbox = %Escaped::path(inbox),
            error = %err,
            "Cannot watch the inbox; falling back to polling every watch.rescan until the daemon is restarted"
        );
    }
}

/// The lock file a daemon holds in its inbox ([`claim_inbox`]); hidden, so never a candidate.
pub const INBOX_LOCK: &str = ".claid-hotfolder.lock";

/// A daemon's claim on its inbox: the lock lives as long as this.
#[derive(Debug)]
pub struct InboxClaim {
    file: Option<std::fs::File>,
    /// The inbox folder, opened and locked: the lock file can be deleted (a cleanup of dot
    /// files), this lock cannot, so a second daemon is refused even before the lock file is
    /// made again. `None` where the filesystem does not lock folders.
    folder: Option<std::fs::File>,
}

impl InboxClaim {
    /// Whether this daemon still holds the inbox's lock at its path: a lock file deleted (a
    /// cleanup of dot files, `rsync --delete`, `git clean`) or an inbox folder replaced would
    /// let a second daemon start on it and bill every drop again. Claimed again then (true);
    /// refused when another daemon took the inbox meanwhile. A claim that holds no file (an
    /// inbox the daemon may not write) is left as it is.
    pub fn keep(&mut self, inbox: &Path, state: &Path) -> Result<bool, InboxTaken> {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let identity = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
        let ours = file.metadata().ok().map(identity);
        let there = std::fs::symlink_metadata(inbox.join(INBOX_LOCK))
            .ok()
            .map(identity);
        // An inbox that is gone is told by the daemon's health; claimed again once back.
        if (ours.is_some() && ours == there) || !inbox.is_dir() {
            return Ok(false);
        }
        // The folder this daemon holds is kept (locking it again through another descriptor
        // would be refused by its own lock); a folder put in its place is locked anew.
        let folder = self.folder.take().filter(|held| {
            let at_path = std::fs::metadata(inbox).ok().map(identity);
            held.metadata().ok().map(identity) == at_path
        });
        let claim = claim_inbox_holding(inbox, state, folder)?;
        if claim.file.is_none() {
            self.folder = claim.folder;
            return Ok(false);
        }
        *self = claim;
        warn!(inbox = %Escaped::path(inbox), lock = INBOX_LOCK, "The inbox's lock file was deleted or replaced; claimed the inbox again (leave that file in place: it keeps a second daemon off this inbox)");
        Ok(true)
    }
}

/// Another daemon watches the same manifests.
#[derive(Debug, thiserror::Error)]
#[error(
    "another daemon ({owner}) watches {}, {relation}: both would take in, and bill, the same manifests; stop it, or give each daemon a folder of its own beside the other's (docs/scaling.md)",
    Escaped::path(other)
)]
pub struct InboxTaken {
    pub other: PathBuf,
    /// "the same inbox", "which holds this inbox", "which is inside this inbox".
    pub relation: &'static str,
    /// What its lock file says of it (PID and state folder).
    pub owner: String,
}

/// Claims `inbox` for this daemon (`state` is named in the lock file for the other daemons'
/// errors): refused when another live daemon holds the lock of this inbox, of a folder above
/// it, or of a folder below it (hidden folders and symlinks are not entered, as by the
/// watcher), looked at again once the lock is held (two daemons starting at once both see
/// the other then). The lock file is never followed if it is a link, and one left by another
/// user that nobody holds is replaced. An inbox the daemon may not write (a read-only share
/// with `on_manifest_done: keep`) is checked but not claimed, with a warning.
pub fn claim_inbox(inbox: &Path, state: &Path) -> Result<InboxClaim, InboxTaken> {
    claim_inbox_holding(inbox, state, None)
}

/// [`claim_inbox`], keeping `folder` when this daemon holds the inbox folder's lock already.
fn claim_inbox_holding(
    inbox: &Path,
    state: &Path,
    folder: Option<std::fs::File>,
) -> Result<InboxClaim, InboxTaken> {
    use std::io::Write;
    check_others(inbox)?;
    let folder = match folder {
        Some(folder) => Some(folder),
        None => lock_folder(inbox)?,
    };
    let path = inbox.join(INBOX_LOCK);
    let open = || lock_file(&path, true);
    let file = match open() {
        Ok(file) => file,
        Err(err) => {
            if let Some(owner) = held_by_file(inbox) {
                return Err(InboxTaken {
                    other: inbox.to_path_buf(),
                    relation: "the same inbox",
                    owner,
                });
            }
            // Nobody holds it: a file left by another user (or a link) is replaced.
            let retried = std::fs::remove_file(&path).ok().and_then(|()| open().ok());
            match retried {
                Some(file) => file,
                None => {
                    warn!(inbox = %Escaped::path(inbox), lock = INBOX_LOCK, error = %OsCause(&err), "Cannot claim the inbox (its lock file cannot be written): another daemon watching an overlapping folder would not be noticed");
                    return Ok(InboxClaim { file: None, folder });
                }
            }
        }
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(InboxTaken {
            other: inbox.to_path_buf(),
            relation: "the same inbox",
            owner: held_by_file(inbox).unwrap_or_else(|| "unknown".to_owned()),
        });
    }
    let mut file = file;
    let _ = file.set_len(0);
    let _ = write!(
        file,
        "PID {}\nstate {}\n",
        std::process::id(),
        state.display()
    );
    let claim = InboxClaim {
        file: Some(file),
        folder,
    };
    check_others(inbox)?;
    Ok(claim)
}

/// Opens the lock file at `path`: never through a link, and only a regular file.
fn lock_file(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// What the lock file in `dir` says of the live daemon that holds it, or that one holds the
/// folder whose lock file was deleted; `None` when nobody does.
fn held(dir: &Path) -> Option<String> {
    held_by_file(dir).or_else(|| {
        let folder = open_folder(dir).ok()?;
        rustix::fs::flock(&folder, rustix::fs::FlockOperation::NonBlockingLockShared)
            .is_err_and(|err| err == rustix::io::Errno::WOULDBLOCK)
            .then(|| format!("PID unknown: its lock file {INBOX_LOCK} was deleted"))
    })
}

/// What the lock file in `dir` says of the live daemon that holds it; `None` when nobody does.
fn held_by_file(dir: &Path) -> Option<String> {
    let path = dir.join(INBOX_LOCK);
    let file = lock_file(&path, false).ok()?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => None,
        Err(_) => Some(
            std::fs::read_to_string(&path)
                .map(|text| text.trim().replace('\n', ", "))
                .unwrap_or_else(|_| "unknown".to_owned()),
        ),
    }
}

/// The folder `dir`, opened to be locked.
fn open_folder(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
}

/// Locks the inbox folder itself for this daemon: refused when another daemon holds it (its
/// lock file may have been deleted meanwhile). `None` where the folder cannot be opened or its
/// filesystem does not lock folders (an NFS mount): the lock file is then the only guard.
fn lock_folder(inbox: &Path) -> Result<Option<std::fs::File>, InboxTaken> {
    let Ok(folder) = open_folder(inbox) else {
        return Ok(None);
    };
    match rustix::fs::flock(
        &folder,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => Ok(Some(folder)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(InboxTaken {
            other: inbox.to_path_buf(),
            relation: "the same inbox",
            owner: held_by_file(inbox)
                .unwrap_or_else(|| format!("PID unknown: its lock file {INBOX_LOCK} was deleted")),
        }),
        Err(_) => Ok(None),
    }
}

/// Another live daemon's inbox above `inbox` or inside it.
fn check_others(inbox: &Path) -> Result<(), InboxTaken> {
    // Through the folders as they are on disk: a symlinked path to another daemon's inbox is
    // the same folder.
    let real = std::fs::canonicalize(inbox).unwrap_or_else(|_| inbox.to_path_buf());
    for dir in real.ancestors().skip(1) {
        if let Some(owner) = held(dir) {
            return Err(InboxTaken {
                other: dir.to_path_buf(),
                relation: "which holds this inbox",
                owner,
            });
        }
    }
    let mut stack = vec![inbox.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let hidden = entry.file_name().as_encoded_bytes().first() == Some(&b'.');
            if !hidden && entry.file_type().is_ok_and(|t| t.is_dir()) {
                let sub = entry.path();
                if let Some(owner) = held(&sub) {
                    return Err(InboxTaken {
                        other: sub,
                        relation: "which is inside this inbox",
                        owner,
                    });
                }
                stack.push(sub);
            }
        }
    }
    Ok(())
}
