//! Issue 11: the manifest lifecycle, driven through the real binary. One owner per output,
//! a manifest is its content, `run --once` always ends, and the supervisor answers signals
//! while a large manifest is validated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario};
use sha2::Digest;
use tokio::process::Child;

use crate::support::{TestEnv, cli, signal, stop, wait_until, wait_until_async};

const DEADLINE: Duration = Duration::from_secs(60);

/// A daemon (`max_in_flight: 1`) running `v1` of the manifest `name`, its first image
/// submitted; and its config.
async fn daemon_running(env: &TestEnv, name: &str, v1: &[u8]) -> (Child, PathBuf) {
    let config = env.config("max_in_flight: 1", "");
    let daemon = env.spawn_daemon(&config, 0);
    env.drop_file(name, v1);
    wait_until("the first image is submitted", DEADLINE, || {
        env.stats().submits >= 1
    })
    .await;
    (daemon, config)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every `.error.txt` under `root`, with its text.
fn error_files(root: &Path) -> Vec<(String, String)> {
    TestEnv::files_under(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".error.txt"))
        .map(|p| {
            let text = std::fs::read_to_string(root.join(&p)).expect("error file");
            (p.to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// `s.yaml` and `s.json` both write `outbox/s.report.json`: while one is active the other is
/// refused before any API call, with an error file naming the other and the path.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_same_stem_manifests_are_not_both_active() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(800)))).await;
    env.drop_file(
        "s.yaml",
        b"images:\n  - input: storage://demo/yaml-64x48.png\n",
    );
    env.drop_file(
        "s.json",
        br#"{"images": [{"input": "storage://demo/json-64x48.png"}]}"#,
    );
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "one manifest is refused:\n{stderr}");
    let errors = error_files(&env.rejected);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (name, text) = &errors[0];
    let (refused, other) = if name.starts_with("s.json") {
        ("json", "s.yaml")
    } else {
        ("yaml", "s.json")
    };
    assert!(text.contains(other), "names the other manifest: {text}");
    assert!(
        text.contains("s.report."),
        "names the colliding path: {text}"
    );
    let stats = env.stats();
    assert_eq!(stats.submits, 1, "only the accepted manifest was submitted");
    assert!(
        !stats
            .submits_by_key
            .keys()
            .any(|k| k.contains(&format!("{refused}-64x48"))),
        "the refused manifest spent nothing: {:?}",
        stats.submits_by_key
    );
    let report = env.report("s");
    assert_eq!(
        report["manifest"], other,
        "the report is the accepted manifest's"
    );
}

/// `a.yaml` writing `b/x.jpg` and `a/b.yaml` writing `x.jpg` both mean `outbox/a/b/x.jpg`.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_an_output_another_active_manifest_writes_is_refused() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(800)))).await;
    env.drop_file(
        "a.yaml",
        b"images:\n  - input: storage://demo/one-64x48.png\n    output: b/x.jpg\n",
    );
    env.drop_file(
        "a/b.yaml",
        b"images:\n  - input: storage://demo/two-64x48.png\n    output: x.jpg\n",
    );
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "one manifest is refused:\n{stderr}");
    let errors = error_files(&env.rejected);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (_, text) = &errors[0];
    assert!(
        text.contains("a/b/x.jpg"),
        "names the colliding output: {text}"
    );
    assert!(
        text.contains("a.yaml") && text.contains("a/b.yaml"),
        "names both manifests: {text}"
    );
    assert_eq!(env.stats().submits, 1, "the refused one spent nothing");
    assert!(env.outbox.join("a/b/x.jpg").is_file());
}

/// An output whose way the outbox blocks (a file where a folder of its path goes, a folder
/// where the output file goes) could never be delivered: the manifest is refused at intake
/// with each obstacle named on its row's line, before Claid bills anything.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_an_output_blocked_in_the_outbox_is_refused_before_any_spend() {
    let env = TestEnv::new(Scenario::default()).await;
    std::fs::create_dir_all(env.outbox.join("m/b.jpg/inside")).expect("folder at the output");
    std::fs::write(env.outbox.join("m/sub"), b"a file").expect("file where a folder goes");
    std::fs::write(env.outbox.join("n"), b"a file").expect("file where the run's folder goes");
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/one-64x48.png\n    output: sub/a.jpg\n  - input: storage://demo/two-64x48.png\n    output: b.jpg\n",
    );
    // An output named after its input: the problem is told at the input's line, as the output's.
    env.drop_file(
        "n.yaml",
        b"images:\n  - input: storage://demo/four-64x48.png\n",
    );
    env.drop_file(
        "ok.yaml",
        b"images:\n  - input: storage://demo/three-64x48.png\n",
    );
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "m.yaml is refused:\n{stderr}");
    let text = std::fs::read_to_string(env.rejected.join("m.yaml.error.txt")).expect("error file");
    let file = env.outbox.join("m/sub");
    let folder = env.outbox.join("m/b.jpg");
    assert!(
        text.contains(&format!(
            "line 3: images[0].output: {} in the outbox is a file, where a folder on the way goes",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "line 5: images[1].output: {} in the outbox is a folder, where this image's output file goes",
            folder.display()
        )),
        "{text}"
    );
    let text = std::fs::read_to_string(env.rejected.join("n.yaml.error.txt")).expect("error file");
    assert!(
        text.contains(&format!(
            "line 2: images[0].input: its output `n/four-64x48.jpg` (named after the input): {} in the outbox is a file, where a folder on the way goes",
            env.outbox.join("n").display()
        )),
        "{text}"
    );
    assert_eq!(env.stats().submits, 1, "only ok.yaml was submitted");
    assert!(env.outbox.join("ok/three-64x48.jpg").is_file());
    assert_eq!(
        std::fs::read(&file).expect("file"),
        b"a file",
        "left as it was"
    );
    assert!(folder.join("inside").is_dir(), "left as it was");
}

/// A manifest whose name starts with a dot, or in a folder whose name does, is never taken in
/// (hidden files are where editors and copy tools write their temporary files), but never
/// silently: the run names each once in a WARN, and `validate` says the daemon will skip it.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_hidden_manifests_and_folders_are_named_not_skipped_silently() {
    let env = TestEnv::new(Scenario::default()).await;
    let row = b"images:\n  - input: storage://demo/h-64x48.png\n";
    let hidden = env.drop_file(".hidden.yaml", row);
    env.drop_file(".team/m.yaml", row);
    env.drop_file(
        "seen.yaml",
        b"images:\n  - input: storage://demo/s-64x48.png\n",
    );
    let config = env.config("", "");
    // Named at once, though it is younger than `watch.settle`: `run --once` looks only now.
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("A manifest's name starts with a dot") && stderr.contains(".hidden.yaml"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hidden folders are never entered") && stderr.contains(".team"),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 1, "only seen.yaml");
    let (code, out, err) = cli(&[
        "validate",
        hidden.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the daemon never takes this file in: `.hidden.yaml` starts with a dot"),
        "{out}"
    );
}

/// A manifest written under a dot name and renamed into place (as the README advises) is not
/// named as a hidden manifest by a scan that saw it before the rename: it was, in a WARN
/// telling to rename a file already renamed and taken in.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_renamed_from_a_dot_name_into_place_is_not_warned_about() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    // A settle long enough that the dot file is still young at the scan the next drop sets off.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("settle: 100ms", "settle: 3s");
    std::fs::write(&config, text).expect("config");
    let mut daemon = env.spawn_daemon(&config, 0);
    // After the first scan, which names a hidden manifest at once (as `run --once` does).
    wait_until("the first scan done", DEADLINE, || {
        env.daemon_log(0).contains("Scanned the inbox")
    })
    .await;
    let dot = env.drop_file(
        ".d.yaml",
        b"images:\n  - input: storage://demo/d-64x48.png\n",
    );
    // A scan sees the dot file while it is young: the one that takes in a drop made after it
    // (old already, so taken at first sight).
    let other = env.drop_file(
        "other.yaml",
        b"images:\n  - input: storage://demo/o-64x48.png\n",
    );
    std::fs::File::options()
        .write(true)
        .open(&other)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)))
        .expect("mtime");
    wait_until("a scan after the dot file", DEADLINE, || {
        env.daemon_log(0).contains("Manifest accepted")
    })
    .await;
    assert!(dot.is_file(), "still under its dot name then");
    std::fs::rename(&dot, env.inbox.join("d.yaml")).expect("rename into place");
    wait_until("the renamed manifest done", DEADLINE, || {
        env.outbox.join("d.report.json").is_file()
    })
    .await;
    stop(&mut daemon).await;
    let log = env.daemon_log(0);
    assert!(!log.contains("starts with a dot"), "{log}");
}

/// A list of images dropped as a spreadsheet (`.csv`) is not a manifest, but it is named once
/// in a WARN instead of lying unseen in the inbox; other files (notes, images a manifest
/// uploads) are left alone without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_in_a_format_manifests_do_not_come_in_is_named_not_skipped_silently() {
    let env = TestEnv::new(Scenario::default()).await;
    let csv = env.drop_file(
        "catalogue.csv",
        b"input,output
https://cdn.example.com/a.jpg,a.jpg
",
    );
    env.drop_file("notes.txt", b"to do\n");
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr
            .matches("looks like a list of images in a format the daemon does not read")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("catalogue.csv") && !stderr.contains("notes.txt"),
        "{stderr}"
    );
    assert!(csv.is_file(), "left where it was");
    assert_eq!(env.stats().submits, 0);
}

/// A manifest saved as `shoes.yaml.txt` (an editor's extra extension) and a manifest's name on
/// a named pipe are each named once in a WARN instead of lying unseen in the inbox.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_with_an_extra_extension_or_on_a_pipe_is_named_not_skipped_silently() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "shoes.yaml.txt",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let fifo = env.inbox.join("pipe.yaml");
    crate::support::mkfifo(&fifo);
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    let named = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    assert_eq!(named("manifest saved with an extra `.txt`"), 1, "{stderr}");
    assert_eq!(named("no regular file"), 1, "{stderr}");
    assert!(
        stderr.contains("shoes.yaml.txt") && stderr.contains("pipe.yaml"),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 0);
}

