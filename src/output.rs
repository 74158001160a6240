//! Output files: atomic writes (temp file → fsync → rename → fsync dir), the collision policy
//! and stale temp-file cleanup; also the no-overwrite move used to archive or reject manifests.
//!
//! Architecture invariant: the outbox never holds a partial file under a final name, and no
//! path built from manifest input leaves its root (no `..`, no absolute paths, no symlinks).

pub mod check;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::codes::FailureCode;

use crate::os_error::OsCause;
use crate::text::Escaped;

/// What to do when the final output path already exists (mapped from the config's
/// `on_output_exists`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExistsPolicy {
    /// Atomically replace the existing file.
    Replace,
    /// Keep the existing file and report `skipped: true`.
    Skip,
    /// Refuse with [`OutputError::Exists`] (`output-exists`).
    Fail,
}

/// The result of [`write_atomic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Final path of the file.
    pub path: PathBuf,
    /// Size of the file now at `path` (the existing one when skipped).
    pub bytes: u64,
    /// Hex SHA-256 of the file now at `path`.
    pub sha256: String,
    /// True when policy `Skip` kept an existing file.
    pub skipped: bool,
}

/// Errors of the output boundary.
///
/// File-system errors carry the OS error, named in the message (`ENAMETOOLONG: file name too
/// long`) and classified by errno: [`OutputError::code`] gives a stable code, and
/// [`OutputError::heals`] says whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {} already exists", Escaped::path(path))]
    Exists { path: PathBuf },
    #[error("unsafe output path {}: {reason}", Escaped::path(path))]
    UnsafePath { path: PathBuf, reason: &'static str },
    /// The cause is part of the message (not a `source`), so a log line with `error = %err`
    /// names it.
    #[error("{}: {}", Escaped::path(path), OsCause(cause))]
    Io { path: PathBuf, cause: io::Error },
}

impl OutputError {
    /// Stable kebab-case code, persisted as a failure reason.
    pub fn code(&self) -> FailureCode {
        match self {
            OutputError::Exists { .. } => FailureCode::OutputExists,
            OutputError::UnsafePath { .. } => FailureCode::OutputUnsafePath,
            OutputError::Io { cause, .. } => io_class(cause).0,
        }
    }

    /// Whether the same write may succeed later: a full disk, too many open files or an I/O
    /// error may clear up (retry with a bounded budget); a name that is too long, a read-only
    /// file system, a path through a file or onto a folder, an existing output or an unsafe
    /// path will not (fail the job at once).
    pub fn heals(&self) -> bool {
        match self {
            OutputError::Exists { .. } | OutputError::UnsafePath { .. } => false,
            OutputError::Io { cause, .. } => io_class(cause).1,
        }
    }

