//! The watcher: stable files are emitted once, files still being written wait for the settle
//! window, hidden and temporary files are ignored, the rescan finds files without events, and
//! nested folders are walked. Outcomes are awaited on a condition with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use claid_hotfolder::config::WatchConfig;
use claid_hotfolder::watcher::{self, Candidate, CandidateKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

fn watch(settle_ms: u64, rescan_ms: u64, poll_only: bool) -> WatchConfig {
    WatchConfig {
        settle: Duration::from_millis(settle_ms),
        rescan: Duration::from_millis(rescan_ms),
        poll_only,
    }
}

/// Writes `path` with an mtime an hour ago (an "old" file, stable at first sight).
fn write_old(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// A running watcher and the receiving end of its candidates.
struct Running {
    rx: mpsc::Receiver<Candidate>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), watcher::WatchError>>,
}

fn start(inbox: &Path, watch: WatchConfig) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run(inbox.to_owned(), watch, tx, shutdown.clone()));
    Running { rx, shutdown, task }
}

impl Running {
    /// The next candidate, or a panic after the deadline.
    async fn next(&mut self) -> Candidate {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("a candidate before the deadline")
            .expect("watcher alive")
    }

    /// Asserts nothing is emitted during `window` (several rescans and settle windows).
    async fn nothing_for(&mut self, window: Duration) {
        if let Ok(got) = tokio::time::timeout(window, self.rx.recv()).await {
            panic!("unexpected candidate {got:?}");
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let res = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("watcher stops on shutdown")
            .expect("no panic");
        assert!(res.is_ok(), "{res:?}");
    }
}

fn canonical_tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().canonicalize().unwrap().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    (dir, inbox)
}

#[tokio::test]
async fn old_stable_file_is_emitted_once() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("a.yaml"), "images: []\n");
    // Settle is long: an old file must not wait for it.
    let mut running = start(&inbox, watch(5_000, 50, false));
    let got = running.next().await;
    assert_eq!(got.path, inbox.join("a.yaml"));
    assert_eq!(got.fingerprint.size, 11);
    running.nothing_for(Duration::from_millis(400)).await;
    running.stop().await;
}

#[tokio::test]
async fn file_still_being_written_is_emitted_only_once_stable() {
    let (_dir, inbox) = canonical_tempdir();
    let path = inbox.join("growing.yaml");
    let mut running = start(&inbox, watch(200, 30, true));
    // Keep writing for a while, each write well inside the settle window.
    let mut text = String::from("images:\n");
    for i in 0..8 {
        text.push_str(&format!("  - input: https://c.example/{i}.jpg\n"));
        std::fs::write(&path, &text).unwrap();
        // Between writes: the file changed less than `settle` ago, so nothing may come out.
        match tokio::time::timeout(Duration::from_millis(60), running.rx.recv()).await {
            Err(_) => {}
            Ok(got) => panic!("emitted while being written: {got:?}"),
        }
    }
    let got = running.next().await;
    assert_eq!(got.path, path);
    assert_eq!(got.fingerprint.size, text.len() as u64, "the final version");
    running.nothing_for(Duration::from_millis(400)).await;
    running.stop().await;
}

#[tokio::test]
async fn changed_file_is_emitted_again() {
    let (_dir, inbox) = canonical_tempdir();
    let path = inbox.join("m.yaml");
    write_old(&path, "v1\n");
    let mut running = start(&inbox, watch(100, 30, false));
    let first = running.next().await;
    std::fs::write(&path, "version 2\n").unwrap();
    let second = running.next().await;
    assert_eq!(second.path, path);
    assert_ne!(second.fingerprint, first.fingerprint);
    assert_eq!(second.fingerprint.size, 10);
    running.nothing_for(Duration::from_millis(300)).await;
    running.stop().await;
}

#[tokio::test]
async fn hidden_temp_and_non_manifest_files_are_ignored() {
    let (_dir, inbox) = canonical_tempdir();
    for name in [
        ".hidden.yaml",
        "a.yaml.tmp",
        "b.part",
        "c.yaml.crdownload",
        "~$d.yaml",
        ".e.yaml.swp",
        "f.yaml~",
        ".claid.yaml",
        "g.report.json",
        "other/photo.png",
        "notes.txt",
        ".git/h.yaml",
        "sub/.hidden/i.yaml",
    ] {
        write_old(&inbox.join(name), "x\n");
    }
    write_old(&inbox.join("real.yaml"), "images: []\n");
    write_old(&inbox.join("sub/real.json"), "{}\n");
    let found = watcher::scan_stable(&inbox, &watch(100, 1000, true))
        .await
        .unwrap();
    let paths: Vec<_> = found.iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths,
        vec![inbox.join("real.yaml"), inbox.join("sub/real.json")]
    );
}

