//! The kill -9 soak: at least 1,000 images (`CLAID_SOAK_IMAGES`) through the real binary with
//! faults on (5xx on every endpoint, dropped submit responses, tasks ending in ERROR, truncated
//! downloads, downloads of the wrong image), the daemon SIGKILLed at `CLAID_SOAK_KILLS` random
//! moments (seeded by `CLAID_SOAK_SEED`) and restarted each time. A thread checks continuously
//! that no partial file ever appears under a final name; at the end every image is in the outbox
//! exactly once with the right dimensions (or failed with the reason its fault allows), and no
//! image was submitted more often than the store counted it in doubt. With `CI=true` the
//! defaults shrink (200 images, 6 kills) so the suite stays fast. Figures are printed with
//! `eprintln!` (`--nocapture`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use claid_hotfolder::emulator::{FaultShares, Latency, Scenario, Stats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{PartialFileWatch, TestEnv, dimensions, wait_until};

const OUT: (u32, u32) = (32, 24);
const PER_MANIFEST: usize = 100;
/// Failure codes the injected faults may legitimately end a job with.
/// (`result-mismatch` needs three wrong images in a row for one job: about one in a million.)
const MAY_FAIL: &[&str] = &["claid-error", "result-mismatch"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Work the emulator saw: API requests plus every tmp_url download attempt.
fn progress(s: &Stats) -> u64 {
    s.requests + s.downloads + s.downloads_truncated + s.downloads_expired + s.downloads_wrong_image
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_sigkill_at_random_moments_loses_nothing_writes_nothing_half_pays_once() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let images = env_number("CLAID_SOAK_IMAGES", if ci { 200 } else { 1000 }) as usize;
    let kills = env_number("CLAID_SOAK_KILLS", if ci { 6 } else { 20 });
    let seed = env_number("CLAID_SOAK_SEED", 2026);
    let scenario = Scenario::default()
        .seed(seed)
        .latency(Latency::LogNormal {
            median: Duration::from_millis(150),
            sigma: 0.6,
        })
        .fault_5xx(FaultShares {
            submit: 0.05,
            poll: 0.05,
            download: 0.05,
            upload: 0.05,
            sync: 0.05,
        })
        .drop_share(0.02)
        .error_share(0.01)
        .truncate_share(0.02)
        .wrong_image_share(0.01);
    let env = TestEnv::new(scenario).await;

    let manifests = images.div_ceil(PER_MANIFEST);
    for m in 0..manifests {
        let mut text = String::from(
            "operations: { resizing: { width: 32, height: 24, fit: crop } }\nimages:\n",
        );
        for i in (m * PER_MANIFEST)..((m + 1) * PER_MANIFEST).min(images) {
            text.push_str(&format!("  - input: storage://demo/soak{i}-64x48.png\n"));
        }
        env.drop_file(&format!("soak/batch{m}.yaml"), text.as_bytes());
    }
    let config = env.config("max_in_flight: 32\nmax_downloads: 4", "");
    let all_archived = |env: &TestEnv| {
        (0..manifests).all(|m| env.archive.join(format!("soak/batch{m}.yaml")).is_file())
    };
    let watch = PartialFileWatch::start(env.outbox.clone());

    // Kill moments: after a random amount of further work each time (the spacing averages a
    // share of the expected total, so the kills spread over the whole run).
    let mut rng = StdRng::seed_from_u64(seed);
    let expected_work = images as u64 * 4;
    let spacing = (expected_work / (kills + 1)).max(2);
    let mut killed = 0u64;
    for n in 0..kills {
        if all_archived(&env) {
            break;
        }
        let target = progress(&env.stats()) + rng.random_range(1..=spacing * 3 / 2);
        let mut daemon = env.spawn_daemon(&config, n as usize);
        wait_until(
            "more work before the next kill",
            Duration::from_secs(120),
            || progress(&env.stats()) >= target || all_archived(&env),
        )
        .await;
        daemon.start_kill().expect("SIGKILL");
        let status = daemon.wait().await.expect("wait");
        assert_eq!(
            status.code(),
            None,
            "the daemon died from the signal, it did not exit: log\n{}",
            env.daemon_log(n as usize)
        );
        killed += 1;
    }

    let (code, stderr) = env.run_once(&config).await;
    let partial = watch.finish();
    let stats = env.stats();
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        code == 0 || code == 2,
        "the final run completes; exit {code}, stderr tail:\n{tail}"
    );

    // Every image: done (its file there once, whole, right size) or failed with an allowed code.
    let mut done = 0u64;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost: Vec<String> = Vec::new();
    let mut in_doubt: HashMap<String, u64> = HashMap::new();
    let mut outputs_seen = 0usize;
    for m in 0..manifests {
        let stem = format!("soak/batch{m}");
        let report = env.report(&stem);
        let jobs = report["jobs"].as_array().expect("jobs");
        assert_eq!(
            jobs.len(),
            PER_MANIFEST.min(images - m * PER_MANIFEST),
            "{stem}: one row per image"
        );
        let mut done_here = 0usize;
        for job in jobs {
            let input = job["input"].as_str().unwrap_or_default().to_owned();
            in_doubt.insert(input.clone(), job["in_doubt"].as_u64().unwrap_or(0));
            let reason = job["reason"].as_str().unwrap_or_default();
            match job["status"].as_str() {
                Some("done") => {
                    let rel = job["output"].as_str().unwrap_or_default();
                    let path = env.outbox.join(rel);
                    if !path.is_file() {
                        lost.push(format!("{input}: done but {rel} is missing"));
                    } else if dimensions(&path) != OUT {
                        lost.push(format!("{input}: {rel} is {:?}", dimensions(&path)));
                    } else {
                        done += 1;
                        done_here += 1;
                    }
                }
                Some("failed") => {
                    let code = reason.split(':').next().unwrap_or_default().to_owned();
                    if MAY_FAIL.contains(&code.as_str()) {
                        *failed.entry(code).or_default() += 1;
                    } else {
                        lost.push(format!("{input}: failed {reason:?}"));
                    }
                }
                other => lost.push(format!("{input}: ended {other:?} {reason}")),
            }
        }
        let files = TestEnv::files_under(&env.outbox.join(&stem));
        outputs_seen += files.len();
        assert_eq!(
            files.len(),
            done_here,
            "{stem}: exactly one file per done image, nothing else: {files:?}"
        );
    }

    let total_in_doubt: u64 = in_doubt.values().sum();
    let mut over: Vec<String> = Vec::new();
    for (key, count) in &stats.submits_by_key {
        let input = key.rsplit_once(' ').map_or(key.as_str(), |(i, _)| i);
        let allowed = in_doubt.get(input).copied().unwrap_or(0);
        if count - 1 > allowed {
            over.push(format!(
                "{input}: submitted {count} times, in doubt {allowed}"
            ));
        }
    }
    let failed_total: u64 = failed.values().sum();
    eprintln!(
        "soak: seed {seed}, images {images}, kills {killed} of {kills}, done {done}, \
         failed {failed:?}, lost {}, outputs {outputs_seen}, partial files seen {}",
        lost.len(),
        partial.len()
    );
    eprintln!(
        "soak faults injected: 5xx {}, dropped responses {}, tasks errored {}, truncated downloads {}, \
         wrong-image downloads {}, 429 {}; requests {}, submits {}, polls {}, downloads {}",
        stats.errors_5xx,
        stats.dropped_responses,
        stats.tasks_errored,
        stats.downloads_truncated,
        stats.downloads_wrong_image,
        stats.rate_limited,
        stats.requests,
        stats.submits,
        stats.polls,
        stats.downloads
    );
    eprintln!(
        "soak duplicates: emulator duplicate submits {}, store in-doubt count {total_in_doubt}, \
         images submitted more often than counted in doubt {}",
        stats.duplicate_submits,
        over.len()
    );

    assert!(
        partial.is_empty(),
        "partial files seen under final names: {partial:?}"
    );
    assert!(lost.is_empty(), "lost images: {lost:#?}\n{tail}");
    assert_eq!(
        done + failed_total,
        images as u64,
        "every image accounted for"
    );
    assert!(
        failed.get("claid-error").copied().unwrap_or(0) <= stats.tasks_errored,
        "only tasks that ended in ERROR fail with claid-error"
    );
    assert!(
        over.is_empty(),
        "paid twice without the store knowing: {over:#?}"
    );
    assert!(stats.duplicate_submits <= total_in_doubt);
    assert_eq!(
        stats.submits_by_key.len(),
        images,
        "every image was submitted"
    );
    // The final `run --once` answers for the manifests it finished: one whose failures were
    // reported by an earlier (killed) life is not part of its run, so 0 is right then too.
    if failed_total == 0 {
        assert_eq!(code, 0, "{tail}");
    } else {
        assert!(code == 0 || code == 2, "exit {code}: {tail}");
    }
    assert!(all_archived(&env), "every manifest is archived at the end");
}
