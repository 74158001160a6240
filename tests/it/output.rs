//! Tests for output: `safe_join`, atomic writes and their exists policies, stale temp cleanup,
//! `move_mirrored` collision suffixes.

use std::fs;
use std::path::Path;

use claid_hotfolder::output::{
    self, ExistsPolicy, OutputError, clean_stale_tmp, move_mirrored, safe_join, write_atomic,
    write_text_atomic,
};

/// Every file (not dir) under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// `expect`: `Ok(())` when the join is accepted (and stays under root), `Err(reason part)`.
fn check_safe_join(root: &Path, rel: &str, expect: Result<(), &str>) {
    match (safe_join(root, Path::new(rel)), expect) {
        (Ok(path), Ok(())) => {
            assert_eq!(path, root.join(rel), "{rel}");
        }
        (Err(err @ OutputError::UnsafePath { .. }), Err(reason)) => {
            assert_eq!(err.code(), "output-unsafe-path");
            assert!(err.to_string().contains(reason), "{rel}: {err}");
        }
        (res, expect) => panic!("{rel}: expected {expect:?}, got {res:?}"),
    }
}

#[test]
fn safe_join_table() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("outbox");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("real/dir")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("real/dir/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("f.webp"), root.join("file-link.webp")).unwrap();

    let table: &[(&str, Result<(), &str>)] = &[
        ("a.webp", Ok(())),
        ("a/b/c/sku-1.webp", Ok(())),
        ("real/dir/new.webp", Ok(())),
        ("real/dir/not/yet/made.png", Ok(())),
        ("..a/b..c/x.webp", Ok(())),
        ("", Err("empty path")),
        ("/etc/passwd", Err("absolute path")),
        ("../x.webp", Err("`..`")),
        ("a/../../x.webp", Err("`..`")),
        ("a/..", Err("`..`")),
        ("./a.webp", Err("`.`")),
        ("a/./b.webp", Err("`.`")),
        ("a//b.webp", Err("empty path component")),
        ("a/", Err("empty path component")),
        ("escape/x.webp", Err("symlink")),
        ("real/dir/link/x.webp", Err("symlink")),
        ("file-link.webp", Err("symlink")),
    ];
    for (rel, expect) in table {
        check_safe_join(&root, rel, *expect);
    }
}

#[test]
fn write_atomic_through_a_planted_symlink_writes_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("outbox");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("shoes")).unwrap();
    let err = write_atomic(
        &root,
        Path::new("shoes/a.webp"),
        b"x",
        ExistsPolicy::Replace,
    )
    .unwrap_err();
    assert_eq!(err.code(), "output-unsafe-path");
    assert!(files(&outside).is_empty());
}

#[test]
fn write_atomic_creates_dirs_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let written = write_atomic(
        root,
        Path::new("a/b/sku.webp"),
        b"hello",
        ExistsPolicy::Fail,
    )
    .unwrap();
    assert_eq!(written.path, root.join("a/b/sku.webp"));
    assert_eq!(written.bytes, 5);
    assert!(!written.skipped);
    assert_eq!(
        written.sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(output::sha256_file(&written.path).unwrap(), written.sha256);
    assert_eq!(fs::read(&written.path).unwrap(), b"hello");
    assert_eq!(files(root), ["a/b/sku.webp"]);
}

/// `expect`: `Ok((content on disk, skipped))` or `Err(code)`.
fn check_exists_policy(policy: ExistsPolicy, expect: Result<(&[u8], bool), &str>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("m")).unwrap();
    fs::write(root.join("m/x.png"), b"old").unwrap();
    let res = write_atomic(root, Path::new("m/x.png"), b"new!", policy);
    let on_disk = fs::read(root.join("m/x.png")).unwrap();
    match (res, expect) {
        (Ok(written), Ok((content, skipped))) => {
            assert_eq!(on_disk, content, "{policy:?}");
            assert_eq!(written.skipped, skipped, "{policy:?}");
            assert_eq!(written.bytes, content.len() as u64, "{policy:?}");
            assert_eq!(written.sha256, output::sha256_file(&written.path).unwrap());
        }
        (Err(err), Err(code)) => {
            assert_eq!(err.code(), code, "{policy:?}");
            assert_eq!(on_disk, b"old", "{policy:?} keeps the existing file");
        }
        (res, expect) => panic!("{policy:?}: expected {expect:?}, got {res:?}"),
    }
    assert_eq!(files(root), ["m/x.png"], "{policy:?} leaves no temp file");
}

