//! What the outbox can hold, checked at validation so that an output that could never be
//! written is refused before Claid bills its edit: no symbolic link on the way (`output`
//! refuses to write through one), and names within the outbox filesystem's `NAME_MAX` and
//! `PATH_MAX`, counting the temporary name every write goes through
//! ([`crate::filename::TMP_NAME_OVERHEAD`]), and nothing of another kind in the way (a file
//! where a folder of the output's path goes, a folder where the output itself goes): Claid
//! would bill the edit and the result could not be delivered. One that appears after
//! validation fails its job without a submit when it is there before the submit
//! ([`crate::output::blocked_way`]), else when the result is written (`output-not-a-directory`,
//! `output-is-a-directory`).
//!
//! Each folder is looked at once per manifest (one `lstat` per folder on the way, one listing of
//! the folder outputs go into), so a 100,000-image manifest costs a few system calls, not
//! 100,000. A link created after validation is still refused when the output is written.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::filename::{FsLimits, TMP_NAME_OVERHEAD};

/// The outbox of one validation, with what has been seen of it.
pub struct Outbox<'a> {
    /// `None` when validating without a config (`validate FILE`): only lengths are checked,
    /// against the fallback limits.
    root: Option<&'a Path>,
    limits: FsLimits,
    /// Folders (relative to the root) already looked at.
    folders: HashMap<PathBuf, Folder>,
}

/// What a folder on an output's way is.
enum Folder {
    /// Not there yet (or not a folder yet: the writer retries until it is): nothing below it
    /// can be checked now.
    Missing,
    /// A folder; the names in it that are symbolic links or folders, read when an output goes
    /// into it (`None` until then).
    Present(Option<Entries>),
    /// A symbolic link, or something else than a folder: no output may go through it; the
    /// message says what to do.
    Blocked(String),
}

/// The names in a folder that an output cannot be written at.
#[derive(Default)]
struct Entries {
    links: HashSet<OsString>,
    folders: HashSet<OsString>,
}

/// Where an output's name comes from, which decides the fix a problem suggests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// The image's own `output`.
    Given,
    /// Derived from the input's name.
    FromInput,
}

impl Naming {
    /// The fix for a name that is too long.
    fn shorten(self) -> &'static str {
        match self {
            Naming::Given => "shorten this image's `output`",
            Naming::FromInput => "set a shorter `output` for this image",
        }
    }

    /// The alternative to clearing an obstacle in the outbox.
    fn elsewhere(self) -> &'static str {
        match self {
            Naming::Given => ", or change this image's `output`",
            Naming::FromInput => ", or set another `output` for this image",
        }
    }
}

