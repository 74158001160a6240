//! End-to-end tests of the pipeline through the real binary against the emulator: a nested
//! inbox processed into the mirrored outbox, incremental re-drops, rejected manifests, failed
//! jobs and graceful shutdown.

use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario};

use crate::support::{TestEnv, dimensions, png, stop, wait_until};

const CATALOG: &str = "\
operations: { resizing: { width: 400, height: 400, fit: canvas } }
output: { format: png }
images:
  - input: storage://demo/sneaker-800x600.png
  - input: storage://demo/boot-600x900.jpg
    output: boots/boot.png
  - input: photos/local.png
    operations: { resizing: { width: 200, height: 100, fit: crop } }
";

const TOP: &str = "\
operations: { resizing: { width: 300, height: 300, fit: bounds } }
images:
  - input: storage://demo/hat-800x600.png
";

async fn processed_env() -> (TestEnv, std::path::PathBuf) {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("spring/shoes/photos/local.png", &png(640, 480));
    env.drop_file("spring/shoes/catalog.yaml", CATALOG.as_bytes());
    env.drop_file("top.yaml", TOP.as_bytes());
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(
        code, 0,
        "run --once exits 0 when all is done; stderr:\n{stderr}"
    );
    (env, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_inbox_tree_is_processed_into_the_mirrored_outbox() {
    let (env, _) = processed_env().await;
    let out = &env.outbox;
    for (rel, dims) in [
        ("spring/shoes/catalog/sneaker-800x600.png", (400, 400)),
        ("spring/shoes/catalog/boots/boot.png", (400, 400)),
        ("spring/shoes/catalog/local.png", (200, 100)),
        ("top/hat-800x600.jpg", (300, 225)),
    ] {
        let path = out.join(rel);
        assert!(
            path.is_file(),
            "missing output {rel}; outbox has {:?}",
            TestEnv::files_under(out)
        );
        assert_eq!(dimensions(&path), dims, "dimensions of {rel}");
    }
    let format = image::ImageReader::open(out.join("top/hat-800x600.jpg"))
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .format();
    assert_eq!(
        format,
        Some(image::ImageFormat::Jpeg),
        "default output format is jpeg"
    );
    let png_format = image::ImageReader::open(out.join("spring/shoes/catalog/boots/boot.png"))
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .format();
    assert_eq!(png_format, Some(image::ImageFormat::Png));

    let report = env.report("spring/shoes/catalog");
    let jobs = report["jobs"].as_array().expect("jobs array");
    assert_eq!(jobs.len(), 3);
    assert!(
        jobs.iter().all(|j| j["status"] == "done"),
        "all done: {report:#}"
    );
    let local = jobs
        .iter()
        .find(|j| {
            j["input"]
                .as_str()
                .is_some_and(|i| i.ends_with("local.png"))
        })
        .expect("local row");
    assert_eq!(
        (local["width"].as_u64(), local["height"].as_u64()),
        (Some(200), Some(100))
    );
    let csv =
        std::fs::read_to_string(out.join("spring/shoes/catalog.report.csv")).expect("csv report");
    assert_eq!(csv.lines().count(), 4, "header + one row per image:\n{csv}");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .starts_with("input,output,status,reason,task_id,width,height,bytes")
    );

    assert!(
        env.archive.join("spring/shoes/catalog.yaml").is_file(),
        "manifest archived, mirrored"
    );
    assert!(env.archive.join("top.yaml").is_file());
    assert!(!env.inbox.join("top.yaml").exists());
    let stats = env.stats();
    assert_eq!(stats.submits, 3, "three async submits");
    assert_eq!(stats.uploads, 1, "one upload for the local file");
    assert_eq!(stats.duplicate_submits, 0);
    let leftovers: Vec<_> = TestEnv::files_under(out)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_redropped_unchanged_costs_zero_api_calls() {
    let (env, config) = processed_env().await;
    let before = env.stats();
    env.drop_file("spring/shoes/catalog.yaml", CATALOG.as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let after = env.stats();
    assert_eq!(
        after.requests, before.requests,
        "no API request at all for an unchanged re-drop"
    );
    assert!(
        !env.inbox.join("spring/shoes/catalog.yaml").exists(),
        "the re-drop was archived too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_redropped_unchanged_after_an_output_was_deleted_makes_only_that_output() {
    let (env, config) = processed_env().await;
    let before = env.stats();
    let deleted = env.outbox.join("spring/shoes/catalog/boots/boot.png");
    std::fs::remove_file(&deleted).expect("delete one output");
    env.drop_file("spring/shoes/catalog.yaml", CATALOG.as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(
        deleted.is_file(),
        "the deleted output is made again: {stderr}"
    );
    assert_eq!(dimensions(&deleted), (400, 400));
    let after = env.stats();
    assert_eq!(
        (
            after.submits - before.submits,
            after.uploads - before.uploads
        ),
        (1, 0),
        "only the deleted output's image is submitted again"
    );
    let report = env.report("spring/shoes/catalog");
    let done = report["counts"]["done"].as_u64().unwrap_or(0);
    let unchanged = report["counts"]["unchanged"].as_u64().unwrap_or(0);
    assert_eq!((done, unchanged), (1, 2), "{report:#}");
    assert!(
        stderr.contains("outputs of its finished run are gone or changed"),
        "{stderr}"
    );

    // With `on_manifest_done: keep` the file never leaves the inbox: outputs moved away are
    // not made (and billed) again at the next start.
    let keep = env.config("", "on_manifest_done: keep\n");
    env.drop_file(
        "keep.yaml",
        b"images:\n  - input: storage://demo/kept-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&keep).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let outputs = TestEnv::files_under(&env.outbox.join("keep"));
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let kept = env.outbox.join("keep").join(&outputs[0]);
    std::fs::remove_file(&kept).expect("moved away downstream");
    let before = env.stats();
    let (code, stderr) = env.run_once(&keep).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(
        env.stats().submits,
        before.submits,
        "nothing submitted again"
    );
    assert!(!kept.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_manifest_bills_only_the_changed_images() {
    let (env, config) = processed_env().await;
    let before = env.stats();
    // One image's operations change, one image is new, two stay the same.
    let changed = CATALOG.replace("width: 200, height: 100", "width: 100, height: 100")
        + "  - input: storage://demo/sandal-500x500.png\n";
    env.drop_file("spring/shoes/catalog.yaml", changed.as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let after = env.stats();
    assert_eq!(
        after.submits - before.submits,
        1,
        "only the new remote image is submitted"
    );
    assert_eq!(
        after.uploads - before.uploads,
        1,
        "only the changed local image is uploaded"
    );
    assert_eq!(
        dimensions(&env.outbox.join("spring/shoes/catalog/local.png")),
        (100, 100)
    );
    let report = env.report("spring/shoes/catalog");
    let statuses: Vec<&str> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "unchanged").count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "done").count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_manifest_is_rejected_with_every_problem_and_others_still_run() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "team/bad.yaml",
        b"images:\n  - input: storage://demo/a-100x100.png\n    output: ../escape.jpg\n  - input: storage://demo/b-100x100.png\n    operations: { resizing: { fit: squash } }\n",
    );
    env.drop_file("team/good.yaml", TOP.as_bytes());
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(
        code, 2,
        "a rejected manifest makes --once exit 2; stderr:\n{stderr}"
    );
    assert!(
        env.rejected.join("team/bad.yaml").is_file(),
        "moved to rejected/, mirrored"
    );
    let error_txt =
        std::fs::read_to_string(env.rejected.join("team/bad.yaml.error.txt")).expect("error file");
    assert!(
        error_txt.contains("line 3"),
        "names the line of the bad output: {error_txt}"
    );
    assert!(error_txt.contains(".."), "names the problem: {error_txt}");
    assert!(
        error_txt.contains("line 5"),
        "every problem, not only the first: {error_txt}"
    );
    // The log line tells the count and the first problem with its line (it told only the
    // count; the rest is in the error file).
    let told = stderr
        .lines()
        .find(|l| l.contains("Manifest rejected"))
        .unwrap_or_else(|| panic!("the rejection is logged: {stderr}"));
    assert!(
        told.contains("2 problems; the first: line 3:") && told.contains(".."),
        "{told}"
    );
    assert!(
        env.outbox.join("team/good/hat-800x600.jpg").is_file(),
        "the good manifest still ran"
    );
    let stats = env.stats();
    assert_eq!(
        stats.submits, 1,
        "nothing of the rejected manifest was submitted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_claid_fails_is_reported_with_its_reason_and_others_finish() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "mixed.yaml",
        b"images:\n  - input: storage://demo/corrupt-100x100.png\n  - input: storage://demo/fine-100x100.png\n",
    );
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(
        code, 2,
        "a failed job makes --once exit 2; stderr:\n{stderr}"
    );
    let report = env.report("mixed");
    let jobs = report["jobs"].as_array().unwrap();
    let failed = jobs
        .iter()
        .find(|j| j["status"] == "failed")
        .expect("one failed row");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .starts_with("claid-error"),
        "{failed}"
    );
    assert!(jobs.iter().any(|j| j["status"] == "done"));
    assert!(env.outbox.join("mixed/fine-100x100.jpg").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_exits_zero_and_the_rest_resumes_without_double_submits() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(400)))).await;
    let mut manifest = String::from("images:\n");
    for i in 0..30 {
        manifest.push_str(&format!("  - input: storage://demo/item{i}-120x80.png\n"));
    }
    env.drop_file("batch.yaml", manifest.as_bytes());
    let config = env.config("max_in_flight: 4", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("some submits", Duration::from_secs(30), || {
        env.stats().submits >= 4
    })
    .await;
    let status = stop(&mut daemon).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0; log:\n{}",
        env.daemon_log(0)
    );
    assert!(
        env.stats().submits < 30,
        "it stopped before finishing everything"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(TestEnv::files_under(&env.outbox.join("batch")).len(), 30);
    assert_eq!(
        env.stats().duplicate_submits,
        0,
        "a graceful stop never causes a second submit"
    );
}

/// `on_output_exists: skip` and `fail` look before the submit: an output file already in the
/// outbox is kept as it is (`skipped` in the report, with the kept file's size and dimensions)
/// or fails its job with `output-exists`, and nothing is billed for it; `plan` says so first.
/// The image whose output is not there is made as usual.
#[tokio::test(flavor = "multi_thread")]
async fn on_output_exists_skip_and_fail_keep_existing_files_before_any_spend() {
    for (policy, exit, status, plan) in [
        ("skip", 0, "skipped", "kept"),
        ("fail", 2, "failed", "fails"),
    ] {
        let env = TestEnv::new(Scenario::default()).await;
        let config = env.config("", &format!("on_output_exists: {policy}\n"));
        let kept = png(7, 5);
        std::fs::create_dir_all(env.outbox.join("m")).expect("outbox");
        std::fs::write(env.outbox.join("m/old.png"), &kept).expect("kept");
        let manifest = "output: { format: png }\nimages:\n  - input: storage://demo/a-64x48.png\n    output: old.png\n  - input: storage://demo/b-64x48.png\n    output: new.png\n";
        let path = env.inbox.join("m.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        let (code, out, err) = crate::support::cli(&[
            "plan",
            "--config",
            config.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let row = |name: &str| {
            out.lines()
                .find(|l| l.ends_with(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        };
        assert_eq!(row("m/old.png").as_deref(), Some(plan), "{policy}: {out}");
        assert_eq!(row("m/new.png").as_deref(), Some("new"), "{policy}: {out}");
        assert!(out.contains("1 to process"), "{policy}: {out}");

        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, exit, "{policy}: {stderr}");
        assert_eq!(
            env.stats().submits,
            1,
            "{policy}: only the new image is billed"
        );
        assert_eq!(
            std::fs::read(env.outbox.join("m/old.png")).expect("kept"),
            kept,
            "{policy}: the file is left as it was"
        );
        assert_eq!(dimensions(&env.outbox.join("m/new.png")), (64, 48));
        let report = env.report("m");
        let old = &report["jobs"][0];
        assert_eq!(old["status"], status, "{policy}: {report:#}");
        if policy == "skip" {
            assert_eq!(
                (old["width"].as_u64(), old["height"].as_u64()),
                (Some(7), Some(5))
            );
            assert_eq!(old["bytes"].as_u64(), Some(kept.len() as u64), "{report:#}");
        } else {
            assert!(
                old["reason"].as_str().is_some_and(
                    |r| r.starts_with("output-exists") && r.contains("nothing was submitted")
                ),
                "{report:#}"
            );
        }
        assert_eq!(report["jobs"][1]["status"], "done", "{policy}: {report:#}");
    }
}

/// A synchronous upload whose edit takes longer than `api.request_timeout` is waited for up to
/// `api.upload_timeout`: sent once and billed once, not given up on and sent again. Its wait
/// says nothing of an outage: `run --once` does not end as "unreachable" at
/// `api.unreachable_timeout` while Claid works on it (it did, and the next run sent it again).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_is_waited_for_up_to_upload_timeout_not_sent_again() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(3)))).await;
    env.drop_file("slow/photo.png", &png(64, 48));
    env.drop_file("slow.yaml", b"images:\n  - input: slow/photo.png\n");
    let config = env.config(
        "request_timeout: 1s\nupload_timeout: 20s\nunreachable_timeout: 1s",
        "",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("slow");
    let row = &report["jobs"][0];
    assert_eq!(row["status"], "done", "{row}");
    assert_eq!(row["in_doubt"], 0, "never given up on: {row}");
    assert_eq!(env.stats().uploads, 1);
}

/// An unchanged manifest dropped again after its run finished makes what that run left:
/// images that failed, an image whose local file was replaced, and images whose profile in
/// the config changed; what it delivered and is still the same is not billed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_redropped_makes_what_failed_and_what_changed_and_nothing_else() {
    let storage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(storage.path().join("shop")).unwrap();
    std::fs::write(storage.path().join("shop/here.png"), png(80, 60)).unwrap();
    let env = TestEnv::new(Scenario::default().storage_root(storage.path())).await;
    let failed =
        b"images:\n  - input: storage://shop/here.png\n  - input: storage://shop/late.png\n";
    let local = b"images:\n  - input: photo.png\n";
    let profiled = b"profile: small\nimages:\n  - input: storage://shop/here.png\n";
    env.drop_file("f.yaml", failed);
    env.drop_file("l/photo.png", &png(64, 48));
    env.drop_file("l/l.yaml", local);
    env.drop_file("p.yaml", profiled);
    let profile = |size: u32| {
        format!(
            "profiles:\n  small:\n    operations: {{ resizing: {{ width: {size}, height: {size}, fit: crop }} }}\n"
        )
    };
    let config = env.config("", &profile(40));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "late.png is missing: {stderr}");
    assert_eq!(env.report("f")["counts"]["failed"], 1);
    assert_eq!(dimensions(&env.outbox.join("l/l/photo.jpg")), (64, 48));
    assert_eq!(dimensions(&env.outbox.join("p/here.jpg")), (40, 40));

    std::fs::write(storage.path().join("shop/late.png"), png(80, 60)).unwrap();
    env.drop_file("l/photo.png", &png(32, 24));
    let config = env.config("", &profile(20));
    for (rel, bytes) in [
        ("f.yaml", &failed[..]),
        ("l/l.yaml", &local[..]),
        ("p.yaml", &profiled[..]),
    ] {
        env.drop_file(rel, bytes);
    }
    let before = env.stats();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let after = env.stats();
    assert_eq!(
        (after.submits - before.submits) + (after.batch_images - before.batch_images),
        2,
        "late.png and the profiled image are submitted again, here.png of f.yaml is not"
    );
    assert_eq!(after.uploads - before.uploads, 1, "the replaced photo");
    let counts = &env.report("f")["counts"];
    assert_eq!(
        (&counts["done"], &counts["unchanged"]),
        (&1.into(), &1.into()),
        "{counts}"
    );
    assert!(env.outbox.join("f/late.jpg").is_file());
    assert_eq!(dimensions(&env.outbox.join("l/l/photo.jpg")), (32, 24));
    assert_eq!(dimensions(&env.outbox.join("p/here.jpg")), (20, 20));
}

/// With `on_output_exists: skip`, an empty file in the way is no output (the daemon replaces
/// it), and `plan` says `new` for it, not `kept`.
#[tokio::test(flavor = "multi_thread")]
async fn plan_says_new_for_an_empty_file_skip_replaces() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "on_output_exists: skip\n");
    std::fs::create_dir_all(env.outbox.join("m")).expect("outbox");
    std::fs::write(env.outbox.join("m/b.png"), b"").expect("empty");
    let path = env.drop_file(
        "m.yaml",
        b"output: { format: png }\nimages:\n  - input: storage://demo/b-64x48.png\n    output: b.png\n",
    );
    let (code, out, err) = crate::support::cli(&[
        "plan",
        "--config",
        config.to_str().unwrap(),
        path.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.ends_with("m/b.png"))
        .unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("new"), "{out}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dimensions(&env.outbox.join("m/b.png")), (64, 48));
}

/// The state folder's disk fills while a drop runs, then has room again: the open store keeps
/// the first I/O error it met (sled), so it would fail every write until a restart, the drop
/// stalled for good. The daemon sees its folder take writes again while the store does not,
/// and exits 75 after a while so that systemd starts it again; the new start finishes the
/// drop (nothing lost, nothing billed twice outside counted doubt).
#[tokio::test(flavor = "multi_thread")]
async fn a_store_failed_by_a_full_disk_ends_the_daemon_for_a_restart_once_the_disk_has_room() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(300)))).await;
    let disk = env.dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let Some(_tmpfs) = crate::support::Tmpfs::mount(&disk, "64m") else {
        eprintln!("store on a full disk: skipped, tmpfs cannot be mounted here");
        return;
    };
    let state = disk.join("state");
    std::fs::create_dir_all(&state).expect("state");
    let config = env.config("max_in_flight: 2\nbatch: { max_images: 1 }", "");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        &format!("state: {}", env.state.display()),
        &format!("state: {}", state.display()),
    );
    std::fs::write(&config, text).expect("config");
    let mut manifest = String::from("images:\n");
    for i in 0..40 {
        manifest.push_str(&format!("  - input: storage://demo/f{i}-64x48.png\n"));
    }
    env.drop_file("m.yaml", manifest.as_bytes());
    let mut daemon = env.spawn_daemon(&config, 0);
    let deadline = Duration::from_secs(60);
    wait_until("some images are submitted", deadline, || {
        env.stats().submits >= 2
    })
    .await;
    // The disk fills up: written until it refuses.
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    wait_until("the store fails", deadline, || {
        env.daemon_log(0).contains("job left queued") || env.daemon_log(0).contains("Cannot record")
    })
    .await;
    std::fs::remove_file(&filler).expect("room again");
    let status = tokio::time::timeout(Duration::from_secs(120), daemon.wait())
        .await
        .expect("the daemon ends")
        .expect("status");
    let log = env.daemon_log(0);
    assert_eq!(status.code(), Some(75), "{log}");
    assert!(
        log.contains("the service manager starts the daemon again"),
        "{log}"
    );
    let mut daemon = env.spawn_daemon(&config, 1);
    wait_until("the drop is finished", Duration::from_secs(120), || {
        env.outbox.join("m.report.json").is_file()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let report = env.report("m");
    assert_eq!(report["counts"]["done"], 40, "{report:#}");
    let stats = env.stats();
    assert!(
        stats.duplicate_submits <= report["in_doubt"].as_u64().unwrap_or(0),
        "{stats:?}"
    );
}

/// A manifest refused while the disk of the inbox and rejected/ is full: the move (a rename)
/// works and its error file cannot be written, so its problems are logged, one line each,
/// instead of being lost without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_whose_error_file_cannot_be_written_logs_its_problems() {
    let env = TestEnv::new(Scenario::default()).await;
    let disk = env.dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let Some(_tmpfs) = crate::support::Tmpfs::mount(&disk, "1m") else {
        eprintln!("rejection on a full disk: skipped, tmpfs cannot be mounted here");
        return;
    };
    let (inbox, rejected) = (disk.join("inbox"), disk.join("rejected"));
    for dir in [&inbox, &rejected] {
        std::fs::create_dir_all(dir).expect("folder");
    }
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            &format!("inbox: {}", env.inbox.display()),
            &format!("inbox: {}", inbox.display()),
        )
        .replace(
            &format!("rejected: {}", env.rejected.display()),
            &format!("rejected: {}", rejected.display()),
        );
    std::fs::write(&config, text).expect("config");
    let deadline = Duration::from_secs(30);
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the daemon is ready", deadline, || env.socket().exists()).await;
    // Written beside the inbox, the disk filled, then renamed in (a rename takes no space).
    let aside = disk.join("bad.yaml");
    std::fs::write(
        &aside,
        "images:\n  - input: storage://demo/a-64x48.png\n    width: abc\n",
    )
    .expect("manifest");
    let _ = std::fs::write(disk.join("filler"), vec![0u8; 2 * 1024 * 1024]);
    std::fs::rename(&aside, inbox.join("bad.yaml")).expect("dropped");
    // Until the problem's own line (the lines follow one another: read at the first, the
    // log did not hold the problem yet).
    wait_until("the problems logged", deadline, || {
        env.daemon_log(0)
            .lines()
            .any(|l| l.contains("Rejected manifest:") && l.contains("width"))
    })
    .await;
    let log = env.daemon_log(0);
    assert!(log.contains("its problems follow"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("Rejected manifest:") && l.contains("width")),
        "{log}"
    );
    crate::support::stop(&mut daemon).await;
}

