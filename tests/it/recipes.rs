//! Folder recipes (README "Folder recipes") through the real binary: images dropped into a folder with a
//! `.claid.yaml` become mirrored outputs and the sources move per `on_manifest_done`; a bad
//! recipe rejects the images with its line; images without a recipe are left alone; manifests
//! and recipes work side by side; re-drops cost nothing; the daemon picks drops up live.

use std::path::Path;
use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario};

use crate::support::{TestEnv, dimensions, png, stop, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// Crop to 200×100, JPEG output.
const RECIPE: &str = "\
operations:
  resizing: { width: 200, height: 100, fit: crop }
output: { format: jpeg }
";

fn format_of(path: &Path) -> Option<image::ImageFormat> {
    image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .format()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, 90, (y % 256) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .expect("encode jpeg");
    bytes
}

/// A recipe folder `a/b`, two images in it, an image in its subfolder (no recipe there), an
/// image in a folder without a recipe, and a manifest beside the images.
fn drop_mixed_tree(env: &TestEnv) {
    env.drop_file("a/b/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("a/b/shoe.png", &png(640, 480));
    env.drop_file("a/b/boot.JPG", &jpeg(300, 300));
    env.drop_file("a/b/sub/nested.png", &png(50, 50));
    env.drop_file("plain/loose.png", &png(60, 60));
    env.drop_file(
        "a/b/catalog.yaml",
        b"images:\n  - input: storage://demo/hat-800x600.png\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_folder_images_become_mirrored_outputs_and_sources_are_archived() {
    let env = TestEnv::new(Scenario::default()).await;
    drop_mixed_tree(&env);
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");

    for rel in ["a/b/shoe.jpg", "a/b/boot.jpg"] {
        let path = env.outbox.join(rel);
        assert!(
            path.is_file(),
            "missing {rel}; outbox: {:?}",
            TestEnv::files_under(&env.outbox)
        );
        assert_eq!(dimensions(&path), (200, 100), "dimensions of {rel}");
        assert_eq!(format_of(&path), Some(image::ImageFormat::Jpeg), "{rel}");
    }
    // Sources archived, mirrored; the recipe stays for the next drops.
    assert!(env.archive.join("a/b/shoe.png").is_file());
    assert!(env.archive.join("a/b/boot.JPG").is_file());
    assert!(!env.inbox.join("a/b/shoe.png").exists());
    assert!(env.inbox.join("a/b/.claid.yaml").is_file());
    // Images outside a recipe folder (or in its subfolder) are neither moved nor submitted.
    assert!(env.inbox.join("a/b/sub/nested.png").is_file());
    assert!(env.inbox.join("plain/loose.png").is_file());
    assert!(!env.outbox.join("a/b/sub").exists());
    assert!(!env.outbox.join("plain").exists());
    // The manifest beside the images ran as a manifest, with its report.
    assert!(env.outbox.join("a/b/catalog/hat-800x600.jpg").is_file());
    assert!(env.archive.join("a/b/catalog.yaml").is_file());
    assert_eq!(env.report("a/b/catalog")["counts"]["done"], 1);
    // Recipe images get no per-image report.
    let reports: Vec<_> = TestEnv::files_under(&env.outbox)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".report."))
        .collect();
    assert_eq!(
        reports,
        vec![
            Path::new("a/b/catalog.report.csv").to_path_buf(),
            Path::new("a/b/catalog.report.json").to_path_buf()
        ]
    );
    let stats = env.stats();
    assert_eq!(
        stats.uploads, 2,
        "one upload per recipe image, nothing else"
    );
    assert_eq!(stats.submits, 1, "the manifest's one remote image");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_image_dropped_again_costs_zero_api_calls() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    let shoe = png(640, 480);
    env.drop_file("r/shoe.png", &shoe);
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let before = env.stats();
    assert_eq!(before.uploads, 1);

    env.drop_file("r/shoe.png", &shoe);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(
        env.stats().requests,
        before.requests,
        "no API request for an identical re-drop"
    );
    assert!(
        !env.inbox.join("r/shoe.png").exists(),
        "the re-drop is archived too"
    );
    assert_eq!(dimensions(&env.outbox.join("r/shoe.jpg")), (200, 100));
}

/// An image in a recipe folder whose name is not UTF-8 is taken in and refused, with an
/// error file saying to rename it (it lay in the inbox, unseen and untold, for ever); the
/// others are made.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_image_whose_name_is_not_utf8_is_rejected_with_a_reason() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/ok.png", &png(640, 480));
    let name = std::ffi::OsStr::from_bytes(b"shoe\xfe1.png");
    std::fs::write(env.inbox.join("r").join(name), png(640, 480)).expect("image");
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_ne!(code, 0, "stderr:\n{stderr}");
    assert_eq!(dimensions(&env.outbox.join("r/ok.jpg")), (200, 100));
    assert!(
        !env.inbox.join("r").join(name).exists(),
        "taken out of the inbox"
    );
    assert!(
        env.rejected.join("r").join(name).is_file(),
        "moved to rejected/"
    );
    let mut error_name = name.to_owned();
    error_name.push(".error.txt");
    let text =
        std::fs::read_to_string(env.rejected.join("r").join(error_name)).expect("error file");
    assert!(text.contains("UTF-8"), "{text}");
}