impl<'a> Outbox<'a> {
    /// The outbox at `root`; its filesystem's limits are asked once, here.
    pub fn new(root: Option<&'a Path>) -> Outbox<'a> {
        let limits = root.map_or_else(FsLimits::fallback, FsLimits::of);
        Outbox {
            root,
            limits,
            folders: HashMap::new(),
        }
    }

    /// The name limits outputs are checked against.
    pub fn limits(&self) -> &FsLimits {
        &self.limits
    }

    /// Whether an output can be written at `rel` (relative to the outbox); else the problem
    /// and its fix.
    pub fn check_output(&mut self, rel: &Path, naming: Naming) -> Result<(), String> {
        self.check_lengths(rel, naming)?;
        let fix = naming.elsewhere();
        let Some(root) = self.root else {
            return Ok(());
        };
        let Some(name) = rel.file_name() else {
            return Ok(());
        };
        let Some(folder) = self.folders_on_the_way(root, rel, fix)? else {
            return Ok(());
        };
        let entries = self.entries(root, &folder);
        if entries.links.contains(name) {
            return Err(format!(
                "{} in the outbox is a symbolic link, and outputs are never written through links: remove the link{fix}",
                root.join(rel).display()
            ));
        }
        if entries.folders.contains(name) {
            return Err(format!(
                "{} in the outbox is a folder, where this image's output file goes: move the folder away{fix}",
                root.join(rel).display()
            ));
        }
        Ok(())
    }

    /// Whether a report can be written at `rel`: its path within `PATH_MAX` (its name is
    /// shortened to fit `NAME_MAX` by `filename::report_names`), no symbolic link on its way,
    /// and neither a link nor a folder where it goes (a run would be billed and end with no
    /// report).
    pub fn check_report(&mut self, rel: &Path) -> Result<(), String> {
        let full = self.full_len(rel);
        let max = self.limits.max_final_path();
        if full > max {
            return Err(format!(
                "the report {} would be a path of {full} bytes, and with the temporary name of its atomic write ({TMP_NAME_OVERHEAD} bytes more) it is longer than PATH_MAX ({} bytes); move the manifest to a folder nearer the top of the inbox, or use a shorter outbox path",
                rel.display(),
                self.limits.path_max
            ));
        }
        let Some(root) = self.root else {
            return Ok(());
        };
        let Some(name) = rel.file_name() else {
            return Ok(());
        };
        let fix = "; the manifest's reports are written there, beside its folder in the outbox: remove it, or rename the manifest";
        let Some(folder) = self.folders_on_the_way(root, rel, fix)? else {
            return Ok(());
        };
        let entries = self.entries(root, &folder);
        if entries.links.contains(name) {
            return Err(format!(
                "the report {} in the outbox is a symbolic link, and reports are never written through links{fix}",
                root.join(rel).display()
            ));
        }
        if entries.folders.contains(name) {
            return Err(format!(
                "the report {} is a folder in the outbox{fix}",
                root.join(rel).display()
            ));
        }
        Ok(())
    }

    fn full_len(&self, rel: &Path) -> usize {
        match self.root {
            Some(root) => root.join(rel).as_os_str().len(),
            None => rel.as_os_str().len(),
        }
    }

    fn check_lengths(&self, rel: &Path, naming: Naming) -> Result<(), String> {
        let fix = naming.shorten();
        let limits = &self.limits;
        let mut parts = rel.components().peekable();
        while let Some(part) = parts.next() {
            let name = part.as_os_str();
            let is_file = parts.peek().is_none();
            if is_file && name.len() > limits.max_final_name() {
                return Err(format!(
                    "the file name `{}` is {} bytes: with the {TMP_NAME_OVERHEAD} bytes of the temporary name every output is written under first (`.<name>.tmp-<16 hex>`) it is longer than {} bytes ({}), so an output name may have at most {} bytes: {fix}",
                    shown(name),
                    name.len(),
                    limits.name_max,
                    limits.source(),
                    limits.max_final_name()
                ));
            }
            if !is_file && name.len() > limits.name_max {
                return Err(format!(
                    "the folder name `{}` is {} bytes, longer than {} bytes ({}): {fix}",
                    shown(name),
                    name.len(),
                    limits.name_max,
                    limits.source()
                ));
            }
        }
        let full = self.full_len(rel);
        if full > limits.max_final_path() {
            return Err(format!(
                "the output path is {full} bytes: with the {TMP_NAME_OVERHEAD} bytes of its temporary name it is longer than PATH_MAX ({} bytes), so it can have at most {} bytes: {fix}, or move the manifest nearer the top of the inbox",
                limits.path_max,
                limits.max_final_path()
            ));
        }
        Ok(())
    }

    /// The folders from the outbox down to `rel`'s folder, each looked at once: the last one
    /// when all are present, `None` when one is missing (nothing below it can be checked now),
    /// the problem (with `fix`) when one is a symbolic link.
    fn folders_on_the_way(
        &mut self,
        root: &Path,
        rel: &Path,
        fix: &str,
    ) -> Result<Option<PathBuf>, String> {
        let mut folder = PathBuf::new();
        let parts = rel
            .parent()
            .into_iter()
            .flat_map(Path::components)
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part),
                _ => None,
            });
        for part in std::iter::once(None).chain(parts.map(Some)) {
            if let Some(part) = part {
                folder.push(part);
            }
            match self.folder(root, &folder) {
                Folder::Missing => return Ok(None),
                Folder::Blocked(why) => return Err(format!("{why}{fix}")),
                Folder::Present(_) => {}
            }
        }
        Ok(Some(folder))
    }

    /// What the folder `rel` is (looked at once).
    fn folder(&mut self, root: &Path, rel: &Path) -> &Folder {
        self.folders.entry(rel.to_owned()).or_insert_with(|| {
            if rel.as_os_str().is_empty() {
                look_at_root(root)
            } else {
                look_at_folder(&root.join(rel))
            }
        })
    }

    /// The links and folders in the folder `rel`, listed once (none are known when it cannot
    /// be listed: the writer reports that).
    fn entries(&mut self, root: &Path, rel: &Path) -> &Entries {
        static NONE: std::sync::LazyLock<Entries> = std::sync::LazyLock::new(Entries::default);
        match self.folders.get_mut(rel) {
            Some(Folder::Present(entries)) => {
                entries.get_or_insert_with(|| list_entries(&root.join(rel)).unwrap_or_default())
            }
            // Only folders found present are asked about.
            Some(Folder::Missing | Folder::Blocked(_)) | None => &NONE,
        }
    }
}

/// The outbox itself may be a link (the operator's choice); only whether it is there matters.
fn look_at_root(root: &Path) -> Folder {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Folder::Present(None),
        _ => Folder::Missing,
    }
}

