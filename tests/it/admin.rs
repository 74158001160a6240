//! The daemon as a service: the admin socket and the CLI against a running daemon (status,
//! jobs, replay), health while paused, metrics against the emulator's counts, SIGHUP reloads,
//! systemd notifications on a test NOTIFY_SOCKET, a second daemon refused, and the unit file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use claid_hotfolder::admin;
use claid_hotfolder::emulator::{Latency, Scenario};

use crate::support::{TestEnv, cli, png, signal, stop, wait_for, wait_until, wait_until_async};

/// GET over the admin socket; (status, body).
async fn get(socket: &Path, path: &str) -> (u16, String) {
    let (status, body) = admin::request(socket, "GET", path, None)
        .await
        .expect("admin answers");
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn status_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = cli(&["status", "--json", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "status fails: {err}");
    serde_json::from_str(&out).expect("status --json is JSON")
}

/// `/healthz` once it answers 503, or its last answer when `within` has passed first.
async fn healthz_once_unavailable(socket: &Path, within: Duration) -> (u16, String) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let answer = get(socket, "/healthz").await;
        if answer.0 == 503 || std::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_socket(env: &TestEnv) {
    let socket = env.socket();
    wait_until("the admin socket", Duration::from_secs(30), || {
        socket.exists()
    })
    .await;
}

/// Root writes anything: the daemon then runs as `nobody` (the wrapper returned), owning the
/// test's tree, so that folder modes apply to it. Nothing to wrap for another user.
fn as_nobody(env: &TestEnv) -> &'static [&'static str] {
    if !crate::support::is_root() {
        return &[];
    }
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.dir.path())
        .status()
        .expect("chown");
    assert!(status.success());
    &[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]
}

fn manifest_of(n: usize, prefix: &str) -> String {
    let mut text = String::from("images:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - input: storage://demo/{prefix}{i}-64x48.png\n"
        ));
    }
    text
}