    /// Wraps an i/o error met at `path`.
    pub fn io(path: &Path, cause: io::Error) -> OutputError {
        OutputError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// (code, heals) of a file-system error, by errno. Errors without an errno and errno values
/// not listed are `output-io` and may heal (the retry budget bounds them).
fn io_class(cause: &io::Error) -> (FailureCode, bool) {
    use FailureCode as C;
    match cause.raw_os_error() {
        Some(libc::ENAMETOOLONG) => (C::OutputNameTooLong, false),
        Some(libc::EROFS) => (C::OutputReadOnly, false),
        Some(libc::ENOTDIR) => (C::OutputNotADirectory, false),
        Some(libc::EISDIR) => (C::OutputIsADirectory, false),
        Some(libc::EINVAL) => (C::OutputInvalidName, false),
        Some(libc::ELOOP) => (C::OutputUnsafePath, false),
        Some(libc::ENOSPC | libc::EDQUOT) => (C::DiskFull, true),
        Some(libc::EMFILE | libc::ENFILE) => (C::OutputTooManyOpenFiles, true),
        Some(libc::EACCES | libc::EPERM) => (C::OutputPermissionDenied, true),
        _ if cause.kind() == io::ErrorKind::StorageFull => (C::DiskFull, true),
        _ => (C::OutputIo, true),
    }
}

/// Marker between the final name and the random id in temp file names.
const TMP_MARKER: &str = ".tmp-";
/// How many `.N` suffixes `move_mirrored` tries before giving up.
const MAX_SUFFIX: u32 = 10_000;

/// What [`clean_stale_tmp`] did: files removed, and the entries below the root it could not
/// read or remove (each skipped, the first kept to be told).
#[derive(Debug, Default)]
pub struct Cleaned {
    pub removed: usize,
    pub skipped: usize,
    pub first_problem: Option<OutputError>,
}

/// Removes stale temp files (`.<name>.tmp-<id>`) under `root`, recursively, without following
/// symlinks. A missing root is fine; a root that cannot be read is an error. A folder or file
/// below it that cannot be read or removed (another team's folder without permission) is
/// skipped and counted: one such entry must not keep the daemon from starting.
pub fn clean_stale_tmp(root: &Path) -> Result<Cleaned, OutputError> {
    let mut cleaned = Cleaned::default();
    let skip = |cleaned: &mut Cleaned, path: &Path, err: io::Error| {
        cleaned.skipped += 1;
        cleaned
            .first_problem
            .get_or_insert_with(|| OutputError::io(path, err));
    };
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) if dir == root => return Err(OutputError::io(&dir, err)),
            Err(err) => {
                skip(&mut cleaned, &dir, err);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    skip(&mut cleaned, &dir, err);
                    break;
                }
            };
            let path = entry.path();
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(err) => {
                    skip(&mut cleaned, &path, err);
                    continue;
                }
            };
            if file_type.is_dir() {
                dirs.push(path);
            } else if file_type.is_file() && is_tmp_name(&entry.file_name()) {
                match fs::remove_file(&path) {
                    Ok(()) => cleaned.removed += 1,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => skip(&mut cleaned, &path, err),
                }
            }
        }
    }
    Ok(cleaned)
}

/// True for names made by [`tmp_name`]: `.<name>.tmp-<id>`.
pub fn is_tmp_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    match rest.rfind(TMP_MARKER) {
        Some(at) if at > 0 => {
            let id = &rest[at + TMP_MARKER.len()..];
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

/// Joins an untrusted relative path onto `root`. Rejects empty, absolute, `.` and `..`
/// components, and any existing component under `root` that is a symlink (so a symlink planted
/// in the outbox cannot redirect a write outside it).
pub fn safe_join(root: &Path, rel: &Path) -> Result<PathBuf, OutputError> {
    let unsafe_path = |reason| OutputError::UnsafePath {
        path: rel.to_path_buf(),
        reason,
    };
    let text = rel.as_os_str().as_encoded_bytes();
    if text.is_empty() {
        return Err(unsafe_path("empty path"));
    }
    if rel.is_absolute() || text.first() == Some(&b'/') {
        return Err(unsafe_path("absolute path"));
    }
    if text.windows(2).any(|w| w == b"//") || text.last() == Some(&b'/') {
        return Err(unsafe_path("empty path component"));
    }
    let mut path = root.to_path_buf();
    let mut checking = true;
    for component in rel.components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::ParentDir => return Err(unsafe_path("`..` component")),
            Component::CurDir => return Err(unsafe_path("`.` component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("absolute path"));
            }
        }
        if checking {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(unsafe_path("symlink in path"));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => checking = false,
                Err(err) => return Err(OutputError::io(&path, err)),
            }
        }
    }
    // `a/./b` is normalised away by `components`; refuse it explicitly.
    if rel.components().count() != text.split(|b| *b == b'/').count() {
        return Err(unsafe_path("`.` component"));
    }
    Ok(path)
}