/// Two images of a recipe folder that make one output (`shoe.png` and `shoe.PNG` both make
/// `shoe.jpg`) while the first is active: the second is refused as an image, told to take
/// another name (its error file called it a manifest and said to rename the manifest).
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_image_refused_for_another_images_output_is_told_as_an_image() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/shoe.png", &png(640, 480));
    env.drop_file("r/shoe.PNG", &png(640, 480));
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_ne!(code, 0, "{stderr}");
    let refused = ["shoe.png", "shoe.PNG"]
        .into_iter()
        .find(|name| {
            env.rejected
                .join("r")
                .join(format!("{name}.error.txt"))
                .is_file()
        })
        .unwrap_or_else(|| panic!("one is refused: {stderr}"));
    let text = std::fs::read_to_string(env.rejected.join("r").join(format!("{refused}.error.txt")))
        .expect("error file");
    assert!(text.starts_with(&format!("image: r/{refused}")), "{text}");
    assert!(
        text.contains("the image `r/shoe.") && text.contains("give this image another name"),
        "{text}"
    );
    assert!(!text.contains("manifest another name"), "{text}");
    assert_eq!(dimensions(&env.outbox.join("r/shoe.jpg")), (200, 100));
}

/// An empty image in a recipe folder is refused with a fix that fits a folder recipe (copy
/// the image again), not "drop the manifest again" (there is no manifest to drop).
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_recipe_image_is_told_to_be_copied_again() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/empty.png", b"");
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_ne!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(env.rejected.join("r/empty.png.error.txt"))
        .unwrap_or_else(|err| panic!("error file: {err}\n{stderr}"));
    assert!(
        text.contains("is empty (0 bytes)")
            && text.contains("copy the whole image into the folder again")
            && !text.contains("drop the manifest"),
        "{text}"
    );
}

/// Bad images already in a recipe folder when the daemon starts are rejected once each, with
/// their own reason: the start's scan and the watcher's first look both offer them, and the
/// second offer, finding the image moved to rejected/, rejected it again as "not found" (a
/// second alert with a false reason).
#[tokio::test(flavor = "multi_thread")]
async fn bad_recipe_images_there_at_the_start_are_rejected_once_with_their_own_reason() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/empty.png", b"");
    env.drop_file("r/text.png", b"text");
    env.drop_file("r/fine.png", &png(100, 100));
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until(
        "the fine image is made, the bad ones rejected",
        DEADLINE,
        || {
            env.outbox.join("r/fine.jpg").is_file()
                && env.rejected.join("r/empty.png.error.txt").is_file()
                && env.rejected.join("r/text.png.error.txt").is_file()
        },
    )
    .await;
    // An image dropped after the start's looks: once it is made, both looks' offers were taken.
    env.drop_file("r/late.png", &png(100, 100));
    wait_until("the image dropped later is made", DEADLINE, || {
        env.outbox.join("r/late.jpg").is_file()
    })
    .await;
    stop(&mut daemon).await;
    let log = env.daemon_log(0);
    assert_eq!(log.matches("Manifest rejected").count(), 2, "{log}");
    assert!(!log.contains("not found (looked for"), "{log}");
    let text = std::fs::read_to_string(env.rejected.join("r/empty.png.error.txt")).expect("error");
    assert!(text.contains("is empty (0 bytes)"), "{text}");
}