/// A Prometheus sample's value, by its full name with labels.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_jobs_answer_while_a_batch_runs_and_match_the_store_afterwards() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(300)))).await;
    env.drop_file("team/batch.yaml", manifest_of(24, "s").as_bytes());
    let config = env.config("max_in_flight: 4", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    wait_until("some submits", Duration::from_secs(30), || {
        env.stats().submits >= 4
    })
    .await;

    let live = status_json(&config).await;
    assert_eq!(live["daemon"]["health"], "ok", "{live:#}");
    let m = &live["manifests"][0];
    assert_eq!(m["manifest"], "team/batch.yaml");
    assert_eq!(m["total"], 24);
    assert!(
        m["in_flight"].as_u64().unwrap() <= 4,
        "max_in_flight bounds in-flight jobs: {m}"
    );
    assert!(m["done"].as_u64().unwrap() < 24, "still running: {m}");
    assert!(
        m["images_per_minute"].is_number(),
        "live status has a rate: {m}"
    );

    let (code, out, _) = cli(&[
        "jobs",
        "--state",
        "queued",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("queued"), "{out}");

    wait_until("all done", Duration::from_secs(60), || {
        TestEnv::files_under(&env.outbox.join("team/batch")).len() == 24
    })
    .await;
    signal(&daemon, "-TERM");
    let status = daemon.wait().await.expect("exit");
    assert_eq!(status.code(), Some(0));
    assert!(!env.socket().exists(), "the socket is removed on exit");

    let offline = status_json(&config).await;
    assert!(
        offline["daemon"].is_null(),
        "no daemon now: read from the store"
    );
    assert_eq!(offline["manifests"][0]["done"], 24);
    assert_eq!(offline["manifests"][0]["finished"], true);
    let (code, out, _) = cli(&[
        "jobs",
        "--manifest",
        "team/batch.yaml",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("24 jobs"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_of_failed_jobs_runs_them_to_completion_and_rewrites_the_report() {
    let storage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(storage.path().join("shop")).unwrap();
    std::fs::write(storage.path().join("shop/here.png"), png(80, 60)).unwrap();
    let env = TestEnv::new(Scenario::default().storage_root(storage.path())).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://shop/here.png\n  - input: storage://shop/late.png\n",
    );
    let config = env.config("", "");
    let (code, _) = env.run_once(&config).await;
    assert_eq!(code, 2, "one input is missing: a failed job");
    assert_eq!(env.report("m")["counts"]["failed"], 1);

    // Offline replay (no daemon): requeued in the store, run at the next start.
    std::fs::write(storage.path().join("shop/late.png"), png(80, 60)).unwrap();
    let (code, out, err) = cli(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1 job"), "{out}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "the replayed job succeeds: {stderr}");
    let report = env.report("m");
    assert_eq!(
        report["counts"]["done"], 2,
        "the report is rewritten: {report:#}"
    );
    assert!(env.outbox.join("m/late.jpg").is_file());

    let (code, _, err) = cli(&[
        "replay",
        "--job",
        "424242",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no job 424242"), "{err}");
    let (code, _, err) = cli(&[
        "replay",
        "--manifest",
        "nope.yaml",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no manifest `nope.yaml`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_doubt_jobs_held_by_policy_are_replayed_over_the_socket_to_completion() {
    let env = TestEnv::new(Scenario::default().seed(11).drop_share(0.5)).await;
    env.drop_file("d.yaml", manifest_of(12, "d").as_bytes());
    let config = env.config("", "in_doubt: hold");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let mut rounds = 0;
    loop {
        // Wait until nothing is queued or in flight, then look at what is held.
        let mut view = serde_json::Value::Null;
        for _ in 0..500 {
            view = status_json(&config).await;
            let m = &view["manifests"][0];
            if m.is_object() && m["in_flight"] == 0 && m["queued"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = view["manifests"][0]["in_doubt"].as_u64().unwrap_or(0);
        if held == 0 {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "in-doubt jobs keep coming back: {view:#}");
        // The dry run and the replay say that Claid may have taken them.
        let (code, out, err) = cli(&[
            "replay",
            "--in-doubt",
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains(&format!("({held} of them in doubt: Claid may have taken their submit, and sending them again may bill them twice)"))
                && out.contains("(in doubt: Claid may have taken it)"),
            "{out}"
        );
        let (code, out, err) =
            cli(&["replay", "--in-doubt", "--config", config.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("in the running daemon"), "{out}");
        assert!(
            out.contains(&format!(
                "({held} of them in doubt: Claid may have taken their submit"
            )),
            "{out}"
        );
    }
    assert!(
        rounds > 0,
        "with half the submit responses dropped some jobs were held"
    );
    wait_until("all outputs", Duration::from_secs(30), || {
        TestEnv::files_under(&env.outbox.join("d")).len() == 12
    })
    .await;
    // The report written while jobs were held is rewritten once the last replayed job ends.
    wait_until("the final report", Duration::from_secs(30), || {
        std::fs::read_to_string(env.outbox.join("d.report.json"))
            .is_ok_and(|t| t.contains("\"done\": 12"))
    })
    .await;
    let report = env.report("d");
    assert_eq!(report["counts"]["done"], 12, "{report:#}");
    assert!(report["counts"].get("in-doubt").is_none(), "{report:#}");
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_reports_paused_while_credits_are_out_and_ok_when_they_return() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    assert_eq!(get(&env.socket(), "/healthz").await.0, 200);
    env.emulator.control().set_credits_exhausted(true);
    env.drop_file("c.yaml", manifest_of(3, "c").as_bytes());
    let socket = env.socket();
    let paused = healthz_once_unavailable(&socket, Duration::from_secs(30)).await;
    assert_eq!(paused.0, 503, "paused: {}", paused.1);
    assert!(paused.1.contains("paused"), "{}", paused.1);
    env.emulator.control().set_credits_exhausted(false);
    wait_until(
        "outputs after credits return",
        Duration::from_secs(60),
        || TestEnv::files_under(&env.outbox.join("c")).len() == 3,
    )
    .await;
    wait_until("the manifest archived", Duration::from_secs(10), || {
        env.archive.join("c.yaml").is_file()
    })
    .await;
    assert_eq!(get(&socket, "/healthz").await.0, 200);
    assert_eq!(
        env.report("c")["counts"]["done"],
        3,
        "no job failed while paused"
    );
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// While the daemon is paused (here: no credits), `status` gives no time of arrival for the
/// runs it holds (it gave one from the rate before the pause).
#[tokio::test(flavor = "multi_thread")]
async fn status_gives_no_eta_while_the_daemon_is_paused() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(200)))).await;
    let config = env.config("max_in_flight: 1\nbatch: { max_images: 1 }", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    env.drop_file("c.yaml", manifest_of(8, "c").as_bytes());
    wait_until("two outputs", Duration::from_secs(30), || {
        TestEnv::files_under(&env.outbox.join("c")).len() >= 2
    })
    .await;
    env.emulator.control().set_credits_exhausted(true);
    let socket = env.socket();
    let paused = healthz_once_unavailable(&socket, Duration::from_secs(30)).await;
    assert!(paused.1.contains("paused"), "{}", paused.1);
    let (status, body) = get(&socket, "/status").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    let run = &view["manifests"][0];
    assert_eq!(run["finished"], false, "{view:#}");
    assert!(run["eta_secs"].is_null(), "no eta while paused: {view:#}");
    env.emulator.control().set_credits_exhausted(false);
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_status_report_failing_while_the_api_is_down_and_ok_when_it_returns() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    assert_eq!(get(&env.socket(), "/healthz").await.0, 200);
    env.emulator.control().set_down(true);
    env.drop_file("d.yaml", manifest_of(2, "d").as_bytes());
    let socket = env.socket();
    let failing = healthz_once_unavailable(&socket, Duration::from_secs(90)).await;
    assert_eq!(failing.0, 503, "failing: {}", failing.1);
    let body: serde_json::Value = serde_json::from_str(&failing.1).unwrap();
    assert_eq!(body["status"], "failing", "{body}");
    let base = env.emulator.base_url();
    let host = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        body["reason"].as_str().unwrap().contains(&host),
        "the reason names the API's host:port {host}: {body}"
    );
    assert!(body["for_seconds"].as_u64().unwrap() >= 10, "{body}");
    // `status` (and so the CLI's daemon line) says the same.
    let (code, status) = get(&socket, "/status").await;
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["daemon"]["health"], "failing", "{status}");
    assert!(
        status["daemon"]["reason"].as_str().unwrap().contains(&host),
        "{status}"
    );
    env.emulator.control().set_down(false);
    wait_until(
        "outputs after the API returns",
        Duration::from_secs(120),
        || TestEnv::files_under(&env.outbox.join("d")).len() == 2,
    )
    .await;
    assert_eq!(get(&socket, "/healthz").await.0, 200);
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// An outbox folder the daemon may not write (EACCES): the job waits to write again, no new
/// image is submitted meanwhile (its result could not be written either), `/healthz` says
/// `failing` with the error; once the folder is writable again every image is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_the_daemon_may_not_write_holds_new_submits_and_is_told_by_healthz() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(50)))).await;
    let config = env.config("max_in_flight: 1", "");
    env.drop_file("m.yaml", manifest_of(3, "m").as_bytes());
    let folder = env.outbox.join("m");
    std::fs::create_dir_all(&folder).expect("outbox folder");
    // Root writes anything: the daemon then runs as `nobody`, owning the tree, so that the
    // folder's mode applies to it.
    let wrapper = as_nobody(&env);
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut daemon = env.spawn_daemon_wrapped(&config, 0, &[], wrapper);
    wait_socket(&env).await;
    let socket = env.socket();
    let failing = healthz_once_unavailable(&socket, Duration::from_secs(60)).await;
    assert_eq!(failing.0, 503, "failing: {}", failing.1);
    assert!(
        failing.1.contains("failing") && failing.1.contains("EACCES"),
        "{}",
        failing.1
    );
    // Since how long, as for every failing answer (a probe that alerts after N seconds).
    assert!(failing.1.contains("\"for_seconds\":"), "{}", failing.1);
    assert_eq!(
        env.stats().submits,
        1,
        "no new image is submitted while an output cannot be written"
    );
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wait_until(
        "every output once writable",
        Duration::from_secs(90),
        || TestEnv::files_under(&folder).len() == 3,
    )
    .await;
    assert_eq!(env.stats().duplicate_submits, 0);
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// A folder of the outbox the daemon may not write holds only the images whose output goes
/// there: another manifest's images are submitted and delivered meanwhile (one permit in
/// flight, so a hold of every submit would stop them), while the held folder's other images
/// wait unbilled; once the folder is writable they are delivered too.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_folder_the_daemon_may_not_write_holds_only_its_own_images() {
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(50)))).await;
    let config = env.config("max_in_flight: 1", "");
    env.drop_file("m.yaml", manifest_of(3, "m").as_bytes());
    let folder = env.outbox.join("m");
    std::fs::create_dir_all(&folder).expect("outbox folder");
    let wrapper = as_nobody(&env);
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut daemon = env.spawn_daemon_wrapped(&config, 0, &[], wrapper);
    wait_socket(&env).await;
    let failing = healthz_once_unavailable(&env.socket(), Duration::from_secs(60)).await;
    assert_eq!(failing.0, 503, "failing: {}", failing.1);
    let submitted = |prefix: &str| -> u64 {
        env.stats()
            .submits_by_key
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("storage://demo/{prefix}")))
            .map(|(_, n)| *n)
            .sum()
    };
    env.drop_file("n.yaml", manifest_of(3, "n").as_bytes());
    wait_until(
        "the other manifest's outputs while the folder refuses writes",
        Duration::from_secs(90),
        || TestEnv::files_under(&env.outbox.join("n")).len() == 3,
    )
    .await;
    assert_eq!(
        submitted("m"),
        1,
        "the refusing folder's other images wait unbilled"
    );
    assert!(TestEnv::files_under(&folder).is_empty());
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wait_until(
        "every output once writable",
        Duration::from_secs(90),
        || TestEnv::files_under(&folder).len() == 3,
    )
    .await;
    assert_eq!(submitted("m"), 3);
    assert_eq!(env.stats().duplicate_submits, 0);
    crate::support::stop(&mut daemon).await;
}

/// A folder of the outputs' path replaced by a file while the run goes (a cleanup, a mistaken
/// `mv`): the images whose result would go through it fail as `output-not-a-directory` without
/// a submit (each was billed, and its result thrown away when the write failed), in single
/// mode and in batches.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_put_where_an_output_folder_was_fails_the_images_into_it_without_billing_them() {
    for api in [
        "max_in_flight: 1\nbatch: { max_images: 1 }",
        "max_in_flight: 1",
    ] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_millis(300))))
                .await;
        let config = env.config(api, "");
        env.drop_file("m.yaml", manifest_of(8, "m").as_bytes());
        let mut daemon = env.spawn_daemon(&config, 0);
        let folder = env.outbox.join("m");
        wait_until("the first output", Duration::from_secs(60), || {
            !TestEnv::files_under(&folder).is_empty()
        })
        .await;
        std::fs::remove_dir_all(&folder).expect("rm folder");
        std::fs::write(&folder, b"not a folder\n").expect("file in its place");
        wait_until("the run ended", Duration::from_secs(60), || {
            env.archive.join("m.yaml").is_file()
        })
        .await;
        let report = env.report("m");
        let rows = report["jobs"].as_array().expect("rows");
        let unbilled = rows
            .iter()
            .filter(|row| {
                row["reason"].as_str().is_some_and(|r| {
                    r.starts_with("output-not-a-directory: not submitted: ")
                        && r.contains("in the outbox is a file, where a folder")
                })
            })
            .count();
        assert!(unbilled >= 1, "{api}: {report}");
        assert_eq!(
            env.stats().submits + unbilled as u64,
            8,
            "{api}: the images failed unbilled were never sent: {report}"
        );
        stop(&mut daemon).await;
    }
}