#[tokio::test]
async fn rescan_finds_files_without_events_in_poll_only_mode() {
    let (_dir, inbox) = canonical_tempdir();
    let mut running = start(&inbox, watch(50, 100, true));
    running.nothing_for(Duration::from_millis(150)).await;
    write_old(&inbox.join("late.yaml"), "images: []\n");
    let got = running.next().await;
    assert_eq!(got.path, inbox.join("late.yaml"));
    running.stop().await;
}

#[tokio::test]
async fn notify_event_wakes_a_scan_before_the_rescan() {
    let (_dir, inbox) = canonical_tempdir();
    // The rescan is far away: only the event can make this fast.
    let mut running = start(&inbox, watch(50, 600_000, false));
    // Give notify a moment to be set up by the first loop iteration (condition: first scan done).
    running.nothing_for(Duration::from_millis(100)).await;
    write_old(&inbox.join("evented.yaml"), "images: []\n");
    let got = running.next().await;
    assert_eq!(got.path, inbox.join("evented.yaml"));
    running.stop().await;
}

#[tokio::test]
async fn nested_folders_are_walked() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("a/b/c/deep.yaml"), "images: []\n");
    write_old(&inbox.join("a/top.yml"), "images: []\n");
    let mut running = start(&inbox, watch(50, 50, true));
    let mut got = vec![running.next().await.path, running.next().await.path];
    got.sort();
    assert_eq!(
        got,
        vec![inbox.join("a/b/c/deep.yaml"), inbox.join("a/top.yml")]
    );
    // A folder created later is found too.
    write_old(&inbox.join("x/y/new.yaml"), "images: []\n");
    assert_eq!(running.next().await.path, inbox.join("x/y/new.yaml"));
    running.stop().await;
}

#[tokio::test]
async fn symlinked_folder_outside_the_inbox_is_not_followed() {
    let (dir, inbox) = canonical_tempdir();
    let outside = dir.path().canonicalize().unwrap().join("outside");
    write_old(&outside.join("o.yaml"), "images: []\n");
    std::os::unix::fs::symlink(&outside, inbox.join("link")).unwrap();
    write_old(&inbox.join("in.yaml"), "images: []\n");
    let found = watcher::scan_stable(&inbox, &watch(50, 1000, true))
        .await
        .unwrap();
    let paths: Vec<_> = found.iter().map(|c| c.path.clone()).collect();
    assert_eq!(paths, vec![inbox.join("in.yaml")]);
}

#[tokio::test]
async fn scan_stable_is_instant_on_an_old_inbox_and_waits_for_fresh_files() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("old.yaml"), "images: []\n");
    let started = tokio::time::Instant::now();
    let found = watcher::scan_stable(&inbox, &watch(60_000, 60_000, true))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an old inbox must not wait for settle"
    );

    std::fs::write(inbox.join("fresh.yaml"), "images: []\n").unwrap();
    let started = tokio::time::Instant::now();
    let found = watcher::scan_stable(&inbox, &watch(150, 60_000, true))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "a fresh file waits for settle"
    );
}