/// A named pipe with an image's name in a recipe folder is named once in a WARN (it was
/// skipped without a word); the folder's real images are made and the pipe is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipe_named_as_an_image_in_a_recipe_folder_is_named_not_skipped_silently() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/ok.png", &png(640, 480));
    let fifo = env.inbox.join("r/pipe.png");
    crate::support::mkfifo(&fifo);
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dimensions(&env.outbox.join("r/ok.jpg")), (200, 100));
    let named: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("in a recipe folder is on something that is no regular file"))
        .collect();
    assert_eq!(named.len(), 1, "{stderr}");
    assert!(named[0].contains("pipe.png"), "{stderr}");
    assert!(
        std::fs::symlink_metadata(&fifo).is_ok(),
        "left where it was"
    );
}

/// A recipe's name on a pipe or a folder is named once in a WARN each (it was silent, where a
/// linked recipe is named: its folder's images lay unprocessed while `run --once` ended 0;
/// acceptance run); a real recipe beside them still runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_that_is_a_pipe_or_a_folder_is_named_not_skipped_silently() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/ok.png", &png(640, 480));
    env.drop_file("p/a.png", &png(640, 480));
    crate::support::mkfifo(&env.inbox.join("p/.claid.yaml"));
    env.drop_file("d/b.png", &png(640, 480));
    std::fs::create_dir(env.inbox.join("d/.claid.yaml")).expect("a folder");
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dimensions(&env.outbox.join("r/ok.jpg")), (200, 100));
    let named: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("A folder recipe is no regular file"))
        .collect();
    assert_eq!(named.len(), 2, "{stderr}");
    assert!(
        named.iter().any(|l| l.contains("p/.claid.yaml")),
        "{stderr}"
    );
    assert!(
        named.iter().any(|l| l.contains("d/.claid.yaml")),
        "{stderr}"
    );
}

/// Files in a recipe folder that are no image the recipe takes by their name (`photo.jfif`, a
/// JPEG saved so by a browser; `logo.svg`; a name without an extension) are each named once
/// in a WARN and left where they are; the folder's images are made; a file still being copied
/// (`.part`) and the desktop's `Thumbs.db` are not named. (They lay in the inbox with no word
/// while `run --once` ended 0.)
#[tokio::test(flavor = "multi_thread")]
async fn files_a_recipe_does_not_take_are_named_once_not_left_without_a_word() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/ok.png", &png(640, 480));
    for name in ["photo.jfif", "logo.svg", "h", "big.png.part", "Thumbs.db"] {
        env.drop_file(&format!("r/{name}"), &jpeg(64, 48));
    }
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dimensions(&env.outbox.join("r/ok.jpg")), (200, 100));
    let named: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("is not an image the recipe takes"))
        .collect();
    assert_eq!(named.len(), 3, "{stderr}");
    for name in ["photo.jfif", "logo.svg", "r/h"] {
        assert!(named.iter().any(|l| l.contains(name)), "{name}: {stderr}");
        let left = name.trim_start_matches("r/");
        assert!(env.inbox.join("r").join(left).is_file(), "{name} left");
    }
    assert!(named.iter().any(|l| l.contains("rename it to `.jpg`")));
}

