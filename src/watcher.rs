//! Inbox discovery: notify events wake a scan, the periodic full scan is the truth, and a file
//! becomes a candidate only once it has been stable for `watch.settle`.
//!
//! Stability rule: a manifest is stable when its mtime is already older than `settle` when we
//! look at it (so `run --once` on an old inbox is instant), or when its size and mtime were
//! unchanged across two looks at least `settle` apart. Each (path, fingerprint) is emitted once;
//! a file that changes is emitted again once stable again. The notify callback only
//! `try_send`s a wake-up into a bounded channel; when that is full the event is dropped,
//! because the scan it would trigger is already pending.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::WatchConfig;
use crate::manifest::is_manifest_name;

/// What identifies one version of a file: a changed file has a new fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime: SystemTime,
}

/// A manifest that has been stable for the settle window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute path inside the inbox.
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read inbox {path}")]
    Inbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// Watches `inbox` until `shutdown`, sending each stable manifest version once on `tx`.
///
/// Returns when `shutdown` fires or the receiver is gone. An unreadable folder is logged and
/// skipped; a watch that cannot be set up falls back to polling.
pub async fn run(
    inbox: PathBuf,
    watch: WatchConfig,
    tx: mpsc::Sender<Candidate>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(WAKE_CAPACITY);
    // Kept alive for the whole loop: dropping the watcher stops the events.
    let _watcher = if watch.poll_only {
        info!(inbox = %inbox.display(), "Watching the inbox by polling only");
        None
    } else {
        start_notify(&inbox, wake_tx)
    };
    let mut tracker = Tracker::default();
    let mut next_rescan = Instant::now();
    let mut inbox_failing = false;
    loop {
        let now = Instant::now();
        if now >= next_rescan {
            next_rescan = now + watch.rescan;
        }
        // Every scan is a full scan: events only decide when it runs.
        let stable = match scan(&inbox, &watch, &mut tracker).await {
            Ok(stable) => {
                if inbox_failing {
                    info!(inbox = %inbox.display(), "The inbox is readable again");
                    inbox_failing = false;
                }
                stable
            }
            Err(err) => {
                if !inbox_failing {
                    error!(inbox = %inbox.display(), error = %err, "Cannot scan the inbox; retrying every watch.rescan");
                    inbox_failing = true;
                }
                Vec::new()
            }
        };
        for candidate in stable {
            debug!(path = %candidate.path.display(), "Manifest is stable");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                res = tx.send(candidate) => if res.is_err() { return Ok(()) },
            }
        }
        let deadline = tracker
            .next_check(watch.settle)
            .map_or(next_rescan, |at| at.min(next_rescan));
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

/// Waits until every manifest present in `inbox` now is stable, and returns them (sorted).
///
/// For `run --once`: files that appear while waiting are left for the next run; files that
/// disappear are dropped.
pub async fn scan_stable(inbox: &Path, watch: &WatchConfig) -> Result<Vec<Candidate>, WatchError> {
    let mut tracker = Tracker::default();
    let mut out: Vec<Candidate> = scan(inbox, watch, &mut tracker).await?;
    let wanted: HashSet<PathBuf> = tracker.files.keys().cloned().collect();
    loop {
        tracker.files.retain(|path, _| wanted.contains(path));
        let Some(deadline) = tracker.next_check(watch.settle) else {
            break;
        };
        tokio::time::sleep_until(deadline).await;
        let stable = scan(inbox, watch, &mut tracker).await?;
        out.extend(stable.into_iter().filter(|c| wanted.contains(&c.path)));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// What the watcher knows about one file.
struct Tracked {
    /// The fingerprint last seen.
    seen: Fingerprint,
    /// When `seen` was first observed (tokio time, so tests can pause it).
    since: Instant,
    /// The fingerprint last emitted; equal to `seen` means nothing to do.
    emitted: Option<Fingerprint>,
}

#[derive(Default)]
struct Tracker {
    files: HashMap<PathBuf, Tracked>,
    /// Folders already reported unreadable (reported once, not every rescan).
    reported: HashSet<PathBuf>,
}

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

/// One full scan: updates the tracker and returns the files that just became stable.
async fn scan(
    inbox: &Path,
    watch: &WatchConfig,
    tracker: &mut Tracker,
) -> Result<Vec<Candidate>, WatchError> {
    let root = inbox.to_owned();
    let reported = std::mem::take(&mut tracker.reported);
    let (listing, reported) = tokio::task::spawn_blocking(move || {
        let mut reported = reported;
        let listing = walk(&root, &mut reported);
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
                source,
            });
        }
    };
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let mut present = HashSet::with_capacity(listing.len());
    let mut stable = Vec::new();
    for (path, fingerprint) in listing {
        present.insert(path.clone());
        let tracked = tracker.files.entry(path.clone()).or_insert(Tracked {
            seen: fingerprint,
            since: now,
            emitted: None,
        });
        if tracked.seen != fingerprint {
            tracked.seen = fingerprint;
            tracked.since = now;
        }
        if tracked.emitted == Some(fingerprint) {
            continue;
        }
        let old_enough = wall_now
            .duration_since(fingerprint.mtime)
            .is_ok_and(|age| age >= watch.settle);
        let unchanged_long_enough = now.duration_since(tracked.since) >= watch.settle;
        if old_enough || unchanged_long_enough {
            tracked.emitted = Some(fingerprint);
            stable.push(Candidate { path, fingerprint });
        }
    }
    tracker.files.retain(|path, _| present.contains(path));
    stable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stable)
}

