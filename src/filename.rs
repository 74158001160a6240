//! File-name limits of the filesystem a file is written to, and the names of the files the
//! daemon derives from a manifest's own name: its reports and its error file.
//!
//! Every file the daemon writes goes through a temporary name first (`output::tmp_name`:
//! `.<name>.tmp-<16 hex>`, [`TMP_NAME_OVERHEAD`] bytes longer than the final name), so a final
//! name fits only when it is that much shorter than the filesystem's `NAME_MAX`, and a final
//! path only when it is that much shorter than `PATH_MAX`.
//!
//! A derived name that would not fit is shortened, never refused, so every manifest gets its
//! report or error file (see [`derived_name`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes `output::tmp_name` adds to a final name: the leading `.`, `.tmp-` and 16 hex digits.
pub const TMP_NAME_OVERHEAD: usize = 1 + ".tmp-".len() + 16;

/// `NAME_MAX` when the filesystem cannot be asked: what ext4, xfs, btrfs and tmpfs allow.
pub const FALLBACK_NAME_MAX: usize = 255;

/// `PATH_MAX` of Linux, with the terminating NUL: the longest path a system call takes.
/// No filesystem has its own (pathconf returns this constant), so it is never asked.
pub const PATH_MAX: usize = 4096;

/// Hex digits of the sha256 kept in a shortened name.
pub const SHORT_HASH_HEX: usize = 8;

/// Suffix of the error file written beside a rejected manifest (`shoes.yaml.error.txt`).
pub const ERROR_SUFFIX: &str = ".error.txt";

/// Suffixes of a manifest's reports (`shoes.report.json`, `shoes.report.csv`).
pub const REPORT_JSON_SUFFIX: &str = ".report.json";
pub const REPORT_CSV_SUFFIX: &str = ".report.csv";

/// The name limits of one filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsLimits {
    /// Longest file name, in bytes (`NAME_MAX`, statvfs `f_namemax`).
    pub name_max: usize,
    /// Longest path, in bytes, with the terminating NUL (`PATH_MAX`).
    pub path_max: usize,
    /// The existing folder whose filesystem was asked; `None` when the fallback is used.
    pub asked: Option<PathBuf>,
}

impl FsLimits {
    /// The limits assumed when no filesystem can be asked (255 / 4096).
    pub fn fallback() -> FsLimits {
        FsLimits {
            name_max: FALLBACK_NAME_MAX,
            path_max: PATH_MAX,
            asked: None,
        }
    }

    /// The limits of the filesystem that holds `path`, or would hold it once created: asked
    /// (statvfs) of its nearest existing ancestor; the fallback when none can be asked.
    pub fn of(path: &Path) -> FsLimits {
        let mut dir = Some(path);
        while let Some(candidate) = dir {
            if candidate.as_os_str().is_empty() {
                break;
            }
            match rustix::fs::statvfs(candidate) {
                Ok(stat) => {
                    let name_max = usize::try_from(stat.f_namemax).unwrap_or(FALLBACK_NAME_MAX);
                    return FsLimits {
                        name_max: if name_max == 0 {
                            FALLBACK_NAME_MAX
                        } else {
                            name_max
                        },
                        path_max: PATH_MAX,
                        asked: Some(candidate.to_owned()),
                    };
                }
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                    dir = candidate.parent();
                }
                Err(_) => break,
            }
        }
        FsLimits::fallback()
    }

    /// Longest final name that fits with its temporary name.
    pub fn max_final_name(&self) -> usize {
        self.name_max.saturating_sub(TMP_NAME_OVERHEAD)
    }

    /// Longest final path (bytes, without the NUL) that fits with its temporary name.
    pub fn max_final_path(&self) -> usize {
        self.path_max
            .saturating_sub(1)
            .saturating_sub(TMP_NAME_OVERHEAD)
    }

    /// Where `name_max` comes from, for messages: `NAME_MAX of the filesystem of /srv/outbox`.
    pub fn source(&self) -> String {
        match &self.asked {
            Some(dir) => format!("NAME_MAX of the filesystem of {}", dir.display()),
            None => "NAME_MAX assumed: the filesystem could not be asked".to_owned(),
        }
    }
}