/// A manifest left under an upload's temporary name (`.part`, `.tmp`) for 10 minutes is named
/// once in a WARN (an upload that never renamed it lay unseen); one being written (fresh) and
/// editors' backup and swap files are not named.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_left_under_a_temporary_name_is_named_once_it_is_stale() {
    let env = TestEnv::new(Scenario::default()).await;
    let body = b"images:\n  - input: storage://demo/a-64x48.png\n";
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for name in [
        "left.yaml.part",
        "left2.json.tmp",
        "backup.yaml~",
        ".x.yaml.swp",
    ] {
        let path = env.drop_file(name, body);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(an_hour_ago))
            .expect("mtime");
    }
    env.drop_file("fresh.yaml.part", body);
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    let named: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lain under a temporary name"))
        .collect();
    assert_eq!(named.len(), 2, "{stderr}");
    assert!(
        named.iter().any(|l| l.contains("left.yaml.part"))
            && named.iter().any(|l| l.contains("left2.json.tmp")),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 0);
}

/// Two manifests whose names differ only in bytes that are not UTF-8 get an error file each
/// (the names were made lossy and both wrote one file), and an error file never carries the
/// raw control characters of a manifest's name.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_every_rejected_manifest_gets_its_own_error_file_with_an_escaped_name() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new(Scenario::default()).await;
    let names: [&[u8]; 3] = [b"a\xff.yaml", b"a\xfe.yaml", b"bad\nline\x1b[31m.yaml"];
    for name in names {
        let path = env.inbox.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&path, b"images: [ { input: ftp://x/a.png } ]\n").expect("manifest");
    }
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    for name in names {
        let mut error_name = name.to_vec();
        error_name.extend_from_slice(b".error.txt");
        let error_file = env.rejected.join(std::ffi::OsStr::from_bytes(&error_name));
        let text =
            std::fs::read(&error_file).unwrap_or_else(|e| panic!("{}: {e}", error_file.display()));
        assert!(
            !text.iter().any(|b| *b == 0x1b || *b == 0x07),
            "no raw control character: {:?}",
            String::from_utf8_lossy(&text)
        );
        let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
        assert!(
            first.starts_with(b"manifest: ") && first.ends_with(b".yaml"),
            "the name stays on the first line: {:?}",
            String::from_utf8_lossy(&text)
        );
    }
    assert_eq!(env.stats().submits, 0);
}

/// A manifest rejected again under the same name (`r.yaml`, fixed badly and saved again)
/// goes to `rejected/r.1.yaml` with its own error file, and the first rejection's error file
/// stays beside `rejected/r.yaml` (it was removed, taken for the flat error file of a
/// rejection that could not move the manifest); so for a name too long to take `.1` whole.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_manifest_rejected_again_under_its_name_keeps_both_error_files() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let long = format!("{}.yaml", "R".repeat(250));
    for name in ["r.yaml", long.as_str()] {
        env.drop_file(name, b"images:\n  - input: [x\n");
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 2, "{stderr}");
        env.drop_file(name, b"images: 5\n");
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 2, "{stderr}");
    }
    let texts: Vec<String> = error_files(&env.rejected)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert_eq!(
        texts.len(),
        4,
        "two rejections of each name, an error file each: {texts:?}"
    );
    for name in ["r.yaml", long.as_str()] {
        let of_name: Vec<&String> = texts
            .iter()
            .filter(|text| {
                text.lines()
                    .next()
                    .is_some_and(|first| first.ends_with(&format!("/inbox/{name}")))
            })
            .collect();
        assert_eq!(of_name.len(), 2, "{name}: {texts:?}");
        assert_ne!(of_name[0], of_name[1], "each says its own problem");
    }
    let moved = std::fs::read_dir(&env.rejected)
        .expect("rejected")
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".error.txt"))
        .count();
    assert_eq!(moved, 4, "both versions of both kept");
    assert_eq!(env.stats().submits, 0);
}

/// A rejected manifest that cannot be moved into `rejected/` (a file stands where its folder
/// goes there) still gets its outcome file, at the top of `rejected/`, named after its path,
/// saying why it stays in the inbox.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_rejected_manifest_that_cannot_be_moved_still_gets_an_error_file() {
    let env = TestEnv::new(Scenario::default()).await;
    std::fs::write(env.rejected.join("team"), b"a file").expect("file where the folder goes");
    let bad = env.drop_file("team/bad.yaml", b"images:\n  - input: ftp://x/a.png\n");
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    let text = std::fs::read_to_string(env.rejected.join("team__bad.yaml.error.txt"))
        .unwrap_or_else(|e| panic!("the error file: {e}\n{stderr}"));
    assert!(text.contains("line 2"), "the problem with its line: {text}");
    assert!(
        text.contains("The manifest itself stays in the inbox"),
        "says where the manifest is: {text}"
    );
    assert!(bad.is_file(), "the manifest stays where it was");
    assert_eq!(env.stats().submits, 0);
}

/// The daemon moves a rejected manifest it could not move out of the inbox once it can (the
/// watcher offers a file once per version: it lay in the inbox until a restart), with its
/// error file beside it, and removes the flat one that said it stays in the inbox.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_rejected_manifest_that_could_not_be_moved_is_moved_once_it_can() {
    let env = TestEnv::new(Scenario::default()).await;
    let blocker = env.rejected.join("team");
    std::fs::write(&blocker, b"a file").expect("file where the folder goes");
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    let bad = env.drop_file("team/bad.yaml", b"images:\n  - input: ftp://x/a.png\n");
    let flat = env.rejected.join("team__bad.yaml.error.txt");
    wait_until("the flat error file", DEADLINE, || flat.is_file()).await;
    assert!(bad.is_file(), "still in the inbox");
    std::fs::remove_file(&blocker).expect("the way is free");
    // The manifest is moved first, then its error file written beside it, then the flat one
    // removed: waited for as a whole.
    wait_until("moved out of the inbox", DEADLINE, || {
        !bad.exists()
            && env.rejected.join("team/bad.yaml").is_file()
            && env.rejected.join("team/bad.yaml.error.txt").is_file()
            && !flat.exists()
    })
    .await;
    let text = std::fs::read_to_string(env.rejected.join("team/bad.yaml.error.txt"))
        .expect("its error file beside it");
    assert!(text.contains("line 2"), "{text}");
    assert!(!flat.exists(), "the flat error file is gone");
    stop(&mut daemon).await;
    assert_eq!(env.stats().submits, 0);
}

/// A finished manifest the daemon could not archive (a file where its folder goes in the
/// archive, or a full disk) is archived once it can, while it is in the inbox unchanged (it
/// lay there until a restart).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_finished_manifest_that_could_not_be_archived_is_archived_once_it_can() {
    let env = TestEnv::new(Scenario::default()).await;
    let blocker = env.archive.join("team");
    std::fs::write(&blocker, b"a file").expect("file where the folder goes");
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    let manifest = env.drop_file(
        "team/m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    wait_until("reported", DEADLINE, || {
        env.outbox.join("team/m.report.json").is_file()
    })
    .await;
    assert!(manifest.is_file(), "not archived yet");
    // The error names the file in the way and what to do with it.
    wait_until("the blocker named", DEADLINE, || {
        env.daemon_log(0)
            .contains("stands where the archive needs a folder: move it away")
    })
    .await;
    std::fs::remove_file(&blocker).expect("the way is free");
    wait_until("archived", DEADLINE, || {
        !manifest.exists() && env.archive.join("team/m.yaml").is_file()
    })
    .await;
    stop(&mut daemon).await;
    assert_eq!(
        env.stats().submits + env.stats().batch_images,
        1,
        "made once"
    );
}

/// A manifest deep in the inbox tree, whose mirrored place in `rejected/` is too long a path
/// for its error file (the folder names are longer there), still gets its error file: both go
/// flat into the top of `rejected/`, `<hash>~bad.yaml` (the manifest was moved and its
/// problems only logged).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_rejected_manifest_too_deep_for_its_error_file_goes_flat_with_it() {
    let env = TestEnv::new(Scenario::default()).await;
    // The inbox path is 4,080 bytes: `rejected/` (3 bytes longer than `inbox/`) takes the
    // manifest at 4,083 but not its error file's temporary name (+32).
    let mut rel = std::path::PathBuf::new();
    let mut len = env.inbox.as_os_str().len() + "/bad.yaml".len();
    let mut n = 0;
    while len < 4080 {
        let seg = (4080 - len - 1).min(200);
        let name = format!("{n}{}", "d".repeat(seg.saturating_sub(n.to_string().len())));
        len += 1 + name.len();
        rel.push(name);
        n += 1;
    }
    let rel = rel.join("bad.yaml");
    assert_eq!(env.inbox.join(&rel).as_os_str().len(), 4080);
    let bad = env.drop_file(
        rel.to_str().unwrap(),
        b"images:\n  - input: ftp://x/a.png\n",
    );
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(!bad.exists(), "the manifest left the inbox");
    let errors = error_files(&env.rejected);
    assert_eq!(errors.len(), 1, "one error file: {errors:?}\n{stderr}");
    let (name, text) = &errors[0];
    assert!(!name.contains('/'), "flat, at the top: {name}");
    assert!(
        name.len() == "01234567~bad.yaml.error.txt".len() && name.ends_with("~bad.yaml.error.txt"),
        "{name}"
    );
    assert!(
        env.rejected
            .join(name.trim_end_matches(".error.txt"))
            .is_file(),
        "the manifest beside it"
    );
    assert!(text.contains("line 2"), "the problem with its line: {text}");
    assert!(
        text.contains(&format!("{}", rel.display())),
        "names the manifest's inbox path: {text}"
    );
    assert_eq!(env.stats().submits, 0);
}