/// A run whose report the outbox's full disk refuses: the report an earlier run of the same
/// manifest left there is removed (it described other content, and stayed to be taken for
/// this run's), and this run's report goes beside the archived manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_the_full_outbox_refuses_leaves_no_stale_report_and_goes_to_the_archive() {
    let env = TestEnv::new(Scenario::default()).await;
    let disk = env.dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let Some(_tmpfs) = crate::support::Tmpfs::mount(&disk, "24m") else {
        eprintln!("report on a full disk: skipped, tmpfs cannot be mounted here");
        return;
    };
    let (outbox, archive) = (disk.join("outbox"), disk.join("archive"));
    for dir in [&outbox, &archive] {
        std::fs::create_dir_all(dir).expect("folder");
    }
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            &format!("outbox: {}", env.outbox.display()),
            &format!("outbox: {}", outbox.display()),
        )
        .replace(
            &format!("archive: {}", env.archive.display()),
            &format!("archive: {}", archive.display()),
        );
    std::fs::write(&config, text).expect("config");
    let manifest = "images:\n  - input: storage://demo/r-64x48.png\n";
    env.drop_file("r.yaml", manifest.as_bytes());
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = outbox.join("r.report.json");
    assert!(report.is_file());
    // The same images again (a comment changed): nothing to make, only a report to write,
    // on a disk with no room left.
    let again = format!("# again\n{manifest}");
    env.drop_file("r.yaml", again.as_bytes());
    let _ = std::fs::write(disk.join("filler"), vec![0u8; 30 * 1024 * 1024]);
    let (_, stderr) = env.run_once(&config).await;
    assert!(
        !report.exists(),
        "the earlier run's report is not left to describe this one: {stderr}"
    );
    let archived: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(archive.join("r.report.json")).expect("archived report"),
    )
    .expect("json");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(again.as_bytes()))
    };
    assert_eq!(archived["sha256"], sha.as_str(), "{archived:#}");
}