/// The name of a file derived from `base` by appending `suffix`: `base` + `suffix` when that
/// fits `limits` with the temporary name, else a shortened name that does.
///
/// The shortened name is the longest prefix of `base` that leaves room (cut back to a
/// character boundary when `base` is UTF-8), `~`, the first [`SHORT_HASH_HEX`] hex digits of the
/// sha256 of the whole `base`, then `suffix`: `a-very-long-…-name~3f2a9c1b.error.txt`. So it is
/// deterministic, never longer than `name_max` minus [`TMP_NAME_OVERHEAD`], and two names that
/// share the prefix still differ (unless their hashes collide, one chance in 2³²). A name of
/// exactly that form written by a user could meet a shortened one; nobody writes those.
pub fn derived_name(base: &OsStr, suffix: &str, limits: &FsLimits) -> OsString {
    let mut name = shortened(base, suffix.len(), limits);
    name.push(suffix);
    name
}

/// `rejected/<name>.error.txt` beside a rejected manifest or image named `manifest_name`.
pub fn error_file_name(manifest_name: &OsStr, limits: &FsLimits) -> OsString {
    derived_name(manifest_name, ERROR_SUFFIX, limits)
}

/// A manifest's two reports, relative to the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportNames {
    pub json: PathBuf,
    pub csv: PathBuf,
}

/// The reports of the manifest at `manifest_rel` (inbox-relative): `a/b/shoes.yaml` →
/// `a/b/shoes.report.json` and `a/b/shoes.report.csv`. A stem too long for the suffixes is
/// shortened as [`derived_name`] says, the same way for both, so they keep one stem.
pub fn report_names(manifest_rel: &Path, limits: &FsLimits) -> ReportNames {
    report_names_tagged(manifest_rel, limits, None)
}

/// [`report_names`] with `tag` before the suffix when given: `shoes.<tag>.report.json` (the
/// reports of a run a newer version of its file replaced keep their own names).
pub fn report_names_tagged(
    manifest_rel: &Path,
    limits: &FsLimits,
    tag: Option<&str>,
) -> ReportNames {
    let stem = manifest_rel
        .file_stem()
        .unwrap_or_else(|| OsStr::new("manifest"));
    let dir = manifest_rel.parent().unwrap_or(Path::new(""));
    let tag = tag.map(|tag| format!(".{tag}")).unwrap_or_default();
    let longest = tag.len() + REPORT_JSON_SUFFIX.len().max(REPORT_CSV_SUFFIX.len());
    let stem = shortened(stem, longest, limits);
    let with = |suffix: &str| {
        let mut name = stem.clone();
        name.push(&tag);
        name.push(suffix);
        dir.join(name)
    };
    ReportNames {
        json: with(REPORT_JSON_SUFFIX),
        csv: with(REPORT_CSV_SUFFIX),
    }
}

/// `base`, or its shortened form, so that a suffix of `suffix_len` bytes still fits.
fn shortened(base: &OsStr, suffix_len: usize, limits: &FsLimits) -> OsString {
    shortened_to(base, limits.max_final_name().saturating_sub(suffix_len))
}

/// `base` if it has at most `room` bytes, else its first bytes (never a split UTF-8
/// character), `~` and [`SHORT_HASH_HEX`] hex digits of its sha256, within `room`.
pub fn shortened_to(base: &OsStr, room: usize) -> OsString {
    let bytes = base.as_bytes();
    if bytes.len() <= room {
        return base.to_owned();
    }
    let mut keep = room.saturating_sub(1 + SHORT_HASH_HEX).min(bytes.len());
    // Never split a UTF-8 character: cut back to the start of the one the cut falls in.
    if std::str::from_utf8(bytes).is_ok() {
        while keep > 0 && (bytes[keep] & 0b1100_0000) == 0b1000_0000 {
            keep -= 1;
        }
    }
    let hash = hex::encode(Sha256::digest(bytes));
    let mut out = bytes[..keep].to_vec();
    out.push(b'~');
    out.extend_from_slice(&hash.as_bytes()[..SHORT_HASH_HEX]);
    OsString::from_vec(out)
}

