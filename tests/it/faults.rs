//! The fault matrix: one emulator fault per case, each run to completion through the real binary
//! (`run --once`, or the daemon `run` for refusals of the key or credits, on which `run --once`
//! ends at once) and checked against the emulator's exact counters, the report and the outbox.
//! Every image ends `done` (its output there once, whole, with the right dimensions) or `failed`
//! with the reason code that fault allows; systemic faults (down, 402, 403) and a blocked outbox
//! pause the work and resume it without failing a job; nothing is submitted twice except jobs
//! the store counted in doubt.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use claid_hotfolder::emulator::{FaultShares, Latency, Scenario, Stats};
use tokio_util::sync::CancellationToken;

use crate::support::{PartialFileWatch, TestEnv, dimensions, png, wait_until};

/// Output size of every image (inputs are 64x48, cropped).
const OUT: (u32, u32) = (32, 24);
/// Local images per case (they go through the upload endpoint instead of submit + poll).
const LOCAL: usize = 3;
/// How long a case may take before a wait gives up (generous: 2 shared cores).
const DEADLINE: Duration = Duration::from_secs(90);

/// Something the test does to the world while the daemon runs.
#[derive(Clone, Copy)]
enum During {
    Nothing,
    /// After `after` API requests the API answers 503 until it has sent `n_503` of them.
    Down {
        after: u64,
        n_503: u64,
    },
    /// After `after` submits credits run out until `n_402` answers were 402.
    OutOfCredits {
        after: u64,
        n_402: u64,
    },
    /// After `after` API requests the key lacks scope until `n_403` answers were 403.
    Forbidden {
        after: u64,
        n_403: u64,
    },
    /// Another client with the same key (Claid's limits are per key) sends `rps` requests a
    /// second until the daemon is done, so the daemon's view of `RateLimit-Remaining` is stale
    /// and it runs into 429s, until the daemon has had `daemon_429` of them.
    Competitor {
        rps: u64,
        daemon_429: u64,
    },
    /// The disk is full when the manifest's output folder is first created: its first
    /// `failures` creations (per daemon thread) fail with ENOSPC, injected by strace, so writes
    /// fail with an error that heals and are retried. (A file where the folder must go is an
    /// error that cannot heal since issue 11: those jobs fail at once, see `pipeline`.)
    DiskFull {
        failures: u32,
    },
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    scenario: Scenario,
    /// Keys under `api:` added to the test config.
    api_extra: &'static str,
    /// `CLAID_HOTFOLDER__*` overrides (for keys the test config already sets).
    envs: &'static [(&'static str, &'static str)],
    /// Command put in front of the daemon (e.g. strace for a slow disk).
    wrapper: Vec<String>,
    /// Remote images (plus `LOCAL` local ones).
    images: usize,
    /// Failure codes this fault may legitimately end a job with.
    may_fail: &'static [&'static str],
    /// Run the daemon (`run`, stopped once the manifest is archived) instead of `run --once`,
    /// which ends at once when the API refuses the key or credits.
    daemon: bool,
    during: During,
    /// Case-specific claims about the emulator's counts and the outcome.
    check: fn(&Stats, &Outcome) -> Result<(), String>,
}

impl Case {
    fn new(name: &'static str, scenario: Scenario) -> Case {
        Case {
            name,
            scenario,
            api_extra: "",
            envs: &[],
            wrapper: Vec::new(),
            images: 40,
            may_fail: &[],
            daemon: false,
            during: During::Nothing,
            check: |_, _| Ok(()),
        }
    }
}

/// What a run produced, from the report.
#[derive(Debug, Default)]
struct Outcome {
    done: u64,
    /// Failure code → count.
    failed: BTreeMap<String, u64>,
    in_doubt: u64,
    /// 429s the daemon got (the emulator's count minus those of the test's own competitor).
    daemon_429: u64,
}

impl Outcome {
    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

fn manifest(case: &str, remote: usize) -> String {
    let mut text =
        String::from("operations: { resizing: { width: 32, height: 24, fit: crop } }\nimages:\n");
    for i in 0..remote {
        text.push_str(&format!("  - input: storage://demo/{case}{i}-64x48.png\n"));
    }
    for i in 0..LOCAL {
        text.push_str(&format!("  - input: photos/local{i}.png\n"));
    }
    text
}

/// Plays `during` against the emulator while the daemon runs (until `stop`); returns the
/// 429s the competitor got.
async fn play(env: &TestEnv, during: During, stop: CancellationToken) -> u64 {
    let control = env.emulator.control();
    match during {
        During::Nothing => {}
        During::Competitor { rps, daemon_429 } => {
            let client = reqwest::Client::new();
            let url = format!("{}/image/edit/async/0", env.emulator.base_url());
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rps.max(1)));
            let mut refused = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let answer = client.get(&url).bearer_auth("test-key").send().await;
                if answer.is_ok_and(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                    refused += 1;
                }
                if env.stats().rate_limited - refused >= daemon_429 {
                    break;
                }
            }
            return refused;
        }
        During::Down { after, n_503 } => {
            wait_until("requests before the outage", DEADLINE, || {
                env.stats().requests >= after
            })
            .await;
            let before = env.stats().errors_5xx;
            control.set_down(true);
            wait_until("503s during the outage", 2 * DEADLINE, || {
                env.stats().errors_5xx >= before + n_503 || stop.is_cancelled()
            })
            .await;
            control.set_down(false);
        }
        During::OutOfCredits { after, n_402 } => {
            wait_until("submits before credits run out", DEADLINE, || {
                env.stats().submits >= after
            })
            .await;
            control.set_credits_exhausted(true);
            wait_until("402 answers", DEADLINE, || {
                env.stats().refused_402 >= n_402 || stop.is_cancelled()
            })
            .await;
            control.set_credits_exhausted(false);
        }
        During::Forbidden { after, n_403 } => {
            wait_until("requests before the key loses scope", DEADLINE, || {
                env.stats().requests >= after
            })
            .await;
            control.set_forbidden(true);
            wait_until("403 answers", DEADLINE, || {
                env.stats().refused_403 >= n_403 || stop.is_cancelled()
            })
            .await;
            control.set_forbidden(false);
        }
        During::DiskFull { .. } => {}
    }
    0
}