/// A second daemon given the same `admin.socket` (a copied config) is refused at its start,
/// naming the key, instead of taking the socket over: the first daemon keeps answering on it,
/// so a `replay` meant for it is not sent to the other.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_a_live_admin_socket_is_refused_and_the_first_keeps_it() {
    let first = TestEnv::new(Scenario::default()).await;
    let second = TestEnv::new(Scenario::default()).await;
    let config = first.config("", "");
    let other = second.config("", "");
    let text = std::fs::read_to_string(&other).expect("config");
    let shared = first.socket().display().to_string();
    let text = text.replace(&second.socket().display().to_string(), &shared);
    assert!(text.contains(&shared));
    std::fs::write(&other, text).expect("config");
    let mut daemon = first.spawn_daemon(&config, 0);
    wait_socket(&first).await;
    let (code, stderr) = second.run_once(&other).await;
    assert_eq!(code, 75, "{stderr}");
    assert!(
        stderr.contains("another daemon answers on the admin socket")
            && stderr.contains("admin.socket"),
        "{stderr}"
    );
    let (status, body) = get(&first.socket(), "/status").await;
    assert_eq!(status, 200, "{body}");
    stop(&mut daemon).await;
    assert!(
        !first.socket().exists(),
        "the first daemon removes its own socket at its stop"
    );
}

/// An inbox folder that disappears while the daemon runs (an unmounted share, a deleted
/// folder) is told by `/healthz` as failing, naming it, until it is back (it said ok while
/// nothing dropped could be taken in).
#[tokio::test(flavor = "multi_thread")]
async fn healthz_tells_an_inbox_that_is_gone_until_it_is_back() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let socket = env.socket();
    assert_eq!(get(&socket, "/healthz").await.0, 200);
    std::fs::remove_dir_all(&env.inbox).expect("rm inbox");
    let failing = healthz_once_unavailable(&socket, Duration::from_secs(30)).await;
    assert_eq!(failing.0, 503, "{}", failing.1);
    assert!(
        failing.1.contains("failing") && failing.1.contains("inbox"),
        "{}",
        failing.1
    );
    std::fs::create_dir(&env.inbox).expect("mkdir inbox");
    wait_until_async("healthz ok again", Duration::from_secs(30), || async {
        get(&socket, "/healthz").await.0 == 200
    })
    .await;
    stop(&mut daemon).await;
}