/// A hidden name beside `path` (the watcher skips names starting with `.`): `.NAME<suffix>`,
/// NAME shortened ([`shortened_to`]) so that the whole and `spare` more bytes (a temporary
/// name's own suffix) fit the folder's `NAME_MAX`; the same path always gives the same name.
pub fn hidden_beside(path: &Path, suffix: &str, spare: usize) -> PathBuf {
    let name = path.file_name().unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new(""));
    let room = FsLimits::of(dir)
        .name_max
        .saturating_sub(1 + suffix.len() + spare);
    let mut hidden = OsString::from(".");
    hidden.push(shortened_to(name, room));
    hidden.push(suffix);
    path.with_file_name(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept() {
        let limits = FsLimits::fallback();
        assert_eq!(
            error_file_name(OsStr::new("shoes.yaml"), &limits),
            "shoes.yaml.error.txt"
        );
        assert_eq!(
            report_names(Path::new("a/b/shoes.yaml"), &limits),
            ReportNames {
                json: PathBuf::from("a/b/shoes.report.json"),
                csv: PathBuf::from("a/b/shoes.report.csv"),
            }
        );
    }

    #[test]
    fn a_name_at_the_limit_is_kept_and_one_byte_more_is_shortened() {
        let limits = FsLimits::fallback();
        let room = 255 - TMP_NAME_OVERHEAD - ERROR_SUFFIX.len();
        let fits = "a".repeat(room);
        assert_eq!(
            error_file_name(OsStr::new(&fits), &limits),
            OsString::from(format!("{fits}{ERROR_SUFFIX}"))
        );
        let over = "a".repeat(room + 1);
        let name = error_file_name(OsStr::new(&over), &limits);
        assert_eq!(name.len(), 255 - TMP_NAME_OVERHEAD);
        let text = name.to_str().expect("UTF-8");
        let (head, tail) = text.rsplit_once('~').expect("a `~`");
        assert!(over.starts_with(head));
        assert_eq!(tail.len(), SHORT_HASH_HEX + ERROR_SUFFIX.len());
        let hash = hex::encode(Sha256::digest(over.as_bytes()));
        assert_eq!(&tail[..SHORT_HASH_HEX], &hash[..SHORT_HASH_HEX]);
    }

    #[test]
    fn multibyte_characters_are_not_split() {
        let limits = FsLimits::fallback();
        let name = error_file_name(OsStr::new(&"é".repeat(200)), &limits);
        let text = name.to_str().expect("still UTF-8");
        assert!(text.len() <= 255 - TMP_NAME_OVERHEAD);
        assert!(text.starts_with("éé"));
    }

    #[test]
    fn both_reports_keep_one_stem() {
        let limits = FsLimits::fallback();
        let rel = PathBuf::from(format!("dir/{}.yaml", "r".repeat(250)));
        let names = report_names(&rel, &limits);
        let json = names
            .json
            .file_name()
            .expect("name")
            .to_str()
            .expect("utf8");
        let csv = names.csv.file_name().expect("name").to_str().expect("utf8");
        assert_eq!(
            json.strip_suffix(REPORT_JSON_SUFFIX),
            csv.strip_suffix(REPORT_CSV_SUFFIX)
        );
        assert!(json.len() + TMP_NAME_OVERHEAD <= 255);
        assert_eq!(names.json.parent(), Some(Path::new("dir")));
    }

    #[test]
    fn limits_are_asked_of_the_nearest_existing_folder() {
        let dir = tempfile::tempdir().expect("temp");
        let limits = FsLimits::of(&dir.path().join("not/yet/there"));
        assert_eq!(limits.asked.as_deref(), Some(dir.path()));
        assert!(limits.name_max >= 14, "{limits:?}");
        assert_eq!(limits.path_max, PATH_MAX);
    }
}