/// Lists manifests under `root` with their fingerprints. Only an unreadable `root` is an error;
/// unreadable subfolders are logged (once) and skipped. Hidden folders and symlinked folders
/// are not entered.
fn walk(
    root: &Path,
    reported: &mut HashSet<PathBuf>,
) -> std::io::Result<Vec<(PathBuf, Fingerprint)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    let canonical_root = std::fs::canonicalize(root)?;
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if first => return Err(err),
            Err(err) => {
                if reported.insert(dir.clone()) {
                    warn!(dir = %dir.display(), error = %err, "Skipping an unreadable inbox folder");
                }
                continue;
            }
        };
        first = false;
        reported.remove(&dir);
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name();
            let hidden = name.to_str().is_none_or(|n| n.starts_with('.'));
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                if !hidden {
                    stack.push(path);
                }
                continue;
            }
            if hidden || !is_manifest_name(&path) {
                continue;
            }
            let meta = if file_type.is_symlink() {
                // A symlinked manifest counts only when it points inside the inbox.
                match std::fs::canonicalize(&path) {
                    Ok(target) if target.starts_with(&canonical_root) => {
                        match std::fs::metadata(&target) {
                            Ok(meta) => meta,
                            Err(_) => continue,
                        }
                    }
                    _ => continue,
                }
            } else {
                match entry.metadata() {
                    Ok(meta) => meta,
                    Err(_) => continue,
                }
            };
            if !meta.is_file() {
                continue;
            }
            let Ok(mtime) = meta.modified() else { continue };
            out.push((
                path,
                Fingerprint {
                    size: meta.len(),
                    mtime,
                },
            ));
        }
    }
    Ok(out)
}

/// Starts notify on the inbox; every relevant event wakes a scan. `None` when it cannot start
/// (then the periodic scan alone finds files).
fn start_notify(inbox: &Path, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    use std::sync::atomic::{AtomicBool, Ordering};
    // The limit error is logged once, not once per folder that could not be watched.
    let limit_logged = AtomicBool::new(false);
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if matches!(
                event.kind,
                EventKind::Access(notify::event::AccessKind::Open(_))
                    | EventKind::Access(notify::event::AccessKind::Read)
            ) {
                return;
            }
            if wake.try_send(()).is_err() {
                debug!("Dropped a watch event: a scan is already pending");
            }
        }
        Err(err) => {
            if is_watch_limit(&err) {
                if !limit_logged.swap(true, Ordering::Relaxed) {
                    error!(error = %err, "Inotify watch limit reached; raise fs.inotify.max_user_watches (sysctl); new folders are found by the periodic rescan");
                }
            } else {
                warn!(error = %err, "Watch error; the periodic rescan still finds files");
            }
            let _ = wake.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            log_watch_failure(inbox, &err);
            return None;
        }
    };
    if let Err(err) = watcher.watch(inbox, RecursiveMode::Recursive) {
        log_watch_failure(inbox, &err);
        return None;
    }
    info!(inbox = %inbox.display(), "Watching the inbox for changes");
    Some(watcher)
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
            inbox = %inbox.display(),
            error = %err,
            "Cannot watch the inbox: the inotify watch limit is reached; raise fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288); falling back to polling every watch.rescan"
        );
    } else {
        error!(
            inbox = %inbox.display(),
            error = %err,
            "Cannot watch the inbox; falling back to polling every watch.rescan"
        );
    }
}