/// `replay --job` of a folder recipe's image, which was archived once made: refused, naming
/// the input to put back, and the job stays done (run, it failed `input-unreadable` and its
/// done record turned failed); `--dry-run` says so first. Put back, it is replayed.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_an_archived_recipe_image_is_refused_until_it_is_put_back() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    let shoe = png(640, 480);
    env.drop_file("r/shoe.png", &shoe);
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(!env.inbox.join("r/shoe.png").exists(), "archived");
    let config_arg = config.to_str().expect("utf-8");
    let (code, out, err) =
        crate::support::cli(&["replay", "--config", config_arg, "--job", "1", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Would be refused: job 1") && out.contains("r/shoe.png"),
        "{out}"
    );
    let (code, out, err) =
        crate::support::cli(&["replay", "--config", config_arg, "--job", "1"]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(out.contains("no longer in the inbox"), "{out}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let (_, jobs, _) = crate::support::cli(&["jobs", "--config", config_arg]).await;
    assert!(jobs.contains("done") && !jobs.contains("failed"), "{jobs}");
    // Through a running daemon's socket, the dry run says so too.
    let mut daemon = env.spawn_daemon(&config, 0);
    let socket = env.socket();
    wait_until("the admin socket", DEADLINE, || socket.exists()).await;
    let (code, out, err) =
        crate::support::cli(&["replay", "--config", config_arg, "--job", "1", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Would be refused: job 1"), "{out}");
    stop(&mut daemon).await;

    std::fs::write(env.inbox.join("r/shoe.png"), &shoe).expect("put back");
    let (code, out, err) =
        crate::support::cli(&["replay", "--config", config_arg, "--job", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_recipe_is_a_new_drop_for_the_images_it_keeps() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/shoe.png", &png(640, 480));
    let config = env.config("", "on_manifest_done: keep");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(env.inbox.join("r/shoe.png").is_file(), "keep leaves it");
    assert_eq!(dimensions(&env.outbox.join("r/shoe.jpg")), (200, 100));

    // Unchanged: nothing is spent.
    let before = env.stats();
    let (code, _) = env.run_once(&config).await;
    assert_eq!(code, 0);
    assert_eq!(env.stats().requests, before.requests);

    // A new recipe: the kept image is processed again with it.
    env.drop_file("r/.claid.yaml", RECIPE.replace("200", "120").as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(env.stats().uploads, before.uploads + 1);
    assert_eq!(dimensions(&env.outbox.join("r/shoe.jpg")), (120, 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_manifest_done_delete_and_keep_apply_to_recipe_images() {
    for (policy, archived, kept) in [("delete", false, false), ("keep", false, true)] {
        let env = TestEnv::new(Scenario::default()).await;
        env.drop_file("x/y/.claid.yaml", RECIPE.as_bytes());
        env.drop_file("x/y/pic.png", &png(300, 200));
        let config = env.config("", &format!("on_manifest_done: {policy}"));
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "{policy}: stderr:\n{stderr}");
        assert!(env.outbox.join("x/y/pic.jpg").is_file(), "{policy}");
        assert_eq!(
            env.archive.join("x/y/pic.png").exists(),
            archived,
            "{policy}"
        );
        assert_eq!(env.inbox.join("x/y/pic.png").exists(), kept, "{policy}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_recipe_rejects_its_images_with_the_recipe_line_and_others_still_run() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "bad/.claid.yaml",
        b"output: { format: png }\noperations:\n  resizing: { width: 100, fit: squash }\ncolour: red\n",
    );
    env.drop_file("bad/img.png", &png(100, 100));
    env.drop_file("good/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("good/img.png", &png(100, 100));
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "a rejected image makes --once exit 2: {stderr}");
    assert!(
        env.rejected.join("bad/img.png").is_file(),
        "moved to rejected/, mirrored"
    );
    assert!(!env.inbox.join("bad/img.png").exists());
    assert!(
        env.inbox.join("bad/.claid.yaml").is_file(),
        "the recipe stays to be fixed"
    );
    let text = std::fs::read_to_string(env.rejected.join("bad/img.png.error.txt"))
        .expect("error file beside the image");
    assert!(text.contains("recipe: "), "{text}");
    assert!(
        text.contains(".claid.yaml line 3:"),
        "names the line: {text}"
    );
    assert!(text.contains("squash"), "names the problem: {text}");
    assert!(
        text.contains(".claid.yaml line 4:") && text.contains("colour"),
        "every problem: {text}"
    );
    assert!(
        env.outbox.join("good/img.jpg").is_file(),
        "the good folder ran"
    );
    assert_eq!(env.stats().uploads, 1, "nothing of the bad folder was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_whose_edit_fails_moves_to_rejected_with_the_reason() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    // A PNG signature, so it passes validation, and nothing after it: the edit fails at Claid.
    env.drop_file(
        "r/broken.png",
        b"\x89PNG\r\n\x1a\n but nothing of an image follows",
    );
    env.drop_file("r/fine.png", &png(80, 80));
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "a failed job makes --once exit 2: {stderr}");
    assert!(env.rejected.join("r/broken.png").is_file());
    let text =
        std::fs::read_to_string(env.rejected.join("r/broken.png.error.txt")).expect("error file");
    assert!(text.contains("failed: "), "{text}");
    assert!(!env.outbox.join("r/broken.jpg").exists());
    assert!(env.archive.join("r/fine.png").is_file());
    assert!(env.outbox.join("r/fine.jpg").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_processes_live_drops_and_keeps_working_after_a_bad_recipe() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    // A bad recipe first: its image is rejected, the daemon carries on.
    env.drop_file(
        "bad/.claid.yaml",
        b"operations: { resizing: { fit: squash } }\n",
    );
    env.drop_file("bad/one.png", &png(100, 100));
    wait_until("the bad folder's image is rejected", DEADLINE, || {
        env.rejected.join("bad/one.png.error.txt").is_file()
    })
    .await;
    // Then a recipe folder, a manifest and an image without a recipe, while it runs.
    env.drop_file("live/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("live/one.png", &png(400, 300));
    env.drop_file("live/two.jpeg", &jpeg(500, 500));
    env.drop_file("orphan/three.png", &png(100, 100));
    env.drop_file(
        "list.yaml",
        b"images:\n  - input: storage://demo/cap-300x300.png\n",
    );
    wait_until("recipe outputs and sources archived", DEADLINE, || {
        ["live/one.jpg", "live/two.jpg", "list/cap-300x300.jpg"]
            .iter()
            .all(|rel| env.outbox.join(rel).is_file())
            && env.archive.join("live/one.png").is_file()
            && env.archive.join("live/two.jpeg").is_file()
    })
    .await;
    assert_eq!(dimensions(&env.outbox.join("live/two.jpg")), (200, 100));
    // A fixed recipe: the same image dropped again is processed.
    env.drop_file("bad/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("bad/one.png", &png(100, 100));
    wait_until("the re-dropped image after the fix", DEADLINE, || {
        env.outbox.join("bad/one.jpg").is_file()
    })
    .await;
    let status = stop(&mut daemon).await;
    // The exit code after SIGTERM reflects the earlier rejection (daemon policy); what matters
    // here is that the daemon kept working and stopped cleanly.
    assert!(status.code().is_some(), "log:\n{}", env.daemon_log(0));
    assert!(env.daemon_log(0).contains("Drained gracefully"));
    assert!(
        env.inbox.join("orphan/three.png").is_file(),
        "an image without a recipe is left alone"
    );
    assert_eq!(
        env.stats().uploads,
        3,
        "one.png, two.jpeg, the fixed one.png"
    );
}

/// A recipe saved with a mistake while its folder's images run: the images already taken in go
/// on with the recipe they were taken in with, to their outputs (they were moved to rejected/,
/// which took the files of those not yet sent away, and their error files said nothing was
/// submitted); an image dropped afterwards is rejected with the recipe's problem.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_broken_while_its_images_run_leaves_them_running() {
    let env = TestEnv::new(
        Scenario::default().latency(claid_hotfolder::emulator::Latency::Fixed(
            Duration::from_millis(700),
        )),
    )
    .await;
    let config = env.config("max_in_flight: 1", "");
    env.drop_file("studio/.claid.yaml", RECIPE.as_bytes());
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the daemon is ready", DEADLINE, || {
        env.daemon_log(0).contains("Ready")
    })
    .await;
    for i in 0..4 {
        env.drop_file(&format!("studio/p{i}.png"), &png(100 + i, 100));
    }
    wait_until("the four images taken in", DEADLINE, || {
        env.daemon_log(0).matches("Manifest accepted").count() == 4
    })
    .await;
    env.drop_file(
        "studio/.claid.yaml",
        b"operations:\n  resizing: { width: -5 }\noutput: { format: jpeg }\n",
    );
    wait_until("every image delivered", Duration::from_secs(60), || {
        (0..4).all(|i| env.archive.join(format!("studio/p{i}.png")).is_file())
    })
    .await;
    for i in 0..4 {
        assert_eq!(
            dimensions(&env.outbox.join(format!("studio/p{i}.jpg"))),
            (200, 100),
            "p{i} made with the recipe it was taken in with"
        );
    }
    assert!(
        TestEnv::files_under(&env.rejected).is_empty(),
        "nothing rejected: {:?}",
        TestEnv::files_under(&env.rejected)
    );
    assert_eq!(env.stats().uploads, 4);
    assert!(
        env.daemon_log(0)
            .contains("recipe was saved with a mistake")
    );
    // An image dropped now is refused with the recipe's problem.
    env.drop_file("studio/late.png", &png(100, 100));
    wait_until("the late image rejected", DEADLINE, || {
        env.rejected.join("studio/late.png.error.txt").is_file()
    })
    .await;
    assert_eq!(env.stats().uploads, 4);
    stop(&mut daemon).await;
}

// ---- `manifest::load_recipe_image` and `is_image_name` directly -------------------------------

mod load {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use claid_hotfolder::config::{Limits, Profile};
    use claid_hotfolder::manifest::{self, Input, ManifestError, ManifestSpec};
    use serde_json::json;

    use crate::support::png;

    fn profiles() -> BTreeMap<String, Profile> {
        BTreeMap::from([(
            "square".to_owned(),
            Profile {
                operations: json!({"resizing": {"width": 500, "height": 500, "fit": "canvas"}}),
                output: Some(json!({"format": "png"})),
            },
        )])
    }

    /// A canonical inbox with `a/b/<image>` and `a/b/.claid.yaml` holding `recipe`.
    fn setup(recipe: &str, image: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().canonicalize().unwrap().join("inbox");
        std::fs::create_dir_all(inbox.join("a/b")).unwrap();
        std::fs::write(inbox.join("a/b/.claid.yaml"), recipe).unwrap();
        let path = inbox.join("a/b").join(image);
        std::fs::write(&path, png(20, 10)).unwrap();
        (dir, inbox, path)
    }

    fn load(inbox: &Path, image: &Path) -> Result<ManifestSpec, ManifestError> {
        let ctx = manifest::LoadContext {
            inbox,
            outbox: None,
            profiles: &profiles(),
            limits: &Limits::default(),
            storages: &Default::default(),
        };
        manifest::load_recipe_image(&ctx, image)
    }

    #[test]
    fn one_job_at_the_mirrored_path_with_the_recipe_format() {
        for (recipe, image, output, format) in [
            (
                "output: { format: jpeg }\n",
                "shoe.png",
                "a/b/shoe.jpg",
                None,
            ),
            (
                "output: { format: webp }\n",
                "Shoe.Big.PNG",
                "a/b/Shoe.Big.webp",
                None,
            ),
            ("operations: {}\n", "s.tif", "a/b/s.jpg", None),
            ("", "empty.png", "a/b/empty.jpg", None),
            ("profile: square\n", "p.jpg", "a/b/p.png", Some("png")),
            (
                "profile: square\noutput: { format: avif }\n",
                "q.png",
                "a/b/q.avif",
                Some("avif"),
            ),
        ] {
            let (_dir, inbox, path) = setup(recipe, image);
            let spec =
                load(&inbox, &path).unwrap_or_else(|e| panic!("{recipe:?}: {}", e.error_txt()));
            assert_eq!(spec.rel, Path::new("a/b").join(image), "{recipe:?}");
            assert_eq!(spec.jobs.len(), 1);
            let job = &spec.jobs[0];
            assert_eq!(job.output_rel, Path::new(output), "{recipe:?}");
            assert!(
                matches!(&job.input, Input::Local(file) if file.path == path),
                "{:?}",
                job.input
            );
            if let Some(format) = format {
                let body = job.body.value();
                assert_eq!(body["output"]["format"], format, "{recipe:?}");
                assert_eq!(body["operations"]["resizing"]["width"], 500);
            }
        }
    }

    #[test]
    fn the_drop_hash_covers_the_recipe_and_the_image() {
        let (_dir, inbox, path) = setup("output: { format: jpeg }\n", "shoe.png");
        let first = load(&inbox, &path).unwrap();
        assert_eq!(load(&inbox, &path).unwrap().sha256, first.sha256, "stable");
        std::fs::write(inbox.join("a/b/.claid.yaml"), "output: { format: png }\n").unwrap();
        let recipe_changed = load(&inbox, &path).unwrap();
        assert_ne!(recipe_changed.sha256, first.sha256);
        std::fs::write(&path, png(21, 10)).unwrap();
        let image_changed = load(&inbox, &path).unwrap();
        assert_ne!(image_changed.sha256, recipe_changed.sha256);
        assert_ne!(image_changed.jobs[0].key, recipe_changed.jobs[0].key);
    }

    #[test]
    fn recipe_problems_name_the_recipe_the_line_and_the_fix() {
        for (recipe, line, needle) in [
            ("images:\n  - x.png\n", Some(1), "no `images`"),
            (
                "operations: {}\nprofle: square\n",
                Some(2),
                "did you mean `profile`",
            ),
            ("profile: nope\n", Some(1), "unknown profile `nope`"),
            (
                "output: { format: webp }\noperations:\n  resizing: { width: -3 }\n",
                Some(3),
                "operations.resizing.width",
            ),
            ("output: { destination: s3://x }\n", Some(1), "destination"),
            ("operations: [1, 2]\n", Some(1), "expected a mapping"),
            ("operations: {\n", None, "not valid YAML"),
            ("- a\n- b\n", None, "must be a mapping"),
        ] {
            let (_dir, inbox, path) = setup(recipe, "img.png");
            let err = load(&inbox, &path).expect_err(recipe);
            assert_eq!(err.code(), "recipe-invalid", "{recipe:?}");
            let problem = err
                .problems()
                .iter()
                .find(|p| p.message.contains(needle))
                .unwrap_or_else(|| panic!("{recipe:?}: no problem with {needle:?}: {err:?}"));
            if line.is_some() {
                assert_eq!(problem.line, line, "{recipe:?}: {problem:?}");
            }
            let text = err.error_txt();
            assert!(
                text.contains("recipe: ") && text.contains(".claid.yaml"),
                "{text}"
            );
            assert!(text.contains("image: "), "{text}");
            if let Some(line) = line {
                assert!(
                    text.contains(&format!(".claid.yaml line {line}: ")),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn a_missing_recipe_or_image_is_a_clear_problem() {
        let (_dir, inbox, path) = setup("operations: {}\n", "img.png");
        std::fs::remove_file(inbox.join("a/b/.claid.yaml")).unwrap();
        let err = load(&inbox, &path).unwrap_err();
        assert!(
            err.error_txt().contains("cannot read the folder recipe"),
            "{}",
            err.error_txt()
        );

        let (_dir, inbox, path) = setup("operations: {}\n", "img.png");
        std::fs::remove_file(&path).unwrap();
        let err = load(&inbox, &path).unwrap_err();
        assert!(
            err.error_txt().contains("image `img.png`"),
            "{}",
            err.error_txt()
        );
    }

    /// A dropped file that is not an image is the image's problem, told without a recipe line
    /// (it was blamed on line 1 of a recipe that had nothing wrong).
    #[test]
    fn an_image_that_is_text_is_not_blamed_on_the_recipe() {
        let (_dir, inbox, path) = setup("output: { format: jpeg }\n", "img.png");
        std::fs::write(&path, "hello, this is text\n").unwrap();
        let err = load(&inbox, &path).unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, None, "{problems:?}");
        assert!(
            problems[0].message.starts_with("image `img.png`: ")
                && problems[0].message.contains("is text, not an image"),
            "{problems:?}"
        );
        let text = err.error_txt();
        assert!(!text.contains(".claid.yaml line"), "{text}");
        assert!(!err.to_string().contains("folder recipe /"), "{err}");
    }

    #[test]
    fn image_names() {
        for (name, ok) in [
            ("a.png", true),
            ("a.JPG", true),
            ("b/c.jpeg", true),
            ("d.webp", true),
            ("e.tiff", true),
            ("e.tif", true),
            ("f.bmp", true),
            ("g.gif", true),
            ("h.avif", true),
            ("i.HEIC", true),
            (".hidden.png", false),
            ("~$lock.png", false),
            ("x.png.part", false),
            ("x.png.tmp", false),
            ("x.png.crdownload", false),
            ("png", false),
            (".png", false),
            ("x.yaml", false),
            ("x.txt", false),
            (".claid.yaml", false),
        ] {
            assert_eq!(manifest::is_image_name(Path::new(name)), ok, "{name}");
        }
    }
}

/// A manifest beside a recipe that lists the recipe folder's own images is refused before any
/// API call, naming the recipe: the recipe makes those images and moves them away, so the
/// manifest's jobs could not read them, and both would bill them. The recipe's images are
/// still made, once each.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_listing_a_recipe_folders_images_is_refused_and_the_recipe_still_runs() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("st/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("st/p0.png", &png(640, 480));
    env.drop_file("st/p1.png", &png(640, 480));
    env.drop_file(
        "st/zz.yaml",
        b"images:\n  - input: p0.png\n  - input: p1.png\n",
    );
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 2, "a manifest was rejected: {stderr}");
    let error = std::fs::read_to_string(env.rejected.join("st/zz.yaml.error.txt"))
        .unwrap_or_else(|err| panic!("zz.yaml rejected with an error file: {err}\n{stderr}"));
    assert!(
        error.contains("is in a folder with a recipe (st/.claid.yaml)"),
        "{error}"
    );
    for name in ["p0", "p1"] {
        assert_eq!(
            dimensions(&env.outbox.join(format!("st/{name}.jpg"))),
            (200, 100)
        );
    }
    assert_eq!(
        env.stats().uploads,
        2,
        "each image made once, by the recipe"
    );
}

/// A recipe image whose edit failed moves to `rejected/` with an error file whose advice
/// holds there: move it back into its folder. It said "Retry it with `replay --failed`",
/// which refuses an image no longer in the inbox (75), and the refusal said such images move
/// to the archive.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_image_whose_edit_failed_is_told_how_to_try_again_from_rejected() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("r/.claid.yaml", RECIPE.as_bytes());
    env.drop_file("r/ok.png", &png(640, 480));
    env.drop_file("r/corrupt-x.png", &png(640, 480));
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "one image failed:\n{stderr}");
    assert_eq!(dimensions(&env.outbox.join("r/ok.jpg")), (200, 100));
    assert!(env.rejected.join("r/corrupt-x.png").is_file(), "{stderr}");
    let text = std::fs::read_to_string(env.rejected.join("r/corrupt-x.png.error.txt"))
        .expect("error file");
    assert!(
        text.contains("move it back into its recipe folder")
            && text.contains("a replay refuses it while it is here"),
        "{text}"
    );
    let config_arg = config.to_str().expect("utf-8");
    let (code, out, err) =
        crate::support::cli(&["replay", "--config", config_arg, "--failed"]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        out.contains("(a folder recipe's image whose edit failed moves to rejected/); move it back into its recipe folder, which takes it in anew by itself"),
        "{out}{err}"
    );
}