#[test]
fn exists_policies() {
    check_exists_policy(ExistsPolicy::Replace, Ok((b"new!", false)));
    check_exists_policy(ExistsPolicy::Skip, Ok((b"old", true)));
    check_exists_policy(ExistsPolicy::Fail, Err("output-exists"));
}

/// An empty file is no output to keep: `skip` replaces it; `fail` still refuses it.
#[test]
fn skip_replaces_an_empty_file_and_fail_keeps_refusing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("m")).unwrap();
    fs::write(root.join("m/x.png"), b"").unwrap();
    let err = write_atomic(root, Path::new("m/x.png"), b"new!", ExistsPolicy::Fail).unwrap_err();
    assert_eq!(err.code(), "output-exists");
    let written = write_atomic(root, Path::new("m/x.png"), b"new!", ExistsPolicy::Skip).unwrap();
    assert!(!written.skipped);
    assert_eq!(fs::read(root.join("m/x.png")).unwrap(), b"new!");
}

/// `fail` refuses to replace a file, but a file holding these very bytes is no other file:
/// it is the job's own output, written before a crash came between the write and its record,
/// and the job is done with it (not failed as `output-exists`).
#[test]
fn fail_takes_a_file_with_the_very_same_bytes_as_the_jobs_own() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let first = write_atomic(root, Path::new("m/x.png"), b"result", ExistsPolicy::Fail).unwrap();
    let again = write_atomic(root, Path::new("m/x.png"), b"result", ExistsPolicy::Fail).unwrap();
    assert!(!again.skipped, "its own output, not a kept one");
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(again.bytes, 6);
    let err = write_atomic(root, Path::new("m/x.png"), b"other", ExistsPolicy::Fail).unwrap_err();
    assert_eq!(
        err.code(),
        "output-exists",
        "different bytes are still refused"
    );
    assert_eq!(fs::read(root.join("m/x.png")).unwrap(), b"result");
    assert_eq!(files(root), ["m/x.png"], "no temp file left");
}

#[test]
fn replace_does_not_truncate_in_place() {
    // An open handle on the old file still sees the old content: the new file is a rename.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_atomic(root, Path::new("x.png"), b"old", ExistsPolicy::Replace).unwrap();
    let held = fs::File::open(root.join("x.png")).unwrap();
    write_atomic(root, Path::new("x.png"), b"new", ExistsPolicy::Replace).unwrap();
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &held, &mut old).unwrap();
    assert_eq!(old, "old");
    assert_eq!(fs::read(root.join("x.png")).unwrap(), b"new");
}

#[test]
fn clean_stale_tmp_removes_only_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("a/b")).unwrap();
    let keep = [
        "x.webp",
        ".hidden",
        "a/b/y.tmp-123",
        "a/.tmp-abc",
        "a/b/.z.webp.tmp-",
        "a/b/shoes.report.json",
    ];
    let stale = [
        ".x.webp.tmp-0123abcd",
        "a/b/.y.png.tmp-ff00",
        "a/.r.csv.tmp-1",
    ];
    for name in keep.iter().chain(&stale) {
        fs::write(root.join(name), b"data").unwrap();
    }
    assert_eq!(clean_stale_tmp(root).unwrap().removed, stale.len());
    let mut expected: Vec<_> = keep.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(files(root), expected);
    assert_eq!(clean_stale_tmp(&root.join("missing")).unwrap().removed, 0);
}

#[test]
fn move_mirrored_keeps_the_path_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("inbox");
    let archive = tmp.path().join("archive");
    fs::create_dir_all(inbox.join("a/b")).unwrap();
    let src = inbox.join("a/b/shoes.yaml");
    let mut moved = Vec::new();
    for round in 0..3 {
        fs::write(&src, format!("round {round}")).unwrap();
        moved.push(move_mirrored(&inbox, &src, &archive).unwrap());
        assert!(!src.exists());
    }
    assert_eq!(
        moved,
        [
            archive.join("a/b/shoes.yaml"),
            archive.join("a/b/shoes.1.yaml"),
            archive.join("a/b/shoes.2.yaml"),
        ]
    );
    for (round, path) in moved.iter().enumerate() {
        assert_eq!(fs::read_to_string(path).unwrap(), format!("round {round}"));
    }
    let err = move_mirrored(
        &inbox.join("a"),
        &tmp.path().join("elsewhere.yaml"),
        &archive,
    );
    assert_eq!(err.unwrap_err().code(), "output-unsafe-path");
}