/// Writes `bytes` to `root/rel` atomically: a temp file in the same directory, `sync_all`,
/// rename over the final name, fsync of the directory. Never truncates in place.
pub fn write_atomic(
    root: &Path,
    rel: &Path,
    bytes: &[u8],
    policy: ExistsPolicy,
) -> Result<Written, OutputError> {
    let path = safe_join(root, rel)?;
    let (dir, name) = split_dir_name(&path)?;
    create_dirs_synced(dir)?;
    // Created directories may not be symlinks, but check again now they exist.
    safe_join(root, rel)?;
    // An empty file is no output to keep: `skip` replaces it (a crash of another tool, a
    // placeholder).
    let policy = match policy {
        ExistsPolicy::Skip if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) => {
            ExistsPolicy::Replace
        }
        policy => policy,
    };
    let skip_existing = |path: &Path| -> Result<Written, OutputError> {
        let meta = fs::metadata(path).map_err(|err| OutputError::io(path, err))?;
        Ok(Written {
            path: path.to_path_buf(),
            bytes: meta.len(),
            sha256: sha256_file(path).map_err(|err| OutputError::io(path, err))?,
            skipped: true,
        })
    };
    // `fail` refuses to replace a file; a file with these very bytes is not replaced (the
    // job's own output, written before a crash came between the write and its record).
    let identical = |path: &Path| -> Result<Written, OutputError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        // Only a regular file of the same size is read (never a FIFO, never a huge file).
        let same_size = fs::symlink_metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.len() == bytes.len() as u64);
        if same_size && sha256_file(path).is_ok_and(|theirs| theirs == sha256) {
            sync_dir(dir)?;
            return Ok(Written {
                path: path.to_path_buf(),
                bytes: bytes.len() as u64,
                sha256,
                skipped: false,
            });
        }
        Err(OutputError::Exists {
            path: path.to_path_buf(),
        })
    };
    if policy != ExistsPolicy::Replace && exists(&path)? {
        return match policy {
            ExistsPolicy::Skip => skip_existing(&path),
            _ => identical(&path),
        };
    }
    let tmp = write_tmp(dir, name, |w| w.write_all(bytes))?;
    let placed = match policy {
        ExistsPolicy::Replace => fs::rename(&tmp, &path).map(|()| true),
        // A hard link never replaces an existing file; fall back to rename where links are
        // not supported (the existence check above covers that case).
        ExistsPolicy::Skip | ExistsPolicy::Fail => match fs::hard_link(&tmp, &path) {
            Ok(()) => fs::remove_file(&tmp).map(|()| true),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(_) => fs::rename(&tmp, &path).map(|()| true),
        },
    };
    let placed = match placed {
        Ok(placed) => placed,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(OutputError::io(&path, err));
        }
    };
    if !placed {
        let _ = fs::remove_file(&tmp);
        return match policy {
            ExistsPolicy::Skip => skip_existing(&path),
            _ => identical(&path),
        };
    }
    sync_dir(dir)?;
    Ok(Written {
        path,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        skipped: false,
    })
}

/// What in the outbox would refuse the output `rel` now, looked at just before Claid is paid
/// for it: something else than a folder where a folder of its path goes (`output-not-a-
/// directory`), a link on its way (`output-unsafe-path`), or a folder where the file goes
/// (`output-is-a-directory`). Intake checked the same, but the outbox may change while an
/// image waits; every write into such a path would fail, after the edit was billed. Costs one
/// `lstat` of the output and one of each folder on its way up to the outbox (a link above a
/// present folder is on the way too; two, for an output one folder deep). `None` when nothing
/// is in the way (or what is there cannot be looked at: the writer reports that).
pub fn blocked_way(outbox: &Path, rel: &str) -> Option<(FailureCode, String)> {
    let output = outbox.join(rel);
    if fs::symlink_metadata(&output).is_ok_and(|meta| meta.is_dir()) {
        return Some((
            FailureCode::OutputIsADirectory,
            format!(
                "{} in the outbox is a folder, where this image's output file goes",
                Escaped::path(&output)
            ),
        ));
    }
    match in_the_way(&output, outbox)? {
        (folder, InTheWay::Link) => Some((
            FailureCode::OutputUnsafePath,
            format!(
                "{} in the outbox is a symbolic link, and outputs are never written through links",
                Escaped::path(folder)
            ),
        )),
        (folder, InTheWay::NoFolder) => Some((
            FailureCode::OutputNotADirectory,
            format!(
                "{} in the outbox is a file, where a folder of this image's output path goes",
                Escaped::path(folder)
            ),
        )),
    }
}