/// `mount -o remount,MODE` of a test's tmpfs; false when it cannot be done here.
pub(crate) fn remount(disk: &std::path::Path, mode: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(disk)
        .status()
        .is_ok_and(|s| s.success())
}

/// A config whose outbox is `outbox` (on a test's tmpfs).
fn config_with_outbox(env: &TestEnv, api: &str, outbox: &std::path::Path) -> std::path::PathBuf {
    let config = env.config(api, "");
    move_outbox(env, &config, outbox);
    config
}

/// Has `config` (one of `env`'s) name `outbox` for its outbox.
pub(crate) fn move_outbox(env: &TestEnv, config: &std::path::Path, outbox: &std::path::Path) {
    let text = std::fs::read_to_string(config).expect("config").replace(
        &format!("outbox: {}", env.outbox.display()),
        &format!("outbox: {}", outbox.display()),
    );
    std::fs::write(config, text).expect("config");
}

/// An outbox on a tmpfs of its own under the test's folder (which the tests remount
/// read-only): the mount, its mount point and the outbox; `None` (said on stderr) where tmpfs
/// cannot be mounted.
pub(crate) fn outbox_on_a_tmpfs(
    env: &TestEnv,
) -> Option<(
    crate::support::Tmpfs,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let disk = env.dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let Some(tmpfs) = crate::support::Tmpfs::mount(&disk, "64m") else {
        eprintln!("read-only outbox: skipped, tmpfs cannot be mounted here");
        return None;
    };
    let outbox = disk.join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    Some((tmpfs, disk, outbox))
}