/// A task (or batch) Claid never finishes does not keep `run --once` waiting for ever: after
/// `api.poll.give_up_after` its images fail as `task-timeout`, naming the task, and the run
/// ends (exit 2). A dry run of their replay says Claid may have made and billed them.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_claid_never_finishes_fails_after_give_up_after_and_the_run_ends() {
    for api in ["batch: { max_images: 1 }", ""] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(3600))))
                .await;
        env.drop_file(
            "m.yaml",
            b"images:\n  - input: storage://demo/slow-64x48.png\n  - input: storage://demo/late-64x48.png\n",
        );
        let config = env.config(api, "");
        let text = std::fs::read_to_string(&config).expect("config");
        std::fs::write(
            &config,
            text.replace(
                "poll: { min: 50ms, max: 500ms }",
                "poll: { min: 50ms, max: 500ms, give_up_after: 3s }",
            ),
        )
        .expect("config");
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 2, "{api}: {stderr}");
        let report = env.report("m");
        let rows = report["jobs"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(row["status"], "failed", "{api}: {row}");
            assert!(
                row["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("task-timeout: ")),
                "{api}: {row}"
            );
            // The task (or batch) that never finished is named, for Claid's support.
            assert!(
                row["task_id"]
                    .as_u64()
                    .or(row["batch_id"].as_u64())
                    .is_some(),
                "{api}: {row}"
            );
        }
        assert_eq!(env.stats().duplicate_submits, 0);
        // Claid took those tasks and may still make (and bill) them: a dry run of their
        // replay says so, row by row.
        let (code, out, err) = cli(&[
            "replay",
            "--failed",
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{api}: {out}{err}");
        assert!(
            out.contains("Would requeue 2 jobs (2 of them failed after Claid took their task, which it may have made and billed: sending those again may be billed twice)"),
            "{api}: {out}"
        );
        assert_eq!(
            out.matches("(Claid took its task: it may be billed already)")
                .count(),
            2,
            "{api}: {out}"
        );
        // The replay itself says so too.
        let (code, out, err) =
            cli(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{api}: {out}{err}");
        assert!(
            out.contains("Requeued 2 jobs (2 of them Claid had billed already, done or failed after it took their task: each is billed again); they run at the daemon's next start."),
            "{api}: {out}"
        );
    }
}

/// A valid version saved while the running one drains, then saved over by one that fails
/// validation before the drain ends: the broken one is rejected, and the valid one still runs
/// when the drain ends (it was lost: the file it would be read from had gone to rejected/).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_waiting_for_a_drain_runs_even_when_a_broken_save_follows_it() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(3000))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let v3 = b"images: [ {input: 3} \n".to_vec();
    let (mut daemon, _) = daemon_running(&env, "m.yaml", &v1).await;
    env.drop_file("m.yaml", &v2);
    wait_until("v2 waits for v1's drain", DEADLINE, || {
        env.inbox.join(".m.yaml.claid-pending").is_file()
    })
    .await;
    env.drop_file("m.yaml", &v3);
    wait_until("v3 is rejected", DEADLINE, || {
        env.rejected.join("m.yaml.error.txt").is_file()
    })
    .await;
    let report_is_v2 = || {
        std::fs::read_to_string(env.outbox.join("m.report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|r| r["sha256"] == sha256_hex(&v2).as_str())
    };
    wait_until("v2 runs and is reported", DEADLINE, report_is_v2).await;
    wait_until("v2 is archived", DEADLINE, || {
        !env.inbox.join("m.yaml").exists()
    })
    .await;
    stop(&mut daemon).await;
    assert!(env.outbox.join("m/new-64x48.jpg").is_file());
    let mut archived: Vec<Vec<u8>> = TestEnv::files_under(&env.archive)
        .into_iter()
        .map(|p| std::fs::read(env.archive.join(p)).expect("archived"))
        .collect();
    archived.sort();
    let mut expected = vec![v1, v2];
    expected.sort();
    assert_eq!(archived, expected, "archive: the versions that ran");
    assert_eq!(std::fs::read(env.rejected.join("m.yaml")).expect("v3"), v3);
    assert!(!env.inbox.join(".m.yaml.claid-pending").exists());
}

/// The same for a manifest whose name is 240 bytes: the hidden copy of the waiting version
/// (`.NAME.claid-pending`) would pass NAME_MAX, so it is named with a hash (the copy could not
/// be made: the valid version was lost, never run, archived or given an error file).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_waiting_for_a_drain_with_a_long_name_runs_after_a_broken_save() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(3000))))
            .await;
    let stem = "l".repeat(235);
    let name = format!("{stem}.yaml");
    let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let v3 = b"images: [ {input: 3} \n".to_vec();
    let (mut daemon, _) = daemon_running(&env, &name, &v1).await;
    env.drop_file(&name, &v2);
    let pending = || {
        std::fs::read_dir(&env.inbox)
            .expect("inbox")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".claid-pending"))
    };
    wait_until("v2 waits for v1's drain", DEADLINE, pending).await;
    env.drop_file(&name, &v3);
    wait_until("v3 is rejected", DEADLINE, || {
        !error_files(&env.rejected).is_empty()
    })
    .await;
    wait_until("v2 runs", DEADLINE, || {
        env.outbox.join(&stem).join("new-64x48.jpg").is_file()
    })
    .await;
    wait_until("v2 is archived", DEADLINE, || {
        !env.inbox.join(&name).exists() && TestEnv::files_under(&env.archive).len() == 2
    })
    .await;
    stop(&mut daemon).await;
    let mut archived: Vec<Vec<u8>> = TestEnv::files_under(&env.archive)
        .into_iter()
        .map(|p| std::fs::read(env.archive.join(p)).expect("archived"))
        .collect();
    archived.sort();
    let mut expected = vec![v1, v2];
    expected.sort();
    assert_eq!(archived, expected, "archive: the versions that ran");
    assert!(!pending(), "the copy is gone");
}

/// The same, across a crash: the daemon is killed (SIGKILL) while a valid version waits for
/// the drain as its hidden copy, with the manifest itself (a) already moved to `rejected/` as
/// a broken save (the kill came before the copy was put back), or (b) still the broken save,
/// rejected by the next run. Either way `run --once` puts the waiting version back and runs it
/// after the drain ((a) left it hidden in the inbox for good; (b) put it back and exited
/// without running it).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_waiting_for_a_drain_survives_a_crash_during_a_broken_save() {
    for broken_moved in [true, false] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(1500))))
                .await;
        let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
        let v2 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/new-64x48.png\n".to_vec();
        let v3 = b"images: [ {input: 3} \n".to_vec();
        let (mut daemon, config) = daemon_running(&env, "m.yaml", &v1).await;
        env.drop_file("m.yaml", &v2);
        wait_until("v2 waits for v1's drain", DEADLINE, || {
            env.inbox.join(".m.yaml.claid-pending").is_file()
        })
        .await;
        daemon.start_kill().expect("SIGKILL");
        daemon.wait().await.expect("killed");
        if broken_moved {
            // What the rejection leaves when the stop comes between its move and the putting
            // back: the copy marked to be put back, the broken save in rejected/.
            std::fs::rename(
                env.inbox.join(".m.yaml.claid-pending"),
                env.inbox.join(".m.yaml.claid-restore"),
            )
            .expect("marked");
            std::fs::remove_file(env.inbox.join("m.yaml")).expect("moved away");
            std::fs::write(env.rejected.join("m.yaml"), &v3).expect("the broken save");
        } else {
            std::fs::write(env.inbox.join("m.yaml"), &v3).expect("the broken save");
        }
        let (code, stderr) = env.run_once(&config).await;
        assert!(code == 0 || code == 2, "{broken_moved}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.outbox.join("m.report.json")).expect("v2's report"),
        )
        .expect("json");
        assert_eq!(
            report["sha256"],
            sha256_hex(&v2).as_str(),
            "{broken_moved}: v2 ran: {stderr}"
        );
        assert!(
            env.outbox.join("m/new-64x48.jpg").is_file(),
            "{broken_moved}: {stderr}"
        );
        assert!(
            !env.inbox.join(".m.yaml.claid-pending").exists()
                && !env.inbox.join(".m.yaml.claid-restore").exists()
                && !env.inbox.join("m.yaml").exists(),
            "{broken_moved}: nothing left in the inbox: {:?}",
            TestEnv::files_under(&env.inbox)
        );
    }
}