#[tokio::test]
async fn missing_inbox_is_an_error_for_scan_stable_but_not_for_run() {
    let (dir, _inbox) = canonical_tempdir();
    let missing = dir.path().join("nope");
    let err = watcher::scan_stable(&missing, &watch(50, 50, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "inbox-unreadable");

    // `run` keeps going and finds the inbox once it exists.
    let mut running = start(&missing, watch(50, 50, true));
    running.nothing_for(Duration::from_millis(120)).await;
    write_old(&missing.join("a.yaml"), "images: []\n");
    assert_eq!(running.next().await.path, missing.join("a.yaml"));
    running.stop().await;
}

// ---- Folder recipes (README "Folder recipes") ---------------------------------------------------------------

#[tokio::test]
async fn images_are_candidates_only_directly_in_a_folder_with_a_recipe() {
    let (_dir, inbox) = canonical_tempdir();
    for name in [
        "r/.claid.yaml",
        "r/a.png",
        "r/B.JPEG",
        "r/c.webp",
        "r/notes.txt",
        "r/.hidden.png",
        "r/d.png.part",
        "r/~$e.png",
        "r/sub/nested.png",
        "plain/loose.png",
        "top.png",
        "m.yaml",
    ] {
        write_old(&inbox.join(name), "x\n");
    }
    let found = watcher::scan_stable(&inbox, &watch(100, 1000, true))
        .await
        .unwrap();
    let got: Vec<_> = found
        .iter()
        .map(|c| (c.path.strip_prefix(&inbox).unwrap().to_owned(), c.kind))
        .collect();
    let want: Vec<(PathBuf, CandidateKind)> = [
        ("m.yaml", CandidateKind::Manifest),
        ("r/B.JPEG", CandidateKind::RecipeImage),
        ("r/a.png", CandidateKind::RecipeImage),
        ("r/c.webp", CandidateKind::RecipeImage),
    ]
    .into_iter()
    .map(|(p, k)| (PathBuf::from(p), k))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_image_is_emitted_once_a_recipe_appears_and_again_when_the_recipe_changes() {
    let (_dir, inbox) = canonical_tempdir();
    let image = inbox.join("r/pic.png");
    write_old(&image, "png\n");
    let mut running = start(&inbox, watch(100, 30, true));
    // No recipe yet: the image is not a candidate, however many rescans pass.
    running.nothing_for(Duration::from_millis(300)).await;
    std::fs::write(inbox.join("r/.claid.yaml"), "operations: {}\n").unwrap();
    let got = running.next().await;
    assert_eq!(
        (got.path.as_path(), got.kind),
        (image.as_path(), CandidateKind::RecipeImage)
    );
    assert_eq!(got.fingerprint.size, 4, "the image's own fingerprint");
    running.nothing_for(Duration::from_millis(300)).await;
    // A changed recipe makes the image still in the folder a new version.
    std::fs::write(inbox.join("r/.claid.yaml"), "output: { format: png }\n").unwrap();
    let again = running.next().await;
    assert_eq!(again.path, image);
    running.stop().await;
}

// ---- Watch robustness ------------------------------------------------------------------------

fn start_with(inbox: &Path, watch: WatchConfig, source: watcher::EventSource) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watcher::run_with(
        inbox.to_owned(),
        watch,
        tx,
        shutdown.clone(),
        source,
    ));
    Running { rx, shutdown, task }
}

#[tokio::test]
async fn an_exhausted_inotify_limit_falls_back_to_polling_and_files_are_still_found() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("first.yaml"), "images: []\n");
    let mut running = start_with(
        &inbox,
        watch(50, 100, false),
        watcher::EventSource::SimulatedWatchLimit,
    );
    assert_eq!(running.next().await.path, inbox.join("first.yaml"));
    // No watch exists; the periodic rescan finds later drops, in nested folders too.
    write_old(&inbox.join("later/second.yaml"), "images: []\n");
    assert_eq!(running.next().await.path, inbox.join("later/second.yaml"));
    running.stop().await;
}

#[tokio::test]
async fn an_event_queue_overflow_triggers_an_immediate_full_scan() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("first.yaml"), "images: []\n");
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    // The rescan is far away and the injected source sends no events of its own.
    let mut running = start_with(
        &inbox,
        watch(50, 600_000, false),
        watcher::EventSource::Injected(rx),
    );
    assert_eq!(running.next().await.path, inbox.join("first.yaml"));
    write_old(&inbox.join("unseen.yaml"), "images: []\n");
    // Its event was "lost": nothing finds it...
    running.nothing_for(Duration::from_millis(300)).await;
    // ...until notify reports the overflow, exactly as its inotify backend does.
    let overflow =
        notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert!(overflow.need_rescan());
    events.send(Ok(overflow)).unwrap();
    assert_eq!(running.next().await.path, inbox.join("unseen.yaml"));
    running.stop().await;
}

#[tokio::test]
async fn a_deleted_and_recreated_inbox_and_subfolder_are_watched_again() {
    let (_dir, inbox) = canonical_tempdir();
    write_old(&inbox.join("sub/first.yaml"), "images: []\n");
    // Events only: with this rescan, nothing below can be found by the periodic scan.
    let mut running = start(&inbox, watch(50, 600_000, false));
    assert_eq!(running.next().await.path, inbox.join("sub/first.yaml"));

    // The whole inbox tree goes away and comes back.
    std::fs::remove_dir_all(&inbox).unwrap();
    write_old(&inbox.join("sub/again.yaml"), "images: []\n");
    assert_eq!(running.next().await.path, inbox.join("sub/again.yaml"));
    // The new inbox folder is watched: a later drop is found by its event.
    write_old(&inbox.join("after.yaml"), "images: []\n");
    assert_eq!(running.next().await.path, inbox.join("after.yaml"));

    // A sub-folder goes away and comes back, deeper.
    std::fs::remove_dir_all(inbox.join("sub")).unwrap();
    write_old(&inbox.join("sub/deeper/third.yaml"), "images: []\n");
    assert_eq!(
        running.next().await.path,
        inbox.join("sub/deeper/third.yaml")
    );
    write_old(&inbox.join("sub/deeper/fourth.yaml"), "images: []\n");
    assert_eq!(
        running.next().await.path,
        inbox.join("sub/deeper/fourth.yaml")
    );
    running.stop().await;
}