/// An outbox that takes no report any more (made read-only for the daemon after its start):
/// the report goes beside the archived manifest, so the run still has its outcome file.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_the_outbox_refuses_is_written_into_the_archive() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let folder = env.outbox.join("m");
    std::fs::create_dir_all(&folder).expect("outbox folder");
    std::fs::create_dir_all(&env.inbox).expect("inbox");
    std::fs::create_dir_all(&env.archive).expect("archive");
    let wrapper = as_nobody(&env);
    let mut daemon = env.spawn_daemon_wrapped(&config, 0, &[], wrapper);
    wait_socket(&env).await;
    std::fs::set_permissions(&env.outbox, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    env.drop_file("m.yaml", manifest_of(2, "m").as_bytes());
    wait_until("the manifest archived", Duration::from_secs(60), || {
        env.archive.join("m.yaml").is_file()
    })
    .await;
    std::fs::set_permissions(&env.outbox, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    stop(&mut daemon).await;
    assert_eq!(TestEnv::files_under(&folder).len(), 2, "the outputs");
    assert!(!env.outbox.join("m.report.json").exists());
    let report = std::fs::read_to_string(env.archive.join("m.report.json")).expect("report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["counts"]["done"], 2, "{report}");
    assert!(env.archive.join("m.report.csv").is_file());
}

/// `admin.socket` naming a regular file (a typo pointing at the config or the key file) stops
/// the start with 64, naming it, and leaves the file as it is (it was removed as a stale
/// socket).
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_socket_path_that_names_a_file_is_refused_and_the_file_kept() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let precious = env.dir.path().join("important.txt");
    std::fs::write(&precious, "precious\n").expect("file");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        &env.socket().display().to_string(),
        &precious.display().to_string(),
    );
    std::fs::write(&config, text).expect("config");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("which is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("kept"),
        "precious\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_the_emulator_counted() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", manifest_of(10, "m").as_bytes());
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    wait_until("outputs", Duration::from_secs(60), || {
        TestEnv::files_under(&env.outbox.join("m")).len() == 10
    })
    .await;
    // The manifest is archived last, after its report and its outcome metric.
    wait_until("the manifest archived", Duration::from_secs(10), || {
        env.archive.join("m.yaml").is_file()
    })
    .await;
    let (code, text) = get(&env.socket(), "/metrics").await;
    assert_eq!(code, 200);
    let stats = env.stats();
    let submits = sample(
        &text,
        "claid_hotfolder_api_requests_total{endpoint=\"submit\",status=\"200\"}",
    );
    assert_eq!(submits as u64, stats.submits);
    let polls = sample(
        &text,
        "claid_hotfolder_api_requests_total{endpoint=\"poll\",status=\"200\"}",
    );
    assert_eq!(polls as u64, stats.polls);
    let downloads = sample(
        &text,
        "claid_hotfolder_api_requests_total{endpoint=\"download\",status=\"200\"}",
    );
    assert_eq!(downloads as u64, stats.downloads);
    assert_eq!(sample(&text, "claid_hotfolder_jobs{state=\"done\"}"), 10.0);
    assert_eq!(
        sample(&text, "claid_hotfolder_manifests_total{outcome=\"done\"}"),
        1.0
    );
    assert_eq!(sample(&text, "claid_hotfolder_in_flight_tasks"), 0.0);
    assert_eq!(
        sample(&text, "claid_hotfolder_task_processing_seconds_count"),
        10.0
    );
    let bytes: u64 = TestEnv::files_under(&env.outbox.join("m"))
        .iter()
        .map(|rel| {
            std::fs::metadata(env.outbox.join("m").join(rel))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        sample(&text, "claid_hotfolder_output_bytes_total") as u64,
        bytes
    );
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// A job's failure is counted by its code, in the code's one spelling (the list in
/// ARCHITECTURE.md), and its manifest by the outcome `with-failures`: what an operator alerts on.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_failed_jobs_by_their_failure_code() {
    let env = TestEnv::new(Scenario::default()).await;
    let mut text = manifest_of(2, "m");
    text.push_str("  - input: storage://demo/corrupt-a-64x48.png\n");
    text.push_str("  - input: storage://demo/corrupt-b-64x48.png\n");
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let socket = env.socket();
    let metrics = wait_for(
        "the manifest counted",
        Duration::from_secs(60),
        async || {
            let (_, text) = get(&socket, "/metrics").await;
            // Every outcome is shown from the start (at 0): this one counted.
            (sample(
                &text,
                "claid_hotfolder_manifests_total{outcome=\"with-failures\"}",
            ) > 0.0)
                .then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "claid_hotfolder_job_failures_total{code=\"claid-error\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "claid_hotfolder_manifests_total{outcome=\"with-failures\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "claid_hotfolder_jobs{state=\"done\"}"),
        2.0
    );
    assert_eq!(
        sample(&metrics, "claid_hotfolder_jobs{state=\"failed\"}"),
        2.0
    );
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// A reload that adds a webhook listener whose secret file is missing, or a dashboard whose
/// token file is missing, is refused the same way: the start would refuse it (exit 64), and
/// it was taken with only a "not applied until a restart" warning.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_refuses_a_webhook_secret_or_dashboard_token_the_start_could_not_read() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let text = std::fs::read_to_string(&config).unwrap();
    for (section, named) in [
        (
            format!(
                "webhook:\n  listen: 127.0.0.1:0\n  secret_file: {}\n",
                env.dir.path().join("no-such-secret").display()
            ),
            "no-such-secret",
        ),
        (
            format!(
                "web:\n  listen: 127.0.0.1:0\n  token_file: {}\n",
                env.dir.path().join("no-such-token").display()
            ),
            "no-such-token",
        ),
    ] {
        std::fs::write(&config, format!("{text}{section}")).unwrap();
        signal(&daemon, "-HUP");
        wait_until("refusal logged", Duration::from_secs(20), || {
            let log = env.daemon_log(0);
            log.contains("would not start the daemon") && log.contains(named)
        })
        .await;
        assert!(
            !env.daemon_log(0).contains("Reloaded the config"),
            "{named}"
        );
    }
    stop(&mut daemon).await;
}

/// An alert sink's URL file rewritten with another URL (a leaked Slack webhook rotated) and a
/// SIGHUP: the sink keeps the URL it started with until a restart, and the reload says so (it
/// said "Reloaded the config" and alerts kept going to the old URL).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_names_a_rotated_alert_url_as_not_in_force() {
    let env = TestEnv::new(Scenario::default()).await;
    let url_file = env.dir.path().join("team-url");
    std::fs::write(&url_file, "http://127.0.0.1:9/hook/old\n").unwrap();
    let config = env.config(
        "",
        &format!(
            "alerts:\n  - {{ name: team, url_file: {} }}\n",
            url_file.display()
        ),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    std::fs::write(&url_file, "http://127.0.0.1:9/hook/new\n").unwrap();
    signal(&daemon, "-HUP");
    wait_until("the rotated URL named", Duration::from_secs(20), || {
        env.daemon_log(0).lines().any(|l| {
            l.contains("NOT in force") && l.contains("alerts.team.url_file (the URL in it changed)")
        })
    })
    .await;
    let log = env.daemon_log(0);
    assert!(
        !log.contains("/hook/new") && !log.contains("/hook/old"),
        "no URL logged: {log}"
    );
    stop(&mut daemon).await;
}

/// A reload of a config that is valid but would not start the daemon (an inbox folder that
/// does not exist, an alert sink whose URL file is missing) is refused, naming each problem,
/// and the running config stays in force (it was taken with only a "not applied" warning,
/// and the next start, a reboot, exited 64, which systemd does not restart).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_refuses_a_config_the_next_start_would_refuse() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let text = std::fs::read_to_string(&config).unwrap();
    let typo = env.dir.path().join("inbxo");
    let broken = text.replace(
        &format!("inbox: {}", env.inbox.display()),
        &format!("inbox: {}", typo.display()),
    ) + &format!(
        "alerts:\n  - name: team\n    url_file: {}\n",
        env.dir.path().join("no-such-url").display()
    );
    assert_ne!(broken, text, "the inbox line was found");
    std::fs::write(&config, &broken).unwrap();
    signal(&daemon, "-HUP");
    // Each problem is a line of its own, written after the refusal's line.
    wait_until("refusal logged", Duration::from_secs(20), || {
        let log = env.daemon_log(0);
        log.contains("would not start the daemon") && log.contains("no-such-url")
    })
    .await;
    let log = env.daemon_log(0);
    assert!(log.contains("inbxo"), "the folder is named: {log}");
    assert!(
        log.contains("no-such-url"),
        "the sink's file is named: {log}"
    );
    assert!(!log.contains("Reloaded the config"), "{log}");
    env.drop_file(
        "r.yaml",
        b"images:\n  - input: storage://demo/r-64x48.png\n",
    );
    wait_until(
        "the running config still works",
        Duration::from_secs(30),
        || env.outbox.join("r/r-64x48.jpg").is_file(),
    )
    .await;
    stop(&mut daemon).await;
}

/// A SIGHUP whose config file became a FIFO (or sits on a share that hangs) is refused, and
/// the supervisor goes on meanwhile: SIGTERM still ends the daemon (the read blocked the
/// supervisor, so SIGTERM and the watchdog went unanswered until something wrote into the
/// FIFO). A config larger than 1 MiB is refused unread past that (`/dev/zero` grew without
/// end).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_of_a_config_that_cannot_be_read_in_time_leaves_the_daemon_in_hand() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    crate::support::mkfifo(&config);
    signal(&daemon, "-HUP");
    wait_until("refusal logged", Duration::from_secs(20), || {
        env.daemon_log(0).contains("not a regular file")
    })
    .await;
    std::fs::remove_file(&config).unwrap();
    // A config that never ends.
    std::fs::write(&config, format!("{text}#{}\n", "x".repeat(2 << 20))).unwrap();
    signal(&daemon, "-HUP");
    wait_until("the size refused", Duration::from_secs(20), || {
        env.daemon_log(0).contains("larger than 1024 KiB")
    })
    .await;
    let status = stop(&mut daemon).await;
    assert_eq!(status.code(), Some(0), "{}", env.daemon_log(0));
    assert!(!env.daemon_log(0).contains("Reloaded the config"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let good = std::fs::read_to_string(&config).unwrap()
        + "profiles:\n  square:\n    operations: { resizing: { width: 32, height: 32, fit: crop } }\n";
    std::fs::write(&config, &good).unwrap();
    signal(&daemon, "-HUP");
    wait_until("reload logged", Duration::from_secs(20), || {
        env.daemon_log(0).contains("Reloaded the config")
    })
    .await;
    env.drop_file(
        "p.yaml",
        b"profile: square\nimages:\n  - input: storage://demo/p-64x48.png\n",
    );
    wait_until(
        "output with the new profile",
        Duration::from_secs(30),
        || env.outbox.join("p/p-64x48.jpg").is_file(),
    )
    .await;
    assert_eq!(
        crate::support::dimensions(&env.outbox.join("p/p-64x48.jpg")),
        (32, 32)
    );

    std::fs::write(&config, good.replace("fit: crop", "fit: squash")).unwrap();
    signal(&daemon, "-HUP");
    wait_until("refusal logged", Duration::from_secs(20), || {
        env.daemon_log(0).contains("Config reload refused")
    })
    .await;
    wait_until("the problem logged", Duration::from_secs(20), || {
        env.daemon_log(0).contains("squash")
    })
    .await;
    let problem = env
        .daemon_log(0)
        .lines()
        .find(|l| l.contains("Config problem") && l.contains("squash"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the refusal names the problem on a line of its own"));
    assert!(
        problem.contains("line=") && !problem.contains("\\n"),
        "with its line, and no escaped line break: {problem}"
    );
    env.drop_file(
        "q.yaml",
        b"profile: square\nimages:\n  - input: storage://demo/q-64x48.png\n",
    );
    wait_until(
        "the old config still works",
        Duration::from_secs(30),
        || env.outbox.join("q/q-64x48.jpg").is_file(),
    )
    .await;
    assert!(
        !env.daemon_log(0).contains("NOT in force"),
        "a profile change needs no restart"
    );

    // A key a reload cannot apply is named, not silently reported as reloaded.
    std::fs::write(
        &config,
        good.replace("shutdown_grace: 5s", "shutdown_grace: 7s"),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_until(
        "the restart-only key named",
        Duration::from_secs(20),
        || {
            env.daemon_log(0)
                .lines()
                .any(|l| l.contains("NOT in force") && l.contains("shutdown_grace"))
        },
    )
    .await;

    // A rotated key (the same file, another key in it) is named too: the client keeps the
    // key it started with until a restart.
    std::fs::write(env.dir.path().join("api-key"), "rotated-key\n").unwrap();
    signal(&daemon, "-HUP");
    wait_until("the rotated key named", Duration::from_secs(20), || {
        env.daemon_log(0)
            .lines()
            .any(|l| l.contains("NOT in force") && l.contains("the key in it changed"))
    })
    .await;
    signal(&daemon, "-TERM");
    assert_eq!(daemon.wait().await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_gets_ready_status_and_watchdog_on_the_notify_socket() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let notify_path = env.dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut daemon = env.spawn_daemon_with(
        &config,
        0,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("STATUS=") && seen.contains("WATCHDOG=1")) {
        let n = tokio::time::timeout_at(deadline, notify.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("notify messages so far: {seen}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(
        seen.find("READY=1") < seen.find("WATCHDOG=1"),
        "READY comes first: {seen}"
    );
    signal(&daemon, "-TERM");
    let n = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = notify.recv(&mut buf).await.unwrap();
            if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
                return n;
            }
        }
    })
    .await
    .expect("STOPPING=1 on shutdown");
    assert!(n > 0);
    assert_eq!(daemon.wait().await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_is_refused_naming_the_pid() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut first = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "the admin socket is mode 0660");
    let pid = first.id().unwrap().to_string();
    let (code, _, err) = cli(&["run", "--config", config.to_str().unwrap()]).await;
    assert_eq!(
        code, 75,
        "EX_TEMPFAIL, try again once the other has stopped: {err}"
    );
    assert!(
        err.contains(&format!("PID {pid}")),
        "names the PID holding the store: {err}"
    );
    assert!(
        env.socket().exists(),
        "the refused daemon left the running one's socket alone"
    );
    assert_eq!(
        get(&env.socket(), "/healthz").await.0,
        200,
        "the first daemon keeps working"
    );
    signal(&first, "-TERM");
    first.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unit_verifies_and_scores_at_most_two_in_systemd_analyze_security() {
    let unit_src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/claid-hotfolder.service"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Point ExecStart at the binary under test so `verify` can check it exists.
    let unit = unit_src.replace("/usr/bin/claid-hotfolder", crate::support::bin());
    let path = dir.path().join("claid-hotfolder.service");
    std::fs::write(&path, unit).unwrap();
    // `--man=no`: the `man:` link names a page that only the package installs; the package
    // check (packaging/check-deb.sh) verifies the unit with that page resolvable.
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let verify_text = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    let relevant: Vec<&str> = verify_text
        .lines()
        .filter(|l| l.contains("claid-hotfolder.service"))
        .collect();
    assert!(
        verify.status.success() && relevant.is_empty(),
        "systemd-analyze verify: {verify_text}"
    );
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    let score: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a score");
    assert!(score <= 2.0, "exposure {score} > 2.0: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_over_the_socket_reopens_a_finished_manifest_and_rewrites_its_report() {
    let storage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(storage.path().join("shop")).unwrap();
    std::fs::write(storage.path().join("shop/here.png"), png(80, 60)).unwrap();
    let env = TestEnv::new(Scenario::default().storage_root(storage.path())).await;
    env.drop_file(
        "r.yaml",
        b"images:\n  - input: storage://shop/here.png\n  - input: storage://shop/late.png\n",
    );
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    wait_until("the manifest finished", Duration::from_secs(30), || {
        env.archive.join("r.yaml").is_file()
    })
    .await;
    assert_eq!(env.report("r")["counts"]["failed"], 1);
    std::fs::write(storage.path().join("shop/late.png"), png(80, 60)).unwrap();
    // A dry run through the daemon lists the job and leaves it failed.
    let (code, out, err) = cli(&[
        "replay",
        "--failed",
        "--dry-run",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Would requeue 1 job;"), "{out}");
    assert!(out.contains("failed    storage://shop/late.png"), "{out}");
    assert_eq!(env.report("r")["counts"]["failed"], 1);
    // Over the socket, a misspelled key (`dryrun`) or two selectors are refused, not taken
    // as a real replay (which bills).
    for body in [
        serde_json::json!({"failed": true, "dryrun": true}),
        serde_json::json!({"failed": true, "in_doubt": true}),
    ] {
        let (status, answer) = admin::request(&env.socket(), "POST", "/replay", Some(&body))
            .await
            .expect("admin answers");
        let answer = String::from_utf8_lossy(&answer);
        assert!((400..500).contains(&status), "{body}: {status} {answer}");
        assert!(
            answer.contains("dryrun") || answer.contains("not several"),
            "{body}: names the problem: {answer}"
        );
    }
    assert_eq!(env.stats().submits, 2, "nothing submitted again");
    let (code, out, err) = cli(&[
        "replay",
        "--failed",
        "--since",
        "1h",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Requeued 1 job in the running daemon"),
        "{out}"
    );
    wait_until("the report rewritten", Duration::from_secs(30), || {
        std::fs::read_to_string(env.outbox.join("r.report.json"))
            .is_ok_and(|t| t.contains("\"done\": 2"))
    })
    .await;
    assert!(env.outbox.join("r/late.jpg").is_file());
    // A replay of its done images through the daemon says they are billed again.
    let (code, out, err) = cli(&[
        "replay",
        "--manifest",
        "r.yaml",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Requeued 2 jobs (2 of them Claid had billed already, done or failed after it took their task: each is billed again) in the running daemon."),
        "{out}"
    );
    signal(&daemon, "-TERM");
    assert_eq!(daemon.wait().await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_outside_the_sockets_group_is_refused_with_a_clear_message() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_socket(&env).await;
    // `nobody` may read the config (as a team member would) but is not in the socket's group.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::support::bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .await
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "EX_NOPERM: {stderr}");
    assert!(
        stderr.contains("permission denied on the admin socket"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: ") && stderr.contains("sudo -u root claid-hotfolder status"),
        "says whom to run it as: {stderr}"
    );
    assert_eq!(
        get(&env.socket(), "/healthz").await.0,
        200,
        "the daemon keeps working"
    );
    signal(&daemon, "-TERM");
    daemon.wait().await.unwrap();
}

/// `GET /healthz` answered 200 within a couple of seconds (a server that never accepts the
/// connection makes the request hang: that is a "no").
/// A daemon with the default config (behind `wrapper`, e.g. `prlimit …`), once its admin
/// socket answers `/healthz`; and the socket.
async fn answering_daemon(
    env: &TestEnv,
    wrapper: &[&str],
) -> (tokio::process::Child, std::path::PathBuf) {
    let config = env.config("", "");
    let daemon = env.spawn_daemon_wrapped(&config, 0, &[], wrapper);
    let socket = env.socket();
    wait_until_async(
        "the daemon answers /healthz",
        Duration::from_secs(30),
        || healthz_ok(&socket),
    )
    .await;
    (daemon, socket)
}

async fn healthz_ok(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            admin::request(socket, "GET", "/healthz", None)
        )
        .await,
        Ok(Ok((200, _)))
    )
}

/// Issue 11 §6: idle clients of the admin socket were never timed out, so enough of them ran
/// the daemon out of file descriptors: `/healthz` stopped answering and inbox scans failed.
/// Under a limit of 128 descriptors, 200 clients connect and go quiet (half of them after half
/// a request header), and stay connected: the daemon still answers `/healthz`, closes every
/// one of them on its own (header/idle timeout, or at once over the connection cap), and
/// processes a manifest dropped afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_idle_admin_clients_cannot_exhaust_descriptors_or_stop_healthz_and_intake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, socket) = answering_daemon(&env, &["prlimit", "--nofile=128:128", "--"]).await;

    let mut idle = Vec::new();
    for i in 0..200 {
        // A full accept queue refuses a connect: that is a bounded server too.
        let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await else {
            continue;
        };
        if i % 2 == 1 {
            let _ = stream
                .write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\n")
                .await;
        }
        idle.push(stream);
    }
    assert!(idle.len() > 128, "only {} clients connected", idle.len());

    wait_until_async(
        "/healthz answers while the idle clients stay connected",
        Duration::from_secs(60),
        || healthz_ok(&socket),
    )
    .await;

    // The daemon ends every idle connection itself (each read reaches EOF or an error).
    for (i, stream) in idle.iter_mut().enumerate() {
        let mut sink = Vec::new();
        let res =
            tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut sink)).await;
        assert!(res.is_ok(), "idle client {i} is still connected");
    }

    env.drop_file("after.yaml", manifest_of(3, "after").as_bytes());
    wait_until(
        "the manifest dropped after the flood is processed",
        Duration::from_secs(60),
        || env.outbox.join("after.report.json").is_file(),
    )
    .await;
    assert_eq!(env.report("after")["counts"]["done"], 3);
    assert_eq!(TestEnv::files_under(&env.outbox.join("after")).len(), 3);
    drop(idle);
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// 150 clients that connect at once and trickle a request header: past the places (32) and
/// the newcomers waiting for an evicted one's place (32 more), the rest are answered `503` at
/// once, and `/healthz` is answered. (The accept loop waited for each newcomer's evicted
/// place, a fifth of a second each: a probe behind 300 such clients went unanswered for 20 s,
/// and no client was ever told 503.)
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_trickling_clients_is_answered_503_past_the_places_and_healthz_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, socket) = answering_daemon(&env, &[]).await;
    let mut flood = Vec::new();
    for _ in 0..150 {
        let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await else {
            continue;
        };
        let _ = stream.write_all(b"GET /status HTTP/1.1\r\nx-a: a").await;
        flood.push(stream);
    }
    assert!(flood.len() > 100, "only {} clients connected", flood.len());
    wait_until_async(
        "/healthz answers while the flood stays connected",
        Duration::from_secs(30),
        || healthz_ok(&socket),
    )
    .await;
    let mut told_busy = 0;
    for stream in &mut flood {
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 503") {
            told_busy += 1;
        }
    }
    assert!(told_busy > 0, "no client past the places was answered 503");
    drop(flood);
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// Issue 11 §6, slow clients that reconnect as soon as they are closed: 150 of them, each
/// sending half a request header and waiting, in a loop; then 150 that first ask one whole
/// request (and read its answer) and then trickle the next one. Evicted ones held their places
/// for a grace meant for answers going out, newcomers filled the waiting room, and nearly every
/// probe of `/healthz` was refused (3 of 68 answered in a run of the old build). Now an
/// evicted connection that never sent a whole request closes at once (told 503), and the
/// accept loop waits a moment for the waiting room instead of refusing: the probes are
/// answered. (The second flood guards a served connection's eviction, which was quick
/// before too.) On a busy machine (CI), each newcomer still evicted the one placed just before
/// it: a probe was closed before its task read the request it had sent, or refused while every
/// place was closing (16 of 20 answered in 8 of 12 runs). Now a connection is not evicted
/// before it has waited on its client for a moment, and the probes are answered.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_slow_clients_that_reconnect_at_once_cannot_stop_healthz() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, socket) = answering_daemon(&env, &[]).await;
    for served_first in [false, true] {
        let done = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        let mut flood = Vec::new();
        for _ in 0..150 {
            let (socket, done, connects) = (socket.clone(), done.clone(), connects.clone());
            flood.push(tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    connects.fetch_add(1, Ordering::SeqCst);
                    let mut answer = [0u8; 4096];
                    if served_first {
                        // One whole request, its answer read (kept alive), then the next
                        // trickled.
                        let _ = stream
                            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                            .await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
                                .await;
                    }
                    let _ = stream.write_all(b"GET /status HTTP/1.1\r\nx-a: a").await;
                    // Waits until the daemon closes it (evicted, or its header timeout), or
                    // the test ends.
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
                        .await;
                }
            }));
        }
        wait_until("the flood reconnects", Duration::from_secs(30), || {
            connects.load(Ordering::SeqCst) > 1_000
        })
        .await;
        let mut answered = 0;
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..20 {
            pace.tick().await;
            if healthz_ok(&socket).await {
                answered += 1;
            }
        }
        let reconnects = connects.load(Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        for client in flood {
            let _ = client.await;
        }
        assert!(
            answered >= 18,
            "served first: {served_first}: /healthz answered {answered} of 20 probes among clients that reconnected {reconnects} times"
        );
    }
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// Issue 11 §6, a burst: 300 clients connect at once (quiet, half a request header, or a mix)
/// and stay, and `/healthz` is asked right after them. The accept loop refused connections
/// while the newcomers it had let in (each evicting an idle one) were still on their way to
/// their places, and the probe behind the burst got 503 in most trials. Now it waits for
/// them to settle (a moment) when some are on their way, and every probe is answered.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_a_burst_of_quiet_clients_cannot_stop_the_healthz_right_after_it() {
    use tokio::io::AsyncWriteExt;

    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, socket) = answering_daemon(&env, &[]).await;
    let mut refused = Vec::new();
    for trial in 0..9 {
        let mut burst = Vec::new();
        for i in 0..300 {
            let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await else {
                continue;
            };
            // Quiet, half a request header, or a mix of both.
            if trial % 3 == 1 || (trial % 3 == 2 && i % 2 == 1) {
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                    .await;
            }
            burst.push(stream);
        }
        assert_eq!(burst.len(), 300, "every client of the burst connects");
        if !healthz_ok(&socket).await {
            refused.push(trial);
        }
        drop(burst);
    }
    assert!(
        refused.is_empty(),
        "/healthz right after a burst of 300 clients was not answered in trials {refused:?} of 9"
    );
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// Issue 11 §6, clients that send requests and never read the answers (a stopped `curl`, a
/// hung script): 40 of them, each with thousands of pipelined requests, held every place of the
/// admin socket (an answer that could not go out kept its connection, and eviction waited for
/// it), and `/healthz`, `status` and `replay` got 503 for as long as they stayed. Now
/// `/healthz` answers while they stay connected, and the daemon ends their connections itself.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_clients_that_never_read_their_answers_cannot_stop_healthz() {
    use tokio::io::AsyncWriteExt;

    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, socket) = answering_daemon(&env, &[]).await;
    let requests = b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(4000);
    let mut greedy = Vec::new();
    for _ in 0..40 {
        let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
            continue;
        };
        // The read half is kept, never read, until the end of the test.
        let (reader, mut writer) = stream.into_split();
        let requests = requests.clone();
        // Writes its requests (as far as the daemon takes them) and never reads an answer.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&requests).await;
            writer
        });
        greedy.push((writing, reader));
    }
    assert!(
        greedy.len() >= 33,
        "only {} clients connected",
        greedy.len()
    );
    wait_until_async(
        "/healthz answers while the greedy clients stay connected",
        Duration::from_secs(20),
        || healthz_ok(&socket),
    )
    .await;
    for (writing, _) in &greedy {
        writing.abort();
    }
    drop(greedy);
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// Issue 11 §6, the metrics port: a TCP client that connects and sends nothing, or half a
/// request header, is disconnected by the daemon (header/idle timeout); `/metrics` still answers.
#[tokio::test(flavor = "multi_thread")]
async fn issue11_idle_metrics_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new(Scenario::default()).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let config = env.config("", &format!("  metrics_listen: 127.0.0.1:{port}"));
    let mut daemon = env.spawn_daemon(&config, 0);
    let addr = format!("127.0.0.1:{port}");
    let metrics_ok = || async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
            return false;
        };
        let request = b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer));
        read.await.is_ok() && answer.starts_with(b"HTTP/1.1 200")
    };
    wait_until_async(
        "/metrics answers over TCP",
        Duration::from_secs(30),
        metrics_ok,
    )
    .await;

    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut half = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("half a header");
    for (name, stream) in [("silent", &mut silent), ("half a header", &mut half)] {
        let mut sink = Vec::new();
        let res =
            tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut sink)).await;
        assert!(res.is_ok(), "the {name} client is still connected");
    }
    wait_until_async(
        "/metrics still answers",
        Duration::from_secs(30),
        metrics_ok,
    )
    .await;
    let status = stop(&mut daemon).await;
    assert!(status.success(), "{status:?}\n{}", env.daemon_log(0));
}

