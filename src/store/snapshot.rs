//! A private copy of the store for the commands that only read it (`status`, `jobs`, `plan`)
//! while no daemon runs.
//!
//! sled 0.34 has no read-only open: `Config::open` creates the folder and its `blobs/`,
//! opens the `db` file for writing, takes an exclusive lock on it and writes `conf`, and the
//! store's own open writes its schema record and sweeps orphans. Run as root against the
//! service's store, that left files the service user could not open. So these commands copy
//! the database files (`conf`, `db`, `snap.*`, `blobs/`) into a temporary folder and open the
//! copy: the state folder is only read, never locked, never written.
//!
//! The cost is one copy of the database per command: `std::fs::copy` uses `copy_file_range`,
//! a reflink (no data copied) on btrfs and XFS, an in-kernel copy elsewhere, so time and
//! temporary disk space grow with the store's size (README.md, "Command line": a store of
//! 20,000 jobs is 92 MB, and `status` took 0.2-0.3 s with the copy). The copy goes to
//! `$TMPDIR` (default `/tmp`) and is removed when the command ends.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::trees::SCHEMA_DIR;
use crate::store::{Store, StoreError};

/// An open copy of the store; the copy is deleted when this is dropped.
pub struct Snapshot {
    /// Dropped first: the database is closed before its folder is deleted.
    store: Store,
    /// The temporary folder holding the copy.
    _dir: tempfile::TempDir,
}

impl Snapshot {
    /// Copies the store under `state_dir` and opens the copy. `Ok(None)` when there is no
    /// store yet (the daemon never ran with this state folder); `StoreError::Locked` when a
    /// daemon holds it (ask that daemon instead); `StoreError::Snapshot` names the file that
    /// could not be read.
    pub fn open(state_dir: &Path) -> Result<Option<Snapshot>, StoreError> {
        let source = state_dir.join(SCHEMA_DIR);
        let db_file = source.join("db");
        match std::fs::metadata(&db_file) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // No store, unless a folder on the way is unreadable (then say so).
                return match std::fs::metadata(state_dir) {
                    Err(cause) if cause.kind() != io::ErrorKind::NotFound => {
                        Err(snapshot_error(state_dir, cause))
                    }
                    _ => Ok(None),
                };
            }
            Err(cause) => return Err(snapshot_error(&db_file, cause)),
        }
        if held_by_daemon(&db_file)? {
            return Err(StoreError::Locked { path: source });
        }
        // Ctrl-C or a `timeout` must not leave a copy of the whole store behind.
        let on_signal = remove_on_signal();
        let dir = tempfile::Builder::new()
            .prefix("claid-hotfolder-snapshot-")
            .tempdir()
            .map_err(temp_dir_error)?;
        if let Some(slot) = on_signal {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(dir.path().to_path_buf());
        }
        copy_tree(&source, &dir.path().join(SCHEMA_DIR))?;
        // A daemon that started while the files were copied may have changed them half-way.
        if held_by_daemon(&db_file)? {
            return Err(StoreError::Locked { path: source });
        }
        let store = Store::open(dir.path())?;
        Ok(Some(Snapshot { store, _dir: dir }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Catches SIGINT, SIGTERM, SIGHUP (a closed terminal) and SIGQUIT from now on, on a thread
/// of its own (the command's own thread may be busy copying): on any, the folder put into the
/// returned slot (the copy) is removed and the process exits as the signal would have ended it
/// (130, 143, 129, 131). `None` when the
/// handlers cannot be installed (the copy is then removed only by a normal end, as before).
fn remove_on_signal() -> Option<std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<PathBuf>));
    let theirs = slot.clone();
    let (installed, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("snapshot-signals".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                let _ = installed.send(false);
                return;
            };
            runtime.block_on(async move {
                let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::hangup()),
                    signal(SignalKind::quit()),
                ) else {
                    let _ = installed.send(false);
                    return;
                };
                let _ = installed.send(true);
                let code = tokio::select! {
                    _ = term.recv() => 143,
                    _ = int.recv() => 130,
                    _ = hup.recv() => 129,
                    _ = quit.recv() => 131,
                };
                let dir = theirs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(dir) = dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(code);
            });
        })
        .ok()?;
    ready.recv().ok()?.then_some(slot)
}

/// Whether a process holds sled's lock on `db` (an exclusive `flock`). Probed with a shared
/// lock that is released at once, so a daemon starting now is not refused.
fn held_by_daemon(db: &Path) -> Result<bool, StoreError> {
    let file = std::fs::File::open(db).map_err(|cause| snapshot_error(db, cause))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(errno) => Err(snapshot_error(db, errno.into())),
    }
}

/// Copies the regular files and folders under `from` to `to` (symlinks and the rest are not
/// part of a sled database and are skipped).
fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).map_err(|cause| snapshot_error(to, cause))?;
    let entries = std::fs::read_dir(from).map_err(|cause| snapshot_error(from, cause))?;
    for entry in entries {
        let entry = entry.map_err(|cause| snapshot_error(from, cause))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|cause| snapshot_error(&path, cause))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(|cause| {
                // A full or read-only temporary folder is the copy's side, not the store's:
                // named as such (it named the store, which was not full).
                match cause.raw_os_error() {
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS) => temp_dir_error(cause),
                    _ => snapshot_error(&path, cause),
                }
            })?;
        }
    }
    Ok(())
}

/// The temporary folder cannot take the copy: named with where it comes from, since the user
/// never chose it (tempfile's own text names only a random path under it).
fn temp_dir_error(cause: io::Error) -> StoreError {
    let os = cause.raw_os_error().map_or_else(
        || cause.to_string(),
        |code| io::Error::from_raw_os_error(code).to_string(),
    );
    let from = if std::env::var_os("TMPDIR").is_some() {
        "$TMPDIR"
    } else {
        "the default, as TMPDIR is not set"
    };
    snapshot_error(
        &std::env::temp_dir(),
        io::Error::new(
            cause.kind(),
            format!(
                "{os}; that is the temporary folder ({from}) where the store is copied to be read: set TMPDIR to a writable folder"
            ),
        ),
    )
}

fn snapshot_error(path: &Path, cause: io::Error) -> StoreError {
    StoreError::Snapshot {
        path: PathBuf::from(path),
        cause,
    }
}