/// What stands where a folder of a path must be ([`in_the_way`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InTheWay {
    /// A symbolic link (never followed on the way to an output).
    Link,
    /// A file, or anything else that is no folder.
    NoFolder,
}

/// The first of `path`'s folders, nearest first, up to `top` (not included), that is there and
/// is no folder: what refuses a write (or a move) to `path`. `None` when each one present is a
/// folder, or when one cannot be looked at (whoever writes reports that). Shared by the
/// outbox's check before a submit ([`blocked_way`]) and the archive's error
/// (`pipeline::finisher`).
pub fn in_the_way<'a>(path: &'a Path, top: &Path) -> Option<(&'a Path, InTheWay)> {
    for folder in path
        .ancestors()
        .skip(1)
        .take_while(|folder| folder.starts_with(top) && *folder != top)
    {
        match fs::symlink_metadata(folder) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => return Some((folder, InTheWay::Link)),
            Ok(_) => return Some((folder, InTheWay::NoFolder)),
            // Missing, or under a file (ENOTDIR): that file is found further up.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Hex SHA-256 of a file's contents, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Moves a refused file `src` (under `inbox`) into `rejected` as [`move_mirrored`] does (flat
/// when too deep there for its error file too, [`fitting_rel`]) and writes
/// `text` beside it as `<name>.error.txt`: the name as it is (bytes that are not UTF-8
/// included, so two such names keep two error files), shortened with a hash when too long
/// for the suffix (see `filename`). Returns where the file went, and whether its error file
/// could be written (a full disk takes the move, a rename, and refuses the new file: the
/// caller must then say the problems elsewhere, or they are lost).
pub fn move_rejected(
    inbox: &Path,
    src: &Path,
    rejected: &Path,
    text: &str,
) -> Result<(PathBuf, Result<(), OutputError>), OutputError> {
    let rel = fitting_rel(
        rejected,
        rel_under(inbox, src)?,
        crate::filename::ERROR_SUFFIX.len(),
    );
    let dest = move_into(src, rejected, &rel)?;
    let name = dest.file_name().unwrap_or_default().to_owned();
    let error_name = crate::filename::error_file_name(&name, &crate::filename::FsLimits::of(&dest));
    let written = write_text_atomic(&dest.with_file_name(error_name), text);
    Ok((dest, written))
}

/// Where under `root` a file moved from `rel` (relative to its own root) goes: the same relative
/// path, unless that path, with a `.N` taken-name suffix, `beside` more bytes for a file
/// written next to it (an error file's suffix) and the temporary name of an atomic write,
/// would not fit `PATH_MAX` (a deep inbox tree moved into a folder whose own path is longer):
/// then it goes flat into the top of `root`, as `<8 hex of the sha256 of rel>~<name>` (the
/// name shortened, as `filename` says, when it is long), so the manifest is still moved and
/// its error file still written. Error files and logs name the original path.
pub fn fitting_rel(root: &Path, rel: &Path, beside: usize) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    let limits = crate::filename::FsLimits::of(root);
    let name = rel.file_name().unwrap_or_else(|| OsStr::new("manifest"));
    // `.9999` is the longest suffix `move_into` gives a taken name.
    let taken = ".9999".len();
    let name_part = (name.len() + taken + beside).min(limits.max_final_name())
        + crate::filename::TMP_NAME_OVERHEAD;
    let dir_len = root
        .join(rel)
        .parent()
        .map_or(0, |dir| dir.as_os_str().len());
    if dir_len + 1 + name_part < limits.path_max {
        return rel.to_path_buf();
    }
    let hash = hex::encode(Sha256::digest(rel.as_os_str().as_bytes()));
    let mut flat = OsString::from(&hash[..crate::filename::SHORT_HASH_HEX]);
    flat.push("~");
    let room = limits
        .max_final_name()
        .saturating_sub(flat.len() + taken + beside);
    flat.push(crate::filename::shortened_to(name, room));
    PathBuf::from(flat)
}

/// Moves `src` (a file under `src_root`) to the same relative path under `dst_root`, creating
/// directories. Never overwrites: `shoes.yaml` becomes `shoes.1.yaml`, `shoes.2.yaml`, … when
/// taken; a path too long for `PATH_MAX` there goes flat into `dst_root` ([`fitting_rel`]).
/// Renames, or copies + fsyncs + removes across filesystems. Returns the new path.
///
/// A symlink is moved as a link: its target is never read, written or moved (across file
/// systems the link is re-created at the destination).
pub fn move_mirrored(src_root: &Path, src: &Path, dst_root: &Path) -> Result<PathBuf, OutputError> {
    move_into(
        src,
        dst_root,
        &fitting_rel(dst_root, rel_under(src_root, src)?, 0),
    )
}

/// `src` relative to `root`, or refused when it is not under it.
fn rel_under<'a>(root: &Path, src: &'a Path) -> Result<&'a Path, OutputError> {
    src.strip_prefix(root).map_err(|_| OutputError::UnsafePath {
        path: src.to_path_buf(),
        reason: "not under the source folder",
    })
}