/// Runs one case to completion and checks every common claim, then the case's own.
async fn check_fault(case: Case) {
    let env = TestEnv::new(case.scenario.clone()).await;
    let name = case.name;
    let total = (case.images + LOCAL) as u64;
    for i in 0..LOCAL {
        env.drop_file(&format!("photos/local{i}.png"), &png(64, 48));
    }
    env.drop_file(
        &format!("{name}.yaml"),
        manifest(name, case.images).as_bytes(),
    );
    let config = env.config(case.api_extra, "");
    let out_dir = env.outbox.join(name);
    let mut wrapper: Vec<String> = case.wrapper.clone();
    if let During::DiskFull { failures } = case.during {
        wrapper = enospc_on_mkdir(&out_dir, failures);
    }
    let watch = PartialFileWatch::start(env.outbox.clone());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let stop = CancellationToken::new();
    let ((code, stderr), competitor_429) = tokio::join!(
        async {
            let ran = if case.daemon {
                let mut child = env.spawn_daemon_with(&config, 0, case.envs);
                let archived = env.archive.join(format!("{name}.yaml"));
                wait_until(
                    "the manifest is finished and archived",
                    3 * DEADLINE,
                    || archived.is_file(),
                )
                .await;
                let status = crate::support::stop(&mut child).await;
                (status.code().unwrap_or(-1), env.daemon_log(0))
            } else {
                env.run_once_with(&config, case.envs, &wrapper).await
            };
            stop.cancel();
            ran
        },
        play(&env, case.during, stop.clone()),
    );
    let partial = watch.finish();
    let stats = env.stats();
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        partial.is_empty(),
        "{name}: partial files under final names: {partial:?}"
    );

    // The report: one row per image, each done or failed with an allowed code.
    let report = env.report(name);
    let jobs = report["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len() as u64, total, "{name}: one row per image");
    let mut outcome = Outcome {
        daemon_429: stats.rate_limited - competitor_429,
        in_doubt: report["in_doubt"].as_u64().unwrap_or(0),
        ..Outcome::default()
    };
    let mut in_doubt_by_input: HashMap<String, u64> = HashMap::new();
    for job in jobs {
        let input = job["input"].as_str().unwrap_or_default().to_owned();
        in_doubt_by_input.insert(input.clone(), job["in_doubt"].as_u64().unwrap_or(0));
        match job["status"].as_str() {
            Some("done") => {
                outcome.done += 1;
                let rel = job["output"].as_str().expect("output path");
                let path = env.outbox.join(rel);
                assert!(
                    path.is_file(),
                    "{name}: {input} is done but {rel} is missing"
                );
                assert_eq!(dimensions(&path), OUT, "{name}: dimensions of {rel}");
            }
            Some("failed") => {
                let reason = job["reason"].as_str().unwrap_or_default();
                let code = reason.split(':').next().unwrap_or_default().to_owned();
                assert!(
                    case.may_fail.contains(&code.as_str()),
                    "{name}: {input} failed with {reason:?}; this fault allows only {:?}\n{tail}",
                    case.may_fail
                );
                *outcome.failed.entry(code).or_default() += 1;
            }
            other => panic!("{name}: {input} ended {other:?}, not done or failed:\n{report:#}"),
        }
    }
    let expected_code = if outcome.failed_total() == 0 { 0 } else { 2 };
    assert_eq!(
        code, expected_code,
        "{name}: exit code (0 = all done, 2 = some failed); stderr tail:\n{tail}"
    );

    // Exactly once in the outbox: one file per done job, nothing else, no temp files.
    let outputs = TestEnv::files_under(&out_dir);
    assert_eq!(
        outputs.len() as u64,
        outcome.done,
        "{name}: one output per done image, nothing else: {outputs:?}"
    );
    assert!(
        env.archive.join(format!("{name}.yaml")).is_file(),
        "{name}: the finished manifest is archived"
    );

    // Never paid twice, except for submits the store counted in doubt.
    for (key, count) in &stats.submits_by_key {
        let input = key.rsplit_once(' ').map_or(key.as_str(), |(i, _)| i);
        let allowed = in_doubt_by_input.get(input).copied().unwrap_or(0);
        assert!(
            count - 1 <= allowed,
            "{name}: {input} submitted {count} times, in doubt only {allowed} times"
        );
    }
    assert!(stats.duplicate_submits <= outcome.in_doubt);
    assert_eq!(
        stats.submits_by_key.len(),
        case.images,
        "{name}: every remote image was submitted"
    );

    eprintln!(
        "fault {name}: images {total}, done {}, failed {:?}, in_doubt {}, duplicates {}; \
         emulator: requests {}, 5xx {}, 429 {} (daemon {}), dropped {}, errored {}, polls delayed {}, \
         downloads {} (expired {}, truncated {}, wrong image {}), 402 {}, 403 {}",
        outcome.done,
        outcome.failed,
        outcome.in_doubt,
        stats.duplicate_submits,
        stats.requests,
        stats.errors_5xx,
        stats.rate_limited,
        outcome.daemon_429,
        stats.dropped_responses,
        stats.tasks_errored,
        stats.polls_delayed,
        stats.downloads,
        stats.downloads_expired,
        stats.downloads_truncated,
        stats.downloads_wrong_image,
        stats.refused_402,
        stats.refused_403,
    );
    if let Err(problem) = (case.check)(&stats, &outcome) {
        panic!("{name}: {problem}\n{stats:#?}\n{outcome:?}\nstderr tail:\n{tail}");
    }
}