fn look_at_folder(path: &Path) -> Folder {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Folder::Blocked(format!(
            "{} in the outbox is a symbolic link, and outputs are never written through links: replace the link with a folder",
            path.display()
        )),
        Ok(meta) if meta.is_dir() => Folder::Present(None),
        Ok(_) => Folder::Blocked(format!(
            "{} in the outbox is a file, where a folder on the way goes: move the file away",
            path.display()
        )),
        // Not there, or not readable: the writer creates it, or reports (and retries) that.
        Err(_) => Folder::Missing,
    }
}

fn list_entries(dir: &Path) -> io::Result<Entries> {
    let mut entries = Entries::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            entries.links.insert(entry.file_name());
        } else if kind.is_dir() {
            entries.folders.insert(entry.file_name());
        }
    }
    Ok(entries)
}

/// A long name shortened for a message: its first 40 characters, `…`, its last 12.
fn shown(name: &OsStr) -> String {
    let text = name.to_string_lossy();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 60 {
        return text.into_owned();
    }
    let head: String = chars[..40].iter().collect();
    let tail: String = chars[chars.len() - 12..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_files_and_folders_in_the_way_are_named_with_their_fix() {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path();
        std::fs::create_dir_all(root.join("m/real")).expect("dirs");
        std::fs::create_dir_all(root.join("elsewhere")).expect("elsewhere");
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("m/link")).expect("link");
        std::os::unix::fs::symlink(root.join("elsewhere/x.jpg"), root.join("m/real/l.jpg"))
            .expect("file link");
        std::fs::write(root.join("m/file"), b"x").expect("file");
        std::fs::write(root.join("m/real/ok.jpg"), b"x").expect("existing output");
        let mut outbox = Outbox::new(Some(root));
        let fix = Naming::Given;
        assert_eq!(outbox.check_output(Path::new("m/real/ok.jpg"), fix), Ok(()));
        assert_eq!(outbox.check_output(Path::new("m/new/a/b.jpg"), fix), Ok(()));
        let err = outbox
            .check_output(Path::new("m/link/a.jpg"), fix)
            .unwrap_err();
        assert!(
            err.contains(&format!(
                "{} in the outbox is a symbolic link",
                root.join("m/link").display()
            )),
            "{err}"
        );
        assert!(err.ends_with(", or change this image's `output`"), "{err}");
        let err = outbox
            .check_output(Path::new("m/real/l.jpg"), fix)
            .unwrap_err();
        assert!(
            err.contains("m/real/l.jpg in the outbox is a symbolic link"),
            "{err}"
        );
        // A file where a folder goes, or a folder where the file goes: Claid would bill an edit
        // that cannot be delivered.
        let err = outbox
            .check_output(Path::new("m/file/a.jpg"), fix)
            .unwrap_err();
        assert!(
            err.contains(&format!(
                "{} in the outbox is a file, where a folder on the way goes",
                root.join("m/file").display()
            )),
            "{err}"
        );
        let err = outbox
            .check_output(Path::new("m/real"), Naming::FromInput)
            .unwrap_err();
        assert!(
            err.contains(&format!(
                "{} in the outbox is a folder, where this image's output file goes",
                root.join("m/real").display()
            )),
            "{err}"
        );
        assert!(
            err.ends_with(", or set another `output` for this image"),
            "{err}"
        );
    }

    #[test]
    fn names_count_the_temporary_name() {
        let mut outbox = Outbox::new(None);
        let max = 255 - TMP_NAME_OVERHEAD;
        let fits = format!("{}.jpg", "a".repeat(max - 4));
        assert_eq!(
            outbox.check_output(&Path::new("m").join(&fits), Naming::Given),
            Ok(())
        );
        let over = format!("{}.jpg", "a".repeat(max - 3));
        let err = outbox
            .check_output(&Path::new("m").join(&over), Naming::Given)
            .unwrap_err();
        assert!(err.contains(&format!("is {} bytes", max + 1)), "{err}");
        assert!(err.contains(&format!("at most {max} bytes")), "{err}");
        let folder = "f".repeat(256);
        let err = outbox
            .check_output(&Path::new(&folder).join("a.jpg"), Naming::FromInput)
            .unwrap_err();
        assert!(err.contains("the folder name"), "{err}");
        assert!(
            err.ends_with("set a shorter `output` for this image"),
            "{err}"
        );
        let deep: PathBuf = (0..41).map(|_| "d".repeat(100)).collect();
        let err = outbox
            .check_output(&deep.join("a.jpg"), Naming::Given)
            .unwrap_err();
        assert!(err.contains("PATH_MAX (4096 bytes)"), "{err}");
    }
}