/// [`move_mirrored`] to `rel` under `dst_root` (another name than the source's).
pub fn move_into(src: &Path, dst_root: &Path, rel: &Path) -> Result<PathBuf, OutputError> {
    let first = safe_join(dst_root, rel)?;
    let (dir, name) = split_dir_name(&first)?;
    create_dirs_synced(dir)?;
    safe_join(dst_root, rel)?;
    for n in 0..MAX_SUFFIX {
        let candidate = if n == 0 {
            first.clone()
        } else {
            dir.join(suffixed(name, n))
        };
        if exists(&candidate)? {
            continue;
        }
        match fs::rename(src, &candidate) {
            Ok(()) => {}
            Err(err) if is_cross_device(&err) => {
                if !copy_new(src, &candidate)? {
                    continue;
                }
                fs::remove_file(src).map_err(|err| OutputError::io(src, err))?;
            }
            Err(err) => return Err(OutputError::io(src, err)),
        }
        sync_dir(dir)?;
        if let Some(src_dir) = src.parent() {
            sync_dir(src_dir)?;
        }
        return Ok(candidate);
    }
    Err(OutputError::Exists { path: first })
}

/// Writes a whole text file atomically (temp file in the same directory, fsync, rename,
/// fsync of the directory), creating parent directories.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<(), OutputError> {
    write_atomic_with(path, |w| w.write_all(text.as_bytes()))
}

/// Replaces `path` atomically with what `fill` writes (buffered): temp file, `sync_all`,
/// rename, fsync of the directory. For files too large to build in memory first (reports).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), OutputError> {
    let (dir, name) = split_dir_name(path)?;
    create_dirs_synced(dir)?;
    let tmp = write_tmp(dir, name, fill)?;
    if let Err(err) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(OutputError::io(path, err));
    }
    sync_dir(dir)
}

/// The temp name for a final name: `.<name>.tmp-<random>`.
pub fn tmp_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{TMP_MARKER}{:016x}", rand::random::<u64>()));
    tmp
}

fn split_dir_name(path: &Path) -> Result<(&Path, &OsStr), OutputError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(OutputError::UnsafePath {
            path: path.to_path_buf(),
            reason: "no file name",
        }),
    }
}