/// The same with batches: a filesystem remounted read-only while the canary is at Claid stops
/// the batches that would follow it, since every submit looks at the outbox's filesystem
/// first. (They went out as the canary's results came, before those met the read-only
/// outbox: Claid billed ten images, none written.) Once the outbox takes writes again, the
/// images left go, and `replay --failed` in the running daemon fetches the canary's results
/// again from its batch instead of paying for them twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_outbox_stops_the_batches_after_the_canary_whose_results_replay_fetches() {
    let (statics, rows) = crate::support::static_images(10, "r");
    let env = TestEnv::new(
        Scenario::default()
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_secs(2))),
    )
    .await;
    let Some((_tmpfs, disk, outbox)) = outbox_on_a_tmpfs(&env) else {
        return;
    };
    let config = config_with_outbox(&env, "max_in_flight: 16", &outbox);
    let deadline = Duration::from_secs(60);
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the daemon is ready", deadline, || env.socket().exists()).await;
    let rows = env.static_urls(&rows);
    env.drop_file("m.yaml", rows.as_bytes());
    wait_until("the canary at Claid", deadline, || {
        env.stats().batch_submits >= 1
    })
    .await;
    assert!(remount(&disk, "ro"), "remount read-only");
    wait_until(
        "the canary's images failed output-read-only",
        deadline,
        || env.daemon_log(0).matches("output-read-only").count() >= 2,
    )
    .await;
    let told = "activity: the outbox cannot be written";
    wait_until("the disk monitor's look", deadline, || {
        env.daemon_log(0).contains(told)
    })
    .await;
    let stats = env.stats();
    assert_eq!(
        (stats.batch_submits, stats.batch_images),
        (1, 2),
        "only the canary was billed: {}",
        env.daemon_log(0)
    );
    assert!(remount(&disk, "rw"), "remount read-write");
    let stdout = replay_failed(&config).await;
    assert!(
        stdout.contains("Requeued 2 jobs (2 of them made and billed but not written")
            && stdout.contains("in the running daemon"),
        "{stdout}"
    );
    wait_until("every image written", deadline, || {
        (0..10).all(|i| outbox.join(format!("m/r{i}.jpg")).is_file())
    })
    .await;
    let stats = env.stats();
    assert_eq!(
        stats.batch_images,
        10,
        "the canary's two fetched again, not billed again: {}",
        env.daemon_log(0)
    );
    stop(&mut daemon).await;
}