/// Fails with `what` unless `cond`.
fn ensure(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

/// Every image done, and exactly one good download per image (no fault wasted one).
fn all_done(s: &Stats, o: &Outcome) -> Result<(), String> {
    ensure(o.failed_total() == 0, "no image may fail")?;
    ensure(
        s.downloads == o.done,
        "one complete download per done image",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_5xx_on_every_endpoint() {
    let shares = FaultShares {
        submit: 0.2,
        poll: 0.2,
        download: 0.2,
        upload: 0.2,
        sync: 0.2,
    };
    check_fault(Case {
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.errors_5xx > 0, "5xx were injected")?;
            ensure(
                s.duplicate_submits == 0,
                "a 500 creates no task: no duplicate",
            )
        },
        ..Case::new(
            "five-hundreds",
            Scenario::default().seed(1).fault_5xx(shares),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_submit_responses_dropped_after_the_task_was_created() {
    check_fault(Case {
        images: 60,
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.dropped_responses > 0, "responses were dropped")?;
            ensure(
                o.in_doubt >= s.dropped_responses,
                "every dropped response is counted in doubt",
            )?;
            ensure(
                s.duplicate_submits == s.dropped_responses,
                "each drop costs exactly one resubmit",
            )
        },
        ..Case::new("dropped", Scenario::default().seed(3).drop_share(0.05))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_tasks_ending_in_error_fail_with_claid_error() {
    check_fault(Case {
        images: 60,
        may_fail: &["claid-error"],
        check: |s, o| {
            ensure(s.tasks_errored > 0, "tasks ended in ERROR")?;
            ensure(
                o.failed.get("claid-error").copied() == Some(s.tasks_errored),
                "exactly the errored tasks fail, with claid-error",
            )?;
            ensure(s.duplicate_submits == 0, "a failed task is not resubmitted")
        },
        ..Case::new("errored", Scenario::default().seed(5).error_share(0.03))
    })
    .await;
}

/// A tight limit (20 rps at the emulator, 200 configured in the daemon) that another client
/// with the same key keeps full: the daemon gets 429s, waits them out, and no job fails.
/// (Without the competitor there is no storm: the client reads `RateLimit-Remaining` and waits
/// before the window is full.)
#[tokio::test(flavor = "multi_thread")]
async fn fault_429_storm_under_a_tight_rate_limit() {
    check_fault(Case {
        images: 20,
        envs: &[
            ("CLAID_HOTFOLDER__API__REQUESTS_PER_SECOND", "200"),
            ("CLAID_HOTFOLDER__API__REQUESTS_PER_MINUTE", "12000"),
        ],
        during: During::Competitor {
            rps: 200,
            daemon_429: 10,
        },
        check: |s, o| {
            all_done(s, o)?;
            ensure(o.daemon_429 >= 10, "the daemon got 429s")?;
            ensure(s.duplicate_submits == 0, "a 429 creates no task")
        },
        ..Case::new("storm", Scenario::default().seed(7).rps(20))
    })
    .await;
}

/// Runs a manifest of two storage images under `scenario` (`api`: extra `api` keys) with
/// `run --once` and checks both are delivered and the run ends 0; the env and stderr.
async fn two_images_delivered(scenario: Scenario, api: &str) -> (TestEnv, String) {
    let env = TestEnv::new(scenario).await;
    let config = env.config(api, "");
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{api}: {stderr}");
    assert!(env.outbox.join("m/a-64x48.jpg").is_file(), "{api}");
    assert!(env.outbox.join("m/b-64x48.jpg").is_file(), "{api}");
    (env, stderr)
}

/// A long run of 429s to the polls of billed tasks and batches (130 each, more than any
/// budget of answers): they are waited out, never fail the images (it lost results Claid had
/// billed, and a replay paid again).
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_long_run_of_429s_to_polls_never_fails_a_billed_task() {
    for api in ["", "batch: { max_images: 1 }"] {
        let (env, _) = two_images_delivered(Scenario::default().polls_rate_limited(130), api).await;
        let stats = env.stats();
        assert!(stats.rate_limited >= 130, "{api}: {stats:?}");
        assert_eq!(stats.duplicate_submits, 0, "{api}");
    }
}

/// A long run of 429s to submits (more than the 120 a submit waits out, each with
/// `RateLimit-Reset: 0`): nothing is made or billed, so the image is never failed for it
/// (it failed as `rate-limited`); past the budget it is waited out as an outage.
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_long_run_of_429s_to_submits_never_fails_an_image() {
    for api in ["", "batch: { max_images: 1 }"] {
        let (env, stderr) =
            two_images_delivered(Scenario::default().submits_rate_limited(260), api).await;
        assert!(env.stats().rate_limited >= 260, "{api}: {:?}", env.stats());
        assert!(!stderr.contains("rate-limited"), "{api}: {stderr}");
    }
}

/// An API that answers every call 429 (another client spending the key's whole quota): the
/// streak counts as the API failing once it has lasted Claid's minute window, so `run --once`
/// ends `api.unreachable_timeout` later (it ended after the submit's 120 of them, two hours at
/// Claid's minute window, told as "unreachable"), saying so, without a WARN for each 429;
/// polls alike.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_under_nothing_but_429s_ends_at_the_unreachable_timeout_saying_so() {
    let submits = Scenario::default().submits_rate_limited(1_000_000);
    let polls = Scenario::default().polls_rate_limited(1_000_000);
    tokio::join!(
        nothing_but_429s(submits, "submits"),
        nothing_but_429s(polls, "polls")
    );
}

async fn nothing_but_429s(scenario: Scenario, what: &str) {
    {
        let env = TestEnv::new(scenario).await;
        let config = env.config("unreachable_timeout: 3s\nbatch: { max_images: 1 }", "");
        env.drop_file(
            "m.yaml",
            b"images:\n  - input: storage://demo/a-64x48.png\n",
        );
        let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&config))
            .await
            .expect("run --once ends");
        assert_eq!(code, 69, "{what}: {stderr}");
        assert!(
            stderr.contains("answered every call with 429"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("failed; retrying"), "{what}: {stderr}");
    }
}

/// A 409 (or another 4xx Claid's contract does not name for a GET, other than 404) to the
/// polls of billed tasks and batches: asked again, so the images are delivered (the first one
/// failed them as `task-lost`, results Claid had billed lost, and a replay paid again).
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_refused_poll_is_asked_again_and_never_loses_a_billed_task() {
    for api in ["", "batch: { max_images: 1 }"] {
        let (env, stderr) = two_images_delivered(Scenario::default().polls_refused(2), api).await;
        assert!(
            stderr.contains("Claid refused a poll of a"),
            "{api}: {stderr}"
        );
        assert_eq!(env.stats().duplicate_submits, 0, "{api}");
    }
}

/// Every submit's answer lost (a gateway that takes the request on and then fails: 502, 504,
/// a dropped connection): each image is sent again only once the API answers again (a free
/// probe), at most five times in a row, and then held in doubt, never failed (each image was
/// sent five times in about 2 s and failed: a gateway's blip failed a whole drop and billed
/// it five times over), its possible bills counted in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn fault_submit_answers_lost_again_and_again_are_held_not_failed_nor_sent_for_ever() {
    // URL inputs go in batches; `storage://demo` (no storage of the config) one by one.
    for batched in [true, false] {
        let (served, scenario) = crate::batch::static_images(&["a.png", "b.png"]);
        let env = TestEnv::new(scenario.drop_share(1.0).seed(3)).await;
        let config = env.config("unreachable_timeout: 2m", "");
        let mut text = String::from("images:\n");
        for name in ["a.png", "b.png"] {
            if batched {
                let addr = env.emulator.addr();
                text.push_str(&format!("  - input: http://{addr}/_static/{name}\n"));
            } else {
                text.push_str(&format!(
                    "  - input: storage://demo/{}-64x48.png\n",
                    &name[..1]
                ));
            }
        }
        env.drop_file("m.yaml", text.as_bytes());
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 2, "batched {batched}: held in doubt: {stderr}");
        assert!(
            !stderr.contains("Job failed"),
            "batched {batched}: {stderr}"
        );
        let report = env.report("m");
        let rows = report["jobs"].as_array().expect("rows");
        assert!(
            rows.iter().all(|r| r["status"] == "in-doubt"),
            "batched {batched}: {report:#}"
        );
        let stats = env.stats();
        let (sends, most) = if batched {
            (stats.batch_submits, 5)
        } else {
            (stats.submits, 10)
        };
        assert!(
            (2..=most).contains(&sends) && stats.submits + stats.batch_submits == sends,
            "batched {batched}: sent again, but at most five times in a row each: {stats:?}"
        );
        drop(served);
    }
}

/// A 404 to the first polls of a task or batch just named by its submit's answer (a store
/// lagging that answer by a few seconds): asked again while the task is young, so the images
/// are delivered (after three asks in about 2 s they failed as `task-lost`, results Claid had
/// billed lost).
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_new_task_not_found_for_a_few_polls_is_not_taken_for_lost() {
    for api in ["", "batch: { max_images: 1 }"] {
        let (env, stderr) = two_images_delivered(Scenario::default().polls_not_found(5), api).await;
        assert!(!stderr.contains("task-lost"), "{api}: {stderr}");
        assert_eq!(env.stats().duplicate_submits, 0, "{api}");
    }
}

/// Twelve 404s in a row for a just-named task (a deploy, or a store lagging for ten
/// seconds), with the quick polls this config sets (`poll.max: 500ms`): the run of 404s is
/// asked out for half a minute whatever `api.poll` says (seven quick asks, about 3 s here,
/// failed the billed images as `task-lost`).
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_run_of_404s_is_asked_for_half_a_minute_whatever_the_poll_settings() {
    for api in ["", "batch: { max_images: 1 }"] {
        let (env, stderr) =
            two_images_delivered(Scenario::default().polls_not_found(12), api).await;
        assert!(!stderr.contains("task-lost"), "{api}: {stderr}");
        assert_eq!(env.stats().duplicate_submits, 0, "{api}");
    }
}

/// An API that takes connections but holds every submit's answer past `api.request_timeout`:
/// `run --once` ends 69 at `api.unreachable_timeout` saying the API answered its calls too
/// late and naming the call and its timeout (it said "The Claid API stayed unreachable", which sent
/// the operator to the network), and fails no image (the submits are in doubt, not lost).
#[tokio::test(flavor = "multi_thread")]
async fn fault_submits_answered_too_late_end_run_once_saying_the_api_answers_too_slowly() {
    let env =
        TestEnv::new(Scenario::default().submit_response_delay(Duration::from_secs(30))).await;
    let config = env.config(
        "request_timeout: 1s
unreachable_timeout: 4s",
        "",
    );
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains("The Claid API answered its last calls too late")
            && stderr.contains("within api.request_timeout"),
        "{stderr}"
    );
    assert!(!stderr.contains("stayed unreachable"), "{stderr}");
    assert!(!stderr.contains("Job failed"), "{stderr}");
    assert!(env.stats().submits >= 1, "{:?}", env.stats());
}

/// A result host that answers 503 (the API answering as usual) for longer than a download's
/// failure budget: the image was made and billed, and its result stays at its `tmp_url` for a
/// day, so the download waits it out like an outage. `run --once` ends at
/// `api.unreachable_timeout` (69) with the job left to the next run, which downloads it
/// without a second submit. (The job failed as `download-failed`, and only a replay that
/// paid again got the image.)
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_result_host_away_is_waited_out_never_fails_a_billed_image() {
    // Away: 503; or limiting its rate: 429 (which failed the image within 4 s).
    for (api, limited) in [("", false), ("batch: { max_images: 1 }", false), ("", true)] {
        let env = TestEnv::new(Scenario::default()).await;
        let config = env.config(&format!("unreachable_timeout: 4s\n{api}"), "");
        env.drop_file(
            "m.yaml",
            b"images:\n  - input: storage://demo/a-64x48.png\n",
        );
        let control = env.emulator.control();
        if limited {
            control.set_downloads_rate_limited(true);
        } else {
            control.set_downloads_down(true);
        }
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 69, "{api}: the run ends, the job left: {stderr}");
        let stats = env.stats();
        let refused = if limited {
            stats.rate_limited
        } else {
            stats.errors_5xx
        };
        assert!(
            refused >= 10,
            "{api}: more tries than a download's failure budget: {stats:?}"
        );
        assert!(!stderr.contains("Job failed"), "{api}: {stderr}");
        // The outage named is the result host's, not the API's.
        assert!(
            stderr.contains("The host of Claid's results stayed unreachable")
                && stderr.contains("the result host"),
            "{api}: {stderr}"
        );
        control.set_downloads_down(false);
        control.set_downloads_rate_limited(false);
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "{api}: {stderr}");
        assert!(
            env.outbox.join("m/a-64x48.jpg").is_file(),
            "{api}: {stderr}"
        );
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            1,
            "{api}: billed once: {stats:?}"
        );
        assert_eq!(env.report("m")["jobs"][0]["status"], "done", "{api}");
    }
}