/// Through the real daemon: the simulated inotify limit logs one error naming the sysctl, and
/// a manifest dropped afterwards is still processed (found by polling).
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_the_inotify_limit_once_and_still_processes_drops() {
    use crate::support::{TestEnv, stop, wait_until};
    let env = TestEnv::new(claid_hotfolder::emulator::Scenario::default()).await;
    let config = env.config("", "");
    let log_path = env.dir.path().join("daemon-limit.log");
    let mut daemon = tokio::process::Command::new(crate::support::bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env(watcher::SIMULATE_WATCH_LIMIT_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("daemon starts");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let limit_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("fs.inotify.max_user_watches"))
            .count()
    };
    wait_until("the inotify limit error", DEADLINE, || {
        limit_lines(&log()) > 0
    })
    .await;
    env.drop_file(
        "late/list.yaml",
        b"images:\n  - input: storage://demo/cap-100x100.png\n",
    );
    env.drop_file(
        "again/list.yaml",
        b"images:\n  - input: storage://demo/hat-100x100.png\n",
    );
    wait_until("both manifests processed by polling", DEADLINE, || {
        env.outbox.join("late/list/cap-100x100.jpg").is_file()
            && env.outbox.join("again/list/hat-100x100.jpg").is_file()
    })
    .await;
    let status = stop(&mut daemon).await;
    let log = log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(
        limit_lines(&log),
        1,
        "one clear error, not one per scan:\n{log}"
    );
    assert!(log.contains("ERROR"), "{log}");
    assert!(log.contains("falling back to polling"), "{log}");
}

// ---- Symlinks (issue 11 §7) ------------------------------------------------------------------

/// No symlink is followed, wherever it points: a manifest link (inside or outside the inbox) is
/// handed over as a `Link` with the link's own fingerprint; a linked folder is not entered; a
/// linked image in a recipe folder, and the images of a folder whose recipe is a link, are not
/// candidates. Today's code followed links that point inside the inbox.
#[tokio::test]
async fn issue11_symlinks_are_never_followed_and_a_manifest_link_is_a_link_candidate() {
    use std::os::unix::fs::symlink;

    let (dir, inbox) = canonical_tempdir();
    let outside = dir.path().canonicalize().unwrap().join("outside");
    write_old(&outside.join("o.yaml"), "images: []\n");
    write_old(&inbox.join(".stash/target.yaml"), "images: []\n");
    write_old(&inbox.join(".stash/p.png"), "png\n");
    write_old(&inbox.join(".stash/recipe.yaml"), "operations: {}\n");
    symlink(".stash/target.yaml", inbox.join("inside.yaml")).unwrap();
    symlink(outside.join("o.yaml"), inbox.join("outside.yaml")).unwrap();
    symlink(&outside, inbox.join("team")).unwrap();
    symlink(".stash", inbox.join("stash-link")).unwrap();
    write_old(&inbox.join("r/.claid.yaml"), "operations: {}\n");
    write_old(&inbox.join("r/real.png"), "png\n");
    symlink("../.stash/p.png", inbox.join("r/pic.png")).unwrap();
    write_old(&inbox.join("q/x.png"), "png\n");
    symlink("../.stash/recipe.yaml", inbox.join("q/.claid.yaml")).unwrap();
    write_old(&inbox.join("real.yaml"), "images: []\n");

    let found = watcher::scan_stable(&inbox, &watch(100, 1000, true))
        .await
        .unwrap();
    let got: Vec<_> = found
        .iter()
        .map(|c| (c.path.strip_prefix(&inbox).unwrap().to_owned(), c.kind))
        .collect();
    let want: Vec<(PathBuf, CandidateKind)> = [
        ("inside.yaml", CandidateKind::Link),
        ("outside.yaml", CandidateKind::Link),
        ("r/real.png", CandidateKind::RecipeImage),
        ("real.yaml", CandidateKind::Manifest),
    ]
    .into_iter()
    .map(|(p, k)| (PathBuf::from(p), k))
    .collect();
    assert_eq!(got, want);
    // The link's own size (the length of the path it holds), not its target's.
    assert_eq!(found[0].fingerprint.size, ".stash/target.yaml".len() as u64);
    assert_eq!(
        found[1].fingerprint.size,
        outside.join("o.yaml").as_os_str().len() as u64
    );
}