/// An outbox on a tmpfs ([`outbox_on_a_tmpfs`]), a config that sends one image at a time
/// (single tasks) and waits `unreachable` for an outbox that takes no writes, and a drop
/// `{name}.yaml` of three storage inputs: the mount, its mount point, the outbox, the config.
fn three_images_on_a_tmpfs(
    env: &TestEnv,
    name: &str,
    unreachable: &str,
) -> Option<(
    crate::support::Tmpfs,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let (tmpfs, disk, outbox) = outbox_on_a_tmpfs(env)?;
    let config = config_with_outbox(
        env,
        &format!(
            "max_in_flight: 1\nunreachable_timeout: {unreachable}\nbatch: {{ max_images: 1 }}"
        ),
        &outbox,
    );
    let rows: String = (0..3)
        .map(|i| format!("  - input: storage://demo/{name}{i}-64x48.png\n"))
        .collect();
    env.drop_file(
        &format!("{name}.yaml"),
        format!("images:\n{rows}").as_bytes(),
    );
    Some((tmpfs, disk, outbox, config))
}

/// `run --once` on an outbox whose filesystem is remounted read-only mid-run ends after
/// `api.unreachable_timeout` (73) with the images not yet sent kept unsubmitted, and names
/// the fix: remount it read-write (it said "free space or fix its permissions").
#[tokio::test(flavor = "multi_thread")]
async fn run_once_on_an_outbox_turned_read_only_ends_73_naming_the_remount() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, disk, _, config)) = three_images_on_a_tmpfs(&env, "ro", "2s") else {
        return;
    };
    let (code, stderr) = run_once_turning_read_only(&env, &config, &disk).await;
    assert_eq!(code, 73, "{stderr}");
    assert!(stderr.contains("stayed read-only"), "{stderr}");
    assert!(stderr.contains("remount it read-write"), "{stderr}");
    assert_eq!(env.stats().submits, 1, "nothing more billed: {stderr}");
    // The next run makes the two left; its closing line names the one that failed before
    // (the report counts it, and the exit code says so: it read `failed=0`, exit 2).
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("done=2")
            && stderr.contains("failed=0")
            && stderr.contains("failed_before=1"),
        "{stderr}"
    );
}