/// Creates a fresh temp file next to the final name, writes and syncs it; removes it again
/// on failure.
fn write_tmp(
    dir: &Path,
    name: &OsStr,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<PathBuf, OutputError> {
    let tmp = dir.join(tmp_name(name));
    let res = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|file| {
            let mut buffered = io::BufWriter::with_capacity(64 * 1024, file);
            fill(&mut buffered)?;
            let file = buffered
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            file.sync_all()
        });
    match res {
        Ok(()) => Ok(tmp),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            Err(OutputError::io(&tmp, err))
        }
    }
}

/// Copies `src` to `dst` only if `dst` does not exist yet, syncing it. `Ok(false)` when taken.
/// A symlink is copied as a link (its target is not opened).
fn copy_new(src: &Path, dst: &Path) -> Result<bool, OutputError> {
    let meta = fs::symlink_metadata(src).map_err(|err| OutputError::io(src, err))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(|err| OutputError::io(src, err))?;
        return match std::os::unix::fs::symlink(&target, dst) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(OutputError::io(dst, err)),
        };
    }
    let mut out = match OpenOptions::new().write(true).create_new(true).open(dst) {
        Ok(out) => out,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(err) => return Err(OutputError::io(dst, err)),
    };
    let res = File::open(src)
        .and_then(|mut input| io::copy(&mut input, &mut out))
        .and_then(|_| out.sync_all());
    if let Err(err) = res {
        let _ = fs::remove_file(dst);
        return Err(OutputError::io(dst, err));
    }
    Ok(true)
}

fn is_cross_device(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::CrossesDevices || err.raw_os_error() == Some(libc::EXDEV)
}

/// `shoes.yaml` → `shoes.<n>.yaml`; `README` → `README.<n>`; `.hidden` → `.hidden.<n>`.
fn suffixed(name: &OsStr, n: u32) -> OsString {
    let path = Path::new(name);
    let (stem, tail) = match (path.file_stem(), path.extension()) {
        (Some(stem), Some(ext)) => {
            let mut tail = OsString::from(format!(".{n}."));
            tail.push(ext);
            (stem.to_os_string(), tail)
        }
        _ => (name.to_os_string(), OsString::from(format!(".{n}"))),
    };
    // A name at the file system's limit has no room for `.N`: its stem is shortened as long
    // report and error names are, so a version of a manifest with a long name can still be
    // archived.
    let stem = crate::filename::shortened_to(&stem, NAME_MAX.saturating_sub(tail.len()));
    let mut out = stem;
    out.push(tail);
    out
}

/// The longest file name Linux file systems take (bytes).
const NAME_MAX: usize = 255;