/// A valid version waits for the drain, and the broken save that follows it cannot be moved
/// to `rejected/` at first (a file where its folder goes): when the later try moves it, the
/// valid version is put back and runs, as when the first try moves it (it was left hidden,
/// and removed at the drain's end: lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_waiting_for_a_drain_runs_when_a_broken_save_is_rejected_at_a_later_try() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(12_000))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let v3 = b"images: [ {input: 3} \n".to_vec();
    let blocker = env.rejected.join("team");
    std::fs::write(&blocker, b"a file").expect("file where the folder goes");
    let (mut daemon, _) = daemon_running(&env, "team/m.yaml", &v1).await;
    env.drop_file("team/m.yaml", &v2);
    let pending = env.inbox.join("team/.m.yaml.claid-pending");
    wait_until("v2 waits for v1's drain", DEADLINE, || pending.is_file()).await;
    env.drop_file("team/m.yaml", &v3);
    let flat = env.rejected.join("team__m.yaml.error.txt");
    wait_until("v3 is refused but cannot be moved", DEADLINE, || {
        flat.is_file()
    })
    .await;
    assert!(pending.is_file(), "v2's copy waits again");
    std::fs::remove_file(&blocker).expect("the way is free");
    wait_until("v3 is moved at a later try", DEADLINE, || {
        env.rejected.join("team/m.yaml").is_file()
    })
    .await;
    let report_is_v2 = || {
        std::fs::read_to_string(env.outbox.join("team/m.report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|r| r["sha256"] == sha256_hex(&v2).as_str())
    };
    wait_until("v2 runs and is reported", DEADLINE, report_is_v2).await;
    stop(&mut daemon).await;
    assert!(env.outbox.join("team/m/new-64x48.jpg").is_file());
    assert_eq!(
        std::fs::read(env.rejected.join("team/m.yaml")).expect("v3"),
        v3
    );
    assert!(!pending.exists());
    assert!(!env.inbox.join("team/.m.yaml.claid-restore").exists());
}

/// A valid version saved while the running one drains, then deleted by its user, then a
/// crash (SIGKILL) before the drain ends: the next start does not bring the deleted version
/// back from its hidden copy (it did, and billed it); the version that ran still ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_version_deleted_by_its_user_before_a_crash_is_not_brought_back() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(4000))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let (mut daemon, config) = daemon_running(&env, "m.yaml", &v1).await;
    env.drop_file("m.yaml", &v2);
    let pending = env.inbox.join(".m.yaml.claid-pending");
    wait_until("v2 waits for v1's drain", DEADLINE, || pending.is_file()).await;
    std::fs::remove_file(env.inbox.join("m.yaml")).expect("delete v2");
    daemon.start_kill().expect("SIGKILL");
    daemon.wait().await.expect("killed");
    assert!(pending.is_file(), "the kill came before the drain's end");
    let (code, stderr) = env.run_once(&config).await;
    assert!(code == 0 || code == 2, "{stderr}");
    assert!(
        !env.stats()
            .submits_by_key
            .keys()
            .any(|k| k.starts_with("storage://demo/new")),
        "the deleted version was never submitted: {stderr}"
    );
    assert!(!pending.exists(), "its copy is removed: {stderr}");
    assert!(!env.inbox.join("m.yaml").exists(), "nothing put back");
    assert!(!stderr.contains("Put back a valid version"), "{stderr}");
    // v1's run ends and is reported (under its superseded name or the plain one).
    let reports: Vec<serde_json::Value> = TestEnv::files_under(&env.outbox)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".report.json"))
        .map(|p| {
            serde_json::from_slice(&std::fs::read(env.outbox.join(p)).expect("report"))
                .expect("json")
        })
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        reports[0]["sha256"],
        sha256_hex(&v1).as_str(),
        "{reports:?}"
    );
}

/// A valid version saved while the running one drains, then deleted by its user: the copy
/// kept of it goes with it, and a broken save of the same name later does not bring it back
/// (and bill it); nothing of it is submitted.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_version_deleted_by_its_user_is_not_brought_back_by_a_later_broken_save() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(2000))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/one-64x48.png\n  - input: storage://demo/two-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let broken = b"images: [ broken\n".to_vec();
    let (mut daemon, _) = daemon_running(&env, "m.yaml", &v1).await;
    env.drop_file("m.yaml", &v2);
    let pending = env.inbox.join(".m.yaml.claid-pending");
    wait_until("v2 waits for v1's drain", DEADLINE, || pending.is_file()).await;
    std::fs::remove_file(env.inbox.join("m.yaml")).expect("delete v2");
    let log = env.dir.path().join("daemon-0.log");
    wait_until("v1's drain ends, and the copy of v2 goes", DEADLINE, || {
        !pending.exists()
            && std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("The manifest left the inbox before it was read"))
    })
    .await;
    env.drop_file("m.yaml", &broken);
    wait_until("the broken save is rejected", DEADLINE, || {
        env.rejected.join("m.yaml.error.txt").is_file()
    })
    .await;
    wait_until("the rejection is done", DEADLINE, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Moved the rejected manifest"))
    })
    .await;
    stop(&mut daemon).await;
    assert!(!env.inbox.join("m.yaml").exists(), "nothing put back");
    assert!(!pending.exists());
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(!log.contains("Put back the valid version"), "{log}");
    assert!(
        !env.stats()
            .submits_by_key
            .keys()
            .any(|k| k.starts_with("storage://demo/new")),
        "the deleted version was never submitted"
    );
}

/// A new version of a running manifest that would write an output another active manifest
/// writes is refused at once, and the running version goes on to its end (it used to be
/// drained first, then the new version rejected: neither made its images).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_another_active_manifest_refuses_leaves_the_running_one_going() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(1500))))
            .await;
    let other = b"images:\n  - { input: storage://demo/o1-64x48.png, output: x/taken.jpg }\n  - storage://demo/o2-64x48.png\n  - storage://demo/o3-64x48.png\n".to_vec();
    let v1 = b"images:\n  - storage://demo/a1-64x48.png\n  - storage://demo/a2-64x48.png\n  - storage://demo/a3-64x48.png\n".to_vec();
    let mut v2 = v1.clone();
    v2.extend_from_slice(b"  - { input: storage://demo/a4-64x48.png, output: taken.jpg }\n");
    let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file("coll.yaml", &other);
    env.drop_file("coll/x.yaml", &v1);
    wait_until("both run", DEADLINE, || env.stats().submits >= 2).await;
    env.drop_file("coll/x.yaml", &v2);
    wait_until("the new version is refused", DEADLINE, || {
        env.rejected.join("coll/x.yaml.error.txt").is_file()
    })
    .await;
    let error = std::fs::read_to_string(env.rejected.join("coll/x.yaml.error.txt")).expect("error");
    assert!(
        error.contains("coll.yaml") && error.contains("taken.jpg"),
        "{error}"
    );
    wait_until("both manifests end", DEADLINE, || {
        env.outbox.join("coll.report.json").is_file()
            && env.outbox.join("coll/x.report.json").is_file()
    })
    .await;
    stop(&mut daemon).await;
    let report = env.report("coll/x");
    assert_eq!(report["sha256"], sha256_hex(&v1).as_str(), "{report}");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|row| row["status"] == "done"), "{report}");
    for name in ["a1", "a2", "a3"] {
        assert!(
            env.outbox
                .join(format!("coll/x/{name}-64x48.jpg"))
                .is_file(),
            "{name}"
        );
    }
    // Refused once, not put back and refused again.
    assert!(!env.rejected.join("coll/x.1.yaml").exists());
    assert!(!env.inbox.join("coll/.x.yaml.claid-pending").exists());
}