/// `validate` tells an outbox on a filesystem mounted read-only as the start does (the start
/// stops at it, 74): it said `ok (config)` while `run` exited 74 at once.
#[tokio::test(flavor = "multi_thread")]
async fn validate_tells_a_read_only_outbox_as_the_start_does() {
    let env = TestEnv::new(Scenario::default()).await;
    let Some((_tmpfs, disk, outbox)) = outbox_on_a_tmpfs(&env) else {
        return;
    };
    let config = config_with_outbox(&env, "", &outbox);
    let config_arg = config.to_str().expect("utf-8");
    assert!(remount(&disk, "ro"), "remount read-only");
    let (validated, out, err) = crate::support::cli(&["validate", config_arg]).await;
    let (started, started_err) = env.run_once(&config).await;
    assert!(remount(&disk, "rw"), "remount read-write");
    assert_eq!(started, 74, "{started_err}");
    assert_eq!(validated, started, "{out}{err}");
    assert!(
        out.contains("folders.outbox") && out.contains("read-only"),
        "{out}{err}"
    );
    let (code, out, err) = crate::support::cli(&["validate", config_arg]).await;
    assert_eq!(code, 0, "writable again: {out}{err}");
}

/// `run --once` with `config`, the outbox's filesystem `disk` remounted read-only once the
/// first image is at Claid (an async task made), and read-write again after the run: its exit
/// code and stderr.
async fn run_once_turning_read_only(
    env: &TestEnv,
    config: &std::path::Path,
    disk: &std::path::Path,
) -> (i32, String) {
    run_once_turning_read_only_when(env, config, disk, |stats| stats.submits >= 1).await
}

/// [`run_once_turning_read_only`], remounting once `at_claid` holds of the emulator's counts
/// (`requests >= 1` for a local file's upload, which Claid answers only once it is made).
pub(crate) async fn run_once_turning_read_only_when(
    env: &TestEnv,
    config: &std::path::Path,
    disk: &std::path::Path,
    at_claid: impl Fn(&claid_hotfolder::emulator::Stats) -> bool,
) -> (i32, String) {
    let remounted = async {
        wait_until("the first image at Claid", Duration::from_secs(60), || {
            at_claid(&env.stats())
        })
        .await;
        assert!(remount(disk, "ro"), "remount read-only");
    };
    let (ran, ()) = tokio::join!(env.run_once(config), remounted);
    assert!(remount(disk, "rw"), "remount read-write");
    ran
}

/// `replay --failed` with `config`, which succeeds: its stdout.
async fn replay_failed(config: &std::path::Path) -> String {
    let (code, stdout, err) = crate::support::cli(&[
        "replay",
        "--failed",
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    stdout
}

/// Runs one image (a storage input, an async task) with `run --once` into an outbox remounted
/// read-only while Claid makes it: the result is billed and cannot be written (exit 2: the run
/// ended with a failure; its report went to the archive). Then the outbox takes writes
/// again. `None` where tmpfs cannot be mounted.
async fn a_result_unwritten(
    env: &TestEnv,
) -> Option<(
    crate::support::Tmpfs,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let (tmpfs, disk, outbox) = outbox_on_a_tmpfs(env)?;
    let config = config_with_outbox(
        env,
        "max_in_flight: 1\nunreachable_timeout: 2s\nbatch: { max_images: 1 }",
        &outbox,
    );
    env.drop_file(
        "kept.yaml",
        b"images:\n  - input: storage://demo/k-64x48.png\n",
    );
    let (code, stderr) = run_once_turning_read_only(env, &config, &disk).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("replay --failed` within 23 hours fetches the result"),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 1, "{stderr}");
    Some((tmpfs, config, outbox))
}

/// [`a_result_unwritten`], then `replay --failed` (its stdout is returned).
async fn a_result_unwritten_then_replayed(
    env: &TestEnv,
) -> Option<(
    crate::support::Tmpfs,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
)> {
    let (tmpfs, config, outbox) = a_result_unwritten(env).await?;
    let config_arg = config.to_str().expect("utf-8");
    let (code, stdout, err) =
        crate::support::cli(&["replay", "--failed", "--dry-run", "--config", config_arg]).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("Would requeue 1 job (1 of them made and billed but not written")
            && stdout.contains("is fetched again: not billed again"),
        "{stdout}"
    );
    let stdout = replay_failed(&config).await;
    Some((tmpfs, config, outbox, stdout))
}

/// `run --once` with `config` writes the kept image (64×48) into `outbox`, and Claid billed
/// it once in all.
async fn the_kept_result_is_written_unbilled(
    env: &TestEnv,
    config: &std::path::Path,
    outbox: &std::path::Path,
) {
    let (code, stderr) = env.run_once(config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        dimensions(&outbox.join("kept/k-64x48.jpg")),
        (64, 48),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 1, "not billed again: {stderr}");
}

/// A result Claid made and billed that met a read-only outbox is kept in the store: once the
/// outbox is writable again, `replay --failed` fetches that result again (Claid keeps it a
/// day) instead of paying for the edit twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_met_a_read_only_outbox_is_fetched_again_by_replay_not_billed_again() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, config, outbox, stdout)) = a_result_unwritten_then_replayed(&env).await
    else {
        return;
    };
    assert!(
        stdout.contains("Requeued 1 job")
            && stdout.contains("fetched again")
            && stdout.contains("not billed again")
            && !stdout.contains("Claid had billed already"),
        "{stdout}"
    );
    // The read-only outbox took no report: the run's went into the archive.
    let fallback = env.archive.join("kept.report.json");
    let failed = |path: &std::path::Path| -> u64 {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).expect("report")).expect("json");
        report["counts"]["failed"].as_u64().unwrap_or(0)
    };
    assert_eq!(failed(&fallback), 1);
    the_kept_result_is_written_unbilled(&env, &config, &outbox).await;
    // Ended anew by the replay, the run's report is in the outbox, and the archive's, which
    // told the old outcome (1 failed), is gone with its CSV.
    assert_eq!(failed(&outbox.join("kept.report.json")), 0);
    assert!(!fallback.exists(), "the stale report left in the archive");
    assert!(!env.archive.join("kept.report.csv").exists());
}