/// A daemon that dies while it answers (`kill -9` a moment ago: its socket still takes the
/// connection, then breaks it) does not make `jobs` or `status` fail: they read the store.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_and_status_read_the_store_when_the_socket_breaks_the_connection() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", manifest_of(2, "k").as_bytes());
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    // A listener that accepts every connection and closes it unanswered.
    let listener = std::os::unix::net::UnixListener::bind(env.socket()).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let config = config.to_str().expect("utf-8");
    let (code, out, err) = cli(&["jobs", "--manifest", "m.yaml", "--config", config]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 jobs"), "{out}");
    let (code, out, err) = cli(&["status", "--json", "--config", config]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["manifests"][0]["done"], 2, "{status:#}");
}

/// `status`'s table tells two runs of one file apart (their run id and when each was taken
/// in: the rows were identical), and says when it leaves older finished runs out (it listed
/// the newest 50 without a word).
#[tokio::test(flavor = "multi_thread")]
async fn the_status_table_tells_runs_of_one_file_apart_and_says_when_it_leaves_runs_out() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let config_arg = config.to_str().expect("utf-8");
    env.drop_file("m.yaml", manifest_of(1, "a").as_bytes());
    assert_eq!(env.run_once(&config).await.0, 0);
    env.drop_file("m.yaml", manifest_of(1, "b").as_bytes());
    assert_eq!(env.run_once(&config).await.0, 0);
    let (code, out, err) = cli(&["status", "--config", config_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let header = out
        .lines()
        .find(|l| l.starts_with("manifest"))
        .expect("header");
    assert!(header.ends_with("run  taken in (UTC)"), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("m.yaml"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_ne!(rows[0][10], rows[1][10], "run ids: {out}");
    for row in &rows {
        assert!(
            humantime::parse_rfc3339(row[11]).is_ok(),
            "a UTC time: {out}"
        );
    }
    assert!(!out.contains("Older finished runs"), "{out}");
    // 50 more runs: the first two are older than the newest 50.
    for i in 0..50 {
        env.drop_file(
            &format!("r{i:02}.yaml"),
            manifest_of(1, &format!("r{i}-")).as_bytes(),
        );
    }
    assert_eq!(env.run_once(&config).await.0, 0);
    let (code, out, err) = cli(&["status", "--config", config_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('r')).count(),
        50,
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("m.yaml")), "{out}");
    assert!(
        out.contains(
            "Older finished runs are not listed (every active run is, and the finished ones among the newest 50 runs)"
        ),
        "{out}"
    );
    assert_eq!(status_json(&config).await["older_runs_not_listed"], true);
}

/// A run whose only jobs left are held in doubt says so in `status`'s table: state `held`,
/// an `in doubt` column, no ETA, and how to release them.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_table_shows_jobs_held_in_doubt() {
    let env = TestEnv::new(Scenario::default().drop_share(1.0)).await;
    env.drop_file("m.yaml", manifest_of(2, "d").as_bytes());
    let config = env.config("", "in_doubt: hold\n");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "held jobs: {stderr}");
    let (code, out, err) = cli(&["status", "--config", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 0, "{out}{err}");
    let header = out
        .lines()
        .find(|l| l.starts_with("manifest"))
        .expect("header");
    assert!(header.contains("in doubt"), "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("m.yaml"))
        .expect("row")
        .split_whitespace()
        .collect();
    // manifest, state, total, done, in flight, queued, failed, in doubt, img/min, eta
    assert_eq!(row[1], "held", "{out}");
    assert_eq!(row[2], "2", "{out}");
    assert_eq!(row[7], "2", "{out}");
    assert_eq!(row[9], "-", "{out}");
    assert!(out.contains("replay --in-doubt"), "{out}");
    // A start finds them still held and says how many (they wait for `replay --in-doubt`).
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "still held: {stderr}");
    assert!(stderr.contains("still_held=2"), "{stderr}");
    // The run's last line counts them too (it said held_in_doubt=0 alone, beside exit 2).
    assert!(
        stderr.contains("held_in_doubt=0 held_from_before=2"),
        "{stderr}"
    );
}