/// The everyday "fixed a typo, saved over it": the running version drains (what Claid already
/// has finishes and is recorded, nothing new is submitted for it), then the new content runs;
/// rows identical to delivered ones are not billed again; the archive holds exactly the
/// versions that were processed, and the report is the newest one's.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_manifest_saved_again_while_it_runs_is_processed_in_its_new_version() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(1500))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/keep-64x48.png\n  - input: storage://demo/typo-64x48.png\n  - input: storage://demo/also-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/keep-64x48.png\n  - input: storage://demo/fixed-64x48.png\n".to_vec();
    let (mut daemon, config) = daemon_running(&env, "m.yaml", &v1).await;
    env.drop_file("m.yaml", &v2);
    let report_is_v2 = || {
        std::fs::read_to_string(env.outbox.join("m.report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|r| r["sha256"] == sha256_hex(&v2).as_str())
    };
    wait_until("the new version is reported", DEADLINE, report_is_v2).await;
    wait_until("the new version is archived", DEADLINE, || {
        !env.inbox.join("m.yaml").exists()
    })
    .await;
    let status = stop(&mut daemon).await;
    assert_eq!(status.code(), Some(0), "{}", env.daemon_log(0));

    let report = env.report("m");
    assert_eq!(
        crate::support::report_inputs(&report),
        [
            "storage://demo/keep-64x48.png",
            "storage://demo/fixed-64x48.png"
        ]
    );
    let stats = env.stats();
    let submits_of = |name: &str| crate::support::submits_of(&stats, name);
    assert_eq!(
        submits_of("keep-"),
        1,
        "an identical row is not billed again"
    );
    assert_eq!(submits_of("fixed-"), 1);
    assert_eq!(
        submits_of("typo-") + submits_of("also-"),
        0,
        "nothing new is submitted for the old version: {:?}",
        stats.submits_by_key
    );
    // The archive holds the two processed versions, byte for byte, and nothing else.
    let mut archived: Vec<Vec<u8>> = TestEnv::files_under(&env.archive)
        .into_iter()
        .map(|p| std::fs::read(env.archive.join(p)).expect("archived"))
        .collect();
    archived.sort();
    let mut expected = vec![v1.clone(), v2.clone()];
    expected.sort();
    assert_eq!(archived, expected, "archive: the versions that ran");
    assert!(env.outbox.join("m/keep-64x48.jpg").is_file());
    assert!(env.outbox.join("m/fixed-64x48.jpg").is_file());
    // The old version keeps its own report, beside the newer one's: what Claid delivered for
    // it (and billed) is in a report still.
    let old_reports: Vec<String> = TestEnv::files_under(&env.outbox)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("m.superseded-"))
        .collect();
    assert_eq!(old_reports.len(), 2, "its JSON and CSV: {old_reports:?}");
    let json = old_reports
        .iter()
        .find(|p| p.ends_with(".report.json"))
        .expect("the old version's JSON report");
    assert!(
        json.len() == "m.superseded-20261203T044700.123Z.report.json".len(),
        "{json}"
    );
    let old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.outbox.join(json)).expect("read")).expect("JSON");
    assert_eq!(old["sha256"], sha256_hex(&v1).as_str());
    let statuses: Vec<(&str, &str)> = old["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["input"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert_eq!(statuses[0], ("storage://demo/keep-64x48.png", "done"));
    assert!(
        statuses[1..].iter().all(|(_, s)| *s == "superseded"),
        "{statuses:?}"
    );

    // They are told as superseded, not as failures: `status` names the old run so, `jobs
    // --state superseded` lists its two images and `jobs --state failed` none.
    let cfg = config.to_str().unwrap();
    let (code, out, err) = crate::support::cli(&["status", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let old_run: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("m.yaml") && l.contains(" superseded "))
        .unwrap_or_else(|| panic!("a superseded row: {out}"))
        .split_whitespace()
        .collect();
    // manifest, state, total, done, in flight, queued, failed, in doubt, img/min, eta
    assert_eq!((old_run[2], old_run[6]), ("3", "0"), "{out}");
    assert!(
        out.contains("m.yaml: 2 image(s) were left to a newer version of the file, not submitted or held in doubt"),
        "{out}"
    );
    let (code, out, err) =
        crate::support::cli(&["jobs", "--state", "superseded", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        (out.matches("typo-").count(), out.matches("also-").count()),
        (1, 1),
        "{out}"
    );
    let (code, out, err) =
        crate::support::cli(&["jobs", "--state", "failed", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("typo-") && !out.contains("also-"), "{out}");

    // The old version's images that were never submitted ended as `superseded`: `replay
    // --failed` leaves them to the newer version (replaying them billed images the newer
    // version dropped, and rewrote its report with the old run's).
    let (code, out, err) =
        crate::support::cli(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let stats = env.stats();
    let old_rows: u64 = stats
        .submits_by_key
        .iter()
        .filter(|(k, _)| k.contains("typo-") || k.contains("also-"))
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(old_rows, 0, "{:?}", stats.submits_by_key);
    assert!(report_is_v2(), "the newest report stays");
}

/// A manifest saved again while no daemon ran (the last one was killed mid-run): the next
/// `run --once` supersedes the run it left, and its closing line counts the images the new
/// version took over as `superseded`, so the counts add up (they mixed the two runs).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_counts_add_up_after_a_resave() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(1500))))
            .await;
    let v2 = b"images:\n  - input: storage://demo/keep-64x48.png\n  - input: storage://demo/fixed-64x48.png\n";
    let config = env.config("max_in_flight: 1", "");
    crate::restart::kill_once_a_task_is_recorded(&env, &config).await;
    env.drop_file("m.yaml", v2);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let field = |name: &str| {
        crate::batch::processed_field(&stderr, name)
            .unwrap_or_else(|| panic!("no {name}= in the closing line:\n{stderr}"))
    };
    let superseded = field("superseded");
    assert_eq!(
        superseded, 2,
        "typo- and also- went to the new version:\n{stderr}"
    );
    assert_eq!(
        field("jobs"),
        field("done") + field("unchanged") + field("failed") + field("held_in_doubt") + superseded,
        "{stderr}"
    );
}

/// Saved A → B → A while A runs: the last save is the newest version and runs once A has
/// drained (B, replaced before its turn, never runs); its report is the newest, nothing is
/// billed twice, and the file is not archived in place of the run that processes it.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_manifest_saved_back_to_its_running_content_is_not_lost() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(4000))))
            .await;
    let v1 = b"images:\n  - input: storage://demo/keep-64x48.png\n  - input: storage://demo/typo-64x48.png\n  - input: storage://demo/also-64x48.png\n".to_vec();
    let v2 = b"images:\n  - input: storage://demo/keep-64x48.png\n  - input: storage://demo/fixed-64x48.png\n".to_vec();
    let (mut daemon, _) = daemon_running(&env, "m.yaml", &v1).await;
    env.drop_file("m.yaml", &v2);
    wait_until("the run drains for the new version", DEADLINE, || {
        env.daemon_log(0).contains("saved again while it ran")
    })
    .await;
    env.drop_file("m.yaml", &v1);
    let report_of = |content: &[u8]| {
        std::fs::read_to_string(env.outbox.join("m.report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|r| {
                r["sha256"] == sha256_hex(content).as_str()
                    && r["jobs"].as_array().is_some_and(|rows| {
                        rows.len() == 3
                            && rows
                                .iter()
                                .all(|row| row["status"] == "done" || row["status"] == "unchanged")
                    })
            })
    };
    wait_until(
        "the last save is reported, every image done",
        DEADLINE,
        || report_of(&v1),
    )
    .await;
    wait_until("the last save is archived", DEADLINE, || {
        !env.inbox.join("m.yaml").exists()
    })
    .await;
    let status = stop(&mut daemon).await;
    assert_eq!(status.code(), Some(0), "{}", env.daemon_log(0));
    let stats = env.stats();
    assert_eq!(stats.duplicate_submits, 0, "{:?}", stats.submits_by_key);
    for name in ["keep-", "typo-", "also-"] {
        let n: u64 = stats
            .submits_by_key
            .iter()
            .filter(|(k, _)| k.contains(name))
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(n, 1, "{name}: {:?}", stats.submits_by_key);
    }
    assert!(
        TestEnv::files_under(&env.rejected).is_empty(),
        "nothing rejected"
    );
    for name in ["keep", "typo", "also"] {
        assert!(env.outbox.join(format!("m/{name}-64x48.jpg")).is_file());
    }
}

/// `run --once` ends at once when Claid refuses the key (401), with a code and a message that
/// name the cause; the job stays in the store for the next run.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_ends_when_the_key_is_refused() {
    let env = TestEnv::new(Scenario::default().api_key("the-right-key")).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let config = env.config("", "");
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&config))
        .await
        .expect("run --once ends instead of waiting for the key");
    assert_eq!(code, 77, "EX_NOPERM:\n{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("API key was refused"), "{stderr}");
    let (code, out, err) = cli(&[
        "jobs",
        "--state",
        "queued",
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l == "1 job"),
        "the job waits in the store: {out}"
    );
}

/// The state folder deleted under a running daemon (a cleanup, an `rm` at the wrong place)
/// stops it within a rescan period, naming the folder and what a restart would cost, with 64,
/// which the service does not restart. (It went on writing into the deleted store; killed,
/// it started again on an empty store and billed every image in flight a second time,
/// counted nowhere.)
#[tokio::test(flavor = "multi_thread")]
async fn a_state_folder_deleted_under_the_daemon_stops_it_with_64() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("watching", DEADLINE, || {
        env.daemon_log(0).contains("Watching the inbox")
    })
    .await;
    std::fs::remove_dir_all(&env.state).expect("state deleted");
    let status = tokio::time::timeout(DEADLINE, daemon.wait())
        .await
        .expect("the daemon stops")
        .expect("status");
    let log = env.daemon_log(0);
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(
        log.contains("the job store's folder")
            && log.contains("was deleted while the daemon ran")
            && log.contains("put the state folder back from a backup"),
        "{log}"
    );
}

/// `run --once` against an API that cannot be reached gives up after
/// `api.unreachable_timeout`, naming host, port and the system's reason; the job is kept and a
/// later run against a working API finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_gives_up_on_an_unreachable_api() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let good = env.config("", "");
    let text = std::fs::read_to_string(&good).expect("config");
    let down = text.replace(
        &env.emulator.base_url(),
        &format!("http://127.0.0.1:{port}/v1"),
    );
    let down = down.replace("api:\n", "api:\n  unreachable_timeout: 2s\n");
    let down_path = env.dir.path().join("down.yaml");
    std::fs::write(&down_path, down).expect("config");
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&down_path))
        .await
        .expect("run --once ends instead of waiting for the API");
    assert_eq!(code, 69, "EX_UNAVAILABLE:\n{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "names host and port: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "names the system's reason: {stderr}"
    );
    assert!(
        stderr.contains("for `api.unreachable_timeout` (2s)"),
        "names the key it waited for: {stderr}"
    );
    // The outage's retries are told once (each was a warning: 36 in 30 s).
    assert_eq!(
        stderr.matches("submit failed; retrying").count()
            + stderr.matches("Submit failed; retrying").count(),
        1,
        "{stderr}"
    );
    let (code, stderr) = env.run_once(&good).await;
    assert_eq!(code, 0, "the kept job finishes:\n{stderr}");
    assert!(env.outbox.join("m/a-64x48.jpg").is_file());
    assert_eq!(env.stats().submits, 1);
}

/// `run --once` with `config` pointed at an API on 127.0.0.1:`port`, with
/// `unreachable_timeout: 2s`, a request timeout and a shutdown grace of ten minutes; fails the
/// test when the run does not end within the deadline.
async fn run_once_against(env: &TestEnv, config: &Path, port: u16) -> (i32, String) {
    let text = std::fs::read_to_string(config).expect("config");
    let pointed = text
        .replace(
            &env.emulator.base_url(),
            &format!("http://127.0.0.1:{port}/v1"),
        )
        .replace(
            "api:\n",
            "api:\n  unreachable_timeout: 2s\n  request_timeout: 10m\n",
        )
        // Nor at the end of the shutdown grace: the calls waiting on it are not waited for.
        .replace("shutdown_grace: 5s", "shutdown_grace: 10m");
    let path = env.dir.path().join(format!("api-on-{port}.yaml"));
    std::fs::write(&path, pointed).expect("config");
    tokio::time::timeout(DEADLINE, env.run_once(&path))
        .await
        .expect("run --once ends at api.unreachable_timeout, not at the request timeout")
}

/// `run --once` against an API that takes connections and never answers gives up after
/// `api.unreachable_timeout`, not after the (here much longer) request timeout of each call,
/// and says which host did not answer.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_gives_up_on_an_api_that_never_answers() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    // The kernel completes connections into the backlog; nothing ever reads or answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let good = env.config("", "");
    // Ten minutes per call: only the unreachable timeout can end this run within the deadline.
    let (code, stderr) = run_once_against(&env, &good, port).await;
    assert_eq!(code, 69, "EX_UNAVAILABLE:\n{stderr}");
    assert!(
        stderr.contains(&format!("no answer from 127.0.0.1:{port}")),
        "names the host that does not answer: {stderr}"
    );
    drop(silent);
    let (code, stderr) = env.run_once(&good).await;
    assert_eq!(code, 0, "the kept job finishes:\n{stderr}");
    assert!(env.outbox.join("m/a-64x48.jpg").is_file());
}