/// A local image whose result met a read-only outbox keeps that result for a replay; but
/// while the file itself is changed, the kept result is not its edit: the replay (and its dry
/// run) refuses the job, naming the file and the fix, and changes nothing. With the file put
/// back, the replay fetches the kept result: one upload in all.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_result_whose_local_file_changed_is_not_fetched_by_replay() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, disk, outbox)) = outbox_on_a_tmpfs(&env) else {
        return;
    };
    let config = config_with_outbox(&env, "max_in_flight: 1\nunreachable_timeout: 2s", &outbox);
    let original = png(40, 30);
    env.drop_file("photos/a.png", &original);
    env.drop_file("local.yaml", b"images:\n  - input: photos/a.png\n");
    // The upload is at Claid (2 s) when the outbox turns read-only.
    let (code, stderr) =
        run_once_turning_read_only_when(&env, &config, &disk, |s| s.requests >= 1).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(env.stats().uploads, 1, "{stderr}");
    let config_arg = config.to_str().expect("utf-8");
    let replay = |dry_run: bool| async move {
        let mut args = vec!["replay", "--failed", "--config", config_arg];
        if dry_run {
            args.push("--dry-run");
        }
        crate::support::cli(&args).await
    };
    let (_, stdout, _) = replay(true).await;
    assert!(
        stdout.contains("is fetched again: not billed again"),
        "the file as it was: {stdout}"
    );
    env.drop_file("photos/a.png", &png(50, 20));
    let (code, stdout, err) = replay(true).await;
    assert_eq!(code, 0, "{stdout}{err}");
    let refusal = "its input `photos/a.png` changed after its manifest was validated";
    assert!(
        stdout.contains(refusal) && stdout.contains("drop the manifest again"),
        "the dry run: {stdout}"
    );
    let (code, stdout, err) = replay(false).await;
    assert_eq!(code, 75, "nothing replayed: {stdout}{err}");
    assert!(stdout.contains(refusal), "{stdout}");
    env.drop_file("photos/a.png", &original);
    let (code, stdout, err) = replay(false).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("Requeued 1 job (1 of them made and billed but not written"),
        "the file put back: {stdout}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        dimensions(&outbox.join("local/a.jpg")),
        (40, 30),
        "{stderr}"
    );
    assert_eq!(env.stats().uploads, 1, "not billed again: {stderr}");
}

/// A folder recipe's image whose result met a read-only outbox moves to rejected/, its error
/// file saying to move it back; moved back into its folder, it is taken in anew and fetches the
/// result Claid made and kept for it: one upload in all.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_image_whose_result_was_not_written_fetches_it_once_moved_back() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, disk, outbox)) = outbox_on_a_tmpfs(&env) else {
        return;
    };
    let config = config_with_outbox(&env, "max_in_flight: 1\nunreachable_timeout: 2s", &outbox);
    env.drop_file(
        "r/.claid.yaml",
        b"operations:\n  resizing: { width: 20, height: 10, fit: crop }\n",
    );
    let image = png(40, 30);
    env.drop_file("r/shoe.png", &image);
    let (code, stderr) =
        run_once_turning_read_only_when(&env, &config, &disk, |s| s.requests >= 1).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(env.stats().uploads, 1, "{stderr}");
    let rejected = env.rejected.join("r/shoe.png");
    let told =
        std::fs::read_to_string(env.rejected.join("r/shoe.png.error.txt")).expect("error file");
    assert!(
        told.contains(
            "moving the image back into its recipe folder within 23 hours fetches the result"
        ) && told.contains("no new bill"),
        "{told}"
    );
    std::fs::rename(&rejected, env.inbox.join("r/shoe.png")).expect("moved back");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dimensions(&outbox.join("r/shoe.jpg")), (20, 10), "{stderr}");
    assert_eq!(env.stats().uploads, 1, "not billed again: {stderr}");
}

/// With `on_output_exists: skip`, a file put at the output's place since the kept result's
/// write failed is kept by the replay (the write applies the policy: looked at before the
/// download, the job's own file written before a crash could not be told from a user's): the
/// job is done as skipped, the file is as it was, and nothing is billed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_result_fetched_again_keeps_a_file_put_there_since_under_skip() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, config, outbox)) = a_result_unwritten(&env).await else {
        return;
    };
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("on_output_exists: skip\n");
    std::fs::write(&config, text).expect("config");
    let theirs = png(5, 5);
    let output = outbox.join("kept/k-64x48.jpg");
    std::fs::create_dir_all(output.parent().expect("folder")).expect("folder");
    std::fs::write(&output, &theirs).expect("their file");
    // `plan` of the same rows says the file is kept, not that the result is fetched.
    let planned = env.dir.path().join("kept.yaml");
    std::fs::write(
        &planned,
        b"images:\n  - input: storage://demo/k-64x48.png\n",
    )
    .expect("manifest");
    let (code, stdout, err) = crate::support::cli(&[
        "plan",
        planned.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout
            .lines()
            .any(|row| row.split_whitespace().nth(1) == Some("kept"))
            && !stdout.contains("fetch"),
        "{stdout}"
    );
    let stdout = replay_failed(&config).await;
    assert!(stdout.contains("Requeued 1 job ("), "{stdout}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&output).expect("their file"), theirs);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("kept.report.json")).expect("report"))
            .expect("JSON");
    assert_eq!(report["jobs"][0]["status"], "skipped", "{report:#}");
    assert_eq!(env.stats().submits, 1, "not billed again: {stderr}");
}

/// The same when the manifest is dropped again instead of replayed (its run ended): the new
/// run's image fetches the result kept by the earlier one (`plan` says `fetch`), and Claid
/// is not paid twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_dropped_again_fetches_a_result_kept_from_its_last_run() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, config, outbox)) = a_result_unwritten(&env).await else {
        return;
    };
    let manifest = b"images:\n  - input: storage://demo/k-64x48.png\n";
    let planned = env.dir.path().join("kept.yaml");
    std::fs::write(&planned, manifest).expect("manifest");
    let (code, stdout, err) = crate::support::cli(&[
        "plan",
        planned.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("fetch"), "{stdout}");
    env.drop_file("kept.yaml", manifest);
    the_kept_result_is_written_unbilled(&env, &config, &outbox).await;
}