/// `create_dir_all`, then fsync the parent of every directory it created, so a new directory
/// entry survives a crash together with the file renamed into it.
fn create_dirs_synced(dir: &Path) -> Result<(), OutputError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(path) = cur {
        if exists(path)? {
            break;
        }
        missing.push(path);
        cur = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|err| OutputError::io(dir, err))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn exists(path: &Path) -> Result<bool, OutputError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(OutputError::io(path, err)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| OutputError::io(dir, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What stands in an output's way is found at any depth: a file two folders up (under
    /// it, the path's folders answer ENOTDIR), a link above a folder that is there (looked at
    /// through the link, that folder is one), a folder where the file goes.
    #[test]
    fn what_blocks_an_outputs_way_is_found_at_any_depth() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("out");
        fs::create_dir_all(outbox.join("ok/deep")).expect("folders");
        assert_eq!(blocked_way(&outbox, "ok/deep/x.jpg"), None);
        assert_eq!(blocked_way(&outbox, "new/deeper/x.jpg"), None);
        fs::write(outbox.join("file"), b"x").expect("file");
        assert_eq!(
            blocked_way(&outbox, "file/a/b/x.jpg").map(|(code, _)| code),
            Some(FailureCode::OutputNotADirectory)
        );
        fs::create_dir_all(dir.path().join("elsewhere/sub")).expect("elsewhere");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), outbox.join("link"))
            .expect("link");
        assert_eq!(
            blocked_way(&outbox, "link/sub/x.jpg").map(|(code, _)| code),
            Some(FailureCode::OutputUnsafePath)
        );
        fs::create_dir_all(outbox.join("ok/deep/x.jpg")).expect("folder");
        assert_eq!(
            blocked_way(&outbox, "ok/deep/x.jpg").map(|(code, _)| code),
            Some(FailureCode::OutputIsADirectory)
        );
    }

    #[test]
    fn a_manifest_with_a_name_at_the_limit_can_be_archived_again() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, archive) = (dir.path().join("in"), dir.path().join("arch"));
        fs::create_dir_all(&inbox).expect("inbox");
        // 254 bytes: `.1.yaml` would not fit.
        let name = format!("{}.yaml", "q".repeat(249));
        for version in ["v1", "v2"] {
            fs::write(inbox.join(&name), version).expect("write");
            let moved = move_mirrored(&inbox, &inbox.join(&name), &archive).expect("moved");
            assert_eq!(fs::read_to_string(&moved).expect("read"), version);
            assert!(moved.file_name().expect("name").len() <= NAME_MAX);
        }
        let names: Vec<String> = fs::read_dir(&archive)
            .expect("archive")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.contains('~') && n.ends_with(".1.yaml")),
            "{names:?}"
        );
    }

    /// A manifest deep in the inbox whose mirrored path would be too long where it goes (a
    /// longer folder name there) is still archived: flat, at the top, named after its path.
    #[test]
    fn a_manifest_too_deep_for_the_archive_goes_flat_at_its_top() {
        let dir = tempfile::tempdir().expect("dir");
        let (inbox, archive) = (dir.path().join("in"), dir.path().join("archive-longer"));
        // The manifest's path is 4,070 bytes: 4,081 under the archive, no room for `.N` and
        // a temporary name within PATH_MAX.
        let mut rel = PathBuf::new();
        let mut len = inbox.as_os_str().len() + "/m.yaml".len();
        while len < 4070 {
            let seg = (4070 - len - 1).min(200);
            len += 1 + seg;
            rel.push("f".repeat(seg));
        }
        let rel = rel.join("m.yaml");
        assert_eq!(inbox.join(&rel).as_os_str().len(), 4070);
        fs::create_dir_all(inbox.join(&rel).parent().expect("dir")).expect("inbox");
        fs::write(inbox.join(&rel), "v1").expect("write");
        assert_eq!(
            fitting_rel(&inbox, Path::new("a/m.yaml"), 0),
            Path::new("a/m.yaml")
        );
        let moved = move_mirrored(&inbox, &inbox.join(&rel), &archive).expect("moved");
        assert_eq!(moved.parent(), Some(archive.as_path()));
        let name = moved
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let hash = hex::encode(Sha256::digest(rel.as_os_str().as_encoded_bytes()));
        assert_eq!(name, format!("{}~m.yaml", &hash[..8]));
        assert_eq!(fs::read_to_string(&moved).expect("read"), "v1");
    }

    #[test]
    fn tmp_names_are_recognised() {
        let tmp = tmp_name(OsStr::new("a.webp"));
        assert!(is_tmp_name(&tmp), "{tmp:?}");
        for name in [
            "a.webp",
            ".hidden",
            ".a.tmp-",
            "a.tmp-123",
            ".tmp-123",
            ".a.tmp-x.y",
        ] {
            assert!(!is_tmp_name(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn suffixes_go_before_the_extension() {
        assert_eq!(suffixed(OsStr::new("shoes.yaml"), 2), "shoes.2.yaml");
        assert_eq!(suffixed(OsStr::new("README"), 1), "README.1");
        assert_eq!(suffixed(OsStr::new(".hidden"), 1), ".hidden.1");
    }
}