/// `run --once` against an API that answers headers and then stalls its body gives up after
/// `api.unreachable_timeout` too: an answer whose body never comes is no answer.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_gives_up_on_an_api_whose_answers_stall() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 16384];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
                .await;
            // Kept open, never finished.
            held.push(socket);
        }
    });
    let good = env.config("", "");
    let (code, stderr) = run_once_against(&env, &good, port).await;
    server.abort();
    assert_eq!(code, 69, "EX_UNAVAILABLE:\n{stderr}");
    assert!(
        stderr.contains(&format!("no answer from 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// A manifest of ~100,000 rows (under the 16 MiB limit) in the inbox.
fn large_manifest() -> Vec<u8> {
    let mut text = String::from("images:\n");
    for i in 0..99_000 {
        text.push_str(&format!(
            "  - {{ input: \"https://cdn.example.com/sku/{i}.jpg\", output: \"o/{i}.webp\", operations: {{ resizing: {{ width: {} }} }} }}\n",
            100 + i % 900
        ));
    }
    text.into_bytes()
}

/// The supervisor never waits for intake: SIGHUP is answered while a large manifest is still
/// being validated, and SIGTERM stops the daemon without registering it.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_signals_are_answered_while_a_large_manifest_is_validated() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    env.drop_file("big.yaml", &large_manifest());
    wait_until("validation started", DEADLINE, || {
        env.daemon_log(0).contains("Validating the manifest")
    })
    .await;
    signal(&daemon, "-HUP");
    wait_until("the reload", DEADLINE, || {
        env.daemon_log(0).contains("Reloaded the config")
    })
    .await;
    let log = env.daemon_log(0);
    assert!(
        !log.contains("Manifest accepted") && !log.contains("Manifest rejected"),
        "the reload was answered before the validation ended:\n{log}"
    );
    let status = stop(&mut daemon).await;
    assert_eq!(status.code(), Some(0));
    let log = env.daemon_log(0);
    let stopping = log.find("Shutting down").expect("shutdown logged");
    assert!(
        log.find("Manifest accepted").is_none_or(|at| at < stopping),
        "nothing is registered after the stop:\n{log}"
    );
}

/// A run that a newer run of the same file followed is not replayed: `replay --failed` leaves
/// its failed jobs alone, `replay --job` refuses one of them, and the newer run's report stays
/// (replaying the older run wrote its report over the newer one's).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_replay_leaves_a_run_a_newer_run_of_its_file_followed() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "on_output_exists: fail\n");
    let cfg = config.to_str().unwrap();
    // Version 1 fails: its output is in the way.
    std::fs::create_dir_all(env.outbox.join("rr")).expect("outbox");
    std::fs::write(env.outbox.join("rr/a-64x48.jpg"), b"in the way").expect("in the way");
    let v1 = b"images:\n  - storage://demo/a-64x48.png\n".to_vec();
    env.drop_file("rr.yaml", &v1);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    // Version 2, another image, runs to the end.
    std::fs::remove_file(env.outbox.join("rr/a-64x48.jpg")).expect("cleared");
    let v2 = b"images:\n  - storage://demo/b-64x48.png\n".to_vec();
    env.drop_file("rr.yaml", &v2);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report_sha = || env.report("rr")["sha256"].as_str().map(str::to_owned);
    assert_eq!(report_sha(), Some(sha256_hex(&v2)));

    let (code, out, err) = cli(&["jobs", "--state", "failed", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let old_job = out
        .lines()
        .find(|l| l.contains("a-64x48"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the old run's failed job: {out}"))
        .to_owned();
    let (code, out, err) = cli(&["replay", "--job", &old_job, "--config", cfg]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("belongs to an earlier run of its manifest"),
        "{err}"
    );
    let (code, out, err) = cli(&["replay", "--failed", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Nothing to replay"), "{out}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        report_sha(),
        Some(sha256_hex(&v2)),
        "the newer report stays"
    );
    assert_eq!(env.stats().submits, 1, "only version 2's image was billed");
}

/// A run left unfinished by `run --once` (Claid refused the key) is finished by the next
/// `run --once` at its start, and `on_manifest_done: delete` removes its manifest while the
/// inbox scan still lists it behind other manifests: a manifest gone before it is read is no
/// rejection (no "cannot read" error, no `rejected=` count, exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_its_resumed_run_deleted_before_the_scan_read_it_is_not_rejected() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(5)))).await;
    let config = env.config("", "on_manifest_done: delete\n");
    env.drop_file(
        "z.yaml",
        b"images:\n  - input: storage://demo/z-64x48.png\n",
    );
    env.emulator.control().set_forbidden(true);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 77, "Claid refused the key: {stderr}");
    env.emulator.control().set_forbidden(false);
    // Manifests the scan takes in before `z.yaml`, while the resumed run of `z.yaml` ends.
    for i in 0..6 {
        let mut text = String::from("images:\n");
        for j in 0..40 {
            text.push_str(&format!("  - input: storage://demo/a{i}-{j}-64x48.png\n"));
        }
        env.drop_file(&format!("a{i}.yaml"), text.as_bytes());
    }
    let (code, stderr) = env.run_once(&config).await;
    assert!(!stderr.contains("Manifest rejected"), "{stderr}");
    assert!(stderr.contains("rejected=0"), "{stderr}");
    assert_eq!(code, 0, "{stderr}");
    assert!(TestEnv::files_under(&env.rejected).is_empty());
    assert!(env.outbox.join("z").join("z-64x48.jpg").is_file());
}

/// A run whose images are held in doubt (their submit answers were lost, `in_doubt: hold`)
/// and whose manifest is then saved again: the old run is never replayed (the newer version
/// owns the file), so its held images stop waiting for a human. They end as `superseded`,
/// keep their possible bill counted (`in_doubt`) in the old run's own report, and neither
/// `jobs --state in-doubt` nor `replay --in-doubt` shows them any more.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_images_held_in_doubt_by_a_run_saved_again_end_superseded_and_counted() {
    let env = TestEnv::new(
        Scenario::default()
            .drop_share(1.0)
            .latency(Latency::Fixed(Duration::from_millis(50))),
    )
    .await;
    let config = env.config("batch: { max_images: 1 }", "in_doubt: hold\n");
    let cfg = config.to_str().unwrap();
    let v1 =
        b"images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n"
            .to_vec();
    let v2 = b"images:\n  - input: storage://demo/c-64x48.png\n".to_vec();
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file("m.yaml", &v1);
    let held = || async {
        let (code, out, _) = cli(&["jobs", "--state", "in-doubt", "--config", cfg]).await;
        (code == 0).then_some(out)
    };
    wait_until_async("both images of v1 are held", DEADLINE, || async {
        held().await.is_some_and(|out| out.ends_with("\n2 jobs\n"))
    })
    .await;
    // Each says why, as its report row will (the detail column was empty).
    let out = held().await.unwrap_or_default();
    assert_eq!(
        out.matches("in-doubt: the submit may have reached Claid")
            .count(),
        2,
        "{out}"
    );
    env.drop_file("m.yaml", &v2);
    wait_until("the old version's report", DEADLINE, || {
        env.superseded_report("m").is_some()
    })
    .await;
    wait_until_async("v2's image is held", DEADLINE, || async {
        held()
            .await
            .is_some_and(|out| out.contains("c-64x48") && out.ends_with("\n1 job\n"))
    })
    .await;
    stop(&mut daemon).await;

    let old: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.superseded_report("m").expect("report")).expect("read"),
    )
    .expect("JSON");
    assert_eq!(old["sha256"], sha256_hex(&v1).as_str());
    assert_eq!(
        old["in_doubt"], 2,
        "the possible bills are counted: {old:#}"
    );
    for row in old["jobs"].as_array().expect("rows") {
        assert_eq!(row["status"], "superseded", "{row}");
        assert_eq!(row["in_doubt"], 1, "{row}");
        assert!(
            row["reason"]
                .as_str()
                .is_some_and(|r| r.contains("held in doubt")),
            "{row}"
        );
    }
    // Only v2's image is held, and only it is replayed.
    let (_, out, _) = cli(&["jobs", "--state", "in-doubt", "--config", cfg]).await;
    assert!(
        out.contains("c-64x48") && out.ends_with("\n1 job\n"),
        "{out}"
    );
    let (_, out, _) = cli(&["jobs", "--state", "superseded", "--config", cfg]).await;
    assert!(out.ends_with("\n2 jobs\n"), "{out}");
    let (code, out, err) = cli(&["replay", "--in-doubt", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1 job"), "{out}");
}

/// `run --once` after a run held images in doubt: the manifest saved again supersedes the held
/// run, and when the new version delivers everything, nothing is held or failed any more, so
/// the exit is 0 and the last line counts no image held from before (it exited 2, and said
/// `held_from_before=1`, for a hold that had ended).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_exits_0_when_the_runs_it_found_held_are_superseded_and_delivered() {
    let env = TestEnv::new(Scenario::default().drop_share(1.0)).await;
    let config = env.config("batch: { max_images: 1 }", "in_doubt: hold\n");
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "held: {stderr}");
    assert!(stderr.contains("held_in_doubt=1"), "{stderr}");
    // The same manifest, saved again with one more image, to an API whose answers arrive.
    let answering = claid_hotfolder::emulator::spawn(Scenario::default())
        .await
        .expect("emulator");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(&env.emulator.base_url(), &answering.base_url()),
    )
    .expect("config");
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert!(env.superseded_report("m").is_some(), "{stderr}");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("held_from_before=0"), "{stderr}");
    // The new version ran in this same run (a race had the run stop before taking it in,
    // exit 0, with the re-saved manifest left in the inbox and the old report in the outbox).
    let report = env.report("m");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{report:#}");
    for row in rows {
        assert_eq!(row["status"], "done", "{report:#}");
    }
    assert!(!env.inbox.join("m.yaml").exists(), "{stderr}");
}