/// Polls answered 500 (the rest of the API answering) past a poll's failure budget: the task
/// or batch is billed, so its polls go on at the backoff's cap until `give_up_after`, and the
/// image is delivered once they answer again (the job failed as `server-error`, the result it
/// paid for lost, and a replay billed it again).
#[tokio::test(flavor = "multi_thread")]
async fn fault_polls_failing_past_their_budget_never_lose_a_billed_task() {
    for api in [
        "max_in_flight: 8",
        "max_in_flight: 8\nbatch: { max_images: 1 }",
    ] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(500))))
                .await;
        // Claid's first task (or batch), id 1, is polled with 500s; the other images keep the
        // API answering meanwhile (with nothing answering, it would be an outage, waited out
        // without spending the budget).
        let mut text = String::from("images:\n");
        for i in 0..200 {
            text.push_str(&format!("  - input: storage://demo/i{i}-64x48.png\n"));
        }
        env.drop_file("m.yaml", text.as_bytes());
        let control = env.emulator.control();
        control.set_polls_down_for(Some(1));
        let config = env.config(api, "");
        let run = env.run_once(&config);
        let stats = || env.stats();
        let heal = async {
            // A poll's budget is 20 failures: well past it, the polls answer again.
            wait_until("polls past the budget", Duration::from_secs(120), || {
                stats().errors_5xx >= 50
            })
            .await;
            control.set_polls_down_for(None);
        };
        let ((code, stderr), ()) = tokio::join!(run, heal);
        assert_eq!(code, 0, "{api}: {stderr}");
        assert!(
            stderr.contains("keep failing"),
            "{api}: said once the budget was spent: {stderr}"
        );
        assert_eq!(
            TestEnv::files_under(&env.outbox.join("m")).len(),
            200,
            "{api}"
        );
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            200,
            "{api}: billed once: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_polls_slower_than_the_request_timeout() {
    check_fault(Case {
        api_extra: "request_timeout: 1s",
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.polls_delayed > 0, "polls were held past the timeout")
        },
        ..Case::new(
            "slow-polls",
            Scenario::default()
                .seed(11)
                .poll_delay(0.3, Duration::from_secs(3)),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_tmp_url_expired_before_the_download() {
    check_fault(Case {
        images: 8,
        api_extra: "max_downloads: 1",
        may_fail: &["result-expired"],
        check: |s, o| {
            // A 403/404 from a result URL may be one not propagated yet: each is asked again
            // on the download's budget (10 requests), then fails as result-expired.
            ensure(
                o.failed.get("result-expired").copied().map(|n| n * 10)
                    == Some(s.downloads_expired),
                "each expired result is asked for 10 times, then fails its job with result-expired",
            )?;
            ensure(s.downloads_expired > 0, "results expired")?;
            ensure(
                s.duplicate_submits == 0,
                "an expired result is not paid for again",
            )
        },
        ..Case::new(
            "expired",
            Scenario::default()
                .seed(13)
                .tmp_url_ttl(Duration::from_millis(1)),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_truncated_downloads_are_fetched_again() {
    check_fault(Case {
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.downloads_truncated > 0, "downloads were truncated")
        },
        ..Case::new(
            "truncated",
            Scenario::default().seed(17).truncate_share(0.3),
        )
    })
    .await;
}

/// A download that ends cleanly after half the image (no `Content-Length`: nothing on the wire
/// says it is short, and the half still has the header that gives the right size) is found
/// out by the image's own end and fetched again: every output written is a whole image.
#[tokio::test(flavor = "multi_thread")]
async fn fault_downloads_cut_short_cleanly_are_fetched_again_never_written() {
    let env = TestEnv::new(Scenario::default().seed(23).short_share(0.4)).await;
    // PNG and JPEG results (their ends are found differently).
    for (name, output) in [("png", "output: { format: png }\n"), ("jpeg", "")] {
        let mut text = format!("{output}images:\n");
        for i in 0..5 {
            text.push_str(&format!(
                "  - input: storage://demo/{name}{i}-640x480.png\n"
            ));
        }
        env.drop_file(&format!("{name}.yaml"), text.as_bytes());
    }
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    let stats = env.stats();
    assert!(
        stats.downloads_short > 0,
        "downloads were cut short: {stats:?}"
    );
    let outputs: Vec<_> = ["png", "jpeg"]
        .iter()
        .flat_map(|name| {
            let folder = env.outbox.join(name);
            TestEnv::files_under(&folder)
                .into_iter()
                .map(move |file| folder.join(file))
        })
        .collect();
    assert_eq!(outputs.len(), 10, "{outputs:?}");
    for path in outputs {
        image::open(&path)
            .unwrap_or_else(|err| panic!("{} is not a whole image: {err}", path.display()));
    }
    assert_eq!(
        stats.downloads, 10,
        "only a whole image is accepted, once per job"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_downloads_of_the_wrong_image_are_never_written() {
    check_fault(Case {
        may_fail: &["result-mismatch"],
        check: |s, o| {
            ensure(s.downloads_wrong_image > 0, "wrong images were served")?;
            let mismatched = o.failed.get("result-mismatch").copied().unwrap_or(0);
            ensure(
                s.downloads == o.done,
                "only the right image is ever accepted, once per done job",
            )?;
            ensure(
                3 * mismatched <= s.downloads_wrong_image,
                "a job fails result-mismatch only after three wrong images",
            )
        },
        ..Case::new(
            "wrong-image",
            Scenario::default().seed(19).wrong_image_share(0.3),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_api_down_for_a_while_then_back() {
    check_fault(Case {
        during: During::Down {
            after: 15,
            n_503: 40,
        },
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.errors_5xx >= 40, "the outage answered 503s")
        },
        ..Case::new(
            "outage",
            Scenario::default()
                .seed(23)
                .latency(Latency::Fixed(Duration::from_millis(100))),
        )
    })
    .await;
}

/// An outage longer than a job's retry budget for transient submit errors (12 pipeline
/// attempts of 5 client calls each: 60 503s per job, about a minute with this config; 700 503s
/// over 8 jobs exceed it): jobs must wait for the API, not fail. Slow (about 90 s), so it only
/// runs when asked:
/// It takes about 90 s: `cargo test --test it -- faults::fault_api_down_longer`.
#[tokio::test(flavor = "multi_thread")]
async fn fault_api_down_longer_than_the_retry_budget() {
    check_fault(Case {
        images: 5,
        // `run --once` gives up after this long without a successful call; the outage is
        // shorter, and the jobs must wait it out.
        api_extra: "unreachable_timeout: 10m",
        // Down before the first submit, so every job meets the outage while submitting.
        during: During::Down {
            after: 0,
            n_503: 700,
        },
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.errors_5xx >= 700, "the outage answered 503s")
        },
        ..Case::new("long-outage", Scenario::default().seed(43))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_out_of_credits_pauses_and_resumes_without_failing_jobs() {
    check_fault(Case {
        during: During::OutOfCredits {
            after: 10,
            n_402: 3,
        },
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.refused_402 >= 3, "submits were refused with 402")
        },
        daemon: true,
        ..Case::new(
            "credits",
            Scenario::default()
                .seed(29)
                .latency(Latency::Fixed(Duration::from_millis(100))),
        )
    })
    .await;
}

/// `run --once` refused for want of credits (402) while Claid already works on tasks it
/// took (billed): those are polled and downloaded before the run exits 77, new images are
/// not submitted. (It exited at the 402, and the billed results waited at Claid for a run
/// that might come after their day.)
#[tokio::test(flavor = "multi_thread")]
async fn a_run_once_out_of_credits_finishes_the_tasks_claid_already_took() {
    let env = TestEnv::new(
        Scenario::default()
            .seed(61)
            .rps(1)
            .latency(Latency::Fixed(Duration::from_secs(8))),
    )
    .await;
    let mut text = String::from("images:\n");
    for i in 0..4 {
        text.push_str(&format!("  - storage://demo/c{i}-64x48.png\n"));
    }
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("batch: { max_images: 1 }", "");
    let control = env.emulator.control();
    let ((code, stderr), ()) = tokio::join!(env.run_once(&config), async {
        wait_until("a first task taken", DEADLINE, || env.stats().submits >= 1).await;
        control.set_credits_exhausted(true);
    });
    assert_eq!(code, 77, "{stderr}");
    let stats = env.stats();
    assert!(stats.refused_402 >= 1, "{stats:?}");
    assert!(stats.submits >= 1, "{stats:?}");
    assert_eq!(
        stats.downloads, stats.submits,
        "every task Claid took is fetched before the run ends: {stats:?}"
    );
    assert_eq!(
        TestEnv::files_under(&env.outbox.join("m")).len() as u64,
        stats.submits,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_forbidden_key_pauses_and_resumes_without_failing_jobs() {
    check_fault(Case {
        during: During::Forbidden {
            after: 15,
            n_403: 3,
        },
        check: |s, o| {
            all_done(s, o)?;
            ensure(s.refused_403 >= 3, "requests were refused with 403")
        },
        daemon: true,
        ..Case::new(
            "forbidden",
            Scenario::default()
                .seed(31)
                .latency(Latency::Fixed(Duration::from_millis(100))),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_outbox_write_fails_until_the_disk_has_room_again() {
    if !strace_usable() {
        eprintln!("fault disk-full: skipped, strace with ptrace is not available here");
        return;
    }
    check_fault(Case {
        images: 20,
        during: During::DiskFull { failures: 3 },
        check: |s, o| {
            ensure(o.failed_total() == 0, "no image may fail")?;
            ensure(
                s.downloads > o.done,
                "writes failed and the results were fetched again",
            )?;
            ensure(
                s.duplicate_submits == 0,
                "a failed write is never resubmitted",
            )
        },
        ..Case::new("blocked", Scenario::default().seed(37))
    })
    .await;
}

/// While an output cannot be written for a reason that may heal (ENOSPC, injected by strace
/// on the creation of the output folder), nothing new is submitted: Claid would bill results
/// that could not be written either. Read from the log afterwards: no submit between the
/// block and its end. Then every image is delivered, none billed twice.
#[tokio::test(flavor = "multi_thread")]
async fn fault_no_image_is_submitted_while_an_output_cannot_be_written() {
    if !strace_usable() {
        eprintln!("fault writes-blocked: skipped, strace with ptrace is not available here");
        return;
    }
    let env = TestEnv::new(Scenario::default().seed(41)).await;
    let text: String = (0..4)
        .map(|i| format!("  - input: storage://demo/held{i}-64x48.png\n"))
        .collect();
    env.drop_file("held.yaml", format!("images:\n{text}").as_bytes());
    let config = env.config("max_in_flight: 1", "");
    let wrapper = enospc_on_mkdir(&env.outbox.join("held"), 2);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (code, stderr) = env
        .run_once_with(
            &config,
            &[("RUST_LOG", "info,claid_hotfolder::pipeline=debug")],
            &wrapper,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let blocked = stderr
        .find("An output cannot be written")
        .unwrap_or_else(|| panic!("the write failed and blocked submits:\n{stderr}"));
    let resumed = stderr[blocked..]
        .find("No output waits for room to be written any more")
        .map(|at| blocked + at)
        .unwrap_or_else(|| panic!("submits resumed after the wait:\n{stderr}"));
    assert!(
        !stderr[blocked..resumed].contains("Submitted"),
        "nothing was submitted while the output could not be written:\n{}",
        &stderr[blocked..resumed]
    );
    assert!(stderr[..blocked].contains("Submitted"), "{stderr}");
    let report = env.report("held");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    assert_eq!(env.stats().duplicate_submits, 0);
}

/// The `strace … --` wrapper that fails the first `failures` creations of `dir` (per daemon
/// thread) with ENOSPC.
fn enospc_on_mkdir(dir: &std::path::Path, failures: u32) -> Vec<String> {
    strace_injecting(
        "mkdir,mkdirat",
        Some(dir),
        &format!("error=ENOSPC:when=1..{failures}"),
    )
}

/// The `strace … --` wrapper that injects `fault` into the daemon's `calls` (on `path` only,
/// when given), following every thread.
fn strace_injecting(calls: &str, path: Option<&std::path::Path>, fault: &str) -> Vec<String> {
    let mut args: Vec<String> = ["strace", "-f", "-qq", "-o", "/dev/null", "-e"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(format!("trace={calls}"));
    if let Some(path) = path {
        args.push("-P".to_owned());
        args.push(path.display().to_string());
    }
    args.push("-e".to_owned());
    args.push(format!("inject={calls}:{fault}"));
    args.push("--".to_owned());
    args
}

/// Whether strace can trace (and inject into) a child here.
fn strace_usable() -> bool {
    std::process::Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=none", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A slow disk under the state directory (and the outbox): every fsync and fdatasync of the
/// daemon is delayed 30 ms by strace's fault injection. Skipped where strace or ptrace is not
/// available.
#[tokio::test(flavor = "multi_thread")]
async fn fault_state_on_a_slow_disk() {
    if !strace_usable() {
        eprintln!("fault slow-disk: skipped, strace with ptrace is not available here");
        return;
    }
    let wrapper = strace_injecting("fsync,fdatasync,sync_file_range", None, "delay_enter=30000");
    check_fault(Case {
        images: 20,
        wrapper,
        check: all_done,
        ..Case::new("slow-disk", Scenario::default().seed(41))
    })
    .await;
}

/// An output folder the daemon may not write (EACCES on every creation of it, injected by
/// strace: a folder a person made that the service user cannot write) ends `run --once` with
/// 73 after `api.unreachable_timeout`, naming the cause, instead of retrying each image's
/// write for minutes and then submitting (and billing) the next.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_ends_73_when_an_output_folder_stays_unwritable() {
    if !strace_usable() {
        eprintln!("unwritable folder: skipped, strace with ptrace is not available here");
        return;
    }
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", manifest("m", 10).as_bytes());
    for i in 0..LOCAL {
        env.drop_file(&format!("photos/local{i}.png"), &png(64, 48));
    }
    let config = env.config(
        "max_in_flight: 2\nunreachable_timeout: 3s\nbatch: { max_images: 1 }",
        "",
    );
    let wrapper = strace_injecting("mkdir,mkdirat", Some(&env.outbox.join("m")), "error=EACCES");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once_with(&config, &[], &wrapper))
        .await
        .expect("run --once ends at api.unreachable_timeout");
    assert_eq!(code, 73, "{stderr}");
    assert!(stderr.contains("unwritable"), "{stderr}");
    let stats = env.stats();
    assert!(
        stats.submits + stats.uploads <= 4,
        "only what was in flight when writes began to fail was billed: {stats:?}"
    );
}

/// A folder in the outbox the daemon may not read (another team's, mode 000) does not keep it
/// from starting: the look for stale temporary files skips it with a warning, removes the
/// stale files it can reach, and the manifest is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_folder_in_the_outbox_is_skipped_by_the_start_not_fatal() {
    use std::os::unix::fs::PermissionsExt;
    // As root, file modes refuse nothing: the run goes without the capabilities that
    // bypass them (root still owns every folder the test made).
    let wrapper: &[&str] = if crate::support::is_root() {
        &[
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ]
    } else {
        &[]
    };
    let env = TestEnv::new(Scenario::default()).await;
    let locked = env.outbox.join("another-team");
    std::fs::create_dir_all(&locked).expect("locked folder");
    let stale = env.outbox.join(".x.png.tmp-ab12");
    std::fs::write(&stale, b"half").expect("stale tmp");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    env.drop_file("m.yaml", manifest("m", 0).as_bytes());
    for i in 0..LOCAL {
        env.drop_file(&format!("photos/local{i}.png"), &png(64, 48));
    }
    let config = env.config("", "");
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once_with(&config, &[], wrapper))
        .await
        .expect("run --once ends");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("could not be looked through") && stderr.contains("another-team"),
        "the skipped folder is told: {stderr}"
    );
    assert!(!stale.exists(), "the stale file it could reach was removed");
    let report = env.report("m");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), LOCAL);
    for row in rows {
        assert_eq!(row["status"], "done", "{row}");
        let output = env.outbox.join(row["output"].as_str().expect("output"));
        assert_eq!(dimensions(&output), (32, 24), "{}", output.display());
    }
}

/// Answers that are not settled yet are asked again, not believed: a 404 to the first poll of
/// a task or batch Claid named a moment ago, a DONE without its result, a 404 to the first
/// download of a result URL. Every image is delivered and none is paid for twice, with
/// batches and with single tasks.
#[tokio::test(flavor = "multi_thread")]
async fn fault_unsettled_answers_are_asked_again_not_believed() {
    for (name, api_extra) in [
        ("unsettled-batches", ""),
        ("unsettled-single", "batch: { max_images: 1 }"),
    ] {
        check_fault(Case {
            images: 12,
            api_extra,
            check: |s, o| {
                all_done(s, o)?;
                ensure(s.unsettled_answers >= 4, "answers were unsettled")?;
                ensure(s.duplicate_submits == 0, "nothing is paid for twice")
            },
            ..Case::new(name, Scenario::default().seed(17).unsettled_share(0.7))
        })
        .await;
    }
}

/// With `HTTP_PROXY` set (the client honours it) and the proxy refusing, `run --once` names
/// the proxy with the API's address: it blamed the API's host, which was up and never asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_proxy_is_named_not_only_the_api_behind_it() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("unreachable_timeout: 2s", "");
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/a-64x48.png\n",
    );
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let proxy = format!("127.0.0.1:{port}");
    let (code, log) = env
        .run_once_with(
            &config,
            &[
                ("HTTP_PROXY", proxy.as_str()),
                ("NO_PROXY", ""),
                ("no_proxy", ""),
            ],
            &[],
        )
        .await;
    assert_eq!(code, 69, "{log}");
    assert!(
        log.contains(&format!(
            "(HTTP_PROXY is set to {proxy} and NO_PROXY does not name 127.0.0.1)"
        )),
        "{log}"
    );
    assert_eq!(env.stats().submits, 0);
}

/// A gateway in front of the API that answers `303 See Other` to every submit: the first job
/// is held in doubt (its request may have been processed and billed), never sent again, and
/// submitting pauses (`run --once` exits 64 as for a redirect), so the queue is not held in
/// doubt image after image; before, the job stayed queued and was submitted again.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_answered_303_is_held_in_doubt_and_submitting_pauses() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = TestEnv::new(Scenario::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gateway = format!("http://{}", listener.local_addr().expect("addr"));
    let posts = Arc::new(AtomicUsize::new(0));
    {
        let posts = posts.clone();
        let answer = move |request: axum::extract::Request| {
            let posts = posts.clone();
            async move {
                let status = if request.method() == axum::http::Method::POST {
                    posts.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::SEE_OTHER
                } else {
                    axum::http::StatusCode::NOT_FOUND
                };
                axum::response::Response::builder()
                    .status(status)
                    .header("location", "/login")
                    .body(axum::body::Body::empty())
                    .expect("response")
            }
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, axum::Router::new().fallback(answer)).await;
        });
    }
    let config = env.config("batch: { max_images: 1 }\nmax_in_flight: 1", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&env.emulator.base_url(), &format!("{gateway}/v1"));
    std::fs::write(&config, text).expect("config");
    env.drop_file(
        "m.yaml",
        b"images:\n  - https://cdn.example.com/a.jpg\n  - https://cdn.example.com/b.jpg\n",
    );
    let (code, log) = env.run_once(&config).await;
    assert_eq!(code, 64, "{log}");
    assert_eq!(posts.load(Ordering::SeqCst), 1, "one submit only: {log}");
    let (_, out, _) = crate::support::cli(&["jobs", "--config", config.to_str().unwrap()]).await;
    let queued = out.lines().filter(|l| l.contains("queued")).count();
    let held = out
        .lines()
        .filter(|l| l.contains("submitting") || l.contains("in-doubt"))
        .count();
    assert_eq!((queued, held), (1, 1), "{out}");
}

/// A result URL that Claid's storage refuses (403) through the download's asks, when the task
/// polled again gives another URL for the same result (re-signed, moved): the task is polled
/// once more (no bill) and the new URL downloaded, for a single task (an upload) and for the
/// jobs of a batch (URLs). It failed as `result-expired`: a billed result lost for a URL.
/// A proxy in front of the emulator replaces every `tmp_url` of each task's first DONE answer
/// with one of its own that answers 403; later answers pass unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_result_url_is_replaced_by_polling_the_task_once_more() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let env = TestEnv::new(Scenario::default()).await;
    let origin = env.emulator.base_url().trim_end_matches("/v1").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = format!("http://{}", listener.local_addr().expect("addr"));
    let refused = Arc::new(AtomicUsize::new(0));
    let done_seen: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    {
        let (origin, proxy, refused) = (origin.clone(), proxy.clone(), refused.clone());
        let http = reqwest::Client::new();
        let forward = move |request: axum::extract::Request| {
            let (origin, proxy, refused) = (origin.clone(), proxy.clone(), refused.clone());
            let (http, done_seen) = (http.clone(), done_seen.clone());
            async move {
                let (parts, body) = request.into_parts();
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                if path.starts_with("/gone") {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return axum::response::Response::builder()
                        .status(axum::http::StatusCode::FORBIDDEN)
                        .body(axum::body::Body::empty())
                        .expect("response");
                }
                let body = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                let mut headers = parts.headers.clone();
                headers.remove(axum::http::header::HOST);
                let answer = http
                    .request(parts.method.clone(), format!("{origin}{path}"))
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .expect("the emulator answers");
                let status = answer.status();
                let answer_headers = answer.headers().clone();
                let mut bytes = answer.bytes().await.unwrap_or_default().to_vec();
                if parts.method == axum::http::Method::GET
                    && path.contains("/image/edit/")
                    && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && value.to_string().contains("\"DONE\"")
                    && done_seen.lock().expect("seen").insert(path.clone())
                {
                    fn replace(value: &mut serde_json::Value, proxy: &str, n: &mut usize) {
                        match value {
                            serde_json::Value::Object(map) => {
                                for (key, value) in map.iter_mut() {
                                    if key == "tmp_url" && value.is_string() {
                                        *n += 1;
                                        *value = format!("{proxy}/gone/{n}").into();
                                    } else {
                                        replace(value, proxy, n);
                                    }
                                }
                            }
                            serde_json::Value::Array(items) => {
                                items.iter_mut().for_each(|v| replace(v, proxy, n));
                            }
                            _ => {}
                        }
                    }
                    let mut n = 0;
                    replace(&mut value, &proxy, &mut n);
                    bytes = serde_json::to_vec(&value).expect("json");
                }
                let mut response = axum::response::Response::builder().status(status);
                for (name, value) in &answer_headers {
                    if name != axum::http::header::CONTENT_LENGTH {
                        response = response.header(name, value);
                    }
                }
                response
                    .body(axum::body::Body::from(bytes))
                    .expect("response")
            }
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, axum::Router::new().fallback(forward)).await;
        });
    }
    // Alone (`batch: { max_images: 1 }`: async tasks), then in batches.
    for (stem, api_extra, names) in [
        (
            "single",
            "batch: { max_images: 1 }",
            &["a-64x48", "b-64x48"][..],
        ),
        ("batched", "", &["c-64x48", "d-64x48", "e-64x48"][..]),
    ] {
        let config = env.config(api_extra, "");
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace(&env.emulator.base_url(), &format!("{proxy}/v1"));
        std::fs::write(&config, text).expect("config");
        let images: String = names
            .iter()
            .map(|name| format!("  - storage://demo/{name}.png\n"))
            .collect();
        env.drop_file(
            &format!("{stem}.yaml"),
            format!(
                "operations: {{ resizing: {{ width: 32, height: 24, fit: crop }} }}\nimages:\n{images}"
            )
            .as_bytes(),
        );
        let refused_before = refused.load(Ordering::SeqCst);
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "{stderr}");
        let report = env.report(stem);
        let rows = report["jobs"].as_array().expect("rows");
        assert_eq!(rows.len(), names.len(), "{report}");
        for row in rows {
            assert_eq!(row["status"], "done", "{row}\n{stderr}");
        }
        for name in names {
            let out = env.outbox.join(format!("{stem}/{name}.jpg"));
            assert_eq!(dimensions(&out), OUT, "{}", out.display());
        }
        assert!(
            refused.load(Ordering::SeqCst) >= refused_before + names.len(),
            "every first result URL was refused"
        );
        assert!(stderr.contains("the task gives a new one"), "{stderr}");
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.duplicate_submits, 0, "nothing was billed again");
}