/// `run --once` whose failed image a `replay --failed` over its socket fetches again while it
/// runs: the run ends with every image done and exits 0 (the failure was counted, and the
/// run exited 2 with `failed=1` beside `done=3`).
#[tokio::test(flavor = "multi_thread")]
async fn run_once_whose_failure_a_replay_mends_meanwhile_exits_0() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, disk, _, config)) = three_images_on_a_tmpfs(&env, "mend", "60s") else {
        return;
    };
    let mended = async {
        let deadline = Duration::from_secs(60);
        wait_until("the first image at Claid", deadline, || {
            env.stats().submits >= 1
        })
        .await;
        assert!(remount(&disk, "ro"), "remount read-only");
        // The write failed and was recorded: the dry run over the socket lists the image.
        let asked = std::time::Instant::now();
        loop {
            assert!(asked.elapsed() < deadline, "the failure never recorded");
            let (code, stdout, err) = crate::support::cli(&[
                "replay",
                "--failed",
                "--dry-run",
                "--config",
                config.to_str().expect("utf-8"),
            ])
            .await;
            assert_eq!(code, 0, "{stdout}{err}");
            if stdout.contains("Would requeue 1 job") {
                break;
            }
        }
        assert!(remount(&disk, "rw"), "remount read-write");
        let stdout = replay_failed(&config).await;
        assert!(
            stdout.contains("Requeued 1 job") && stdout.contains("in the running daemon"),
            "{stdout}"
        );
    };
    let ((code, stderr), ()) = tokio::join!(env.run_once(&config), mended);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("done=3") && stderr.contains("failed=0"),
        "{stderr}"
    );
    assert_eq!(env.stats().submits, 3, "{stderr}");
}

/// The same when Claid no longer has the result at the replay (its day is over): the image is
/// submitted again, made and written, as before results were kept; but only once the task,
/// polled, says so (a poll that fails is no proof, and nothing is sent on it).
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_result_gone_by_the_replay_is_submitted_again() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, config, outbox, stdout)) = a_result_unwritten_then_replayed(&env).await
    else {
        return;
    };
    assert!(stdout.contains("fetched again"), "{stdout}");
    env.emulator.control().expire_results();
    // Gone, while the API is down: the poll for another URL fails, so the result is not known
    // gone; the job fails again, keeps it, and nothing is sent.
    env.emulator.control().set_down(true);
    let refused_before = env.stats().downloads_expired;
    let (code, stderr) = env.run_once(&config).await;
    env.emulator.control().set_down(false);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("result-expired"), "{stderr}");
    assert_eq!(env.stats().submits, 1, "not sent on a guess: {stderr}");
    // The URL served the result once: two refusals tell it is gone (the download's whole
    // budget, nine asks and about a minute of backoff, was spent on it).
    assert_eq!(
        env.stats().downloads_expired - refused_before,
        2,
        "the kept result's URL asked twice: {stderr}"
    );
    let stdout = replay_failed(&config).await;
    assert!(stdout.contains("fetched again"), "{stdout}");
    // The API answers: its poll gives the same URL, so the result is gone, and made again.
    let refused_before = env.stats().downloads_expired;
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(
        env.stats().downloads_expired - refused_before,
        2,
        "the kept result's URL asked twice: {stderr}"
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("is gone; the image is submitted again"),
        "{stderr}"
    );
    assert!(outbox.join("kept/k-64x48.jpg").is_file(), "{stderr}");
    assert_eq!(env.stats().submits, 2, "{stderr}");
}

/// An outbox on a filesystem remounted read-only: a drop taken in then is checked before any
/// submit, so its images wait (nothing is billed whose result could not be written) and are
/// made once the outbox takes writes again (they were submitted, billed, and failed
/// `output-read-only` until the disk monitor's next look, seconds later). And once a result
/// meets the read-only outbox, no image more is submitted (the permits its failure freed let
/// two more go, billed and failed alike).
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_outbox_stops_submits_before_claid_bills_what_cannot_be_written() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(2)))).await;
    let Some((_tmpfs, disk, outbox)) = outbox_on_a_tmpfs(&env) else {
        return;
    };
    let config = config_with_outbox(&env, "max_in_flight: 2", &outbox);
    let deadline = Duration::from_secs(60);
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the daemon is ready", deadline, || env.socket().exists()).await;
    // A drop taken in while the outbox is read-only waits, unsubmitted.
    assert!(remount(&disk, "ro"), "remount read-only");
    env.drop_file(
        "early.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n",
    );
    wait_until("the drop taken in", deadline, || {
        env.daemon_log(0).contains("Manifest accepted")
    })
    .await;
    // Told by intake itself (the disk monitor looks only every 5 s).
    wait_until("the drop held at intake", deadline, || {
        env.daemon_log(0).contains("the drop's images wait")
    })
    .await;
    assert_eq!(env.stats().submits, 0, "{}", env.daemon_log(0));
    assert!(remount(&disk, "rw"), "remount read-write");
    wait_until("the waiting images made", deadline, || {
        outbox.join("early/a-64x48.jpg").is_file() && outbox.join("early/b-64x48.jpg").is_file()
    })
    .await;
    // Results that meet a read-only outbox: no other image is submitted after them.
    let told = "activity: the outbox cannot be written";
    let told_before = env.daemon_log(0).matches(told).count();
    let rows: String = (0..6)
        .map(|i| format!("  - input: storage://demo/p{i}-64x48.png\n"))
        .collect();
    env.drop_file("late.yaml", format!("images:\n{rows}").as_bytes());
    wait_until("two images at Claid", deadline, || env.stats().submits >= 4).await;
    assert!(remount(&disk, "ro"), "remount read-only");
    wait_until("both failed output-read-only", deadline, || {
        env.daemon_log(0).matches("output-read-only").count() >= 2
    })
    .await;
    // The disk monitor's next look (every 5 s) would have stopped submits anyway.
    wait_until("the disk monitor's next look", deadline, || {
        env.daemon_log(0).matches(told).count() > told_before
    })
    .await;
    assert_eq!(
        env.stats().submits,
        4,
        "no submit after the read-only outbox was met: {}",
        env.daemon_log(0)
    );
    assert!(remount(&disk, "rw"), "remount read-write");
    stop(&mut daemon).await;
}