/// A manifest that never stops changing (still being written) does not keep `run --once`
/// waiting silently for ever: it says it waits, then goes on without it after its patience
/// (ten seconds here), naming the file; the other manifest is processed.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_does_not_wait_for_ever_for_a_file_still_being_written() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "ok.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let growing = env.inbox.join("grow.yaml");
    std::fs::write(&growing, b"images:\n").expect("start");
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (growing, stop) = (growing.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.is_cancelled() {
                tick.tick().await;
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&growing)
                    .expect("open");
                let _ = file.write_all(b"# still writing\n");
            }
        })
    };
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&env.config("", "")))
        .await
        .expect("run --once ends");
    stop.cancel();
    writer.await.expect("writer");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Waiting for files in the inbox to stop changing"),
        "{stderr}"
    );
    let warned = stderr
        .lines()
        .find(|l| l.contains("still being written"))
        .unwrap_or_else(|| panic!("the file is named:\n{stderr}"));
    assert!(warned.contains("grow.yaml"), "{warned}");
    assert!(env.outbox.join("ok/a-64x48.jpg").is_file());
    assert!(growing.is_file(), "left where it was");
}

/// A recipe saved as `.claid.yml` is told to be named `.claid.yaml` (not to lose its dot),
/// and an input whose scheme is written in capitals (`STORAGE://`, `HTTPS://`) is the same
/// URL: made, not refused by Claid.
#[tokio::test(flavor = "multi_thread")]
async fn a_misnamed_recipe_is_named_and_a_capital_scheme_is_read() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("studio/.claid.yml", b"output: { format: png }\n");
    env.drop_file("studio/p.png", &crate::support::png(64, 48));
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: STORAGE://demo/a-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("A folder recipe must be named `.claid.yaml`"),
        "{stderr}"
    );
    assert!(env.outbox.join("m/a-64x48.jpg").is_file(), "{stderr}");
}

/// `replay` of an ended run whose output another active manifest writes now is refused (both
/// would write it, and one report would describe a file the other replaced); once that one has
/// finished, the replay goes ahead and the replayed run holds its output again.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_whose_output_an_active_manifest_writes_is_refused_until_it_ends() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(800)))).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file(
        "own/a.yaml",
        format!("images:\n  - {{ input: \"http://127.0.0.1:{closed}/s1.png\", output: x.jpg }}\n")
            .as_bytes(),
    );
    wait_until("own/a.yaml ends with its image failed", DEADLINE, || {
        env.outbox.join("own/a.report.json").is_file()
    })
    .await;
    let rows: String = (0..6)
        .map(|i| format!("  - storage://demo/r{i}-64x48.png\n"))
        .collect();
    env.drop_file(
        "own.yaml",
        format!("images:\n{rows}  - {{ input: storage://demo/b-64x48.png, output: a/x.jpg }}\n")
            .as_bytes(),
    );
    wait_until("own.yaml runs", DEADLINE, || env.stats().submits >= 2).await;
    let config_arg = config.to_str().expect("utf-8");
    let (code, out, err) =
        cli(&["replay", "--manifest", "own/a.yaml", "--config", config_arg]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        out.contains("Refused") && out.contains("own.yaml") && out.contains("own/a/x.jpg"),
        "{out}"
    );
    wait_until("own.yaml ends", DEADLINE, || {
        env.outbox.join("own.report.json").is_file()
    })
    .await;
    // Its report is written a moment before its run ends and gives back its outputs: the
    // refusal (75, try again) lasts until then.
    let (code, out, err) = crate::support::wait_for("the run's end", DEADLINE, async || {
        let answer = cli(&["replay", "--manifest", "own/a.yaml", "--config", config_arg]).await;
        (answer.0 != 75).then_some(answer)
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1 job"), "{out}");
    stop(&mut daemon).await;
}

/// `s.yaml` ended with a failed image, then `s.json` (the same report path) ran: a replay of
/// `s.yaml`'s failed job is refused, naming the later manifest, and `s.json`'s report stays
/// (it was replaced by `s.yaml`'s, and no report of `s.json` was left anywhere).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_replay_never_writes_an_older_manifests_report_over_a_later_ones() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    env.drop_file(
        "s.yaml",
        b"images:\n  - input: storage://demo/corrupt-64x48.png\n",
    );
    let (code, log) = env.run_once(&config).await;
    assert_eq!(code, 2, "{log}");
    env.drop_file(
        "s.json",
        br#"{"images": [{"input": "storage://demo/j-64x48.png"}]}"#,
    );
    let (code, log) = env.run_once(&config).await;
    assert_eq!(code, 0, "{log}");
    let report = env.outbox.join("s.report.json");
    let later = std::fs::read_to_string(&report).expect("report");
    assert!(later.contains("\"s.json\""), "{later}");
    let (code, out, err) = cli(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
    let said = format!("{out}{err}");
    assert!(
        said.contains("`s.yaml` is not replayed") && said.contains("`s.json`"),
        "{code}: {said}"
    );
    let (code, log) = env.run_once(&config).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(&report).expect("report"),
        later,
        "the later manifest's report stays"
    );
    assert_eq!(env.stats().submits, 2, "nothing replayed");
}

/// A drop of one image made while a large drop is being submitted goes in its turn, not
/// after the whole large one: its output is written while the large drop still runs (with
/// one queue for every run, it waited for all of it: twenty minutes behind 5,000 images at
/// Claid's default rate).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_small_drop_is_not_queued_behind_a_large_one() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("max_in_flight: 2", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("requests_per_second: 1000", "requests_per_second: 10");
    std::fs::write(&config, text).expect("config");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the daemon is ready", Duration::from_secs(30), || {
        env.socket().exists()
    })
    .await;
    let rows: String = (0..150)
        .map(|i| format!("  - input: storage://demo/big{i}-64x48.png\n"))
        .collect();
    env.drop_file("big.yaml", format!("images:\n{rows}").as_bytes());
    wait_until("the large drop under way", Duration::from_secs(30), || {
        env.stats().submits >= 4
    })
    .await;
    env.drop_file(
        "small.yaml",
        b"images:\n  - input: storage://demo/small-64x48.png\n",
    );
    wait_until("the small drop made", Duration::from_secs(60), || {
        env.outbox.join("small/small-64x48.jpg").is_file()
    })
    .await;
    assert!(
        !env.outbox.join("big.report.json").exists(),
        "the large drop still runs: {}",
        env.stats().submits
    );
    assert!(env.stats().submits < 150, "{}", env.stats().submits);
    stop(&mut daemon).await;
}

/// Two large manifests being validated hold both of intake's workers; a small drop made
/// meanwhile is taken in by a lane of its own, before either (it waited for one of them:
/// 13 s behind two 85,000-image manifests).
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_small_drop_is_taken_in_while_large_ones_are_validated() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the daemon is ready", Duration::from_secs(30), || {
        env.socket().exists()
    })
    .await;
    for big in ["big1", "big2"] {
        let rows: String = (0..40_000)
            .map(|i| format!("  - input: storage://demo/{big}-{i}-64x48.png\n"))
            .collect();
        env.drop_file(
            &format!("{big}.yaml"),
            format!("images:\n{rows}").as_bytes(),
        );
    }
    wait_until(
        "both large ones under validation",
        Duration::from_secs(30),
        || {
            let log = env.daemon_log(0);
            log.contains("manifest=big1.yaml") && log.contains("manifest=big2.yaml")
        },
    )
    .await;
    env.drop_file(
        "small.yaml",
        b"images:\n  - input: storage://demo/small-64x48.png\n",
    );
    wait_until("the small one taken in", Duration::from_secs(120), || {
        env.daemon_log(0).contains(
            "manifest{manifest=small.yaml}: claid_hotfolder::pipeline::intake: Manifest accepted",
        )
    })
    .await;
    let log = env.daemon_log(0);
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Manifest accepted"))
        .collect();
    assert!(
        accepted.first().is_some_and(|l| l.contains("small.yaml")),
        "the small drop first: {accepted:#?}"
    );
    stop(&mut daemon).await;
}

/// A fix saved over a broken manifest while the broken version is being validated is the
/// version taken in: it runs, and nothing goes to `rejected/` (the fix was moved there with the
/// broken version's problems, and never ran).
#[tokio::test(flavor = "multi_thread")]
async fn a_fix_saved_while_the_broken_version_is_validated_runs_and_is_not_rejected() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    // Broken at its last row (an output written twice), so validation reads it all.
    let mut broken = large_manifest();
    broken.extend_from_slice(
        b"  - { input: \"https://cdn.example.com/sku/x.jpg\", output: \"o/0.webp\" }\n",
    );
    env.drop_file("m.yaml", &broken);
    wait_until("validation started", DEADLINE, || {
        env.daemon_log(0).contains("Validating the manifest")
    })
    .await;
    let fix = b"images:\n  - input: storage://demo/fixed-64x48.png\n".to_vec();
    env.drop_file("m.yaml", &fix);
    wait_until("the fix is archived", DEADLINE, || {
        TestEnv::files_under(&env.archive).len() == 1
    })
    .await;
    stop(&mut daemon).await;
    assert_eq!(
        std::fs::read(env.archive.join("m.yaml")).expect("archived"),
        fix
    );
    assert!(env.outbox.join("m/fixed-64x48.jpg").is_file());
    assert_eq!(env.report("m")["jobs"][0]["status"], "done");
    assert!(
        TestEnv::files_under(&env.rejected).is_empty(),
        "{:?}",
        error_files(&env.rejected)
    );
}