/// A symlink is moved as a link (rejecting a symlinked manifest): the target stays where it
/// is, unread and unchanged.
#[test]
fn move_mirrored_moves_a_symlink_not_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let inbox = tmp.path().join("inbox");
    let rejected = tmp.path().join("rejected");
    let target = tmp.path().join("target.yaml");
    fs::create_dir_all(&inbox).unwrap();
    fs::write(&target, "images: []\n").unwrap();
    let link = inbox.join("link.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let moved = move_mirrored(&inbox, &link, &rejected).unwrap();
    assert_eq!(moved, rejected.join("link.yaml"));
    assert!(
        fs::symlink_metadata(&link).is_err(),
        "the link left the inbox"
    );
    assert!(fs::symlink_metadata(&moved).unwrap().is_symlink());
    assert_eq!(fs::read_link(&moved).unwrap(), target);
    assert_eq!(fs::read_to_string(&target).unwrap(), "images: []\n");
}

#[test]
fn write_text_atomic_replaces_whole_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("r/shoes.report.json");
    write_text_atomic(&path, "first, longer text").unwrap();
    write_text_atomic(&path, "second").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "second");
    assert_eq!(files(tmp.path()), ["r/shoes.report.json"]);
}

/// errno → (code, heals, what the message names): each OS error has a stable code, is told
/// apart as healing or not, and is named in the message (never a bare "i/o error").
fn check_os_error(errno: i32, code: &str, heals: bool, message: &str) {
    let err = OutputError::io(
        Path::new("m/a\nb.png"),
        std::io::Error::from_raw_os_error(errno),
    );
    assert_eq!(err.code(), code, "errno {errno}");
    assert_eq!(err.heals(), heals, "errno {errno}");
    assert_eq!(err.to_string(), format!("m/a\\nb.png: {message}"));
}

#[test]
fn os_errors_have_their_own_code_and_tell_whether_they_heal() {
    check_os_error(
        libc::ENAMETOOLONG,
        "output-name-too-long",
        false,
        "ENAMETOOLONG: file name too long",
    );
    check_os_error(
        libc::EROFS,
        "output-read-only",
        false,
        "EROFS: read-only file system",
    );
    check_os_error(
        libc::ENOTDIR,
        "output-not-a-directory",
        false,
        "ENOTDIR: not a directory",
    );
    check_os_error(
        libc::EISDIR,
        "output-is-a-directory",
        false,
        "EISDIR: is a directory",
    );
    check_os_error(
        libc::EINVAL,
        "output-invalid-name",
        false,
        "EINVAL: invalid argument",
    );
    check_os_error(
        libc::ENOSPC,
        "disk-full",
        true,
        "ENOSPC: no space left on device",
    );
    check_os_error(
        libc::EMFILE,
        "output-too-many-open-files",
        true,
        "EMFILE: too many open files",
    );
    check_os_error(
        libc::ENFILE,
        "output-too-many-open-files",
        true,
        "ENFILE: too many open files in system",
    );
    check_os_error(libc::EIO, "output-io", true, "EIO: input/output error");
    let other = OutputError::io(Path::new("x"), std::io::Error::other("x"));
    assert_eq!((other.code().as_str(), other.heals()), ("output-io", true));
    let exists = OutputError::Exists { path: "x".into() };
    assert!(!exists.heals());
}

/// A name that fits NAME_MAX but whose temporary name does not fails with the name-too-long
/// code and names ENAMETOOLONG; nothing is left behind.
#[test]
fn a_name_too_long_for_its_temporary_file_is_named_and_does_not_heal() {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{}.png", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let err = write_atomic(
        tmp.path(),
        &Path::new("m").join(&name),
        b"data",
        ExistsPolicy::Replace,
    )
    .unwrap_err();
    assert_eq!(err.code(), "output-name-too-long", "{err}");
    assert!(!err.heals());
    assert!(
        err.to_string().contains("ENAMETOOLONG: file name too long"),
        "{err}"
    );
    assert!(files(tmp.path()).is_empty());
}

#[test]
fn a_failed_rename_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The final name is taken by a non-empty directory: the rename must fail.
    fs::create_dir_all(root.join("m/x.png/inner")).unwrap();
    let err = write_atomic(root, Path::new("m/x.png"), b"data", ExistsPolicy::Replace).unwrap_err();
    assert_eq!(err.code(), "output-is-a-directory");
    let names: Vec<_> = fs::read_dir(root.join("m"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["x.png"]);
}