/// A version replaced while it is being validated (before its run was taken in) is never
/// registered: nothing of it is submitted (it was, and billed, with no archived copy of it).
#[tokio::test(flavor = "multi_thread")]
async fn a_version_replaced_while_it_is_validated_is_never_submitted() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    env.drop_file("m.yaml", &large_manifest());
    wait_until("validation started", DEADLINE, || {
        env.daemon_log(0).contains("Validating the manifest")
    })
    .await;
    let new = b"images:\n  - input: storage://demo/new-64x48.png\n".to_vec();
    env.drop_file("m.yaml", &new);
    wait_until("the new version is archived", DEADLINE, || {
        TestEnv::files_under(&env.archive).len() == 1
    })
    .await;
    stop(&mut daemon).await;
    assert_eq!(
        std::fs::read(env.archive.join("m.yaml")).expect("archived"),
        new
    );
    let stats = env.stats();
    assert_eq!(stats.submits + stats.batch_images, 1, "{stats:?}");
    assert!(
        env.superseded_report("m").is_none(),
        "no run of the replaced version"
    );
}

/// `run --once` with an `https://` base URL on a port that speaks plain HTTP (the emulator)
/// ends 69 at once, not at `api.unreachable_timeout` (ten minutes here: no retry mends it),
/// with a last line that says the TLS handshake failed and names the likely fix; it was
/// rustls' "received corrupt message of type InvalidContentType", naming neither. The image
/// stays in the store for the next run.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_names_a_tls_handshake_with_a_plain_http_server() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let plain = env.emulator.base_url();
    let text = std::fs::read_to_string(env.config("", "")).expect("config");
    let pointed = text
        .replace(&plain, &plain.replacen("http://", "https://", 1))
        .replace("api:\n", "api:\n  unreachable_timeout: 10m\n");
    let path = env.dir.path().join("https-on-plain.yaml");
    std::fs::write(&path, pointed).expect("config");
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&path))
        .await
        .expect("run --once ends");
    assert_eq!(code, 69, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("TLS handshake failed") && last.contains("http://"),
        "{last}"
    );
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "the kept job finishes:\n{stderr}");
    assert!(env.outbox.join("m/a-64x48.jpg").is_file());
    assert_eq!(env.stats().submits, 1);
}

/// The same under `run --once`, which has no watcher to offer the file again: the fix saved
/// while the broken version is validated is taken again at once, runs, and `run --once` ends
/// with nothing left in the inbox and nothing rejected.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_takes_a_fix_saved_while_the_broken_version_is_validated() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut broken = large_manifest();
    broken.extend_from_slice(
        b"  - { input: \"https://cdn.example.com/sku/x.jpg\", output: \"o/0.webp\" }\n",
    );
    env.drop_file("m.yaml", &broken);
    let log_path = env.dir.path().join("once.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut once = tokio::process::Command::new(crate::support::bin())
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("run --once starts");
    wait_until("validation started", DEADLINE, || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("Validating the manifest"))
    })
    .await;
    let fix = b"images:\n  - input: storage://demo/fixed-64x48.png\n".to_vec();
    env.drop_file("m.yaml", &fix);
    let status = tokio::time::timeout(DEADLINE, once.wait())
        .await
        .expect("run --once ends")
        .expect("status");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        std::fs::read(env.archive.join("m.yaml")).expect("archived"),
        fix,
        "{log}"
    );
    assert!(env.outbox.join("m/fixed-64x48.jpg").is_file(), "{log}");
    assert!(TestEnv::files_under(&env.rejected).is_empty(), "{log}");
    assert!(!env.inbox.join("m.yaml").exists(), "{log}");
}

/// `run --once`'s closing line counts as `done` the images made in this run, as the report
/// does, and rows already done before as `unchanged` only: the counts add up to `jobs`. (It
/// counted the unchanged rows in `done` too: 14 done and 12 unchanged of 14 jobs.)
#[tokio::test(flavor = "multi_thread")]
async fn the_closing_line_counts_unchanged_rows_once_as_the_report_does() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let first =
        "images:\n  - input: storage://demo/u0-64x48.png\n  - input: storage://demo/u1-64x48.png\n";
    env.drop_file("m.yaml", first.as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    env.drop_file(
        "m.yaml",
        format!("{first}  - input: storage://demo/u2-64x48.png\n").as_bytes(),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let field = |name: &str| {
        crate::batch::processed_field(&stderr, name)
            .unwrap_or_else(|| panic!("no {name}= in the closing line:\n{stderr}"))
    };
    assert_eq!(
        (field("jobs"), field("done"), field("unchanged")),
        (3, 1, 2),
        "{stderr}"
    );
    let report = env.report("m");
    assert_eq!(report["counts"]["done"], 1, "{report:#}");
    assert_eq!(report["counts"]["unchanged"], 2, "{report:#}");
}

/// `run --once` takes a manifest saved again while it runs as the daemon does: the old version
/// stops submitting, the new one runs in the same `run --once` (its report is the plain one,
/// it is archived), and the old version's rows the new one dropped are not billed. (`run
/// --once` has no watcher: every row of the old version was submitted and billed, and the new
/// version was left in the inbox for the next run; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue11_run_once_takes_a_manifest_saved_again_while_it_runs() {
    // Images of 3 s, one at a time: the new version is seen within 2 s of its save.
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(3000))))
            .await;
    let mut v1 = String::from("images:\n");
    for i in 0..6 {
        v1.push_str(&format!("  - input: storage://demo/old{i}-64x48.png\n"));
    }
    let v2 = b"images:\n  - input: storage://demo/old0-64x48.png\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
    env.drop_file("m.yaml", v1.as_bytes());
    let resave = async {
        wait_until("the first submit", DEADLINE, || env.stats().submits >= 1).await;
        env.drop_file("m.yaml", &v2);
    };
    let ((code, stderr), ()) = tokio::join!(env.run_once(&config), resave);
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("m");
    assert_eq!(report["sha256"], sha256_hex(&v2).as_str(), "{stderr}");
    assert_eq!(
        crate::support::report_inputs(&report),
        [
            "storage://demo/old0-64x48.png",
            "storage://demo/new-64x48.png"
        ]
    );
    for row in report["jobs"].as_array().expect("rows") {
        assert!(
            row["status"] == "done" || row["status"] == "unchanged",
            "{row}"
        );
    }
    let stats = env.stats();
    let dropped: u64 = (1..6)
        .map(|i| crate::support::submits_of(&stats, &format!("old{i}-")) as u64)
        .sum();
    assert!(
        dropped <= 2,
        "the old version stopped submitting: {:?}",
        stats.submits_by_key
    );
    assert!(
        !env.inbox.join("m.yaml").exists(),
        "the new version ran and was archived"
    );
}

/// A broken save that is never fixed still ends `run --once` 2 when the daemon itself puts back
/// the valid version saved before it (that version waited for the running one to drain): it
/// is older than the rejection, so it mends nothing (it was taken as a fix; review).
#[tokio::test]
async fn issue11_a_broken_save_the_daemon_puts_an_older_version_back_over_still_ends_it_2() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(4)))).await;
    let mut v1 = String::from("images:\n");
    for i in 0..4 {
        v1.push_str(&format!("  - input: storage://demo/old{i}-64x48.png\n"));
    }
    let v2 = b"images:\n  - input: storage://demo/new-64x48.png\n".to_vec();
    let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
    env.drop_file("m.yaml", v1.as_bytes());
    let resaves = async {
        wait_until("the first submit", DEADLINE, || env.stats().submits >= 1).await;
        env.drop_file("m.yaml", &v2);
        wait_until("the valid version waiting for the drain", DEADLINE, || {
            env.inbox.join(".m.yaml.claid-pending").exists()
        })
        .await;
        env.drop_file("m.yaml", b"images: [\n");
    };
    let ((code, stderr), ()) = tokio::join!(env.run_once(&config), resaves);
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("no longer counts"), "{stderr}");
    assert!(env.rejected.join("m.yaml.error.txt").exists(), "{stderr}");
    assert_eq!(
        env.report("m")["sha256"],
        sha256_hex(&v2).as_str(),
        "the version put back ran: {stderr}"
    );
}

/// A broken save fixed within the same `run --once` (a valid version saved at the path, or
/// the running version put back) takes the rejection back: every image was made, so the run
/// ends 0, not 2; the rejected copy stays in `rejected/` for the record.
#[tokio::test]
async fn issue11_a_broken_save_fixed_within_run_once_ends_it_0() {
    for put_back in [false, true] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(1500))))
                .await;
        let mut v1 = String::from("images:\n");
        for i in 0..6 {
            v1.push_str(&format!("  - input: storage://demo/old{i}-64x48.png\n"));
        }
        let v2 = b"images:\n  - input: storage://demo/new-64x48.png\n".to_vec();
        let fixed = if put_back { v1.as_bytes().to_vec() } else { v2 };
        let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
        env.drop_file("m.yaml", v1.as_bytes());
        let resaves = async {
            wait_until("the first submit", DEADLINE, || env.stats().submits >= 1).await;
            env.drop_file("m.yaml", b"images: [\n");
            wait_until("the broken save rejected", DEADLINE, || {
                env.rejected.join("m.yaml.error.txt").exists()
            })
            .await;
            env.drop_file("m.yaml", &fixed);
        };
        let ((code, stderr), ()) = tokio::join!(env.run_once(&config), resaves);
        assert_eq!(code, 0, "put back {put_back}: {stderr}");
        assert!(
            stderr.contains("that rejection no longer counts"),
            "put back {put_back}: {stderr}"
        );
        let report = env.report("m");
        assert_eq!(report["sha256"], sha256_hex(&fixed).as_str(), "{stderr}");
        for row in report["jobs"].as_array().expect("rows") {
            assert!(
                row["status"] == "done" || row["status"] == "unchanged",
                "{row}"
            );
        }
        assert_eq!(
            std::fs::read(env.rejected.join("m.yaml")).expect("the rejected copy stays"),
            b"images: [\n"
        );
    }
}
